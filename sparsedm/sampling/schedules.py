"""Noise schedules of variance-preserving diffusions and the time grids samplers walk.

Every schedule describes ``z_t = alpha_t * x + sigma_t * eps`` with ``alpha_t^2 + sigma_t^2 = 1``
and half-logSNR ``lambda_t = log(alpha_t / sigma_t)``. All schedule math runs on the host in
float64 (``math`` / numpy): the coefficients of a whole sampling run are computed once before
the loop, so the loop itself never reads a device value back (no host syncs).

Schedules (``"name"`` in the sampler config's ``"schedule"`` dict, docs/SAMPLING.md):

- ``vp_linear``: the continuous VPSDE of U-ViT and score-SDE, ``beta(t) = beta_min + t (beta_max -
  beta_min)`` on t in [0, 1], ``log alpha_t = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2``;
- ``cosine_logsnr``: progressive distillation (Salimans & Ho), ``logSNR(t) = -2 log tan(a t + b)``
  with b, a chosen so logSNR(0) = logsnr_max, logSNR(1) = logsnr_min;
- discrete schedules over indices 0..N-1 from betas: ``linear``, ``scaled_linear`` (Stable
  Diffusion's: sqrt-linear from 0.00085 to 0.012, 1000 steps) and ``cosine`` (Nichol & Dhariwal,
  the diffusion_distiller port: s = 0.008, betas clamped at 0.999). ``alpha_bar_i = prod_{j<=i}
  (1 - beta_j)``. They can also be used in continuous time t in [1/N, 1] the way the official
  DPM-Solver code does (piecewise-linear log alpha between t_i = (i + 1) / N).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


class ScheduleError(ValueError):
    """A schedule or time-grid setting that cannot be used; the message says how to fix it."""


class Schedule(abc.ABC):
    """Base class: continuous schedules implement ``log_alpha(t)`` and ``inverse_lambda``."""

    discrete = False
    #: time at the noisy end
    t_max = 1.0

    @abc.abstractmethod
    def log_alpha(self, t: np.ndarray) -> np.ndarray:
        """log(alpha_t) of the VP process at times ``t``."""

    def alpha_sigma(self, t) -> tuple[np.ndarray, np.ndarray]:
        la = self.log_alpha(np.asarray(t, dtype=np.float64))
        alpha = np.exp(la)
        sigma = np.sqrt(-np.expm1(2.0 * la))  # sqrt(1 - alpha^2) without cancellation near t = 0
        return alpha, sigma

    def lambda_(self, t) -> np.ndarray:
        la = self.log_alpha(np.asarray(t, dtype=np.float64))
        return la - 0.5 * np.log(-np.expm1(2.0 * la))

    @abc.abstractmethod
    def inverse_lambda(self, lam: np.ndarray) -> np.ndarray:
        """The time t at which lambda(t) = log(alpha_t / sigma_t) equals ``lam``."""

    def logsnr(self, t) -> np.ndarray:
        return 2.0 * self.lambda_(t)


class VPLinear(Schedule):
    """Continuous VPSDE with linear beta(t) (U-ViT pixel models: beta 0.1 -> 20)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 <= beta_min < beta_max:
            raise ScheduleError(f"vp_linear needs 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t):
        return self.beta_min + np.asarray(t, dtype=np.float64) * (self.beta_max - self.beta_min)

    def log_alpha(self, t):
        t = np.asarray(t, dtype=np.float64)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def inverse_lambda(self, lam):
        # closed form of the official DPM-Solver NoiseScheduleVP('linear')
        lam = np.asarray(lam, dtype=np.float64)
        d = self.beta_max - self.beta_min
        tmp = 2.0 * d * np.logaddexp(-2.0 * lam, 0.0)
        return tmp / (np.sqrt(self.beta_min**2 + tmp) + self.beta_min) / d


class CosineLogSNR(Schedule):
    """``logSNR(t) = -2 log tan(a t + b)`` clipped to [logsnr_min, logsnr_max] (Google's
    progressive distillation; the network is conditioned on logSNR)."""

    def __init__(self, logsnr_min: float = -20.0, logsnr_max: float = 20.0):
        if not logsnr_min < logsnr_max:
            raise ScheduleError(f"cosine_logsnr needs logsnr_min < logsnr_max, got {logsnr_min}, {logsnr_max}")
        self.logsnr_min, self.logsnr_max = float(logsnr_min), float(logsnr_max)
        self.b = math.atan(math.exp(-0.5 * self.logsnr_max))
        self.a = math.atan(math.exp(-0.5 * self.logsnr_min)) - self.b

    def logsnr(self, t):
        return -2.0 * np.log(np.tan(self.a * np.asarray(t, dtype=np.float64) + self.b))

    def lambda_(self, t):
        return 0.5 * self.logsnr(t)

    def alpha_sigma(self, t):
        ls = self.logsnr(t)
        # alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr)
        return np.sqrt(1.0 / (1.0 + np.exp(-ls))), np.sqrt(1.0 / (1.0 + np.exp(ls)))

    def log_alpha(self, t):
        return 0.5 * -np.logaddexp(0.0, -self.logsnr(t))

    def inverse_lambda(self, lam):
        return (np.arctan(np.exp(-np.asarray(lam, dtype=np.float64))) - self.b) / self.a


def make_betas(name: str, n_timesteps: int, beta_start: Optional[float] = None, beta_end: Optional[float] = None,
               s: float = 0.008, clip_beta_max: float = 0.999) -> np.ndarray:
    """float64 betas [N] of a discrete schedule (same formulas as diffusers and the checkpoints' code)."""
    if not isinstance(n_timesteps, int) or n_timesteps <= 0:
        raise ScheduleError(f"n_timesteps must be a positive integer, got {n_timesteps!r}")
    if name == "linear":
        return np.linspace(beta_start if beta_start is not None else 1e-4, beta_end if beta_end is not None else 0.02,
                           n_timesteps, dtype=np.float64)
    if name == "scaled_linear":
        lo = beta_start if beta_start is not None else 0.00085
        hi = beta_end if beta_end is not None else 0.012
        return np.linspace(lo**0.5, hi**0.5, n_timesteps, dtype=np.float64) ** 2
    if name == "cosine":
        # diffusion_distiller's make_beta_schedule("cosine"): f(i) = cos^2(((i / N) + s) / (1 + s) * pi / 2)
        steps = np.arange(n_timesteps + 1, dtype=np.float64) / n_timesteps + s
        f = np.cos(steps / (1 + s) * math.pi / 2) ** 2
        f = f / f[0]
        return np.minimum(1 - f[1:] / f[:-1], clip_beta_max)
    raise ScheduleError(f"unknown discrete schedule {name!r} (known: linear, scaled_linear, cosine)")


class Discrete(Schedule):
    """A schedule over indices 0..N-1 given by betas; ``alpha_bar_i = prod_{j<=i} (1 - beta_j)``.

    Index mode (``alpha_sigma_index``) is what DDPM/DDIM code and diffusers use. Continuous mode
    (``alpha_sigma(t)``, t in [1/N, 1]) interpolates log alpha linearly between t_i = (i + 1) / N,
    exactly as the official DPM-Solver ``NoiseScheduleVP('discrete')`` (used by U-ViT's latent
    models with network time t * N).
    """

    discrete = True

    def __init__(self, betas: Sequence[float]):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0 or np.any(betas <= 0) or np.any(betas >= 1):
            raise ScheduleError("betas must be a non-empty 1-D array with 0 < beta < 1")
        self.betas = betas
        self.alphas_cumprod = np.cumprod(1.0 - betas)
        self.n = len(betas)
        self.t_array = np.linspace(0.0, 1.0, self.n + 1)[1:]
        self.log_alpha_array = 0.5 * np.log(self.alphas_cumprod)

    def alpha_sigma_index(self, i) -> tuple[np.ndarray, np.ndarray]:
        ab = self.alphas_cumprod[np.asarray(i, dtype=np.int64)]
        return np.sqrt(ab), np.sqrt(1.0 - ab)

    def log_alpha(self, t):
        return np.interp(np.asarray(t, dtype=np.float64), self.t_array, self.log_alpha_array)

    def inverse_lambda(self, lam):
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lam, dtype=np.float64))
        return np.interp(log_alpha, self.log_alpha_array[::-1], self.t_array[::-1])


