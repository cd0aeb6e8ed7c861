"""Input-channel permutations that raise the magnitude a 2:4 mask keeps (NVIDIA ASP's idea).

The 2:4 mask keeps the 2 largest |w| of each group of 4 consecutive input channels. Which
channels share a group is arbitrary: reorder a consumer layer's input channels and the
producing layer's output channels the same way, and the dense model computes the same
function while the groups, and so the kept magnitude, change. This module

- searches a permutation per consumer (:func:`search_permutation`): greedy best channel swap
  between groups, with the swap gains kept up to date incrementally, until no swap helps;
- finds, by tracing the model with ``torch.fx``, the layer that produces each consumer's
  input (:func:`find_producers`) through channel-wise steps only: elementwise activations,
  dropout, and norms whose per-channel parameters can be permuted with the channels;
- applies a permutation to a (producer, norms, consumer) chain (:func:`apply_permutation`).

Where no producer can be identified safely (the input is a residual sum, a reshape, a model
input, or a tensor with other users) the consumer is left alone and the reason is reported.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Chain", "magnitude_matrix", "search_permutation", "find_producers", "apply_permutation"]

# Modules and functions that act on each channel separately and have no per-channel
# parameters, so they commute with any channel permutation.
_ELEMENTWISE_MODULES = (nn.GELU, nn.SiLU, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Hardswish,
                        nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Dropout, nn.Identity)
_ELEMENTWISE_FUNCTIONS = {F.gelu, F.silu, F.relu, F.relu6, F.leaky_relu, F.elu, F.mish, F.hardswish, F.softplus,
                          F.dropout, torch.relu, torch.sigmoid, torch.tanh, torch.sigmoid, F.sigmoid, F.tanh}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float", "half", "bfloat16", "to"}
_SCALAR_OPS = {operator.mul, operator.truediv, operator.add, operator.sub, torch.mul, torch.add}


@dataclass
class Chain:
    """A consumer whose input channels are the producer's output channels, through ``norms``."""

    consumer: str
    producer: str
    norms: list[str] = field(default_factory=list)  # per-channel norms in between, in order
    via: list[str] = field(default_factory=list)  # every step between, for the report


