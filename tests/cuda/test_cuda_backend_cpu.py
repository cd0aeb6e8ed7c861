"""The cuda backend's Python glue on a machine without the CUDA kernels: it imports, the
backend says why it is unavailable, and ``supports`` gives readable reasons."""

import importlib

import torch

from sparsedm.formats import compress24
from sparsedm.formats.sparse24 import mask24
from sparsedm.ops import registry


def _pruned(w):
    return w * mask24(w)


def test_module_imports_and_registers_kernels():
    mod = importlib.import_module("sparsedm.ops.cuda_backend")
    kernels = registry.get_backend("cuda").kernels
    for op in ("sparse24_linear", "int8_linear", "sparse24_int8_linear"):
        assert op in kernels
    assert mod.K_MULTIPLE[mod.SP16] == 64 and mod.K_MULTIPLE[mod.D8] == 128


def test_backend_reports_why_unavailable():
    reason = registry.get_backend("cuda").unavailable_reason()
    if not torch.cuda.is_available():
        assert reason  # CPU torch, a CPU-only _C, or no GPU: always explained


def test_supports_rejects_cpu_tensors_with_a_reason():
    from sparsedm.ops import cuda_backend

    values, meta = compress24(_pruned(torch.randn(32, 64)))
    x = torch.randn(2, 64)
    reason = cuda_backend.supports_sparse24_linear(x, values, meta, None, "none")
    assert reason and "CUDA tensors" in reason


def test_shape_reasons_name_the_constraint():
    from sparsedm.ops import cuda_backend

    assert "multiple of 16" in cuda_backend._shape_reason("sparse24_linear", 24, 64, cuda_backend.SP16)
    msg = cuda_backend._shape_reason("sparse24_linear", 32, 96, cuda_backend.SP16)
    assert "K=96" in msg and "64" in msg
    assert cuda_backend._shape_reason("int8_linear", 32, 128, cuda_backend.D8) is None


def test_relayout_cache_hits_and_invalidates(monkeypatch):
    """The per-weight re-layout cache: a second call with the same weight reuses the result
    (this once failed on the second call), an in-place change re-lays out, and a new tensor
    gets its own entry."""
    from sparsedm.ops import cuda_backend

    calls = []

    def fake_relayout(src, meta, family, n, k):
        calls.append((tuple(src.shape), family, n, k))
        return src.clone(), None if meta is None else meta.clone()

    class FakeOps:
        _cuda_relayout24 = staticmethod(fake_relayout)

    monkeypatch.setattr(cuda_backend.torch.ops, "sparsedm", FakeOps)
    values, meta = compress24(_pruned(torch.randn(32, 64)))
    first = cuda_backend.relayout(values, meta, cuda_backend.SP16, 32, 64)
    second = cuda_backend.relayout(values, meta, cuda_backend.SP16, 32, 64)
    assert len(calls) == 1 and second is first
    values.mul_(2)  # bumps the version counter: the cached layout is stale
    cuda_backend.relayout(values, meta, cuda_backend.SP16, 32, 64)
    assert len(calls) == 2
    other_values, other_meta = compress24(_pruned(torch.randn(32, 64)))
    cuda_backend.relayout(other_values, other_meta, cuda_backend.SP16, 32, 64)
    assert len(calls) == 3
