"""Samplers: VPSDE Euler-Maruyama, DDIM (eta 0..1), DPM-Solver and DPM-Solver++ (multistep,
orders 1-3), all driven by a host-computed grid of TimePoints (schedules.make_grid).

A sampler is configured by one plain dict (docs/SAMPLING.md, "Sampler config"); a converted
file's manifest carries that dict, and ``from_config`` turns it into a Sampler. Every
coefficient is a Python float computed in float64 before the loop, the network times sit in
one device tensor, and the noise of stochastic samplers is a counter-based hash
(noise.StepNoise): the loop issues no host syncs.

The update rules, with lambda = log(alpha / sigma) and h = lambda_t - lambda_s:

- DDIM (Song et al.; DESIGN.md's ``z_s = a_s x_hat + s_s eps_hat`` at eta = 0):
  ``z_s = a_s x_hat + sqrt(s_s^2 - c^2) eps_hat + c n``, ``c = eta (s_s / s_t) sqrt(1 - a_t^2 / a_s^2)``;
  eta = 1 is DDPM's ancestral step between the two grid points.
- DPM-Solver++ (Lu et al. 2022, data prediction), order 1: ``z_t = (s_t / s_s) z_s - a_t (e^-h - 1) x_hat``;
  orders 2 and 3 add the finite differences of earlier x_hat (multistep), as in the official code
  and diffusers' DPMSolverMultistepScheduler.
- DPM-Solver (noise prediction), order 1: ``z_t = (a_t / a_s) z_s - s_t (e^h - 1) eps_hat``.
- Euler-Maruyama on the reverse VPSDE (U-ViT's sde.euler_maruyama): with beta = beta(t),
  ``z <- z + (-beta z / 2 + beta eps_hat / sigma_t) dt + sqrt(beta |dt|) n`` (no noise on the
  last step, which lands on t = 0); ``euler_ode`` is the probability-flow ODE (half the score
  term, no noise).
"""

from __future__ import annotations

import abc

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from sparsedm.sampling.denoiser import Denoiser, normalize_prediction
from sparsedm.sampling.noise import StepNoise
from sparsedm.sampling.schedules import (Schedule, ScheduleError, TimePoint, VPLinear, make_grid,
                                         network_time, schedule_from_config)

Progress = Optional[Callable[[int], None]]


class Sampler(abc.ABC):
    """Base class. Subclasses implement ``grid()`` and ``_run(den, z, grid, net_t, noise, progress)``."""

    kind = "base"
    stochastic = False

    def __init__(self, schedule: Schedule, steps: int, *, prediction: str = "eps", time_input: Optional[dict] = None,
                 clip_x0=None, clip_eps: Optional[float] = None, cfg_scale: float = 0.0, null_class: Optional[int] = None,
                 spacing: Optional[str] = None, t_start: Optional[float] = None, t_end: Optional[float] = None,
                 final: Optional[str] = None, offset: int = 0):
        self.schedule = schedule
        self.steps = int(steps)
        self.prediction = normalize_prediction(prediction)
        self.time_input = dict(time_input or default_time_input(schedule))
        self.clip_x0 = clip_x0
        self.clip_eps = clip_eps
        self.cfg_scale = float(cfg_scale)
        self.null_class = null_class
        self.spacing, self.t_start, self.t_end, self.final, self.offset = spacing, t_start, t_end, final, offset

    # ---- grid -------------------------------------------------------------------------------
    def grid(self) -> list[TimePoint]:
        return make_grid(self.schedule, self.steps, self.time_input, self.spacing, self.t_end, self.final,
                         self.t_start, self.offset)

    # ---- public entry ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model: Callable, x_T: torch.Tensor, *, cond: Optional[dict] = None, uncond: Optional[dict] = None,
               seeds: Optional[Sequence[int]] = None, noise: Optional[StepNoise] = None, dtype: Optional[torch.dtype] = None,
               channels_last: bool = False, progress: Progress = None) -> torch.Tensor:
        """Run the sampler from x_T [B, C, H, W] (standard normal; float32 is kept through the loop).

        model: ``model(z, t [B], **cond) -> out``; the output's meaning is ``prediction``.
        cond / uncond: conditioning tensors with batch B; uncond is derived from ``null_class``
        when guidance is on and only ``y`` is given.
        seeds: per-sample seeds for the noise stochastic samplers add (noise.StepNoise); or pass
        ``noise`` directly.
        progress: called with 1 after each network call.
        """
        cond = dict(cond or {})
        if self.cfg_scale != 0.0 and not uncond:
            from sparsedm.sampling.denoiser import null_condition

            uncond = null_condition(cond, self.null_class)
        den = Denoiser(model, self.prediction, self.cfg_scale, self.clip_x0, self.clip_eps, cond, uncond, dtype,
                       channels_last=channels_last)
        if self.stochastic and noise is None:
            if seeds is None:
                raise ValueError(f"{self.kind} adds noise each step: pass seeds=[...] (one per sample) or noise=StepNoise(...)")
            noise = StepNoise(seeds, x_T.shape[1:], x_T.device)
        grid = self.grid()
        net_t = torch.tensor([p.net_time for p in grid[:-1]], dtype=torch.float32, device=x_T.device)
        return self._run(den, x_T.float(), grid, net_t, noise, progress)

    def _t(self, net_t: torch.Tensor, k: int, batch: int) -> torch.Tensor:
        # a view of a device tensor: no host round trip
        return net_t[k].expand(batch)

    @abc.abstractmethod
    def _run(self, den, z, grid, net_t, noise, progress):
        """The solver loop from z at grid[0] to grid[-1]; returns the final sample."""

    def describe(self) -> str:
        return f"{self.kind}, {self.steps} steps, prediction {self.prediction}, time input {self.time_input}"


