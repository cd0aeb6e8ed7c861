"""Progressive distillation (Salimans & Ho 2022): a student learns one DDIM step per two of its teacher.

Conventions (DESIGN.md "Facts about the checkpoints", Google's diffusion_distillation):

- continuous time t in [0, 1]; cosine logSNR schedule clipped to [-20, 20]:
  ``logsnr(t) = -2 log tan(a t + b)`` with ``b = atan(exp(-logsnr_max/2))`` and
  ``a = atan(exp(-logsnr_min/2)) - b``; ``alpha^2 = sigmoid(logsnr)``, ``sigma^2 = sigmoid(-logsnr)``;
- ``z_t = alpha_t x + sigma_t eps``; the network predicts ``v = alpha eps - sigma x`` (or eps, or x),
  ``x_hat = alpha z - sigma v``, ``eps_hat = sigma z + alpha v``;
- DDIM (eta = 0): ``z_s = alpha_s x_hat + sigma_s eps_hat``;
- the network is called as ``net(z, time, **model_kwargs)`` with ``time`` = logSNR (Google) or
  ``t * scale`` (``TimeInput("continuous", scale)``; U-ViT's convention is t * 999). The PyTorch
  port feeds ``step_index * time_scale`` on a discrete cosine-beta schedule instead; train with
  continuous t here and the manifest says so.

Distillation target (Algorithm 2 of the paper): from ``z_t`` the teacher takes two DDIM steps,
t -> t - 1/(2N) -> t - 1/N = t''. The student's single DDIM step t -> t'' lands on the same
``z_t''`` iff its x-prediction is

    x_tilde = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)

The loss is ``w(logsnr_t) * |x_tilde - x_hat_student|^2`` with ``w = max(SNR, 1)``
("truncated_snr") or ``SNR + 1`` ("snr+1", which equals the plain MSE on v).
"""

from __future__ import annotations

import copy
import math
import time as _time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn as nn

__all__ = [
    "TimeInput",
    "logsnr_cosine",
    "alpha_sigma",
    "predict",
    "ddim_step",
    "ddim_sample",
    "distill_target",
    "DistillStep",
    "distill_step",
    "progressive_distill",
    "sampler_settings",
]

LOGSNR_MIN, LOGSNR_MAX = -20.0, 20.0
PREDICTIONS = ("v", "eps", "x")
WEIGHTINGS = ("truncated_snr", "snr+1")


@dataclass(frozen=True)
class TimeInput:
    """What the network sees as its time argument: ``"logsnr"``, or ``"continuous"`` (alias
    ``"t"``): ``t * scale``. The names are those of docs/SAMPLING.md's ``time_input``."""

    kind: str = "logsnr"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind == "t":
            object.__setattr__(self, "kind", "continuous")
        if self.kind not in ("logsnr", "continuous"):
            raise ValueError(f"TimeInput kind {self.kind!r}: expected 'logsnr' or 'continuous' (t * scale)")

    @classmethod
    def parse(cls, value: Union["TimeInput", str, tuple]) -> "TimeInput":
        if isinstance(value, TimeInput):
            return value
        if isinstance(value, str):
            return cls(value)
        return cls(*value)

    def __call__(self, t: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        return logsnr if self.kind == "logsnr" else t * self.scale

    def to_manifest(self) -> dict:
        return {"kind": "logsnr"} if self.kind == "logsnr" else {"kind": "continuous", "scale": float(self.scale)}


def logsnr_cosine(t: torch.Tensor, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX) -> torch.Tensor:
    """Cosine logSNR at time ``t`` in [0, 1] (float64), equal to ``logsnr_max`` at 0 and ``logsnr_min`` at 1."""
    t = torch.as_tensor(t, dtype=torch.float64)
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    return -2.0 * torch.log(torch.tan(a * t + b))


def alpha_sigma(logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha, sigma)`` with alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr)."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample ``[B]`` (or scalar) float64 -> ``like``'s dtype, shaped to broadcast over ``like``."""
    v = v.to(device=like.device, dtype=like.dtype)
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim())) if v.dim() else v


