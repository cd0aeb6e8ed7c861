"""``sparsedm.optimize``: swap the eligible layers of any model for 2:4 / int8 modules.

Walks the model, and for every ``nn.Linear`` / ``nn.Conv2d``:

- a 2:4 weight (or any weight with ``prune=True``, masked by the DESIGN rule) becomes
  ``SparseLinear`` / ``SparseConv2d``, or ``Sparse24Int8Linear`` with ``quant="int8"``;
- a dense linear becomes ``Int8Linear`` with ``quant="int8"``;
- everything else stays as it is, and the report says why (K not a multiple of 8, groups,
  padding mode, too small, excluded, not 2:4, used through its weight by its parent).

The report (one row per linear/conv layer, plus totals) is logged at INFO on the
``sparsedm.nn`` logger, returned by :func:`last_report` and attached as
``model.sparsedm_report``. MACs are counted for ``example_inputs`` when given (one forward
pass with hooks, before swapping), else per output element (= the reduction length K).
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn

from sparsedm.formats import is_24_sparse
from sparsedm.nn.modules import Int8Linear, Sparse24Int8Linear, SparseConv2d, SparseLinear
from sparsedm.ops import registry

log = logging.getLogger("sparsedm.nn")

__all__ = ["optimize", "last_report", "fuse_activations_in", "OptimizeReport", "LayerReport"]

DEFAULT_MIN_FEATURES = 64

_LAST_REPORT: Optional["OptimizeReport"] = None


@dataclass
class LayerReport:
    """One linear/conv layer: what it was, what it became, and why."""

    name: str
    kind: str                 # the module type after optimize (unchanged type when it stays)
    shape: tuple              # weight shape: (N, K) or (Cout, Cin, kh, kw)
    changed: bool
    macs_before: Optional[int]
    macs_after: Optional[int]
    bytes_before: int
    bytes_after: int
    backend: str
    reason: str
    fused_activation: Optional[str] = None  # the activation now computed in the layer's epilogue


@dataclass
class OptimizeReport:
    rows: list[LayerReport] = field(default_factory=list)
    quant: Optional[str] = None
    backend: str = "auto"
    macs_basis: str = "per output element"  # or "example input"

    @property
    def changed(self) -> list[LayerReport]:
        return [r for r in self.rows if r.changed]

    def totals(self) -> dict[str, Any]:
        def total(attr):
            values = [getattr(r, attr) for r in self.rows]
            return None if any(v is None for v in values) else sum(values)

        return {
            "layers": len(self.rows),
            "changed": len(self.changed),
            "macs_before": total("macs_before") if self.macs_basis == "example input" else None,
            "macs_after": total("macs_after") if self.macs_basis == "example input" else None,
            "bytes_before": total("bytes_before"),
            "bytes_after": total("bytes_after"),
        }

    def to_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.rows]

    def table(self) -> str:
        header = ("layer", "kind", "shape", f"MACs before ({self.macs_basis})", "MACs after", "bytes before",
                  "bytes after", "backend", "reason")
        lines = [header]
        for r in self.rows:
            lines.append((r.name, r.kind, "x".join(map(str, r.shape)), _num(r.macs_before), _num(r.macs_after),
                          _num(r.bytes_before), _num(r.bytes_after), r.backend, r.reason))
        t = self.totals()
        lines.append((f"total ({t['changed']}/{t['layers']} swapped)", "", "", _num(t["macs_before"]),
                      _num(t["macs_after"]), _num(t["bytes_before"]), _num(t["bytes_after"]), "", ""))
        widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
        out = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
        out.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _num(v: Optional[int]) -> str:
    if v is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.2f}{unit}"
    return str(v)


def last_report() -> Optional[OptimizeReport]:
    """The report of the latest :func:`optimize` call in this process (None before any)."""
    return _LAST_REPORT


def _tensor_bytes(*tensors: Optional[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _module_bytes(module: nn.Module) -> int:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return _tensor_bytes(module.weight, module.bias)
    return _tensor_bytes(*(b for n, b in module.named_buffers(recurse=False) if n != "weight_shape"))


def _patterns(p: Union[None, str, Iterable[str]]) -> Optional[list[str]]:
    if p is None:
        return None
    return [p] if isinstance(p, str) else list(p)


def _is_plain(module: nn.Module) -> bool:
    """nn.Linear / nn.Conv2d, or a subclass that computes the same thing (no own forward)."""
    if isinstance(module, nn.Linear):
        if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
            return False
        return type(module).forward is nn.Linear.forward
    if isinstance(module, nn.Conv2d):
        return type(module).forward is nn.Conv2d.forward and type(module)._conv_forward is nn.Conv2d._conv_forward
    return False


def _reduction_length(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]


def _count_positions(model: nn.Module, names: dict[nn.Module, str], example_inputs) -> dict[str, int]:
    """Output positions (rows of the GEMM) of each layer for one forward pass on ``example_inputs``."""
    positions: dict[str, int] = {}

    def hook(module, inputs, output):
        n = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        positions[names[module]] = positions.get(names[module], 0) + output.numel() // n

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            if isinstance(example_inputs, dict):
                model(**example_inputs)
            elif isinstance(example_inputs, (tuple, list)):
                model(*example_inputs)
            else:
                model(example_inputs)
    except Exception as exc:  # a shape the model does not take: say it is the example input
        shapes = [tuple(t.shape) for t in (example_inputs.values() if isinstance(example_inputs, dict) else
                  example_inputs if isinstance(example_inputs, (tuple, list)) else [example_inputs])
                  if isinstance(t, torch.Tensor)]
        raise ValueError(f"optimize(example_inputs=...): the model's forward fails on the example input "
                         f"(tensor shapes {shapes}): {type(exc).__name__}: {exc}; pass inputs the model takes, or "
                         f"leave example_inputs out") from None
    finally:
        for h in handles:
            h.remove()
    return positions


def optimize(
    model: nn.Module,
    *,
    quant: Optional[str] = None,
    backend: str = "auto",
    prune: bool = False,
    include: Union[None, str, Sequence[str]] = None,
    exclude: Union[None, str, Sequence[str]] = None,
    min_features: int = DEFAULT_MIN_FEATURES,
    example_inputs: Any = None,
    fuse_activations: bool = True,
) -> nn.Module:
    """Swap eligible ``nn.Linear`` / ``nn.Conv2d`` layers of ``model`` in place; returns ``model``.

    - ``quant``: None, or "int8" (2:4 linears -> ``Sparse24Int8Linear``, dense linears ->
      ``Int8Linear``; convs have no int8 op and stay fp16/fp32);
    - ``backend``: "auto" or a backend name, stored on every new module and passed to the ops;
    - ``prune``: mask every eligible layer by the 2:4 rule (keep the 2 largest |w| of each 4)
      instead of swapping only layers whose weight is already 2:4;
    - ``include`` / ``exclude``: fnmatch patterns on module names (``"*.attn.qkv"``, exact names
      work too); a layer must match some include pattern (when given) and no exclude pattern;
    - ``min_features``: layers with fewer output features or a shorter reduction than this stay
      (too small for a sparse or int8 kernel to gain);
    - ``example_inputs``: args tuple, kwargs dict or a tensor; when given, the report counts MACs
      for one forward pass on it (run once, before swapping).
    - ``fuse_activations``: where a swapped layer feeds only an activation module
      (``nn.GELU``, ``nn.SiLU``, or a parameter-free module that computes exactly ``F.silu`` /
      ``F.gelu``) and nothing else reads its output, the activation moves into the layer's
      epilogue and the activation module becomes ``nn.Identity`` (state_dict keys do not
      change). Proven on the parent's ``torch.fx`` graph; parents that do not trace are left
      as they are.
    """
    global _LAST_REPORT
    if quant not in (None, "int8"):
        raise ValueError(f"quant must be None or 'int8', got {quant!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize takes an nn.Module, got {type(model).__name__}; for a converted file use sparsedm.load(path)")
    if backend not in (None, "auto"):
        registry.get_backend(backend.strip().lower())  # unknown names fail now, not at the first forward
    backend = backend or "auto"
    includes, excludes = _patterns(include), _patterns(exclude)

    # Modules used through their weight by their parent (nn.MultiheadAttention's out_proj).
    weight_users = {
        id(child) for parent in model.modules() if isinstance(parent, nn.MultiheadAttention) for child in parent.children()
    }
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    names = {m: name for name, m in layers}
    positions = _count_positions(model, names, example_inputs) if example_inputs is not None else None
    report = OptimizeReport(quant=quant, backend=backend, macs_basis="example input" if positions is not None else "per output element")
    replacements: dict[int, nn.Module] = {}

    for name, module in layers:
        is_linear = isinstance(module, nn.Linear)
        shape = tuple(module.weight.shape)
        n = shape[0]
        k = _reduction_length(module)
        reason, new = _plan(name, module, is_linear, n, k, quant=quant, prune=prune, includes=includes,
                            excludes=excludes, min_features=min_features, weight_users=weight_users)
        if new is not None:
            new = new(module, backend)
            replacements[id(module)] = new
        target = new if new is not None else module
        sparse = isinstance(target, (SparseLinear, SparseConv2d, Sparse24Int8Linear))
        if positions is not None:
            rows = positions.get(name)
            macs_before = None if rows is None else rows * n * k  # k is per group for grouped convs
            macs_after = None if macs_before is None else (macs_before // 2 if sparse else macs_before)
        else:
            macs_before = k
            macs_after = macs_before // 2 if sparse else macs_before
        report.rows.append(LayerReport(
            name=name, kind=type(target).__name__, shape=shape, changed=new is not None,
            macs_before=macs_before, macs_after=macs_after,
            bytes_before=_module_bytes(module), bytes_after=_module_bytes(target),
            backend=backend if new is not None else "torch", reason=reason,
        ))

    if includes is not None and not any(fnmatch.fnmatchcase(name, p) for name, _ in layers for p in includes):
        log.warning("sparsedm.optimize: include=%s matches no Linear/Conv2d layer of the model; nothing was swapped "
                    "(layer names look like %s)", list(includes), ", ".join(n for n, _ in layers[:3]) or "none")

    # Swap every reference (a module may be registered under several parents).
    for parent in model.modules():
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])

    if fuse_activations and replacements:
        rows = {r.name: r for r in report.rows}
        name_of = {id(new): names[old] for old in names if id(old) in replacements for new in [replacements[id(old)]]}
        for layer, (act, act_name) in fuse_activations_in(model, replacements.values()).items():
            row = rows[name_of[id(layer)]]
            row.fused_activation = act
            row.reason += f"; {act} fused ({act_name} -> Identity)"

    _LAST_REPORT = report
    try:
        model.sparsedm_report = report
    except Exception:  # a model class that forbids new attributes still gets optimized
        log.debug("could not attach sparsedm_report to %s", type(model).__name__)
    if log.isEnabledFor(logging.INFO):
        log.info("sparsedm.optimize (quant=%s, backend=%s, prune=%s):\n%s", quant, backend, prune, report.table())
    return model


def _plan(name, module, is_linear, n, k, *, quant, prune, includes, excludes, min_features, weight_users):
    """``(reason, factory or None)`` for one layer; the factory builds the new module."""
    if includes is not None and not any(fnmatch.fnmatchcase(name, p) for p in includes):
        return "not matched by include", None
    if excludes is not None:
        hit = next((p for p in excludes if fnmatch.fnmatchcase(name, p)), None)
        if hit is not None:
            return f"excluded by pattern {hit!r}", None
    if id(module) in weight_users:
        return "used through its weight by nn.MultiheadAttention, not through forward", None
    if not _is_plain(module):
        return f"{type(module).__name__} overrides forward; only plain nn.Linear / nn.Conv2d are swapped", None
    if not is_linear:
        why = SparseConv2d.unsupported_reason(module)
        if why is not None:
            return why, None
    if min(n, k) < min_features:
        return f"too small: min(N={n}, K={k}) < min_features={min_features}", None
    if module.weight.device.type == "meta":
        return "weight is on the meta device: nothing to check or compress (load weights first)", None
    if is_linear and k % 8:
        # int8 still works for K % 8 != 0 on the reference path, but kernels want K % 8 == 0.
        return f"K={k} is not a multiple of 8; this layer stays dense (pad in_features or exclude it)", None

    sparse = prune or is_24_sparse(module.weight.detach())
    if sparse:
        how = "pruned to 2:4" if prune and not is_24_sparse(module.weight.detach()) else "weight is 2:4"
        if is_linear and quant == "int8":
            return f"{how}; int8", lambda m, b: Sparse24Int8Linear.from_dense(m, prune=prune, backend=b)
        if is_linear:
            return how, lambda m, b: SparseLinear.from_dense(m, prune=prune, backend=b)
        note = "; no int8 conv op, kept in the weight's dtype" if quant == "int8" else ""
        return how + note, lambda m, b: SparseConv2d.from_dense(m, prune=prune, backend=b)
    if is_linear and quant == "int8":
        return "weight is not 2:4; int8 dense", lambda m, b: Int8Linear.from_dense(m, backend=b)
    return "weight is not 2:4 sparse (pass prune=True to mask it by the 2:4 rule)", None


# --------------------------------------------------------------------------------------------
# activation fusion


class _ChildrenAsLeaves(torch.fx.Tracer):
    """Traces one module's own forward; every submodule call stays one call_module node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