def schedule_from_config(cfg: dict) -> Schedule:
    """Build a schedule from the sampler config's ``"schedule"`` dict (docs/SAMPLING.md)."""
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ScheduleError(f"schedule must be a dict with a \"name\", got {cfg!r}")
    name = cfg["name"]
    known = {"name"}
    if name == "vp_linear":
        known |= {"beta_min", "beta_max"}
        sched: Schedule = VPLinear(cfg.get("beta_min", 0.1), cfg.get("beta_max", 20.0))
    elif name == "cosine_logsnr":
        known |= {"logsnr_min", "logsnr_max"}
        sched = CosineLogSNR(cfg.get("logsnr_min", -20.0), cfg.get("logsnr_max", 20.0))
    elif name in ("linear", "scaled_linear", "cosine"):
        known |= {"n_timesteps", "beta_start", "beta_end", "s", "clip_beta_max"}
        default_n = 1024 if name == "cosine" else 1000
        sched = Discrete(make_betas(name, int(cfg.get("n_timesteps", default_n)), cfg.get("beta_start"), cfg.get("beta_end"),
                                    cfg.get("s", 0.008), cfg.get("clip_beta_max", 0.999)))
    elif name == "betas":
        known |= {"betas"}
        sched = Discrete(cfg["betas"])
    else:
        raise ScheduleError(f"unknown schedule {name!r} (known: vp_linear, cosine_logsnr, linear, scaled_linear, cosine, betas)")
    unknown = set(cfg) - known
    if unknown:
        raise ScheduleError(f"schedule {name!r} does not take {sorted(unknown)} (it takes {sorted(known)})")
    return sched


