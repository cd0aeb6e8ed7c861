"""One-shot 2:4 pruning by the DESIGN rule, optionally after a channel permutation search."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from sparsedm.formats import mask24
from sparsedm.train.layers import Selector, kept_fraction, select_layers
from sparsedm.train.permute import Chain, apply_permutation, find_producers, search_permutation

__all__ = ["LayerPruneReport", "PruneReport", "permute_channels", "prune24"]


@dataclass
class LayerPruneReport:
    name: str
    kind: str  # "Linear" | "Conv2d"
    weight_shape: list[int]
    k: int  # GEMM reduction length (conv: kh*kw*Cin)
    kept_fraction: float  # |w| kept by the 2:4 mask of the original weight
    kept_fraction_permuted: Optional[float]  # |w| kept after the permutation (None: permute=False)
    permuted: bool  # a non-identity permutation was applied
    permutation_note: str  # the producer chain, or why the layer was not permuted
    swaps: int = 0


@dataclass
class PruneReport:
    layers: list[LayerPruneReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # Linear/Conv2d left dense -> why

    def __getitem__(self, name: str) -> LayerPruneReport:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{name!r} was not pruned" + (f": {self.skipped[name]}" if name in self.skipped else ""))

    def kept_fraction(self, permuted: bool = True) -> float:
        """Mean kept-magnitude fraction over pruned layers (with the permutation where applied)."""
        if not self.layers:
            return 1.0
        vals = [(l.kept_fraction_permuted if permuted and l.kept_fraction_permuted is not None else l.kept_fraction)
                for l in self.layers]
        return sum(vals) / len(vals)

    def to_dict(self) -> dict:
        return {"layers": [asdict(l) for l in self.layers], "skipped": dict(self.skipped)}

    def to_markdown(self) -> str:
        rows = ["| layer | kind | shape | K | kept | kept permuted | permutation |", "|---|---|---|---|---|---|---|"]
        for l in self.layers:
            kp = "" if l.kept_fraction_permuted is None else f"{l.kept_fraction_permuted:.4f}"
            rows.append(f"| {l.name} | {l.kind} | {l.weight_shape} | {l.k} | {l.kept_fraction:.4f} | {kp} | "
                        f"{l.permutation_note} |")
        for name, why in self.skipped.items():
            rows.append(f"| {name} | dense | | | | | {why} |")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.to_markdown()


@torch.no_grad()
def permute_channels(model: nn.Module, *, include: Selector = None, exclude: Selector = None,
                     max_swaps: Optional[int] = None) -> PruneReport:
    """Reorder input channels of every eligible layer (and output channels of its producer) to
    raise the magnitude its 2:4 mask will keep, in place, without masking anything.

    The dense model computes the same function afterwards (up to fp32 rounding of
    reassociated sums). Returns the report :func:`prune24` returns, weights left dense.
    """
    eligible, skipped = select_layers(model, include, exclude)
    chains = find_producers(model, [name for name, _ in eligible])
    layers = []
    for name, module in eligible:
        before = kept_fraction(module.weight)
        chain = chains.get(name, "not found in the model")
        n_swaps, changed = 0, False
        if not isinstance(chain, Chain):
            note = f"not permuted: {chain}"
        else:
            perm, n_swaps = search_permutation(module.weight, max_swaps=max_swaps)
            changed = not bool((perm == torch.arange(perm.numel(), device=perm.device)).all())
            if changed:
                apply_permutation(model, chain, perm)
            steps = " -> ".join([chain.producer] + chain.via + [name])
            note = (f"permuted ({n_swaps} swaps) with {steps}" if changed
                    else f"identity is already best (producer {chain.producer})")
        layers.append(LayerPruneReport(
            name=name, kind=type(module).__name__, weight_shape=list(module.weight.shape), k=module.weight[0].numel(),
            kept_fraction=before, kept_fraction_permuted=kept_fraction(module.weight), permuted=changed,
            permutation_note=note, swaps=n_swaps))
    return PruneReport(layers=layers, skipped=skipped)


@torch.no_grad()
def prune24(model: nn.Module, *, include: Selector = None, exclude: Selector = None, permute: bool = False,
            max_swaps: Optional[int] = None) -> PruneReport:
    """Zero, in place, all but the 2 largest |w| of each group of 4 in every eligible layer.

    Eligible: nn.Linear and nn.Conv2d (groups=1) whose GEMM reduction length K is a multiple
    of 8 (conv: K = kh*kw*Cin in the KRSC view), selected by ``include``/``exclude`` (glob
    patterns on qualified names, lists of them, or predicates; see
    :func:`sparsedm.train.layers.select_layers`). Others stay dense and are listed in
    ``report.skipped`` with the reason.

    ``permute=True`` first runs :func:`permute_channels`: per layer, an input-channel
    permutation that raises the kept magnitude, applied to the layer and to the layer
    producing its input (output channels, bias, and any per-channel norm in between), which
    leaves the dense model's function unchanged. Layers whose producer cannot be identified
    safely are not permuted; ``permutation_note`` says why. ``max_swaps`` bounds the greedy
    search per layer (default 4 * Cin).

    Returns a :class:`PruneReport` with the kept-magnitude fraction of each layer with and
    without the permutation.
    """
    if permute:
        report = permute_channels(model, include=include, exclude=exclude, max_swaps=max_swaps)
    else:
        eligible, skipped = select_layers(model, include, exclude)
        report = PruneReport(skipped=skipped, layers=[LayerPruneReport(
            name=name, kind=type(m).__name__, weight_shape=list(m.weight.shape), k=m.weight[0].numel(),
            kept_fraction=kept_fraction(m.weight), kept_fraction_permuted=None, permuted=False,
            permutation_note="permute=False") for name, m in eligible])
    for layer in report.layers:
        weight = model.get_submodule(layer.name).weight
        weight.mul_(mask24(weight))
    return report