def default_time_input(schedule: Schedule) -> dict:
    if schedule.discrete:
        return {"kind": "step_index", "scale": 1.0}
    if isinstance(schedule, VPLinear):
        return {"kind": "continuous", "scale": 999.0}
    return {"kind": "logsnr"}


class DDIM(Sampler):
    """DDIM with eta in [0, 1] (eta = 1: DDPM ancestral sampling on the grid)."""

    kind = "ddim"

    def __init__(self, schedule: Schedule, steps: int, *, eta: float = 0.0, **kw):
        kw.setdefault("final", "clean")
        if not schedule.discrete and kw.get("t_end") is None:
            kw["t_end"] = 0.0 if not isinstance(schedule, VPLinear) else 1e-3
        super().__init__(schedule, steps, **kw)
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta={eta} must be in [0, 1]")
        self.eta = float(eta)
        self.stochastic = self.eta > 0
        self.kind = "ddim" if self.eta == 0 else f"ddim(eta={self.eta:g})"

    def _run(self, den, z, grid, net_t, noise, progress):
        B = z.shape[0]
        for k in range(len(grid) - 1):
            p, q = grid[k], grid[k + 1]
            x0, eps = den(z, self._t(net_t, k, B), p.alpha, p.sigma)
            c = 0.0
            if self.eta > 0 and q.sigma > 0:
                c = self.eta * (q.sigma / p.sigma) * math.sqrt(max(1.0 - (p.alpha / q.alpha) ** 2, 0.0))
            d = math.sqrt(max(q.sigma**2 - c**2, 0.0))
            z = q.alpha * x0 + d * eps
            if c > 0:
                z = z + c * noise(k)
            if progress:
                progress(1)
        return z