def _per_sample(t: Union[float, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64, device=z.device)
    return t.expand(z.shape[0]) if t.dim() == 0 else t


def predict(net: nn.Module, z: torch.Tensor, t: Union[float, torch.Tensor], *,
            time_input: Union[TimeInput, str, tuple] = "logsnr", prediction: str = "v",
            clip_x0: Optional[Sequence[float]] = None, model_kwargs: Optional[dict] = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``net`` at time ``t`` and return ``(x_hat, eps_hat, raw_output)``.

    ``clip_x0 = (lo, hi)`` clamps x_hat and recomputes eps_hat = (z - alpha x_hat) / sigma, as
    Google's sampler does.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}")
    t = _per_sample(t, z)
    logsnr = logsnr_cosine(t)
    time_arg = TimeInput.parse(time_input)(t, logsnr).to(z.dtype)
    out = net(z, time_arg, **(model_kwargs or {}))
    a, s = (_bcast(v, z) for v in alpha_sigma(logsnr))
    if prediction == "v":
        x_hat, eps_hat = a * z - s * out, s * z + a * out
    elif prediction == "eps":
        x_hat, eps_hat = (z - s * out) / a, out
    else:
        x_hat, eps_hat = out, (z - a * out) / s
    if clip_x0 is not None:
        x_hat = x_hat.clamp(float(clip_x0[0]), float(clip_x0[1]))
        eps_hat = (z - a * x_hat) / s
    return x_hat, eps_hat, out


def ddim_step(x_hat: torch.Tensor, eps_hat: torch.Tensor, s: Union[float, torch.Tensor]) -> torch.Tensor:
    """Deterministic DDIM update to time ``s``: ``z_s = alpha_s x_hat + sigma_s eps_hat``."""
    a_s, s_s = (_bcast(v, x_hat) for v in alpha_sigma(logsnr_cosine(_per_sample(s, x_hat))))
    return a_s * x_hat + s_s * eps_hat


@torch.no_grad()
def ddim_sample(net: nn.Module, z: torch.Tensor, steps: int, *, time_input: Union[TimeInput, str, tuple] = "logsnr",
                prediction: str = "v", clip_x0: Optional[Sequence[float]] = None,
                model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """Sample from noise ``z`` (at t = 1) with ``steps`` uniform DDIM steps; returns the final x_hat."""
    x_hat = z
    for i in range(steps, 0, -1):
        x_hat, eps_hat, _ = predict(net, z, i / steps, time_input=time_input, prediction=prediction,
                                    clip_x0=clip_x0, model_kwargs=model_kwargs)
        z = ddim_step(x_hat, eps_hat, (i - 1) / steps)
    return x_hat


@torch.no_grad()
def distill_target(teacher: nn.Module, z_t: torch.Tensor, t: torch.Tensor, student_steps: int, *,
                   time_input: Union[TimeInput, str, tuple] = "logsnr", prediction: str = "v",
                   clip_x0: Optional[Sequence[float]] = None, model_kwargs: Optional[dict] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_tilde, z_t'')``: the x-prediction that makes one student DDIM step t -> t - 1/N land
    where two teacher DDIM steps (t -> t - 1/(2N) -> t - 1/N) land, and that landing point."""
    kw = dict(time_input=time_input, prediction=prediction, clip_x0=clip_x0, model_kwargs=model_kwargs)
    t = _per_sample(t, z_t)
    t_mid, t_end = t - 0.5 / student_steps, t - 1.0 / student_steps
    x1, e1, _ = predict(teacher, z_t, t, **kw)
    z_mid = ddim_step(x1, e1, t_mid)
    x2, e2, _ = predict(teacher, z_mid, t_mid, **kw)
    z_end = ddim_step(x2, e2, t_end)
    a_t, s_t = alpha_sigma(logsnr_cosine(t))
    a_e, s_e = alpha_sigma(logsnr_cosine(t_end))
    ratio = s_e / s_t  # float64 throughout: the denominator is small near t = 1
    num = z_end.double() - _bcast(ratio, z_end.double()) * z_t.double()
    x_tilde = num / _bcast(a_e - ratio * a_t, num)
    return x_tilde.to(z_t.dtype), z_end


@dataclass
class DistillStep:
    loss: torch.Tensor  # scalar, mean over the batch; call .backward()
    x_target: torch.Tensor  # x_tilde
    x_student: torch.Tensor  # the student's x_hat
    z_t: torch.Tensor
    t: torch.Tensor  # [B] float64
    logsnr: torch.Tensor  # [B] float64


def distill_step(teacher: nn.Module, student: nn.Module, x0: torch.Tensor, *, student_steps: int,
                 time_input: Union[TimeInput, str, tuple] = "logsnr", prediction: str = "v",
                 weighting: str = "truncated_snr", clip_x0: Optional[Sequence[float]] = None,
                 model_kwargs: Optional[dict] = None, t: Optional[torch.Tensor] = None,
                 noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None) -> DistillStep:
    """One progressive-distillation loss for a batch of clean data ``x0`` ``[B, ...]``.

    ``t`` defaults to ``i / student_steps`` with i uniform in 1..student_steps (the student's
    grid); ``noise`` to a standard normal draw. The teacher runs without gradients; the loss
    carries the student's graph. ``weighting``: ``"truncated_snr"`` = max(SNR, 1) or
    ``"snr+1"``, applied to the x-space error (for v-prediction computed as
    ``w * sigma^2 * |v_tilde - v|^2``, the numerically stable equal form).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}: expected one of {WEIGHTINGS}")
    if student_steps < 1:
        raise ValueError(f"student_steps={student_steps} must be >= 1")
    b = x0.shape[0]
    if t is None:
        i = torch.randint(1, student_steps + 1, (b,), generator=generator, device="cpu")
        t = i.double() / student_steps
    t = _per_sample(t, x0)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device="cpu", dtype=x0.dtype).to(x0.device)
    logsnr = logsnr_cosine(t)
    a, s = (_bcast(v, x0) for v in alpha_sigma(logsnr))
    z_t = a * x0 + s * noise
    kw = dict(time_input=time_input, prediction=prediction, model_kwargs=model_kwargs)
    x_tilde, _ = distill_target(teacher, z_t, t, student_steps, clip_x0=clip_x0, **kw)
    x_hat, _, out = predict(student, z_t, t, **kw)
    snr = torch.exp(logsnr)
    w = torch.clamp(snr, min=1.0) if weighting == "truncated_snr" else snr + 1.0
    reduce_dims = tuple(range(1, x0.dim()))
    if prediction == "v":
        # x_hat = alpha z - sigma v, so |x_tilde - x_hat|^2 = sigma^2 |v_tilde - v|^2.
        v_tilde = (a * z_t - x_tilde) / s
        err = (v_tilde - out).pow(2).mean(reduce_dims)
        loss = (_bcast(w * torch.sigmoid(-logsnr), err) * err).mean()
    else:
        err = (x_tilde - x_hat).pow(2).mean(reduce_dims)
        loss = (_bcast(w, err) * err).mean()
    return DistillStep(loss=loss, x_target=x_tilde, x_student=x_hat, z_t=z_t, t=t, logsnr=logsnr)


def sampler_settings(steps: int, *, time_input: Union[TimeInput, str, tuple] = "logsnr", prediction: str = "v",
                     clip_x0: Optional[Sequence[float]] = (-1.0, 1.0), extra: Optional[dict] = None) -> dict:
    """The sampler block a converted file's manifest records (DESIGN: steps, schedule, time-input
    convention, prediction type, clipping): a ``sparsedm.sampling.from_config`` dict
    (docs/SAMPLING.md). ``extra`` keys must start with ``_`` (or be informational, e.g.
    ``notes``), since from_config rejects unknown keys."""
    out = {
        "kind": "ddim",
        "steps": int(steps),
        "prediction": prediction,
        "schedule": {"name": "cosine_logsnr", "logsnr_min": LOGSNR_MIN, "logsnr_max": LOGSNR_MAX},
        "time_input": TimeInput.parse(time_input).to_manifest(),
        # Google's grid: t_i = i/steps from 1 down to 0, x_hat of the last step returned.
        "spacing": "time_uniform",
        "t_start": 1.0,
        "t_end": 0.0,
        "final": "clean",
        "clip_x0": None if clip_x0 is None else [float(clip_x0[0]), float(clip_x0[1])],
        "eta": 0.0,
        "source": "sparsedm.train.progressive_distill",
    }
    if extra:
        out.update(extra)
    return out


@dataclass
class DistillResult:
    student: nn.Module
    sampler: dict  # sampler_settings(...) of the final student
    history: list[dict] = field(default_factory=list)  # one entry per round


def _batches(data: Union[torch.Tensor, Callable], batch_size: int, generator: torch.Generator):
    while True:
        if callable(data):
            item = data(batch_size)
        else:
            idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
            item = data[idx]
        yield item if isinstance(item, tuple) else (item, None)


def progressive_distill(teacher: nn.Module, data: Union[torch.Tensor, Callable[[int], Any]], *,
                        start_steps: int, end_steps: int, iters_per_round: int, batch_size: int = 64,
                        lr: float = 1e-4, optimizer: Optional[Callable[[list], torch.optim.Optimizer]] = None,
                        time_input: Union[TimeInput, str, tuple] = "logsnr", prediction: str = "v",
                        weighting: str = "truncated_snr", clip_x0: Optional[Sequence[float]] = None,
                        sample_clip_x0: Optional[Sequence[float]] = (-1.0, 1.0),
                        sparse: Union[bool, dict] = False, seed: int = 0,
                        log: Optional[Callable[[dict], None]] = None, log_every: int = 50) -> DistillResult:
    """Rounds of distillation, each halving the steps: teacher at ``2N`` -> student at ``N``.

    ``teacher`` samples well with ``start_steps`` DDIM steps; rounds run until the student
    takes ``end_steps`` (``start_steps / end_steps`` must be a power of 2). Each student starts
    as a copy of its teacher and trains ``iters_per_round`` iterations with Adam(lr) (or
    ``optimizer(params)``). ``data``: a tensor of clean samples (random batches are drawn) or
    ``fn(batch_size) -> x0`` / ``(x0, model_kwargs)``. ``sparse=True`` (or a dict of
    :func:`sparsify_for_training` arguments) keeps every student 2:4 with SR-STE and finalizes
    it at the end of its round. ``clip_x0`` clips the teacher's x-predictions inside the target;
    ``sample_clip_x0`` is recorded in the sampler settings.

    Returns the final student (eval mode, parameters frozen), its sampler settings, and
    per-round history (steps, final loss, seconds). ``teacher`` is put in eval mode and not
    otherwise changed.
    """
    from sparsedm.train.srste import finalize, sparsify_for_training

    counts = [("start_steps", start_steps), ("end_steps", end_steps), ("iters_per_round", iters_per_round),
              ("batch_size", batch_size)] + ([("log_every", log_every)] if log is not None else [])
    for name, value in counts:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: pass a positive integer")
    if start_steps % end_steps or (start_steps // end_steps) & (start_steps // end_steps - 1):
        raise ValueError(f"start_steps / end_steps = {start_steps}/{end_steps} must be a power of 2")
    generator = torch.Generator().manual_seed(seed)
    device = next(teacher.parameters()).device
    history: list[dict] = []
    steps = start_steps
    kw = dict(time_input=time_input, prediction=prediction, weighting=weighting, clip_x0=clip_x0)
    while steps > end_steps:
        student_steps = steps // 2
        teacher.eval()  # the target is computed under no_grad; the teacher's flags are left alone
        student = copy.deepcopy(teacher)
        for p in student.parameters():
            p.requires_grad_(True)
        if sparse:
            sparsify_for_training(student, **(sparse if isinstance(sparse, dict) else {}))
        student.train()
        params = [p for p in student.parameters() if p.requires_grad]
        opt = optimizer(params) if optimizer is not None else torch.optim.Adam(params, lr=lr)
        batches = _batches(data, batch_size, generator)
        started, losses = _time.perf_counter(), []
        for it in range(iters_per_round):
            x0, model_kwargs = next(batches)
            x0 = x0.to(device)
            out = distill_step(teacher, student, x0, student_steps=student_steps, model_kwargs=model_kwargs,
                               generator=generator, **kw)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            losses.append(float(out.loss.detach()))
            if log is not None and (it % log_every == 0 or it == iters_per_round - 1):
                log({"round_steps": student_steps, "iter": it, "loss": losses[-1]})
        if sparse:
            finalize(student)
        student.eval()
        tail = losses[-max(1, len(losses) // 10):]
        history.append({"teacher_steps": steps, "student_steps": student_steps, "iters": iters_per_round,
                        "final_loss": sum(tail) / len(tail), "seconds": _time.perf_counter() - started})
        teacher, steps = student, student_steps
    for p in teacher.parameters():
        p.requires_grad_(False)
    extra = {"_distillation": {"start_steps": start_steps, "weighting": weighting, "rounds": history}}
    return DistillResult(student=teacher, sampler=sampler_settings(steps, time_input=time_input, prediction=prediction,
                                                                   clip_x0=sample_clip_x0, extra=extra),
                         history=history)