_PROBE = torch.linspace(-8.0, 8.0, 1601)


def _activation_of(module: nn.Module) -> Optional[str]:
    """The fusable activation a module computes, or None. torch's own GELU/SiLU by type; other
    parameter-free modules (e.g. a ``Swish`` class) only when their output equals the function's
    bit for bit on a probe."""
    if type(module) is nn.GELU:
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    if type(module) is nn.SiLU:
        return "silu"
    if type(module).__module__.startswith("torch.") or list(module.parameters()) or list(module.buffers()):
        return None
    if module._modules:
        return None
    candidates = {"silu": torch.nn.functional.silu(_PROBE), "gelu": torch.nn.functional.gelu(_PROBE),
                  "gelu_tanh": torch.nn.functional.gelu(_PROBE, approximate="tanh")}
    try:
        with torch.no_grad():
            out = module(_PROBE.clone())
    except Exception:  # anything a foreign module raises on a 1-D float tensor: not an activation
        return None
    if not isinstance(out, torch.Tensor) or out.shape != _PROBE.shape or out.dtype != _PROBE.dtype:
        return None
    hits = [name for name, ref in candidates.items() if torch.equal(out, ref)]
    return hits[0] if len(hits) == 1 else None


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or getattr(m, "_backward_hooks", None))


