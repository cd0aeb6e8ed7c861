"""GPU tests of the cuda backend against the reference ops (marker ``gpu``; skipped without CUDA).

Shapes: the U-ViT-S/2 (D 512) and U-ViT-L/2 (D 1024) linears (qkv, proj, fc1, fc2), M in
{1, 7, 128, 4096}. fp16/bf16 sparse GEMMs are compared with the float32-accumulating reference
by relative error; the int8 GEMMs must agree exactly in their integer part, so their outputs
must match the reference to the output dtype's rounding.
"""

import pytest
import torch

from sparsedm.formats import compress24, quantize_weight_int8
from sparsedm.formats.sparse24 import mask24
from sparsedm.ops import checks, reference, registry
from tests.helpers import need_backend

pytestmark = pytest.mark.gpu

UVIT = {"S2": [(1536, 512), (512, 512), (2048, 512), (512, 2048)], "L2": [(3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)]}
# Plus tails: N past whole 128-wide tiles and K = one int8 K stage, with M tails past the
# large tile's 64 tokens (4100) and inside the small tile (1, 7).
SHAPES = [(n, k) for shapes in UVIT.values() for n, k in shapes] + [(1040, 1024), (48, 128)]
MS = (1, 7, 128, 4096, 4100)


def _pruned(w):
    return w * mask24(w)


def _need_cuda_backend():
    need_backend("cuda")


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _sparse_weight(n, k, dtype):
    w = torch.randn(n, k, device="cuda", dtype=torch.float32) / k**0.5
    values, meta = compress24(_pruned(w.to(dtype)))
    return values, meta


