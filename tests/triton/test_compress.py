"""compress24 / decompress24 on the triton backend: bit-exact against the reference format code."""

import pytest
import torch

from sparsedm import ops
from sparsedm.formats import Sparse24FormatError
from sparsedm.formats import compress24 as format_compress24
from sparsedm.formats import decompress24 as format_decompress24
from tests.helpers import randn, sparse_weight

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8]


def _weight(n, k, dtype, seed):
    """A random 2:4 weight with groups of 2, 1 and 0 nonzeros (all-zero groups included)."""
    w, _, _ = sparse_weight((n, k), torch.float32, seed=seed)
    g = w.reshape(n, k // 4, 4)
    pick = torch.rand(n, k // 4, generator=torch.Generator().manual_seed(seed + 1))
    one = pick < 0.25  # keep only the first nonzero of the group
    first = (g != 0).float().argmax(-1, keepdim=True)
    only_first = torch.zeros_like(g).scatter_(-1, first, g.gather(-1, first))
    g = torch.where(one[..., None], only_first, g)
    g[pick > 0.85] = 0  # all-zero groups
    g[0, 0] = 0  # always at least one all-zero group
    g[-1, -1] = torch.tensor([0.0, 0.0, 0.0, 1.5])  # one nonzero at the last position: keeps 0 and 3
    w = g.reshape(n, k)
    if dtype == torch.int8:
        return (w * 40).round().clamp(-127, 127).to(torch.int8).to(DEVICE)
    return w.to(dtype).to(DEVICE)


def _bump(key):
    return ops.dispatch_counts[key]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(8, 16), (24, 40), (5, 72), (33, 136)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_compress_matches_reference(shape, dtype):
    w = _weight(*shape, dtype, seed=shape[0] + shape[1])
    before = _bump(("compress24", "triton"))
    values, meta = ops.compress24(w, backend="triton")
    assert _bump(("compress24", "triton")) == before + 1
    ref_values, ref_meta = ops.compress24(w, backend="reference")
    assert values.dtype == w.dtype and meta.dtype == torch.uint8
    assert torch.equal(meta, ref_meta), f"meta differs at {(meta != ref_meta).nonzero()[:5].tolist()}"
    assert torch.equal(values, ref_values), f"values differ at {(values != ref_values).nonzero()[:5].tolist()}"

    before = _bump(("decompress24", "triton"))
    dense = ops.decompress24(values, meta, backend="triton")
    assert _bump(("decompress24", "triton")) == before + 1
    assert torch.equal(dense, w), "decompress24(compress24(w)) != w"


def test_compress_sparse_group_patterns():
    """Every 2:4 pattern of a group, with 0, 1 and 2 nonzeros, in one weight."""
    patterns = [[a, b, c, d] for a in (0, 1) for b in (0, 1) for c in (0, 1) for d in (0, 1) if a + b + c + d <= 2]
    rows = torch.tensor(patterns + patterns[:1], dtype=torch.float32)  # 12 groups: K = 48
    w = (rows * randn(12, 4, seed=3).abs().add(0.5)).reshape(1, 48).repeat(3, 1).to(DEVICE)
    values, meta = ops.compress24(w, backend="triton")
    ref_values, ref_meta = format_compress24(w)
    assert torch.equal(meta, ref_meta) and torch.equal(values, ref_values)
    assert int(meta[0, 0]) & 0xF == (0 | 1 << 2), "an all-zero group keeps positions 0 and 1"


def test_compress_strided_input():
    w = _weight(16, 48, torch.float16, seed=4)
    strided = w.t().contiguous().t()  # column-major [N, K]
    assert not strided.is_contiguous()
    values, meta = ops.compress24(strided, backend="triton")
    ref_values, ref_meta = format_compress24(w)
    assert torch.equal(values, ref_values) and torch.equal(meta, ref_meta)


def test_compress_rejects_non_24_weight():
    w = _weight(12, 40, torch.float32, seed=5)
    w[7, 20:24] = torch.tensor([1.0, 2.0, 0.0, 3.0], device=DEVICE)  # row 7, group 5: 3 nonzeros
    w[9, 0:4] = 1.0  # a later row stays unreported
    with pytest.raises(Sparse24FormatError) as got:
        ops.compress24(w, backend="triton")
    with pytest.raises(Sparse24FormatError) as want:
        format_compress24(w)
    assert str(got.value) == str(want.value)
    assert "row 7, group 5" in str(got.value) and "3 nonzeros" in str(got.value)


def test_compress_rejects_k_not_multiple_of_8():
    w = torch.zeros(4, 12, device=DEVICE)
    with pytest.raises(Sparse24FormatError, match="K=12 is not a multiple of 8"):
        ops.compress24(w, backend="triton")


def test_compress_rejects_4d():
    with pytest.raises(ops.OpArgumentError, match="2-D weight"):
        ops.compress24(torch.zeros(8, 8, 1, 1, device=DEVICE), backend="triton")


def test_decompress_strided_inputs():
    w = _weight(10, 64, torch.bfloat16, seed=6)
    values, meta = format_compress24(w)
    values_cm, meta_cm = values.t().contiguous().t(), meta.t().contiguous().t()
    assert not values_cm.is_contiguous() and not meta_cm.is_contiguous()
    assert torch.equal(ops.decompress24(values_cm, meta_cm, backend="triton"), w)


def test_decompress_rejects_invalid_meta():
    w = _weight(6, 32, torch.float32, seed=7)
    values, meta = format_compress24(w)
    meta = meta.clone()
    meta[4, 2] = (meta[4, 2] & 0x0F) | (((2 | 1 << 2) << 4) & 0xF0)  # row 4, group 5: i0=2 > i1=1
    with pytest.raises(Sparse24FormatError) as got:
        ops.decompress24(values, meta, backend="triton")
    with pytest.raises(Sparse24FormatError) as want:
        format_decompress24(values, meta)
    assert str(got.value) == str(want.value) and "row 4, group 5" in str(got.value)


def test_compress_opcheck():
    w = _weight(8, 32, torch.float32, seed=8)
    with ops.use_backend("triton"):
        torch.library.opcheck(torch.ops.sparsedm.compress24.default, (w,))
        values, meta = format_compress24(w)
        torch.library.opcheck(torch.ops.sparsedm.decompress24.default, (values, meta))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_compress_large_gpu(dtype):
    # A DDPM CIFAR10 UNet 3x3 conv weight in its GEMM view: [256, 3*3*256].
    w = _weight(256, 2304, dtype, seed=9)
    values, meta = ops.compress24(w, backend="triton")
    ref_values, ref_meta = format_compress24(w)
    assert torch.equal(values, ref_values) and torch.equal(meta, ref_meta)
    assert torch.equal(ops.decompress24(values, meta, backend="triton"), w)
