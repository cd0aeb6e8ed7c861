"""Argument checks shared by every implementation of the ``sparsedm::`` ops.

The reference kernels, the fake (meta) kernels and the device launchers call the same
functions, so a bad call fails with the same readable message everywhere. Shape comparisons
go through :func:`require`, which uses ``torch._check`` for symbolic sizes (no guards under
``torch.compile``) and raises :class:`OpArgumentError` for concrete ones.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

ACTIVATIONS = ("none", "gelu", "gelu_tanh", "silu")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class OpArgumentError(ValueError):
    """An op was called with arguments that break its contract."""


def require(cond, message: str) -> None:
    if isinstance(cond, bool):
        if not cond:
            raise OpArgumentError(message)
    else:
        torch._check(cond, lambda: message)


def _check_float_input(op: str, x: torch.Tensor) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise OpArgumentError(f"{op}: x must be float16, bfloat16, float32 or float64, got {x.dtype}")


def _check_same_device(op: str, **tensors: Optional[torch.Tensor]) -> None:
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise OpArgumentError(
                f"{op}: {name} is on {t.device} but {first_name} is on {first.device}; move them to one device"
            )


def _check_activation(op: str, activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise OpArgumentError(f"{op}: unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")


def _check_bias(op: str, bias: Optional[torch.Tensor], n) -> None:
    if bias is None:
        return
    if bias.dim() != 1:
        raise OpArgumentError(f"{op}: bias must be 1-D [N], got shape {tuple(bias.shape)}")
    require(bias.shape[0] == n, f"{op}: bias has {bias.shape[0]} elements but the layer has N={n} outputs")
    if not bias.is_floating_point():
        raise OpArgumentError(f"{op}: bias must be floating point, got {bias.dtype}")


def check_compressed_pair(op: str, values: torch.Tensor, meta: torch.Tensor):
    """Check a canonical ``(values [N, K/2], meta uint8 [N, K/8])`` pair; return ``(N, K)``."""
    if values.dim() != 2 or meta.dim() != 2:
        raise OpArgumentError(
            f"{op}: values and meta must be 2-D ([N, K/2] and [N, K/8]), got {tuple(values.shape)} and {tuple(meta.shape)}"
        )
    if meta.dtype != torch.uint8:
        raise OpArgumentError(f"{op}: meta must be uint8 (canonical 2:4 metadata), got {meta.dtype}")
    n, k = values.shape[0], 2 * values.shape[1]
    require(meta.shape[0] == n, f"{op}: meta has {meta.shape[0]} rows but values has {n}")
    require(
        meta.shape[1] * 8 == k,
        f"{op}: meta [N, K/8] has {meta.shape[1]} columns but values [N, K/2] implies K={k} (K must be a multiple of 8)",
    )
    return n, k


def _check_x_k(op: str, x: torch.Tensor, k) -> None:
    if x.dim() < 1:
        raise OpArgumentError(f"{op}: x must have at least one dimension [..., K]")
    require(x.shape[-1] == k, f"{op}: x has K={x.shape[-1]} features (last dim) but the weight expects K={k}")


def _check_x_scale(op: str, x: torch.Tensor, x_scale: Optional[torch.Tensor]) -> None:
    if x_scale is None:
        return
    if not x_scale.is_floating_point():
        raise OpArgumentError(f"{op}: x_scale must be floating point, got {x_scale.dtype}")
    if x_scale.numel() == 1:
        return
    require(
        tuple(x_scale.shape) == tuple(x.shape[:-1]),
        f"{op}: x_scale must hold one static scale (1 element) or one scale per token "
        f"(shape {tuple(x.shape[:-1])}), got shape {tuple(x_scale.shape)}",
    )


def check_sparse24_linear(x, values, meta, bias, activation) -> int:
    op = "sparse24_linear"
    _check_float_input(op, x)
    n, k = check_compressed_pair(op, values, meta)
    if values.dtype != x.dtype:
        raise OpArgumentError(f"{op}: values are {values.dtype} but x is {x.dtype}; cast the layer to x's dtype")
    _check_x_k(op, x, k)
    _check_bias(op, bias, n)
    _check_activation(op, activation)
    _check_same_device(op, x=x, values=values, meta=meta, bias=bias)
    return n


def check_int8_linear(x, w_q, w_scale, bias, x_scale, activation="none") -> int:
    op = "int8_linear"
    _check_float_input(op, x)
    if w_q.dtype != torch.int8 or w_q.dim() != 2:
        raise OpArgumentError(f"{op}: w_q must be a 2-D int8 tensor [N, K], got {w_q.dtype} of shape {tuple(w_q.shape)}")
    n, k = w_q.shape
    _check_x_k(op, x, k)
    _check_w_scale(op, w_scale, n)
    _check_bias(op, bias, n)
    _check_x_scale(op, x, x_scale)
    _check_activation(op, activation)
    _check_same_device(op, x=x, w_q=w_q, w_scale=w_scale, bias=bias, x_scale=x_scale)
    return n


def _check_w_scale(op: str, w_scale: torch.Tensor, n) -> None:
    if w_scale.dim() != 1 or not w_scale.is_floating_point():
        raise OpArgumentError(
            f"{op}: w_scale must be a 1-D floating tensor [N] (one scale per output channel), "
            f"got {w_scale.dtype} of shape {tuple(w_scale.shape)}"
        )
    require(w_scale.shape[0] == n, f"{op}: w_scale has {w_scale.shape[0]} scales but the layer has N={n} outputs")


def check_sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, activation="none") -> int:
    op = "sparse24_int8_linear"
    _check_float_input(op, x)
    if values_q.dtype != torch.int8:
        raise OpArgumentError(f"{op}: values_q must be int8 (quantize after masking), got {values_q.dtype}")
    n, k = check_compressed_pair(op, values_q, meta)
    _check_x_k(op, x, k)
    _check_w_scale(op, w_scale, n)
    _check_bias(op, bias, n)
    _check_x_scale(op, x, x_scale)
    _check_activation(op, activation)
    _check_same_device(op, x=x, values_q=values_q, meta=meta, w_scale=w_scale, bias=bias, x_scale=x_scale)
    return n


def _pair(op: str, name: str, v: Sequence[int]) -> tuple[int, int]:
    v = tuple(v)
    if len(v) == 1:
        v = (v[0], v[0])
    if len(v) != 2:
        raise OpArgumentError(f"{op}: {name} must have 1 or 2 elements, got {list(v)}")
    return v


def conv_output_hw(h, w, kh, kw, stride, padding, dilation):
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


def check_sparse24_conv2d(x, values, meta, bias, weight_shape, stride, padding, dilation, activation):
    """Returns ``(Cout, OH, OW, stride, padding, dilation)`` with the three pairs normalized."""
    op = "sparse24_conv2d"
    _check_float_input(op, x)
    if x.dim() != 4:
        raise OpArgumentError(f"{op}: x must be 4-D [N, C, H, W] (NCHW or channels_last), got shape {tuple(x.shape)}")
    if len(weight_shape) != 4:
        raise OpArgumentError(f"{op}: weight_shape must be [Cout, Cin, kh, kw], got {list(weight_shape)}")
    cout, cin, kh, kw = weight_shape
    stride, padding, dilation = (_pair(op, n, v) for n, v in (("stride", stride), ("padding", padding), ("dilation", dilation)))
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise OpArgumentError(f"{op}: stride and dilation must be >= 1 and padding >= 0, got {stride}, {dilation}, {padding}")
    n, k = check_compressed_pair(op, values, meta)
    require(
        n == cout and k == kh * kw * cin,
        f"{op}: values {tuple(values.shape)} do not match weight_shape {list(weight_shape)}: expected "
        f"[Cout, kh*kw*Cin/2] = [{cout}, {kh * kw * cin / 2:g}] (compressed from the KRSC view)",
    )
    if values.dtype != x.dtype:
        raise OpArgumentError(f"{op}: values are {values.dtype} but x is {x.dtype}; cast the layer to x's dtype")
    require(x.shape[1] == cin, f"{op}: x has C={x.shape[1]} channels but the weight expects Cin={cin} (groups=1 only)")
    _check_bias(op, bias, cout)
    _check_activation(op, activation)
    _check_same_device(op, x=x, values=values, meta=meta, bias=bias)
    oh, ow = conv_output_hw(x.shape[2], x.shape[3], kh, kw, stride, padding, dilation)
    require(oh > 0 and ow > 0, f"{op}: input {tuple(x.shape[2:])} is too small for a {kh}x{kw} kernel with padding {padding} and dilation {dilation}")
    return cout, oh, ow, stride, padding, dilation


def conv_output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """Output follows the input: channels_last in, channels_last out; anything else, NCHW."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
