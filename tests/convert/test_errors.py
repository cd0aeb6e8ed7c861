"""Bad input: one clear line on stderr naming the problem and the fix, a non-zero exit, no
traceback, and no output file (nor a temporary one)."""

import argparse
import json
import pickle

import pytest
import torch

from sparsedm.convert import cli
from tests.convert.conftest import dir_listing, make_unet, make_uvit


def run_cli(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli.register(sub)
    args = parser.parse_args(["convert", *argv])
    return args.func(args)


def expect_error(tmp_path, capsys, argv, pattern):
    before = dir_listing(tmp_path)
    rc = run_cli(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert pattern.lower() in err.lower(), err
    assert dir_listing(tmp_path) == before, "left a file behind"
    return err


@pytest.fixture
def good_uvit(tmp_path):
    model, _ = make_uvit(qkv_bias=True)
    path = tmp_path / "nnet_ema.pth"
    torch.save(model.state_dict(), path)
    return path


def test_success_exit_zero_and_summary(tmp_path, capsys, good_uvit):
    out = tmp_path / "o.safetensors"
    assert run_cli([str(good_uvit), "-o", str(out), "--preset", "toy-uvit"]) == 0
    text = capsys.readouterr().out
    assert "sparse24" in text and "retained magnitude" in text and out.exists()


def test_truncated_checkpoint(tmp_path, capsys, good_uvit):
    data = good_uvit.read_bytes()
    good_uvit.write_bytes(data[: len(data) // 2])
    expect_error(tmp_path, capsys, [str(good_uvit), "-o", str(tmp_path / "o.safetensors"), "--preset", "toy-uvit"], "truncated or corrupted")


@pytest.mark.parametrize("seed", [0, 14])
def test_corrupted_bytes(tmp_path, capsys, seed):
    import random

    path = tmp_path / "garbage.pth"
    path.write_bytes(random.Random(seed).randbytes(4096))
    expect_error(tmp_path, capsys, [str(path), "-o", str(tmp_path / "o.safetensors")], "garbage.pth")


class NotATensor:
    pass


def test_pickle_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"obj": NotATensor()}, path)
    expect_error(tmp_path, capsys, [str(path), "-o", str(tmp_path / "o.safetensors")], "never unpickles code")


def test_pickle_that_is_not_a_checkpoint(tmp_path, capsys):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    expect_error(tmp_path, capsys, [str(path), "-o", str(tmp_path / "o.safetensors")], "not a model checkpoint")
    path2 = tmp_path / "plain.pkl"
    path2.write_bytes(pickle.dumps({"a": 1}))
    expect_error(tmp_path, capsys, [str(path2), "-o", str(tmp_path / "o.safetensors")], "plain.pkl")


def test_missing_and_unexpected_keys_are_named(tmp_path, capsys):
    model, _ = make_uvit(qkv_bias=True)
    sd = model.state_dict()
    del sd["mid_block.mlp.fc2.bias"]
    sd["extra.head.weight"] = torch.zeros(2, 2)
    path = tmp_path / "k.pth"
    torch.save(sd, path)
    err = expect_error(tmp_path, capsys, [str(path), "-o", str(tmp_path / "o.safetensors"), "--preset", "toy-uvit"], "missing 1 key")
    assert "mid_block.mlp.fc2.bias" in err and "extra.head.weight" in err


def test_nan_inf_weights(tmp_path, capsys):
    model, _ = make_uvit(qkv_bias=True)
    sd = model.state_dict()
    sd["in_blocks.0.mlp.fc1.weight"][3, 5] = float("nan")
    sd["norm.weight"][0] = float("inf")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    expect_error(tmp_path, capsys, [str(path), "-o", str(tmp_path / "o.safetensors"), "--preset", "toy-uvit"], "NaN/Inf")


def test_strict_k_not_multiple_of_8(tmp_path, capsys):
    model, _ = make_unet()
    path = tmp_path / "u.pth"
    torch.save(model.state_dict(), path)
    expect_error(tmp_path, capsys, [str(path), "-o", str(tmp_path / "o.safetensors"), "--from", "sparsedm",
                                    "--preset", "toy-unet", "--strict"], "not a multiple of 8")


def test_unknown_architecture_and_preset(tmp_path, capsys):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.randn(4, 4)}, path)
    expect_error(tmp_path, capsys, [str(path), "-o", str(tmp_path / "o.safetensors"), "--from", "uvit"], "unknown architecture")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"arch": "resnet", "config": {}}))
    expect_error(tmp_path, capsys, [str(path), "-o", str(tmp_path / "o.safetensors"), "--from", "uvit", "--config", str(cfg)],
                 "unknown architecture 'resnet'")
    expect_error(tmp_path, capsys, [str(path), "-o", str(tmp_path / "o.safetensors"), "--from", "uvit", "--preset", "nope"], "unknown preset")


