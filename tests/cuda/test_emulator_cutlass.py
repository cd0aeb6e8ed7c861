"""Cross-check of the mma.sp emulator and the kernels' metadata map against CUTLASS.

torch's CUTLASS converter (torch/sparse/_semi_structured_conversions.py, CPU-runnable) makes
the metadata that CUTLASS's sm80 sparse GEMMs consume on real GPUs. Two checks:

* Encoding: the interleaved storage is undone with the converter's own documented scatter map,
  giving CUTLASS's metadata elements (int16 = 4 groups of one row for f16/bf16; int32 = 8
  groups for int8). Those elements and CUTLASS's compressed values are pushed through the
  kernels' lane functions into the emulator (tests/cpp/emulator_capi.cpp -> mma_layout.cuh +
  mma_emulator.h) and must give the dense product; sparsedm's canonical (values, meta) must
  equal CUTLASS's element for element.
* Thread map: the STORED (reordered, ColumnMajorInterleaved<2>) buffer is read the way
  CUTLASS's warp-level metadata iterator reads it (cutlass/gemm/warp/
  mma_tensor_op_tile_iterator_sparse.h: one ldmatrix over the column-major view with twice the
  rows; lane L gets 32 bits at position L: one int32 for int8, two int16 for f16) and handed
  to the emulator as the per-lane metadata registers, bypassing sparsedm's lane functions; for
  f16 the register serves two 16-row tiles with selector 0 and 1 (mma_sparse_tensor_op.h,
  id2 = m % kMaxID2). The emulator must give the dense product, and the kernel's own
  metadata registers must equal CUTLASS's lane for lane. This pins the metadata thread map
  (which lane, which bits, which rows / k) to a layout that runs on real GPUs.
"""

import ctypes

import numpy as np
import pytest
import torch

from sparsedm.formats import compress24

conv = pytest.importorskip("torch.sparse._semi_structured_conversions")


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.c_void_p)


