"""The CUDA 2:4 conv's data path, emulated on the host, against ``F.conv2d``.

tests/cpp/test_conv_gather.cpp checks the emulated kernel (gather, cp.async zero-fill,
swizzled shared memory, ldmatrix, mma.sp, accumulator map) against a direct convolution
written in the same file; here the same emulation (tests/cpp/conv_emulation.h through
emulator_capi.cpp) is compared with torch's own convolution, so the output-size formula and
the padding, stride and dilation semantics come from an independent implementation. Integer
data: every product and sum is exact in fp16 x fp16 -> fp32, so the results must be equal.
"""

import ctypes

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsedm.formats import mask24

# (N, C, H, W, Cout, kh, kw, stride, padding, dilation): 3x3 stride 1 and 2, padding 1 and 2,
# dilation 2, odd H/W, 1x1, a non-square kernel with per-axis stride/padding, C = 8 and 24
# (taps straddling K stages), and an output past the last full token tile.
CASES = [
    (2, 16, 7, 5, 32, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 8, 9, 7, 16, 3, 3, (2, 2), (1, 1), (1, 1)),
    (1, 24, 6, 7, 32, 3, 3, (1, 1), (2, 2), (2, 2)),
    (1, 64, 9, 9, 16, 3, 3, (2, 2), (1, 1), (2, 2)),
    (3, 64, 5, 3, 32, 1, 1, (1, 1), (0, 0), (1, 1)),
    (2, 40, 5, 9, 16, 1, 3, (1, 2), (0, 1), (1, 1)),
    (1, 8, 3, 11, 16, 5, 5, (1, 1), (2, 2), (1, 1)),
    (1, 32, 13, 13, 48, 3, 3, (2, 2), (1, 1), (1, 1)),
]


def _ints(shape, lo, hi, gen):
    return torch.randint(lo, hi + 1, shape, generator=gen).double()


@pytest.mark.parametrize("small_tile", [False, True], ids=["large-tile", "small-tile"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}c{}_{}x{}_k{}_{}x{}_s{}_p{}_d{}".format(*c[:7], *(f"{a}{b}" for a, b in c[7:])))
def test_emulated_conv_equals_torch(emu, case, small_tile):
    n, c, h, w, cout, kh, kw, stride, padding, dilation = case
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    x = _ints((n, c, h, w), -3, 3, gen)
    weight = _ints((cout, c, kh, kw), -4, 4, gen)
    weight = weight * mask24(weight)  # 2:4 along Cin in the KRSC view, the conv contract
    expected = F.conv2d(x, weight, None, stride, padding, dilation)  # float64: exact on these integers
    p, q = expected.shape[2:]

    x_nhwc = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy().astype(np.int32))
    w_krsc = np.ascontiguousarray(weight.permute(0, 2, 3, 1).reshape(cout, -1).numpy().astype(np.int32))
    out = np.zeros((n * p * q, cout), dtype=np.float64)
    rc = emu.sparsedm_emu_conv(
        n, h, w, c, cout, kh, kw, *stride, *padding, *dilation,
        x_nhwc.ctypes.data_as(ctypes.c_void_p), w_krsc.ctypes.data_as(ctypes.c_void_p),
        out.ctypes.data_as(ctypes.c_void_p), int(small_tile),
    )
    assert rc == 0, "the emulation refused the case (see stderr)"
    got = torch.from_numpy(out).reshape(n, p, q, cout).permute(0, 3, 1, 2)
    assert torch.equal(got, expected), f"{int((got != expected).sum())} of {got.numel()} outputs differ"


def test_a_weight_that_is_not_24_is_refused(emu):
    x = np.ones((1, 3, 3, 8), dtype=np.int32)
    w = np.ones((16, 9 * 8), dtype=np.int32)  # every group of 4 full
    out = np.zeros((9, 16))
    rc = emu.sparsedm_emu_conv(1, 3, 3, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, x.ctypes.data_as(ctypes.c_void_p),
                               w.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), 0)
    assert rc == 1
