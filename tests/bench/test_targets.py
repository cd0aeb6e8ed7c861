"""``sparsedm bench targets``: the speed targets read from results files (synthetic rows here)."""

import json

from sparsedm.bench import targets
from sparsedm.cli import main

HEADER = {"gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0", "torch": "2.11", "triton": "3.6", "cuda": "13.0",
          "commit": "abc", "date": "2026-11-24T00:00:00Z"}


def _kernel(op, table, backend, shape, ms, speedup, layer=""):
    return {"kind": "kernel", "op": op, "table": table, "backend": backend, "shape": shape, "ms": ms,
            "speedup_vs_dense": speedup, "layer": layer, "dtype": "fp16"}


def _write(path, rows):
    path.write_text(json.dumps({**HEADER, "rows": rows}))


def _by_target(results):
    return {r["target"]: r for r in results}


def test_worst_shape_counts_and_baselines_are_time_ratios(tmp_path):
    sq = {"M": 4096, "N": 4096, "K": 4096}
    rows = [
        _kernel("int8", "square", "triton", sq, 1.0, 1.7),
        _kernel("int8", "square", "torch-int_mm", sq, 1.2, 1.4),
        _kernel("int8", "square", "triton", {"M": 1024, "N": 1024, "K": 1024}, 1.0, 0.5),  # not 4096^3: ignored
        _kernel("linear", "small-m", "triton", {"M": 1, "N": 4096, "K": 1024}, 0.01, 1.5),
        _kernel("linear", "small-m", "triton", {"M": 16, "N": 1024, "K": 4096}, 0.01, 1.2),  # the worst: fails 1.3
        _kernel("linear", "small-m", "triton", {"M": 32, "N": 1024, "K": 4096}, 0.01, 0.7),  # M > 16: ignored
    ]
    _write(tmp_path / "k.json", rows)
    (tmp_path / "junit.xml").write_text("<testsuite/>")  # other files are skipped
    res = _by_target(targets.evaluate(targets.load_rows([str(tmp_path)])))
    int8 = res["triton int8_linear at 4096^3 over fp16 cuBLAS"]
    assert int8["status"] == "pass" and int8["worst"] == 1.7 and int8["rows"] == 1
    ratio = res["triton int8_linear at 4096^3 vs torch._int_mm + scaling (time ratio)"]
    assert ratio["status"] == "pass" and abs(ratio["worst"] - 1.2) < 1e-9
    small = res["triton sparse24_linear, U-ViT-L/2 fc1/fc2 at M <= 16, over dense"]
    assert small["status"] == "fail" and small["worst"] == 1.2 and small["best"] == 1.5 and small["rows"] == 2
    assert '"M": 16' in small["where"]
    assert res["cuda sparse int8 GEMM at 4096^3 over fp16 cuBLAS"]["status"] == "missing"


def test_model_targets_and_the_command(tmp_path, capsys):
    rows = [{"model": "uvit-s2-cifar10", "variant": v, "batch": 128, "speedup_vs_dense": s, "cuda_graph": True}
            for v, s in (("dense", 1.0), ("sparse", 1.35), ("sparse+int8", 1.5))]
    _write(tmp_path / "m.json", rows)
    out = tmp_path / "targets.md"
    assert main(["bench", "targets", str(tmp_path / "m.json"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| #5/#9 | U-ViT-S/2 CIFAR10 batch 128 denoiser step, 2:4, over dense | >= 1.30x | 1.35x" in text
    assert "2:4 + int8, over dense | >= 1.60x | 1.50x | 1.50x | 1 | fail" in text
    assert "| missing |" in text and out.read_text() == text.rstrip("\n") + "\n"


def test_command_errors(tmp_path, capsys):
    assert main(["bench", "targets", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["bench", "targets", str(tmp_path)]) == 2
    assert "no sparsedm results files" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    for rows, says in (([{"kind": "model", "speedup_vs_dense": "fast"}], "row 0 has speedup_vs_dense='fast', not a number"),
                       ([{"ms": 1.0}, 3], "row 1 is not an object"), ({"a": 1}, "'rows' is not a list")):
        bad.write_text(json.dumps({"gpu": "X", "rows": rows}))
        assert main(["bench", "targets", str(bad)]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err


def test_conv_targets_leave_out_the_input_and_output_convs(tmp_path):
    conv = {"N": 64, "H": 32, "W": 32, "R": 3, "S": 3, "stride": 1, "padding": 1}
    rows = [
        _kernel("conv", "ddpm-unet", "cuda", {**conv, "C": 128, "K": 128}, 1.0, 1.5),
        _kernel("conv", "ddpm-unet", "cuda", {**conv, "C": 128, "K": 3}, 1.0, 0.3),  # out.2: not a target
        _kernel("conv", "ddpm-unet", "cuda", {**conv, "C": 3, "K": 128}, 1.0, 0.2),  # down.0: not a target
    ]
    _write(tmp_path / "c.json", rows)
    res = _by_target(targets.evaluate(targets.load_rows([str(tmp_path)])))
    r = res["cuda sparse24_conv2d, DDPM UNet 3x3 convs (batch 64, 128), over cuDNN"]
    assert r["status"] == "pass" and r["rows"] == 1 and r["worst"] == 1.5
