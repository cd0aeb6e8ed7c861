"""U-ViT and DDPM UNet: published state_dict layouts, presets, config inference, forward shapes.

Known shapes below come from the published configs (baofff/U-ViT configs/*.py) run through
the published model code's construction rules (libs/uvit.py: pos_embed [1, extras + L, D],
extras = 1 + (num_classes > 0) or 1 + num_clip_token, L = (img/patch)^2, decoder_pred
Linear(D, p*p*C)); parameter counts are the papers' (U-ViT: 44M, 131M, 287M, 501M; DDPM
CIFAR10: 35.7M). The models were also checked against the reference code itself (strict
load_state_dict and equal outputs) while writing them.
"""

import pytest
import torch

from sparsedm.models import PRESETS, ConfigInferenceError, UNet, UViT, build, infer_config, sparse_layer_names

KNOWN_SHAPES = {
    "uvit-s2-cifar10": {
        "pos_embed": (1, 257, 512), "patch_embed.proj.weight": (512, 3, 2, 2), "decoder_pred.weight": (12, 512),
        "final_layer.weight": (3, 3, 3, 3), "out_blocks.5.skip_linear.weight": (512, 1024),
        "in_blocks.0.attn.qkv.weight": (1536, 512), "mid_block.mlp.fc1.weight": (2048, 512),
    },
    "uvit-s4-celeba64": {"pos_embed": (1, 257, 512), "decoder_pred.weight": (48, 512)},
    "uvit-m4-imagenet64": {"pos_embed": (1, 258, 768), "label_emb.weight": (1000, 768), "out_blocks.7.mlp.fc2.weight": (768, 3072)},
    "uvit-l4-imagenet64": {"pos_embed": (1, 258, 1024), "label_emb.weight": (1000, 1024)},
    "uvit-l2-imagenet256": {"pos_embed": (1, 258, 1024), "patch_embed.proj.weight": (1024, 4, 2, 2), "label_emb.weight": (1001, 1024),
                            "decoder_pred.weight": (16, 1024), "final_layer.weight": (4, 4, 3, 3)},
    "uvit-h2-imagenet256": {"pos_embed": (1, 258, 1152), "in_blocks.13.mlp.fc1.weight": (4608, 1152), "label_emb.weight": (1001, 1152)},
    "uvit-l4-imagenet512": {"pos_embed": (1, 258, 1024), "decoder_pred.weight": (64, 1024)},
    "uvit-h4-imagenet512": {"pos_embed": (1, 258, 1152), "decoder_pred.weight": (64, 1152)},
    "uvit-s2-mscoco": {"pos_embed": (1, 334, 512), "context_embed.weight": (512, 768), "patch_embed.proj.weight": (512, 4, 2, 2)},
    "ddpm-unet-cifar10": {
        "time.0.inv_freq": (64,), "time.1.weight": (512, 128), "time.3.weight": (512, 512), "down.0.weight": (128, 3, 3, 3),
        "down.1.resblocks.time.1.weight": (128, 512), "down.3.0.weight": (128, 128, 3, 3),
        "down.4.resblocks.skip.weight": (256, 128, 1, 1), "down.4.attention.qkv.weight": (768, 256, 1, 1),
        "mid.0.attention.out.weight": (256, 256, 1, 1), "up.0.resblocks.conv1.weight": (256, 512, 3, 3),
        "up.3.1.weight": (256, 256, 3, 3), "out.0.weight": (128,), "out.2.weight": (3, 128, 3, 3),
    },
    "ddpm-unet-sparsedm-cifar10": {"down.0.weight": (112, 3, 3, 3), "mid.0.resblocks.time.1.weight": (896, 448)},
}
ABSENT = {
    "uvit-s2-cifar10": ["label_emb.weight", "in_blocks.0.attn.qkv.bias", "time_embed.0.weight", "context_embed.weight", "in_blocks.0.skip_linear.weight"],
    "uvit-h2-imagenet256": ["final_layer.weight"],
    "ddpm-unet-sparsedm-cifar10": ["mid.0.resblocks.norm2.weight"],  # affine time: norm2 without affine
}
PARAMS_M = {"uvit-s2-cifar10": 44.3, "uvit-m4-imagenet64": 130.9, "uvit-l2-imagenet256": 286.8,
            "uvit-h2-imagenet256": 500.8, "ddpm-unet-cifar10": 35.7}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_on_meta_with_published_layout(name):
    preset = PRESETS[name]
    assert set(preset) == {"arch", "config", "resolution", "in_channels", "sampler"}
    assert {"kind", "steps"} <= set(preset["sampler"])
    model = build(preset["arch"], preset["config"])
    sd = model.state_dict()
    assert all(t.device.type == "meta" for t in sd.values())
    for key, shape in KNOWN_SHAPES.get(name, {}).items():
        assert tuple(sd[key].shape) == shape, f"{name}: {key}"
    for key in ABSENT.get(name, []):
        assert key not in sd, f"{name}: {key} should not exist"
    if name in PARAMS_M:
        assert round(sum(t.numel() for t in sd.values()) / 1e6, 1) == PARAMS_M[name]
    if preset["arch"] == "uvit":
        assert preset["config"]["in_chans"] == preset["in_channels"] and preset["config"]["img_size"] == preset["resolution"]
    # the config is recovered from the shapes (num_heads / attn_heads via the matching preset)
    inferred = infer_config(preset["arch"], sd)
    for key, value in preset["config"].items():
        if key != "dropout":
            assert inferred[key] == value or list(inferred[key]) == list(value), f"{name}: {key}"


