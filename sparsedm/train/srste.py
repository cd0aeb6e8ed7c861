"""SR-STE sparse fine-tuning: 2:4 masks recomputed every step, straight-through gradients.

``sparsify_for_training`` swaps every eligible ``nn.Linear`` / ``nn.Conv2d`` for a subclass
that shares its parameters (so optimizers already built keep working and state_dict keys
do not change) and whose forward uses the masked weight

    w_masked = w * mask,   mask = n:m mask of the current w (2:4 at the end of the schedule)

The backward pass is the straight-through estimator with SR-STE's decay on pruned weights
(Zhou et al. 2021, "Learning N:M fine-grained structured sparse neural networks from scratch"):

    dL/dw = dL/dw_masked + decay * (1 - mask) * w

so pruned weights receive the full gradient (they can grow back) and are pulled towards zero
(the mask settles). A :class:`SparsitySchedule` moves from dense to 2:4, by fraction of
layers, by an n:m ladder (e.g. 3:4 then 2:4), or both. ``finalize`` fixes the 2:4 masks,
zeroes the pruned weights and swaps back plain modules.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsedm.formats import mask24
from sparsedm.train.layers import Selector, nm_mask, select_layers

__all__ = [
    "DEFAULT_DECAY",
    "SparsitySchedule",
    "SparseTraining",
    "SRSTELinear",
    "SRSTEConv2d",
    "sparsify_for_training",
    "finalize",
    "srste_weight",
]

DEFAULT_DECAY = 2e-4  # SR-STE's lambda_W

Pattern = Optional[tuple[int, int]]  # (n, m) kept of each group, None = dense


class _SRSTE(torch.autograd.Function):
    """``weight * mask`` forward; ``grad + decay * (1 - mask) * weight`` backward."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, mask = ctx.saved_tensors
        grad_weight = grad if ctx.decay == 0 else grad + ctx.decay * (~mask) * weight
        return grad_weight, None, None


def srste_weight(weight: torch.Tensor, pattern: Pattern = (2, 4), decay: float = DEFAULT_DECAY) -> torch.Tensor:
    """The masked weight for the forward pass, with the SR-STE backward (identity when dense)."""
    if pattern is None:
        return weight
    mask = nm_mask(weight.detach(), *pattern)
    return _SRSTE.apply(weight, mask, decay)


@dataclass
class SparsitySchedule:
    """Dense -> 2:4 over training steps ``[start_step, end_step]``; exactly 2:4 from ``end_step``.

    ``by``:
      - ``"layers"``: layers turn 2:4 one after another (in ``order``), evenly spread over the
        window, so the sparse fraction of layers grows linearly to 1 at ``end_step``;
      - ``"ladder"``: all layers walk the n:m ``ladder`` together, the rungs before the last
        one sharing the window equally; the last rung must be (2, 4) and starts at ``end_step``;
      - ``"layers+ladder"``: layer i enters the ladder at its turn (start + i/count of the
        window); all reach 2:4 at ``end_step``.
    ``order``: ``"model"`` (named_modules order), ``"reverse"``, or an explicit name list.
    ``start_step == end_step`` (the default 0, 0) is one-shot: 2:4 from the first step.
    """

    start_step: int = 0
    end_step: int = 0
    by: str = "layers"
    ladder: Sequence[tuple[int, int]] = ((3, 4), (2, 4))
    order: Union[str, Sequence[str]] = "model"

    def __post_init__(self) -> None:
        if self.by not in ("layers", "ladder", "layers+ladder"):
            raise ValueError(f"by={self.by!r}: expected 'layers', 'ladder' or 'layers+ladder'")
        if self.end_step < self.start_step or self.start_step < 0:
            raise ValueError(f"need 0 <= start_step <= end_step, got {self.start_step}, {self.end_step}")
        self.ladder = tuple((int(n), int(m)) for n, m in self.ladder)
        if not self.ladder or self.ladder[-1] != (2, 4):
            raise ValueError(f"the ladder must end with (2, 4), got {self.ladder}")
        for n, m in self.ladder:
            if m not in (4, 8) or not 0 < n <= m:
                raise ValueError(f"ladder rung {n}:{m}: m must be 4 or 8 (it must divide every eligible K, "
                                 f"a multiple of 8) and 0 < n <= m")

    def pattern(self, step: int, index: int, count: int) -> Pattern:
        """The pattern of the ``index``-th layer (in activation order) of ``count`` at ``step``."""
        if step >= self.end_step:
            return (2, 4)
        if step < self.start_step:
            return None
        span = self.end_step - self.start_step
        if self.by == "layers":  # layer i turns 2:4 at the end of its 1/count of the window
            return (2, 4) if step >= self.start_step + span * (index + 1) / count else None
        begin = self.start_step + (span * index / count if self.by == "layers+ladder" else 0)
        rungs = self.ladder[:-1]  # the last rung, 2:4, starts exactly at end_step
        if step < begin or not rungs:
            return None
        progress = (step - begin) / (self.end_step - begin)
        return rungs[min(int(progress * len(rungs)), len(rungs) - 1)]


class _SRSTEMixin:
    """Attributes shared by the two wrappers: ``pattern`` (current n:m or None) and ``decay``."""

    pattern: Pattern
    decay: float

    def masked_weight(self) -> torch.Tensor:
        return srste_weight(self.weight, self.pattern, self.decay)

    def current_mask(self) -> torch.Tensor:
        if self.pattern is None:
            return torch.ones_like(self.weight, dtype=torch.bool)
        return nm_mask(self.weight.detach(), *self.pattern)

    def extra_repr(self) -> str:
        pat = "dense" if self.pattern is None else f"{self.pattern[0]}:{self.pattern[1]}"
        return f"{super().extra_repr()}, srste={pat}, decay={self.decay:g}"


