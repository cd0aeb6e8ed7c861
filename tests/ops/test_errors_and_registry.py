"""Error paths of the ops and the backend registry's forcing rules."""

import pytest
import torch

import sparsedm
from sparsedm import ops
from sparsedm.formats import Sparse24FormatError, quantize_weight_int8
from sparsedm.ops import OpArgumentError, registry
from tests.helpers import randn, sparse_weight


@pytest.fixture
def layer():
    w, values, meta = sparse_weight((16, 32), seed=1)
    return w, values, meta


def test_linear_errors(layer):
    _, values, meta = layer
    x = randn(3, 32)
    with pytest.raises(OpArgumentError, match="x has K=24 features"):
        ops.sparse24_linear(randn(3, 24), values, meta)
    with pytest.raises(OpArgumentError, match="unknown activation 'relu'"):
        ops.sparse24_linear(x, values, meta, None, "relu")
    with pytest.raises(OpArgumentError, match="values are torch.float32 but x is torch.float16"):
        ops.sparse24_linear(x.half(), values, meta)
    with pytest.raises(OpArgumentError, match="meta must be uint8"):
        ops.sparse24_linear(x, values, meta.to(torch.int32))
    with pytest.raises(OpArgumentError, match=r"meta \[N, K/8\] has 3 columns"):
        ops.sparse24_linear(x, values, torch.zeros(16, 3, dtype=torch.uint8))
    with pytest.raises(OpArgumentError, match="bias has 4 elements but the layer has N=16"):
        ops.sparse24_linear(x, values, meta, torch.zeros(4))
    with pytest.raises(OpArgumentError, match="x must be float16, bfloat16, float32 or float64"):
        ops.sparse24_linear(x.to(torch.int32), values, meta)


def test_int8_errors():
    w_q, w_scale = quantize_weight_int8(randn(8, 16))
    x = randn(2, 16)
    with pytest.raises(OpArgumentError, match="w_q must be a 2-D int8 tensor"):
        ops.int8_linear(x, w_q.float(), w_scale)
    with pytest.raises(OpArgumentError, match="w_scale has 7 scales"):
        ops.int8_linear(x, w_q, w_scale[:7])
    with pytest.raises(OpArgumentError, match="x_scale must hold one static scale"):
        ops.int8_linear(x, w_q, w_scale, None, torch.ones(3))
    _, values, meta = sparse_weight((8, 16))
    with pytest.raises(OpArgumentError, match="values_q must be int8"):
        ops.sparse24_int8_linear(x, values, meta, w_scale)


def test_conv_errors():
    w, values, meta = sparse_weight((8, 8, 3, 3))
    x = randn(1, 8, 6, 6)
    with pytest.raises(OpArgumentError, match="x has C=4 channels but the weight expects Cin=8"):
        ops.sparse24_conv2d(randn(1, 4, 6, 6), values, meta, None, w.shape)
    with pytest.raises(OpArgumentError, match="do not match weight_shape"):
        ops.sparse24_conv2d(x, values, meta, None, [8, 8, 1, 1])
    with pytest.raises(OpArgumentError, match="too small"):
        ops.sparse24_conv2d(randn(1, 8, 2, 2), values, meta, None, w.shape)
    with pytest.raises(OpArgumentError, match="stride and dilation must be >= 1"):
        ops.sparse24_conv2d(x, values, meta, None, w.shape, [0, 1])
    with pytest.raises(OpArgumentError, match="x must be 4-D"):
        ops.sparse24_conv2d(randn(8, 6, 6), values, meta, None, w.shape)


def test_compress_op_errors():
    with pytest.raises(OpArgumentError, match="2-D weight"):
        ops.compress24(randn(8, 8, 3, 3))
    with pytest.raises(Sparse24FormatError, match="not 2:4 sparse: row 0, group 0"):
        ops.compress24(randn(4, 16) + 10)


def test_forced_unavailable_backend_raises_with_reason(layer, monkeypatch):
    _, values, meta = layer
    x = randn(2, 32)
    with pytest.raises(sparsedm.BackendUnavailableError, match="backend 'cuda' was forced .* cannot run sparse24_linear"):
        ops.sparse24_linear(x, values, meta, backend="cuda")
    with pytest.raises(sparsedm.BackendUnavailableError, match="unknown backend 'nope'"):
        ops.sparse24_linear(x, values, meta, backend="nope")
    monkeypatch.setenv("SPARSEDM_BACKEND", "cutlass")
    with pytest.raises(sparsedm.BackendUnavailableError, match="backend 'cutlass' was forced"):
        ops.sparse24_linear(x, values, meta)
    monkeypatch.setenv("SPARSEDM_BACKEND", "auto")
    assert torch.equal(ops.sparse24_linear(x, values, meta), ops.sparse24_linear(x, values, meta, backend="reference"))


def test_env_forces_reference_and_counts(layer, monkeypatch):
    _, values, meta = layer
    monkeypatch.setenv("SPARSEDM_BACKEND", "reference")
    before = ops.dispatch_counts[("sparse24_linear", "reference")]
    ops.sparse24_linear(randn(2, 32), values, meta)
    assert ops.dispatch_counts[("sparse24_linear", "reference")] == before + 1


def test_registering_a_backend_is_enough(layer):
    """A new backend becomes selectable by registering it and its kernels, nothing else."""
    _, values, meta = layer
    calls = []

    def fake_kernel(x, values, meta, bias, activation):
        calls.append(x.shape)
        return registry.get_backend("reference").kernels["sparse24_linear"].fn(x, values, meta, bias, activation)

    registry.register_backend("unit_test_backend", "test only", lambda: None)
    try:
        registry.register_kernel("sparse24_linear", "unit_test_backend", fake_kernel, supports=lambda x, *a: None if x.shape[0] < 4 else "x too tall")
        y = ops.sparse24_linear(randn(2, 32), values, meta, backend="unit_test_backend")
        assert calls == [torch.Size([2, 32])] and y.shape == (2, 16)
        with pytest.raises(sparsedm.BackendUnavailableError, match="x too tall"):
            ops.sparse24_linear(randn(5, 32), values, meta, backend="unit_test_backend")
        with pytest.raises(sparsedm.BackendUnavailableError, match="has no kernel for int8_linear"):
            w_q, s = quantize_weight_int8(randn(4, 32))
            ops.int8_linear(randn(2, 32), w_q, s, backend="unit_test_backend")
    finally:
        registry._BACKENDS.pop("unit_test_backend")


def test_backend_status_lists_reference():
    rows = {name: (ok, why) for name, ok, why, _ in ops.backend_status()}
    assert rows["reference"][0] is True
    for name in ("cuda", "cusparselt", "cutlass", "dense"):
        assert name in rows
        if not torch.cuda.is_available():
            assert rows[name][0] is False and rows[name][1]


def test_declared_ops_are_the_registered_kernels():
    """`sparsedm info --backends` lists a backend's declared ops where its kernels cannot load
    (no GPU): the declaration must match what each kernel module registers when imported."""
    import importlib

    for module in ("sparsedm.kernels", "sparsedm.ops.cuda_backend", "sparsedm.ops.torch_sparse", "sparsedm.ops.dense"):
        try:
            importlib.import_module(module)
        except ImportError as exc:  # e.g. triton missing: that backend's kernels cannot be compared here
            print(f"{module}: {exc}")
    compared = 0
    for name, _, _, listed in registry.backend_status():
        backend = registry.get_backend(name)
        assert listed, f"{name} lists no ops"
        if backend.kernels and not name.startswith("unit_test"):
            assert sorted(backend.kernels) == sorted(backend.provides), name
            compared += 1
    assert compared >= 5