def test_sparse_layer_names():
    model = build("uvit", PRESETS["uvit-s2-cifar10"]["config"])
    names = sparse_layer_names("uvit", model)
    assert len(names) == 13 * 4 and "mid_block.attn.qkv" in names and "out_blocks.5.mlp.fc2" in names
    assert not any("skip_linear" in n or "decoder_pred" in n or "patch_embed" in n for n in names)
    unet = build("ddpm_unet", PRESETS["ddpm-unet-cifar10"]["config"])
    unet_names = sparse_layer_names("ddpm_unet", unet)
    assert "down.0" in unet_names and "time.1" in unet_names and "mid.0.attention.qkv" in unet_names
    with pytest.raises(ValueError, match="unknown arch 'dit'"):
        sparse_layer_names("dit", unet)


def test_infer_config_needs_what_shapes_do_not_say():
    cfg = dict(PRESETS["uvit-s2-cifar10"]["config"], depth=4)  # no preset has depth 4
    sd = build("uvit", cfg).state_dict()
    with pytest.raises(ConfigInferenceError, match="num_heads cannot be inferred.*pass num_heads=..."):
        infer_config("uvit", sd)
    assert infer_config("uvit", sd, num_heads=4)["num_heads"] == 4
    text = build("uvit", dict(PRESETS["uvit-s2-mscoco"]["config"], num_clip_token=10)).state_dict()
    with pytest.raises(ConfigInferenceError, match="img_size, num_clip_token, num_heads"):
        infer_config("uvit", text)
    assert infer_config("uvit", text, num_heads=8, img_size=32, num_clip_token=10)["num_clip_token"] == 10
    with pytest.raises(ConfigInferenceError, match="does not reproduce the checkpoint"):
        infer_config("uvit", text, num_heads=8, img_size=32, num_clip_token=11)
    unet = build("ddpm_unet", dict(PRESETS["ddpm-unet-cifar10"]["config"], channel=64)).state_dict()
    with pytest.raises(ConfigInferenceError, match="attn_heads cannot be inferred"):
        infer_config("ddpm_unet", unet)
    with pytest.raises(ConfigInferenceError, match="does not look like a uvit checkpoint"):
        infer_config("uvit", unet)


def test_uvit_forward_variants():
    torch.manual_seed(0)
    cond = UViT(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=2, num_heads=2, num_classes=5).eval()
    with torch.no_grad():
        out = cond(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 999.0]), torch.tensor([0, 4]))
        assert out.shape == (2, 3, 8, 8)
        uncond = UViT(img_size=8, patch_size=4, in_chans=4, embed_dim=32, depth=2, num_heads=2, conv=False).eval()
        assert uncond(torch.randn(1, 4, 8, 8), torch.tensor(3.0)).shape == (1, 4, 8, 8)
        text = UViT(img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=2, num_heads=2, clip_dim=16, num_clip_token=3).eval()
        ctx = torch.randn(2, 3, 16)
        a = text(torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]), ctx)
        assert a.shape == (2, 4, 8, 8)
        with pytest.raises(ValueError, match="text-conditional"):
            text(torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]))


