"""From a network's raw output to the clean-data and noise estimates samplers need.

``Denoiser`` wraps a network ``model(z, t, **cond) -> out`` with

- the network's time input (the grid's ``net_time``, schedules.network_time),
- classifier-free guidance in U-ViT's form ``out = cond + cfg_scale * (cond - uncond)``
  (diffusers' ``guidance_scale`` is ``1 + cfg_scale``), cond and uncond in one batch of 2B,
- the prediction type: ``eps``, ``x`` or ``v`` (DESIGN.md, progressive distillation:
  ``x_hat = a z - s v``, ``eps_hat = s z + a v``),
- clipping of x_hat (``clip_x0``) with eps_hat recomputed from the clipped x_hat, as
  Google's diffusion_utils and diffusion_distiller do, and an optional ``clip_eps``,
- an optional CUDA graph of the network call for static shapes (graphs.GraphedModel).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

PREDICTIONS = ("eps", "x", "v")
_ALIASES = {"epsilon": "eps", "noise": "eps", "noise_pred": "eps", "x0": "x", "x0_pred": "x", "sample": "x",
            "v_prediction": "v"}


def normalize_prediction(name: str) -> str:
    p = _ALIASES.get(str(name), str(name))
    if p not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {name!r} (known: eps, x, v; aliases {sorted(_ALIASES)})")
    return p


def to_x0_eps(out: torch.Tensor, z: torch.Tensor, alpha: float, sigma: float, prediction: str
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, eps_hat) from the network output at a point with the given alpha, sigma (floats)."""
    if prediction == "eps":
        return (z - sigma * out) / alpha, out
    if prediction == "x":
        return out, (z - alpha * out) / sigma
    # v = alpha * eps - sigma * x
    return alpha * z - sigma * out, sigma * z + alpha * out


def _clip_bounds(clip) -> Optional[tuple[float, float]]:
    if clip is None or clip is False:
        return None
    if isinstance(clip, (int, float)):
        return (-float(clip), float(clip))
    lo, hi = clip
    return (float(lo), float(hi))


class Denoiser:
    """Callable ``(z, point) -> (x_hat, eps_hat)``.

    model: ``model(z [B, C, H, W], t [B] float, **cond) -> [B, C, H, W]``.
    cond: keyword tensors with batch dimension B (e.g. ``y`` class labels) or None.
    uncond: keyword tensors of the unconditional branch for guidance (e.g. ``y`` = null class),
    same batch size; needed when cfg_scale != 0.
    """

    def __init__(self, model: Callable, prediction: str = "eps", cfg_scale: float = 0.0,
                 clip_x0: Union[None, float, Sequence[float]] = None, clip_eps: Optional[float] = None,
                 cond: Optional[dict] = None, uncond: Optional[dict] = None, dtype: Optional[torch.dtype] = None,
                 channels_last: bool = False):
        self.model = model
        self.prediction = normalize_prediction(prediction)
        self.cfg_scale = float(cfg_scale)
        self.clip_x0 = _clip_bounds(clip_x0)
        self.clip_eps = None if clip_eps is None else float(clip_eps)
        self.dtype = dtype
        self.channels_last = channels_last
        if self.cfg_scale != 0.0 and not uncond:
            raise ValueError("cfg_scale != 0 needs unconditional inputs (uncond=..., e.g. y = the null class)")
        self.set_condition(cond or {}, uncond or {})
        self.calls = 0

    def set_condition(self, cond: dict, uncond: Optional[dict] = None) -> None:
        self.cond = dict(cond)
        self.uncond = dict(uncond or {})
        if self.cfg_scale != 0.0:
            keys = sorted(set(self.cond) | set(self.uncond))
            self._model_kwargs = {k: torch.cat([self.cond[k], self.uncond[k]]) for k in keys}
        else:
            self._model_kwargs = self.cond

    def raw(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output with guidance applied; t is [B] on z's device."""
        self.calls += 1
        zin = z if self.dtype is None else z.to(self.dtype)
        if self.channels_last:
            zin = zin.contiguous(memory_format=torch.channels_last)
        if self.cfg_scale != 0.0:
            both = self.model(torch.cat([zin, zin]), torch.cat([t, t]), **self._model_kwargs)
            c, u = both.float().chunk(2)
            return c + self.cfg_scale * (c - u)
        return self.model(zin, t, **self._model_kwargs).float()

    def __call__(self, z: torch.Tensor, t: torch.Tensor, alpha: float, sigma: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.raw(z, t)
        x0, eps = to_x0_eps(out, z, alpha, sigma, self.prediction)
        if self.clip_x0 is not None:
            x0 = x0.clamp(*self.clip_x0)
            if sigma > 0:
                eps = (z - alpha * x0) / sigma
        if self.clip_eps is not None:
            eps = eps.clamp(-self.clip_eps, self.clip_eps)
        return x0, eps


def null_condition(cond: dict, null_class: Optional[int]) -> dict:
    """The unconditional branch for class labels: ``y`` replaced by the null class."""
    if "y" not in cond:
        raise ValueError("classifier-free guidance without class labels needs explicit unconditional inputs")
    if null_class is None:
        raise ValueError("classifier-free guidance needs null_class (U-ViT: the number of classes, e.g. 1000)")
    return {**cond, "y": torch.full_like(cond["y"], int(null_class))}

