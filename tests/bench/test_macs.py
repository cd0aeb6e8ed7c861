"""The MACs counter against hand counts."""

import pytest
import torch
from torch import nn

from sparsedm.bench.macs import count_macs


def test_linear_hand_count():
    model = nn.Sequential(nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 16))
    x = torch.empty(5, 7, 64, device="meta")
    report = count_macs(model.to("meta"), (x,), sparse_layers=["0"])
    rows = {r.name: r for r in report.rows}
    assert rows["0"].dense_macs == 5 * 7 * 64 * 32 and rows["0"].sparse_macs == 5 * 7 * 64 * 32 // 2
    assert rows["2"].dense_macs == rows["2"].sparse_macs == 5 * 7 * 32 * 16
    assert report.dense_macs == 5 * 7 * (64 * 32 + 32 * 16)
    assert set(rows) == {"0", "2"}  # GELU issues no matmul


def test_conv_hand_count():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1).to("meta")
    x = torch.empty(2, 8, 9, 9, device="meta")
    report = count_macs(conv, (x,), sparse_layers=[""])
    (row,) = report.rows
    oh = ow = (9 + 2 - 3) // 2 + 1  # 5
    assert row.kind == "conv" and row.dense_macs == 2 * 16 * oh * ow * 8 * 9
    assert row.sparse_macs == row.dense_macs // 2


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, l, d = x.shape
        q, k, v = self.qkv(x).reshape(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, l, d))


def test_attention_matmuls_are_separate_dense_rows():
    b, l, d, h = 2, 10, 32, 4
    model = Attention(d, h).to("meta")
    report = count_macs(model, (torch.empty(b, l, d, device="meta"),), sparse_layers=["qkv", "proj"])
    kinds = {r.kind: r for r in report.rows if r.kind == "attention"}
    att = kinds["attention"]
    assert att.name == "<model>"
    assert att.dense_macs == att.sparse_macs == 2 * b * h * l * l * (d // h)  # q k^T and attn v
    linear = b * l * (d * 3 * d + d * d)
    assert report.dense_macs == linear + att.dense_macs
    assert report.sparse_macs == linear // 2 + att.dense_macs
    share = report.share_by_kind()
    assert share["linear"] == pytest.approx(linear / report.dense_macs)


def test_unknown_sparse_layer_is_an_error():
    with pytest.raises(ValueError, match="did not run as Linear/Conv2d: nope"):
        count_macs(nn.Linear(4, 4).to("meta"), (torch.empty(1, 4, device="meta"),), sparse_layers=["nope"])


@pytest.mark.parametrize("resolution", [None, 64])
def test_uvit_s2_cifar10_total_by_hand(capsys, resolution):
    """U-ViT-S/2 CIFAR10: D 512, 1 + (R/2)^2 tokens (patches + time), 13 blocks, mlp_ratio 4;
    --resolution rebuilds the token count (R = 32 by default)."""
    from sparsedm.cli import main

    import json

    r = resolution or 32
    patches = (r // 2) ** 2
    d, tokens, blocks = 512, patches + 1, 13
    block_linears = tokens * d * (3 * d + d + 4 * d + 4 * d)  # qkv, proj, fc1, fc2
    attention = 2 * tokens * tokens * d  # q k^T and attn v over all heads
    skip = 6 * tokens * 2 * d * d  # skip_linear of the 6 out blocks
    patch_embed = patches * d * 3 * 2 * 2
    decoder_pred = tokens * d * (2 * 2 * 3)  # applied before the extra token is dropped
    final_conv = r * r * 3 * 3 * 3 * 3
    dense = blocks * (block_linears + attention) + skip + patch_embed + decoder_pred + final_conv
    extra = ["--resolution", str(resolution)] if resolution else []
    assert main(["macs", "--preset", "uvit-s2-cifar10", "--json", *extra]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["resolution"] == r
    assert doc["dense_macs"] == dense  # at 32 px about 12.2 G, the figure of DESIGN.md
    assert doc["sparse_macs"] == dense - blocks * block_linears // 2


def test_one_uvit_block_by_hand():
    from sparsedm.models import PRESETS, build

    cfg = dict(PRESETS["uvit-s2-cifar10"]["config"], embed_dim=64, depth=2, num_heads=4)
    block = build("uvit", cfg, "meta").mid_block
    b, l, d = 3, 17, 64
    report = count_macs(block, (torch.empty(b, l, d, device="meta"),), sparse_layers=["attn.qkv", "mlp.fc1"])
    rows = {r.name: r for r in report.rows}
    assert rows["attn.qkv"].dense_macs == b * l * d * 3 * d
    assert rows["attn.qkv"].sparse_macs == b * l * d * 3 * d // 2
    assert rows["mlp.fc2"].sparse_macs == rows["mlp.fc2"].dense_macs == b * l * 4 * d * d
    assert rows["attn"].kind == "attention" and rows["attn"].dense_macs == 2 * b * l * l * d


def test_macs_cli_errors(capsys):
    from sparsedm.cli import main

    assert main(["macs"]) == 2
    assert "either a converted MODEL file or --preset" in capsys.readouterr().err
    assert main(["macs", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["macs", "--preset", "uvit-s2-cifar10", "--resolution", "33"]) == 1
    assert "not a multiple of the model's patch size 2" in capsys.readouterr().err
    assert main(["macs", "--preset", "ddpm-unet-cifar10", "--resolution", "30"]) == 1
    assert "not a multiple of 8 (the UNet downsamples 3 times)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["macs", "--preset", "ddpm-unet-cifar10", "--resolution", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_ddpm_unet_input_conv_stays_dense(capsys):
    """The 3-channel input conv (K = 27, not a multiple of 8) cannot be stored as 2:4: its MACs
    are not halved; every other conv and linear of the DDPM UNet is."""
    import json

    from sparsedm.cli import main

    assert main(["macs", "--preset", "ddpm-unet-cifar10", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["layers"]}
    assert rows["down.0"]["sparse_macs"] == rows["down.0"]["dense_macs"] == 32 * 32 * 128 * 27
    assert rows["out.2"]["sparse_macs"] * 2 == rows["out.2"]["dense_macs"]
    halved = [r for r in rows.values() if r["kind"] in ("conv", "linear") and r["sparse_macs"] * 2 == r["dense_macs"]]
    assert len(halved) == len([r for r in rows.values() if r["kind"] in ("conv", "linear")]) - 1
