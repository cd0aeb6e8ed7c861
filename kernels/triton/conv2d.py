"""Implicit-GEMM 2-D convolution with a 2:4 weight (``sparsedm::sparse24_conv2d``, backend ``triton``).

Layout: docs/KERNELS.md, section "Triton implicit-GEMM 2:4 conv". The convolution is computed as a GEMM without an im2col tensor in memory:

    GEMM M = N * OH * OW   output pixels, m -> (n, oh, ow), ow fastest
    GEMM N = Cout          output channels
    GEMM K = kh * kw * Cin reduction index k = (r * kw + s) * Cin + c, cin innermost (KRSC)

    y[n, co, oh, ow] = act(bias[co] + sum_k x[n, c, oh*sh - ph + r*dh, ow*sw - pw + s*dw] * W[co, k])

where W [Cout, K] is the KRSC view of the weight, given compressed in the canonical 2:4 form
(values [Cout, K/2], meta uint8 [Cout, K/8]). Reads outside the input (padding) contribute 0.

The K loop runs over the kh*kw filter taps, and inside each tap over channel blocks, so within
one K block every input address is ``pixel_base[m] + c * stride_c``: contiguous for
channels_last input (stride_c == 1, which Triton specializes), strided for NCHW; both formats
work from their strides without a copy. The 2:4 weight tile is expanded to a dense
[BLOCK_K, BLOCK_N] tile in registers (masked gathers of the kept values, see
``_load_weight_tile``) and multiplied with ``tl.dot``: this is a dense tensor-core GEMM on a
weight read at half the bytes, not a sparse tensor-core kernel (Triton has no sparse dot).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from sparsedm.kernels import _common
from sparsedm.kernels._common import (
    ACTIVATION_CODE, INTERPRET, apply_activation, autotune_bench, device_reason, launches_on_first_tensor,
)
from sparsedm.ops import checks
from sparsedm.ops.registry import register_kernel

__all__ = ["sparse24_conv2d", "conv_configs", "INTERPRET_CONFIG"]


@triton.jit
def _load_weight_tile(
    values_ptr, meta_ptr, stride_v, stride_meta,
    k, co, k_ok, co_ok,
    INDEX_64: tl.constexpr,
):
    """Dense ``W^T`` tile [len(k), len(co)] of the KRSC weight, expanded from the 2:4 form.

    ``k`` [BLOCK_K] are GEMM reduction indices, ``co`` [BLOCK_N] output channels. Element
    (k, co) sits in group g = k // 4 at position p = k % 4; the group's nibble is byte
    meta[co, k // 8], low half for even g. If p is one of the kept positions i0 < i1 the
    element is values[co, 2g] (p == i0) or values[co, 2g + 1] (p == i1), else 0. The loads
    are masked to kept positions, so each kept value is read exactly once per tile and the
    zeros are never read: the weight costs half the bytes of a dense tile.
    """
    k2 = k[:, None]
    co2 = co[None, :]
    if INDEX_64:
        co2 = co2.to(tl.int64)
    ok = k_ok[:, None] & co_ok[None, :]
    byte = tl.load(meta_ptr + co2 * stride_meta + k2 // 8, mask=ok, other=0).to(tl.int32)
    nibble = (byte >> (((k2 // 4) % 2) * 4)) & 0xF
    pos = k2 % 4
    is_i0 = pos == (nibble & 0x3)
    is_i1 = pos == (nibble >> 2)
    slot = (k2 // 4) * 2 + is_i1.to(tl.int32)
    return tl.load(values_ptr + co2 * stride_v + slot, mask=ok & (is_i0 | is_i1), other=0.0)


@triton.jit
def _sparse24_conv2d_kernel(
    # pointers
    x_ptr,       # x: [N, C, H, W], fp16/bf16/fp32, any strides (NCHW or channels_last)
    values_ptr,  # values: [Cout, K/2], x's dtype, kept elements of the KRSC view, row stride stride_v
    meta_ptr,    # meta: uint8 [Cout, K/8], canonical nibbles, row stride stride_meta
    bias_ptr,    # bias: [Cout] (any float dtype) or a dummy pointer when HAS_BIAS is False
    y_ptr,       # y: [N, Cout, OH, OW], x's dtype, strides chosen by the launcher (output memory format)
    # sizes
    M, C, H, W, Cout, OH, OW, KW, TAPS,  # M = N*OH*OW, TAPS = kh*kw
    # strides (elements)
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_v, stride_meta,
    stride_yn, stride_yc, stride_yh, stride_yw,
    # convolution geometry
    conv_sh, conv_sw, pad_h, pad_w, dil_h, dil_w,
    # meta-parameters
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,      # code from sparsedm.kernels._common.ACTIVATION_CODE
    DOT_PRECISION: tl.constexpr,   # "ieee" for fp32 (exact fp32 products), ignored for fp16/bf16
    UPCAST_DOT: tl.constexpr,      # interpreter only: its bf16 dot is wrong, so multiply in fp32
    INDEX_64: tl.constexpr,        # int64 offsets; only when a tensor has >= 2**31 elements (int32 saves registers)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,         # programs along M that share a column of weight tiles (L2 reuse)
):
    # Grouped program order: GROUP_M consecutive pixel blocks walk the Cout blocks together,
    # so a weight tile and an input halo stay in L2 across the programs that reuse them.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(Cout, BLOCK_N)
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    # Output pixel of each GEMM row: m -> (n, oh, ow).
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    ow = m % OW
    oh = (m // OW) % OH
    n_img = m // (OW * OH)
    if INDEX_64:
        n_img = n_img.to(tl.int64)
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
    ih0 = oh * conv_sh - pad_h  # input row read by tap r = 0
    iw0 = ow * conv_sw - pad_w
    img_base = n_img * stride_xn

    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < Cout
    cc = tl.arange(0, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat loop over (tap, channel block) so the software pipeliner sees every K step
    # (nested tap/channel loops would pipeline only the short channel loop). A channel block
    # never spans two taps, so all addresses of a block share one (r, s).
    c_blocks = tl.cdiv(C, BLOCK_K)
    for kb in range(0, TAPS * c_blocks):
        tap = kb // c_blocks
        c = (kb % c_blocks) * BLOCK_K + cc
        c_ok = c < C
        ih = ih0 + (tap // KW) * dil_h  # tap = r * kw + s
        iw = iw0 + (tap % KW) * dil_w
        # Padding predicate: a tap that lands outside the image reads 0.
        pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        pix_base = img_base + ih * stride_xh + iw * stride_xw
        c_off = c.to(tl.int64) * stride_xc if INDEX_64 else c * stride_xc
        a = tl.load(
            x_ptr + pix_base[:, None] + c_off[None, :],
            mask=pix_ok[:, None] & c_ok[None, :],
            other=0.0,
        )
        b = _load_weight_tile(values_ptr, meta_ptr, stride_v, stride_meta, tap * C + c, co, c_ok, co_ok, INDEX_64)
        if UPCAST_DOT:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    acc = apply_activation(acc, ACTIVATION)

    co_y = co.to(tl.int64) if INDEX_64 else co
    y_offs = (n_img * stride_yn + oh * stride_yh + ow * stride_yw)[:, None] + (co_y * stride_yc)[None, :]
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & co_ok[None, :])


# ---------------------------------------------------------------------------------------------
# Configurations. PROVISIONAL: chosen from the usual implicit-GEMM shapes of tensor-core
# kernels, not yet measured on a GPU (bench/bench_triton_conv2d.py will decide). Buckets:
#   - Cout <= 64:  BLOCK_N = 64 so no half-empty N tiles (SD/DDPM first/last stages);
#   - C < 64:      BLOCK_K = 32, since a channel block never spans two filter taps and a
#                  64-wide block would be half padding;
#   - small M (< 4096 pixels, e.g. 8x8 maps at small batch): BLOCK_M = 64 for more programs.
# Each bucket keeps 1-6 candidates (6 where no rule applies), so autotuning costs a few launches per new shape.
# ---------------------------------------------------------------------------------------------

def _cfg(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=warps, num_stages=stages)


# 8 warps on the 64-deep tiles: with 4, the in-register 2:4 expansion spilled 0.1-1.8 KiB per
# thread under triton 3.6 (the GPU machine's) on sm_80/86/90, and 128x128x64 spilled on
# sm_80/86 even with 8; every tile here compiles without spills with triton 3.6 and 3.9.
_CONFIGS = [
    _cfg(128, 128, 32, 8, 3),
    _cfg(128, 64, 64, 8, 4),
    _cfg(64, 128, 64, 8, 4),
    _cfg(64, 64, 64, 8, 4),
    _cfg(128, 64, 32, 8, 4),
    _cfg(64, 64, 32, 4, 4),
]

# NCHW input (channel stride != 1): the channel gather is strided, one address per element, and
# every tile above spills on sm_80 and sm_90 (200 B to 3.4 KiB per thread, ptxas -v). These do
# not (table in docs/KERNELS.md). channels_last is the fast layout either way.
_NCHW_CONFIGS = [
    _cfg(128, 64, 32, 8, 3),
    _cfg(64, 128, 32, 8, 3),
    _cfg(64, 64, 32, 8, 4),
    _cfg(64, 64, 16, 4, 4),
]

# float32 (IEEE dots, an FMA loop holding a BLOCK_K slab of both operands in registers), either
# layout: the 32- and 64-deep tiles above use up to 147 KiB of shared memory (past sm_86/89's
# 99 KiB) and some spill; these 16-deep ones fit both without spills in either layout (128x64
# and 64x64 with 4 warps spill 16 bytes with an NCHW input on sm_90).
_FP32_CONFIGS = [
    _cfg(64, 64, 16, 8, 4),
    _cfg(64, 128, 16, 8, 3),
]

# Under TRITON_INTERPRET=1 one small config keeps the CPU tests fast; no autotuning.
INTERPRET_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4}


def config_list(fp32: bool = False, channels_last: bool = True) -> list:
    """The candidate list for float32 operands (any layout), NCHW input, or channels_last."""
    if fp32:
        return _FP32_CONFIGS
    return _CONFIGS if channels_last else _NCHW_CONFIGS


def conv_configs(M: int, Cout: int, C: int, fp32: bool = False, channels_last: bool = True) -> list:
    """The autotune candidates for one shape bucket (see the table above) from ``config_list``;
    the BLOCK_K rule does not apply to float32 (16 deep throughout). A bucket the rules leave
    empty gets the list's last (smallest) config."""
    configs = config_list(fp32, channels_last)
    bn = 64 if Cout <= 64 else None
    bk = 32 if C < 64 and not fp32 else None
    bm = 64 if M < 4096 else None
    out = [
        c for c in configs
        if (bn is None or c.kwargs["BLOCK_N"] == bn)
        and (bk is None or c.kwargs["BLOCK_K"] == bk)
        and (bm is None or c.kwargs["BLOCK_M"] == bm)
    ]
    return out or configs[-1:]


def _prune(configs, named_args, **kwargs):
    fp32 = named_args["x_ptr"].dtype == torch.float32
    bucket = conv_configs(named_args["M"], named_args["Cout"], named_args["C"], fp32, named_args["stride_xc"] == 1)
    allowed = {id(c) for c in bucket}
    kept = [c for c in configs if id(c) in allowed] or bucket[:1]
    return _common.candidates(kept)  # the bucket's first only under SPARSEDM_TRITON_AUTOTUNE=0


_sparse24_conv2d_tuned = triton.autotune(
    configs=_CONFIGS + _NCHW_CONFIGS + _FP32_CONFIGS,
    key=["M", "C", "Cout", "TAPS", "stride_xc", "stride_yc"],
    prune_configs_by={"early_config_prune": _prune},
    do_bench=autotune_bench,
)(_sparse24_conv2d_kernel)


# Ahead-of-time compilation (tests/triton/test_conv_compress_aot.py, test_aot_flags.py).
_AOT_INTS = (
    "M C H W Cout OH OW KW TAPS stride_xn stride_xc stride_xh stride_xw stride_v stride_meta "
    "stride_yn stride_yc stride_yh stride_yw conv_sh conv_sw pad_h pad_w dil_h dil_w"
).split()
# Multiples of 16 in every UNet conv (C, Cout in 128..2560; strides are products with C).
_AOT_DIVISIBLE = ("x_ptr", "values_ptr", "meta_ptr", "bias_ptr", "y_ptr", "C", "Cout", "stride_xn", "stride_xh",
                  "stride_xw", "stride_v", "stride_meta", "stride_yn", "stride_yh", "stride_yw")


def aot_spec(dtype: str, tile: dict, *, channels_last: bool = True, bias: bool = True, activation: int = 3,
             index64: bool = False) -> tuple[dict, dict, tuple]:
    """``(signature, constexprs, divisible_by_16)`` of ``_sparse24_conv2d_kernel`` as a launch on
    a UNet conv sees it: ``dtype`` a Triton type (``"fp16"``, ``"bf16"``, ``"fp32"``), ``tile``
    BLOCK_M/N/K (GROUP_M 8); channels_last specializes the unit channel strides to 1."""
    sig = {"x_ptr": f"*{dtype}", "values_ptr": f"*{dtype}", "meta_ptr": "*u8", "bias_ptr": f"*{dtype}", "y_ptr": f"*{dtype}"}
    sig.update({a: "i32" for a in _AOT_INTS})
    constexprs = dict(
        HAS_BIAS=bias, ACTIVATION=activation, DOT_PRECISION="ieee" if dtype == "fp32" else "tf32", UPCAST_DOT=False,
        INDEX_64=index64, BLOCK_M=tile["BLOCK_M"], BLOCK_N=tile["BLOCK_N"], BLOCK_K=tile["BLOCK_K"], GROUP_M=8,
    )
    if channels_last:
        constexprs.update(stride_xc=1, stride_yc=1)
    sig.update({k: "constexpr" for k in constexprs})
    return sig, constexprs, _AOT_DIVISIBLE


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------

def _span(t: torch.Tensor) -> int:
    """1 + the largest element offset reachable in ``t`` (its extent in memory)."""
    return 1 + sum((size - 1) * abs(st) for size, st in zip(t.shape, t.stride()) if size > 0)


def _supports(x, values, meta, bias, weight_shape, stride, padding, dilation, activation="none") -> Optional[str]:
    reason = device_reason(x, values, meta, bias)
    if reason is not None:
        return reason
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the Triton conv handles float16, bfloat16 and float32, not {x.dtype} (float64 runs on the reference backend)"
    return None


@launches_on_first_tensor
def sparse24_conv2d(
    x: torch.Tensor,          # [N, C, H, W] fp16/bf16/fp32, NCHW or channels_last (any strides)
    values: torch.Tensor,     # [Cout, K/2], x's dtype, K = kh*kw*Cin (KRSC view, canonical 2:4)
    meta: torch.Tensor,       # uint8 [Cout, K/8]
    bias: Optional[torch.Tensor],  # [Cout] or None
    weight_shape,             # [Cout, Cin, kh, kw]
    stride,
    padding,
    dilation,
    activation: str = "none",
    *,
    config: Optional[triton.Config] = None,
) -> torch.Tensor:
    """``act(conv2d(x, W) + bias)`` for a 2:4 weight; output [N, Cout, OH, OW] in x's dtype.

    ``config``: a ``triton.Config`` (BLOCK_M/N/K, GROUP_M, warps, stages) to run instead of the
    autotuned choice (tests of every candidate, tuning experiments).

    The output is channels_last when x is, NCHW otherwise
    (:func:`sparsedm.ops.checks.conv_output_memory_format`). Follows docs/KERNELS.md,
    "Triton implicit-GEMM 2:4 conv".
    """
    cout, oh, ow, stride, padding, dilation = checks.check_sparse24_conv2d(
        x, values, meta, bias, weight_shape, stride, padding, dilation, activation
    )
    reason = _supports(x, values, meta, bias, weight_shape, stride, padding, dilation, activation)
    if reason is not None:
        raise checks.OpArgumentError(f"sparse24_conv2d (triton): {reason}")
    n, c, h, w = x.shape
    _, _, kh, kw = weight_shape
    y = torch.empty((n, cout, oh, ow), dtype=x.dtype, device=x.device, memory_format=checks.conv_output_memory_format(x))
    m = n * oh * ow
    if m == 0 or cout == 0:
        return y
    if values.stride(1) != 1:
        values = values.contiguous()
    if meta.stride(1) != 1:
        meta = meta.contiguous()
    if bias is not None:
        bias = bias.contiguous()  # read as bias_ptr + co
    args = (
        x, values, meta, bias if bias is not None else values, y,
        m, c, h, w, cout, oh, ow, kw, kh * kw,
        *x.stride(), values.stride(0), meta.stride(0), *y.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
    )
    flags = dict(
        HAS_BIAS=bias is not None,
        ACTIVATION=ACTIVATION_CODE[activation],
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        UPCAST_DOT=INTERPRET and x.dtype == torch.bfloat16,
        # Offsets stay int32 unless an operand is too large for them (or its strides are huge).
        INDEX_64=max(_span(x), _span(y), _span(values), _span(meta)) >= 2**31,
    )
    if config is None and not _common.TUNE and not INTERPRET:
        # SPARSEDM_TRITON_AUTOTUNE=0: the bucket's first candidate, launched directly (an
        # autotuner left with one pruned config still times it on some triton versions)
        config = conv_configs(m, cout, c, x.dtype == torch.float32, x.stride(1) == 1)[0]
    if config is not None or INTERPRET:
        if config is not None:
            _common.check_tile_config(config, "conv2d.conv_configs")
        cfg = config.all_kwargs() if config is not None else INTERPRET_CONFIG
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(cout, cfg["BLOCK_N"]),)
        _sparse24_conv2d_kernel[grid](*args, **flags, **cfg)
    else:
        def grid(meta_params):
            return (triton.cdiv(m, meta_params["BLOCK_M"]) * triton.cdiv(cout, meta_params["BLOCK_N"]),)

        _sparse24_conv2d_tuned[grid](*args, **flags)
    return y


register_kernel("sparse24_conv2d", "triton", sparse24_conv2d, supports=_supports)