@pytest.mark.parametrize("activation", checks.ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("n,k", SHAPES)
def test_sparse24_linear_matches_reference(n, k, m, dtype, activation):
    _need_cuda_backend()
    torch.manual_seed(n + k + m)
    values, meta = _sparse_weight(n, k, dtype)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    bias = torch.randn(n, device="cuda", dtype=dtype)
    with registry.use_backend("cuda"):
        y = torch.ops.sparsedm.sparse24_linear(x, values, meta, bias, activation)
    ref = reference.sparse24_linear(x.double(), values.double(), meta, bias.double(), activation)
    assert y.dtype == dtype and y.shape == (m, n)
    assert not y.isnan().any()
    err = _rel_err(y, ref)
    assert err < (1e-2 if dtype == torch.bfloat16 else 3e-3), f"rel err {err:.2e}, max abs {(y.double() - ref).abs().max():.3e}"


def test_sparse24_linear_3d_input_and_cache():
    _need_cuda_backend()
    values, meta = _sparse_weight(512, 512, torch.float16)
    x = torch.randn(2, 65, 512, device="cuda", dtype=torch.float16)
    with registry.use_backend("cuda"):
        y1 = torch.ops.sparsedm.sparse24_linear(x, values, meta, None, "none")
        y2 = torch.ops.sparsedm.sparse24_linear(x, values, meta, None, "none")
    assert torch.equal(y1, y2) and y1.shape == (2, 65, 512)
    ref = reference.sparse24_linear(x.double(), values.double(), meta, None, "none")
    assert _rel_err(y1, ref) < 3e-3


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("n,k", SHAPES)
def test_int8_linear_matches_reference(n, k, m, dtype, sparse):
    _need_cuda_backend()
    torch.manual_seed(n * 3 + k + m)
    w = torch.randn(n, k, device="cuda")
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    bias = torch.randn(n, device="cuda", dtype=dtype)
    if sparse:
        values, meta = compress24(_pruned(w))
        values_q, w_scale = quantize_weight_int8(values)
        args = (x, values_q, meta, w_scale, bias, None)
        op, ref_fn = torch.ops.sparsedm.sparse24_int8_linear, reference.sparse24_int8_linear
    else:
        w_q, w_scale = quantize_weight_int8(w)
        args = (x, w_q, w_scale, bias, None)
        op, ref_fn = torch.ops.sparsedm.int8_linear, reference.int8_linear
    with registry.use_backend("cuda"):
        y = op(*args)
    ref = ref_fn(*args)
    assert y.dtype == dtype
    # identical integer sums and identical float32 scaling order -> equal up to the rare
    # 1-ulp difference of the division in the activation scale / a different rounding of x/s.
    mismatch = (y != ref).float().mean().item()
    max_err = (y.float() - ref.float()).abs().max().item()
    assert mismatch < 1e-3, f"{mismatch:.2%} elements differ; max abs {max_err:.3e}"
    # ... and those few differ by rounding only: a wrong tile would be off by the output's scale.
    assert max_err <= 1e-2 * ref.float().abs().max().item(), f"max abs error {max_err:.3e} is not a rounding difference"


@pytest.mark.parametrize("activation", checks.ACTIVATIONS)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_int8_activation_epilogue(sparse, activation):
    """The int8 ops' trailing activation, fused in the CUDA epilogue, against the reference."""
    _need_cuda_backend()
    torch.manual_seed(7 + checks.ACTIVATIONS.index(activation))
    n, k, m = 1024, 1024, 77
    w = torch.randn(n, k, device="cuda")
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    bias = torch.randn(n, device="cuda", dtype=torch.float16)
    if sparse:
        values, meta = compress24(_pruned(w))
        values_q, w_scale = quantize_weight_int8(values)
        args = (x, values_q, meta, w_scale, bias, None, activation)
        op, ref_fn = torch.ops.sparsedm.sparse24_int8_linear, reference.sparse24_int8_linear
    else:
        w_q, w_scale = quantize_weight_int8(w)
        args = (x, w_q, w_scale, bias, None, activation)
        op, ref_fn = torch.ops.sparsedm.int8_linear, reference.int8_linear
    with registry.use_backend("cuda"):
        y = op(*args)
    ref = ref_fn(*args)
    max_err = (y.float() - ref.float()).abs().max().item()
    assert max_err <= 1e-2 * ref.float().abs().max().item(), f"{activation}: max abs error {max_err:.3e}"


@pytest.mark.parametrize("mode", ["static", "per_token"])
@pytest.mark.parametrize("m", [1, 7, 4100])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_int8_given_x_scale(sparse, m, mode):
    """A given x_scale (one static scale, some codes clamped; or one scale per token): the
    quantize kernel's static path, then the GEMM, against the reference (docs/FORMAT.md)."""
    _need_cuda_backend()
    torch.manual_seed(m + (5 if sparse else 0) + (1 if mode == "static" else 0))
    n, k = 1024, 1024
    w = torch.randn(n, k, device="cuda")
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    bias = torch.randn(n, device="cuda", dtype=torch.float16)
    if mode == "static":
        x_scale = torch.tensor([x.abs().max().item() / 127 * 0.8], device="cuda")
    else:
        x_scale = x.float().abs().amax(dim=1) / 127 * (0.7 + 0.6 * torch.rand(m, device="cuda"))
    if sparse:
        values, meta = compress24(_pruned(w))
        values_q, w_scale = quantize_weight_int8(values)
        args = (x, values_q, meta, w_scale, bias, x_scale, "gelu")
        op, ref_fn = torch.ops.sparsedm.sparse24_int8_linear, reference.sparse24_int8_linear
    else:
        w_q, w_scale = quantize_weight_int8(w)
        args = (x, w_q, w_scale, bias, x_scale, "gelu")
        op, ref_fn = torch.ops.sparsedm.int8_linear, reference.int8_linear
    with registry.use_backend("cuda"):
        y = op(*args)
    ref = ref_fn(*args)
    mismatch = (y != ref).float().mean().item()
    max_err = (y.float() - ref.float()).abs().max().item()
    assert mismatch < 1e-3, f"{mode}: {mismatch:.2%} elements differ; max abs {max_err:.3e}"
    assert max_err <= 1e-2 * ref.float().abs().max().item(), f"{mode}: max abs error {max_err:.3e}"


def test_unsupported_shapes_give_reasons():
    _need_cuda_backend()
    values, meta = compress24(_pruned(torch.randn(24, 96, device="cuda", dtype=torch.float16)))
    x = torch.randn(3, 96, device="cuda", dtype=torch.float16)
    from sparsedm.ops import cuda_backend

    reason = cuda_backend.supports_sparse24_linear(x, values, meta, None, "none")
    assert reason and "multiple of 16" in reason
    with pytest.raises(registry.BackendUnavailableError, match="multiple of"):
        with registry.use_backend("cuda"):
            torch.ops.sparsedm.sparse24_linear(x, values, meta, None, "none")


# ---- split-K (docs/KERNELS.md, "Tile configurations and split-K") ---------------------------
# Forced slice counts (cuda_backend.SPLIT_K, what SPARSEDM_CUDA_SPLIT_K sets) against the
# reference for the three families at small M with the U-ViT-L/2 shapes. 1 = the fused kernel;
# 3, 5, 7 leave uneven slices (K stages: 16 / 64 for f16 K = 1024 / 4096, 8 / 32 for int8);
# 64 is clamped to the K stages (one stage per slice: shorter than the 4-stage pipeline).
SPLITS = (1, 2, 3, 5, 7, 64)
SPLIT_MS = (1, 7, 33)
FAMILIES = ("sparse16", "sparse8", "dense8")


def _family_call(family, n, k, m, dtype, activation="silu", seed=0):
    """(op, args, reference output) of one GEMM family with random data, bias on."""
    torch.manual_seed(seed)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    bias = torch.randn(n, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda") / k**0.5
    if family == "sparse16":
        values, meta = compress24(_pruned(w.to(dtype)))
        args = (x, values, meta, bias, activation)
        ref = reference.sparse24_linear(x.double(), values.double(), meta, bias.double(), activation)
        return torch.ops.sparsedm.sparse24_linear, args, ref
    if family == "sparse8":
        values, meta = compress24(_pruned(w))
        values_q, w_scale = quantize_weight_int8(values)
        args = (x, values_q, meta, w_scale, bias, None)
        return torch.ops.sparsedm.sparse24_int8_linear, args, reference.sparse24_int8_linear(*args)
    w_q, w_scale = quantize_weight_int8(w)
    args = (x, w_q, w_scale, bias, None)
    return torch.ops.sparsedm.int8_linear, args, reference.int8_linear(*args)


def _run_split(monkeypatch, op, args, splits):
    from sparsedm.ops import cuda_backend

    monkeypatch.setattr(cuda_backend, "SPLIT_K", splits)
    with registry.use_backend("cuda"):
        return op(*args)


def _check_family(family, y, ref):
    assert not y.isnan().any()
    if family == "sparse16":
        err = _rel_err(y, ref)
        tol = 1e-2 if y.dtype == torch.bfloat16 else 3e-3
        assert err < tol, f"rel err {err:.2e}, max abs {(y.double() - ref.double()).abs().max():.3e}"
    else:  # exact int32 sums: equal to the reference up to rare rounding differences
        mismatch = (y != ref).float().mean().item()
        max_err = (y.float() - ref.float()).abs().max().item()
        assert mismatch < 1e-3, f"{mismatch:.2%} elements differ; max abs {max_err:.3e}"
        assert max_err <= 1e-2 * ref.float().abs().max().item(), f"max abs error {max_err:.3e}"


@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize("m", SPLIT_MS)
@pytest.mark.parametrize("n,k", UVIT["L2"])
@pytest.mark.parametrize("family", FAMILIES)
def test_split_k_matches_reference(monkeypatch, family, n, k, m, splits):
    _need_cuda_backend()
    op, args, ref = _family_call(family, n, k, m, torch.float16, seed=n + k + m + splits)
    y = _run_split(monkeypatch, op, args, splits)
    assert y.shape == (m, n) and y.dtype == torch.float16
    _check_family(family, y, ref)
    if family != "sparse16":
        # The int32 slice sums add up to exactly the fused kernel's int32 sum, and the epilogue
        # is the same function: split and fused outputs are bit-identical.
        assert torch.equal(y, _run_split(monkeypatch, op, args, 1))


# Every reduction kernel instantiation (float32 sums -> f16/bf16, int32 sums -> f16/bf16/f32);
# every activation on the 2:4 f16/bf16 GEMM (the int8 activations: test_int8_activation_epilogue).
EPILOGUE_CASES = [("sparse16", dtype, act) for dtype in (torch.float16, torch.bfloat16) for act in checks.ACTIVATIONS] + [
    ("sparse8", torch.float16, "none"), ("sparse8", torch.bfloat16, "none"), ("sparse8", torch.float32, "none"),
    ("dense8", torch.float32, "none"),
]


@pytest.mark.parametrize("family,dtype,activation", EPILOGUE_CASES)
def test_split_k_epilogue_every_output_dtype(monkeypatch, family, dtype, activation):
    _need_cuda_backend()
    op, args, ref = _family_call(family, 1024, 4096, 7, dtype, activation=activation, seed=3)
    y = _run_split(monkeypatch, op, args, 5)
    assert y.dtype == dtype
    _check_family(family, y, ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_split_k_is_deterministic(monkeypatch, family):
    """Slices are summed in slice order by one thread per element: two runs are bit-equal."""
    _need_cuda_backend()
    op, args, _ = _family_call(family, 1024, 4096, 33, torch.float16, seed=11)
    y1 = _run_split(monkeypatch, op, args, 7)
    y2 = _run_split(monkeypatch, op, args, 7)
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("m", [3, 300], ids=["small-tile", "large-tile"])
def test_private_ops_residual_every_family(m):
    """The residual input (added after the activation) of the three GEMM families, on both tiles,
    against the reference plus the residual."""
    _need_cuda_backend()
    from sparsedm.ops import cuda_backend

    torch.manual_seed(11 + m)
    n, k = 256, 512
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    res = torch.randn(m, n, device="cuda", dtype=torch.float16)
    bias = torch.randn(n, device="cuda")
    silu = cuda_backend.ACTIVATION_CODES["silu"]
    values, meta = _sparse_weight(n, k, torch.float16)
    w, mw = cuda_backend.relayout(values, meta, cuda_backend.SP16, n, k)
    y = torch.ops.sparsedm._cuda_sparse24_gemm(x, w, mw, bias, res, n, silu, 0)
    ref = reference.sparse24_linear(x.double(), values.double(), meta, bias.double(), "silu") + res.double()
    assert _rel_err(y, ref) < 3e-3, "sparse16 residual"
    wd = torch.randn(n, k, device="cuda")
    q, s_x = torch.ops.sparsedm._cuda_quantize_rows(x, None)
    for family in (cuda_backend.SP8, cuda_backend.D8):
        if family == cuda_backend.SP8:
            vals, meta8 = compress24(_pruned(wd))
            vq, w_scale = quantize_weight_int8(vals)
            w8, m8 = cuda_backend.relayout(vq, meta8, family, n, k)
            ref8 = reference.sparse24_int8_linear(x, vq, meta8, w_scale, bias, None, "silu")
        else:
            w_q, w_scale = quantize_weight_int8(wd)
            w8, m8 = cuda_backend.relayout(w_q, None, family, n, k)[0], None
            ref8 = reference.int8_linear(x, w_q, w_scale, bias, None, "silu")
        y8 = torch.ops.sparsedm._cuda_int8_gemm(q, s_x, w8, m8, w_scale, bias, res, family, n, torch.float16, silu, 0)
        expected = ref8.double() + res.double()
        assert _rel_err(y8, expected) < 2e-3, f"int8 family {family} residual"


def test_split_k_private_op_residual_and_auto_rule():
    """The private op's split_k argument with a residual (added after the activation), and the
    automatic rule (split_k=0) at M = 1, where it splits the U-ViT-L/2 proj layer."""
    _need_cuda_backend()
    from sparsedm.ops import cuda_backend

    torch.manual_seed(5)
    n, k, m = 1024, 1024, 3
    values, meta = _sparse_weight(n, k, torch.float16)
    w, mw = cuda_backend.relayout(values, meta, cuda_backend.SP16, n, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    res = torch.randn(m, n, device="cuda", dtype=torch.float16)
    bias = torch.randn(n, device="cuda")
    gelu = cuda_backend.ACTIVATION_CODES["gelu"]
    ref = reference.sparse24_linear(x.double(), values.double(), meta, bias.double(), "gelu") + res.double()
    for split_k in (0, 1, 3, 16):
        y = torch.ops.sparsedm._cuda_sparse24_gemm(x, w, mw, bias, res, n, gelu, split_k)
        assert _rel_err(y, ref) < 3e-3, f"split_k={split_k}"


@pytest.mark.parametrize("k", [640, 4096])  # multiples of the int8 K stage (128); 640 is no power of two
def test_quantize_rows_nan_row_like_torch(k):
    """A NaN makes its row's scale NaN and codes 0, as torch's amax (fmaxf alone would skip it
    and give a finite, wrong row); the int8 GEMM's output row is then NaN, the others exact."""
    _need_cuda_backend()
    from sparsedm.formats import quantize_activation_int8

    torch.manual_seed(k)
    x = torch.randn(6, k, device="cuda", dtype=torch.float16)
    x[3, k // 3] = float("nan")
    q, s_x = torch.ops.sparsedm._cuda_quantize_rows(x, None)
    ref_q, ref_s = quantize_activation_int8(x)
    assert torch.isnan(s_x[3]) and torch.equal(q[3], ref_q[3]) and not q[3].any()
    rows = [0, 1, 2, 4, 5]
    assert torch.equal(q[rows], ref_q[rows]) and torch.equal(s_x[rows], ref_s[rows])
    w_q, w_scale = quantize_weight_int8(torch.randn(64, k, device="cuda"))
    with registry.use_backend("cuda"):
        y = torch.ops.sparsedm.int8_linear(x, w_q, w_scale, None, None)
    assert torch.isnan(y[3]).all() and not torch.isnan(y[rows]).any()


def test_private_ops_refuse_bad_arguments():
    """The private ops check what the kernels would otherwise read out of bounds or divide by:
    re-layout word counts (a weight of another shape), a re-layout source of the wrong element
    size or off a 4-byte boundary, K = 0, the int8 family, a conv stride of 0 and a weight relaid
    for another Cin. Each is a readable RuntimeError, not a crash."""
    _need_cuda_backend()
    from sparsedm.ops import cuda_backend

    n, k = 256, 512
    values, meta = _sparse_weight(n, k, torch.float16)
    w, mw = cuda_backend.relayout(values, meta, cuda_backend.SP16, n, k)
    x = torch.randn(3, k, device="cuda", dtype=torch.float16)
    gemm = torch.ops.sparsedm._cuda_sparse24_gemm
    with pytest.raises(RuntimeError, match="w must be the int32 re-layout of an N=256 K=256"):
        gemm(x[:, :256].contiguous(), w, mw, None, None, n, 0, 0)  # w was laid out for K = 512
    with pytest.raises(RuntimeError, match="meta must be the int32 re-layout"):
        gemm(x, w, mw[:-1].contiguous(), None, None, n, 0, 0)
    relayout24 = torch.ops.sparsedm._cuda_relayout24
    with pytest.raises(RuntimeError, match="src must hold float16/bfloat16 values"):
        relayout24(values.float(), meta, cuda_backend.SP16, n, k)  # 4-byte elements would be read as pairs
    with pytest.raises(RuntimeError, match="src must hold int8 values"):
        relayout24(values, meta, cuda_backend.SP8, n, k)
    shifted = torch.empty(values.numel() + 1, device="cuda", dtype=values.dtype)[1:].view_as(values).copy_(values)
    with pytest.raises(RuntimeError, match="4-byte boundary"):
        relayout24(shifted, meta, cuda_backend.SP16, n, k)
    assert torch.equal(relayout24(shifted.clone(), meta, cuda_backend.SP16, n, k)[0], w)  # the fix the message names
    with pytest.raises(RuntimeError, match="non-empty last dimension"):
        gemm(x[:, :0].contiguous(), w, mw, None, None, n, 0, 0)
    with pytest.raises(RuntimeError, match="non-empty last dimension"):
        torch.ops.sparsedm._cuda_quantize_rows(x[:, :0].contiguous(), None)
    q, s_x = torch.ops.sparsedm._cuda_quantize_rows(x, None)
    w_q, w_scale = quantize_weight_int8(torch.randn(n, k, device="cuda"))
    w8, _ = cuda_backend.relayout(w_q, None, cuda_backend.D8, n, k)
    with pytest.raises(RuntimeError, match="family must be SP8"):
        torch.ops.sparsedm._cuda_int8_gemm(q, s_x, w8, None, w_scale, None, None, cuda_backend.SP16, n, torch.float16, 0, 0)
    y = torch.ops.sparsedm._cuda_int8_gemm(q, s_x, w8, None, w_scale, None, None, cuda_backend.D8, n, torch.float16, 0, 0)
    assert (y != reference.int8_linear(x, w_q, w_scale, None, None)).float().mean() < 1e-3  # the valid call still works
    conv = torch.ops.sparsedm._cuda_sparse24_conv2d
    cv, cm = compress24(_pruned(torch.randn(64, 64, 3, 3, device="cuda", dtype=torch.float16)))
    cw, cmw = cuda_backend.relayout(cv, cm, cuda_backend.SP16, 64, 576, k_padded=cuda_backend.conv_k_padded(576))
    xc = torch.randn(1, 64, 8, 8, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    assert conv(xc, cw, cmw, None, None, 64, 3, 3, [1, 1], [1, 1], [1, 1], 0).shape == (1, 64, 8, 8)
    with pytest.raises(RuntimeError, match="stride and dilation must be positive"):
        conv(xc, cw, cmw, None, None, 64, 3, 3, [0, 1], [1, 1], [1, 1], 0)
    with pytest.raises(RuntimeError, match="w must be the int32 re-layout"):
        conv(xc[:, :32].contiguous(memory_format=torch.channels_last), cw, cmw, None, None, 64, 3, 3, [1, 1], [1, 1], [1, 1], 0)


def test_huge_m_grid_layers():
    """M past 65535 token tiles of the large tile (65535 * 64): the grid is laid out in gridDim.z
    layers. Rows near the layer boundary and the last rows against the reference."""
    _need_cuda_backend()
    torch.manual_seed(7)
    m, n, k = 65535 * 64 + 1000, 16, 128  # 2 layers, the last one short
    w = torch.randn(n, k, device="cuda")
    w_q, w_scale = quantize_weight_int8(w)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    with registry.use_backend("cuda"):
        y = torch.ops.sparsedm.int8_linear(x, w_q, w_scale, None, None)
    tiles = -(-m // 64)
    boundary = -(-tiles // 2) * 64  # first token of the second layer: gridDim.y = ceil(tiles / 2)
    rows = torch.cat([torch.arange(0, 256), torch.arange(boundary - 256, boundary + 256), torch.arange(m - 256, m)]).cuda()
    ref = reference.int8_linear(x[rows], w_q, w_scale, None, None)
    assert (y[rows] != ref).float().mean().item() < 1e-3
    max_err = (y[rows].float() - ref.float()).abs().max().item()
    assert max_err <= 1e-2 * ref.float().abs().max().item(), f"max abs error {max_err:.3e} is not a rounding difference"
    values, meta = _sparse_weight(n, 64, torch.float16)
    x16 = torch.randn(m, 64, device="cuda", dtype=torch.float16)
    with registry.use_backend("cuda"):
        y16 = torch.ops.sparsedm.sparse24_linear(x16, values, meta, None, "none")
    ref16 = reference.sparse24_linear(x16[rows].double(), values.double(), meta, None, "none")
    assert _rel_err(y16[rows], ref16) < 3e-3