# --------------------------------------------------------------------------------------------
# time grids


@dataclass(frozen=True)
class TimePoint:
    """One point of a sampling grid: continuous time or index ``t``, the marginal's
    ``alpha``/``sigma``, and the time value fed to the network (None for a point where the
    network is never called, such as the clean endpoint)."""

    t: float
    alpha: float
    sigma: float
    net_time: Optional[float]

    @property
    def lam(self) -> float:
        if self.sigma == 0.0:
            return math.inf
        return math.log(self.alpha) - math.log(self.sigma)


CONTINUOUS_SPACINGS = ("time_uniform", "logsnr_uniform", "time_quadratic")
DISCRETE_SPACINGS = ("linspace", "leading", "trailing")
FINALS = ("clean", "t_end", "alpha_0")


def network_time(schedule: Schedule, t: float, time_input: dict) -> float:
    """The time value the network expects at grid time t (docs/SAMPLING.md, "time_input")."""
    kind = time_input.get("kind")
    if kind == "continuous":
        return float(t) * float(time_input.get("scale", 1.0))
    if kind == "logsnr":
        return float(schedule.logsnr(t))
    if kind in ("step_index", "index"):
        return float(t) * float(time_input.get("scale", 1.0))
    raise ScheduleError(f"unknown time_input kind {kind!r} (known: continuous, logsnr, step_index)")


