"""2:4 compression and decompression on the GPU (``sparsedm::compress24`` / ``decompress24``, backend ``triton``).

Layout: docs/KERNELS.md, section "compress24 and decompress24 kernels", which restates the
canonical form of DESIGN.md "The 2:4 contract":

    w      [N, K]    any dtype, K a multiple of 8, groups of 4 consecutive elements along K
    values [N, K/2]  w's dtype, the two kept elements of each group, ascending index order
    meta   [N, K/8]  uint8, one nibble per group (even group in the low nibble), i0 | i1 << 2, i0 < i1

Each program handles a [BLOCK_R rows, BLOCK_P group pairs] tile; a group pair (8 elements of
w, 4 values, 1 meta byte) is the unit because one meta byte holds two nibbles. Both kernels
also check their input (more than 2 nonzeros in a group; an invalid nibble) and write the
first offending group index of each row of the tile into a flag array, so the launcher can
raise the same readable error as :mod:`sparsedm.formats.sparse24` without a second pass on
the happy path.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from sparsedm.formats import Sparse24FormatError
from sparsedm.formats import compress24 as _compress24_format
from sparsedm.formats import decompress24 as _decompress24_format
from sparsedm.kernels._common import INTERPRET, device_reason, launches_on_first_tensor
from sparsedm.ops import checks
from sparsedm.ops.registry import register_kernel

__all__ = ["compress24", "decompress24"]

_NO_VIOLATION = 2**31 - 1  # flag value of a row block without a bad group


@triton.jit
def _nonzero(x):
    """x != 0 as int32 0/1; -0.0 counts as zero."""
    if x.dtype == tl.bfloat16:
        # The interpreter compares bf16 by its bits (so -0.0 != 0); compare in fp32, exact.
        x = x.to(tl.float32)
    return (x != 0).to(tl.int32)


@triton.jit
def _compress_group(x0, x1, x2, x3):
    """Kept positions of one group of 4 (elementwise over a tile): (v0, v1, nibble, bad).

    Nonzero positions are kept first, in index order, then the lowest-index zero positions,
    so a group with fewer than 2 nonzeros still keeps exactly two (an all-zero group keeps 0
    and 1). ``bad`` marks groups with more than 2 nonzeros. NaN != 0, so NaN counts as
    nonzero, as in sparsedm.formats.
    """
    nz0 = _nonzero(x0)
    nz1 = _nonzero(x1)
    nz2 = _nonzero(x2)
    nz3 = _nonzero(x3)
    count = nz0 + nz1 + nz2 + nz3
    # Rank of each position in the order "nonzeros by index, then zeros by index":
    # position p precedes q when it is nonzero and q is zero, or both agree and p < q.
    # Kept = rank < 2. Position 0 precedes every position of its kind; count the others.
    rank0 = (1 - nz0) * count
    rank1 = nz1 * nz0 + (1 - nz1) * (count + (1 - nz0))
    rank2 = nz2 * (nz0 + nz1) + (1 - nz2) * (count + (1 - nz0) + (1 - nz1))
    rank3 = nz3 * (nz0 + nz1 + nz2) + (1 - nz3) * (count + (1 - nz0) + (1 - nz1) + (1 - nz2))
    keep0 = rank0 < 2
    keep1 = rank1 < 2
    keep2 = rank2 < 2
    # i0 is the lowest kept position, i1 the highest (exactly two are kept).
    i0 = tl.where(keep0, 0, tl.where(keep1, 1, 2))
    i1 = tl.where(rank3 < 2, 3, tl.where(keep2, 2, 1))
    v0 = tl.where(i0 == 0, x0, tl.where(i0 == 1, x1, x2))
    v1 = tl.where(i1 == 3, x3, tl.where(i1 == 2, x2, x1))
    return v0, v1, i0 | (i1 << 2), count > 2


@triton.jit
def _compress24_kernel(
    w_ptr,       # w: [N, K], any dtype, strides (stride_wr, stride_wk)
    values_ptr,  # values: [N, K/2], w's dtype, contiguous
    meta_ptr,    # meta: uint8 [N, K/8], contiguous
    flag_ptr,    # flags: int32 [N, cdiv(K/8, BLOCK_P)]: first bad group of the row in this block, or INT32_MAX
    N, PAIRS,    # PAIRS = K / 8
    stride_wr, stride_wk,
    BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_p = tl.program_id(1)
    row = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    pair = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    ok = (row < N)[:, None] & (pair < PAIRS)[None, :]
    row64 = row.to(tl.int64)[:, None]
    src = w_ptr + row64 * stride_wr + (pair * 8)[None, :].to(tl.int64) * stride_wk
    e0 = tl.load(src, mask=ok, other=0)
    e1 = tl.load(src + stride_wk, mask=ok, other=0)
    e2 = tl.load(src + 2 * stride_wk, mask=ok, other=0)
    e3 = tl.load(src + 3 * stride_wk, mask=ok, other=0)
    o0 = tl.load(src + 4 * stride_wk, mask=ok, other=0)
    o1 = tl.load(src + 5 * stride_wk, mask=ok, other=0)
    o2 = tl.load(src + 6 * stride_wk, mask=ok, other=0)
    o3 = tl.load(src + 7 * stride_wk, mask=ok, other=0)
    ev0, ev1, e_nib, e_bad = _compress_group(e0, e1, e2, e3)
    ov0, ov1, o_nib, o_bad = _compress_group(o0, o1, o2, o3)

    dst = values_ptr + row64 * (PAIRS * 4) + (pair * 4)[None, :]
    tl.store(dst + 0, ev0, mask=ok)
    tl.store(dst + 1, ev1, mask=ok)
    tl.store(dst + 2, ov0, mask=ok)
    tl.store(dst + 3, ov1, mask=ok)
    tl.store(meta_ptr + row64 * PAIRS + pair[None, :], (e_nib | (o_nib << 4)).to(tl.uint8), mask=ok)

    # First bad group of each row within this block (group index = 2 * pair + odd).
    group = 2 * pair[None, :]
    first_bad = tl.where(e_bad & ok, group, tl.where(o_bad & ok, group + 1, 2147483647))
    tl.store(flag_ptr + row * tl.num_programs(1) + pid_p, tl.min(first_bad, axis=1), mask=row < N)


@triton.jit
def _decompress24_kernel(
    values_ptr,  # values: [N, K/2], any dtype, strides (stride_vr, stride_vk)
    meta_ptr,    # meta: uint8 [N, K/8], strides (stride_mr, stride_mk)
    w_ptr,       # w: [N, K], values' dtype, contiguous
    flag_ptr,    # flags: int32 [N, cdiv(K/8, BLOCK_P)]: first group with i0 >= i1, or INT32_MAX
    N, PAIRS,
    stride_vr, stride_vk, stride_mr, stride_mk,
    BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_p = tl.program_id(1)
    row = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    pair = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    ok = (row < N)[:, None] & (pair < PAIRS)[None, :]
    row64 = row.to(tl.int64)[:, None]
    byte = tl.load(meta_ptr + row64 * stride_mr + pair[None, :] * stride_mk, mask=ok, other=0).to(tl.int32)
    src = values_ptr + row64 * stride_vr + (pair * 4)[None, :].to(tl.int64) * stride_vk
    dst = w_ptr + row64 * (PAIRS * 8) + (pair * 8)[None, :]
    group = 2 * pair[None, :]
    first_bad = tl.full((BLOCK_R, BLOCK_P), 2147483647, tl.int32)
    for half in tl.static_range(2):  # even group: low nibble, values 0-1; odd: high nibble, values 2-3
        nibble = (byte >> (4 * half)) & 0xF
        i0 = nibble & 0x3
        i1 = nibble >> 2
        v0 = tl.load(src + (2 * half) * stride_vk, mask=ok, other=0)
        v1 = tl.load(src + (2 * half + 1) * stride_vk, mask=ok, other=0)
        zero = tl.zeros_like(v0)
        for p in tl.static_range(4):
            tl.store(dst + 4 * half + p, tl.where(i0 == p, v0, tl.where(i1 == p, v1, zero)), mask=ok)
        first_bad = tl.minimum(first_bad, tl.where(ok & (i0 >= i1), group + half, 2147483647))
    tl.store(flag_ptr + row * tl.num_programs(1) + pid_p, tl.min(first_bad, axis=1), mask=row < N)


# Tile sizes: a memory-bound elementwise pass. 32 rows x 32 pairs = 256 elements per row
# segment, 8192 elements per program; PROVISIONAL (not measured on a GPU yet).
_BLOCK_R, _BLOCK_P, _NUM_WARPS = (8, 8, 1) if INTERPRET else (32, 32, 4)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8)


def _supports_compress(w) -> Optional[str]:
    reason = device_reason(w)
    if reason is None and w.dtype not in _DTYPES:
        reason = f"the Triton compress24 handles {', '.join(str(d) for d in _DTYPES)}, not {w.dtype}"
    return reason


def _supports_decompress(values, meta) -> Optional[str]:
    reason = device_reason(values, meta)
    if reason is None and values.dtype not in _DTYPES:
        reason = f"the Triton decompress24 handles {', '.join(str(d) for d in _DTYPES)}, not {values.dtype}"
    return reason


def _flag_grid(n: int, pairs: int, device) -> tuple[torch.Tensor, tuple[int, int]]:
    grid = (triton.cdiv(n, _BLOCK_R), triton.cdiv(pairs, _BLOCK_P))
    return torch.empty((n, grid[1]), dtype=torch.int32, device=device), grid


@launches_on_first_tensor
def compress24(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2:4-sparse ``w [N, K]`` (any strides) -> canonical ``(values [N, K/2], meta uint8 [N, K/8])``.

    Raises :class:`sparsedm.formats.Sparse24FormatError` naming the first row and group with
    more than 2 nonzeros, or when K is not a multiple of 8.
    """
    if w.dim() != 2:
        raise checks.OpArgumentError(
            f"compress24: the op takes a 2-D weight [N, K], got shape {tuple(w.shape)}; "
            f"use sparsedm.formats.compress24 for conv weights (KRSC view)"
        )
    reason = _supports_compress(w)
    if reason is not None:
        raise checks.OpArgumentError(f"compress24 (triton): {reason}")
    n, k = w.shape
    if k % 8 != 0:
        _compress24_format(w)  # raises the format's readable K error
    values = torch.empty((n, k // 2), dtype=w.dtype, device=w.device)
    meta = torch.empty((n, k // 8), dtype=torch.uint8, device=w.device)
    if n == 0 or k == 0:
        return values, meta
    flags, grid = _flag_grid(n, k // 8, w.device)
    _compress24_kernel[grid](
        w, values, meta, flags, n, k // 8, w.stride(0), w.stride(1),
        BLOCK_R=_BLOCK_R, BLOCK_P=_BLOCK_P, num_warps=_NUM_WARPS,
    )
    if bool((flags != _NO_VIOLATION).any()):
        # The kernel found a group with > 2 nonzeros; the format's checker words the error
        # (first offending row and group, its nonzero count).
        _compress24_format(w)
        row = int((flags != _NO_VIOLATION).any(1).nonzero()[0])
        raise Sparse24FormatError(
            f"compress24: weight is not 2:4 sparse: row {row}, group {int(flags[row].min())} has more than 2 nonzeros; "
            f"apply sparsedm.formats.mask24 (or prune) first"
        )
    return values, meta


@launches_on_first_tensor
def decompress24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Canonical ``(values [N, K/2], meta uint8 [N, K/8])`` (any strides) -> dense ``[N, K]``."""
    n, k = checks.check_compressed_pair("decompress24", values, meta)
    reason = _supports_decompress(values, meta)
    if reason is not None:
        raise checks.OpArgumentError(f"decompress24 (triton): {reason}")
    w = torch.empty((n, k), dtype=values.dtype, device=values.device)
    if n == 0 or k == 0:
        return w
    flags, grid = _flag_grid(n, k // 8, values.device)
    _decompress24_kernel[grid](
        values, meta, w, flags, n, k // 8, *values.stride(), *meta.stride(),
        BLOCK_R=_BLOCK_R, BLOCK_P=_BLOCK_P, num_warps=_NUM_WARPS,
    )
    if bool((flags != _NO_VIOLATION).any()):
        _decompress24_format(values, meta)  # raises the format's readable meta error
        row = int((flags != _NO_VIOLATION).any(1).nonzero()[0])
        raise Sparse24FormatError(f"decompress24: invalid meta at row {row}, group {int(flags[row].min())}: i0 >= i1")
    return w


register_kernel("compress24", "triton", compress24, supports=_supports_compress)
register_kernel("decompress24", "triton", decompress24, supports=_supports_decompress)
