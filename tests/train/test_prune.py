import copy

import pytest
import torch
import torch.nn as nn

from sparsedm.formats import is_24_sparse, mask24
from sparsedm.train import UVIT_SPARSEDM_LAYERS, kept_fraction, permute_channels, prune24, search_permutation
from sparsedm.train.permute import magnitude_matrix
from tests.train.models import Block, Convs, Untraceable, perturb


def _inputs(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    if isinstance(model, Convs):
        return torch.randn(3, 8, 7, 9, generator=g)
    return torch.randn(5, 7, 32, generator=g)


def test_report_contents_and_masking():
    torch.manual_seed(0)
    model = Block()
    original = copy.deepcopy(model)
    with torch.no_grad():
        report = prune24(model)
    names = [l.name for l in report.layers]
    assert names == ["mlp.fc1", "mlp.fc2", "lin", "out", "head"]
    assert "K = in_features = 12 is not a multiple of 8" in report.skipped["odd"]
    for layer in report.layers:
        w0 = original.get_submodule(layer.name).weight
        w = model.get_submodule(layer.name).weight
        assert is_24_sparse(w)
        torch.testing.assert_close(w, w0 * mask24(w0), rtol=0, atol=0)
        assert layer.kept_fraction == pytest.approx(float(w.detach().abs().sum() / w0.detach().abs().sum()), rel=1e-6)
        assert 0.5 <= layer.kept_fraction <= 1.0
        assert layer.kept_fraction_permuted is None and not layer.permuted
        assert layer.permutation_note == "permute=False"
        assert layer.k == w0.shape[1]
    assert torch.equal(model.odd.weight, original.odd.weight)
    d = report.to_dict()
    assert {"layers", "skipped"} <= set(d) and d["layers"][0]["name"] == "mlp.fc1"
    assert "| mlp.fc2 | Linear | [32, 64] | 64 |" in report.to_markdown()
    assert report["lin"].name == "lin"
    with pytest.raises(KeyError, match="not a multiple of 8"):
        report["odd"]


def test_include_exclude_and_conv_eligibility():
    model = Block()
    report = prune24(model, include=UVIT_SPARSEDM_LAYERS)
    assert [l.name for l in report.layers] == ["mlp.fc1", "mlp.fc2"]
    assert report.skipped["lin"] == "not selected by include"
    report = prune24(Block(), exclude=["lin", "*.fc1"], include=lambda name, m: name != "head")
    assert [l.name for l in report.layers] == ["mlp.fc2", "out"]
    assert report.skipped["lin"] == "excluded" and report.skipped["head"] == "not selected by include"
    convs = Convs()
    report = prune24(convs)
    assert [l.name for l in report.layers] == ["c1", "c2", "c3", "c4"]
    assert "groups=16" in report.skipped["dw"]
    conv_k4 = nn.Sequential(nn.Conv2d(4, 8, 1))  # K = 4: one group, but meta needs K % 8
    assert "K = kh*kw*Cin = 1*1*4 = 4" in prune24(conv_k4).skipped["0"]
    for l in report.layers:
        assert is_24_sparse(convs.get_submodule(l.name).weight)


@pytest.mark.parametrize("make", [Block, Convs, Untraceable], ids=["block", "convs", "untraceable"])
@pytest.mark.parametrize("seed", [0, 1])
def test_permutation_keeps_function_and_never_lowers(make, seed):
    torch.manual_seed(seed)
    model = perturb(make(), seed).eval()
    x = _inputs(model, seed)
    with torch.no_grad():
        expected = model(x)
    dense = copy.deepcopy(model)
    report = permute_channels(dense)
    with torch.no_grad():
        got = dense(x)
    err = (got - expected).abs()
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), f"max {err.max():.3g} mean {err.mean():.3g}"
    assert any(l.permuted for l in report.layers)
    for l in report.layers:
        assert l.kept_fraction_permuted >= l.kept_fraction - 1e-12, l
        assert l.kept_fraction_permuted == pytest.approx(kept_fraction(dense.get_submodule(l.name).weight))
        if not l.permuted:  # its columns stay; its rows may move as some other layer's producer
            w, w0 = dense.get_submodule(l.name).weight, model.get_submodule(l.name).weight
            assert torch.equal(w.sort(0).values, w0.sort(0).values)
    # prune24(permute=True) = the same permutation, then the 2:4 mask.
    pruned = copy.deepcopy(model)
    report24 = prune24(pruned, permute=True)
    assert [l.kept_fraction_permuted for l in report24.layers] == [l.kept_fraction_permuted for l in report.layers]
    for l in report24.layers:
        w = dense.get_submodule(l.name).weight
        assert torch.equal(pruned.get_submodule(l.name).weight, w * mask24(w))
    assert report24.kept_fraction(permuted=True) >= report24.kept_fraction(permuted=False)


