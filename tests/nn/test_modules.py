"""SparseLinear, SparseConv2d, Int8Linear, Sparse24Int8Linear against the masked dense layers."""

import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sparsedm
from sparsedm.formats import Sparse24FormatError, mask24
from sparsedm.nn import Int8Linear, Sparse24Int8Linear, SparseConv2d, SparseLinear
from tests.helpers import TOLERANCES, assert_close_rel, randn

# int8 W8A8 against the fp32 layer: per-token activation and per-channel weight rounding,
# each at most half a step of max|row| / 127, gives a few 1e-3 relative on random data.
INT8_RTOL = 2e-2


def _linear(k, n, bias=True, seed=0, sparse=True):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias).requires_grad_(False)
    with torch.no_grad():
        lin.weight.normal_()
        if bias:
            lin.bias.normal_()
        if sparse:
            lin.weight.mul_(mask24(lin.weight))
    return lin


def _conv(cin, cout, k=3, seed=0, sparse=True, **kw):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, **kw).requires_grad_(False)
    with torch.no_grad():
        conv.weight.normal_()
        conv.bias.normal_()
        if sparse:
            conv.weight.mul_(mask24(conv.weight))
    return conv


@pytest.mark.parametrize("shape", [(32,), (3, 32), (2, 17, 32), (1, 1, 1, 32)])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_matches_masked_dense(shape, bias):
    lin = _linear(32, 24, bias=bias)
    mod = SparseLinear.from_dense(lin)
    x = randn(*shape, seed=1)
    assert_close_rel(mod(x), lin(x), TOLERANCES[torch.float32], f"SparseLinear {shape}")
    assert torch.equal(mod.dense_weight(), lin.weight)


def test_sparse_linear_prune_and_errors():
    dense = _linear(32, 16, sparse=False)
    with pytest.raises(Sparse24FormatError, match="not 2:4 sparse.*prune=True"):
        SparseLinear.from_dense(dense)
    mod = SparseLinear.from_dense(dense, prune=True)
    assert torch.equal(mod.dense_weight(), dense.weight * mask24(dense.weight))
    with pytest.raises(Sparse24FormatError, match="in_features=30 is not a multiple of 8"):
        SparseLinear.from_dense(nn.Linear(30, 16), prune=True)


@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_sparse_linear_fused_activation(activation):
    lin = _linear(16, 8)
    mod = SparseLinear.from_dense(lin, activation=activation)
    x = randn(5, 16, seed=2)
    ref = F.gelu(lin(x)) if activation == "gelu" else F.silu(lin(x))
    assert_close_rel(mod(x), ref, TOLERANCES[torch.float32], activation)


