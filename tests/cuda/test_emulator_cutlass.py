"""Cross-check of the mma.sp emulator and the kernels' metadata map against CUTLASS.

torch's CUTLASS converter (torch/sparse/_semi_structured_conversions.py, CPU-runnable) makes
the metadata that CUTLASS's sm80 sparse GEMMs consume on real GPUs. Its interleaved storage is
undone with the converter's own documented scatter map, giving CUTLASS's metadata elements
(int16 = 4 groups of one row for f16/bf16; int32 = 8 groups for int8). Those elements and
CUTLASS's compressed values are pushed through the kernels' lane functions into the emulator
(tests/cpp/emulator_capi.cpp -> mma_layout.cuh + mma_emulator.h) and must give the dense
product; and sparsedm's canonical (values, meta) must equal CUTLASS's element for element.
"""

import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from sparsedm.formats import compress24

conv = pytest.importorskip("torch.sparse._semi_structured_conversions")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    lib = tmp_path_factory.mktemp("emu") / "libsparsedm_emu.so"
    subprocess.run(
        [cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-I", f"{ROOT}/kernels/cuda", "-I", f"{ROOT}/tests/cpp",
         f"{ROOT}/tests/cpp/emulator_capi.cpp", "-o", str(lib)],
        check=True,
    )
    return ctypes.CDLL(str(lib))


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
