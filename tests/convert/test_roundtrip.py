"""Each reader on a checkpoint in that source's exact key format: convert -> load -> forward
equals the source model with its masks applied."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import sparsedm
from sparsedm.convert import convert, read_header
from sparsedm.convert.convert import flat_mask
from sparsedm.formats import mask24
from tests.convert.conftest import make_unet, make_uvit
from tests.convert.toy_models import unet_sparse_layers, uvit_sparse_layers
from tests.helpers import assert_close_rel

FP32_RTOL = 1e-4


def masked_state(model, layers, rule=flat_mask):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for name in layers:
        sd[f"{name}.weight"] = rule(sd[f"{name}.weight"])
    return sd


def uvit_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 8, 8, generator=g), torch.tensor([10.0, 500.0])


def reference_output(model, state, inputs):
    model.load_state_dict(state)
    with torch.no_grad():
        return model(*inputs)


def run(model, inputs):
    with torch.no_grad():
        return model(*inputs)


def kinds(path):
    return {n: l["kind"] for n, l in read_header(path).manifest["layers"].items()}


def test_sparsedm_uvit(tmp_path):
    model, config = make_uvit(qkv_bias=True)
    src = tmp_path / "nnet_ema.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / "model.safetensors"
    summary = convert(str(src), str(out), preset="toy-uvit")
    assert "detected sparsedm" in summary.detected
    layers = uvit_sparse_layers(model)
    assert all(kinds(out)[n] == "sparse24" for n in layers)
    assert kinds(out)["decoder_pred"] == "dense" and kinds(out)["out_blocks.0.skip_linear"] == "dense"
    loaded = sparsedm.load(str(out))
    x = uvit_inputs()
    expected = reference_output(model, masked_state(model, layers), x)
    assert_close_rel(run(loaded.model, x), expected, FP32_RTOL, "sparsedm uvit")
    # the MLP's GELU runs in fc1's epilogue; without fusion the model is the same function
    fc1 = [m for n, m in loaded.model.named_modules() if n.endswith("mlp.fc1")]
    assert fc1 and all(m.activation == "gelu" for m in fc1)
    unfused = sparsedm.load(str(out), fuse_activations=False).model
    assert all(m.activation == "none" for n, m in unfused.named_modules() if n.endswith("mlp.fc1"))
    assert_close_rel(run(unfused, x), expected, FP32_RTOL, "sparsedm uvit, unfused")
    assert not loaded.model.training
    assert loaded.sampler["steps"] == 1000 and loaded.manifest["source"]["file"] == "nnet_ema.pth"
    # retained magnitude is recorded per masked layer
    assert 0.5 < read_header(str(out)).manifest["layers"][layers[0]]["retained_magnitude"] < 1.0


def test_sparsedm_qkv_bias_fits_a_published_preset(tmp_path, monkeypatch):
    """SparseDM's U-ViTs have a qkv bias the published configs lack: converting with the
    published preset takes qkv_bias from the checkpoint's keys (same shapes otherwise)."""
    import sparsedm.models as models

    base = models.PRESETS["uvit-s2-cifar10"]
    tiny = {**base, "config": {**base["config"], "img_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2},
            "resolution": 8}
    assert tiny["config"]["qkv_bias"] is False
    monkeypatch.setitem(models.PRESETS, "tiny-uvit-published", tiny)
    torch.manual_seed(0)
    model = models.build("uvit", {**tiny["config"], "qkv_bias": True}, device="cpu").eval()
    src = tmp_path / "nnet_ema.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / "model.safetensors"
    summary = convert(str(src), str(out), preset="tiny-uvit-published")
    assert "detected sparsedm" in summary.detected
    assert read_header(str(out)).manifest["architecture"]["config"]["qkv_bias"] is True
    layers = models.sparse_layer_names("uvit", model)
    x = uvit_inputs()
    expected = reference_output(model, masked_state(model, layers), x)
    assert_close_rel(run(sparsedm.load(str(out)).model, x), expected, FP32_RTOL, "sparsedm uvit, published preset")


def test_sparsedm_unet_conv_masks_and_unaligned_layers(tmp_path):
    """Every conv and linear is 2:4; conv_in (K=27) and the 12-channel path (K % 8 == 4) keep
    their masked weights dense, so the function is exactly SparseDM's."""
    model, config = make_unet()
    src = tmp_path / "ddpm.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / "unet.safetensors"
    convert(str(src), str(out), source_format="sparsedm", preset="toy-unet")
    k = kinds(out)
    assert k["conv_in"] == "dense" and k["block2.conv1"] == "dense"  # K = 27, K = 9 * 12
    assert k["block1.conv1"] == "sparse24" and k["temb.dense.0"] == "sparse24" and k["conv_out"] == "sparse24"
    layers = unet_sparse_layers(model)
    loaded = sparsedm.load(str(out))
    x = uvit_inputs()
    expected = reference_output(model, masked_state(model, layers), x)
    assert_close_rel(run(loaded.model, x), expected, FP32_RTOL, "sparsedm unet")


def test_flat_mask_matches_sparsedm_rule_on_unaligned_conv():
    """SparseDM flattens the KRSC weight and keeps the top-2 |w| of each run of 4 (groups cross rows)."""
    w = torch.randn(16, 3, 3, 3)
    flat = w.permute(0, 2, 3, 1).reshape(-1, 4)
    keep = torch.argsort(flat.abs(), dim=1, descending=True)[:, :2]
    m = torch.zeros_like(flat).scatter_(1, keep, 1.0)
    expected = (flat * m).reshape(16, 3, 3, 3).permute(0, 3, 1, 2)
    assert torch.equal(flat_mask(w), expected)


def test_uvit_dense_and_prune(tmp_path):
    model, _ = make_uvit(qkv_bias=False)
    src = tmp_path / "uvit.pth"
    torch.save(model.state_dict(), src)
    dense_out, pruned_out = tmp_path / "dense.safetensors", tmp_path / "pruned.safetensors"
    s = convert(str(src), str(dense_out), preset="toy-uvit-nobias")
    assert "detected uvit" in s.detected and set(kinds(dense_out).values()) == {"dense"}
    x = uvit_inputs()
    assert_close_rel(run(sparsedm.load(str(dense_out)).model, x), run(model, x), 1e-6, "uvit dense")
    convert(str(src), str(pruned_out), preset="toy-uvit-nobias", prune=True)
    layers = uvit_sparse_layers(model)
    assert all(kinds(pruned_out)[n] == "sparse24" for n in layers)
    expected = reference_output(model, masked_state(model, layers, lambda w: w * mask24(w)), x)
    assert_close_rel(run(sparsedm.load(str(pruned_out)).model, x), expected, FP32_RTOL, "uvit --prune")


def test_asp(tmp_path):
    model, _ = make_uvit(qkv_bias=False)
    layers = uvit_sparse_layers(model)
    sd = model.state_dict()
    state = dict(sd)
    rng = torch.Generator().manual_seed(3)
    for name in layers:  # ASP's own mask choice need not be top-2 magnitude: use random 2:4 masks
        w = sd[f"{name}.weight"]
        m = mask24(torch.rand(w.shape, generator=rng))
        state[f"{name}.weight"] = w * m  # zeroed in place
        state[f"{name}.__weight_mma_mask"] = m
    src = tmp_path / "asp.pth"
    torch.save(state, src)
    out = tmp_path / "asp.safetensors"
    s = convert(str(src), str(out), preset="toy-uvit-nobias")
    assert "detected asp" in s.detected
    assert all(kinds(out)[n] == "sparse24" for n in layers)
    expected = reference_output(model, {k: v for k, v in state.items() if "mma_mask" not in k}, uvit_inputs())
    assert_close_rel(run(sparsedm.load(str(out)).model, uvit_inputs()), expected, FP32_RTOL, "asp")


def test_zeroed_is_detected_and_verified(tmp_path):
    model, _ = make_uvit(qkv_bias=False)
    layers = uvit_sparse_layers(model)
    state = masked_state(model, layers, lambda w: w * mask24(torch.randn(w.shape)))
    src = tmp_path / "zeroed.pth"
    torch.save(state, src)
    out = tmp_path / "z.safetensors"
    s = convert(str(src), str(out), preset="toy-uvit-nobias")
    assert "detected zeroed" in s.detected
    assert all(kinds(out)[n] == "sparse24" for n in layers)
    assert_close_rel(run(sparsedm.load(str(out)).model, uvit_inputs()), reference_output(model, state, uvit_inputs()),
                     FP32_RTOL, "zeroed")


def test_almost_zeroed_is_named_not_silently_dense(tmp_path):
    """One group of 4 with 3 nonzeros in one layer of an otherwise 2:4 checkpoint: the convert
    says which layer broke the detection (and --strict refuses), instead of a quiet dense file."""
    from sparsedm.convert import ConvertError

    model, _ = make_uvit(qkv_bias=False)
    layers = uvit_sparse_layers(model)
    state = masked_state(model, layers, lambda w: w * mask24(torch.randn(w.shape)))
    w = state[f"{layers[2]}.weight"]
    group = w[0, :4]
    group[group == 0] = 0.5  # that group now holds 4 nonzeros
    src = tmp_path / "almost.pth"
    torch.save(state, src)
    s = convert(str(src), str(tmp_path / "a.safetensors"), preset="toy-uvit-nobias")
    assert any(f"layer {layers[2]} is almost 2:4 in its zeros (1 of" in n for n in s.notes), s.notes
    with pytest.raises(ConvertError, match=f"layer {layers[2]} is almost 2:4"):
        convert(str(src), str(tmp_path / "b.safetensors"), preset="toy-uvit-nobias", strict=True)
    assert not (tmp_path / "b.safetensors").exists()


def test_distiller(tmp_path):
    model, config = make_unet()
    src = tmp_path / "distilled.pt"
    torch.save({"G": model.state_dict(), "n_timesteps": 8, "time_scale": 128}, src)
    cfg = tmp_path / "unet.json"
    cfg.write_text(json.dumps({"arch": "toy_unet", "config": config, "resolution": 8, "in_channels": 3}))
    out = tmp_path / "d.safetensors"
    s = convert(str(src), str(out), config_path=str(cfg), dtype="fp16")
    assert "detected distiller" in s.detected
    loaded = sparsedm.load(str(out), dtype=torch.float32)
    sampler = loaded.sampler
    assert sampler["steps"] == 8 and sampler["prediction"] == "v" and sampler["time_input"] == {"kind": "step_index", "scale": 128.0}
    assert sampler["schedule"]["name"] == "cosine" and sampler["clip_x0"] == [-1.0, 1.0]
    # dense source: only --prune makes it 2:4; fp16 storage then fp32 compute
    assert set(kinds(out).values()) == {"dense"}
    half = {k: v.half().float() for k, v in model.state_dict().items()}
    assert_close_rel(run(loaded.model, uvit_inputs()), reference_output(model, half, uvit_inputs()), 1e-5, "distiller fp16")


def _bitmask_safetensors(state, layers, path):
    tensors = {}
    for k, v in state.items():
        layer = k[: -len(".weight")]
        if k.endswith(".weight") and layer in layers:
            mask = mask24(v)
            tensors[f"{layer}.compressed"] = v[mask].reshape(v.shape[0], v.shape[1] // 2).contiguous()
            tensors[f"{layer}.bitmask"] = torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))
            tensors[f"{layer}.shape"] = torch.tensor(list(v.shape)).reshape(-1, 1)
        else:
            tensors[k] = v.contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_compressed_tensors_sparse24_bitmask(tmp_path):
    model, _ = make_uvit(qkv_bias=False)
    layers = uvit_sparse_layers(model)
    src = tmp_path / "model.safetensors"
    _bitmask_safetensors(model.state_dict(), set(layers), src)
    out = tmp_path / "out.safetensors"
    s = convert(str(src), str(out), preset="toy-uvit-nobias")
    assert "detected compressed-tensors" in s.detected
    assert all(kinds(out)[n] == "sparse24" for n in layers)
    expected = reference_output(model, masked_state(model, layers, lambda w: w * mask24(w)), uvit_inputs())
    assert_close_rel(run(sparsedm.load(str(out)).model, uvit_inputs()), expected, FP32_RTOL, "compressed-tensors")


