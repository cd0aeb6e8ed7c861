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
