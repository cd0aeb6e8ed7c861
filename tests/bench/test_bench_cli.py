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
    # convs are also timed on NCHW input (the layout changes included), as a row of their own
    conv_backends = {r["backend"] for r in rows if r["op"] == "conv"}
    assert {"dense", "reference", "reference+nchw"} <= conv_backends
    assert not any(r["backend"].endswith("+nchw") for r in rows if r["op"] != "conv")
    with open(jsons[0].with_suffix(".csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and table[0]["backend"] == "dense"
    assert jsons[0].with_suffix(".md").read_text().count("\n|") >= len(rows)
    png = jsons[0].with_suffix(".png")
    if png.exists():  # matplotlib installed
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "reference" in captured.out


def test_bench_kernels_interrupted_keeps_the_rows_measured(tmp_path, capsys, monkeypatch):
    """A run stopped by SIGTERM (a time limit) after its first shape writes that shape's rows,
    marked partial, under the op family's own name, and exits 130."""
    import os
    import signal

    from sparsedm.bench import kernels as kernel_bench

    real, calls = kernel_bench.bench_shape, []

    def bench_then_terminate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernel_bench, "bench_shape", bench_then_terminate)
    rc = main(["bench", "kernels", "--device", "cpu", "--shapes", "cpu-linear", "--op", "linear", "--backends", "reference",
               "--reps", "2", "--warmup", "1", "--out", str(tmp_path)])
    assert rc == 130 and len(calls) == 2
    assert "interrupted after 1 of 3 shapes" in capsys.readouterr().err
    (path,) = tmp_path.glob("*-kernels-linear.json")
    doc = load_results(str(path))
    assert doc["partial"] == "1 of 3 shapes"
    assert {r["shape"]["M"] for r in doc["rows"]} == {1}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again


def test_bench_refuses_a_named_backend_that_cannot_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from sparsedm.ops import registry

    if registry.get_backend("cuda").unavailable_reason() is None:
        pytest.skip("the cuda backend runs here")
    for argv in (["kernels", "--shapes", "cpu-linear"], ["model", "--preset", "uvit-s2-cifar10"]):
        rc = main(["bench", *argv, "--device", "cpu", "--out", str(tmp_path), "--backends" if argv[0] == "kernels" else "--backend",
                   "cuda"])
        assert rc == 2
        assert "backend 'cuda' cannot run here:" in capsys.readouterr().err


def test_bench_kernels_unknown_table(capsys):
    assert main(["bench", "kernels", "--device", "cpu", "--shapes", "nope"]) == 2
    assert "unknown shape table 'nope'" in capsys.readouterr().err


def test_results_stem_is_filesystem_safe():
    stem = results_stem({"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-11-24T10:00:00Z", "commit": "abc123"}, "kernels")
    assert stem == "nvidia-h100-80gb-hbm3-2026-11-24-abc123-kernels"


def test_commit_named_by_the_environment(monkeypatch):
    """A copy of the tree without git (a GPU runner) names its commit through SPARSEDM_COMMIT;
    unset, the header carries the checkout's own commit."""
    from sparsedm.bench import environment

    monkeypatch.delenv("SPARSEDM_COMMIT", raising=False)
    own = environment.git_commit()
    monkeypatch.setenv("SPARSEDM_COMMIT", "0123456789ab")
    assert environment.header("cpu")["commit"] == "0123456789ab"
    monkeypatch.setenv("SPARSEDM_COMMIT", " ")
    assert environment.git_commit() == own


def test_load_results_rejects_foreign_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a sparsedm results file"):
        load_results(str(p))


def test_bench_model_cpu_tiny_uvit(tmp_path, capsys):
    rc = main(["bench", "model", "--preset", "uvit-s2-cifar10", "--override", '{"depth": 2, "embed_dim": 64, "num_heads": 2}',
               "--device", "cpu", "--batch", "2", "--steps", "2", "--reps", "2", "--warmup", "1", "--out", str(tmp_path)])
    assert rc == 0
    (path,) = tmp_path.glob("*-model-uvit-s2-cifar10-override.json")  # a shrunk preset says so
    doc = load_results(str(path))
    assert doc["override"] == {"depth": 2, "embed_dim": 64, "num_heads": 2}
    rows = doc["rows"]
    by_variant = {r["variant"]: r for r in rows}
    assert list(by_variant) == ["dense", "sparse", "int8", "sparse+int8"]
    assert by_variant["dense"]["speedup_vs_dense"] == 1.0 and by_variant["dense"]["max_abs_diff"] == 0.0
    # The sparse variant computes the dense masked model's function (fp32, reference path).
    assert by_variant["sparse"]["max_abs_diff"] < 1e-4
    # int8 variants stay close to it (W8A8 quantization error only).
    for v in ("int8", "sparse+int8"):
        assert 0 < by_variant[v]["max_abs_diff"] < 0.1
    assert by_variant["dense"]["converted_layers"] == 0
    for v in ("sparse", "int8", "sparse+int8"):
        assert by_variant[v]["converted_layers"] >= 12  # the 4 block linears of 3 blocks at least
    for r in rows:
        assert r["kind"] == "model" and r["step_ms"] > 0 and r["images_per_s"] > 0 and r["steps"] == 2
    # the same formats as the kernel runs: CSV, markdown, and a PNG where matplotlib is installed
    assert path.with_suffix(".csv").read_text().count("\n") == len(rows) + 1
    assert path.with_suffix(".md").read_text().count("\n|") >= len(rows)
    pytest.importorskip("matplotlib")
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("preset,override", [
    ("ddpm-unet-cifar10", {"channel": 32, "channel_multiplier": [1, 2]}),  # its 3-channel input conv cannot be 2:4
    ("uvit-l2-imagenet256", {"depth": 1, "embed_dim": 64, "num_heads": 2}),  # guided, class-conditional
    ("uvit-s2-mscoco", {"depth": 1, "embed_dim": 64, "num_heads": 2}),  # guided, text-conditional
])
def test_bench_model_presets_that_need_care(tmp_path, preset, override):
    import json

    rc = main(["bench", "model", "--preset", preset, "--override", json.dumps(override), "--device", "cpu", "--batch", "1",
               "--steps", "1", "--reps", "1", "--warmup", "1", "--variants", "dense,sparse", "--out", str(tmp_path)])
    assert rc == 0
    (path,) = tmp_path.glob(f"*-model-{preset}-override.json")
    by_variant = {r["variant"]: r for r in load_results(str(path))["rows"]}
    assert by_variant["sparse"]["converted_layers"] > 0 and by_variant["sparse"]["max_abs_diff"] < 1e-3


def test_bench_model_on_a_converted_file(tmp_path):
    from sparsedm.demo import demo_dir

    rc = main(["bench", "model", f"{demo_dir()}/demo.safetensors", "--device", "cpu", "--batch", "2", "--reps", "2",
               "--warmup", "1", "--variants", "dense,sparse", "--out", str(tmp_path)])
    assert rc == 0
    (path,) = tmp_path.glob("*-model-demo.json")
    rows = {r["variant"]: r for r in load_results(str(path))["rows"]}
    assert rows["sparse"]["max_abs_diff"] < 1e-4 and rows["sparse"]["converted_layers"] > 0
    assert rows["dense"]["steps"] == 4  # the file's sampler


def test_bench_model_errors(capsys):
    assert main(["bench", "model", "--device", "cpu"]) == 2
    assert "either a converted MODEL file or --preset" in capsys.readouterr().err
    assert main(["bench", "model", "--preset", "nope", "--device", "cpu"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["bench", "model", "--preset", "uvit-s2-cifar10", "--variants", "fast", "--device", "cpu"]) == 2
    assert "unknown variant(s) fast" in capsys.readouterr().err
    for bad in ("notjson", "[1, 2]"):
        assert main(["bench", "model", "--preset", "uvit-s2-cifar10", "--override", bad, "--device", "cpu"]) == 2
        assert f"--override {bad!r} is not a JSON object" in capsys.readouterr().err
    assert main(["bench", "model", "--preset", "uvit-s2-cifar10", "--cuda-graph", "--device", "cpu"]) == 2


def test_kernel_plot_with_gpu_peaks(tmp_path, monkeypatch):
    """A GPU results set: the TFLOP/s panel carries the GPU's dense and 2:4 peaks."""
    pytest.importorskip("matplotlib")
    from sparsedm.bench.report import write_results

    rows = [{"kind": "kernel", "op": op, "table": "square", "layer": "", "shape": {"M": 4096, "N": 4096, "K": 4096},
             "dtype": "fp16", "backend": b, "ms": ms, "tflops": 137.4 / ms, "speedup_vs_dense": 1.0 / ms, "peak_fraction": None}
            for op in ("linear", "int8") for b, ms in (("dense", 1.0), ("cuda", 0.6))]
    header = {"gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0", "torch": "2.11", "triton": "3.6", "cuda": "13.0",
              "commit": "abc", "date": "2026-11-24T00:00:00Z"}
    paths = write_results(rows, header, str(tmp_path), "kernels")
    with_peaks = open(paths["png"], "rb").read()
    assert with_peaks[:8] == b"\x89PNG\r\n\x1a\n"
    # the same rows with the peak table emptied: a different picture (the peak lines are gone)
    import sparsedm.bench.environment as environment

    seen = []
    real = environment.gpu_peak
    monkeypatch.setattr(environment, "gpu_peak", lambda gpu, precision: seen.append(precision) or None)
    paths = write_results(rows, header, str(tmp_path / "nopeaks"), "kernels")
    assert sorted(set(seen)) == ["fp16", "int8"] and real(header["gpu"], "int8") == 1979.0
    assert open(paths["png"], "rb").read() != with_peaks


def test_a_failing_candidate_is_skipped_not_fatal(monkeypatch, caplog):
    import logging

    import torch

    from sparsedm.bench import kernels as kernel_bench
    from sparsedm.bench.shapes import LinearShape

    x = torch.randn(4, 8)

    def candidates(op, shape, dtype, device, wanted, copies):
        def broken(i):
            raise RuntimeError("this torch has no such kernel\nsecond line")

        return [kernel_bench.Candidate("dense", lambda i: x * 2), kernel_bench.Candidate("broken", broken)], lambda: x * 2

    monkeypatch.setattr(kernel_bench, "_linear_candidates", candidates)
    with caplog.at_level(logging.WARNING, logger="sparsedm.bench"):
        rows = kernel_bench.bench_shape("linear", LinearShape(4, 8, 8), "t", torch.float32, torch.device("cpu"), reps=2, warmup=1)
    assert [r["backend"] for r in rows] == ["dense"]
    assert "broken: failed (RuntimeError: this torch has no such kernel); not timed" in caplog.text