def discrete_indices(n_train: int, steps: int, spacing: str, offset: int = 0) -> list[int]:
    """Indices, noisy first, the way diffusers' ``timestep_spacing`` picks them."""
    if not 1 <= steps <= n_train:
        raise ScheduleError(f"steps={steps} must be between 1 and the schedule's {n_train} timesteps")
    if spacing == "linspace":
        idx = np.linspace(0, n_train - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
        # diffusers' DPMSolverMultistep: linspace over steps + 1 points, last dropped
        return [int(i) for i in idx]
    if spacing == "leading":
        ratio = n_train // steps
        idx = (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + offset
    elif spacing == "trailing":
        ratio = n_train / steps
        idx = np.round(np.arange(n_train, 0, -ratio)).astype(np.int64) - 1
    else:
        raise ScheduleError(f"unknown discrete spacing {spacing!r} (known: {', '.join(DISCRETE_SPACINGS)})")
    return [int(i) for i in idx]


def make_grid(schedule: Schedule, steps: int, time_input: dict, spacing: Optional[str] = None,
              t_end: Optional[float] = None, final: Optional[str] = None, t_start: Optional[float] = None,
              offset: int = 0) -> list[TimePoint]:
    """``steps + 1`` points, noisy first: the network is called at the first ``steps`` points;
    the last is where the run ends (``final``: "clean" alpha=1, sigma=0; "t_end" the continuous
    grid's end time; "alpha_0" the discrete schedule's index 0)."""
    if not isinstance(steps, int) or steps < 1:
        raise ScheduleError(f"steps must be a positive integer, got {steps!r}")
    index_mode = time_input.get("kind") in ("step_index", "index")
    if index_mode and not schedule.discrete:
        raise ScheduleError("time_input kind step_index needs a discrete schedule (linear, scaled_linear, cosine)")
    points: list[TimePoint] = []
    if index_mode:
        spacing = spacing or "leading"
        if spacing not in DISCRETE_SPACINGS:
            raise ScheduleError(f"spacing {spacing!r} is for continuous time; with step_index use one of {DISCRETE_SPACINGS}")
        final = final or "clean"
        idx = discrete_indices(schedule.n, steps, spacing, offset)
        alpha, sigma = schedule.alpha_sigma_index(idx)
        for i, a, s in zip(idx, alpha, sigma):
            points.append(TimePoint(float(i), float(a), float(s), network_time(schedule, i, time_input)))
        if final == "clean":
            points.append(TimePoint(-1.0, 1.0, 0.0, None))
        elif final == "alpha_0":
            a, s = schedule.alpha_sigma_index(0)
            points.append(TimePoint(-1.0, float(a), float(s), None))
        else:
            raise ScheduleError(f"final={final!r} does not apply to an index grid (use clean or alpha_0)")
        return points

    spacing = spacing or "time_uniform"
    if spacing not in CONTINUOUS_SPACINGS:
        raise ScheduleError(f"spacing {spacing!r} is for discrete indices; in continuous time use one of {CONTINUOUS_SPACINGS}")
    default_end = (1.0 / schedule.n) if schedule.discrete else 1e-3
    t_end = float(t_end if t_end is not None else default_end)
    t_start = float(t_start if t_start is not None else schedule.t_max)
    final = final or "t_end"
    if not 0 <= t_end < t_start:
        raise ScheduleError(f"need 0 <= t_end < t_start, got t_end={t_end}, t_start={t_start}")
    if spacing == "time_uniform":
        ts = np.linspace(t_start, t_end, steps + 1)
    elif spacing == "time_quadratic":
        ts = np.linspace(math.sqrt(t_start), math.sqrt(t_end), steps + 1) ** 2
    else:
        lam = np.linspace(schedule.lambda_(t_start), schedule.lambda_(t_end), steps + 1)
        ts = schedule.inverse_lambda(lam)
        ts[0], ts[-1] = t_start, t_end
    alpha, sigma = schedule.alpha_sigma(ts)
    for k, (t, a, s) in enumerate(zip(ts, alpha, sigma)):
        net = network_time(schedule, t, time_input) if k < steps else None
        points.append(TimePoint(float(t), float(a), float(s), net))
    if final == "clean":
        points[-1] = TimePoint(float(ts[-1]), 1.0, 0.0, None)
    elif final != "t_end":
        raise ScheduleError(f"final={final!r} does not apply to a continuous grid (use clean or t_end)")
    return points