def _random_24(n, k, dtype, lim, gen):
    """Dense [n, k] with exactly 2 nonzero (integer) values in every group of 4 along k."""
    vals = torch.randint(1, lim + 1, (n, k), generator=gen) * (torch.randint(0, 2, (n, k), generator=gen) * 2 - 1)
    keep = torch.rand(n, k // 4, 4, generator=gen).argsort(-1)[..., :2]
    mask = torch.zeros(n, k // 4, 4, dtype=torch.bool).scatter_(-1, keep, True).reshape(n, k)
    return (vals * mask).to(dtype)


def _cutlass_logical_meta(dense):
    sparse, meta_reordered = conv.sparse_semi_structured_from_dense_cutlass(dense)
    m, ncols = meta_reordered.shape
    offsets = conv._calculate_meta_reordering_scatter_offsets(m, ncols, meta_reordered.dtype, dense.device)
    return sparse, meta_reordered.view(-1)[offsets].view(m, ncols)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sp16_cutlass_metadata_through_kernel_lane_map(emu, dtype):
    gen = torch.Generator().manual_seed(0)
    n, k = 32, 64  # the converter wants 32-row multiples
    dense = _random_24(n, k, dtype, 8, gen)
    sparse, meta = _cutlass_logical_meta(dense)
    assert meta.dtype == torch.int16 and meta.shape == (n, k // 16)
    b = torch.randint(-8, 9, (k, 8), generator=gen).double()
    want = dense.double() @ b
    got = np.zeros((n, 8))
    for r0 in range(0, n, 16):
        for kt in range(k // 32):
            vals = np.ascontiguousarray(sparse[r0 : r0 + 16, 16 * kt : 16 * kt + 16].double().numpy())
            m16 = np.ascontiguousarray(meta[r0 : r0 + 16, 2 * kt : 2 * kt + 2].numpy().view(np.uint16))
            bt = np.ascontiguousarray(b[32 * kt : 32 * kt + 32].numpy())
            d = np.zeros((16, 8))
            emu.sparsedm_emu_sp16_tile(_ptr(vals), _ptr(m16), _ptr(bt), _ptr(d))
            got[r0 : r0 + 16] += d
    np.testing.assert_array_equal(got, want.numpy())
    # sparsedm's canonical form is CUTLASS's logical form, byte for byte.
    values, cmeta = compress24(dense)
    assert torch.equal(values, sparse)
    assert torch.equal(cmeta.contiguous().view(torch.int16), meta)


def test_sp16_wrong_metadata_is_detected(emu):
    gen = torch.Generator().manual_seed(1)
    dense = _random_24(32, 32, torch.float16, 8, gen)
    sparse, meta = _cutlass_logical_meta(dense)
    b = np.ascontiguousarray(torch.randint(-8, 9, (32, 8), generator=gen).double().numpy())
    vals = np.ascontiguousarray(sparse[:16].double().numpy())
    m16 = np.ascontiguousarray(meta[:16].numpy().view(np.uint16)[:, ::-1])  # halves swapped
    d = np.zeros((16, 8))
    emu.sparsedm_emu_sp16_tile(_ptr(vals), _ptr(m16), _ptr(b), _ptr(d))
    assert not np.array_equal(d, dense[:16].double().numpy() @ b)


def test_sp8_cutlass_metadata_encoding(emu):
    gen = torch.Generator().manual_seed(2)
    n, k = 16, 64
    dense = _random_24(n, k, torch.int8, 127, gen)
    sparse, meta = _cutlass_logical_meta(dense)
    assert meta.dtype == torch.int32 and meta.shape == (n, k // 32)
    b = torch.randint(-127, 128, (k, 8), generator=gen, dtype=torch.int8)
    d = np.zeros((16, 8), dtype=np.int32)
    emu.sparsedm_emu_sp8_tile(
        _ptr(np.ascontiguousarray(sparse.numpy())), _ptr(np.ascontiguousarray(meta.numpy().view(np.uint32))),
        _ptr(np.ascontiguousarray(b.numpy())), _ptr(d),
    )
    np.testing.assert_array_equal(d, (dense.long() @ b.long()).numpy())
    values, cmeta = compress24(dense)
    assert torch.equal(values, sparse)
    assert torch.equal(cmeta.contiguous().view(torch.int32), meta)


def _stored_meta(dense):
    """CUTLASS's compressed values and its stored (reordered, interleaved) metadata, flat."""
    sparse, meta_reordered = conv.sparse_semi_structured_from_dense_cutlass(dense)
    return sparse, meta_reordered.contiguous().view(-1)


def _kernel_meta_registers(emu, family, dense, k_step):
    _, cmeta = compress24(dense)
    n, k = dense.shape
    out = np.zeros((k // k_step, n // 16, 32), dtype=np.uint32)
    rc = emu.sparsedm_kernel_meta_registers(
        family, _ptr(np.ascontiguousarray(cmeta.numpy())), ctypes.c_int(n), ctypes.c_int(k), _ptr(out))
    assert rc == 0
    return out


def test_sp8_cutlass_thread_map(emu):
    """int8 m16n8k64: lane L of a 16-row tile gets int32 #L of its k-step's interleaved column."""
    gen = torch.Generator().manual_seed(3)
    n, k = 32, 256  # 2 row tiles, 4 k-steps of 64 (2 kernel stages)
    dense = _random_24(n, k, torch.int8, 127, gen)
    sparse, flat = _stored_meta(dense)
    assert flat.dtype == torch.int32
    flat = flat.numpy().view(np.uint32)
    b = torch.randint(-127, 128, (k, 8), generator=gen, dtype=torch.int8)
    kern = _kernel_meta_registers(emu, 1, dense, 64)
    got = np.zeros((n, 8), dtype=np.int64)
    for mt in range(n // 16):
        for p in range(k // 64):
            # Column pair p of the interleaved storage = logical int32 columns 2p, 2p+1 = k 64p..64p+63.
            e = np.ascontiguousarray(flat[p * 2 * n + 32 * mt : p * 2 * n + 32 * mt + 32])
            d = np.zeros((16, 8), dtype=np.int32)
            emu.sparsedm_emu_sp8_tile_regs(
                _ptr(np.ascontiguousarray(sparse[16 * mt : 16 * mt + 16, 32 * p : 32 * p + 32].numpy())), _ptr(e),
                _ptr(np.ascontiguousarray(b[64 * p : 64 * p + 64].numpy())), _ptr(d))
            got[16 * mt : 16 * mt + 16] += d
            np.testing.assert_array_equal(kern[p, mt], e, err_msg=f"kernel metadata registers, tile {mt}, k-step {p}")
    np.testing.assert_array_equal(got, (dense.long() @ b.long()).numpy())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sp16_cutlass_thread_map(emu, dtype):
    """f16/bf16 m16n8k32: lane L of a 32-row block gets int16 #2L, #2L+1 of its k-step's column;
    selector 0 (lanes t < 2) serves rows 0-15, selector 1 (lanes t >= 2) rows 16-31."""
    gen = torch.Generator().manual_seed(4)
    n, k = 64, 128  # 2 blocks of 32 rows, 4 k-steps of 32 (2 kernel stages)
    dense = _random_24(n, k, dtype, 8, gen)
    sparse, flat = _stored_meta(dense)
    assert flat.dtype == torch.int16
    flat = flat.numpy().view(np.uint16).astype(np.uint32)
    b = torch.randint(-8, 9, (k, 8), generator=gen).double()
    kern = _kernel_meta_registers(emu, 0, dense, 32)
    got = np.zeros((n, 8))
    for w in range(n // 32):
        for p in range(k // 32):
            base = p * 2 * n + 64 * w
            e = np.ascontiguousarray(flat[base : base + 64 : 2] | (flat[base + 1 : base + 64 : 2] << 16))
            for sel in range(2):
                mt = 2 * w + sel
                vals = np.ascontiguousarray(sparse[16 * mt : 16 * mt + 16, 16 * p : 16 * p + 16].double().numpy())
                d = np.zeros((16, 8))
                emu.sparsedm_emu_sp16_tile_regs(
                    _ptr(vals), _ptr(e), ctypes.c_int(sel), _ptr(np.ascontiguousarray(b[32 * p : 32 * p + 32].numpy())),
                    _ptr(d))
                got[16 * mt : 16 * mt + 16] += d
                # The kernel uses selector 0 for every tile: its lanes t in {0, 1} must hold what
                # CUTLASS's lanes 2*sel + t hold (lanes t >= 2 are ignored by the hardware).
                lanes = np.arange(32)
                used = lanes[(lanes & 3) < 2]
                np.testing.assert_array_equal(kern[p, mt, used], e[(used & ~3) | (2 * sel + (used & 1))],
                                              err_msg=f"kernel metadata registers, tile {mt}, k-step {p}")
    np.testing.assert_array_equal(got, dense.double().numpy() @ b.numpy())
