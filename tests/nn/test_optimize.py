"""sparsedm.optimize on tiny U-ViT, DDPM UNet and diffusers UNets: same function, report, patterns."""

import copy
import logging

import pytest
import torch
import torch.nn as nn

import sparsedm
from sparsedm.formats import mask24
from sparsedm.models import build, sparse_layer_names
from sparsedm.nn import SparseLinear
from tests.helpers import assert_close_rel

FP32_RTOL = 1e-4
# Whole-model int8 (W8A8 on every swapped linear of a 4-block U-ViT) against the fp32 model.
INT8_MODEL_RTOL = 5e-2

TINY_UVIT = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4,
                 qkv_bias=True, mlp_time_embed=True, num_classes=10)
TINY_UNET = dict(in_channel=3, channel=32, channel_multiplier=[1, 2], n_res_blocks=1, attn_strides=[2], attn_heads=2,
                 use_affine_time=False, dropout=0.0, fold=1)


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.05))
    return model.eval().requires_grad_(False)


def _masked_copy(model, names):
    """The reference: the dense model with the 2:4 rule applied to the named layers."""
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    with torch.no_grad():
        for name in names:
            w = modules[name].weight
            w.mul_(mask24(w))
    return ref


def _uvit():
    return _randomize(build("uvit", TINY_UVIT, device="cpu"))


def _uvit_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 8, 8, generator=g), torch.tensor([10.0, 500.0]), torch.tensor([1, 7])


def test_uvit_sparsedm_layers_match_masked_dense():
    model = _uvit()
    names = sparse_layer_names("uvit", model)
    assert len(names) == 4 * 5 and all(n.rsplit(".", 2)[-2] in ("attn", "mlp") for n in names)
    ref = _masked_copy(model, names)
    sparsedm.optimize(model, prune=True, include=names, min_features=8)
    swapped = [r.name for r in sparsedm.last_report().changed]
    assert swapped == names
    assert all(isinstance(dict(model.named_modules())[n], SparseLinear) for n in names)
    x = _uvit_inputs()
    with torch.no_grad():
        assert_close_rel(model(*x), ref(*x), FP32_RTOL, "optimized U-ViT vs masked dense")


def test_uvit_int8_within_bound():
    model = _uvit()
    names = sparse_layer_names("uvit", model)
    ref = _masked_copy(model, names)
    sparsedm.optimize(model, prune=True, include=names, quant="int8", min_features=8)
    kinds = {r.kind for r in sparsedm.last_report().changed}
    assert kinds == {"Sparse24Int8Linear"}
    x = _uvit_inputs()
    with torch.no_grad():
        assert_close_rel(model(*x), ref(*x), INT8_MODEL_RTOL, "int8 U-ViT vs masked fp32")


def test_ddpm_unet_int8_within_bound():
    """quant="int8" on the DDPM UNet: 2:4 convs (no int8 conv op) and W8A8 linears, within the
    stated bound of the masked fp32 model (docs/RUNTIME.md)."""
    model = _randomize(build("ddpm_unet", TINY_UNET, device="cpu"))
    names = [n for n in sparse_layer_names("ddpm_unet", model) if n not in ("down.0", "out.2")]
    ref = _masked_copy(model, names)
    sparsedm.optimize(model, prune=True, include=names, quant="int8", min_features=8)
    kinds = {r.kind for r in sparsedm.last_report().changed}
    assert kinds == {"SparseConv2d", "Sparse24Int8Linear"}
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([3.0, 700.0])
    with torch.no_grad():
        assert_close_rel(model(x, t), ref(x, t), INT8_MODEL_RTOL, "int8 DDPM UNet vs masked fp32")


