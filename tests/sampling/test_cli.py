"""``sparsedm sample`` on CPU: PNG + .npz, errors, and a 2-rank gloo torchrun run equal to 1 rank."""

import os
import shutil
import socket
import subprocess
import sys
import zlib

import numpy as np
import pytest

from sparsedm.sampling.cli import main
from sparsedm.sampling.images import make_grid, png_bytes

TINY = "sparsedm.sampling.testing:tiny_factory"
TINY_EM = "sparsedm.sampling.testing:tiny_factory_em"


def _read_png(path):
    """Decode our own PNGs (filter 0, 8-bit) without PIL."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        tag = data[pos + 4:pos + 8]
        chunks.setdefault(tag, b"")
        chunks[tag] += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    w, h = int.from_bytes(chunks[b"IHDR"][:4], "big"), int.from_bytes(chunks[b"IHDR"][4:8], "big")
    c = {0: 1, 2: 3, 6: 4}[chunks[b"IHDR"][9]]
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(h, 1 + w * c)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, c)


def test_png_writer_roundtrip(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    p = tmp_path / "x.png"
    p.write_bytes(png_bytes(img))
    np.testing.assert_array_equal(_read_png(p), img)
    pil = pytest.importorskip("PIL.Image")
    np.testing.assert_array_equal(np.array(pil.open(p)), img)


def test_sample_writes_png_and_npz(tmp_path):
    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    rc = main([f"--factory={TINY}", "-n", "5", "--batch-size", "2", "--seed", "3", "-o", str(png), "--npz", str(npz),
               "--no-progress"])
    assert rc == 0
    arr = np.load(npz)["arr_0"]
    assert arr.shape == (5, 8, 8, 3) and arr.dtype == np.uint8
    np.testing.assert_array_equal(_read_png(png), make_grid(arr))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # atomic writes leave no temporaries
    # batch size does not change the images (per-sample seeds)
    npz2 = tmp_path / "t.npz"
    assert main([f"--factory={TINY}", "-n", "5", "--batch-size", "5", "--seed", "3", "--npz", str(npz2), "--no-progress"]) == 0
    np.testing.assert_array_equal(np.load(npz2)["arr_0"], arr)


def test_sample_with_a_preset_if_models_exist(tmp_path):
    models = pytest.importorskip("sparsedm.models")
    tiny = [n for n, p in models.PRESETS.items() if p.get("resolution", 999) <= 32 and p.get("in_channels") == 3]
    if not tiny:
        pytest.skip("no small pixel preset")
    npz = tmp_path / "p.npz"
    assert main(["--preset", tiny[0], "-n", "2", "--steps", "2", "--npz", str(npz), "--device", "cpu", "--no-progress"]) == 0
    assert np.load(npz)["arr_0"].shape[0] == 2


def test_preset_prune_runs_the_masked_model_on_the_sparse_modules(tmp_path, monkeypatch, capsys):
    """--preset + a SparseDM-style state_dict (pruned weights not zeroed) + --prune samples the 2:4
    masked network, on SparseLinear modules: the same images as the state_dict masked beforehand,
    other images than the unmasked dense network; without --prune, a hint names --prune."""
    import torch

    import sparsedm.models as models
    from sparsedm.formats import mask24

    config = dict(models.PRESETS["uvit-s2-cifar10"]["config"], img_size=8, embed_dim=64, depth=2, num_heads=2)
    preset = {"arch": "uvit", "config": config, "resolution": 8, "in_channels": 3,
              "sampler": {"kind": "vpsde_euler", "steps": 3, "schedule": "vpsde_linear", "beta_min": 0.1, "beta_max": 20.0,
                          "time_input": "t*999"}}
    monkeypatch.setitem(models.PRESETS, "tiny-uvit-test", preset)
    torch.manual_seed(0)
    # SparseDM's U-ViTs carry a qkv bias the published preset lacks: the preset follows the keys
    state = models.build("uvit", dict(config, qkv_bias=True), device="cpu").state_dict()
    assert config["qkv_bias"] is False and any(k.endswith("attn.qkv.bias") for k in state)
    sparse_names = models.sparse_layer_names("uvit", models.build("uvit", config))
    masked = {k: (v * mask24(v) if k.rsplit(".", 1)[0] in sparse_names and k.endswith(".weight") else v)
              for k, v in state.items()}
    dense_file, masked_file = tmp_path / "dense.pth", tmp_path / "masked.pth"
    torch.save(state, dense_file)
    torch.save(masked, masked_file)

    def sample(sd, *extra):
        out = tmp_path / f"{len(os.listdir(tmp_path))}.npz"
        argv = ["--preset", "tiny-uvit-test", "--state-dict", str(sd), "-n", "3", "--npz", str(out), "--device", "cpu",
                "--no-progress", *extra]
        assert main(argv) == 0
        return np.load(out)["arr_0"], capsys.readouterr().err

    pruned, err = sample(dense_file, "--prune")
    assert f"{len(sparse_names)} of" in err, err
    premasked, err = sample(masked_file)
    assert f"{len(sparse_names)} of" in err, err
    np.testing.assert_array_equal(pruned, premasked)
    unpruned, err = sample(dense_file)
    assert "add --prune" in err
    assert np.abs(unpruned.astype(int) - pruned.astype(int)).max() > 0


def test_guided_class_conditional_preset_uses_the_last_label_row_as_null(tmp_path, monkeypatch, capsys):
    """A guided U-ViT (ImageNet: num_classes 1001, the last row the null class): the null label
    is num_classes - 1, and sampled labels never are it."""
    import sparsedm.models as models

    config = dict(models.PRESETS["uvit-s2-cifar10"]["config"], img_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=11)
    preset = {"arch": "uvit", "config": config, "resolution": 8, "in_channels": 3,
              "sampler": {"kind": "dpm_solver", "steps": 2, "schedule": "vpsde_linear", "beta_min": 0.1, "beta_max": 20.0,
                          "time_input": "t*999", "cfg_scale": 0.4}}
    monkeypatch.setitem(models.PRESETS, "tiny-guided-test", preset)
    out = tmp_path / "g.npz"
    assert main(["--preset", "tiny-guided-test", "-n", "24", "--npz", str(out), "--device", "cpu", "--no-progress"]) == 0
    labels = np.load(out)["labels"]
    assert labels.shape == (24,) and labels.max() <= 9 and len(set(labels.tolist())) > 3
    assert main(["--preset", "tiny-guided-test", "-n", "1", "--npz", str(out), "--device", "cpu", "--no-progress",
                 "--class-label", "10"]) == 2
    assert "the model has 10 classes (0..9)" in capsys.readouterr().err


def guided_factory(device="cpu", dtype=None, **_):
    """A factory whose model says num_classes=10 and holds 11 label rows (the null class last)."""
    from sparsedm.sampling.testing import tiny_factory

    return tiny_factory(device, dtype or __import__("torch").float32, num_classes=10)


def test_guided_factory_null_class_is_the_tables_last_row(tmp_path):
    out = tmp_path / "f.npz"
    assert main(["--factory=tests.sampling.test_cli:guided_factory", "-n", "80", "--cfg-scale", "0.4", "--npz", str(out),
                 "--no-progress"]) == 0
    labels = np.load(out)["labels"]
    assert sorted(set(labels.tolist())) == list(range(10))  # all 10 real classes drawn; row 10 is the null class


def test_ctrl_c_writes_nothing(tmp_path, monkeypatch, capsys):
    import sparsedm.sampling.run as run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "generate", interrupted)
    out = tmp_path / "s.npz"
    assert main([f"--factory={TINY}", "-n", "2", "--npz", str(out), "--no-progress"]) == 130
    assert "interrupted; no output written" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_converted_file_samples_and_a_distilled_one_warns_off_its_steps(tmp_path, capsys):
    """`sparsedm sample FILE` on the shipped demo (a 4-step distilled 2:4 U-ViT): PNG + npz, and
    asking it for other steps than it was distilled for says so."""
    from sparsedm.demo import demo_dir

    demo = os.path.join(demo_dir(), "demo.safetensors")
    png, npz = tmp_path / "d.png", tmp_path / "d.npz"
    assert main([demo, "-n", "3", "-o", str(png), "--npz", str(npz), "--device", "cpu", "--no-progress"]) == 0
    assert np.load(npz)["arr_0"].shape[0] == 3 and png.exists()
    assert "distilled for" not in capsys.readouterr().err
    assert main([demo, "-n", "1", "--steps", "2", "--npz", str(npz), "--device", "cpu", "--no-progress"]) == 0
    assert "this model was distilled for 4 steps; sampling it with --steps 2" in capsys.readouterr().err


@pytest.mark.parametrize("argv,msg", [
    ([], "exactly one model"),
    ([f"--factory={TINY}"], "nothing to write"),
    ([f"--factory={TINY}", "-o", "x.jpg"], "PNG"),
    ([f"--factory={TINY}", "-o", "/no/such/dir/x.png"], "directory does not exist"),
    (["missing.safetensors", "--npz", "x.npz"], "no such file"),
    ([f"--factory={TINY}", "--npz", "x.npz", "--sampler", "zigzag"], "unknown sampler kind"),
    (["--factory=nope", "--npz", "x.npz"], "MODULE:FUNCTION"),
    ([f"--factory={TINY}", "--npz", "x.npz", "--cuda-graph", "--device", "cpu"], "needs a CUDA device"),
    ([f"--factory={TINY}", "--npz", "x.npz", "--prune"], "go with --preset"),
])
def test_errors_are_clear(argv, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--no-progress"]) == 2
    assert msg in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("torchrun") is None and sys.platform == "win32", reason="needs torchrun")
def test_two_gloo_ranks_give_the_same_images_as_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    common = [f"--factory={TINY_EM}", "-n", "7", "--batch-size", "2", "--seed", "11", "--no-progress", "--device", "cpu"]
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    subprocess.run([sys.executable, "-m", "sparsedm.sampling", *common, "--npz", str(one)], check=True, env=env,
                   timeout=120)
    # the README's form: torchrun ... -m sparsedm sample (the 1-rank run above used python -m sparsedm.sampling)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                    str(_free_port()), "-m", "sparsedm", "sample", *common, "--npz", str(two)], check=True, env=env,
                   timeout=180)
    a, b = np.load(one)["arr_0"], np.load(two)["arr_0"]
    assert a.shape == (7, 8, 8, 3)
    np.testing.assert_array_equal(a, b)
