"""Triton linear kernels (kernels/triton/linear.py) against the reference ops and a float64 oracle.

Without a GPU these run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so shapes are small; the N/K values cross the interpreter config's 16x32x32 tile borders.
Tests marked ``gpu`` run the U-ViT shapes on a real device.
"""

from __future__ import annotations

import zlib

import pytest
import torch

import sparsedm.ops as ops
from sparsedm.formats import compress24, mask24, quantize_activation_int8, quantize_weight_int8
from sparsedm.ops import BackendUnavailableError, OpArgumentError, reference

triton = pytest.importorskip("triton")

ACTIVATIONS = ("none", "gelu", "gelu_tanh", "silu")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (dtype, atol, rtol) against the reference backend, which computes the same math in fp32 on
# the decompressed weight: only the summation order and the final rounding differ.
REF_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
# Relative (Frobenius) error against the float64 oracle: what the dtype's own rounding allows.
ORACLE_REL = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _gen(request) -> torch.Generator:
    """A generator seeded from the test id: fresh data per case, reproducible per case."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.name.encode()))


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _randn(*shape, gen, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(_device())


def _sparse_weight(n, k, gen, dtype=torch.float32):
    """A 2:4 weight [N, K] (std 1/sqrt(K)) and its canonical (values, meta)."""
    w = torch.randn(n, k, generator=gen) / k**0.5
    w = (w * mask24(w)).to(dtype).to(_device())
    values, meta = compress24(w)
    return w, values, meta


def _report(actual: torch.Tensor, expected: torch.Tensor) -> str:
    err = (actual.double() - expected.double()).abs()
    return f"max abs err {err.max().item():.3e}, mean abs err {err.mean().item():.3e}, max |expected| {expected.abs().max().item():.3e}"


def _assert_close(actual, expected, atol, rtol, what):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (
        f"{what}: got {actual.dtype} {tuple(actual.shape)}, expected {expected.dtype} {tuple(expected.shape)}"
    )
    assert not torch.isnan(actual).any(), f"{what}: NaN in the output"
    ok = torch.allclose(actual.double(), expected.double(), atol=atol, rtol=rtol)
    assert ok, f"{what} (atol {atol}, rtol {rtol}): {_report(actual, expected)}"


def _assert_rel(actual, oracle64, rel, what):
    err = (actual.double() - oracle64).norm() / oracle64.norm().clamp_min(1e-30)
    assert err.item() <= rel, f"{what}: relative error {err.item():.3e} > {rel:g}; {_report(actual, oracle64)}"


def _oracle_linear(x, w, bias, activation):
    y = x.double() @ w.double().t()
    if bias is not None:
        y = y + bias.double()
    return reference.apply_activation(y, activation)


class _Dispatched:
    """Asserts that the Triton kernel of ``op`` really ran inside the block."""

    def __init__(self, op: str, calls: int = 1):
        self.key, self.calls = (op, "triton"), calls

    def __enter__(self):
        self.before = ops.dispatch_counts[self.key]

    def __exit__(self, *exc):
        if exc[0] is None:
            ran = ops.dispatch_counts[self.key] - self.before
            assert ran == self.calls, f"{self.key} ran {ran} times, expected {self.calls}"


# ---------------------------------------------------------------------------------------------
# sparse24_linear
# ---------------------------------------------------------------------------------------------


def _check_sparse24_linear(x, w, values, meta, bias, activation):
    with _Dispatched("sparse24_linear"):
        y = ops.sparse24_linear(x, values, meta, bias, activation, backend="triton")
    ref = ops.sparse24_linear(x, values, meta, bias, activation, backend="reference")
    atol, rtol = REF_TOL[x.dtype]
    _assert_close(y, ref, atol, rtol, f"sparse24_linear {x.dtype} {activation} vs reference")
    _assert_rel(y, _oracle_linear(x, w, bias, activation), ORACLE_REL[x.dtype], "sparse24_linear vs float64 oracle")
    return y


@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_sparse24_linear_dtypes_activations(request, dtype, activation, has_bias):
    gen = _gen(request)
    w, values, meta = _sparse_weight(24, 72, gen, dtype)
    x = _randn(17, 72, gen=gen, dtype=dtype)
    bias = _randn(24, gen=gen, dtype=dtype) if has_bias else None
    _check_sparse24_linear(x, w, values, meta, bias, activation)


@pytest.mark.parametrize("n,k", [(24, 40), (24, 72), (40, 136)])
@pytest.mark.parametrize("lead", [(1,), (3,), (17,), (64,), (2, 3)], ids=lambda s: "x".join(map(str, s)))
def test_sparse24_linear_shapes(request, lead, n, k):
    gen = _gen(request)
    w, values, meta = _sparse_weight(n, k, gen, torch.float16)
    x = _randn(*lead, k, gen=gen, dtype=torch.float16)
    y = _check_sparse24_linear(x, w, values, meta, _randn(n, gen=gen), "gelu")
    assert y.shape == (*lead, n)


def test_sparse24_linear_non_contiguous(request):
    gen = _gen(request)
    w, values, meta = _sparse_weight(24, 40, gen)
    x = _randn(40, 5, gen=gen).t()  # [5, 40] with stride (1, 5)
    wide_values = torch.zeros(24, 2 * values.shape[1], device=values.device)
    wide_values[:, ::2] = values  # values [N, K/2] with column stride 2
    wide_meta = torch.zeros(24, 2 * meta.shape[1], dtype=torch.uint8, device=meta.device)
    wide_meta[:, 1::2] = meta
    _check_sparse24_linear(x, w, wide_values[:, ::2], wide_meta[:, 1::2], None, "silu")


def test_sparse24_linear_bias_cast_and_empty(request):
    gen = _gen(request)
    w, values, meta = _sparse_weight(24, 40, gen, torch.float16)
    x = _randn(3, 40, gen=gen, dtype=torch.float16)
    _check_sparse24_linear(x, w, values, meta, _randn(24, gen=gen, dtype=torch.float32), "none")  # fp32 bias, fp16 x
    with _Dispatched("sparse24_linear"):
        y = ops.sparse24_linear(x[:0], values, meta, None, "none", backend="triton")
    assert y.shape == (0, 24) and y.dtype == torch.float16


# ---------------------------------------------------------------------------------------------
# int8_linear and sparse24_int8_linear
# ---------------------------------------------------------------------------------------------


def _x_scale(mode, x, gen):
    if mode == "dynamic":
        return None
    if mode == "static":
        return torch.tensor([x.abs().max().item() / 127 * 0.8]).to(x.device)  # some codes clamp
    return (quantize_activation_int8(x)[1] * (0.7 + 0.6 * torch.rand(x.shape[:-1], generator=gen).to(x.device))).float()


def _run_int8(sparse, x, w_q, w_scale, bias, x_scale, activation="none"):
    """The op through the Triton backend and the reference backend."""
    if sparse:
        values_q, meta = compress24(w_q)
        args = (x, values_q, meta, w_scale, bias, x_scale, activation)
        op, name = ops.sparse24_int8_linear, "sparse24_int8_linear"
    else:
        args = (x, w_q, w_scale, bias, x_scale, activation)
        op, name = ops.int8_linear, "int8_linear"
    with _Dispatched(name):
        y = op(*args, backend="triton")
    return y, op(*args, backend="reference")


def _int8_weight(n, k, sparse, gen):
    w = torch.randn(n, k, generator=gen) / k**0.5
    if sparse:
        w = w * mask24(w)
    w_q, w_scale = quantize_weight_int8(w)
    return w_q.to(_device()), w_scale.to(_device())


# Integer sums are exact on both sides; only the float32 scaling (FMA contraction on a GPU)
# and the final rounding to x's dtype can differ, by at most one unit in the last place.
INT8_TOL = {torch.float32: (1e-6, 1e-6), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}


@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("scale_mode", ["dynamic", "static", "per_token"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_int8_linear_matches_reference(request, sparse, dtype, scale_mode, has_bias):
    gen = _gen(request)
    k = 72 if sparse else 33
    w_q, w_scale = _int8_weight(24, k, sparse, gen)
    x = _randn(2, 9, k, gen=gen, dtype=dtype)
    bias = _randn(24, gen=gen, dtype=dtype) if has_bias else None
    y, ref = _run_int8(sparse, x, w_q, w_scale, bias, _x_scale(scale_mode, x, gen))
    atol, rtol = INT8_TOL[dtype]
    _assert_close(y, ref, atol, rtol, f"{'sparse24_' if sparse else ''}int8_linear {dtype} {scale_mode}")
    # Against float64 on the unquantized operands the error is the quantization's (~1%).
    w = w_q.double() * w_scale.double()[:, None]
    if scale_mode == "dynamic":
        _assert_rel(y, _oracle_linear(x, w, bias, "none"), 3e-2, "int8 vs float64 oracle")


@pytest.mark.parametrize("scale_mode", ["dynamic", "static"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_int8_linear_activation_epilogue(request, sparse, activation, scale_mode):
    """The int8 ops' trailing activation runs in the kernel's epilogue (fp16 output)."""
    gen = _gen(request)
    k = 72 if sparse else 40
    w_q, w_scale = _int8_weight(24, k, sparse, gen)
    x = _randn(5, k, gen=gen, dtype=torch.float16, scale=2.0)
    bias = _randn(24, gen=gen, dtype=torch.float16)
    x_scale = _x_scale(scale_mode, x, gen)
    y, ref = _run_int8(sparse, x, w_q, w_scale, bias, x_scale, activation)
    _assert_close(y, ref, *INT8_TOL[torch.float16], f"int8 sparse={sparse} {activation} {scale_mode}")
    if activation != "none":  # the activation really changed the result
        plain = _run_int8(sparse, x, w_q, w_scale, bias, x_scale)[0]
        assert (y - plain).abs().max() > 1e-2


@pytest.mark.parametrize("m", [1, 3, 17, 64])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_int8_linear_shapes(request, sparse, m):
    gen = _gen(request)
    n, k = (24, 40) if sparse else (40, 33)
    w_q, w_scale = _int8_weight(n, k, sparse, gen)
    x = _randn(m, k, gen=gen, dtype=torch.float16)
    y, ref = _run_int8(sparse, x, w_q, w_scale, _randn(n, gen=gen), None)
    _assert_close(y, ref, *INT8_TOL[torch.float16], f"int8 M={m}")


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_int8_integer_products_exact(request, sparse):
    """Unit scales and integer-valued x: y is the int32 dot product itself, bit for bit."""
    gen = _gen(request)
    k = 72 if sparse else 33
    w_q, _ = _int8_weight(24, k, sparse, gen)
    x = torch.randint(-127, 128, (17, k), generator=gen).float().to(_device())
    ones = torch.ones(24, device=x.device)
    for x_scale in (None, torch.ones(1, device=x.device)):  # dynamic: absmax 127 -> scale 1
        x[:, 0] = 127.0
        y, _ = _run_int8(sparse, x, w_q, ones, None, x_scale)
        exact = x.double() @ w_q.double().t()
        assert torch.equal(y.double(), exact), f"integer products differ: {_report(y, exact)}"


def test_int8_zero_rows_and_zero_scale(request):
    gen = _gen(request)
    w_q, w_scale = _int8_weight(24, 33, False, gen)
    x = _randn(5, 33, gen=gen)
    x[2] = 0.0  # dynamic scale 0: codes 0, the row is the bias
    bias = _randn(24, gen=gen)
    y, ref = _run_int8(False, x, w_q, w_scale, bias, None)
    # the zero row is exactly the bias; the others within FMA contraction (a GPU fuses the
    # scaling and the bias add into one rounding)
    assert torch.equal(y[2], bias), _report(y[2], bias)
    _assert_close(y, ref, *INT8_TOL[torch.float32], "dynamic scales with a zero row")
    y, ref = _run_int8(False, x, w_q, w_scale, bias, torch.zeros(1, device=x.device))  # static scale 0
    assert torch.equal(y, ref) and torch.equal(y, bias.expand(5, 24)), _report(y, ref)


def test_int8_non_contiguous(request):
    gen = _gen(request)
    w_q, w_scale = _int8_weight(24, 72, True, gen)
    x = _randn(72, 6, gen=gen).t()
    x_scale = _x_scale("per_token", x, gen).repeat(2)[::2]  # strided per-token scales
    for scale in (None, x_scale):
        y, ref = _run_int8(True, x, w_q, w_scale, None, scale)
        _assert_close(y, ref, *INT8_TOL[torch.float32], "strided x / x_scale")


# ---------------------------------------------------------------------------------------------
# The activation quantizer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_k", [None, 16], ids=["one_pass", "two_pass"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_quantize_rows_bit_exact(request, dtype, block_k):
    from sparsedm.kernels.linear import quantize_rows

    gen = _gen(request)
    x = _randn(7, 72, gen=gen, dtype=dtype, scale=3.0)
    # Row 0: absmax 127 -> scale exactly 1, so x / s hits the ties of round-half-even.
    ties = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 126.5, -126.5, 4.5, 0.0])
    x[0] = 0.25
    x[0, : ties.numel()] = ties.to(dtype).to(x.device)
    x[3] = 0.0
    codes, scales = quantize_rows(x, block_k=block_k)
    ref_codes, ref_scales = quantize_activation_int8(x)
    assert torch.equal(scales, ref_scales), f"scales differ: {_report(scales, ref_scales)}"
    assert torch.equal(codes, ref_codes), f"codes differ at {(codes != ref_codes).nonzero()[:8].tolist()}"
    assert codes[0, :11].tolist() == [127, 0, 2, 2, 0, -2, -2, 4, 126, -126, 4]


@pytest.mark.parametrize("block_k", [None, 32], ids=["one-pass", "two-pass"])
def test_quantize_rows_nan_row_like_torch(request, block_k):
    """A NaN in a row gives that row a NaN scale and zero codes (torch's amax propagates NaN; a
    GPU's max.f32 would skip it), so int8_linear's output row is NaN, the other rows exact."""
    from sparsedm.kernels.linear import int8_linear, quantize_rows

    gen = _gen(request)
    x = _randn(5, 72, gen=gen)
    x[2, 40] = float("nan")
    codes, scales = quantize_rows(x, block_k=block_k)
    ref_codes, ref_scales = quantize_activation_int8(x)
    assert torch.isnan(scales[2]) and torch.isnan(ref_scales[2]) and not torch.isnan(scales[[0, 1, 3, 4]]).any()
    assert torch.equal(codes, ref_codes) and torch.equal(scales[[0, 1, 3, 4]], ref_scales[[0, 1, 3, 4]])
    w_q, w_scale = _int8_weight(24, 72, False, gen)
    y = int8_linear(x, w_q, w_scale, None, None)
    assert torch.isnan(y[2]).all() and not torch.isnan(y[[0, 1, 3, 4]]).any()


def test_quantize_rows_strided_input(request):
    from sparsedm.kernels.linear import quantize_rows

    x = _randn(40, 9, gen=_gen(request)).t()
    codes, scales = quantize_rows(x)
    ref_codes, ref_scales = quantize_activation_int8(x)
    assert torch.equal(codes, ref_codes) and torch.equal(scales, ref_scales)


# ---------------------------------------------------------------------------------------------
# Errors, dispatch and torch.library
# ---------------------------------------------------------------------------------------------


def test_shape_errors_raise_the_checks_error(request):
    gen = _gen(request)
    _, values, meta = _sparse_weight(24, 40, gen)
    w_q, w_scale = _int8_weight(24, 40, True, gen)
    values_q, meta_q = compress24(w_q)
    x = _randn(3, 48, gen=gen)  # K=48, the weights have K=40
    with pytest.raises(OpArgumentError, match="K=48"):
        ops.sparse24_linear(x, values, meta, backend="triton")
    with pytest.raises(OpArgumentError, match="K=48"):
        ops.int8_linear(x, w_q, w_scale, backend="triton")
    with pytest.raises(OpArgumentError, match="K=48"):
        ops.sparse24_int8_linear(x, values_q, meta_q, w_scale, backend="triton")
    x = x[:, :40]
    with pytest.raises(OpArgumentError, match="bias"):
        ops.sparse24_linear(x, values, meta, torch.zeros(23, device=x.device), backend="triton")
    with pytest.raises(OpArgumentError, match="x_scale"):
        ops.int8_linear(x, w_q, w_scale, None, torch.ones(2, device=x.device), backend="triton")
    with pytest.raises(OpArgumentError, match="activation"):
        ops.sparse24_linear(x, values, meta, None, "relu", backend="triton")
    # The kernels themselves (called directly, as the registry does) run the same checks.
    from sparsedm.kernels import linear

    with pytest.raises(OpArgumentError, match="meta"):
        linear.sparse24_linear(x, values, meta[:, :4], None, "none")


def test_float64_is_refused_with_a_reason(request):
    gen = _gen(request)
    _, values, meta = _sparse_weight(24, 40, gen, torch.float64)
    x = _randn(3, 40, gen=gen, dtype=torch.float64)
    with pytest.raises(BackendUnavailableError, match="float64"):
        ops.sparse24_linear(x, values, meta, backend="triton")


def test_opcheck(request):
    gen = _gen(request)
    _, values, meta = _sparse_weight(24, 40, gen)
    w_q, w_scale = _int8_weight(24, 40, True, gen)
    values_q, meta_q = compress24(w_q)
    x = _randn(2, 3, 40, gen=gen)
    bias = _randn(24, gen=gen)
    cases = [
        (torch.ops.sparsedm.sparse24_linear.default, (x, values, meta, bias, "gelu")),
        (torch.ops.sparsedm.int8_linear.default, (x, w_q, w_scale, bias, None)),
        (torch.ops.sparsedm.sparse24_int8_linear.default, (x, values_q, meta_q, w_scale, None, torch.ones(1, device=x.device) * 0.02)),
    ]
    with ops.use_backend("triton"):
        for op, args in cases:
            torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


# ---------------------------------------------------------------------------------------------
# Split-K: forced splits (the interpreter has no SM count), the rule, the rule driving the ops
# ---------------------------------------------------------------------------------------------
# The interpreter config has BLOCK_K = 32, so K=40 has 2 K steps (split 3 leaves one slice
# empty), K=72 has 3 and K=136 has 5 (split 2 and 3 do not divide it); N=24 and 40 end in a
# partial BLOCK_N = 32 tile, M=17 in a partial BLOCK_M = 16 tile.

SPLITS = (1, 2, 3)


class _Launches:
    """Counts launches of the named kernels of sparsedm.kernels.linear, delegating to them."""

    def __init__(self, monkeypatch, *names):
        from sparsedm.kernels import linear

        self.counts = dict.fromkeys(names, 0)
        for name in names:
            monkeypatch.setattr(linear, name, self._counting(name, getattr(linear, name)))

    def _counting(self, name, kernel):
        counts = self.counts

        class Counting:
            def __getitem__(self, grid):
                counts[name] += 1
                return kernel[grid]

        return Counting()


class _Reductions(_Launches):
    """Counts launches of the split-K reduction kernel (so a split that silently did not
    happen fails), delegating to the real kernel."""

    def __init__(self, monkeypatch):
        super().__init__(monkeypatch, "_split_k_reduce_kernel")

    @property
    def launches(self):
        return self.counts["_split_k_reduce_kernel"]


@pytest.mark.parametrize("scale_mode", ["dynamic", "static", "per_token"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_int8_launch_count(request, monkeypatch, sparse, scale_mode):
    """The int8 op is at most two launches: the fused absmax + quantize pass, then the GEMM; a
    given x_scale (static or per token) skips the quantize pass (x is quantized in the GEMM)."""
    gen = _gen(request)
    x = _randn(5, 72, gen=gen)
    w_q, w_scale = _int8_weight(24, 72, sparse, gen)
    launches = _Launches(monkeypatch, "_quantize_rows_kernel", "_linear_small_m", "_linear_large_m")
    y, ref = _run_int8(sparse, x, w_q, w_scale, None, _x_scale(scale_mode, x, gen))
    _assert_close(y, ref, *INT8_TOL[torch.float32], f"int8 sparse={sparse} {scale_mode}")
    quantize_passes = 1 if scale_mode == "dynamic" else 0
    assert launches.counts == {"_quantize_rows_kernel": quantize_passes, "_linear_small_m": 1, "_linear_large_m": 0}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("n,k", [(24, 40), (40, 136)])
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_split_k_sparse24_linear(request, monkeypatch, dtype, m, n, k, split):
    from sparsedm.kernels import linear

    gen = _gen(request)
    w, values, meta = _sparse_weight(n, k, gen, dtype)
    x = _randn(m, k, gen=gen, dtype=dtype)
    bias = _randn(n, gen=gen, dtype=dtype)
    reductions = _Reductions(monkeypatch)
    y = linear.sparse24_linear(x, values, meta, bias, "gelu", split_k=split)
    assert reductions.launches == (split > 1), f"split_k={split}: {reductions.launches} reduction launches"
    ref = ops.sparse24_linear(x, values, meta, bias, "gelu", backend="reference")
    _assert_close(y, ref, *REF_TOL[dtype], f"sparse24_linear split_k={split} M={m} N={n} K={k} vs reference")
    _assert_rel(y, _oracle_linear(x, w, bias, "gelu"), ORACLE_REL[dtype], f"split_k={split} vs float64 oracle")


@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_split_k_epilogue(request, monkeypatch, dtype, activation, has_bias):
    """Bias and activation are applied once, after all slices are summed."""
    from sparsedm.kernels import linear

    gen = _gen(request)
    w, values, meta = _sparse_weight(24, 72, gen, dtype)
    x = _randn(3, 72, gen=gen, dtype=dtype)
    bias = _randn(24, gen=gen, dtype=dtype) if has_bias else None
    reductions = _Reductions(monkeypatch)
    y = linear.sparse24_linear(x, values, meta, bias, activation, split_k=3)
    assert reductions.launches == 1
    ref = ops.sparse24_linear(x, values, meta, bias, activation, backend="reference")
    _assert_close(y, ref, *REF_TOL[dtype], f"sparse24_linear split_k=3 {dtype} {activation}")
    _assert_rel(y, _oracle_linear(x, w, bias, activation), ORACLE_REL[dtype], "split_k=3 vs float64 oracle")


@pytest.mark.parametrize("split", [2, 3])
@pytest.mark.parametrize("m,dtype,has_bias", [(1, torch.float16, True), (3, torch.float32, False), (17, torch.float16, False)],
                         ids=["m1-fp16-bias", "m3-fp32-nobias", "m17-fp16-nobias"])
@pytest.mark.parametrize("scale_mode", ["dynamic", "static", "per_token"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_split_k_int8(request, monkeypatch, sparse, scale_mode, m, dtype, has_bias, split):
    """int32 partial sums are exact: every split gives the unsplit GEMM's bits, and the reference's values."""
    from sparsedm.kernels import linear

    gen = _gen(request)
    n, k = (40, 136) if sparse else (24, 72)
    w_q, w_scale = _int8_weight(n, k, sparse, gen)
    x = _randn(m, k, gen=gen, dtype=dtype)
    bias = _randn(n, gen=gen, dtype=dtype) if has_bias else None
    x_scale = _x_scale(scale_mode, x, gen)
    if sparse:
        values_q, meta = compress24(w_q)
        run = lambda s: linear.sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, split_k=s)  # noqa: E731
        ref = ops.sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, backend="reference")
    else:
        run = lambda s: linear.int8_linear(x, w_q, w_scale, bias, x_scale, split_k=s)  # noqa: E731
        ref = ops.int8_linear(x, w_q, w_scale, bias, x_scale, backend="reference")
    unsplit = run(1)
    reductions = _Reductions(monkeypatch)
    y = run(split)
    assert reductions.launches == 1
    assert torch.equal(y, unsplit), f"split_k={split} differs from the unsplit GEMM: {_report(y, unsplit)}"
    _assert_close(y, ref, *INT8_TOL[dtype], f"{'sparse24_' if sparse else ''}int8_linear split_k={split} {scale_mode}")


def test_split_k_rule():
    from sparsedm.kernels.linear import SMALL_M, SPLIT_K_MAX, SPLIT_K_MIN_SLICE, split_k_for

    # U-ViT-L/2 on an H100 SXM (132 SMs) and an A100 (108 SMs): the table in docs/KERNELS.md.
    for m in (1, 16):
        assert split_k_for(m, 1024, 4096, 132) == 8  # fc2: 16 CTAs; 8 slices of 512
        assert split_k_for(m, 1024, 1024, 132) == 2  # proj
        assert split_k_for(m, 3072, 1024, 132) == 2  # qkv: 48 CTAs
        assert split_k_for(m, 4096, 1024, 132) == 2  # fc1: 64 CTAs, just under half of 132
        assert split_k_for(m, 4096, 1024, 108) == 1  # fc1 on 108 SMs: 64 CTAs fill more than half
        assert split_k_for(m, 512, 2048, 132) == 4  # U-ViT-S/2 fc2: 8 CTAs, K // 512 = 4
        assert split_k_for(m, 1536, 512, 132) == 1  # U-ViT-S/2 qkv: K too short for two slices
    # M = 64: the partial sums' traffic bounds SPLIT_K * M <= K / 32.
    assert split_k_for(64, 1024, 4096, 132) == 2
    assert split_k_for(32, 1024, 4096, 132) == 4
    assert split_k_for(64, 1024, 1024, 132) == 1
    assert split_k_for(65, 1024, 4096, 132) == 1  # large M: compute-bound, no split
    assert split_k_for(1, 1024, 4096, None) == 1  # no SM count (interpreter)
    assert split_k_for(1, 64, 1 << 16, 132) == SPLIT_K_MAX
    for sm in (46, 84, 108, 132):
        for n in (64, 512, 1024, 3072, 4096, 8192):
            for k in (256, 512, 1024, 2048, 4096, 16384):
                for m in (1, 7, 64, 65, 1000):
                    split = split_k_for(m, n, k, sm)
                    assert 1 <= split <= SPLIT_K_MAX
                    if split > 1:
                        tiles = -(-n // 64)
                        assert m <= SMALL_M and 2 * tiles <= sm and split * SPLIT_K_MIN_SLICE <= k, (m, n, k, sm, split)
                        assert tiles * split <= 2 * sm and 32 * split * m <= k, (m, n, k, sm, split)


def test_split_k_rule_has_no_sm_count_in_the_interpreter():
    """The interpreter reports no SM count even for CUDA tensors (device_reason admits them), so
    the rule never splits there unasked; only a GPU run asks the device."""
    from sparsedm.kernels import linear

    if not linear.INTERPRET:
        pytest.skip("interpreter only")
    assert linear._sm_count(torch.device("cpu")) is None
    assert linear._sm_count(torch.device("cuda", 0)) is None


def test_split_k_rule_drives_the_ops(request, monkeypatch):
    """With an SM count (faked here; a GPU reports one) the ops split by the rule, unasked."""
    from sparsedm.kernels import linear

    gen = _gen(request)
    monkeypatch.setattr(linear, "_sm_count", lambda device: 8)
    n, k = 40, 1024  # 1 CTA of BLOCK_N = 64 on 8 SMs: min(2 * 8, 1024 // 512) = 2 slices
    assert linear.split_k_for(1, n, k, 8) == 2
    w, values, meta = _sparse_weight(n, k, gen, torch.float16)
    x = _randn(1, k, gen=gen, dtype=torch.float16)
    bias = _randn(n, gen=gen)
    reductions = _Reductions(monkeypatch)
    _check_sparse24_linear(x, w, values, meta, bias, "silu")
    w_q, w_scale = _int8_weight(n, k, True, gen)
    y, ref = _run_int8(True, x, w_q, w_scale, bias, None)
    assert reductions.launches == 2
    _assert_close(y, ref, *INT8_TOL[torch.float16], "sparse24_int8_linear split by the rule")
    values_q, meta_q = compress24(w_q)
    assert torch.equal(y, linear.sparse24_int8_linear(x, values_q, meta_q, w_scale, bias, None, split_k=1))
    with ops.use_backend("triton"):
        torch.library.opcheck(torch.ops.sparsedm.sparse24_linear.default, (x, values, meta, bias, "gelu"),
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    assert reductions.launches > 2


def test_split_k_argument_errors(request):
    from sparsedm.kernels import linear

    gen = _gen(request)
    _, values, meta = _sparse_weight(24, 40, gen)
    x = _randn(3, 40, gen=gen)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="split_k"):
            linear.sparse24_linear(x, values, meta, None, "none", split_k=bad)


def test_split_k_beyond_the_k_steps_is_clamped(request, monkeypatch):
    """A forced split larger than K allows gives the same result with at most cdiv(K, 16) slices."""
    from sparsedm.kernels import linear

    gen = _gen(request)
    _, values, meta = _sparse_weight(24, 40, gen)
    x = _randn(3, 40, gen=gen)
    workspaces = []
    real_empty = torch.empty

    def spy_empty(*shape, **kw):
        t = real_empty(*shape, **kw)
        if t.dim() == 3:
            workspaces.append(tuple(t.shape))
        return t

    monkeypatch.setattr(linear.torch, "empty", spy_empty)
    y = linear.sparse24_linear(x, values, meta, None, "none", split_k=10**6)
    monkeypatch.undo()
    assert workspaces == [(3, 3, 24)]  # cdiv(40, 16) = 3 slices, not a million
    ref = ops.sparse24_linear(x, values, meta, None, "none", backend="reference")
    _assert_close(y, ref, *REF_TOL[torch.float32], "split_k clamped")


def test_every_autotuner_uses_the_short_timing():
    """Each triton.autotune of sparsedm.kernels times configs with ``autotune_bench`` (5 + 25 ms),
    not Triton's 25 + 100 ms default: a new autotuned kernel must say how it is timed."""
    import triton.runtime.autotuner as autotuner

    from sparsedm.kernels import _common, conv2d, linear

    tuners = [(mod.__name__, name, obj) for mod in (linear, conv2d) for name, obj in vars(mod).items() if isinstance(obj, autotuner.Autotuner)]
    assert len(tuners) >= 4, tuners
    for mod, name, tuner in tuners:
        assert tuner._do_bench is _common.autotune_bench, f"{mod}.{name} uses Triton's default autotune timing"


# ---------------------------------------------------------------------------------------------
# Every candidate config, forced (config=), and SPARSEDM_TRITON_AUTOTUNE
# ---------------------------------------------------------------------------------------------


def _all_configs():
    """(list name, config, split_k) for every candidate of every list (the real lists, not the
    interpreter's one config): autotuning runs them all but only checks the winner's output."""
    from sparsedm.kernels import linear

    out = [("small", c, 1) for c in linear._SMALL_M_CONFIGS] + [("large", c, 1) for c in linear._LARGE_M_CONFIGS]
    out += [("split-K", c, 3) for c in linear._SPLIT_K_CONFIGS]
    # float32 sparse24_linear's own lists (IEEE dots); the split-K list is the small-M one
    out += [("small-fp32", c, 1) for c in linear._FP32_SMALL_M_CONFIGS] + [("large-fp32", c, 1) for c in linear._FP32_LARGE_M_CONFIGS]
    return out + [("split-K-fp32", c, 3) for c in linear._FP32_SPLIT_K_CONFIGS]


def _gpu_config_items():
    """(item, dtype) for the GPU twin: the float16/bfloat16 lists in both, the float32 lists in float32."""
    return [(item, dtype) for item in _all_configs()
            for dtype in ((torch.float32,) if item[0].endswith("fp32") else (torch.float16, torch.bfloat16))]


def _config_id(item):
    name, c, _ = item
    kw = c.kwargs
    return f"{name}-{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}-w{c.num_warps}s{c.num_stages}"


def _check_every_family_with_config(request, config, split_k, m, n, k, dtype):
    """sparse24_linear, int8_linear and sparse24_int8_linear (dynamic and static x_scale), each
    run with ``config`` forced, against the reference backend; in float32 sparse24_linear only
    (the float32 lists serve its IEEE dots; the int8 ops multiply int8 codes)."""
    from sparsedm.kernels import linear

    gen = _gen(request)
    w, values, meta = _sparse_weight(n, k, gen, dtype)
    x = _randn(m, k, gen=gen, dtype=dtype)
    bias = _randn(n, gen=gen, dtype=dtype)
    what = f"config {config.kwargs} split_k={split_k} M={m} N={n} K={k} {dtype}"
    y = linear.sparse24_linear(x, values, meta, bias, "gelu", split_k=split_k, config=config)
    ref = ops.sparse24_linear(x, values, meta, bias, "gelu", backend="reference")
    _assert_close(y, ref, *REF_TOL[dtype], f"sparse24_linear, {what}")
    for sparse in (False, True) if dtype != torch.float32 else ():
        w_q, w_scale = _int8_weight(n, k, sparse, gen)
        for mode in ("dynamic", "static"):
            x_scale = _x_scale(mode, x, gen)
            if sparse:
                values_q, meta_q = compress24(w_q)
                y8 = linear.sparse24_int8_linear(x, values_q, meta_q, w_scale, bias, x_scale, split_k=split_k, config=config)
            else:
                y8 = linear.int8_linear(x, w_q, w_scale, bias, x_scale, split_k=split_k, config=config)
            ref8 = _run_int8(sparse, x, w_q, w_scale, bias, x_scale)[1]
            _assert_close(y8, ref8, *INT8_TOL[dtype], f"int8 sparse={sparse} {mode}, {what}")


@pytest.mark.parametrize("item", _all_configs(), ids=_config_id)
def test_every_config_forced(request, item):
    """Each candidate's tile sizes cross the borders of this small problem: M, N and K tails."""
    name, config, split_k = item
    dtype = torch.float32 if name.endswith("fp32") else torch.float16
    _check_every_family_with_config(request, config, split_k, m=37, n=72, k=264, dtype=dtype)


def test_forced_config_errors(request):
    from sparsedm.kernels import linear

    gen = _gen(request)
    _, values, meta = _sparse_weight(24, 40, gen)
    x = _randn(3, 40, gen=gen)
    bad = [
        {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32},  # GROUP_M missing
        {"BLOCK_M": 16, "BLOCK_N": 48, "BLOCK_K": 32, "GROUP_M": 1},  # not a power of two
        {"BLOCK_M": 8, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1},  # below tl.dot's 16
    ]
    for kwargs in bad:
        with pytest.raises(ValueError, match="config"):
            linear.sparse24_linear(x, values, meta, None, "none", config=triton.Config(kwargs))
    shallow = triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 1})
    w_q, w_scale = _int8_weight(24, 40, False, gen)
    with pytest.raises(ValueError, match="int8 ops need BLOCK_K >= 32"):
        linear.int8_linear(x, w_q, w_scale, None, None, config=shallow)
    linear.sparse24_linear(x, values, meta, None, "none", config=shallow)  # fine for float operands
    with pytest.raises(ValueError, match="triton.Config"):
        linear.sparse24_linear(x, values, meta, None, "none", config={"BLOCK_M": 16})


