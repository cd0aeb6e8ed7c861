import copy
import importlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsedm.formats import is_24_sparse, mask24
from sparsedm.train import (DEFAULT_DECAY, SparsitySchedule, SRSTEConv2d, SRSTELinear, finalize, nm_mask,
                            sparsify_for_training)
from tests.train.models import Block, Convs


def test_linear_ste_gradient_and_decay_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 6))
    w0 = model[0].weight.detach().clone()
    sparsify_for_training(model, decay=1e-2)
    assert isinstance(model[0], SRSTELinear)
    x, g = torch.randn(5, 16), torch.randn(5, 6)
    y = model(x)
    mask = mask24(w0)
    torch.testing.assert_close(y, x @ (w0 * mask).T + model[0].bias)
    (y * g).sum().backward()
    # d(sum(g * (x @ W~^T)))/dW~ = g^T x, passed straight through to W, plus lambda (1 - mask) W.
    expected = g.T @ x + 1e-2 * (~mask) * w0
    torch.testing.assert_close(model[0].weight.grad, expected)
    torch.testing.assert_close(model[0].bias.grad, g.sum(0))
    # Pruned positions receive their dense gradient (not zero): that is the straight-through part.
    assert (model[0].weight.grad[~mask] != 0).all()


def test_conv_ste_gradient_and_decay_by_hand():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1, bias=False))
    w0 = model[0].weight.detach().clone()
    sparsify_for_training(model)  # default decay 2e-4
    assert isinstance(model[0], SRSTEConv2d)
    x = torch.randn(2, 8, 5, 5)
    w_leaf = (w0 * mask24(w0)).requires_grad_(True)
    F.conv2d(x, w_leaf, padding=1).pow(2).sum().backward()
    model(x).pow(2).sum().backward()
    mask = mask24(w0)
    expected = w_leaf.grad + DEFAULT_DECAY * (~mask) * w0
    torch.testing.assert_close(model[0].weight.grad, expected)
    assert DEFAULT_DECAY == 2e-4


def test_wrapping_keeps_parameters_names_and_optimizer():
    model = Block()
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = sparsify_for_training(model, exclude="head")
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    assert [n for n, _ in handle.layers] == ["mlp.fc1", "mlp.fc2", "lin", "out"]
    assert handle.skipped["head"] == "excluded" and "not a multiple of 8" in handle.skipped["odd"]
    before = model.lin.weight.detach().clone()
    model(torch.randn(3, 32)).sum().backward()
    opt.step()
    assert not torch.equal(model.lin.weight, before)  # the optimizer updates the wrapped layer
    with pytest.raises(ValueError, match="finalize"):
        sparsify_for_training(model)


