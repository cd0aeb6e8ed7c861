"""Triton linear kernels: 2:4 sparse, int8 (W8A8) and 2:4 sparse int8 GEMMs.

One GEMM kernel family, ``_linear_kernel``, configured by constexpr flags, serves the three
ops ``sparse24_linear``, ``int8_linear`` and ``sparse24_int8_linear``; ``_quantize_rows_kernel``
is the per-token activation quantizer the int8 ops launch first when no ``x_scale`` is given.
At small M the GEMM can split K over a second grid axis (split-K): each program writes the raw
fp32 / int32 sum of its K slice to a workspace and ``_split_k_reduce_kernel`` adds the slices
in a fixed order and applies the epilogue.
Math, layouts and the choice of configurations: docs/KERNELS.md, section "Triton linear
kernels". Three tiers, as everywhere in sparsedm: ``@triton.jit`` kernels, launchers that
check, allocate and set the grid, and the ``triton`` backend registration at the bottom.

Triton has no sparse tensor-core dot (triton-lang/triton issue 1277), so the 2:4 weight is
expanded to a dense tile in registers and multiplied with a dense ``tl.dot``: the sparse path
reads half the weight bytes but does the full number of MACs.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from sparsedm.kernels._common import (
    ACTIVATION_CODE, INTERPRET, apply_activation, autotune_bench, candidates, check_tile_config, device_reason,
    launches_on_first_tensor,
)
from sparsedm.ops import checks
from sparsedm.ops.registry import register_kernel

__all__ = [
    "sparse24_linear", "int8_linear", "sparse24_int8_linear", "quantize_rows", "SMALL_M", "configs_for", "split_k_for",
]


# --------------------------------------------------------------------------------------------
# Device code
# --------------------------------------------------------------------------------------------


@triton.jit
def _quantize_int8(v, scale):
    """int8 codes of the float32 tile ``v`` for a float32 ``scale`` broadcasting against it.

    ``clamp(round_half_even(v / scale), -127, 127)``, and 0 where ``scale`` is 0 (an all-zero
    row, or a zero static scale): exactly ``sparsedm.formats.quantize_with_scale``. The true
    division, correctly rounded (``div_rn``: Triton's ``/`` compiles to the approximate
    ``div.full.f32``), is what keeps the codes bit-identical to torch.
    """
    safe = tl.where(scale > 0.0, scale, 1.0)
    q = tl.minimum(tl.maximum(tl.math.div_rn(v, safe), -127.0), 127.0)  # clamping first keeps |q| < 2**22
    # Adding then subtracting 1.5 * 2**23 rounds an fp32 |q| < 2**22 to an integer, half to
    # even, in the FPU's own round-to-nearest-even: bit-exact with torch.round, with the same
    # code in every Triton version and in the interpreter (no libdevice dependency).
    q = (q + 12582912.0) - 12582912.0
    q = tl.where(scale > 0.0, q, 0.0)
    return q.to(tl.int8)


@triton.jit
def _quantize_rows_kernel(
    # pointers
    x_ptr,  # [M, K] float16/bfloat16/float32, strides (stride_xm, stride_xk)
    q_ptr,  # [M, K] int8, contiguous: the codes
    scale_ptr,  # [M] float32: s_x = max|x_row| / 127
    # sizes and strides
    K,
    stride_xm,
    stride_xk,
    # meta-parameters
    BLOCK_K: tl.constexpr,
    SINGLE_PASS: tl.constexpr,  # K <= BLOCK_K: the row is read once, from registers
):
    """Per-token symmetric int8 quantization, one program per row (DESIGN.md, int8 contract).

    A row that fits in one block is read once; a longer row is read twice (absmax pass, then
    quantize pass; the second read usually hits L2).
    """
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * K
    offs = tl.arange(0, BLOCK_K)
    # A NaN in the row makes its scale NaN (codes 0, so the GEMM's output row is NaN), as torch's
    # amax does: the GPU's max.f32 would skip it and quantize the row as if it were absent.
    if SINGLE_PASS:
        mask = offs < K
        v = tl.load(x_row + offs * stride_xk, mask=mask, other=0.0).to(tl.float32)
        a = tl.abs(v)
        nans = tl.max((a != a).to(tl.int32), axis=0)
        scale = tl.math.div_rn(tl.max(a, axis=0), 127.0)
        scale = tl.where(nans > 0, float("nan"), scale)
        tl.store(q_row + offs, _quantize_int8(v, scale), mask=mask)
    else:
        absmax = tl.zeros([BLOCK_K], dtype=tl.float32)
        nan_seen = tl.zeros([BLOCK_K], dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            mask = k0 + offs < K
            a = tl.abs(tl.load(x_row + (k0 + offs) * stride_xk, mask=mask, other=0.0).to(tl.float32))
            absmax = tl.maximum(absmax, a)
            nan_seen = tl.maximum(nan_seen, (a != a).to(tl.int32))
        scale = tl.math.div_rn(tl.max(absmax, axis=0), 127.0)
        scale = tl.where(tl.max(nan_seen, axis=0) > 0, float("nan"), scale)
        for k0 in range(0, K, BLOCK_K):
            mask = k0 + offs < K
            v = tl.load(x_row + (k0 + offs) * stride_xk, mask=mask, other=0.0).to(tl.float32)
            tl.store(q_row + k0 + offs, _quantize_int8(v, scale), mask=mask)
    tl.store(scale_ptr + row, scale)


@triton.jit
def _expand24_tile(values, meta_bytes, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Dense ``[BLOCK_N, BLOCK_K]`` weight tile from its canonical 2:4 form, in registers.

    ``values`` [BLOCK_N, BLOCK_K/2]: the two kept elements of each group of 4, ascending;
    ``meta_bytes`` int32 [BLOCK_N, BLOCK_K/8]: one canonical meta byte per two groups (low
    nibble = even group), nibble = i0 | i1 << 2. Dense element (n, 4g + p) is values[n, 2g]
    when p == i0, values[n, 2g + 1] when p == i1, else 0.
    """
    v0, v1 = tl.split(tl.reshape(values, (BLOCK_N, BLOCK_K // 4, 2)))  # kept elements of group g
    # join puts (low, high) nibble last, so the reshape yields groups in order 2b, 2b + 1.
    nibbles = tl.reshape(tl.join(meta_bytes & 0xF, meta_bytes >> 4), (BLOCK_N, BLOCK_K // 4))
    i0 = (nibbles & 0x3)[:, :, None]
    i1 = (nibbles >> 2)[:, :, None]
    position = tl.arange(0, 4)[None, None, :]
    zero = tl.zeros((BLOCK_N, BLOCK_K // 4, 4), dtype=values.dtype)
    dense = tl.where(position == i0, v0[:, :, None], tl.where(position == i1, v1[:, :, None], zero))
    return tl.reshape(dense, (BLOCK_N, BLOCK_K))


@triton.jit
def _epilogue(
    acc, offs_m, offs_n, mask_m, mask_n, w_scale_ptr, x_scale_ptr, bias_ptr,
    INT8: tl.constexpr, PER_TOKEN_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
):
    """float32 ``[BLOCK_M, BLOCK_N]`` tile of y from the raw sum ``acc`` (fp32, or int32 when INT8).

    INT8: ``acc * s_x[:, None] * s_w[None, :]`` in float32, in the reference's order (s_x is
    ``x_scale[offs_m]`` when PER_TOKEN_SCALE, else the one static ``x_scale[0]``); then
    ``+ bias`` and the activation. Shared by ``_linear_kernel`` and ``_split_k_reduce_kernel``,
    so a split and an unsplit int8 GEMM round the same int32 sum identically.
    """
    if INT8:
        s_w = tl.load(w_scale_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        if PER_TOKEN_SCALE:
            s_x = tl.load(x_scale_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32)
            y = acc.to(tl.float32) * s_x[:, None] * s_w[None, :]
        else:
            y = acc.to(tl.float32) * tl.load(x_scale_ptr).to(tl.float32) * s_w[None, :]
    else:
        y = acc
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    return apply_activation(y, ACTIVATION)


@triton.jit
def _linear_kernel(
    # pointers
    x_ptr,  # [M, K] activations: float (sparse float path, or QUANTIZE_X) or int8 codes
    w_ptr,  # dense: [N, K]; SPARSE_W: values [N, K/2]. x's dtype, or int8 when INT8
    meta_ptr,  # SPARSE_W: uint8 [N, K/8] canonical 2:4 meta (unused otherwise)
    w_scale_ptr,  # INT8: [N] per-channel weight scale (any float dtype, read as float32)
    x_scale_ptr,  # INT8: [M] per-token scale, or [1] static scale when not PER_TOKEN_SCALE
    bias_ptr,  # HAS_BIAS: [N] (any float dtype, read as float32)
    y_ptr,  # [M, N] output in x's dtype, strides (stride_ym, 1); WRITE_PARTIAL: workspace [SPLIT_K, M, N]
    # sizes
    M,
    N,
    K,
    M_BUCKET,  # autotune key only: the launcher's bucket of M (see configs_for)
    SPLIT_K,  # number of K slices = the grid's axis 1 (1 when not WRITE_PARTIAL); also an autotune key
    # strides (elements)
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_metan,
    stride_metak,
    stride_ym,
    # meta-parameters
    SPARSE_W: tl.constexpr,  # weight given as canonical 2:4 (values, meta)
    INT8: tl.constexpr,  # int8 x int8 -> int32 dot, epilogue * s_x * s_w
    QUANTIZE_X: tl.constexpr,  # INT8 with x float: quantize each x tile with the given x_scale
    PER_TOKEN_SCALE: tl.constexpr,  # x_scale is [M] (else one static scale)
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,  # code from ACTIVATION_CODE (float path only)
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 operands (no TF32), else "tf32" (ignored)
    DOT_IN_FP32: tl.constexpr,  # upcast both operands to float32 first (interpreter + bfloat16 only)
    WRITE_PARTIAL: tl.constexpr,  # split-K: sum K slice program_id(1) only; store the raw sum, no epilogue
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """``y = act(x @ W^T * scales + bias)`` for one [BLOCK_M, BLOCK_N] tile of y.

    Float path: fp32 accumulation of x and W (dense W, or expanded from 2:4), bias, activation.
    INT8 path: int32 accumulation of x_q and W_q, then ``acc * s_x[:, None] * s_w[None, :]``
    (that order, in float32, as the reference), bias. Tails in M, N and K are masked, so any
    sizes work; for SPARSE_W, K is a multiple of 8 (the canonical format's contract).

    WRITE_PARTIAL (split-K): the cdiv(K, BLOCK_K) K steps are dealt to the SPLIT_K slices as
    evenly as whole steps allow (slice s gets steps [s * steps // SPLIT_K, (s + 1) * steps //
    SPLIT_K), possibly none); program (tile, s) stores its fp32 / int32 partial sum, unscaled,
    at ``y_ptr + s * M * stride_ym``, and ``_split_k_reduce_kernel`` finishes the tile.
    """
    # Grouped ordering: GROUP_M row tiles share each column tile while it is hot in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_pid_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_pid_n)) % group_size
    pid_n = (pid % (GROUP_M * num_pid_n)) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    # int64 row offsets: M * K can pass 2**31 for long token sequences.
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + offs_n[:, None] * stride_wn

    if INT8:
        if QUANTIZE_X:
            if PER_TOKEN_SCALE:
                s_x = tl.load(x_scale_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32)
            else:
                s_x = tl.load(x_scale_ptr).to(tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    if WRITE_PARTIAL:
        # Whole BLOCK_K steps per slice, so the K tail (masked by k < K) stays in the last
        # slice and every values / meta offset (k0 / 2, k0 / 8) stays aligned as in one pass.
        pid_k = tl.program_id(1)
        k_steps = tl.cdiv(K, BLOCK_K)
        k_begin = (pid_k * k_steps // SPLIT_K) * BLOCK_K
        k_end = tl.minimum(((pid_k + 1) * k_steps // SPLIT_K) * BLOCK_K, K)
    else:
        k_begin = 0
        k_end = K
    for k0 in range(k_begin, k_end, BLOCK_K):
        k = k0 + offs_k
        a = tl.load(x_rows + k[None, :] * stride_xk, mask=mask_m[:, None] & (k[None, :] < K), other=0.0)
        if QUANTIZE_X:
            if PER_TOKEN_SCALE:
                a = _quantize_int8(a.to(tl.float32), s_x[:, None])
            else:
                a = _quantize_int8(a.to(tl.float32), s_x)
        if SPARSE_W:
            kv = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            km = k0 // 8 + tl.arange(0, BLOCK_K // 8)
            values = tl.load(w_rows + kv[None, :] * stride_wk, mask=mask_n[:, None] & (kv[None, :] < K // 2), other=0)
            meta = tl.load(
                meta_ptr + offs_n[:, None] * stride_metan + km[None, :] * stride_metak,
                mask=mask_n[:, None] & (km[None, :] < K // 8),
                other=0,
            ).to(tl.int32)
            w = _expand24_tile(values, meta, BLOCK_N, BLOCK_K)
        else:
            w = tl.load(w_rows + k[None, :] * stride_wk, mask=mask_n[:, None] & (k[None, :] < K), other=0)
        if INT8:
            # out_dtype explicit: triton <= 3.6 defaults it to float32 and rejects an int32 acc.
            acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
        elif DOT_IN_FP32:  # exact: a bf16 x bf16 product fits in fp32, as in the bf16 mma
            acc = tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(w), acc, input_precision=DOT_PRECISION)

    if WRITE_PARTIAL:  # the raw slice sum; scales, bias and activation come after the reduction
        y = acc
        y_ptr += tl.program_id(1).to(tl.int64) * M * stride_ym
    else:
        y = _epilogue(acc, offs_m, offs_n, mask_m, mask_n, w_scale_ptr, x_scale_ptr, bias_ptr,
                      INT8, PER_TOKEN_SCALE, HAS_BIAS, ACTIVATION)
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _split_k_reduce_kernel(
    # pointers
    partial_ptr,  # [SPLIT_K, M, N] contiguous: float32 slice sums, or int32 when INT8
    w_scale_ptr,  # INT8: [N] per-channel weight scale (read as float32)
    x_scale_ptr,  # INT8: [M] per-token scale, or [1] static scale when not PER_TOKEN_SCALE
    bias_ptr,  # HAS_BIAS: [N] (read as float32)
    y_ptr,  # [M, N] output, strides (stride_ym, 1)
    # sizes and strides
    M,
    N,
    SPLIT_K,
    stride_slice,  # M * N: elements between two slices of the workspace
    stride_ym,
    # meta-parameters
    INT8: tl.constexpr,
    PER_TOKEN_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Second pass of a split-K GEMM: ``y = epilogue(sum over s of partial[s])`` for one tile.

    The slices are added in the fixed order s = 0, 1, ..., SPLIT_K - 1 (no atomics), so the
    result does not depend on which GEMM program finished first: float results are
    deterministic, and int32 sums (exact) are bit-identical to the unsplit GEMM's.
    """
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    mask = mask_m[:, None] & mask_n[None, :]
    ptrs = partial_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    if INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, SPLIT_K):
        acc += tl.load(ptrs, mask=mask, other=0)
        ptrs += stride_slice
    y = _epilogue(acc, offs_m, offs_n, mask_m, mask_n, w_scale_ptr, x_scale_ptr, bias_ptr,
                  INT8, PER_TOKEN_SCALE, HAS_BIAS, ACTIVATION)
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------

# Largest M handled by the small-M list. Up to here a GEMM reads far more weight than
# activation bytes (N*K vs M*K), so the time is weight streaming and the tile shape should
# put many CTAs on the weight; above it the GEMM turns compute-bound.
SMALL_M = 64

# PROVISIONAL: no GPU measurement exists yet. These are starting points chosen from the
# reasoning in docs/KERNELS.md ("Triton linear kernels", "Configurations"); replace each
# reason with a measured one (bench/bench_triton_linear.py -> bench/results/) when known.
_SMALL_M_CONFIGS = [
    # BLOCK_M=16 is the smallest tile tl.dot accepts; BLOCK_N=64 keeps N/64 CTAs in flight
    # (64 for N=4096); BLOCK_K=128 makes each weight load 8-16 KiB, four stages deep.
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1}, num_warps=4, num_stages=4),
    # Narrower N tile for N=1024-class layers (U-ViT-L/2 qkv/proj per head group): 2x CTAs.
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 256, "GROUP_M": 1}, num_warps=4, num_stages=3),
    # M in 17..64: one row tile covers all tokens, so every weight byte is read once.
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 1}, num_warps=4, num_stages=4),
]
_LARGE_M_CONFIGS = [
    # The Triton matmul tutorial's fp16 shapes, a conventional compute-bound starting set:
    # 128x128 tiles reach tensor-core peak on sm_80/sm_90 with 4 warps / 8 warps.
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    # int8 operands are half the bytes: a 128-deep K slice costs what 64 costs in fp16.
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
]
# Split-K (M <= SMALL_M, when split_k_for says so). PROVISIONAL as the lists above. Every
# config has BLOCK_N = 64 so that split_k_for can count the CTAs before autotuning picks one;
# the 16x32x256 tile of the small-M list is absent because its only purpose, more CTAs on a
# narrow N, is what the split already provides.
SPLIT_K_BLOCK_N = 64
_SPLIT_K_CONFIGS = [
    # The small-M weight-streaming tile: 8-16 KiB of weight per K step, four stages deep.
    triton.Config({"BLOCK_M": 16, "BLOCK_N": SPLIT_K_BLOCK_N, "BLOCK_K": 128, "GROUP_M": 1}, num_warps=4, num_stages=4),
    # Half-depth K steps: twice the steps in a short slice (K=1024 split 2: 8 steps), and fewer
    # registers for the sparse expansion (the 128-deep float tile sits at 255).
    triton.Config({"BLOCK_M": 16, "BLOCK_N": SPLIT_K_BLOCK_N, "BLOCK_K": 64, "GROUP_M": 1}, num_warps=4, num_stages=4),
    # M in 17..64 in one row tile, so each weight byte is read once.
    triton.Config({"BLOCK_M": 64, "BLOCK_N": SPLIT_K_BLOCK_N, "BLOCK_K": 64, "GROUP_M": 1}, num_warps=4, num_stages=4),
]
# float32 activations (sparse24_linear only: the int8 paths multiply int8 codes) take IEEE fp32
# dots, an FMA loop that holds a BLOCK_K slab of both operands in registers. With the tiles
# above it spills 4-12 KiB of stack per thread, and their shared memory (up to 256 KiB) is past
# sm_86/89's 99 KiB. These fit both, without spills (AOT table in docs/KERNELS.md). A
# correctness path, not a fast one: under backend="auto" float32 layers go to cuBLAS.
_FP32_SMALL_M_CONFIGS = [
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 1}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 16, "GROUP_M": 1}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16, "GROUP_M": 1}, num_warps=8, num_stages=4),
]
_FP32_LARGE_M_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 16, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 16, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16, "GROUP_M": 8}, num_warps=8, num_stages=4),
]
_FP32_SPLIT_K_CONFIGS = _FP32_SMALL_M_CONFIGS  # every one has BLOCK_N = SPLIT_K_BLOCK_N
# The interpreter runs every program in numpy: one small config, so tests do not autotune and
# the test shapes (N=24, K=40, 72) still cross block borders in N and K.
_INTERPRET_CONFIG = triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=4, num_stages=1)


def configs_for(m: int, split_k: int = 1, fp32: bool = False) -> list:
    """The autotune candidates for a GEMM with ``m`` rows split ``split_k`` ways along K;
    ``fp32``: float32 operands (IEEE dots). One config in the interpreter.
    """
    if INTERPRET:
        return [_INTERPRET_CONFIG]
    if split_k > 1:
        return _FP32_SPLIT_K_CONFIGS if fp32 else _SPLIT_K_CONFIGS
    if m <= SMALL_M:
        return _FP32_SMALL_M_CONFIGS if fp32 else _SMALL_M_CONFIGS
    return _FP32_LARGE_M_CONFIGS if fp32 else _LARGE_M_CONFIGS


_AUTOTUNE_KEY = ["M_BUCKET", "N", "K"]


def _tuner(m: int, split_k: int = 1, fp32: bool = False):
    key = _AUTOTUNE_KEY + (["SPLIT_K"] if split_k > 1 else [])
    return triton.autotune(configs=candidates(configs_for(m, split_k, fp32)), key=key, do_bench=autotune_bench)(_linear_kernel)


_linear_small_m = _tuner(1)
_linear_large_m = _tuner(SMALL_M + 1)
_linear_split_k = _tuner(1, split_k=2)
_linear_small_m_fp32 = _tuner(1, fp32=True)
_linear_large_m_fp32 = _tuner(SMALL_M + 1, fp32=True)
_linear_split_k_fp32 = _tuner(1, split_k=2, fp32=True)

# The split-K rule (docs/KERNELS.md, "Split-K"). PROVISIONAL: unmeasured on a GPU.
SPLIT_K_WAVES = 2  # aim at about 2 CTAs per SM: these tiles fit 1-4 per SM (up to 255 registers x 128 threads)
SPLIT_K_MIN_SLICE = 512  # K elements per slice at least: 4 steps of BLOCK_K = 128, 8 of 64 (fills a 4-stage pipeline)
# The partial sums cost 8 * SPLIT_K * M * N bytes of traffic (written once, read once); keep
# them within K * N / 4 bytes, i.e. SPLIT_K * M <= K / 32: at most 40% of the smallest weight
# stream (2:4 int8, 0.625 byte per weight element), 22% of the 2:4 fp16 one. This only binds
# for M > 16 (for M <= 16 the slice length does first).
SPLIT_K_TRAFFIC_DIV = 32
SPLIT_K_MAX = 16  # bounds the workspace (SPLIT_K * M * N * 4 bytes) and the reduction's reads
# The reduction pass: a [<=16, 128] tile per program, elementwise over the workspace.
_REDUCE_BLOCK_N = 128
# 8 warps (8 elements per thread): with 4, triton 3.6 gave the int8 per-tensor-scale silu
# variant an 8-byte stack spill on sm_90.
_REDUCE_WARPS = 8


def split_k_for(m: int, n: int, k: int, sm_count: Optional[int]) -> int:
    """How many K slices the GEMM of an [m, k] x [k, n] product should use on ``sm_count`` SMs.

    1 (no split) unless all of: the SM count is known (a GPU; the interpreter has none), m <=
    SMALL_M (weight streaming: one row tile of BLOCK_M = 64), and the unsplit GEMM's
    ``tiles = cdiv(n, SPLIT_K_BLOCK_N)`` CTAs fill at most half the SMs. Then
    ``min(SPLIT_K_WAVES * sm_count // tiles, k // SPLIT_K_MIN_SLICE,
    k // (SPLIT_K_TRAFFIC_DIV * m), SPLIT_K_MAX)``, or 1 if that is below 2. U-ViT-L/2 on 132
    SMs (H100 SXM), M <= 16: fc2 (N=1024, K=4096) 16 CTAs -> 8 slices; qkv, proj, fc1
    (K=1024) -> 2 slices.
    """
    if sm_count is None or m > SMALL_M or m < 1:
        return 1
    tiles = triton.cdiv(n, SPLIT_K_BLOCK_N)
    if 2 * tiles > sm_count:
        return 1
    split = min(SPLIT_K_WAVES * sm_count // tiles, k // SPLIT_K_MIN_SLICE, k // (SPLIT_K_TRAFFIC_DIV * m), SPLIT_K_MAX)
    return split if split >= 2 else 1


def _m_bucket(m: int) -> int:
    """Powers of two up to 4096, so a new token count rarely triggers a new tuning run."""
    return min(triton.next_power_of_2(m), 4096)


# Ahead-of-time compilation (tests/triton/test_linear_aot.py, the table in docs/KERNELS.md).
# Each variant: (x dtype, weight dtype, SPARSE_W, INT8, QUANTIZE_X, WRITE_PARTIAL). "int8" is
# the dynamic path (codes from _quantize_rows_kernel); the given-x_scale path only adds the
# prologue. "_splitk" variants are the split-K GEMM (partial sums out, no epilogue).
AOT_VARIANTS = {
    "int8": ("i8", "i8", False, True, False, False),
    "sparse_fp16": ("fp16", "fp16", True, False, False, False),
    "sparse_bf16": ("bf16", "bf16", True, False, False, False),
    "sparse_int8": ("i8", "i8", True, True, False, False),
    "sparse_int8_static_xscale": ("fp16", "i8", True, True, True, False),
    "int8_splitk": ("i8", "i8", False, True, False, True),
    "sparse_fp16_splitk": ("fp16", "fp16", True, False, False, True),
    "sparse_int8_splitk": ("i8", "i8", True, True, False, True),
    # float32 operands: IEEE dots (FMA, no tensor cores) on the float32 tile lists
    "sparse_fp32": ("fp32", "fp32", True, False, False, False),
    "sparse_fp32_splitk": ("fp32", "fp32", True, False, False, True),
}


def aot_spec(variant: str, config) -> tuple[dict, dict, tuple]:
    """``(signature, constexprs, divisible_by_16)`` of ``_linear_kernel`` as a real launch sees it.

    ``config`` is a ``triton.Config`` (BLOCK_M/N/K, GROUP_M); output float16 (bfloat16 /
    float32 for those variants), or the float32 / int32 workspace of a split-K variant; bias, no
    activation. Any other flag combination: ``aot_flags_spec``.
    """
    x_ty, w_ty, sparse, int8, quantize_x, partial = AOT_VARIANTS[variant]
    if partial:
        y_ty = "i32" if int8 else "fp32"
    else:
        y_ty = x_ty if x_ty in ("bf16", "fp32") else "fp16"
    return aot_flags_spec(config, x=x_ty, w=w_ty, sparse=sparse, int8=int8, quantize_x=quantize_x,
                          per_token=int8 and not quantize_x, bias=True, activation=0, partial=partial, y=y_ty)


def aot_flags_spec(config, *, x: str, w: str, sparse: bool, int8: bool, quantize_x: bool, per_token: bool,
                   bias: bool, activation: int, partial: bool, y: str) -> tuple[dict, dict, tuple]:
    """``aot_spec`` for any flags a launcher passes: operand / output Triton types (``"fp16"``,
    ``"i8"``, ``"i32"``...), the epilogue (bias, activation code), the int8 scale mode and
    split-K partial sums. A launch on contiguous tensors specializes the unit strides (and
    SPLIT_K = 1) to the constant 1 and marks 16-byte-aligned pointers and sizes/strides
    divisible by 16 (``tt.divisibility``); without both, Triton can neither vectorize the loads
    nor pipeline them with cp.async, so they are repeated here. M is left unhinted (65 * batch
    tokens). fp32 activations take IEEE dots, as the launcher passes them.
    """
    signature = {
        "x_ptr": f"*{x}", "w_ptr": f"*{w}", "meta_ptr": "*u8", "w_scale_ptr": "*fp32",
        "x_scale_ptr": "*fp32", "bias_ptr": "*fp32", "y_ptr": f"*{y}",
        "M": "i32", "N": "i32", "K": "i32", "M_BUCKET": "i32", "SPLIT_K": "i32",
        "stride_xm": "i32", "stride_xk": "i32", "stride_wn": "i32", "stride_wk": "i32",
        "stride_metan": "i32", "stride_metak": "i32", "stride_ym": "i32",
    }
    constexprs = dict(
        stride_xk=1, stride_wk=1, stride_metak=1,
        SPARSE_W=sparse, INT8=int8, QUANTIZE_X=quantize_x, PER_TOKEN_SCALE=per_token,
        HAS_BIAS=bias, ACTIVATION=activation, DOT_PRECISION="ieee" if x == "fp32" else "tf32", DOT_IN_FP32=False,
        WRITE_PARTIAL=partial, **config.kwargs,
    )
    if not partial:
        constexprs["SPLIT_K"] = 1
    signature.update({name: "constexpr" for name in constexprs})
    divisible = (
        "x_ptr", "w_ptr", "meta_ptr", "w_scale_ptr", "x_scale_ptr", "bias_ptr", "y_ptr",
        "N", "K", "stride_xm", "stride_wn", "stride_metan", "stride_ym",
    )
    return signature, constexprs, divisible


def aot_reduce_spec(int8: bool, *, per_token: Optional[bool] = None, bias: bool = True, activation: int = 0,
                    y: str = "fp16") -> tuple[dict, dict, tuple]:
    """``(signature, constexprs, divisible_by_16)`` of ``_split_k_reduce_kernel`` (by default fp16
    out, bias, no activation, per-token scales for int8)."""
    signature = {
        "partial_ptr": "*i32" if int8 else "*fp32", "w_scale_ptr": "*fp32", "x_scale_ptr": "*fp32",
        "bias_ptr": "*fp32", "y_ptr": f"*{y}", "M": "i32", "N": "i32", "SPLIT_K": "i32",
        "stride_slice": "i32", "stride_ym": "i32",
    }
    constexprs = dict(INT8=int8, PER_TOKEN_SCALE=int8 if per_token is None else per_token, HAS_BIAS=bias,
                      ACTIVATION=activation, BLOCK_M=16, BLOCK_N=_REDUCE_BLOCK_N)
    signature.update({name: "constexpr" for name in constexprs})
    divisible = ("partial_ptr", "w_scale_ptr", "x_scale_ptr", "bias_ptr", "y_ptr", "N", "stride_slice", "stride_ym")
    return signature, constexprs, divisible


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------

_SUPPORTED_X = (torch.float16, torch.bfloat16, torch.float32)


def _dtype_reason(x: torch.Tensor) -> Optional[str]:
    if x.dtype not in _SUPPORTED_X:
        return f"the Triton linear kernels take float16, bfloat16 or float32 activations, got {x.dtype} (use backend 'reference')"
    return None


@launches_on_first_tensor
def quantize_rows(x2d: torch.Tensor, block_k: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 quantization of ``x2d`` [M, K] (float16/bfloat16/float32, any strides).

    Returns ``(codes int8 [M, K] contiguous, scales float32 [M])``, bit-identical to
    ``sparsedm.formats.quantize_activation_int8``. ``block_k`` overrides the row block (tests
    use it to reach the two-pass path on small K).
    """
    m, k = x2d.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x2d.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x2d.device)
    if m == 0:
        return q, scale
    if block_k is None:
        block_k = min(triton.next_power_of_2(k), 4096)  # rows up to 4096 (U-ViT-L/2 fc2) in one read
    num_warps = 4 if block_k <= 2048 else 8
    _quantize_rows_kernel[(m,)](
        x2d, q, scale, k, x2d.stride(0), x2d.stride(1),
        BLOCK_K=block_k, SINGLE_PASS=k <= block_k, num_warps=num_warps,
    )
    return q, scale


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device: torch.device) -> Optional[int]:
    """Streaming multiprocessors of ``device``; None off CUDA and in the interpreter (it has no
    SMs, even when it runs on CUDA tensors), so ``split_k_for`` splits there only when forced."""
    if INTERPRET or device.type != "cuda":
        return None
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@launches_on_first_tensor
def _launch_gemm(
    x2d: torch.Tensor,
    w: torch.Tensor,
    meta: Optional[torch.Tensor],
    n: int,
    *,
    out_dtype: torch.dtype,
    bias: Optional[torch.Tensor],
    activation: str = "none",
    w_scale: Optional[torch.Tensor] = None,
    x_scale: Optional[torch.Tensor] = None,
    quantize_x: bool = False,
    split_k: Optional[int] = None,
    config: Optional[triton.Config] = None,
) -> torch.Tensor:
    """Allocate y [M, N] and run ``_linear_kernel`` with the flags the arguments imply.

    ``x2d`` [M, K] (any strides); ``w`` dense [N, K] or 2:4 values [N, K/2] with ``meta``
    uint8 [N, K/8] (any strides); ``w_scale`` [N] and ``x_scale`` ([M] or one element)
    select the INT8 path. ``split_k``: None applies ``split_k_for`` with the device's SM
    count; an int >= 1 forces that many K slices (tests, benchmarks). ``config``: a
    ``triton.Config`` (BLOCK_M/N/K, GROUP_M, warps, stages) to run instead of the autotuned
    choice (tests of every candidate, tuning experiments).
    """
    m, k = x2d.shape
    if split_k is None:
        split_k = split_k_for(m, n, k, _sm_count(x2d.device))
    elif isinstance(split_k, bool) or not isinstance(split_k, int) or split_k < 1:
        raise ValueError(f"split_k={split_k!r}: pass None (the split_k_for rule) or a number of K slices >= 1")
    else:
        # More slices than 16-wide K steps (the smallest BLOCK_K) are all empty: same result,
        # and the slice axis of the grid (65535 at most) is never exceeded.
        split_k = min(split_k, max(1, triton.cdiv(k, 16)))
    # The interpreter converts float32 to bfloat16 by truncation (a GPU rounds to nearest
    # even), so there the kernel writes float32 and torch rounds; GPUs store bf16 directly.
    store_fp32 = INTERPRET and out_dtype == torch.bfloat16
    y = torch.empty((m, n), dtype=torch.float32 if store_fp32 else out_dtype, device=x2d.device)
    if m == 0 or n == 0:
        return y.to(out_dtype)
    int8 = w_scale is not None
    sparse = meta is not None
    per_token = x_scale is not None and x_scale.numel() != 1
    dummy = y  # stands in for the pointers a configuration does not read
    if x_scale is not None:
        x_scale = x_scale.reshape(-1).contiguous()
    if bias is not None:
        bias = bias.contiguous()
    if int8:
        w_scale = w_scale.contiguous()
    per_token_scale = per_token or (int8 and not quantize_x)
    fp32 = x2d.dtype == torch.float32 and not int8  # IEEE float32 dots: their own tiles
    if split_k > 1:  # partial sums of each K slice, reduced and finished by the second kernel
        out = torch.empty((split_k, m, n), dtype=torch.int32 if int8 else torch.float32, device=x2d.device)
        kernel = _linear_split_k_fp32 if fp32 else _linear_split_k
    elif m <= SMALL_M:
        out, kernel = y, _linear_small_m_fp32 if fp32 else _linear_small_m
    else:
        out, kernel = y, _linear_large_m_fp32 if fp32 else _linear_large_m
    forced = {}
    if config is not None:
        check_tile_config(config, "linear.configs_for", int8=int8)
        kernel, forced = _linear_kernel, config.all_kwargs()
    grid = lambda cfg: (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]), split_k)  # noqa: E731
    kernel[grid](
        x2d, w, meta if sparse else dummy,
        w_scale if int8 else dummy,
        x_scale if x_scale is not None else dummy,
        bias if bias is not None else dummy,
        out,
        m, n, k, _m_bucket(m), split_k,
        x2d.stride(0), x2d.stride(1),
        w.stride(0), w.stride(1),
        meta.stride(0) if sparse else 0, meta.stride(1) if sparse else 0,
        out.stride(-2),
        SPARSE_W=sparse,
        INT8=int8,
        QUANTIZE_X=quantize_x,
        PER_TOKEN_SCALE=per_token_scale,
        HAS_BIAS=bias is not None,
        ACTIVATION=ACTIVATION_CODE[activation],
        DOT_PRECISION="ieee" if x2d.dtype == torch.float32 else "tf32",
        # The interpreter's tl.dot multiplies bfloat16 operands as their raw 16-bit patterns
        # (triton 3.9, runtime/interpreter.py create_dot); a GPU never takes this branch.
        DOT_IN_FP32=INTERPRET and x2d.dtype == torch.bfloat16 and not int8,
        WRITE_PARTIAL=split_k > 1,
        **forced,
    )
    if split_k > 1:
        block_m = min(16, triton.next_power_of_2(m))
        _split_k_reduce_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, _REDUCE_BLOCK_N))](
            out,
            w_scale if int8 else dummy,
            x_scale if x_scale is not None else dummy,
            bias if bias is not None else dummy,
            y,
            m, n, split_k, out.stride(0), y.stride(0),
            INT8=int8,
            PER_TOKEN_SCALE=per_token_scale,
            HAS_BIAS=bias is not None,
            ACTIVATION=ACTIVATION_CODE[activation],
            BLOCK_M=block_m,
            BLOCK_N=_REDUCE_BLOCK_N,
            num_warps=_REDUCE_WARPS,
        )
    return y.to(out_dtype) if store_fp32 else y


def _flatten(x: torch.Tensor) -> torch.Tensor:
    """[..., K] -> [M, K]; a view whenever possible (the kernels take any strides)."""
    return x.reshape(-1, x.shape[-1])


def sparse24_linear(x, values, meta, bias, activation, *, split_k: Optional[int] = None,
                    config: Optional[triton.Config] = None) -> torch.Tensor:
    """``act(x @ W^T + bias)``, W in canonical 2:4 form (docs/KERNELS.md, "Triton linear kernels").

    x [..., K] float16/bfloat16/float32; values [N, K/2] x's dtype; meta uint8 [N, K/8];
    bias [N] or None; returns [..., N] in x's dtype. ``split_k``: None = ``split_k_for``'s
    choice, or a forced number of K slices; ``config``: a ``triton.Config`` run instead of the
    autotuned one.
    """
    n = checks.check_sparse24_linear(x, values, meta, bias, activation)
    y = _launch_gemm(_flatten(x), values, meta, n, out_dtype=x.dtype, bias=bias, activation=activation, split_k=split_k,
                     config=config)
    return y.reshape(*x.shape[:-1], n)


def _int8_gemm(x, w, meta, n, w_scale, bias, x_scale, activation, split_k, config) -> torch.Tensor:
    x2d = _flatten(x)
    if x_scale is None:  # dynamic per-token scales: one fused absmax + quantize pass first
        x_codes, scales = quantize_rows(x2d)
        y = _launch_gemm(x_codes, w, meta, n, out_dtype=x.dtype, bias=bias, activation=activation, w_scale=w_scale,
                         x_scale=scales, split_k=split_k, config=config)
    else:  # given scales: x is quantized tile by tile inside the GEMM, no extra pass
        y = _launch_gemm(x2d, w, meta, n, out_dtype=x.dtype, bias=bias, activation=activation, w_scale=w_scale,
                         x_scale=x_scale, quantize_x=True, split_k=split_k, config=config)
    return y.reshape(*x.shape[:-1], n)


def int8_linear(x, w_q, w_scale, bias, x_scale, activation: str = "none", *, split_k: Optional[int] = None,
                config: Optional[triton.Config] = None) -> torch.Tensor:
    """W8A8 ``act((q(x) @ w_q^T) * s_x * s_w + bias)`` (DESIGN.md int8 contract).

    x [..., K] float16/bfloat16/float32; w_q int8 [N, K]; w_scale [N]; bias [N] or None;
    x_scale None (per-token dynamic), one element (static) or shape x.shape[:-1]; ``split_k``
    and ``config`` as in ``sparse24_linear`` (any split gives the same bits: the int32 sums
    are exact).
    """
    n = checks.check_int8_linear(x, w_q, w_scale, bias, x_scale, activation)
    return _int8_gemm(x, w_q, None, n, w_scale, bias, x_scale, activation, split_k, config)


def sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, activation: str = "none", *,
                         split_k: Optional[int] = None, config: Optional[triton.Config] = None) -> torch.Tensor:
    """int8 GEMM with a 2:4 int8 weight: values_q int8 [N, K/2], meta uint8 [N, K/8]; else as int8_linear."""
    n = checks.check_sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, activation)
    return _int8_gemm(x, values_q, meta, n, w_scale, bias, x_scale, activation, split_k, config)


# --------------------------------------------------------------------------------------------
# Registration with the `triton` backend
# --------------------------------------------------------------------------------------------


def _supports_sparse24_linear(x, values, meta, bias, activation) -> Optional[str]:
    return device_reason(x, values, meta, bias) or _dtype_reason(x)


def _supports_int8_linear(x, w_q, w_scale, bias, x_scale, activation="none") -> Optional[str]:
    return device_reason(x, w_q, w_scale, bias, x_scale) or _dtype_reason(x)


def _supports_sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, activation="none") -> Optional[str]:
    return device_reason(x, values_q, meta, w_scale, bias, x_scale) or _dtype_reason(x)


register_kernel("sparse24_linear", "triton", sparse24_linear, supports=_supports_sparse24_linear)
register_kernel("int8_linear", "triton", int8_linear, supports=_supports_int8_linear)
register_kernel("sparse24_int8_linear", "triton", sparse24_int8_linear, supports=_supports_sparse24_int8_linear)
