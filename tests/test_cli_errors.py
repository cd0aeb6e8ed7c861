"""Bad input to the CLI: one readable line on stderr and a non-zero exit, no traceback."""

import pytest

from sparsedm.cli import main
from sparsedm.demo import demo_dir

DEMO = f"{demo_dir()}/demo.safetensors"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "kernels", "--device", "cpu", "--backends", "nope"], "unknown backend 'nope'"),
        (["bench", "model", "--preset", "uvit-s2-cifar10", "--device", "cpu", "--backend", "nope"], "unknown backend 'nope'"),
        (["bench", "model", "--preset", "uvit-s2-cifar10", "--device", "cpu", "--out", "/dev/null/x"], "cannot write results to --out"),
        (["sample", DEMO, "-n", "2", "-o", "x.png", "--backend", "nope"], "unknown backend 'nope'"),
        (["demo", "--out", "/dev/null/x"], "cannot write to --out"),
    ],
)
def test_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_files_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert main(["sample", str(bad), "-n", "2", "-o", str(tmp_path / "x.png")]) == 2
    assert "bad.safetensors" in capsys.readouterr().err
    assert main(["bench", "model", str(bad), "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "bad.safetensors" in capsys.readouterr().err
    pth = tmp_path / "bad.pth"
    pth.write_bytes(b"junk")
    assert main(["sample", "--preset", "uvit-s2-cifar10", "--state-dict", str(pth), "-o", str(tmp_path / "x.png")]) == 2
    assert "cannot be read as a checkpoint" in capsys.readouterr().err


def test_forced_backend_runs_the_sparse_layers(tmp_path):
    from sparsedm.ops import dispatch_counts

    before = dispatch_counts[("sparse24_linear", "reference")]
    assert main(["sample", DEMO, "-n", "2", "-o", str(tmp_path / "y.png"), "--backend", "reference"]) == 0
    assert dispatch_counts[("sparse24_linear", "reference")] > before
