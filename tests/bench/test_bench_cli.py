"""`sparsedm bench kernels` on CPU writes valid results files."""

import csv
import json

import pytest

from sparsedm.bench.report import load_results, results_stem
from sparsedm.cli import main


def test_bench_kernels_cpu_writes_csv_json_md_png(tmp_path, capsys):
    rc = main(["bench", "kernels", "--device", "cpu", "--shapes", "cpu-linear,cpu-conv", "--op", "all",
               "--backends", "reference", "--reps", "2", "--warmup", "1", "--out", str(tmp_path)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "CPU numbers" in captured.err
    jsons = list(tmp_path.glob("*-kernels.json"))
    assert len(jsons) == 1
    doc = load_results(str(jsons[0]))
    assert doc["gpu"] == "cpu"
    rows = doc["rows"]
    ops = {r["op"] for r in rows}
    assert ops == {"linear", "int8", "sparse-int8", "conv"}
    for r in rows:
        assert set(r) >= {"kind", "op", "shape", "table", "dtype", "backend", "ms", "tflops", "speedup_vs_dense", "peak_fraction"}
        assert r["kind"] == "kernel" and r["ms"] > 0
    dense = [r for r in rows if r["backend"] == "dense"]
    assert dense and all(r["speedup_vs_dense"] == 1.0 for r in dense)
    assert any(r["backend"] == "reference" for r in rows)
    with open(jsons[0].with_suffix(".csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and table[0]["backend"] == "dense"
    assert jsons[0].with_suffix(".md").read_text().count("\n|") >= len(rows)
    png = jsons[0].with_suffix(".png")
    if png.exists():  # matplotlib installed
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "reference" in captured.out


def test_bench_kernels_unknown_table(capsys):
    assert main(["bench", "kernels", "--device", "cpu", "--shapes", "nope"]) == 2
    assert "unknown shape table 'nope'" in capsys.readouterr().err


def test_results_stem_is_filesystem_safe():
    stem = results_stem({"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-11-24T10:00:00Z", "commit": "abc123"}, "kernels")
    assert stem == "nvidia-h100-80gb-hbm3-2026-11-24-abc123-kernels"


def test_load_results_rejects_foreign_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a sparsedm results file"):
        load_results(str(p))
