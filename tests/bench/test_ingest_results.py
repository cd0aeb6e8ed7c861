"""bench/ingest_results.py on a synthetic GPU run: files into bench/results, "Latest numbers"."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEM = "nvidia-h200-2026-12-02-abc123def456-"
HEADER = {"gpu": "NVIDIA H200", "capability": "9.0", "torch": "2.11.0+cu130", "triton": "3.6.0", "cuda": "13.0",
          "sparsedm": "0.1.0", "commit": "abc123def456", "date": "2026-12-02T07:00:00Z"}
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1"
skipped="2" tests="10"><testcase classname="tests.cuda.test_gpu_gemm" name="test_a"/>
<testcase classname="tests.cuda.test_gpu_gemm" name="test_sp16[fp16]"><failure message="mismatch"/></testcase>
</testsuite></testsuites>"""


@pytest.fixture
def tool():
    spec = importlib.util.spec_from_file_location("ingest_results", os.path.join(ROOT, "bench", "ingest_results.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _kernel_rows(speedup_int8):
    row = {"kind": "kernel", "op": "int8", "table": "square", "layer": "square", "dtype": "fp16", "tflops": 1.0,
           "peak_fraction": None, "shape": {"M": 4096, "N": 4096, "K": 4096}}
    return [{**row, "backend": "dense", "ms": 1.0, "speedup_vs_dense": 1.0},
            {**row, "backend": "triton", "ms": 1.0 / speedup_int8, "speedup_vs_dense": speedup_int8},
            {**row, "backend": "torch-int_mm", "ms": 0.5, "speedup_vs_dense": 2.0}]


def _run_dir(tmp_path, speedup_int8=1.7):
    """What gpu_suite.sh leaves in $OUT: one archive of the run's files and the log."""
    out = tmp_path / "out"
    out.mkdir()
    members = {
        f"{STEM}kernels-int8.json": json.dumps({**HEADER, "rows": _kernel_rows(speedup_int8)}),
        f"{STEM}kernels-int8.md": "| table |",
        f"{STEM}junit-all.xml": JUNIT,
        f"{STEM}mma-probe.json": json.dumps({"gpu": "NVIDIA H200", "families": [
            {"name": "mma.sp m16n8k32 f16", "agree": False, "agreeing_b_orders": "0213", "trials": []},
            {"name": "mma m16n8k32 s8", "agree": True, "agreeing_b_orders": "", "trials": []}],
            "ldmatrix_x4": {"agree": True}}),
    }
    with tarfile.open(out / "results-20261202-070000.tar.gz", "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (out / "gpu_suite.log").write_text("=== environment\n")
    return out


@pytest.fixture
def docs(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# B\n\n## Latest numbers\n\n<!-- latest-numbers:begin -->\nNone yet.\n<!-- latest-numbers:end -->\n\nafter\n")
    return path


def test_ingest_writes_files_and_latest_numbers(tool, tmp_path, docs, capsys):
    results = tmp_path / "results"
    assert tool.main([str(_run_dir(tmp_path)), "--results", str(results), "--docs", str(docs)]) == 0
    assert sorted(os.listdir(results)) == sorted([f"{STEM}kernels-int8.json", f"{STEM}kernels-int8.md",
                                                  f"{STEM}junit-all.xml", f"{STEM}mma-probe.json", f"{STEM}gpu_suite.log"])
    text = docs.read_text()
    assert text.startswith("# B\n\n## Latest numbers\n\n<!-- latest-numbers:begin -->\n") and text.endswith("<!-- latest-numbers:end -->\n\nafter\n")
    assert "None yet." not in text
    assert "GPU NVIDIA H200 (sm 9.0), torch 2.11.0+cu130, triton 3.6.0, CUDA 13.0, commit `abc123def456`" in text
    assert f"`{STEM}junit-all.xml`: 7 passed, 1 failed, 2 skipped" in text
    assert "failed: `tests.cuda.test_gpu_gemm::test_sp16[fp16]`" in text
    assert "mma.sp m16n8k32 f16: DISAGREES with the emulator (B register orders that agree: 0213)" in text
    assert "mma m16n8k32 s8: agrees" in text
    # the targets: int8 at 4096^3 is 1.7x over fp16 (pass) but slower than torch._int_mm (0.85x: fail)
    rows = [line for line in text.splitlines() if line.startswith("| #3 | triton int8_linear at 4096^3")]
    assert len(rows) == 2 and "| 1.70x |" in rows[0] and "| pass |" in rows[0] and "| fail |" in rows[1], rows
    assert "| missing |" in text  # everything the run did not measure
    assert "wrote 5 files" in capsys.readouterr().out


def test_ingest_is_idempotent_and_never_overwrites(tool, tmp_path, docs):
    results = tmp_path / "results"
    run = _run_dir(tmp_path)
    assert tool.main([str(run), "--results", str(results), "--docs", str(docs)]) == 0
    assert tool.main([str(run), "--results", str(results), "--docs", str(docs)]) == 0  # same files: nothing new
    assert len(os.listdir(results)) == 5
    (results / f"{STEM}kernels-int8.md").write_text("edited")
    assert tool.main([str(run), "--results", str(results), "--docs", str(docs)]) == 0
    assert (results / f"{STEM}kernels-int8.md").read_text() == "edited"  # never overwritten
    assert (results / f"{STEM}kernels-int8-2.md").read_text() == "| table |"
    assert tool.main([str(run), "--results", str(results), "--docs", str(docs)]) == 0  # and again: no -3
    assert len(os.listdir(results)) == 6


def test_dry_run_writes_nothing(tool, tmp_path, docs, capsys):
    results = tmp_path / "results"
    before = docs.read_text()
    assert tool.main([str(_run_dir(tmp_path)), "--results", str(results), "--docs", str(docs), "--dry-run"]) == 0
    assert not results.exists() and docs.read_text() == before
    assert "would write 5 files" in capsys.readouterr().out


@pytest.mark.parametrize("problem", ["unsafe-member", "two-runs", "no-results", "no-markers"])
def test_refusals(tool, tmp_path, docs, capsys, problem):
    run = _run_dir(tmp_path)
    if problem == "unsafe-member":
        with tarfile.open(run / "results-evil.tar.gz", "w:gz") as tar:
            info = tarfile.TarInfo("../escape.json")
            tar.addfile(info, io.BytesIO(b""))
        expect = "is not a plain file with a plain name"
    elif problem == "two-runs":
        (run / "nvidia-h100-2026-12-01-0000000aaaa-kernels-conv.json").write_text("{}")
        expect = "files of several runs"
    elif problem == "no-results":
        run = tmp_path / "empty"
        run.mkdir()
        (run / "gpu_suite.log").write_text("")
        expect = "no result files"
    else:
        docs.write_text("# B\n## Latest numbers\nnothing\n")
        expect = "no <!-- latest-numbers:begin --> ... <!-- latest-numbers:end --> markers"
    assert tool.main([str(run), "--results", str(tmp_path / "results"), "--docs", str(docs)]) == 2
    assert expect in capsys.readouterr().err
    assert not (tmp_path / "escape.json").exists()


def test_the_real_docs_have_the_markers(tool):
    with open(os.path.join(ROOT, "docs", "BENCHMARKS.md")) as f:
        text = f.read()
    assert text.count(tool.BEGIN) == 1 and text.count(tool.END) == 1 and text.index(tool.BEGIN) < text.index(tool.END)


def test_two_calls_of_one_run_are_both_kept(tool, tmp_path, docs):
    """The logs of two device calls both come back as gpu_suite.log, and a stage run again
    writes its junit file again: both copies are kept, the second numbered."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _run_dir(tmp_path / "a"), _run_dir(tmp_path / "b")
    (second / "gpu_suite.log").write_text("=== another call\n")
    (second / f"{STEM}junit-all.xml").write_text(JUNIT.replace('failures="1"', 'failures="0"').replace(
        '<failure message="mismatch"/>', ""))
    results = tmp_path / "results"
    assert tool.main([str(first), str(second), "--results", str(results), "--docs", str(docs)]) == 0
    assert (results / f"{STEM}gpu_suite.log").read_text() == "=== environment\n"
    assert (results / f"{STEM}gpu_suite-2.log").read_text() == "=== another call\n"
    assert (results / f"{STEM}junit-all-2.xml").exists()
    text = docs.read_text()
    assert f"`{STEM}junit-all.xml`: 7 passed, 1 failed" in text and f"`{STEM}junit-all-2.xml`: 8 passed, 0 failed" in text
    # the same archive given twice (loose and in its folder) is stored once
    results2 = tmp_path / "results2"
    assert tool.main([str(first), str(first / "results-20261202-070000.tar.gz"), "--results", str(results2),
                      "--docs", str(docs)]) == 0
    assert len(os.listdir(results2)) == 5


def test_a_malformed_file_writes_nothing(tool, tmp_path, docs, capsys):
    run = _run_dir(tmp_path)
    (run / f"{STEM}junit-rest.xml").write_text("<testsuites><testsuite")  # cut off
    results = tmp_path / "results"
    before = docs.read_text()
    assert tool.main([str(run), "--results", str(results), "--docs", str(docs)]) == 2
    assert "ingest_results:" in capsys.readouterr().err
    assert not results.exists() and docs.read_text() == before


def test_dirty_commit_is_its_own_run(tool):
    assert tool.STEM.match("nvidia-h200-2026-12-02-abc123def456-dirty-kernels-conv.json").group(1) == \
        "nvidia-h200-2026-12-02-abc123def456-dirty-"
    assert tool.STEM.match(f"{STEM}kernels-conv.json").group(1) == STEM
