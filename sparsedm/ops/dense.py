"""The ``dense`` backend: cuBLAS / cuDNN on the decompressed weight.

This is the baseline every sparse kernel has to beat, and a candidate of the automatic
backend choice (:mod:`sparsedm.ops.autotune`): where 2:4 does not pay (small M, odd shapes)
the dense GEMM on the expanded weight wins and ``auto`` picks it.

The decompressed weight is built once per canonical tensor and cached (weakly keyed on the
``values`` tensor, so it goes away with the layer); the cache entry is rebuilt when
``values`` or ``meta`` are modified in place (tensor version counters) or replaced.

- ``sparse24_linear`` / ``sparse24_conv2d``: ``F.linear`` / ``F.conv2d`` in the input dtype
  (cuBLAS and cuDNN accumulate fp16/bf16 in fp32), activation applied after.
- ``int8_linear`` / ``sparse24_int8_linear``: ``torch._int_mm`` (cuBLASLt int8 GEMM, int32
  accumulation) on the (decompressed) int8 weight, scales applied in float32: the int8
  contract of DESIGN.md, exactly.

The backend's probe (``sparsedm/ops/backends.py``) requires a CUDA device, so on a CPU-only
machine it only runs when its kernel functions are called directly (tests do that).
"""

from __future__ import annotations

import threading
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakTensorKeyDictionary

from sparsedm.formats import decompress24, quantize_activation_int8, quantize_with_scale
from sparsedm.ops import checks, registry
from sparsedm.ops.reference import apply_activation

__all__ = ["decompressed_weight", "clear_cache", "forget"]

# values tensor -> (meta, values._version, meta._version, shape, dense weight)
_CACHE = WeakTensorKeyDictionary()
_LOCK = threading.Lock()


def decompressed_weight(values: torch.Tensor, meta: torch.Tensor, shape: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Dense weight of a canonical pair, cached per ``values`` tensor (see the module docstring)."""
    shape_key = None if shape is None else tuple(int(s) for s in shape)
    with _LOCK:
        hit = _CACHE.get(values)
        if hit is not None:
            cached_meta, v_version, m_version, cached_shape, dense = hit
            if cached_meta is meta and v_version == values._version and m_version == meta._version and cached_shape == shape_key:
                return dense
        dense = decompress24(values, meta, shape=shape_key)
        _CACHE[values] = (meta, values._version, meta._version, shape_key, dense)
        return dense


def forget(args: tuple) -> None:
    """Drop the cached dense weight of the canonical tensors among one call's ``args``."""
    with _LOCK:
        for a in args:
            if isinstance(a, torch.Tensor) and a in _CACHE:
                del _CACHE[a]


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def sparse24_linear(x, values, meta, bias, activation):
    checks.check_sparse24_linear(x, values, meta, bias, activation)
    w = decompressed_weight(values, meta)
    y = F.linear(x, w, None if bias is None else bias.to(x.dtype))
    return apply_activation(y, activation)


def sparse24_conv2d(x, values, meta, bias, weight_shape, stride, padding, dilation, activation="none"):
    _, _, _, stride, padding, dilation = checks.check_sparse24_conv2d(
        x, values, meta, bias, weight_shape, stride, padding, dilation, activation
    )
    w = decompressed_weight(values, meta, weight_shape)
    y = F.conv2d(x, w, None if bias is None else bias.to(x.dtype), stride, padding, dilation)
    y = apply_activation(y, activation)
    return y.contiguous(memory_format=checks.conv_output_memory_format(x))


def _int8_gemm(x, w_q, w_scale, bias, x_scale, activation="none"):
    """``act((q(x) @ w_q^T) * s_x * s_w + bias)`` with ``torch._int_mm`` (int32 accumulation)."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x_scale is None:
        x_q, s_x = quantize_activation_int8(x2)
    else:
        s_x = x_scale.reshape(()).to(torch.float32).expand(x2.shape[0]) if x_scale.numel() == 1 else x_scale.reshape(-1).to(torch.float32)
        x_q = quantize_with_scale(x2, s_x[:, None])
    acc = torch._int_mm(x_q, w_q.t())
    y = acc.to(torch.float32) * s_x[:, None] * w_scale.to(torch.float32)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return apply_activation(y, activation).to(x.dtype).reshape(*x.shape[:-1], w_q.shape[0])


def int8_linear(x, w_q, w_scale, bias, x_scale, activation="none"):
    checks.check_int8_linear(x, w_q, w_scale, bias, x_scale, activation)
    return _int8_gemm(x, w_q, w_scale, bias, x_scale, activation)


def sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, activation="none"):
    checks.check_sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, activation)
    return _int8_gemm(x, decompressed_weight(values_q, meta), w_scale, bias, x_scale, activation)


def _supports_int_mm(x: torch.Tensor, n: int) -> Optional[str]:
    # torch._int_mm on CUDA needs M > 16 and K, N multiples of 8 (cuBLASLt int8 alignment).
    m = x.numel() // max(x.shape[-1], 1)
    k = x.shape[-1]
    if x.device.type == "cuda" and m <= 16:
        return f"torch._int_mm needs more than 16 rows on CUDA, got M={m}"
    if k % 8 or n % 8:
        return f"torch._int_mm needs K and N to be multiples of 8, got K={k}, N={n}"
    return None


def _supports_int8(x, w_q, w_scale, bias, x_scale, activation="none"):
    return _supports_int_mm(x, w_q.shape[0])


def _supports_sparse24_int8(x, values_q, meta, w_scale, bias, x_scale, activation="none"):
    return _supports_int_mm(x, values_q.shape[0])


registry.register_kernel("sparse24_linear", "dense", sparse24_linear)
registry.register_kernel("sparse24_conv2d", "dense", sparse24_conv2d)
registry.register_kernel("int8_linear", "dense", int8_linear, supports=_supports_int8)
registry.register_kernel("sparse24_int8_linear", "dense", sparse24_int8_linear, supports=_supports_sparse24_int8)
