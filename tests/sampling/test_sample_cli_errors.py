"""``sparsedm sample`` on bad input: one clear error (problem + fix), exit 2, no traceback, and no
output written, or only after every output was checked writable and then all written together."""

import builtins
import errno
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch

import sparsedm.sampling.run as run
from sparsedm.sampling.cli import main

TINY = "sparsedm.sampling.testing:tiny_factory"
FAST = ["-n", "2", "--steps", "2", "--device", "cpu", "--no-progress"]


def _demo() -> str:
    from sparsedm.demo import demo_dir

    return os.path.join(demo_dir(), "demo.safetensors")


def _fails(argv, capsys) -> str:
    """Run the command, expect exit 2 and a short error without a traceback; return stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(("sparsedm sample: error:", "  what to do:"))]
    assert lines and lines[0].startswith("sparsedm sample: error:"), err
    assert len(lines) <= 2, err
    return err


@pytest.fixture
def no_sampling(monkeypatch):
    """Errors that can be found before sampling must be: sampling is then a test failure."""
    def generate(*args, **kwargs):
        raise AssertionError("sampled before reporting the error")

    monkeypatch.setattr(run, "generate", generate)


def _deny(monkeypatch, path, *, write: bool):
    """Make ``path`` unreadable (a file) or unwritable (a directory). chmod does it for a normal
    user; as root chmod binds nothing, so the open / temp-file creation is refused as well."""
    os.chmod(path, 0o555 if write else 0)
    if write:
        real_mkstemp = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and os.path.samefile(dir, path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, ".tmp"))
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    else:
        real_open = builtins.open

        def open_(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == os.path.abspath(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_)


# ---- 1. a state_dict that does not fit the preset


def test_state_dict_of_another_size_names_the_first_mismatched_tensor(tmp_path, capsys, no_sampling):
    import sparsedm.models as models

    tiny = dict(models.PRESETS["uvit-s2-cifar10"]["config"], img_size=8, embed_dim=64, depth=2, num_heads=2)
    sd = tmp_path / "tiny_uvit.pth"
    torch.save(models.build("uvit", tiny, device="cpu").state_dict(), sd)
    err = _fails(["--preset", "uvit-s2-cifar10", "--state-dict", str(sd), "--npz", str(tmp_path / "s.npz"), *FAST],
                 capsys)
    assert f"--state-dict {sd} does not fit preset uvit-s2-cifar10: pos_embed is [1, 17, 64] in the file, " \
           "[1, 257, 512] in the preset" in err
    assert not (tmp_path / "s.npz").exists()


def test_converted_file_as_state_dict_says_pass_it_as_model(tmp_path, capsys, no_sampling):
    err = _fails(["--preset", "uvit-s2-cifar10", "--state-dict", _demo(), "--npz", str(tmp_path / "s.npz"), *FAST],
                 capsys)
    assert "is a converted sparsedm file, not a plain state_dict" in err
    assert f"pass it as MODEL instead, without --preset/--state-dict: sparsedm sample {_demo()}" in err


def test_state_dict_that_is_not_a_checkpoint(tmp_path, capsys, no_sampling):
    text = tmp_path / "notes.pth"
    text.write_text("hello, not a checkpoint\n")
    err = _fails(["--preset", "uvit-s2-cifar10", "--state-dict", str(text), "--npz", str(tmp_path / "s.npz"), *FAST],
                 capsys)
    assert f"--state-dict {text} cannot be read as a checkpoint: it is neither a torch.save file nor .safetensors" in err


# ---- 2. outputs: checked before sampling, errors with strerror, both written or neither


def test_unwritable_output_directory_fails_before_sampling_and_writes_nothing(tmp_path, capsys, monkeypatch,
                                                                              no_sampling):
    locked = tmp_path / "locked"
    locked.mkdir()
    _deny(monkeypatch, locked, write=True)
    try:
        err = _fails([f"--factory={TINY}", "--npz", str(tmp_path / "ok.npz"), "-o", str(locked / "x.png"), *FAST],
                     capsys)
    finally:
        os.chmod(locked, 0o755)
    assert f"cannot write -o {locked / 'x.png'}: Permission denied (in {locked})" in err
    assert sorted(os.listdir(tmp_path)) == ["locked"] and not os.listdir(locked)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_output_in_proc_reports_strerror_not_errno(capsys, no_sampling):
    err = _fails([f"--factory={TINY}", "-o", "/proc/x.png", *FAST], capsys)
    assert "cannot write -o /proc/x.png: " in err and "error: 2" not in err
    assert not os.path.exists("/proc/x.png")


def test_output_that_is_a_directory(tmp_path, capsys, no_sampling):
    (tmp_path / "grid.png").mkdir()
    err = _fails([f"--factory={TINY}", "-o", str(tmp_path / "grid.png"), *FAST], capsys)
    assert "it is a directory" in err


def test_npz_name_is_checked_before_sampling(tmp_path, capsys, no_sampling):
    err = _fails([f"--factory={TINY}", "--npz", str(tmp_path / "s.np"), *FAST], capsys)
    assert "must end in .npz" in err


def test_a_failed_write_leaves_neither_output(tmp_path, capsys, monkeypatch):
    """The disk fills while the PNG (written second) is synced: the .npz, already complete in its
    temporary file, is not published either, and files of the same names are left untouched."""
    npz, png = tmp_path / "s.npz", tmp_path / "s.png"
    npz.write_bytes(b"old npz")
    png.write_bytes(b"old png")
    real_fsync, synced = os.fsync, []

    def fsync(fd):
        synced.append(fd)
        if len(synced) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    err = _fails([f"--factory={TINY}", "--npz", str(npz), "-o", str(png), *FAST], capsys)
    assert f"cannot write {png}: No space left on device; no output was written" in err
    assert npz.read_bytes() == b"old npz" and png.read_bytes() == b"old png"
    assert sorted(os.listdir(tmp_path)) == ["s.npz", "s.png"]  # no temporaries left


# ---- 3. unreadable inputs


def test_unreadable_model_file_names_the_file_and_the_fix(tmp_path, capsys, monkeypatch, no_sampling):
    model = tmp_path / "model.safetensors"
    shutil.copy(_demo(), model)
    _deny(monkeypatch, model, write=False)
    err = _fails([str(model), "--npz", str(tmp_path / "s.npz"), *FAST], capsys)
    assert f"{model} cannot be read: Permission denied" in err
    assert "permissions" in err
    assert not (tmp_path / "s.npz").exists()


def test_unreadable_state_dict(tmp_path, capsys, monkeypatch, no_sampling):
    sd = tmp_path / "nnet_ema.pth"
    torch.save({"w": torch.zeros(1)}, sd)
    _deny(monkeypatch, sd, write=False)
    err = _fails(["--preset", "uvit-s2-cifar10", "--state-dict", str(sd), "--npz", str(tmp_path / "s.npz"), *FAST],
                 capsys)
    assert f"--state-dict {sd} cannot be read: Permission denied" in err


# ---- 4. --grid-max


@pytest.mark.parametrize("grid_max", [0, -1])
def test_grid_max_below_one_is_refused(grid_max, tmp_path, capsys, no_sampling):
    err = _fails([f"--factory={TINY}", "-o", str(tmp_path / "g.png"), "--grid-max", str(grid_max), *FAST], capsys)
    assert f"--grid-max {grid_max}: the PNG grid needs at least one image" in err
    assert not os.listdir(tmp_path)


def test_grid_max_one_is_a_one_image_grid(tmp_path):
    from tests.sampling.test_cli import _read_png

    png, npz = tmp_path / "g.png", tmp_path / "g.npz"
    assert main([f"--factory={TINY}", "-o", str(png), "--npz", str(npz), "--grid-max", "1", *FAST]) == 0
    from sparsedm.sampling.images import make_grid

    np.testing.assert_array_equal(_read_png(png), make_grid(np.load(npz)["arr_0"][:1]))


# ---- 5. messages that name the option and the fix


@pytest.mark.parametrize("seed", ["99999999999999999999999", str(-(2**63) - 1), str(2**63 - 1)])
def test_seed_out_of_range_names_seed(seed, tmp_path, capsys, no_sampling):
    err = _fails([f"--factory={TINY}", "--npz", str(tmp_path / "s.npz"), "--seed", seed, *FAST], capsys)
    # -n 2: samples use seed and seed + 1, so the largest seed is 2**63 - 2
    assert f"--seed {seed} is out of range" in err and f"pass a --seed from {-(2**63)} to {2**63 - 2}" in err


@pytest.mark.parametrize("seed", [2**63 - 2, -5])  # the largest seed, and a negative one (valid before the range check)
def test_seeds_in_range_sample(seed, tmp_path):
    npz = tmp_path / "s.npz"
    assert main([f"--factory={TINY}", "--npz", str(npz), "--seed", str(seed), *FAST]) == 0
    assert np.load(npz)["arr_0"].shape[0] == 2


def test_autoencoder_that_is_not_a_checkpoint(tmp_path, capsys, no_sampling):
    text = tmp_path / "text.pth"
    text.write_text("hello, not a checkpoint\n")
    err = _fails([_demo(), "--autoencoder", str(text), "--npz", str(tmp_path / "s.npz"), *FAST], capsys)
    assert f"--autoencoder {text} is not a readable checkpoint of the KL autoencoder" in err
    assert "AutoencoderKL folder" in err and "KeyError" not in err


def test_cfg_scale_on_an_unconditional_model(tmp_path, capsys, no_sampling):
    err = _fails([_demo(), "--cfg-scale", "1", "--npz", str(tmp_path / "s.npz"), *FAST], capsys)
    assert "--cfg-scale 1.0: this model is unconditional" in err
    assert "drop --cfg-scale" in err and "--class-label" in err


def test_cfg_scale_zero_on_an_unconditional_model_samples(tmp_path):
    npz = tmp_path / "s.npz"
    assert main([f"--factory={TINY}", "--cfg-scale", "0", "--npz", str(npz), *FAST]) == 0
    assert np.load(npz)["arr_0"].shape[0] == 2