def test_permutation_reasons():
    report = prune24(perturb(Block()), permute=True)
    assert report["mlp.fc2"].permutation_note.endswith("mlp.fc1 -> mlp.act -> mlp.fc2")
    assert "residual" in report["mlp.fc1"].permutation_note  # norm(x) and x + ... share x
    assert "lin -> ln2 -> out" in report["out"].permutation_note
    assert "not a single producer" in report["head"].permutation_note  # input is a residual add
    report = prune24(perturb(Convs()).eval(), permute=True)
    assert "c1 -> bn -> function relu -> c2" in report["c2"].permutation_note
    assert "GroupNorm(num_groups=4)" in report["c3"].permutation_note
    assert "c3 -> gn1 -> function sigmoid -> c4" in report["c4"].permutation_note  # 1 group: invariant stats
    assert "input of the model" in report["c1"].permutation_note
    report = prune24(Untraceable(), permute=True)
    assert "mlp.fc1 -> mlp.act -> mlp.fc2" in report["mlp.fc2"].permutation_note
    assert "input of mlp" in report["mlp.fc1"].permutation_note


@pytest.mark.parametrize("shape", [(16, 32), (48, 64), (7, 128), (8, 16, 3, 3), (4, 8, 1, 1)])
def test_search_never_lowers_kept_magnitude(shape):
    torch.manual_seed(sum(shape))
    w = torch.randn(*shape) * torch.rand(*shape)  # uneven magnitudes leave room to improve
    perm, swaps = search_permutation(w)
    assert sorted(perm.tolist()) == list(range(magnitude_matrix(w).shape[1]))
    before = kept_fraction(w)
    permuted = w[:, perm]
    after = kept_fraction(permuted)
    assert after >= before
    if magnitude_matrix(w).shape[1] > 4:
        assert swaps > 0 and after > before


def test_kept_fraction_hand_computed():
    w = torch.tensor([[1.0, -4.0, 2.0, 3.0, 0.0, 0.0, 1.0, 1.0]])
    assert kept_fraction(w) == pytest.approx((4 + 3 + 1 + 1) / 12)
    # Swapping channels 0 and 4 (a 0 into the first group, the 1 into the second) keeps more.
    assert kept_fraction(w[:, [4, 1, 2, 3, 0, 5, 6, 7]]) == pytest.approx((4 + 3 + 1 + 1) / 12)
    w2 = torch.tensor([[4.0, 3.0, 2.0, 1.0, 4.0, 3.0, 2.0, 1.0]])
    perm, _ = search_permutation(w2)
    assert kept_fraction(w2[:, perm]) == pytest.approx((4 + 4 + 3 + 3) / 20)


def test_project_uvit_permutes_mlp_fc2_only_and_keeps_function():
    models = pytest.importorskip("sparsedm.models")
    torch.manual_seed(0)
    cfg = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=3, num_heads=2, mlp_ratio=4, qkv_bias=False,
               qk_scale=None, mlp_time_embed=False, num_classes=-1, use_checkpoint=False, conv=True, skip=True)
    model = models.build("uvit", cfg, device="cpu").eval()
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2) * 999
    with torch.no_grad():
        expected = model(x, t)
    report = permute_channels(model, include=UVIT_SPARSEDM_LAYERS)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), expected, rtol=1e-5, atol=1e-5)
    assert {l.name for l in report.layers if l.permuted} == {n for n in (l.name for l in report.layers)
                                                              if n.endswith("mlp.fc2")}
    assert "reshape" in report["mid_block.attn.proj"].permutation_note
    assert "residual" in report["mid_block.attn.qkv"].permutation_note