def test_int8_within_bound(tmp_path):
    """int8 weights (per channel) and dynamic per-token int8 activations: the error against the
    fp32 masked model is bounded by 5% of the output's max (measured about 1%)."""
    model, _ = make_uvit(qkv_bias=True)
    src = tmp_path / "nnet_ema.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / "int8.safetensors"
    convert(str(src), str(out), preset="toy-uvit", quant="int8")
    layers = uvit_sparse_layers(model)
    assert all(kinds(out)[n] == "sparse24_int8" for n in layers)
    expected = reference_output(model, masked_state(model, layers), uvit_inputs())
    assert_close_rel(run(sparsedm.load(str(out)).model, uvit_inputs()), expected, 5e-2, "int8")
    # Loading in another float dtype keeps the int8 scales float32 (the int8 contract).
    qkv = sparsedm.load(str(out), dtype=torch.bfloat16).model.in_blocks[0].attn.qkv
    assert qkv.w_scale.dtype == torch.float32 and qkv.values_q.dtype == torch.int8
    assert qkv.bias.dtype == torch.bfloat16


def test_bf16_file_and_load_dtype(tmp_path):
    model, _ = make_uvit(qkv_bias=True)
    src = tmp_path / "nnet_ema.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / "bf16.safetensors"
    convert(str(src), str(out), preset="toy-uvit", dtype="bf16")
    h = read_header(str(out))
    assert h.tensors["in_blocks.0.attn.qkv.values"].dtype == torch.bfloat16
    assert h.tensors["in_blocks.0.attn.qkv.meta"].dtype == torch.uint8
    loaded = sparsedm.load(str(out))
    assert loaded.model.in_blocks[0].attn.qkv.values.dtype == torch.bfloat16


