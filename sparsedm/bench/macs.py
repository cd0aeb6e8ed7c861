"""Multiply-accumulate counts per layer, dense and with 2:4 (the SparseDM paper's metric).

``count_macs`` runs one forward pass (on the meta device by default: no memory, no compute)
and records:

- every ``nn.Linear`` / ``nn.Conv2d`` (and sparsedm's own sparse modules): MACs from its
  input/output shapes; a layer listed as 2:4 costs half;
- every other matmul-like aten op (attention ``q @ k^T`` and ``attn @ v``, or fused
  scaled-dot-product attention) as a separate "attention matmul" row under the module that
  issued it; these stay dense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["MacRow", "MacReport", "count_macs"]


@dataclass
class MacRow:
    name: str
    kind: str  # "linear", "conv", "attention"
    shape: str
    dense_macs: int
    sparse_macs: int


@dataclass
class MacReport:
    rows: list[MacRow] = field(default_factory=list)

    @property
    def dense_macs(self) -> int:
        return sum(r.dense_macs for r in self.rows)

    @property
    def sparse_macs(self) -> int:
        return sum(r.sparse_macs for r in self.rows)

    def share_by_kind(self) -> dict[str, float]:
        total = self.dense_macs or 1
        kinds: dict[str, int] = {}
        for r in self.rows:
            kinds[r.kind] = kinds.get(r.kind, 0) + r.dense_macs
        return {k: v / total for k, v in kinds.items()}

    def as_dict(self) -> dict:
        return {
            "dense_macs": self.dense_macs,
            "sparse_macs": self.sparse_macs,
            "share_by_kind": self.share_by_kind(),
            "layers": [r.__dict__ for r in self.rows],
        }


def _layer_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> Optional[tuple[str, str, int]]:
    """(kind, shape text, dense MACs) for a GEMM-like layer, else None."""
    weight_shape = getattr(module, "weight_shape", None)  # sparsedm modules record the dense shape
    if isinstance(module, nn.Linear) or (weight_shape is not None and len(weight_shape) == 2):
        n, k = (module.out_features, module.in_features) if isinstance(module, nn.Linear) else weight_shape
        return "linear", f"{k}->{n}", output.numel() * k
    if isinstance(module, nn.Conv2d) or (weight_shape is not None and len(weight_shape) == 4):
        if isinstance(module, nn.Conv2d):
            cout, cin_g, kh, kw = module.weight.shape
        else:
            cout, cin_g, kh, kw = weight_shape
        return "conv", f"{cin_g}->{cout} {kh}x{kw}", output.numel() * cin_g * kh * kw
    return None


class _MatmulCounter(TorchDispatchMode):
    """Counts FLOPs of matmul-like aten ops issued outside Linear/Conv layers."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.state["layer_depth"] == 0:
            from torch.utils.flop_counter import flop_registry

            formula = flop_registry.get(func.overloadpacket)
            if formula is not None:
                flops = formula(*args, **kwargs, out_val=out)
                owner = self.state["stack"][-1] if self.state["stack"] else ""
                self.state["attention"][owner] = self.state["attention"].get(owner, 0) + int(flops) // 2
        return out


def count_macs(
    model: nn.Module,
    inputs: Iterable[Any],
    sparse_layers: Optional[Iterable[str]] = None,
    kwargs: Optional[dict] = None,
) -> MacReport:
    """Count MACs of ``model(*inputs, **kwargs)``.

    ``sparse_layers`` names the layers that run 2:4 (half the MACs). Inputs may live on the
    meta device together with the model.
    """
    sparse = set(sparse_layers or ())
    names = {m: n for n, m in model.named_modules()}
    state: dict[str, Any] = {"stack": [], "layer_depth": 0, "attention": {}}
    layer_rows: list[MacRow] = []
    handles = []

    def pre(module, _inputs):
        state["stack"].append(names[module])
        if _layer_macs_possible(module):
            state["layer_depth"] += 1

    def post(module, inputs_, output):
        state["stack"].pop()
        if _layer_macs_possible(module):
            state["layer_depth"] -= 1
            if state["layer_depth"] == 0:
                found = _layer_macs(module, inputs_, output)
                if found is not None:
                    kind, shape, macs = found
                    name = names[module]
                    layer_rows.append(MacRow(name, kind, shape, macs, macs // 2 if name in sparse else macs))

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        with torch.no_grad(), _MatmulCounter(state):
            model(*inputs, **(kwargs or {}))
    finally:
        for h in handles:
            h.remove()
    unknown = sparse - {r.name for r in layer_rows}
    if unknown:
        raise ValueError(f"sparse_layers names layers that did not run as Linear/Conv2d: {', '.join(sorted(unknown)[:5])}")
    rows = layer_rows + [
        MacRow(owner or "<model>", "attention", "matmul", macs, macs) for owner, macs in state["attention"].items() if macs
    ]
    return MacReport(rows)


def _layer_macs_possible(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d)) or getattr(module, "weight_shape", None) is not None