_AUTOTUNE_PROBE = """
import json
from sparsedm.kernels import conv2d, linear
tuners = {name: len(getattr(linear, name).configs) for name in ("_linear_small_m", "_linear_large_m", "_linear_split_k",
                                                                 "_linear_small_m_fp32", "_linear_large_m_fp32", "_linear_split_k_fp32")}
bucket = conv2d.conv_configs(M=1 << 20, Cout=256, C=256)  # a bucket of several candidates
import torch
pruned = conv2d._prune(conv2d._CONFIGS + conv2d._NCHW_CONFIGS + conv2d._FP32_CONFIGS,
                       {"M": 1 << 20, "Cout": 256, "C": 256, "stride_xc": 1, "x_ptr": torch.empty(0, dtype=torch.float16)})
print(json.dumps({"tuners": tuners, "bucket": len(bucket), "pruned": len(pruned),
                  "first": pruned[0].kwargs == bucket[0].kwargs}))
"""


@pytest.mark.parametrize("setting", ["1", "0", "unset", "yes"])
def test_triton_autotune_setting(setting):
    """SPARSEDM_TRITON_AUTOTUNE=0 builds every autotuner with its first candidate only (and the
    conv's pruning keeps the bucket's first); 1 or unset keeps every candidate; anything else
    is refused at import with the two values it takes. A fresh process, without the
    interpreter (whose one small config would hide the lists)."""
    import json
    import os
    import subprocess
    import sys

    from sparsedm.kernels import linear

    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SPARSEDM_TRITON_AUTOTUNE")}
    if setting != "unset":
        env["SPARSEDM_TRITON_AUTOTUNE"] = setting
    proc = subprocess.run([sys.executable, "-c", _AUTOTUNE_PROBE], env=env, capture_output=True, text=True, timeout=300)
    if setting == "yes":
        assert proc.returncode != 0 and "SPARSEDM_TRITON_AUTOTUNE='yes'" in proc.stderr, proc.stderr[-2000:]
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["bucket"] > 1 and got["first"], got
    if setting == "0":
        assert set(got["tuners"].values()) == {1} and len(got["tuners"]) == 6 and got["pruned"] == 1, got
    else:
        assert got["tuners"] == {"_linear_small_m": len(linear._SMALL_M_CONFIGS), "_linear_large_m": len(linear._LARGE_M_CONFIGS),
                                 "_linear_split_k": len(linear._SPLIT_K_CONFIGS),
                                 "_linear_small_m_fp32": len(linear._FP32_SMALL_M_CONFIGS),
                                 "_linear_large_m_fp32": len(linear._FP32_LARGE_M_CONFIGS),
                                 "_linear_split_k_fp32": len(linear._FP32_SPLIT_K_CONFIGS)}, got
        assert got["pruned"] == got["bucket"], got