def test_ddpm_unet_all_convs_and_linears():
    model = _randomize(build("ddpm_unet", TINY_UNET, device="cpu"))
    names = sparse_layer_names("ddpm_unet", model)
    assert "down.0" in names and "out.2" in names and "time.1" in names
    report_rows = {}
    ref = _masked_copy(model, [n for n in names if n not in ("down.0", "out.2")])
    sparsedm.optimize(model, prune=True, min_features=8)
    report_rows = {r.name: r for r in sparsedm.last_report().rows}
    assert not report_rows["down.0"].changed and "K = Cin*kh*kw = 27" in report_rows["down.0"].reason
    assert not report_rows["out.2"].changed and "too small" in report_rows["out.2"].reason  # Cout = 3
    convs = [r for r in report_rows.values() if r.kind == "SparseConv2d"]
    assert len(convs) >= 10 and all(r.macs_after * 2 == r.macs_before for r in convs)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3.0, 700.0])
    with torch.no_grad():
        assert_close_rel(model(x, t), ref(x, t), FP32_RTOL, "optimized DDPM UNet vs masked dense")


def test_report_reasons_include_exclude_and_macs(caplog):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("odd", nn.Linear(30, 64))          # K % 8
    model.add_module("small", nn.Linear(64, 4))         # too small
    model.add_module("dense", nn.Linear(4, 64))         # K too small (min_features)
    model.add_module("mlp", nn.Sequential(nn.Linear(64, 128), nn.Linear(128, 64)))
    model.add_module("grouped", nn.Conv2d(64, 64, 3, groups=4))
    model.add_module("reflect", nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect"))
    model.add_module("attn", nn.MultiheadAttention(64, 4))
    with torch.no_grad():  # mlp.0 already 2:4, mlp.1 dense
        model.mlp[0].weight.mul_(mask24(model.mlp[0].weight))
    with caplog.at_level(logging.INFO, logger="sparsedm.nn"):
        out = sparsedm.optimize(model, exclude=["attn*"], min_features=16)
    assert out is model and model.sparsedm_report is sparsedm.last_report()
    rows = {r.name: r for r in sparsedm.last_report().rows}
    assert "K=30 is not a multiple of 8" in rows["odd"].reason
    assert "too small: min(N=4, K=64) < min_features=16" in rows["small"].reason
    assert "groups=4" in rows["grouped"].reason and "padding_mode='reflect'" in rows["reflect"].reason
    assert rows["attn.out_proj"].reason == "excluded by pattern 'attn*'"
    assert rows["mlp.0"].changed and rows["mlp.0"].reason == "weight is 2:4" and rows["mlp.0"].backend == "auto"
    assert not rows["mlp.1"].changed and "pass prune=True" in rows["mlp.1"].reason
    assert rows["mlp.0"].bytes_after < rows["mlp.0"].bytes_before * 0.6
    assert isinstance(model.mlp[0], SparseLinear) and isinstance(model.mlp[1], nn.Linear)
    assert "sparsedm.optimize" in caplog.text and "mlp.0" in caplog.text and "weight is 2:4" in caplog.text

    # MultiheadAttention uses out_proj.weight directly: never swapped, even when not excluded.
    sparsedm.optimize(model, prune=True, include=["attn.*"], min_features=16)
    rows = {r.name: r for r in sparsedm.last_report().rows}
    assert "nn.MultiheadAttention" in rows["attn.out_proj"].reason
    assert rows["mlp.1"].reason == "not matched by include"

    # int8: dense linears -> Int8Linear; MACs counted for an example input (tokens x N x K)
    model2 = nn.Sequential(nn.Linear(64, 128), nn.Linear(128, 64))
    with torch.no_grad():
        model2[0].weight.mul_(mask24(model2[0].weight))
    sparsedm.optimize(model2, quant="int8", min_features=16, example_inputs=(torch.randn(3, 5, 64),))
    rows = sparsedm.last_report().rows
    assert [r.kind for r in rows] == ["Sparse24Int8Linear", "Int8Linear"]
    assert rows[0].macs_before == 15 * 128 * 64 and rows[0].macs_after == rows[0].macs_before // 2
    assert rows[1].macs_before == rows[1].macs_after == 15 * 64 * 128
    table = sparsedm.last_report().table()
    assert "MACs before (example input)" in table and "total (2/2 swapped)" in table


def test_unknown_backend_and_quant_fail_early():
    with pytest.raises(sparsedm.BackendUnavailableError, match="unknown backend 'fast'"):
        sparsedm.optimize(nn.Linear(64, 64), backend="fast")
    with pytest.raises(ValueError, match="quant must be None or 'int8'"):
        sparsedm.optimize(nn.Linear(64, 64), quant="fp8")
    with pytest.raises(TypeError, match="optimize takes an nn.Module, got str; for a converted file use sparsedm.load"):
        sparsedm.optimize("model.safetensors")


def test_shared_module_swapped_everywhere():
    shared = nn.Linear(64, 64)
    model = nn.ModuleDict({"a": nn.Sequential(shared), "b": nn.Sequential(shared)})
    sparsedm.optimize(model, prune=True)
    assert model["a"][0] is model["b"][0] and isinstance(model["a"][0], SparseLinear)


def test_compiled_optimized_uvit_equals_eager():
    # depth 2 (one block each of in, mid, out): inductor's CPU codegen time grows with the graph.
    model = _randomize(build("uvit", {**TINY_UVIT, "depth": 2}, device="cpu"))
    sparsedm.optimize(model, prune=True, include=sparse_layer_names("uvit", model), min_features=8)
    x = _uvit_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        eager, out = model(*x), compiled(*x)
    assert_close_rel(out, eager, 1e-5, "torch.compile(fullgraph) vs eager")


@pytest.mark.gpu
def test_cuda_graph_of_optimized_uvit_equals_eager():
    model = _uvit().cuda().half()
    sparsedm.optimize(model, prune=True, include=sparse_layer_names("uvit", model), min_features=8)
    x, t, y = (v.cuda() for v in _uvit_inputs())
    x = x.half()
    with torch.no_grad():
        eager = model(x, t, y)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside capture: backend choice and layouts
            for _ in range(2):
                model(x, t, y)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(x, t, y)
        graph.replay()
        torch.cuda.synchronize()
    assert_close_rel(out, eager, 1e-3, "CUDA graph vs eager")


@pytest.mark.gpu
def test_compiled_optimized_unet_on_gpu():
    model = _randomize(build("ddpm_unet", TINY_UNET, device="cpu")).cuda().half()
    sparsedm.optimize(model, prune=True, min_features=8)
    x, t = torch.randn(2, 3, 8, 8, device="cuda", dtype=torch.half), torch.tensor([3.0, 700.0], device="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert_close_rel(compiled(x, t), model(x, t), 2e-3, "compiled UNet on GPU")


# -- diffusers ------------------------------------------------------------------------------


def test_diffusers_unet2d_model():
    diffusers = pytest.importorskip("diffusers")
    model = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8,
    )
    _randomize(model)
    ref = _masked_copy(model, [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
                               and m.weight.shape[0] >= 8 and (m.weight[0].numel() % 8 == 0)])
    sparsedm.optimize(model, prune=True, min_features=8)
    report = sparsedm.last_report()
    assert any(r.kind == "SparseConv2d" for r in report.rows) and any(r.kind == "SparseLinear" for r in report.rows)
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([5, 900])
    with torch.no_grad():
        assert_close_rel(model(x, t).sample, ref(x, t).sample, FP32_RTOL, "UNet2DModel")


def test_diffusers_unet2d_condition_model():
    diffusers = pytest.importorskip("diffusers")
    model = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
    )
    _randomize(model)
    dense = copy.deepcopy(model)
    sparsedm.optimize(model, prune=True, min_features=8, exclude=["conv_in", "conv_out"])
    report = sparsedm.last_report()
    swapped = [r.name for r in report.changed]
    assert any("attn2.to_k" in n for n in swapped) and any(n.endswith("conv1") for n in swapped)
    assert {r.reason for r in report.rows if r.name in ("conv_in", "conv_out")} == {"excluded by pattern 'conv_in'", "excluded by pattern 'conv_out'"}
    ref = _masked_copy(dense, swapped)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    ctx = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(x, torch.tensor([10]), encoder_hidden_states=ctx).sample
        expected = ref(x, torch.tensor([10]), encoder_hidden_states=ctx).sample
    assert_close_rel(out, expected, FP32_RTOL, "UNet2DConditionModel")


