"""Every sparsedm:: op on the reference backend against float64 dense math."""

import pytest
import torch
import torch.nn.functional as F

from sparsedm import ops
from sparsedm.formats import quantize_weight_int8
from sparsedm.ops import OpArgumentError
from tests.helpers import TOLERANCES, assert_close_rel, randn, sparse_weight

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ACT64 = {
    "none": lambda y: y,
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "silu": F.silu,
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead", [(1,), (3,), (17,), (118,), (2, 5)])
@pytest.mark.parametrize("activation", list(ACT64))
def test_sparse24_linear(dtype, lead, activation):
    n, k = 24, 40
    w, values, meta = sparse_weight((n, k), dtype, seed=len(lead) + lead[0])
    x = randn(*lead, k, dtype=dtype, seed=11)
    bias = randn(n, dtype=dtype, seed=12)
    y = ops.sparse24_linear(x, values, meta, bias, activation, backend="reference")
    assert y.dtype == dtype and y.shape == (*lead, n)
    expected = ACT64[activation](F.linear(x.double(), w.double(), bias.double()))
    assert_close_rel(y, expected, TOLERANCES[dtype], f"sparse24_linear {dtype} {lead} {activation}")


def test_sparse24_linear_no_bias_fp64():
    w, values, meta = sparse_weight((16, 64), torch.float64, seed=3)
    x = randn(5, 64, dtype=torch.float64, seed=4)
    y = ops.sparse24_linear(x, values, meta)
    assert_close_rel(y, x @ w.T, 1e-12, "fp64")


CONV_CASES = [
    # (N, Cin, H, W, Cout, kh, kw, stride, padding, dilation)
    (1, 8, 7, 7, 16, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 16, 9, 6, 8, 3, 3, (2, 2), (1, 1), (1, 1)),
    (1, 8, 9, 9, 12, 3, 3, (1, 1), (2, 2), (2, 2)),
    (3, 8, 5, 8, 8, 1, 1, (1, 1), (0, 0), (1, 1)),
    (1, 4, 6, 7, 10, 2, 3, (2, 1), (0, 1), (1, 2)),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_sparse24_conv2d(case, dtype, channels_last):
    n, cin, h, wd, cout, kh, kw, stride, padding, dilation = case
    w, values, meta = sparse_weight((cout, cin, kh, kw), dtype, seed=cin + h)
    x = randn(n, cin, h, wd, dtype=dtype, seed=7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    bias = randn(cout, dtype=dtype, seed=8)
    y = ops.sparse24_conv2d(x, values, meta, bias, w.shape, stride, padding, dilation, backend="reference")
    expected = F.conv2d(x.double(), w.double(), bias.double(), stride, padding, dilation)
    assert y.dtype == dtype and y.shape == expected.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)
    assert_close_rel(y, expected, TOLERANCES[dtype], f"conv {case} {dtype}")


@pytest.mark.parametrize("activation", list(ACT64))
def test_sparse24_conv2d_activation(activation):
    w, values, meta = sparse_weight((8, 8, 3, 3), seed=2)
    x = randn(1, 8, 6, 6, seed=3)
    y = ops.sparse24_conv2d(x, values, meta, None, w.shape, [1, 1], [1, 1], [1, 1], activation)
    expected = ACT64[activation](F.conv2d(x.double(), w.double(), None, 1, 1))
    assert_close_rel(y, expected, 1e-5, activation)


def _int8_formula(x, w_q, w_scale, bias, x_scale=None):
    """The DESIGN formula computed independently in float64."""
    x64 = x.double()
    if x_scale is None:
        s_x = x64.abs().amax(-1) / 127
    else:
        s_x = x_scale.double().expand(x.shape[:-1]) if x_scale.numel() == 1 else x_scale.double()
    safe = torch.where(s_x > 0, s_x, torch.ones_like(s_x))
    x_q = torch.round(x64 / safe[..., None]).clamp(-127, 127)
    y = (x_q @ w_q.double().T) * s_x[..., None] * w_scale.double()
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead", [(1,), (3,), (17,), (2, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_int8_linear(dtype, lead, with_bias):
    n, k = 24, 33
    w = randn(n, k, seed=1)
    w_q, w_scale = quantize_weight_int8(w)
    x = randn(*lead, k, dtype=dtype, seed=2) * 3
    bias = randn(n, dtype=dtype, seed=3) if with_bias else None
    y = ops.int8_linear(x, w_q, w_scale, bias, None, backend="reference")
    assert y.dtype == dtype and y.shape == (*lead, n)
    assert_close_rel(y, _int8_formula(x, w_q, w_scale, bias), TOLERANCES[dtype], "int8_linear")
    # int8 approximates the float layer within the quantization error.
    assert_close_rel(y, F.linear(x.double(), w.double(), None if bias is None else bias.double()), 0.05, "vs float")


@pytest.mark.parametrize("static", [True, False])
def test_int8_linear_given_x_scale(static):
    w_q, w_scale = quantize_weight_int8(randn(16, 32, seed=4))
    x = randn(5, 32, seed=5)
    x_scale = torch.tensor(0.02) if static else x.abs().amax(-1) / 100  # saturates some codes
    y = ops.int8_linear(x, w_q, w_scale, None, x_scale)
    assert_close_rel(y, _int8_formula(x, w_q, w_scale, None, x_scale), 1e-5, "x_scale")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead", [(1,), (17,), (2, 3)])
def test_sparse24_int8_linear(dtype, lead):
    n, k = 20, 48
    w, _, _ = sparse_weight((n, k), seed=6)
    w_q, w_scale = quantize_weight_int8(w)  # quantize after masking keeps the zeros
    values_q, meta = ops.compress24(w_q.float())
    values_q = values_q.to(torch.int8)
    x = randn(*lead, k, dtype=dtype, seed=7)
    bias = randn(n, dtype=dtype, seed=8)
    y = ops.sparse24_int8_linear(x, values_q, meta, w_scale, bias, None, backend="reference")
    assert_close_rel(y, _int8_formula(x, w_q, w_scale, bias), TOLERANCES[dtype], "sparse24_int8_linear")


def test_compress_decompress_ops_match_formats():
    w, values, meta = sparse_weight((9, 32), seed=9)
    v2, m2 = ops.compress24(w)
    assert torch.equal(v2, values) and torch.equal(m2, meta)
    assert torch.equal(ops.decompress24(values, meta), w)


@pytest.mark.parametrize("activation", list(ACT64))
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_int8_ops_fuse_the_activation(sparse, activation):
    """The trailing ``activation`` of the int8 ops: act(int8 formula), applied in float32 before the cast."""
    n, k = 24, 48
    w, _, _ = sparse_weight((n, k), seed=11)
    w_q, w_scale = quantize_weight_int8(w)
    x = randn(7, k, seed=12) * 2
    bias = randn(n, seed=13)
    if sparse:
        values_q, meta = ops.compress24(w_q.float())
        y = ops.sparse24_int8_linear(x, values_q.to(torch.int8), meta, w_scale, bias, None, activation, backend="reference")
    else:
        y = ops.int8_linear(x, w_q, w_scale, bias, None, activation, backend="reference")
    assert_close_rel(y, ACT64[activation](_int8_formula(x, w_q, w_scale, bias)), 1e-5, f"int8 {activation}")
    with pytest.raises(OpArgumentError, match="activation"):
        ops.int8_linear(x, w_q, w_scale, bias, None, "relu")


@pytest.mark.gpu
def test_reference_conv_is_ieee_float32_on_gpu():
    """cuDNN's default TF32 (about 1e-3 relative) would make the reference conv a loose oracle
    on a GPU: it runs in IEEE float32 there, and the caller's TF32 setting is restored."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    w, values, meta = sparse_weight((64, 64, 3, 3), torch.float32, seed=21)
    x = randn(2, 64, 16, 16, dtype=torch.float32, seed=22)
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        y = ops.sparse24_conv2d(x.cuda(), values.cuda(), meta.cuda(), None, list(w.shape), 1, 1, 1, backend="reference")
        assert torch.backends.cudnn.allow_tf32, "the caller's setting was not restored"
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    expected = F.conv2d(x.double(), w.double(), None, 1, 1, 1)
    assert_close_rel(y.cpu(), expected, 1e-5, "reference conv float32 on the GPU")