# ---------------------------------------------------------------------------------------------
# GPU: real U-ViT shapes
# ---------------------------------------------------------------------------------------------

# (K, N) of the four 2:4 linears of a U-ViT block: qkv, proj, fc1, fc2.
UVIT_S2 = [(512, 1536), (512, 512), (512, 2048), (2048, 512)]
UVIT_L2 = [(1024, 3072), (1024, 1024), (1024, 4096), (4096, 1024)]


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 65, 65 * 16, 65 * 128])
@pytest.mark.parametrize("k,n", UVIT_S2 + UVIT_L2)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_uvit_linears(request, dtype, k, n, m):
    gen = _gen(request)
    w, values, meta = _sparse_weight(n, k, gen, dtype)
    x = _randn(m, k, gen=gen, dtype=dtype)
    bias = _randn(n, gen=gen, dtype=dtype)
    _check_sparse24_linear(x, w, values, meta, bias, "gelu")
    for sparse in (False, True):
        w_q, w_scale = _int8_weight(n, k, sparse, gen)
        for mode in ("dynamic", "static", "per_token"):
            y, ref = _run_int8(sparse, x, w_q, w_scale, bias, _x_scale(mode, x, gen))
            _assert_close(y, ref, *INT8_TOL[dtype], f"int8 sparse={sparse} {mode} M={m} K={k} N={n}")