def test_ddpm_unet_forward_fold():
    torch.manual_seed(0)
    net = UNet(in_channel=3, channel=16, channel_multiplier=[1, 2], n_res_blocks=1, attn_strides=[1], attn_heads=2,
               use_affine_time=True, fold=2).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 8, 8), torch.tensor([0.5, 10.0])).shape == (2, 3, 8, 8)


def test_sparsedm_qkv_bias_checkpoint_infers_and_fits_the_preset():
    """A SparseDM U-ViT-S/2 (the published config plus a qkv bias): infer_config still finds the
    preset for what shapes cannot say, and config_for_checkpoint turns the bias on."""
    from sparsedm.models import config_for_checkpoint

    published = PRESETS["uvit-s2-cifar10"]["config"]
    sd = build("uvit", dict(published, qkv_bias=True)).state_dict()
    cfg = infer_config("uvit", sd)
    assert cfg["qkv_bias"] is True and cfg["num_heads"] == published["num_heads"]
    assert config_for_checkpoint("uvit", published, sd.keys())["qkv_bias"] is True
    assert config_for_checkpoint("uvit", published, build("uvit", published).state_dict().keys())["qkv_bias"] is False


def _published_uvit_keys(config: dict) -> dict:
    """Every state_dict key and shape of a U-ViT with ``config``, written out from the published
    layout (DESIGN.md "Facts about the checkpoints": libs/uvit.py's module names), not from
    sparsedm's module tree: pos_embed, patch_embed.proj, [label_emb | context_embed],
    [time_embed MLP], depth // 2 in_blocks, mid_block, depth // 2 out_blocks with skip_linear,
    norm, decoder_pred, [final_layer]."""
    d, p, c = config["embed_dim"], config["patch_size"], config["in_chans"]
    hidden = int(d * config["mlp_ratio"])
    tokens = (config["img_size"] // p) ** 2
    extras = 1 + (1 if config.get("num_classes", -1) > 0 else 0) + int(config.get("num_clip_token", 0) if config.get("clip_dim") else 0)
    keys = {"pos_embed": (1, extras + tokens, d), "patch_embed.proj.weight": (d, c, p, p), "patch_embed.proj.bias": (d,)}
    if config.get("mlp_time_embed"):
        keys.update({"time_embed.0.weight": (4 * d, d), "time_embed.0.bias": (4 * d,),
                     "time_embed.2.weight": (d, 4 * d), "time_embed.2.bias": (d,)})
    if config.get("clip_dim"):
        keys.update({"context_embed.weight": (d, config["clip_dim"]), "context_embed.bias": (d,)})
    elif config.get("num_classes", -1) > 0:
        keys["label_emb.weight"] = (config["num_classes"], d)

    def block(prefix, skip):
        out = {f"{prefix}.norm1.weight": (d,), f"{prefix}.norm1.bias": (d,), f"{prefix}.attn.qkv.weight": (3 * d, d),
               f"{prefix}.attn.proj.weight": (d, d), f"{prefix}.attn.proj.bias": (d,),
               f"{prefix}.norm2.weight": (d,), f"{prefix}.norm2.bias": (d,),
               f"{prefix}.mlp.fc1.weight": (hidden, d), f"{prefix}.mlp.fc1.bias": (hidden,),
               f"{prefix}.mlp.fc2.weight": (d, hidden), f"{prefix}.mlp.fc2.bias": (d,)}
        if config.get("qkv_bias"):
            out[f"{prefix}.attn.qkv.bias"] = (3 * d,)
        if skip:
            out.update({f"{prefix}.skip_linear.weight": (d, 2 * d), f"{prefix}.skip_linear.bias": (d,)})
        return out

    for i in range(config["depth"] // 2):
        keys.update(block(f"in_blocks.{i}", False))
        keys.update(block(f"out_blocks.{i}", True))
    keys.update(block("mid_block", False))
    keys.update({"norm.weight": (d,), "norm.bias": (d,), "decoder_pred.weight": (p * p * c, d), "decoder_pred.bias": (p * p * c,)})
    if config.get("conv", True):
        keys.update({"final_layer.weight": (c, c, 3, 3), "final_layer.bias": (c,)})
    return keys


@pytest.mark.parametrize("name", sorted(n for n, p in PRESETS.items() if p["arch"] == "uvit"))
def test_uvit_presets_have_exactly_the_published_keys(name):
    """strict=True loading of a published checkpoint needs every key and shape, and no other."""
    config = PRESETS[name]["config"]
    got = {k: tuple(v.shape) for k, v in build("uvit", config).state_dict().items()}
    assert got == _published_uvit_keys(config)
    with_bias = {k: tuple(v.shape) for k, v in build("uvit", dict(config, qkv_bias=True)).state_dict().items()}
    assert with_bias == _published_uvit_keys(dict(config, qkv_bias=True))  # SparseDM's variant


def _published_ddpm_unet_keys(config: dict) -> dict:
    """Every state_dict key and shape of the DDPM UNet of rosinality/denoising-diffusion-pytorch
    (as diffusion_distiller and SparseDM's DDPM use it), written out from its published layout,
    not from sparsedm's module tree: time (sinusoid buffer, two linears), down (input conv,
    n_res_blocks res blocks per level with attention at the listed strides, a stride-2 conv
    between levels), mid (res + attention, res), up (n_res_blocks + 1 res blocks per level on
    concatenated skips, an upsampling conv between levels), out (norm, conv)."""
    ch, fold, affine = config["channel"], config.get("fold", 1), config.get("use_affine_time", False)
    mult, n_res, strides = config["channel_multiplier"], config["n_res_blocks"], config["attn_strides"]
    time_dim = 4 * ch
    keys = {"time.0.inv_freq": (ch // 2,), "time.1.weight": (time_dim, ch), "time.1.bias": (time_dim,),
            "time.3.weight": (time_dim, time_dim), "time.3.bias": (time_dim,)}

    def conv(prefix, cin, cout, k):
        keys.update({f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)})

    def res_block(prefix, cin, cout, attention):
        r = f"{prefix}.resblocks"
        keys.update({f"{r}.norm1.weight": (cin,), f"{r}.norm1.bias": (cin,)})
        conv(f"{r}.conv1", cin, cout, 3)
        keys.update({f"{r}.time.1.weight": ((2 if affine else 1) * cout, time_dim), f"{r}.time.1.bias": ((2 if affine else 1) * cout,)})
        if not affine:  # with affine time the second norm has no parameters
            keys.update({f"{r}.norm2.weight": (cout,), f"{r}.norm2.bias": (cout,)})
        conv(f"{r}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{r}.skip", cin, cout, 1)
        if attention:
            a = f"{prefix}.attention"
            keys.update({f"{a}.norm.weight": (cout,), f"{a}.norm.bias": (cout,)})
            conv(f"{a}.qkv", cout, 3 * cout, 1)
            conv(f"{a}.out", cout, cout, 1)

    conv("down.0", config["in_channel"] * fold**2, ch, 3)
    feats, cur, j = [ch], ch, 1
    for i, m in enumerate(mult):
        for _ in range(n_res):
            res_block(f"down.{j}", cur, ch * m, 2**i in strides)
            cur, j = ch * m, j + 1
            feats.append(cur)
        if i != len(mult) - 1:
            conv(f"down.{j}.0", cur, cur, 3)
            feats.append(cur)
            j += 1
    res_block("mid.0", cur, cur, True)
    res_block("mid.1", cur, cur, False)
    j = 0
    for i in reversed(range(len(mult))):
        for _ in range(n_res + 1):
            res_block(f"up.{j}", cur + feats.pop(), ch * mult[i], 2**i in strides)
            cur, j = ch * mult[i], j + 1
        if i != 0:
            conv(f"up.{j}.1", cur, cur, 3)
            j += 1
    keys.update({"out.0.weight": (cur,), "out.0.bias": (cur,)})
    conv("out.2", cur, 3 * fold**2, 3)
    return keys


@pytest.mark.parametrize("name", sorted(n for n, p in PRESETS.items() if p["arch"] == "ddpm_unet"))
def test_ddpm_unet_presets_have_exactly_the_published_keys(name):
    config = PRESETS[name]["config"]
    got = {k: tuple(v.shape) for k, v in build("ddpm_unet", config).state_dict().items()}
    assert got == _published_ddpm_unet_keys(config)