@pytest.mark.parametrize("by", ["layers", "ladder", "layers+ladder"])
def test_schedule_ends_exactly_24(by):
    model = Block()
    handle = sparsify_for_training(model, SparsitySchedule(start_step=10, end_step=50, by=by,
                                                            ladder=((6, 8), (3, 4), (2, 4))))
    n = len(handle.layers)
    assert all(p is None for p in handle.patterns().values())  # dense before start
    fractions, kept = [], []
    for step in range(0, 60):
        handle.set_step(step)
        fractions.append(handle.sparse_fraction)
        kept.append(sum(m.pattern[0] / m.pattern[1] if m.pattern else 1.0 for _, m in handle.layers) / n)
        assert (step >= 50) == handle.done
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert kept == sorted(kept, reverse=True) and kept[-1] == 0.5  # density never goes up
    assert set(handle.patterns().values()) == {(2, 4)}
    if by == "layers":
        handle.set_step(30)  # halfway: half of the layers (rounded down)
        assert handle.sparse_fraction == (n // 2) / n
    if by == "ladder":
        handle.set_step(11)
        assert set(handle.patterns().values()) == {(6, 8)}
        handle.set_step(35)
        assert set(handle.patterns().values()) == {(3, 4)}
        handle.set_step(49)
        assert set(handle.patterns().values()) == {(3, 4)}
    x = torch.randn(4, 32)
    handle.set_step(50)
    for _, m in handle.layers:
        assert is_24_sparse(m.masked_weight().detach())
    model(x)


def test_schedule_order_and_one_shot():
    model = Block()
    handle = sparsify_for_training(model, SparsitySchedule(0, 4, order="reverse"))
    handle.set_step(1)  # the first of the 4 layers in reverse order
    assert [n for n, _ in handle.layers][0] == "head"
    assert handle.patterns()["head"] == (2, 4) and handle.patterns()["out"] is None
    model = Block()
    handle = sparsify_for_training(model)  # one-shot
    assert handle.done
    with pytest.raises(ValueError, match="must end with"):
        SparsitySchedule(0, 10, by="ladder", ladder=((3, 4),))
    with pytest.raises(ValueError, match="m must be 4 or 8"):
        SparsitySchedule(0, 10, by="ladder", ladder=((3, 6), (2, 4)))


def test_nm_mask_rule():
    w = torch.tensor([[1.0, -5.0, 3.0, 3.0, 0.5, 0.25, 2.0, -7.0]])
    assert nm_mask(w, 3, 4).tolist() == [[False, True, True, True, True, False, True, True]]
    assert nm_mask(w, 4, 8).tolist() == [[False, True, True, True, False, False, False, True]]
    assert torch.equal(nm_mask(w, 2, 4), mask24(w))
    assert nm_mask(w, 4, 4).all()


def _train(model, handle, steps, x, target):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        handle.step()
    return float(loss.detach())


def test_finalize_returns_plain_24_model_with_same_function():
    torch.manual_seed(0)
    model = Convs().eval()
    x, target = torch.randn(4, 8, 6, 6), torch.randn(4, 16, 6, 6)
    handle = sparsify_for_training(model, SparsitySchedule(0, 10, by="layers+ladder"))
    first = _train(model, handle, 30, x, target)
    last = _train(model, handle, 10, x, target)
    assert last < first
    with torch.no_grad():
        expected = model(x)
    finalize(model)
    assert not any(isinstance(m, (SRSTELinear, SRSTEConv2d)) for m in model.modules())
    assert type(model.c2) is nn.Conv2d
    for name in ("c1", "c2", "c3", "c4"):
        assert is_24_sparse(model.get_submodule(name).weight)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert set(model.state_dict()) == set(Convs().state_dict())


def test_finalize_warns_when_schedule_unfinished():
    model = Block()
    sparsify_for_training(model, SparsitySchedule(0, 100))
    with pytest.warns(UserWarning, match="had not reached 2:4"):
        finalize(model)
    assert is_24_sparse(model.lin.weight)


def test_finalize_feeds_runtime_modules():
    """finalize -> the runtime's 2:4 modules (sparsedm.optimize when it exists) reproduce the model."""
    modules = pytest.importorskip("sparsedm.nn.modules")
    torch.manual_seed(0)
    model = Block()
    x, target = torch.randn(6, 32), torch.randn(6, 8)
    handle = sparsify_for_training(model, SparsitySchedule(0, 5))
    _train(model, handle, 10, x, target)
    finalize(model)
    with torch.no_grad():
        expected = model(x)
    sparsedm = importlib.import_module("sparsedm")
    runtime = copy.deepcopy(model)
    if hasattr(sparsedm, "optimize"):
        runtime = sparsedm.optimize(runtime, min_features=8) or runtime
        assert isinstance(runtime.lin, modules.SparseLinear) and isinstance(runtime.mlp.fc1, modules.SparseLinear)
    else:
        for name in ("mlp.fc1", "mlp.fc2", "lin", "out", "head"):
            parent, _, child = name.rpartition(".")
            holder = runtime.get_submodule(parent) if parent else runtime
            setattr(holder, child, modules.SparseLinear.from_dense(getattr(holder, child)))  # raises unless 2:4
    with torch.no_grad():
        got = runtime(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_finalize_feeds_zeroed_reader(tmp_path):
    readers = pytest.importorskip("sparsedm.convert.readers")
    model = Convs()
    sparsify_for_training(model)
    finalize(model)
    path = tmp_path / "ft.pth"
    torch.save(model.state_dict(), path)
    source = readers.read_zeroed(str(path))
    assert source.rule == "zeros"
    for name in ("c1", "c2", "c3", "c4"):
        assert is_24_sparse(source.state[f"{name}.weight"])


def test_finalize_convert_load_reproduces_uvit(tmp_path):
    """SR-STE on a tiny project U-ViT -> finalize -> `sparsedm convert --from zeroed` -> sparsedm.load."""
    models = pytest.importorskip("sparsedm.models")
    convert_mod = pytest.importorskip("sparsedm.convert")
    import json

    from sparsedm.train import UVIT_SPARSEDM_LAYERS, sampler_settings

    torch.manual_seed(0)
    config = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=3, num_heads=2, mlp_ratio=4,
                  qkv_bias=False, qk_scale=None, mlp_time_embed=False, num_classes=-1, use_checkpoint=False,
                  conv=False, skip=True)
    model = models.build("uvit", config, device="cpu")
    handle = sparsify_for_training(model, SparsitySchedule(0, 4, by="layers"), include=UVIT_SPARSEDM_LAYERS)
    assert len(handle.layers) == 4 * 3  # qkv, proj, fc1, fc2 of in, mid and out blocks
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4) * 999
    for _ in range(6):
        loss = model(x, t).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        handle.step()
    finalize(model.eval())
    with torch.no_grad():
        expected = model(x, t)
    src, cfg, out = tmp_path / "ft.pth", tmp_path / "cfg.json", tmp_path / "ft.safetensors"
    torch.save(model.state_dict(), src)
    settings = sampler_settings(4, time_input=("continuous", 999.0))
    manifest_config = {"arch": "uvit", "config": config, "resolution": 8, "in_channels": 1, "sampler": settings}
    cfg.write_text(json.dumps(manifest_config))
    convert_mod.convert(str(src), str(out), source_format="zeroed", config_path=str(cfg))
    loaded = convert_mod.load(str(out))
    sparse_modules = [m for m in loaded.model.modules() if type(m).__name__ == "SparseLinear"]
    assert len(sparse_modules) >= 12
    with torch.no_grad():
        got = loaded.model(x, t)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert loaded.sampler["steps"] == 4 and loaded.sampler["time_input"] == {"kind": "continuous", "scale": 999.0}


def test_linear_subclass_is_not_wrapped():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(Scaled(16, 8), nn.Linear(16, 8))
    handle = sparsify_for_training(model)
    assert [n for n, _ in handle.layers] == ["1"]
    assert "Scaled subclasses Linear with its own forward" in handle.skipped["0"]
    assert type(model[0]) is Scaled
