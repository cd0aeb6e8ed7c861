"""Symmetric int8 quantization (the int8 contract of DESIGN.md).

- weights: per output channel, ``s_w = max|w_row| / 127``, ``q = round(w / s_w)`` clamped to
  [-127, 127] (round half to even, as ``torch.round``);
- activations: per token (every index of the leading dims), same rule, computed on the fly;
  or one static calibrated scale.

Scales are float32. An all-zero row gets scale 0 and codes 0, so it dequantizes to 0.
"""

from __future__ import annotations

import torch

__all__ = ["Int8FormatError", "quantize_weight_int8", "quantize_activation_int8", "quantize_with_scale", "dequantize_int8"]

QMAX = 127


class Int8FormatError(ValueError):
    """A tensor does not satisfy the int8 contract (dtype, shape, scale)."""


def quantize_with_scale(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``clamp(round(x / scale), -127, 127)`` as int8; ``scale`` broadcasts against ``x``.

    A zero scale (all-zero row) yields zero codes instead of NaN.
    """
    scale = scale.to(torch.float32)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x.to(torch.float32) / safe).clamp_(-QMAX, QMAX)
    return torch.where(scale > 0, q, torch.zeros_like(q)).to(torch.int8)


def _absmax_scale(x: torch.Tensor) -> torch.Tensor:
    if not x.is_floating_point():
        raise Int8FormatError(f"expected a floating-point tensor to quantize, got {x.dtype}")
    if x.shape[-1] == 0:
        raise Int8FormatError("cannot quantize a tensor whose last dimension is empty")
    return x.detach().abs().amax(dim=-1).to(torch.float32) / QMAX


def quantize_weight_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel int8: ``weight [N, K]`` -> ``(q int8 [N, K], scale float32 [N])``."""
    if weight.dim() != 2:
        raise Int8FormatError(
            f"quantize_weight_int8 expects a 2-D weight [N, K] (for 2:4 values pass values [N, K/2]), "
            f"got shape {tuple(weight.shape)}"
        )
    scale = _absmax_scale(weight)
    return quantize_with_scale(weight, scale[:, None]), scale


def quantize_activation_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8: ``x [..., K]`` -> ``(q int8 [..., K], scale float32 [...])``."""
    scale = _absmax_scale(x)
    return quantize_with_scale(x, scale[..., None]), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q * scale`` in float32, with ``scale`` per row (shape ``q.shape[:-1]``) or scalar."""
    scale = scale.to(torch.float32)
    if scale.dim() == q.dim() - 1 and scale.dim() > 0:
        scale = scale[..., None]
    return q.to(torch.float32) * scale
