"""The ``cuda`` backend: hand-written mma.sp / int8 mma kernels of ``sparsedm._C``.

Three tiers (docs/KERNELS.md, "CUDA GEMMs"): device code in kernels/cuda, private C++ ops
``sparsedm::_cuda_*`` in csrc/cuda_ops.cpp, and the Python kernels here, registered for the
public ops through :func:`sparsedm.ops.registry.register_kernel`. The public ops stay Python
``custom_op``s dispatching through the registry, so ``backend=`` / ``SPARSEDM_BACKEND``
forcing and the ``supports`` reasons work exactly as for every other backend; the private
ops are an implementation detail (no C++ kernel is registered under a public name).

Weights are re-laid out once per (tensor, version, device) into the kernels' fragment order
(canonical tensors stay the only stored form) and cached in a ``WeakTensorKeyDictionary`` keyed by
the canonical ``meta`` (2:4) or ``w_q`` (dense int8) tensor (by identity), so the cache dies with
the module.

This module imports cleanly without a CUDA build: the backend's probe reports the reason and
the registry never loads it then; tests import it anyway to check ``supports`` messages.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from sparsedm.ops import checks, registry

SP16, SP8, D8 = 0, 1, 2  # families of csrc/cuda/gemm_api.h
K_MULTIPLE = {SP16: 64, SP8: 128, D8: 128}  # the kernels' K stage
N_MULTIPLE = 16
ACTIVATION_CODES = {name: i for i, name in enumerate(checks.ACTIVATIONS)}
FLOAT16 = (torch.float16, torch.bfloat16)

# Largest M (tokens, or conv output pixels N*P*Q): SPARSEDM_MAX_TOKENS of csrc/cuda/gemm_api.h,
# int32 token indices in the kernels (grids past 65535 token tiles are the launcher's business).
MAX_TOKENS = 2**31 - 2**18


def _split_k_from_env() -> int:
    raw = os.environ.get("SPARSEDM_CUDA_SPLIT_K", "").strip()
    if not raw:
        return 0
    try:
        value = int(raw, 10)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"SPARSEDM_CUDA_SPLIT_K must be a non-negative integer (0 = automatic), got {raw!r}")
    return value


# Split-K of the cuda GEMMs (docs/KERNELS.md, "Tile configurations and split-K"): 0 lets the
# launcher choose (it splits only small-M GEMMs whose grid is short of SMs); n > 0 forces n K
# slices (clamped to the number of K stages) for tests and benchmarks. Read from
# SPARSEDM_CUDA_SPLIT_K at import; assign this attribute to change it in a running process.
SPLIT_K = _split_k_from_env()

# WeakTensorKeyDictionary compares keys by identity; a plain WeakKeyDictionary would call
# Tensor.__eq__ on lookup and fail on the second call with the same weight.
_cache = WeakTensorKeyDictionary()


def _private_ops_available() -> bool:
    return hasattr(torch.ops.sparsedm, "_cuda_sparse24_gemm")


def relayout(src: torch.Tensor, meta: Optional[torch.Tensor], family: int, n: int, k: int, k_padded: Optional[int] = None):
    """Kernel-order ``(weight_words, meta_words)`` of a canonical weight, cached per tensor.

    ``k_padded`` (2:4 only): first extend K with zero groups to that length (values 0, meta
    nibble 0x4 = kept positions {0, 1}, a valid code), so that a conv weight whose
    K = kh*kw*Cin is not a multiple of the K stage still fills whole stages.
    """
    key = meta if meta is not None else src
    tag = (family, src.data_ptr(), src._version, None if meta is None else meta._version, src.device, k_padded)
    hit = _cache.get(key)
    if hit is not None and hit[0] == tag:
        return hit[1]
    if k_padded is not None and k_padded != k:
        extra = k_padded - k
        src = torch.nn.functional.pad(src, (0, extra // 2))
        meta = torch.nn.functional.pad(meta, (0, extra // 8), value=0x44)
        k = k_padded
    out = torch.ops.sparsedm._cuda_relayout24(_aligned(src), None if meta is None else _aligned(meta), family, n, k)
    _cache[key] = (tag, out)
    return out


def _device_reason(*tensors: Optional[torch.Tensor]) -> Optional[str]:
    for t in tensors:
        if t is not None and not t.is_cuda:
            return f"the cuda backend needs CUDA tensors, got a tensor on {t.device}"
    major, minor = torch.cuda.get_device_capability(tensors[0].device)
    if major < 8:
        return f"mma.sp needs compute capability 8.0 or newer; this GPU is {major}.{minor}"
    if not _private_ops_available():
        return "sparsedm._C was built without the CUDA kernels (no sparsedm::_cuda_* ops)"
    return None


def _tokens_reason(op: str, m: int, what: str = "tokens") -> Optional[str]:
    if m > MAX_TOKENS:
        return (
            f"{op}: M={m} {what} exceed the cuda kernels' limit of {MAX_TOKENS} (int32 token indices); "
            f"this call runs on another backend (split the batch to use it)"
        )
    return None


def _shape_reason(op: str, n: int, k: int, family: int, m: int = 1) -> Optional[str]:
    if n % N_MULTIPLE:
        return f"{op}: N={n} out features is not a multiple of {N_MULTIPLE}; the cuda kernels need whole 16-row mma tiles (this layer runs on another backend)"
    if k % K_MULTIPLE[family]:
        return (
            f"{op}: K={k} is not a multiple of {K_MULTIPLE[family]} (the cuda kernel's K tile for "
            f"{'float16/bfloat16' if family == SP16 else 'int8'}); this layer runs on another backend (pad in_features to use it)"
        )
    return _tokens_reason(op, m)


def _robust(supports):
    """Malformed arguments are the op checks' business (they raise the readable error inside
    the kernel); a ``supports`` function only says whether well-formed ones fit the kernels."""

    def wrapped(*args):
        try:
            return supports(*args)
        except (IndexError, AttributeError, TypeError):
            return None

    wrapped.__name__ = supports.__name__
    return wrapped


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """Contiguous and 16-byte aligned: the kernels read with 16-byte cp.async / 4-byte words,
    and a view with a storage offset may start anywhere (a copy is cheaper than a fault)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _flat(x: torch.Tensor) -> torch.Tensor:
    return _aligned(x.reshape(-1, x.shape[-1]))