class DPMSolverMultistep(Sampler):
    """DPM-Solver (``algorithm="dpmsolver"``, noise prediction) or DPM-Solver++ (``"dpmsolver++"``,
    data prediction), multistep, orders 1-3, solver_type "midpoint" or "heun" for order 2.

    lower_order_final: True (the official code: the last steps use orders 1, 2, ...),
    "diffusers" (only when steps < 15, as diffusers does) or False. A step that lands on sigma = 0
    always uses order 1 (its higher-order terms vanish or are undefined there).
    """

    def __init__(self, schedule: Schedule, steps: int, *, algorithm: str = "dpmsolver++", order: int = 2,
                 solver_type: str = "midpoint", lower_order_final=True, **kw):
        if algorithm not in ("dpmsolver", "dpmsolver++"):
            raise ValueError(f"algorithm {algorithm!r}: use dpmsolver or dpmsolver++")
        if order not in (1, 2, 3):
            raise ValueError(f"order={order}: DPM-Solver multistep supports orders 1, 2, 3")
        if solver_type not in ("midpoint", "heun"):
            raise ValueError(f"solver_type {solver_type!r}: use midpoint or heun")
        if lower_order_final not in (True, False, "diffusers"):
            raise ValueError(f"lower_order_final={lower_order_final!r}: use true, false or \"diffusers\"")
        time_input = kw.get("time_input") or default_time_input(schedule)
        if time_input.get("kind") in ("step_index", "index") and kw.get("spacing") is None:
            kw["spacing"] = "linspace"  # diffusers' DPMSolverMultistepScheduler default
        if not schedule.discrete and kw.get("t_end") is None and isinstance(schedule, VPLinear):
            kw["t_end"] = 1e-4  # U-ViT's ImageNet64 DPM-Solver runs end at 1e-4
        super().__init__(schedule, steps, **kw)
        self.algorithm, self.order, self.solver_type, self.lower_order_final = algorithm, order, solver_type, lower_order_final
        self.kind = "dpm_solver++" if algorithm == "dpmsolver++" else "dpm_solver"

    def step_orders(self, grid: list[TimePoint]) -> list[int]:
        n = len(grid) - 1
        lof = self.lower_order_final is True or (self.lower_order_final == "diffusers" and n < 15)
        orders = []
        for k in range(n):
            o = min(self.order, k + 1)
            if lof:
                o = min(o, n - k)
            if k == n - 1 and grid[-1].sigma == 0.0:
                o = 1
            orders.append(o)
        return orders

    def _run(self, den, z, grid, net_t, noise, progress):
        B = z.shape[0]
        plus = self.algorithm == "dpmsolver++"
        orders = self.step_orders(grid)
        hist: list[torch.Tensor] = []   # model outputs (x_hat for ++, eps_hat otherwise), newest last
        lams: list[float] = []
        for k in range(len(grid) - 1):
            p, q = grid[k], grid[k + 1]
            x0, eps = den(z, self._t(net_t, k, B), p.alpha, p.sigma)
            hist.append(x0 if plus else eps)
            lams.append(p.lam)
            hist, lams = hist[-3:], lams[-3:]
            if q.sigma == 0.0:  # the limit of either solver at sigma -> 0
                z = q.alpha * x0
            else:
                z = self._update(z, hist, lams, p, q, orders[k], plus)
            if progress:
                progress(1)
        return z

    def _update(self, z, hist, lams, p: TimePoint, q: TimePoint, order: int, plus: bool) -> torch.Tensor:
        h = q.lam - lams[-1]
        m0 = hist[-1]
        if plus:
            phi = math.expm1(-h)                     # e^-h - 1
            lin, w0 = q.sigma / p.sigma, -q.alpha * phi
            w1_mid, w1_heun = -0.5 * q.alpha * phi, q.alpha * (phi / h + 1.0)
            w2 = -q.alpha * ((phi + h) / h**2 - 0.5)
        else:
            phi = math.expm1(h)                      # e^h - 1
            lin, w0 = q.alpha / p.alpha, -q.sigma * phi
            w1_mid, w1_heun = -0.5 * q.sigma * phi, -q.sigma * (phi / h - 1.0)
            w2 = -q.sigma * ((phi - h) / h**2 - 0.5)
        out = lin * z + w0 * m0
        if order == 1:
            return out
        m1 = hist[-2]
        r0 = (lams[-1] - lams[-2]) / h
        d1_0 = (m0 - m1) * (1.0 / r0)
        if order == 2:
            return out + (w1_mid if self.solver_type == "midpoint" else w1_heun) * d1_0
        m2 = hist[-3]
        r1 = (lams[-2] - lams[-3]) / h
        d1_1 = (m1 - m2) * (1.0 / r1)
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) * (1.0 / (r0 + r1))
        return out + w1_heun * d1 + w2 * d2


