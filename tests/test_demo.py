"""`sparsedm demo`: the shipped model sampled by the sparse and the dense path."""

import json

import torch

from sparsedm.cli import main
from sparsedm.demo import densify


def test_demo_writes_grids_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--device", "cpu", "--out", str(out)]) == 0
    for name in ("sparse_grid.png", "dense_grid.png", "teacher_grid.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "report.json").read_text())
    assert result["steps"] == 4 and result["sparse_layers"] > 0
    assert result["sparse_macs"] < result["dense_macs"]
    # Same weights, same noise: the sparse runtime and the dense path agree (fp32, CPU).
    assert result["max_abs_diff"] < 1e-4
    report = (out / "report.md").read_text()
    assert "MACs per image" in report and "time per image" in report
    assert "sparse_grid.png" in capsys.readouterr().out


def test_densify_replaces_every_sparsedm_module():
    import sparsedm
    from sparsedm.nn import SparseLinear

    lin = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
    sparse = sparsedm.optimize(lin, prune=True)
    assert any(isinstance(m, SparseLinear) for m in sparse.modules())
    dense = densify(sparse)
    assert not any(isinstance(m, SparseLinear) for m in dense.modules())
    x = torch.randn(3, 64)
    torch.testing.assert_close(dense(x), sparse(x), rtol=1e-5, atol=1e-6)


def test_demo_with_a_backend_that_cannot_run_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "d3"
    assert main(["demo", "--device", "cpu", "--backend", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cuda" in err and "Traceback" not in err, err
    assert not out.exists()
