"""Against sparsedm.models / sparsedm.nn (the runtime): a small U-ViT in SparseDM's format."""

import json

import pytest
import torch

import sparsedm
from sparsedm.convert import cli, convert
from sparsedm.formats import mask24
from tests.helpers import assert_close_rel

models = pytest.importorskip("sparsedm.models")


def test_sparsedm_uvit_real_runtime(tmp_path, capsys):
    p = models.PRESETS["uvit-s2-cifar10"]
    cfg = {**p["config"], "embed_dim": 64, "depth": 3, "num_heads": 2}
    torch.manual_seed(0)
    model = models.build("uvit", cfg, device="cpu")
    for prm in model.parameters():
        torch.nn.init.normal_(prm, std=0.05)
    sd = model.state_dict()
    torch.save(sd, tmp_path / "nnet_ema.pth")
    (tmp_path / "c.json").write_text(json.dumps({"arch": "uvit", "config": cfg, "resolution": p["resolution"],
                                                 "in_channels": p["in_channels"], "sampler": p.get("sampler")}))
    out = tmp_path / "u.safetensors"
    convert(str(tmp_path / "nnet_ema.pth"), str(out), source_format="sparsedm", config_path=str(tmp_path / "c.json"))
    loaded = sparsedm.load(str(out))
    assert type(loaded.model.in_blocks[0].attn.qkv).__name__ == "SparseLinear"
    ref = dict(sd)
    for n in models.sparse_layer_names("uvit", model):
        ref[f"{n}.weight"] = ref[f"{n}.weight"] * mask24(ref[f"{n}.weight"])
    model.load_state_dict(ref)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10.0, 500.0])
    with torch.no_grad():
        assert_close_rel(loaded.model(x, t), model(x, t), 1e-4, "real U-ViT")
    assert cli.file_info(str(out)) == 0
    assert "MACs at 32px" in capsys.readouterr().out