class EulerMaruyama(Sampler):
    """U-ViT's sde.euler_maruyama on the reverse VPSDE (``ode=True``: the probability-flow ODE).

    Grid: ``[0] + linspace(t_end, 1, steps)`` walked backwards; the network is called at the
    ``steps`` points from 1 down to t_end, the last step lands on t = 0 without noise.
    """

    def __init__(self, schedule: Schedule, steps: int, *, ode: bool = False, **kw):
        if not isinstance(schedule, VPLinear):
            raise ScheduleError("euler_maruyama needs the continuous vp_linear schedule (beta(t) linear in t)")
        super().__init__(schedule, steps, **kw)
        self.ode = bool(ode)
        self.stochastic = not self.ode
        self.kind = "euler_ode" if self.ode else "euler_maruyama"

    def grid(self) -> list[TimePoint]:
        t_end = 1e-3 if self.t_end is None else float(self.t_end)
        t_start = 1.0 if self.t_start is None else float(self.t_start)
        ts = np.linspace(t_end, t_start, self.steps)[::-1].tolist() + [0.0]
        alpha, sigma = self.schedule.alpha_sigma(np.array(ts))
        pts = [TimePoint(t, float(a), float(s), network_time(self.schedule, t, self.time_input))
               for t, a, s in zip(ts[:-1], alpha, sigma)]
        return pts + [TimePoint(0.0, 1.0, 0.0, None)]

    def _run(self, den, z, grid, net_t, noise, progress):
        B = z.shape[0]
        last = len(grid) - 2
        for k in range(len(grid) - 1):
            p, q = grid[k], grid[k + 1]
            _, eps = den(z, self._t(net_t, k, B), p.alpha, p.sigma)
            beta = float(self.schedule.beta(p.t))
            dt = q.t - p.t  # negative
            score_w = 0.5 if self.ode else 1.0
            # drift of the reverse SDE: f - g^2 score = -beta z / 2 + beta eps / sigma
            z = z + (-0.5 * beta * dt) * z + (score_w * beta * dt / p.sigma) * eps
            if not self.ode and k != last:
                z = z + math.sqrt(beta * -dt) * noise(k)
            if progress:
                progress(1)
        return z


# --------------------------------------------------------------------------------------------
# the sampler config dict

KINDS = ("euler_maruyama", "euler_ode", "ddim", "ddpm", "dpm_solver", "dpm_solver++")
_KIND_ALIASES = {"em": "euler_maruyama", "vpsde_euler": "euler_maruyama", "euler_maruyama_sde": "euler_maruyama", "euler_maruyama_ode": "euler_ode",
                 "dpmsolver": "dpm_solver", "dpmsolver++": "dpm_solver++", "dpm_solver_pp": "dpm_solver++"}
_COMMON_KEYS = {"kind", "steps", "schedule", "time_input", "prediction", "clip_x0", "clip_eps", "cfg_scale", "null_class",
                "spacing", "t_start", "t_end", "final", "offset"}
_KIND_KEYS = {"ddim": {"eta"}, "ddpm": set(), "euler_maruyama": set(), "euler_ode": set(),
              "dpm_solver": {"order", "solver_type", "lower_order_final"},
              "dpm_solver++": {"order", "solver_type", "lower_order_final"}}
#: informational keys a manifest may carry; ignored by the sampler
INFO_KEYS = {"source", "notes", "autoencoder", "autoencoder_scale", "image_resolution", "latent"}

# The flat form sparsedm.models.PRESETS uses (schedule and time input as strings, their
# parameters at the top level), mapped onto the nested form.
_FLAT_SCHEDULES = {"vpsde_linear": "vp_linear", "vp_linear": "vp_linear", "sd_scaled_linear": "scaled_linear",
                   "scaled_linear": "scaled_linear", "linear": "linear", "cosine": "cosine", "cosine_logsnr": "cosine_logsnr"}
_FLAT_SCHEDULE_KEYS = {"beta_min": "beta_min", "beta_max": "beta_max", "beta_start": "beta_start", "beta_end": "beta_end",
                       "num_train_timesteps": "n_timesteps", "n_timesteps": "n_timesteps", "cosine_s": "s",
                       "logsnr_min": "logsnr_min", "logsnr_max": "logsnr_max"}