def _bias32(bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if bias is None else bias.to(torch.float32).contiguous()


def _float_input_reason(op: str, x, values, meta, bias) -> Optional[str]:
    """What the fp16/bf16 2:4 kernels (GEMM and conv) need of every call."""
    reason = _device_reason(x, values, meta, bias)
    if reason:
        return reason
    if x.dtype not in FLOAT16:
        return f"{op}: the cuda kernel takes float16 or bfloat16 x, got {x.dtype}"
    if x.numel() == 0:
        return f"{op}: empty input"
    return None


# ---- sparse24_linear ----------------------------------------------------------------------


def supports_sparse24_linear(x, values, meta, bias, activation) -> Optional[str]:
    reason = _float_input_reason("sparse24_linear", x, values, meta, bias)
    if reason:
        return reason
    return _shape_reason("sparse24_linear", values.shape[0], 2 * values.shape[1], SP16, x.numel() // x.shape[-1])


def sparse24_linear(x, values, meta, bias, activation):
    n = checks.check_sparse24_linear(x, values, meta, bias, activation)
    k = x.shape[-1]
    w, m = relayout(values, meta, SP16, n, k)
    y = torch.ops.sparsedm._cuda_sparse24_gemm(_flat(x), w, m, _bias32(bias), None, n, ACTIVATION_CODES[activation], SPLIT_K)
    return y.reshape(*x.shape[:-1], n)


# ---- int8 -----------------------------------------------------------------------------------


def _int8_reason(op, x, n, k, family, tensors) -> Optional[str]:
    reason = _device_reason(*tensors)
    if reason:
        return reason
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"{op}: the cuda kernel takes float16, bfloat16 or float32 x, got {x.dtype}"
    if x.numel() == 0:
        return f"{op}: empty input"
    return _shape_reason(op, n, k, family, x.numel() // x.shape[-1])


def supports_int8_linear(x, w_q, w_scale, bias, x_scale, activation="none") -> Optional[str]:
    return _int8_reason("int8_linear", x, w_q.shape[0], w_q.shape[-1], D8, (x, w_q, w_scale, bias, x_scale))


def supports_sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, activation="none") -> Optional[str]:
    return _int8_reason(
        "sparse24_int8_linear", x, values_q.shape[0], 2 * values_q.shape[1], SP8, (x, values_q, meta, w_scale, bias, x_scale)
    )


def _int8_run(x, family, w, m, n, w_scale, bias, x_scale, activation):
    xf = _flat(x)
    static = None if x_scale is None else x_scale.to(torch.float32).reshape(-1).contiguous()
    q, s_x = torch.ops.sparsedm._cuda_quantize_rows(xf, static)
    y = torch.ops.sparsedm._cuda_int8_gemm(
        q, s_x, w, m, w_scale.to(torch.float32).contiguous(), _bias32(bias), None, family, n, x.dtype,
        ACTIVATION_CODES[activation], SPLIT_K
    )
    return y.reshape(*x.shape[:-1], n)


def int8_linear(x, w_q, w_scale, bias, x_scale, activation="none"):
    n = checks.check_int8_linear(x, w_q, w_scale, bias, x_scale, activation)
    w, m = relayout(w_q, None, D8, n, w_q.shape[1])
    return _int8_run(x, D8, w, None, n, w_scale, bias, x_scale, activation)


def sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, activation="none"):
    n = checks.check_sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, activation)
    w, m = relayout(values_q, meta, SP8, n, 2 * values_q.shape[1])
    return _int8_run(x, SP8, w, m, n, w_scale, bias, x_scale, activation)


