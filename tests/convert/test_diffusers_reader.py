"""The diffusers reader on a real (tiny) diffusers UNet2DModel folder."""

import pytest
import torch

import sparsedm
from sparsedm.convert import convert, read_header
from sparsedm.formats import mask24
from tests.helpers import assert_close_rel

diffusers = pytest.importorskip("diffusers")


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8,
    ).eval()


def test_diffusers_folder_prune_convert_load_forward(tmp_path, monkeypatch):
    model = tiny_unet()
    folder = tmp_path / "unet"
    model.save_pretrained(str(folder))  # config.json + diffusion_pytorch_model.safetensors
    out = tmp_path / "unet.safetensors"
    convert(str(folder), str(out), prune=True)  # reader detected from the folder

    manifest = read_header(str(out)).manifest
    assert manifest["source"]["reader"] == "diffusers"
    sparse = [n for n, info in manifest["layers"].items() if info["kind"] == "sparse24"]
    dense = [n for n, info in manifest["layers"].items() if info["kind"] == "dense"]
    assert "conv_in" in dense  # 3 input channels: K = 27 cannot be 2:4, kept dense and said so
    assert len(sparse) >= 10 and any("resnets" in n for n in sparse) and any("attentions" in n for n in sparse)

    # A fresh process has not run the diffusers reader: the file's architecture must register
    # itself when loaded (load, sample, macs, info and bench model all go through it).
    from sparsedm.convert import arch as archs
    from sparsedm.convert.info import file_report

    monkeypatch.setattr(archs, "_REGISTRY", {k: v for k, v in archs._REGISTRY.items() if not k.startswith("diffusers_")})
    assert file_report(str(out))["macs"]["sparse24"] < file_report(str(out))["macs"]["dense"]

    # The reference: the same diffusers model with the same layers masked by the DESIGN rule.
    masked = tiny_unet()
    with torch.no_grad():
        for name in sparse:
            w = masked.get_submodule(name).weight
            w.mul_(mask24(w))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        expected = masked(x, t).sample
        got = sparsedm.load(str(out)).model(x, t).sample
    assert_close_rel(got, expected, 1e-4, "diffusers UNet2DModel convert -> load")