@pytest.mark.gpu
@pytest.mark.parametrize("split", [2, 3, 5])
@pytest.mark.parametrize("m", [1, 7, 16])
@pytest.mark.parametrize("k,n", UVIT_L2)
def test_gpu_forced_split_k(request, monkeypatch, k, n, m, split):
    """Forced splits on the real configs (uneven slices: 5 does not divide the K steps), fp16
    and both int8 families, against the reference; int8 bit-equal to the unsplit kernel."""
    from sparsedm.kernels import linear

    gen = _gen(request)
    w, values, meta = _sparse_weight(n, k, gen, torch.float16)
    x = _randn(m, k, gen=gen, dtype=torch.float16)
    bias = _randn(n, gen=gen, dtype=torch.float16)
    reductions = _Reductions(monkeypatch)
    y = linear.sparse24_linear(x, values, meta, bias, "gelu", split_k=split)
    assert reductions.launches == 1
    ref = ops.sparse24_linear(x, values, meta, bias, "gelu", backend="reference")
    _assert_close(y, ref, *REF_TOL[torch.float16], f"sparse24_linear split_k={split} M={m} K={k} N={n}")
    for sparse in (False, True):
        w_q, w_scale = _int8_weight(n, k, sparse, gen)
        if sparse:
            values_q, meta_q = compress24(w_q)
            run = lambda s: linear.sparse24_int8_linear(x, values_q, meta_q, w_scale, bias, None, split_k=s)  # noqa: E731
        else:
            run = lambda s: linear.int8_linear(x, w_q, w_scale, bias, None, split_k=s)  # noqa: E731
        y8 = run(split)
        assert torch.equal(y8, run(1)), f"int8 sparse={sparse} split_k={split} differs from the unsplit GEMM"
        ref8 = _run_int8(sparse, x, w_q, w_scale, bias, None)[1]
        _assert_close(y8, ref8, *INT8_TOL[torch.float16], f"int8 sparse={sparse} split_k={split} M={m} K={k} N={n}")


@pytest.mark.gpu
@pytest.mark.parametrize("item,dtype", _gpu_config_items(), ids=lambda v: str(v) if isinstance(v, torch.dtype) else _config_id(v))
def test_gpu_every_config_forced(request, item, dtype):
    """Every candidate compiled for the real GPU, on a shape with M, N and K tails (M = 65 * 5
    U-ViT tokens; M = 5 for the small-M and split-K lists): the GPU test stages run with
    SPARSEDM_TRITON_AUTOTUNE=0, so this is where the other candidates run."""
    name, config, split_k = item
    m = 5 if name.startswith(("small", "split-K")) else 65 * 5
    _check_every_family_with_config(request, config, split_k, m=m, n=1000, k=1032, dtype=dtype)
