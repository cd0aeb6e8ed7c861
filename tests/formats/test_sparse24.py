"""The canonical 2:4 format: mask rule, compression layout, roundtrip and errors."""

import pytest
import torch

from sparsedm.formats import (
    Sparse24FormatError,
    compress24,
    decompress24,
    gemm_view,
    is_24_sparse,
    mask24,
)


def _masked(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g).to(dtype)
    return w * mask24(w)


def _mask_loop(w2d):
    """Element-by-element statement of the DESIGN rule, for comparison with mask24."""
    out = torch.zeros_like(w2d, dtype=torch.bool)
    for r in range(w2d.shape[0]):
        for g in range(w2d.shape[1] // 4):
            mags = [abs(float(w2d[r, 4 * g + i])) for i in range(4)]
            order = sorted(range(4), key=lambda i: (-mags[i], i))
            for i in order[:2]:
                out[r, 4 * g + i] = True
    return out


@pytest.mark.parametrize("shape", [(1, 8), (5, 16), (7, 40)])
def test_mask24_matches_rule(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mask24(w), _mask_loop(w))


def test_mask24_ties_go_to_lower_index():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, -2.0, 2.0, 2.0, 1.0, 3.0, 0.5, -3.0, 3.0]])
    expected = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(mask24(w), expected)


def test_mask24_keeps_exactly_two_per_group_random():
    w = torch.randn(13, 64, generator=torch.Generator().manual_seed(2))
    m = mask24(w)
    assert torch.equal(m.reshape(13, 16, 4).sum(-1), torch.full((13, 16), 2))


def test_mask24_conv_groups_along_cin_in_krsc():
    w = torch.randn(6, 8, 3, 3, generator=torch.Generator().manual_seed(3))
    m = mask24(w)
    assert m.shape == w.shape
    # In the KRSC view, every group of 4 consecutive cin holds exactly 2 kept entries.
    krsc = m.permute(0, 2, 3, 1)
    assert torch.equal(krsc.reshape(6, 3, 3, 2, 4).sum(-1), torch.full((6, 3, 3, 2), 2))
    assert torch.equal(gemm_view(m), _mask_loop(gemm_view(w)))


def test_mask24_rejects_bad_k():
    with pytest.raises(Sparse24FormatError, match="K=6 is not a multiple of 4"):
        mask24(torch.randn(2, 6))
    with pytest.raises(Sparse24FormatError, match="2-D linear weight"):
        mask24(torch.randn(2, 4, 4))


def test_is_24_sparse():
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(4))
    assert not is_24_sparse(w)
    assert is_24_sparse(w * mask24(w))
    assert not is_24_sparse(torch.zeros(2, 6))  # K not a multiple of 4


def test_canonical_layout_hand_example():
    # One row, K = 16: four groups -> 2 meta bytes, 8 values.
    row = torch.tensor([[0.0, 5.0, 0.0, 7.0,    # kept 1, 3  -> nibble 1 | 3<<2 = 0xD
                         2.0, 0.0, 0.0, 0.0,    # one nonzero at 0, completed by 1 -> 0x4
                         0.0, 0.0, 0.0, 0.0,    # all zero keeps 0, 1 -> 0x4
                         0.0, 0.0, -1.0, 3.0]])  # kept 2, 3 -> 2 | 3<<2 = 0xE
    values, meta = compress24(row)
    assert values.tolist() == [[5.0, 7.0, 2.0, 0.0, 0.0, 0.0, -1.0, 3.0]]
    assert meta.dtype == torch.uint8
    assert meta.tolist() == [[0x4D, 0xE4]]  # even group in the low nibble
    assert torch.equal(decompress24(values, meta), row)


def test_zero_group_completion_rule():
    row = torch.tensor([[0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 4.0]])
    values, meta = compress24(row)
    # group 0: nonzero at 2, completed by lowest zero 0 -> (0, 2); group 1: (0, 3)
    assert values.tolist() == [[0.0, 9.0, 0.0, 4.0]]
    assert meta.tolist() == [[(0 | 2 << 2) | ((0 | 3 << 2) << 4)]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1, 8), (3, 24), (17, 64), (118, 40)])
def test_roundtrip_exact(dtype, shape):
    w = _masked(shape, dtype, seed=shape[0])
    values, meta = compress24(w)
    assert values.shape == (shape[0], shape[1] // 2) and values.dtype == dtype
    assert meta.shape == (shape[0], shape[1] // 8)
    assert torch.equal(decompress24(values, meta), w)


@pytest.mark.parametrize("shape", [(8, 8, 3, 3), (16, 8, 1, 1), (4, 16, 2, 3)])
def test_roundtrip_conv_krsc(shape):
    w = _masked(shape, seed=5)
    values, meta = compress24(w)
    cout, cin, kh, kw = shape
    assert values.shape == (cout, kh * kw * cin // 2)
    assert torch.equal(values, compress24(gemm_view(w))[0])
    assert torch.equal(decompress24(values, meta, shape=shape), w)


def test_compress_rejects_dense_naming_row_and_group():
    w = _masked((4, 16), seed=6)
    w[2, 8:12] = torch.tensor([0.0, 1.0, 1.0, 1.0])  # group 2 of row 2 gets 3 nonzeros
    with pytest.raises(Sparse24FormatError, match=r"row 2, group 2 .* has 3 nonzeros"):
        compress24(w)


def test_compress_rejects_k_not_multiple_of_8():
    with pytest.raises(Sparse24FormatError, match="K=12 is not a multiple of 8"):
        compress24(torch.zeros(3, 12))


def test_decompress_rejects_bad_inputs():
    values, meta = compress24(_masked((2, 16)))
    with pytest.raises(Sparse24FormatError, match="must be uint8"):
        decompress24(values, meta.to(torch.int16))
    with pytest.raises(Sparse24FormatError, match="do not match"):
        decompress24(values, meta[:, :1])
    bad = meta.clone()
    bad[1, 0] = 0x00  # i0 == i1 == 0 is not canonical
    with pytest.raises(Sparse24FormatError, match="invalid meta at row 1, group 0"):
        decompress24(values, bad)
    with pytest.raises(Sparse24FormatError, match="does not fit conv weight shape"):
        decompress24(values, meta, shape=(2, 3, 2, 2))