def fuse_activations_in(model: nn.Module, layers: Optional[Iterable[nn.Module]] = None
                        ) -> dict[nn.Module, tuple[str, str]]:
    """Move ``act(layer(x))`` into the layer's epilogue wherever the parent's fx graph proves it
    safe (see ``optimize(fuse_activations=...)``); ``layers``: the candidate sparsedm modules
    (default: all in ``model``). Returns {layer: (activation, name of the
    activation module now replaced by nn.Identity)}.
    """
    layers = list(model.modules()) if layers is None else list(layers)
    fusable = {id(m) for m in layers if isinstance(m, (SparseLinear, SparseConv2d, Int8Linear, Sparse24Int8Linear))
               and m.activation == "none" and not _has_hooks(m)}
    fused: dict[nn.Module, tuple[str, str]] = {}
    if not fusable:
        return fused
    refs: dict[int, int] = {}
    for parent in model.modules():
        for child in parent._modules.values():
            if child is not None:
                refs[id(child)] = refs.get(id(child), 0) + 1
    parent_names = {id(m): n for n, m in model.named_modules()}

    for parent in list(model.modules()):
        if not any(id(c) in fusable for c in parent._modules.values() if c is not None):
            continue
        # Trace a shallow copy with its own attribute, parameter and buffer dicts: a forward that
        # stores something on self (a cache, an attention map) must not keep a tracing proxy.
        shadow = copy.copy(parent)
        shadow._parameters, shadow._buffers = dict(parent._parameters), dict(parent._buffers)
        try:
            graph = _ChildrenAsLeaves().trace(shadow)
        except Exception as e:  # control flow on values, unsupported Python: no fusion here
            log.debug("fuse_activations: %s does not trace (%s: %s)", type(parent).__name__, type(e).__name__, e)
            continue
        calls: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        for node in graph.nodes:
            if node.op != "call_module" or "." in node.target:
                continue
            layer = parent._modules.get(node.target)
            if layer is None or id(layer) not in fusable or calls[node.target] != 1 or refs.get(id(layer)) != 1:
                continue
            users = list(node.users)
            if len(users) != 1 or users[0].op != "call_module" or "." in users[0].target:
                continue
            act_node = users[0]
            act_mod = parent._modules.get(act_node.target)
            if (act_mod is None or act_node.args != (node,) or act_node.kwargs or calls[act_node.target] != 1
                    or refs.get(id(act_mod)) != 1 or _has_hooks(act_mod)):
                continue
            act = _activation_of(act_mod)
            if act is None:
                continue
            layer.activation = act
            setattr(parent, act_node.target, nn.Identity())
            fusable.discard(id(layer))
            prefix = parent_names.get(id(parent), "")
            fused[layer] = (act, f"{prefix}.{act_node.target}" if prefix else act_node.target)
    return fused
