"""Property tests: compression is exact and canonical for any 2:4 weight."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsedm.formats import compress24, decompress24, is_24_sparse, mask24


@st.composite
def sparse_weights(draw):
    n = draw(st.integers(1, 6))
    k = 8 * draw(st.integers(1, 4))
    # Small integers make ties and zeros frequent, which is where the rules matter.
    flat = draw(st.lists(st.integers(-3, 3), min_size=n * k, max_size=n * k))
    w = torch.tensor(flat, dtype=torch.float32).reshape(n, k)
    return w * mask24(w)


@settings(max_examples=150, deadline=None)
@given(sparse_weights())
def test_roundtrip_and_canonical_meta(w):
    assert is_24_sparse(w)
    values, meta = compress24(w)
    assert torch.equal(decompress24(values, meta), w)
    nibbles = torch.stack((meta & 0xF, meta >> 4), -1).reshape(w.shape[0], -1).to(torch.int64)
    i0, i1 = nibbles & 3, nibbles >> 2
    assert bool((i0 < i1).all())
    # Kept positions cover every nonzero; extra positions are the lowest zeros.
    groups = w.reshape(w.shape[0], -1, 4)
    for r in range(groups.shape[0]):
        for g in range(groups.shape[1]):
            nz = [i for i in range(4) if groups[r, g, i] != 0]
            expected = sorted(nz + [i for i in range(4) if i not in nz][: 2 - len(nz)])
            assert [int(i0[r, g]), int(i1[r, g])] == expected