# -- activation fusion ------------------------------------------------------------------------


def test_uvit_mlp_gelu_is_fused_into_fc1():
    model = _uvit()
    keys_before = set(model.state_dict())
    names = sparse_layer_names("uvit", model)
    ref = _masked_copy(model, names)
    sparsedm.optimize(model, prune=True, include=names, min_features=8)
    rows = {r.name: r for r in sparsedm.last_report().rows}
    fc1s = [n for n in names if n.endswith("mlp.fc1")]
    assert len(fc1s) == 5  # depth 4: 2 in, 1 mid, 2 out blocks
    modules = dict(model.named_modules())
    for n in fc1s:
        assert modules[n].activation == "gelu" and rows[n].fused_activation == "gelu"
        assert isinstance(modules[n.replace("fc1", "act")], nn.Identity)
    assert all(rows[n].fused_activation is None for n in names if n not in fc1s)  # qkv, proj, fc2 feed no activation
    assert "gelu fused" in rows[fc1s[0]].reason
    # state_dict keys of canonical tensors are those of a model optimized without fusion
    plain = _uvit()
    sparsedm.optimize(plain, prune=True, include=names, min_features=8, fuse_activations=False)
    assert set(model.state_dict()) == set(plain.state_dict()) != keys_before
    assert all(isinstance(m, nn.GELU) for n, m in plain.named_modules() if n.endswith("mlp.act"))
    x = _uvit_inputs()
    with torch.no_grad():
        assert_close_rel(model(*x), ref(*x), FP32_RTOL, "fused U-ViT vs masked dense")
        assert_close_rel(model(*x), plain(*x), FP32_RTOL, "fused vs unfused")