def normalize_config(cfg: dict) -> dict:
    """Accept the flat preset form (``"schedule": "vpsde_linear", "time_input": "t*999", "clip_x": true``)
    next to the nested one; returns the nested form (docs/SAMPLING.md)."""
    cfg = dict(cfg)
    kind = cfg.get("kind")
    cfg["kind"] = _KIND_ALIASES.get(kind, kind)
    if isinstance(cfg.get("schedule"), str):
        name = _FLAT_SCHEDULES.get(cfg["schedule"])
        if name is None:
            raise ScheduleError(f"unknown schedule {cfg['schedule']!r} (known: {', '.join(sorted(_FLAT_SCHEDULES))})")
        sched = {"name": name}
        for flat, nested in _FLAT_SCHEDULE_KEYS.items():
            if flat in cfg:
                sched[nested] = cfg.pop(flat)
        if name == "cosine" and "n_timesteps" not in sched:
            sched["n_timesteps"] = int(cfg.get("steps", 1024))  # the distiller's schedule has one index per step
        cfg["schedule"] = sched
    ti = cfg.get("time_input")
    if isinstance(ti, str):
        compact = ti.replace(" ", "").lower()
        if compact.startswith("t*"):
            cfg["time_input"] = {"kind": "continuous", "scale": float(compact[2:])}
        elif compact in ("logsnr",):
            cfg["time_input"] = {"kind": "logsnr"}
        elif compact in ("discrete_index", "index", "step_index"):
            cfg["time_input"] = {"kind": "step_index", "scale": 1.0}
        elif compact == "index*time_scale":
            cfg["time_input"] = {"kind": "step_index", "scale": float(cfg.pop("time_scale", 1.0))}
        else:
            raise ScheduleError(f"unknown time_input {ti!r} (known: t*SCALE, logsnr, discrete_index, index*time_scale)")
    if "clip_x" in cfg:
        clip = cfg.pop("clip_x")
        if clip and "clip_x0" not in cfg:
            cfg["clip_x0"] = [-1.0, 1.0] if clip is True else clip
    return cfg

DEFAULT_STEPS = {"euler_maruyama": 1000, "euler_ode": 1000, "ddim": 50, "ddpm": 1000, "dpm_solver": 50, "dpm_solver++": 50}


def from_config(cfg: dict, **overrides) -> Sampler:
    """Build a Sampler from a sampler config dict (a manifest's ``"sampler"``; docs/SAMPLING.md).

    ``overrides`` replace top-level keys (e.g. ``steps=25``); a None override is ignored.
    """
    if not isinstance(cfg, dict):
        raise ValueError(f"a sampler config must be a dict, got {type(cfg).__name__}")
    cfg = normalize_config({**cfg, **{k: v for k, v in overrides.items() if v is not None}})
    kind = cfg["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown sampler kind {cfg.get('kind')!r} (known: {', '.join(KINDS)})")
    allowed = _COMMON_KEYS | _KIND_KEYS[kind] | INFO_KEYS
    unknown = sorted(k for k in cfg if k not in allowed and not str(k).startswith("_"))
    if unknown:
        raise ValueError(f"sampler kind {kind!r} does not take {unknown}; it takes {sorted(_COMMON_KEYS | _KIND_KEYS[kind])} "
                         "(docs/SAMPLING.md)")
    if "schedule" in cfg:
        schedule = schedule_from_config(cfg["schedule"])
    elif kind in ("euler_maruyama", "euler_ode"):
        schedule = VPLinear()
    else:
        raise ValueError(f"sampler kind {kind!r} needs a \"schedule\" (e.g. {{\"name\": \"scaled_linear\"}})")
    steps = cfg.get("steps", DEFAULT_STEPS[kind])
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    kw = dict(prediction=cfg.get("prediction", "eps"), time_input=cfg.get("time_input"), clip_x0=cfg.get("clip_x0"),
              clip_eps=cfg.get("clip_eps"), cfg_scale=cfg.get("cfg_scale", 0.0), null_class=cfg.get("null_class"),
              spacing=cfg.get("spacing"), t_start=cfg.get("t_start"), t_end=cfg.get("t_end"), final=cfg.get("final"),
              offset=int(cfg.get("offset", 0)))
    if kw["time_input"] is not None and not isinstance(kw["time_input"], dict):
        raise ValueError(f"time_input must be a dict like {{\"kind\": \"continuous\", \"scale\": 999}}, got {kw['time_input']!r}")
    if kind in ("euler_maruyama", "euler_ode"):
        return EulerMaruyama(schedule, steps, ode=kind == "euler_ode", **kw)
    if kind == "ddim":
        return DDIM(schedule, steps, eta=float(cfg.get("eta", 0.0)), **kw)
    if kind == "ddpm":
        return DDIM(schedule, steps, eta=1.0, **kw)
    return DPMSolverMultistep(schedule, steps, algorithm="dpmsolver++" if kind == "dpm_solver++" else "dpmsolver",
                              order=int(cfg.get("order", 2 if kind == "dpm_solver++" else 3)),
                              solver_type=cfg.get("solver_type", "midpoint"),
                              lower_order_final=cfg.get("lower_order_final", True), **kw)