class SRSTELinear(_SRSTEMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)


class SRSTEConv2d(_SRSTEMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)


_WRAPPERS = {nn.Linear: SRSTELinear, nn.Conv2d: SRSTEConv2d}
_PLAIN = {SRSTELinear: nn.Linear, SRSTEConv2d: nn.Conv2d}


def _swap_class(module: nn.Module, cls: type, **extra) -> nn.Module:
    """A module of class ``cls`` holding the same parameter/buffer objects as ``module``."""
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    for key in ("_parameters", "_buffers", "_modules"):
        state[key] = dict(state[key])
    for key in ("pattern", "decay"):
        state.pop(key, None)
    new.__dict__.update(state)
    new.__dict__.update(extra)
    return new


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


class SparseTraining:
    """Handle returned by :func:`sparsify_for_training`: advances the schedule.

    Call :meth:`step` once per optimizer step (or :meth:`set_step`). ``layers`` lists the
    wrapped layers in activation order; ``skipped`` the Linear/Conv2d left dense and why.
    """

    def __init__(self, model: nn.Module, layers: list[tuple[str, nn.Module]], skipped: dict[str, str],
                 schedule: SparsitySchedule):
        self.model = model
        self.layers = layers
        self.skipped = skipped
        self.schedule = schedule
        self.current_step = 0
        self.set_step(0)

    def set_step(self, step: int) -> None:
        self.current_step = int(step)
        for i, (_, module) in enumerate(self.layers):
            module.pattern = self.schedule.pattern(self.current_step, i, len(self.layers))

    def step(self, n: int = 1) -> None:
        self.set_step(self.current_step + n)

    def patterns(self) -> dict[str, Pattern]:
        return {name: module.pattern for name, module in self.layers}

    @property
    def sparse_fraction(self) -> float:
        """Fraction of wrapped layers currently at 2:4."""
        if not self.layers:
            return 1.0
        return sum(m.pattern == (2, 4) for _, m in self.layers) / len(self.layers)

    @property
    def done(self) -> bool:
        return all(m.pattern == (2, 4) for _, m in self.layers)


def sparsify_for_training(model: nn.Module, schedule: Optional[SparsitySchedule] = None, *,
                          include: Selector = None, exclude: Selector = None,
                          decay: float = DEFAULT_DECAY) -> SparseTraining:
    """Wrap every eligible layer of ``model`` (in place) for SR-STE 2:4 fine-tuning.

    Eligible and selected as in :func:`sparsedm.train.prune24`; only exact ``nn.Linear`` /
    ``nn.Conv2d`` instances are wrapped (a subclass has its own forward). ``schedule``
    defaults to one-shot 2:4. ``decay`` is SR-STE's lambda (2e-4). Parameters keep their
    identity and names. Returns the :class:`SparseTraining` handle; call ``handle.step()``
    after each optimizer step, and :func:`finalize` at the end.
    """
    if any(isinstance(m, tuple(_PLAIN)) for m in model.modules()):
        raise ValueError("the model already has SR-STE layers; call finalize(model) before wrapping again")
    if isinstance(model, (nn.Linear, nn.Conv2d)):
        raise ValueError("wrap a container module, not a bare layer (the wrapper replaces the layer in its parent)")
    schedule = SparsitySchedule() if schedule is None else schedule
    eligible, skipped = select_layers(model, include, exclude)
    layers = []
    for name, module in eligible:
        if type(module) not in _WRAPPERS:
            base = type(module).__mro__[1].__name__
            skipped[name] = f"{type(module).__name__} subclasses {base} with its own forward; not wrapped"
            continue
        wrapper = _swap_class(module, _WRAPPERS[type(module)], pattern=None, decay=float(decay))
        _set_submodule(model, name, wrapper)
        layers.append((name, wrapper))
    if isinstance(schedule.order, str):
        if schedule.order not in ("model", "reverse"):
            raise ValueError(f"order={schedule.order!r}: expected 'model', 'reverse' or a list of layer names")
        if schedule.order == "reverse":
            layers = layers[::-1]
    else:
        rank = {name: i for i, name in enumerate(schedule.order)}
        missing = [n for n, _ in layers if n not in rank]
        if missing:
            raise ValueError(f"schedule.order does not name the wrapped layer(s) {missing[:5]}")
        layers.sort(key=lambda item: rank[item[0]])
    return SparseTraining(model, layers, skipped, schedule)


@torch.no_grad()
def finalize(model: nn.Module) -> nn.Module:
    """Fix the 2:4 masks (DESIGN rule on the current weights), zero pruned weights in place and
    swap the wrappers back to plain ``nn.Linear`` / ``nn.Conv2d``; returns ``model``.

    The result holds 2:4 zeros in every wrapped layer, which ``sparsedm.optimize()`` and the
    converter's ``zeroed`` reader accept. Warns when the schedule had not reached 2:4 yet.
    """
    behind = []
    for name, module in list(model.named_modules()):
        if type(module) not in _PLAIN:
            continue
        if module.pattern != (2, 4):
            behind.append(name)
        module.weight.mul_(mask24(module.weight))
        _set_submodule(model, name, _swap_class(module, _PLAIN[type(module)]))
    if behind:
        warnings.warn(f"finalize: {len(behind)} layer(s) had not reached 2:4 in the schedule ({', '.join(behind[:3])}"
                      f"{', ...' if len(behind) > 3 else ''}); they were cut to 2:4 now, so fine-tune further for "
                      f"best quality", stacklevel=2)
    return model