@pytest.mark.parametrize(
    "kw",
    [dict(padding=1), dict(stride=2, padding=1), dict(dilation=2, padding=2), dict(padding="same"), dict(k=1), dict(padding="valid")],
)
def test_sparse_conv_matches_masked_dense(kw):
    kw = dict(kw)
    conv = _conv(16, 8, kw.pop("k", 3), **kw)
    mod = SparseConv2d.from_dense(conv)
    x = randn(2, 16, 9, 9, seed=3)
    assert_close_rel(mod(x), conv(x), TOLERANCES[torch.float32], f"conv {kw}")
    # channels_last in, channels_last out; unbatched input like nn.Conv2d
    y_cl = mod(x.contiguous(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    assert_close_rel(y_cl, conv(x), TOLERANCES[torch.float32], "channels_last")
    assert_close_rel(mod(x[0]), conv(x[0]), TOLERANCES[torch.float32], "unbatched")


def test_sparse_conv_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="groups=2: the 2:4 conv op handles groups=1 only"):
        SparseConv2d.from_dense(nn.Conv2d(16, 16, 3, groups=2))
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        SparseConv2d.from_dense(nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="K = Cin\\*kh\\*kw = 27 is not a multiple of 8"):
        SparseConv2d.from_dense(nn.Conv2d(3, 16, 3))
    with pytest.raises(ValueError, match="asymmetric"):
        SparseConv2d.from_dense(nn.Conv2d(16, 16, 2, padding="same"))


def test_int8_linear_within_bound_and_exact_contract():
    lin = _linear(64, 32, sparse=False)
    mod = Int8Linear.from_dense(lin)
    x = randn(4, 7, 64, seed=4)
    assert_close_rel(mod(x), lin(x), INT8_RTOL, "Int8Linear vs fp32")
    # the contract itself: dequantized weight, per-token quantized x
    q, s = sparsedm.formats.quantize_activation_int8(x)
    expected = (q.double() @ mod.w_q.double().t()).float() * s[..., None] * mod.w_scale + lin.bias
    assert_close_rel(mod(x), expected, 1e-6, "Int8Linear contract")
    static = Int8Linear.from_dense(lin, x_scale=float(x.abs().max() / 127))
    assert static.x_scale.shape == (1,)
    assert_close_rel(static(x), lin(x), 5e-2, "Int8Linear static scale")


def test_sparse24_int8_linear():
    lin = _linear(64, 32)
    mod = Sparse24Int8Linear.from_dense(lin)
    x = randn(9, 64, seed=5)
    assert_close_rel(mod(x), lin(x), INT8_RTOL, "Sparse24Int8Linear vs fp32")
    assert bool(((mod.dense_weight() != 0) <= (lin.weight != 0)).all()), "int8 weight has nonzeros the 2:4 mask removed"
    pruned = Sparse24Int8Linear.from_dense(_linear(64, 32, sparse=False), prune=True)
    assert pruned.values_q.dtype == torch.int8 and pruned.meta.shape == (32, 8)


def _all_modules():
    lin, conv = _linear(32, 16), _conv(8, 16, padding=1)
    return [
        (SparseLinear.from_dense(lin), lambda: SparseLinear(32, 16, device="meta"), randn(3, 32, seed=6)),
        (SparseConv2d.from_dense(conv), lambda: SparseConv2d(8, 16, 3, padding=1, device="meta"), randn(2, 8, 5, 5, seed=6)),
        (Int8Linear.from_dense(lin), lambda: Int8Linear(32, 16, device="meta"), randn(3, 32, seed=6)),
        (Sparse24Int8Linear.from_dense(lin, x_scale=0.05), lambda: Sparse24Int8Linear(32, 16, static_x_scale=True, device="meta"), randn(3, 32, seed=6)),
    ]


@pytest.mark.parametrize("index", range(4))
def test_state_dict_round_trip_on_meta(index):
    module, fresh, x = _all_modules()[index]
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert "weight_shape" in state and all(v.device.type == "cpu" for v in state.values())
    loaded = fresh()
    loaded.load_state_dict(state, assign=True, strict=True)
    assert torch.equal(loaded(x), module(x))
    assert set(state) == set(loaded.state_dict())


def test_state_dict_shape_mismatch_is_explained():
    state = SparseConv2d.from_dense(_conv(8, 16, padding=1)).state_dict()
    wrong = SparseConv2d(72, 16, 1, device="meta")  # same values shape [16, 36], different weight
    with pytest.raises(RuntimeError, match=r"holds a layer of weight shape \[16, 8, 3, 3\]"):
        wrong.load_state_dict(state, assign=True)


def test_scales_stay_float32_under_half_and_repr():
    mod = Sparse24Int8Linear.from_dense(_linear(32, 16), x_scale=0.1).half()
    assert mod.w_scale.dtype == torch.float32 and mod.x_scale.dtype == torch.float32 and mod.bias.dtype == torch.float16
    sparse = SparseLinear.from_dense(_linear(32, 16)).to(torch.float64)
    assert sparse.values.dtype == torch.float64 and sparse.meta.dtype == torch.uint8
    text = repr(sparse)
    assert "in_features=32" in text and "format=2:4 float64" in text and "backend=auto" in text
    assert "format=2:4 int8 per-channel" in repr(mod) and "static scale" in repr(mod)


def test_backend_attribute_is_passed_to_ops():
    lin = _linear(32, 16)
    x = randn(2, 32, seed=7)
    forced = SparseLinear.from_dense(lin, backend="reference")
    before = sparsedm.ops.dispatch_counts[("sparse24_linear", "reference")]
    forced(x)
    assert sparsedm.ops.dispatch_counts[("sparse24_linear", "reference")] == before + 1
    with pytest.raises(sparsedm.BackendUnavailableError, match="backend 'cutlass' was forced"):
        SparseLinear.from_dense(lin, backend="cutlass")(x)


@pytest.mark.parametrize("index", range(4))
def test_torch_compile_fullgraph_equals_eager(index):
    module, _, x = _all_modules()[index]
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)
    assert torch.equal(compiled(x), module(x)) or torch.allclose(compiled(x), module(x), rtol=1e-6, atol=1e-6)


def _gpu_modules():
    """Each module kind at a size the GPU kernels take, fp16 on CUDA, with an input maker."""
    lin, conv = _linear(256, 128, seed=3), _conv(64, 64, padding=1, seed=4)
    half = dict(device="cuda", dtype=torch.float16)
    return [
        (SparseLinear.from_dense(lin).to(**half), lambda s: randn(7, 256, seed=s).to(**half)),
        (SparseConv2d.from_dense(conv).to(**half), lambda s: randn(2, 64, 9, 9, seed=s).to(**half)),
        (Int8Linear.from_dense(lin).to(**half), lambda s: randn(33, 256, seed=s).to(**half)),
        (Sparse24Int8Linear.from_dense(lin).to(**half), lambda s: randn(33, 256, seed=s).to(**half)),
    ]


@pytest.mark.gpu
@pytest.mark.parametrize("index", range(4), ids=["SparseLinear", "SparseConv2d", "Int8Linear", "Sparse24Int8Linear"])
def test_cuda_graph_replay_with_new_inputs_equals_eager(index):
    """Capture once on a static input buffer, copy new data into it, replay: the result is the
    eager module's on the new data (nothing of the captured call's input is baked in)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    module, make = _gpu_modules()[index]
    static = make(1)
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside capture: backend choice and layouts
            for _ in range(2):
                module(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = module(static)
        for seed in (2, 3):
            fresh = make(seed)
            static.copy_(fresh)
            graph.replay()
            torch.cuda.synchronize()
            expected = module(fresh)
            assert_close_rel(out, expected, 1e-3, f"{type(module).__name__} replay, input seed {seed}")
