"""The ``cusparselt`` and ``cutlass`` backends (torch's own 2:4 GEMMs behind sparse24_linear).

On the CPU torch's semi-structured tensors cannot be built, so the glue (shape handling, bias
cast, activation, the weight cache) is checked with a stand-in weight class that keeps the
dense weight; the GPU tests run torch's real kernels against the reference.
"""

import pytest
import torch

from sparsedm.formats import compress24
from sparsedm.formats.sparse24 import mask24
from sparsedm.ops import checks, reference, registry, torch_sparse
from tests.helpers import assert_close_rel, need_backend


def _weight(n, k, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).to(device=device, dtype=dtype)
    return compress24(w * mask24(w))


class _DenseStandIn:
    """from_dense keeps the dense weight (so F.linear runs on the CPU) and counts conversions."""

    built = 0
    _DTYPE_SHAPE_CONSTRAINTS = {}

    @classmethod
    def from_dense(cls, w):
        cls.built += 1
        return w.clone()


@pytest.fixture
def stand_in(monkeypatch):
    _DenseStandIn.built = 0
    monkeypatch.setattr(torch_sparse, "_tensor_class", lambda backend: _DenseStandIn)
    torch_sparse.clear_cache()
    yield _DenseStandIn
    torch_sparse.clear_cache()


@pytest.mark.parametrize("activation", checks.ACTIVATIONS)
@pytest.mark.parametrize("backend", ["cusparselt", "cutlass"])
def test_glue_matches_the_reference(stand_in, backend, activation):
    values, meta = _weight(48, 64, seed=1)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(2))[:, :, :]
    x = x.transpose(0, 1).contiguous().transpose(0, 1)  # leading dims not contiguous
    bias = torch.randn(48, dtype=torch.float64)  # cast to x's dtype by the kernel
    kernel = registry.get_backend(backend).kernels["sparse24_linear"].fn
    y = kernel(x, values, meta, bias, activation)
    ref = reference.sparse24_linear(x, values, meta, bias.float(), activation)
    assert y.shape == (2, 5, 48)
    assert_close_rel(y, ref, 1e-6, f"{backend} {activation}")


def test_weight_cache_is_rebuilt_when_the_weight_changes(stand_in):
    values, meta = _weight(16, 32, seed=3)
    kernel = registry.get_backend("cusparselt").kernels["sparse24_linear"].fn
    x = torch.randn(3, 32)
    y1 = kernel(x, values, meta, None, "none")
    kernel(x, values, meta, None, "none")
    assert stand_in.built == 1  # converted once, then cached
    with torch.no_grad():
        values.mul_(2)  # in place: the version counter moves
    y2 = kernel(x, values, meta, None, "none")
    assert stand_in.built == 2
    assert_close_rel(y2, 2 * y1, 1e-6, "rebuilt after an in-place change")


def test_supports_names_what_is_missing():
    values, meta = _weight(48, 64)
    x = torch.randn(3, 64)
    for backend in ("cusparselt", "cutlass"):
        supports = registry.get_backend(backend).kernels["sparse24_linear"].supports
        assert "needs CUDA tensors" in supports(x, values, meta, None, "none")


def _gpu_case(backend, n, k, m, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if backend == "cutlass" and torch.cuda.get_device_capability()[0] != 8:
        pytest.skip("torch's CUTLASS 2:4 kernels run on compute capability 8.x only")
    need_backend(backend)
    values, meta = _weight(n, k, dtype=dtype, device="cuda", seed=n + k + m)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    bias = torch.randn(n, device="cuda", dtype=dtype)
    return x, values, meta, bias


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 7, 128, 1040])
@pytest.mark.parametrize("n,k", [(1536, 512), (512, 2048), (3072, 1024), (1024, 4096)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["cusparselt", "cutlass"])
def test_gpu_uvit_linears(backend, dtype, n, k, m):
    x, values, meta, bias = _gpu_case(backend, n, k, m, dtype)
    with registry.use_backend(backend):
        y = torch.ops.sparsedm.sparse24_linear(x, values, meta, bias, "gelu")
    ref = reference.sparse24_linear(x.double(), values.double(), meta, bias.double(), "gelu")
    assert y.dtype == dtype and y.shape == (m, n)
    assert registry.dispatch_counts[("sparse24_linear", backend)] > 0
    assert_close_rel(y, ref, 1e-2 if dtype == torch.bfloat16 else 3e-3, f"{backend} {dtype} M={m} N={n} K={k}")


def test_forget_drops_one_backends_weight(stand_in):
    values, meta = _weight(16, 32, seed=4)
    x = torch.randn(2, 32)
    for backend in ("cusparselt", "cutlass"):
        registry.get_backend(backend).kernels["sparse24_linear"].fn(x, values, meta, None, "none")
    assert stand_in.built == 2
    torch_sparse.forget((x, values, meta), "cutlass")  # the autotuner's call for a losing backend
    registry.get_backend("cusparselt").kernels["sparse24_linear"].fn(x, values, meta, None, "none")
    assert stand_in.built == 2  # cuSPARSELt's weight is still cached
    registry.get_backend("cutlass").kernels["sparse24_linear"].fn(x, values, meta, None, "none")
    assert stand_in.built == 3  # CUTLASS's was dropped and is rebuilt


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cusparselt", "cutlass"])
def test_gpu_under_torch_compile(backend):
    """The output's layout matches the op's fake (row-major), so torch.compile accepts it."""
    x, values, meta, bias = _gpu_case(backend, 1024, 1024, 65, torch.float16)
    fn = torch.compile(lambda x: torch.ops.sparsedm.sparse24_linear(x, values, meta, bias, "silu"), fullgraph=True)
    with registry.use_backend(backend):
        y = fn(x)
        eager = torch.ops.sparsedm.sparse24_linear(x, values, meta, bias, "silu")
    assert y.is_contiguous() and torch.equal(y, eager)