def test_ddpm_time_mlp_swish_is_fused_by_probe():
    """The DDPM UNet's own Swish class (not torch's) is recognised because it computes F.silu exactly."""
    model = _randomize(build("ddpm_unet", TINY_UNET, device="cpu"))
    sparsedm.optimize(model, prune=True, min_features=8)
    rows = {r.name: r for r in sparsedm.last_report().rows}
    assert rows["time.1"].fused_activation == "silu" and isinstance(model.time[2], nn.Identity)
    assert rows["time.3"].fused_activation is None  # last layer of the MLP: nothing after it
    # ResBlock.time = Sequential(Swish, Linear): the activation comes before the layer, nothing to fuse
    assert all(r.fused_activation is None for n, r in rows.items() if n.endswith(".time.1") and n != "time.1")


class _TwoUses(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(64, 64), nn.GELU()

    def forward(self, x):
        y = self.fc(x)
        return self.act(y) + y  # the pre-activation value is read again: no fusion


class _SharedAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(64, 64), nn.Linear(64, 64), nn.SiLU()

    def forward(self, x):
        return self.act(self.fc1(x)) + self.act(self.fc2(x))  # one module, called twice


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(64, 64), nn.GELU()

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: does not trace
            return self.act(self.fc(x))
        return self.act(self.fc(-x))


class _Double(nn.Module):
    def forward(self, x):
        return 2 * x  # parameter-free but no activation


class _NotAnActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(64, 64), _Double()

    def forward(self, x):
        return self.act(self.fc(x))


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64)

    def forward(self, x):
        return torch.nn.functional.gelu(self.fc(x))


