"""Which layers can be 2:4, how layers are selected by name, and n:m masks for training.

A layer is eligible when its GEMM view (``sparsedm.formats.gemm_view``: a Linear weight
``[N, K]`` as is, a Conv2d weight in its KRSC view ``[Cout, kh*kw*Cin]``) has a reduction
length K that is a multiple of 8, the smallest K the canonical meta can store (two groups of
4 per byte, DESIGN.md "The 2:4 contract"), and, for a conv, groups=1 with zero padding.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Optional, Union

import torch
import torch.nn as nn

from sparsedm.formats import gemm_view, mask24, unview_gemm

__all__ = [
    "Selector",
    "UVIT_SPARSEDM_LAYERS",
    "ineligible_reason",
    "select_layers",
    "nm_mask",
    "kept_fraction",
]

# SparseDM's choice for U-ViT (DESIGN.md "Facts about the checkpoints"): the four GEMMs of
# every transformer block; skip_linear, patch_embed and decoder_pred stay dense.
UVIT_SPARSEDM_LAYERS = ("*attn.qkv", "*attn.proj", "*mlp.fc1", "*mlp.fc2")

# A selector is a glob pattern on the module's qualified name, a list of them, or a
# predicate ``(name, module) -> bool``.
Selector = Union[None, str, Iterable[str], Callable[[str, nn.Module], bool]]


def ineligible_reason(module: nn.Module) -> Optional[str]:
    """Why ``module`` cannot hold a 2:4 weight, or None when it can."""
    if isinstance(module, nn.Linear):
        k = module.in_features
        if k % 8:
            return (f"K = in_features = {k} is not a multiple of 8; this layer stays dense "
                    f"(pad in_features or exclude it)")
        return None
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"groups={module.groups}: only groups=1 convs have a 2:4 kernel; this layer stays dense"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}: the 2:4 conv pads with zeros only; this layer stays dense"
        kh, kw = module.kernel_size
        k = kh * kw * module.in_channels
        if k % 8:
            return (f"K = kh*kw*Cin = {kh}*{kw}*{module.in_channels} = {k} is not a multiple of 8; "
                    f"this layer stays dense (pad the input channels or exclude it)")
        return None
    return f"{type(module).__name__} is not an nn.Linear or nn.Conv2d"


def _matches(selector: Selector, name: str, module: nn.Module) -> bool:
    if callable(selector):
        return bool(selector(name, module))
    patterns = [selector] if isinstance(selector, str) else list(selector)
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_layers(model: nn.Module, include: Selector = None, exclude: Selector = None
                  ) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """Split the model's Linear/Conv2d layers into ``(eligible [(name, module)], skipped {name: why})``.

    ``include`` (default: every Linear/Conv2d) and ``exclude`` are glob patterns on qualified
    module names (``"*mlp.fc1"``), lists of them, or predicates ``(name, module) -> bool``.
    """
    eligible, skipped = [], {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if include is not None and not _matches(include, name, module):
            skipped[name] = "not selected by include"
            continue
        if exclude is not None and _matches(exclude, name, module):
            skipped[name] = "excluded"
            continue
        reason = ineligible_reason(module)
        if reason is not None:
            skipped[name] = reason
            continue
        eligible.append((name, module))
    return eligible, skipped


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask keeping the ``n`` largest |w| of each group of ``m`` along the reduction axis.

    Same grouping and tie rule (ties to the lower index) as :func:`sparsedm.formats.mask24`,
    which it calls for ``(2, 4)``; ``n == m`` keeps everything. K must be a multiple of ``m``.
    """
    if not 0 < n <= m:
        raise ValueError(f"n:m = {n}:{m} needs 0 < n <= m")
    if (n, m) == (2, 4):
        return mask24(weight)
    mat = gemm_view(weight)
    rows, k = mat.shape
    if k % m:
        raise ValueError(f"nm_mask: reduction length K={k} is not a multiple of m={m}; "
                         f"use an n:m pattern whose m divides K")
    if n == m:
        return torch.ones_like(weight, dtype=torch.bool)
    mag = mat.detach().abs().float().reshape(rows, k // m, m)
    order = torch.sort(mag, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros_like(mag, dtype=torch.bool).scatter_(-1, order, True).reshape(rows, k)
    return unview_gemm(keep, weight.shape) if weight.dim() == 4 else keep


def kept_fraction(weight: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """Fraction of the total |w| that a mask keeps (default: the 2:4 mask of ``weight``)."""
    w = weight.detach().abs().double()
    total = float(w.sum())
    if total == 0.0:
        return 1.0
    mask = mask24(weight) if mask is None else mask
    return float((w * mask).sum()) / total
