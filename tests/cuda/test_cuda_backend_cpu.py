"""The cuda backend's Python glue on a machine without the CUDA kernels: it imports, the
backend says why it is unavailable, and ``supports`` gives readable reasons."""

import importlib

import pytest
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


def test_token_limit_reasons():
    """The one size limit left (int32 token indices, csrc/cuda/gemm_api.h SPARSEDM_MAX_TOKENS):
    no 65535 grid limit, a readable reason past 2^31 - 2^18 tokens. Meta tensors: no memory."""
    from sparsedm.ops import cuda_backend

    assert cuda_backend.MAX_TOKENS == 2**31 - 2**18
    assert cuda_backend._tokens_reason("int8_linear", 65536 * 64 + 1) is None
    assert cuda_backend._shape_reason("int8_linear", 32, 128, cuda_backend.D8, cuda_backend.MAX_TOKENS) is None
    msg = cuda_backend._shape_reason("int8_linear", 32, 128, cuda_backend.D8, cuda_backend.MAX_TOKENS + 1)
    assert msg and f"M={cuda_backend.MAX_TOKENS + 1}" in msg and "another backend" in msg

    def conv_reason(n, c, h, w, kh=3, stride=1, padding=1):
        x = torch.empty(n, c, h, w, device="meta")
        return cuda_backend._conv_size_reason(x, [16, c, kh, kh], [stride, 1], [padding, padding], [1, 1])

    assert conv_reason(64, 8, 256, 256) is None  # M = 2^22 pixels: 65536 tiles of 64, two grid layers
    reason = conv_reason(2**15 + 1, 8, 256, 256)  # M past 2^31 - 2^18
    assert reason and "N*P*Q" in reason
    reason = conv_reason(2**11, 8, 2**20, 1, kh=1, stride=2**20, padding=0)  # 2^11 pixels, but N*H = 2^31
    assert reason and "N*H" in reason


def test_split_k_env_var(monkeypatch):
    from sparsedm.ops import cuda_backend

    monkeypatch.delenv("SPARSEDM_CUDA_SPLIT_K", raising=False)
    assert cuda_backend._split_k_from_env() == 0
    monkeypatch.setenv("SPARSEDM_CUDA_SPLIT_K", "3")
    assert cuda_backend._split_k_from_env() == 3
    for bad in ("-1", "two", "\u00b2", "1.5"):
        monkeypatch.setenv("SPARSEDM_CUDA_SPLIT_K", bad)
        with pytest.raises(ValueError, match="SPARSEDM_CUDA_SPLIT_K must be a non-negative integer"):
            cuda_backend._split_k_from_env()


@pytest.mark.parametrize("activation", ["none", "gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_int8_glue_passes_the_activation_code(monkeypatch, sparse, activation):
    """The int8 ops' activation reaches the private GEMM op as the kernel's code (same order
    as checks.ACTIVATIONS), with stubbed private ops."""
    from sparsedm.formats import quantize_weight_int8
    from sparsedm.ops import checks, cuda_backend

    seen = {}

    class FakeOps:
        _cuda_relayout24 = staticmethod(lambda src, meta, family, n, k: (src.clone(), None if meta is None else meta.clone()))
        _cuda_quantize_rows = staticmethod(lambda x, static: (torch.zeros_like(x, dtype=torch.int8), torch.ones(x.shape[0])))

        @staticmethod
        def _cuda_int8_gemm(q, s_x, w, m, w_scale, bias, residual, family, n, dtype, act, split_k):
            seen.update(family=family, act=act, n=n)
            return torch.zeros(q.shape[0], n, dtype=dtype)

    monkeypatch.setattr(cuda_backend.torch.ops, "sparsedm", FakeOps)
    w = torch.randn(32, 64)
    w_q, w_scale = quantize_weight_int8(_pruned(w) if sparse else w)
    x = torch.randn(3, 64)
    if sparse:
        values_q, meta = compress24(w_q)
        y = cuda_backend.sparse24_int8_linear(x, values_q, meta, w_scale, None, None, activation)
    else:
        y = cuda_backend.int8_linear(x, w_q, w_scale, None, None, activation)
    assert y.shape == (3, 32)
    assert seen == {"family": cuda_backend.SP8 if sparse else cuda_backend.D8, "act": checks.ACTIVATIONS.index(activation),
                    "n": 32}