def test_diffusers_without_package_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if not installed
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    save_file({"conv_in.weight": torch.randn(8, 3, 3, 3)}, str(folder / "diffusion_pytorch_model.safetensors"))
    from sparsedm.convert import ConvertError

    with pytest.raises(ConvertError, match=r"sparsedm\[diffusers\]"):
        convert(str(folder), str(tmp_path / "o.safetensors"))
    assert not (tmp_path / "o.safetensors").exists()


def test_load_refuses_a_file_with_nan_values(tmp_path):
    """The converter never writes NaN/Inf, so a converted file holding one is damaged: load names
    the tensor instead of sampling black images."""
    from safetensors import safe_open

    from sparsedm.convert import FileFormatError

    model, _ = make_uvit(qkv_bias=True)
    src, out = tmp_path / "nnet_ema.pth", tmp_path / "ok.safetensors"
    torch.save(masked_state(model, uvit_sparse_layers(model)), src)
    convert(str(src), str(out), preset="toy-uvit")
    sparsedm.load(str(out))  # the intact file loads
    with safe_open(str(out), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    key = next(k for k in tensors if k.endswith(".values"))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[3] = float("nan")
    damaged = tmp_path / "damaged.safetensors"
    save_file(tensors, str(damaged), metadata=metadata)
    with pytest.raises(FileFormatError, match=f"tensor {key} holds 1 NaN/Inf"):
        sparsedm.load(str(damaged))