# ---- sparse24_conv2d (implicit GEMM, docs/KERNELS.md "CUDA implicit-GEMM 2:4 conv") ---------

CONV_C_MULTIPLE = 8  # one 16-byte cp.async = 8 channels of one filter tap


def conv_k_padded(k: int) -> int:
    """The GEMM K of a conv weight: kh*kw*Cin rounded up to the f16/bf16 K stage."""
    return -(-k // K_MULTIPLE[SP16]) * K_MULTIPLE[SP16]


def supports_sparse24_conv2d(x, values, meta, bias, weight_shape, stride, padding, dilation, activation="none") -> Optional[str]:
    reason = _float_input_reason("sparse24_conv2d", x, values, meta, bias)
    if reason:
        return reason
    cout, cin = weight_shape[0], weight_shape[1]
    if x.dim() == 4 and x.shape[1] != cin:
        return f"sparse24_conv2d: x has {x.shape[1]} channels but the weight {cin}; the cuda kernel is groups=1 only"
    if cin % CONV_C_MULTIPLE:
        return (
            f"sparse24_conv2d: Cin={cin} is not a multiple of {CONV_C_MULTIPLE} (the cuda kernel copies 8 channels of "
            f"one filter tap per 16-byte load); this layer runs on another backend (pad the input channels to use it)"
        )
    if cout % N_MULTIPLE:
        return f"sparse24_conv2d: Cout={cout} is not a multiple of {N_MULTIPLE}; the cuda kernel needs whole 16-row mma tiles (this layer runs on another backend)"
    return _conv_size_reason(x, weight_shape, stride, padding, dilation)


def _conv_size_reason(x, weight_shape, stride, padding, dilation) -> Optional[str]:
    """The int32 index limits of the conv kernel (csrc/cuda/sparse24_conv_launch.cu); malformed
    geometry is left to the op's checks."""
    if x.dim() != 4:
        return None
    _, cin, kh, kw = weight_shape
    try:
        stride, padding, dilation = (
            checks._pair("sparse24_conv2d", name, v) for name, v in (("stride", stride), ("padding", padding), ("dilation", dilation))
        )
    except checks.OpArgumentError:
        return None
    batch, _, h, w = x.shape
    p, q = checks.conv_output_hw(h, w, kh, kw, stride, padding, dilation)
    reason = _tokens_reason("sparse24_conv2d", batch * max(p, 0) * max(q, 0), "output pixels (N*P*Q)")
    if reason:
        return reason
    if batch * h >= 2**31 or kh * kw * cin > 2**30:
        return (
            f"sparse24_conv2d: N*H={batch * h} or K=kh*kw*Cin={kh * kw * cin} exceeds the cuda kernel's int32 index "
            f"range (N*H < 2^31, K <= 2^30); this call runs on another backend (split the batch to use it)"
        )
    return None


def sparse24_conv2d(x, values, meta, bias, weight_shape, stride, padding, dilation, activation="none", residual=None):
    """NHWC implicit GEMM; NCHW x costs one layout change in and one out (the output memory
    format follows :func:`sparsedm.ops.checks.conv_output_memory_format`). ``residual`` (same
    shape as the output, added after the activation) is for internal callers only."""
    cout, _, _, stride, padding, dilation = checks.check_sparse24_conv2d(
        x, values, meta, bias, weight_shape, stride, padding, dilation, activation
    )
    _, cin, kh, kw = weight_shape
    k = kh * kw * cin
    w, m = relayout(values, meta, SP16, cout, k, k_padded=conv_k_padded(k))
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    if x_nhwc.data_ptr() % 16:  # a batch slice of a channels_last tensor may start unaligned
        x_nhwc = x_nhwc.clone(memory_format=torch.channels_last)
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    y = torch.ops.sparsedm._cuda_sparse24_conv2d(
        x_nhwc, w, m, _bias32(bias), residual, cout, kh, kw, list(stride), list(padding), list(dilation),
        ACTIVATION_CODES[activation],
    )
    return y.contiguous(memory_format=checks.conv_output_memory_format(x))


registry.register_kernel("sparse24_linear", "cuda", sparse24_linear, supports=_robust(supports_sparse24_linear))
registry.register_kernel("int8_linear", "cuda", int8_linear, supports=_robust(supports_int8_linear))
registry.register_kernel(
    "sparse24_int8_linear", "cuda", sparse24_int8_linear, supports=_robust(supports_sparse24_int8_linear)
)
registry.register_kernel("sparse24_conv2d", "cuda", sparse24_conv2d, supports=_robust(supports_sparse24_conv2d))