@pytest.mark.parametrize("cls", [_TwoUses, _SharedAct, _Branchy, _NotAnActivation, _Functional])
def test_activation_fusion_refuses_unsafe_patterns(cls):
    torch.manual_seed(0)
    model = _randomize(cls())
    layer_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    ref = _masked_copy(model, layer_names)
    sparsedm.optimize(model, prune=True, min_features=8)
    rows = sparsedm.last_report().rows
    assert [r.name for r in rows if r.changed] == layer_names
    assert all(r.fused_activation is None for r in rows)
    assert all(m.activation == "none" for m in model.modules() if isinstance(m, SparseLinear))
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close_rel(model(x), ref(x), FP32_RTOL, f"{cls.__name__} after optimize")
        assert_close_rel(model(-x), ref(-x), FP32_RTOL, f"{cls.__name__} after optimize, -x")


def test_activation_fusion_sequential_gelu_tanh_and_opt_out():
    torch.manual_seed(0)
    model = _randomize(nn.Sequential(nn.Linear(64, 128), nn.GELU(approximate="tanh"), nn.Linear(128, 64)))
    ref = _masked_copy(model, ["0", "2"])
    sparsedm.optimize(model, prune=True, min_features=8)
    assert model[0].activation == "gelu_tanh" and isinstance(model[1], nn.Identity)
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert_close_rel(model(x), ref(x), FP32_RTOL, "fused gelu_tanh")
    off = _randomize(nn.Sequential(nn.Linear(64, 128), nn.SiLU()))
    sparsedm.optimize(off, prune=True, min_features=8, fuse_activations=False)
    assert off[0].activation == "none" and isinstance(off[1], nn.SiLU)



@pytest.mark.parametrize("prune", [True, False], ids=["sparse24_int8", "int8"])
def test_activation_fusion_int8_layers(prune):
    """The int8 ops take the activation too: W8A8 layers fuse like the fp16 ones."""
    model = _randomize(nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64)))
    unfused = copy.deepcopy(model)
    sparsedm.optimize(model, prune=prune, min_features=8, quant="int8")
    sparsedm.optimize(unfused, prune=prune, min_features=8, quant="int8", fuse_activations=False)
    assert model[0].activation == "silu" and isinstance(model[1], nn.Identity)
    assert sparsedm.last_report().rows[0].fused_activation is None  # the unfused run's report
    assert isinstance(unfused[1], nn.SiLU) and unfused[0].activation == "none"
    assert "activation=silu" in repr(model[0])
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        # same int8 codes and integer sums on both paths; only where SiLU is applied to the
        # float32 (fused) or the rounded (unfused, fp32 here) value differs
        assert_close_rel(model(x), unfused(x), FP32_RTOL, "fused vs unfused int8")


class _Caching(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(64, 64), nn.GELU()
        self.seen = None

    def forward(self, x):
        h = self.fc(x)
        self.seen = x.shape[0]  # an attribute written by forward (tracing would store a proxy)
        return self.act(h)


def test_activation_fusion_tracing_leaves_the_module_untouched():
    model = _randomize(_Caching())
    ref = _masked_copy(model, ["fc"])
    sparsedm.optimize(model, prune=True, min_features=8)
    assert model.fc.activation == "gelu" and isinstance(model.act, nn.Identity)
    assert model.seen is None
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert_close_rel(model(x), ref(x), FP32_RTOL, "caching module")


def test_example_inputs_that_do_not_fit_and_an_include_that_matches_nothing(caplog):
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
    with pytest.raises(ValueError, match=r"example_inputs=\.\.\.\): the model's forward fails on the example input \(tensor shapes \[\(2, 32\)\]\)"):
        sparsedm.optimize(model, prune=True, example_inputs=torch.randn(2, 32))
    with caplog.at_level(logging.WARNING, logger="sparsedm.nn"):
        sparsedm.optimize(model, prune=True, include="*.attn.qkv")
    assert "matches no Linear/Conv2d layer" in caplog.text and not sparsedm.last_report().changed
