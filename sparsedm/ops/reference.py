"""Plain-torch reference implementations of the ``sparsedm::`` ops.

They run on any device and are the CPU path, the test oracle and the numerical contract the
other backends reproduce: the weight is decompressed (and dequantized), the GEMM accumulates
in float32 (float64 for float64 inputs) and the output is cast to x's dtype. int8 products
are accumulated exactly (in float64, which holds any int8 x int8 sum up to K = 2^39).
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from sparsedm.formats import compress24 as _compress24_format
from sparsedm.formats import decompress24 as _decompress24_format
from sparsedm.formats import quantize_activation_int8, quantize_with_scale
from sparsedm.ops import checks


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def _ieee_float32_convs(x: torch.Tensor):
    """cuDNN runs float32 convolutions in TF32 by default (``torch.backends.cudnn.allow_tf32``,
    unlike cuBLAS matmuls): for the reference's float32 accumulation, switch that off around
    its conv on a GPU, and restore the caller's setting."""
    if not x.is_cuda:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def apply_activation(y: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "none":
        return y
    if activation == "gelu":
        return F.gelu(y)
    if activation == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if activation == "silu":
        return F.silu(y)
    raise checks.OpArgumentError(f"unknown activation {activation!r}; choose one of {', '.join(checks.ACTIVATIONS)}")


def compress24(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if w.dim() != 2:
        raise checks.OpArgumentError(
            f"compress24: the op takes a 2-D weight [N, K], got shape {tuple(w.shape)}; "
            f"use sparsedm.formats.compress24 for conv weights (KRSC view)"
        )
    return _compress24_format(w)


def decompress24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    return _decompress24_format(values, meta)


def sparse24_linear(x, values, meta, bias: Optional[torch.Tensor], activation: str) -> torch.Tensor:
    checks.check_sparse24_linear(x, values, meta, bias, activation)
    acc = _acc_dtype(x.dtype)
    w = _decompress24_format(values, meta).to(acc)
    y = F.linear(x.to(acc), w, None if bias is None else bias.to(acc))
    return apply_activation(y, activation).to(x.dtype)


def sparse24_conv2d(
    x, values, meta, bias, weight_shape: Sequence[int], stride, padding, dilation, activation: str = "none"
) -> torch.Tensor:
    _, _, _, stride, padding, dilation = checks.check_sparse24_conv2d(
        x, values, meta, bias, weight_shape, stride, padding, dilation, activation
    )
    acc = _acc_dtype(x.dtype)
    w = _decompress24_format(values, meta, shape=weight_shape).to(acc)
    with _ieee_float32_convs(x):
        y = F.conv2d(x.to(acc), w, None if bias is None else bias.to(acc), stride, padding, dilation)
    y = apply_activation(y, activation).to(x.dtype)
    return y.contiguous(memory_format=checks.conv_output_memory_format(x))


def _quantize_x(x: torch.Tensor, x_scale: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes of x and the per-token float32 scale (broadcast from a static one)."""
    if x_scale is None:
        return quantize_activation_int8(x)
    if x_scale.numel() == 1:
        scale = x_scale.reshape(()).to(torch.float32).expand(x.shape[:-1])
    else:
        scale = x_scale.to(torch.float32)
    return quantize_with_scale(x, scale[..., None]), scale


def _int8_gemm(x, w_q, w_scale, bias, x_scale, activation="none") -> torch.Tensor:
    """``act((x_q @ w_q^T) * s_x * s_w + bias)``: exact integer sums, scales in float32."""
    x_q, s_x = _quantize_x(x, x_scale)
    acc = torch.matmul(x_q.to(torch.float64), w_q.to(torch.float64).t())  # exact int32 sums
    y = acc.to(torch.float32) * s_x[..., None] * w_scale.to(torch.float32)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return apply_activation(y, activation).to(x.dtype)


def int8_linear(x, w_q, w_scale, bias, x_scale, activation: str = "none") -> torch.Tensor:
    checks.check_int8_linear(x, w_q, w_scale, bias, x_scale, activation)
    return _int8_gemm(x, w_q, w_scale, bias, x_scale, activation)


def sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, activation: str = "none") -> torch.Tensor:
    checks.check_sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, activation)
    return _int8_gemm(x, _decompress24_format(values_q, meta), w_scale, bias, x_scale, activation)