def test_heads_cannot_be_inferred(tmp_path, capsys, good_uvit):
    expect_error(tmp_path, capsys, [str(good_uvit), "-o", str(tmp_path / "o.safetensors")], "num_heads cannot be inferred")


def test_zeroed_source_that_is_not_24(tmp_path, capsys, good_uvit):
    expect_error(tmp_path, capsys, [str(good_uvit), "-o", str(tmp_path / "o.safetensors"), "--from", "zeroed",
                                    "--preset", "toy-uvit"], "not 2:4 sparse in its zeros")


def test_zeroed_source_with_prune_applies_the_rule(tmp_path, capsys, good_uvit):
    """--from zeroed --prune: the groups that are not 2:4 get the 2:4 rule (the error above
    names --prune as the fix, so --prune must work with --from zeroed too)."""
    from sparsedm.formats import mask24

    out = tmp_path / "o.safetensors"
    assert run_cli([str(good_uvit), "-o", str(out), "--from", "zeroed", "--preset", "toy-uvit", "--prune"]) == 0
    from sparsedm.convert import load

    loaded = load(str(out))
    state = torch.load(good_uvit)
    w = state["in_blocks.0.attn.qkv.weight"]
    assert torch.equal(loaded.model.in_blocks[0].attn.qkv.dense_weight().float(), (w * mask24(w)).float())


def test_asp_mask_that_is_not_24(tmp_path, capsys):
    model, _ = make_uvit(qkv_bias=False)
    sd = model.state_dict()
    sd["in_blocks.0.attn.qkv.__weight_mma_mask"] = torch.ones_like(sd["in_blocks.0.attn.qkv.weight"], dtype=torch.bool)
    path = tmp_path / "asp.pth"
    torch.save(sd, path)
    expect_error(tmp_path, capsys, [str(path), "-o", str(tmp_path / "o.safetensors"), "--preset", "toy-uvit-nobias"], "not a 2:4 mask")


def test_debug_shows_traceback(tmp_path, capsys):
    path = tmp_path / "list.pth"
    torch.save([1], path)
    assert run_cli([str(path), "-o", str(tmp_path / "o.safetensors"), "--debug"]) != 0
    assert "Traceback" in capsys.readouterr().err


def test_failure_midway_keeps_existing_output(tmp_path, capsys, good_uvit):
    """A failed conversion never touches an existing file at -o."""
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"previous")
    model, _ = make_uvit(qkv_bias=True)
    sd = model.state_dict()
    sd["out_blocks.0.mlp.fc2.weight"][0, 0] = float("nan")  # the last layers: fails after most data was written
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    expect_error(tmp_path, capsys, [str(bad), "-o", str(out), "--preset", "toy-uvit"], "NaN/Inf")
    assert out.read_bytes() == b"previous"


def test_info_on_bad_files(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 3)
    assert cli.file_info(str(bad)) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "too short" in err


@pytest.mark.parametrize("content,pattern", [
    ('{"arch": "uvit", "config": {}}', "it is JSON text (a config.json?"),
    ("hello world\n", "it is text: 'hello world"),
])
def test_text_files_are_named_as_such(tmp_path, capsys, content, pattern):
    src = tmp_path / "config.json"
    src.write_text(content)
    expect_error(tmp_path, capsys, [str(src), "-o", str(tmp_path / "o.safetensors")], pattern)


def test_diffusers_reader_without_config_json(tmp_path, capsys, good_uvit):
    pytest.importorskip("diffusers")
    expect_error(tmp_path, capsys, [str(good_uvit), "-o", str(tmp_path / "o.safetensors"), "--from", "diffusers"],
                 "a diffusers UNet is a folder with config.json")


def test_output_directory_missing(tmp_path, capsys, good_uvit):
    expect_error(tmp_path, capsys, [str(good_uvit), "-o", str(tmp_path / "no" / "o.safetensors"), "--preset", "toy-uvit"],
                 "does not exist")


def test_write_failure_is_one_line(tmp_path, capsys, good_uvit, monkeypatch):
    from sparsedm.convert import fileformat

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileformat.AtomicWriter, "write", disk_full)
    expect_error(tmp_path, capsys, [str(good_uvit), "-o", str(tmp_path / "o.safetensors"), "--preset", "toy-uvit"],
                 "cannot write")