def magnitude_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``[R, Cin]`` float64 |w| whose columns are input channels and whose 2:4 groups are
    runs of 4 columns: a Linear weight as is; a conv weight as ``[Cout*kh*kw, Cin]`` (KRSC,
    cin innermost, so a permutation of Cin reorders the channels of every (kh, kw) slice)."""
    w = weight.detach().abs().double()
    if w.dim() == 4:
        w = w.permute(0, 2, 3, 1).reshape(-1, w.shape[1])
    return w


def _kept(a: torch.Tensor, perm: torch.Tensor) -> float:
    """Magnitude kept by the 2:4 mask of ``a[:, perm]``."""
    groups = a[:, perm].reshape(a.shape[0], -1, 4)
    return float(groups.topk(2, dim=-1).values.sum())


def _replaced_gain_rows(a: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """``[4, C]``: kept magnitude of a group of 4 columns ``members`` after its slot p holds column c.

    With the other three values of a row sorted o1 >= o2 >= o3 and x the incoming value, the
    top-2 sum is max(x, o1) + clamp(x, o2, o1); summed over rows.
    """
    block = a[:, members]  # [R, 4]
    others = torch.stack([torch.cat((block[:, :p], block[:, p + 1:]), dim=1) for p in range(4)])  # [4, R, 3]
    others = others.sort(dim=-1, descending=True).values
    o1, o2 = others[..., :1], others[..., 1:2]  # [4, R, 1]
    return (torch.maximum(a, o1) + torch.clamp(a, o2, o1)).sum(1)  # [4, C]


def search_permutation(weight: torch.Tensor, max_swaps: Optional[int] = None) -> tuple[torch.Tensor, int]:
    """See :func:`_search_permutation`. On CPU the search runs single-threaded: its tensors are
    small, and on a loaded 2-core machine thread hand-offs made it 10-20x slower (64x256: 2.8 s
    with 2 threads, 0.2 s with 1; 512x512: 38 s vs 8 s)."""
    if weight.device.type != "cpu":
        return _search_permutation(weight, max_swaps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _search_permutation(weight, max_swaps)
    finally:
        torch.set_num_threads(threads)


def _search_permutation(weight: torch.Tensor, max_swaps: Optional[int] = None) -> tuple[torch.Tensor, int]:
    """Input-channel permutation ``perm`` (new channel q = old channel ``perm[q]``) that keeps at
    least as much 2:4 magnitude as the identity, and the number of swaps it took.

    Greedy: among all swaps of two channels in different groups, apply the one with the
    largest gain; stop when none gains. The gain of every swap is
    ``U[i, j] + U[j, i]`` with ``U[i, j]`` = (kept magnitude of i's group with j in i's slot)
    minus (its kept magnitude now); a swap changes two groups, so only their 8 rows of ``U``
    are recomputed (R*C work each). Conv weights need Cin % 4 == 0 (checked by the caller).
    """
    a = magnitude_matrix(weight)
    c = a.shape[1]
    # The gains are searched in float32 (half the memory traffic); the final comparison with
    # the identity is in float64, so rounding can cost a swap but never lowers the result.
    a32 = a.float()
    if c % 4:
        raise ValueError(f"search_permutation: Cin={c} is not a multiple of 4")
    perm = torch.arange(c, device=a.device)
    if c <= 4:
        return perm, 0
    max_swaps = 4 * c if max_swaps is None else max_swaps
    slot_of = torch.arange(c, device=a.device)  # slot_of[column] = position in perm
    total = float(a.sum())
    tol = 1e-6 * total / c  # below float32 resolution of the group sums

    def group_rows(g: int) -> tuple[torch.Tensor, float]:
        members = perm[4 * g:4 * g + 4].clone()
        rows = _replaced_gain_rows(a32, members)
        now = float(a32[:, members].topk(2, dim=1).values.sum())
        return rows - now, members

    gain = torch.empty(c, c, dtype=torch.float32, device=a.device)
    for g in range(c // 4):
        rows, members = group_rows(g)
        gain[members] = rows
    # total[i, j]: gain of swapping columns i and j; -inf inside a group (not a move).
    total = gain + gain.T
    for g in range(c // 4):
        members = perm[4 * g:4 * g + 4].clone()
        total[members[:, None], members[None, :]] = -float("inf")
    swaps = 0
    while swaps < max_swaps:
        best = int(torch.argmax(total))
        i, j = divmod(best, c)
        if not float(total[i, j]) > tol:
            break
        si, sj = int(slot_of[i]), int(slot_of[j])
        perm[si], perm[sj] = j, i
        slot_of[i], slot_of[j] = sj, si
        changed = []
        for g in (si // 4, sj // 4):
            rows, members = group_rows(g)
            gain[members] = rows
            changed.append(members)
        # Only the two groups' rows of `gain` changed, so only their rows and columns of `total`.
        cols = torch.cat(changed)
        total[cols] = gain[cols] + gain[:, cols].T
        total[:, cols] = total[cols].T
        for members in changed:
            total[members[:, None], members[None, :]] = -float("inf")
        swaps += 1
    identity = torch.arange(c, device=a.device)
    if _kept(a, perm) < _kept(a, identity):  # float32 gains: never return a loss
        return identity, 0
    return perm, swaps


# ------------------------------------------------------------------------ producers


def _norm_reason(norm: nn.Module, conv: bool, channels: int) -> Optional[str]:
    """Why ``norm`` does not commute with a permutation of its ``channels``, or None."""
    if isinstance(norm, nn.LayerNorm):
        if conv:
            return "a LayerNorm between convs does not normalize over channels alone"
        if tuple(norm.normalized_shape) != (channels,):
            return f"LayerNorm{tuple(norm.normalized_shape)} normalizes over more than the {channels} channels"
        return None  # statistics over all channels are permutation invariant
    if isinstance(norm, nn.BatchNorm2d):
        return None if conv else "BatchNorm2d between linears"
    if isinstance(norm, nn.BatchNorm1d):
        # Between linears BatchNorm1d normalizes dim 1, the channel axis only for 2-D inputs.
        return "BatchNorm1d: its channel axis is not the linear's feature axis for 3-D inputs"
    if isinstance(norm, nn.GroupNorm):
        if not conv:
            return "GroupNorm between linears"
        if norm.num_groups in (1, norm.num_channels):
            return None
        return (f"GroupNorm(num_groups={norm.num_groups}) mixes channels within groups; a permutation "
                f"across groups would change its statistics")
    return f"{type(norm).__name__} is not known to act per channel"


def _describe(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target}"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    return f"{node.op} {node.target}"


def _reads_metadata(node: torch.fx.Node) -> bool:
    """``x.shape`` / ``x.size()`` / ``x.dim()``...: a use that a permutation does not change."""
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in ("shape", "dtype", "device", "ndim")
    return node.op == "call_method" and node.target in ("size", "dim")


def _only_tensor_arg(node: torch.fx.Node) -> bool:
    tensors = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, torch.fx.Node)]
    return len(tensors) == 1 and node.args and node.args[0] is tensors[0]


def _walk(root: nn.Module, prefix: str, consumer_node: torch.fx.Node, calls: dict) -> Union[Chain, str]:
    consumer = root.get_submodule(consumer_node.target)
    conv = isinstance(consumer, nn.Conv2d)
    channels = consumer.in_channels if conv else consumer.in_features
    full = lambda target: f"{prefix}{target}"  # noqa: E731
    if conv and channels % 4:
        return f"Cin={channels} is not a multiple of 4, so 2:4 groups span kernel positions"
    if not consumer_node.args or not isinstance(consumer_node.args[0], torch.fx.Node):
        return "the input is not a traced tensor"
    norms, via = [], []
    prev, cur = consumer_node, consumer_node.args[0]
    while True:
        users = [u for u in cur.users if not _reads_metadata(u)]
        if len(users) != 1:
            others = [_describe(u) if u.op != "output" else "the module's output" for u in users if u is not prev]
            return (f"{_describe(cur)} on its input path is also used by {', '.join(others)}; a permutation "
                    f"would change those uses (e.g. a residual branch)")
        if cur.op == "call_module":
            if calls.get(cur.target, 0) != 1:
                return f"module {full(cur.target)} is called more than once"
            mod = root.get_submodule(cur.target)
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                if isinstance(mod, nn.Conv2d) != conv:
                    return f"producer {full(cur.target)} is a {type(mod).__name__}, the consumer is not"
                if isinstance(mod, nn.Conv2d) and mod.groups != 1:
                    return f"producer {full(cur.target)} has groups={mod.groups}"
                out = mod.out_channels if conv else mod.out_features
                if out != channels:
                    return f"producer {full(cur.target)} has {out} outputs, the consumer {channels} inputs"
                return Chain(consumer="", producer=full(cur.target), norms=norms[::-1], via=via[::-1])
            if isinstance(mod, _ELEMENTWISE_MODULES):
                via.append(full(cur.target))
                prev, cur = cur, cur.args[0]
                continue
            if isinstance(mod, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
                why = _norm_reason(mod, conv, channels)
                if why is not None:
                    return why
                norms.append(full(cur.target))
                via.append(full(cur.target))
                prev, cur = cur, cur.args[0]
                continue
            return f"its input comes from {type(mod).__name__} {full(cur.target)}, which is not channel-wise"
        if cur.op == "call_function" and cur.target in _ELEMENTWISE_FUNCTIONS and _only_tensor_arg(cur):
            via.append(_describe(cur))
            prev, cur = cur, cur.args[0]
            continue
        if cur.op == "call_method" and cur.target in _ELEMENTWISE_METHODS and _only_tensor_arg(cur):
            via.append(_describe(cur))
            prev, cur = cur, cur.args[0]
            continue
        if cur.op == "call_function" and cur.target in _SCALAR_OPS and _only_tensor_arg(cur) \
                and all(isinstance(a, (int, float)) for a in cur.args[1:]):
            via.append(_describe(cur))
            prev, cur = cur, cur.args[0]
            continue
        if cur.op == "placeholder":
            return f"its input is an input of {prefix.rstrip('.') or 'the model'} ({cur.target}), not a layer output"
        return f"its input comes from {_describe(cur)} (e.g. a residual add or a reshape), not a single producer"


def find_producers(model: nn.Module, consumers: list[str]) -> dict[str, Union[Chain, str]]:
    """For each consumer name: its :class:`Chain`, or why its input channels cannot be permuted.

    The model is traced with ``torch.fx``; where that fails (data-dependent control flow),
    each child module is traced on its own, recursively, so chains inside a block are still
    found (a chain never leaves the module it was traced in: the module's inputs and outputs
    count as unknown producers and users).
    """
    wanted = set(consumers)
    result: dict[str, Union[Chain, str]] = {}
    shared = _shared_parameter_modules(model)

    def visit(module: nn.Module, prefix: str) -> None:
        inside = {n for n in wanted if n.startswith(prefix) and n not in result}
        if not inside:
            return
        try:
            graph = torch.fx.symbolic_trace(module).graph
        except Exception as e:  # noqa: BLE001 - any tracing failure means: trace the children
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            children = list(module.named_children())
            for child_name, child in children:
                visit(child, f"{prefix}{child_name}.")
            for n in inside:
                result.setdefault(n, f"{prefix.rstrip('.') or 'the model'} cannot be traced by torch.fx ({error})")
            return
        calls: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        for node in graph.nodes:
            name = f"{prefix}{node.target}" if node.op == "call_module" else None
            if name not in inside or name in result:
                continue
            if calls[node.target] != 1:
                result[name] = "the layer is called more than once"
                continue
            found = _walk(module, prefix, node, calls)
            if isinstance(found, Chain):
                found.consumer = name
                bad = [m for m in [found.producer] + found.norms if m in shared]
                if bad:
                    found = f"{bad[0]} shares its parameters with another module"
            result[name] = found
        for n in inside:
            result.setdefault(n, "not reached by the traced forward")

    visit(model, "")
    return result


def _shared_parameter_modules(model: nn.Module) -> set[str]:
    owners: dict[int, set[str]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for p in mod.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(mod_name)
    return {name for names in owners.values() if len(names) > 1 for name in names}


@torch.no_grad()
def apply_permutation(model: nn.Module, chain: Chain, perm: torch.Tensor) -> None:
    """Reorder the consumer's input channels and the producer's (and norms') output channels by
    ``perm`` (new channel q = old channel ``perm[q]``), in place; the function is unchanged."""
    consumer = model.get_submodule(chain.consumer)
    producer = model.get_submodule(chain.producer)
    perm = perm.to(consumer.weight.device)
    consumer.weight.copy_(consumer.weight[:, perm])
    producer.weight.copy_(producer.weight[perm])
    if producer.bias is not None:
        producer.bias.copy_(producer.bias[perm])
    for norm_name in chain.norms:
        norm = model.get_submodule(norm_name)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(norm, attr, None)
            if t is not None:
                t.copy_(t[perm])
