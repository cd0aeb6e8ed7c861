"""bench/gpu_suite.sh's control flow, run on the CPU with a stand-in Python and GPU tools.

A GPU machine is lent for minutes at a time, so the suite must do the right thing on its first
call: these tests run it with ``PYTHON`` pointing at a script that records each call (with the
environment variables that matter) and answers as the real one would, and check which
commands run, in which order, with which limits, and what is left in $OUT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE = os.path.join(ROOT, "bench", "gpu_suite.sh")
STEM = "fake-gpu-20261202-abc123-"

# The stand-in python: logs "AUTOTUNE=<value> <args>" per call; writes the files the real
# commands would; the extension check fails unless $FAKE_PREBUILT is set.
FAKE_PY = r"""#!/usr/bin/env bash
echo "AUTOTUNE=${SPARSEDM_TRITON_AUTOTUNE:-unset} BUILD_EXT=${SPARSEDM_BUILD_EXT:-unset} $*" >> "$FAKE_LOG"
case "$*" in
  *results_stem*) echo "__STEM__";;
  *get_device_capability*) echo 90;;
  "bench/ext_stamp.py check") [ -n "${FAKE_PREBUILT:-}" ] && exit 0; echo "must be (re)built: fake"; exit 1;;
  *"-m pip install"*) [ -n "${FAKE_BUILD_FAILS:-}" ] && exit 1; exit 0;;
  *"-m pytest"*)
    for a in "$@"; do case "$a" in --junitxml=*) echo "<testsuites/>" > "${a#--junitxml=}";; esac; done
    [ -n "${FAKE_SLOW_TESTS:-}" ] && sleep "$FAKE_SLOW_TESTS"
    exit 0;;
  *"bench kernels"*)
    op=""; prev=""; for a in "$@"; do [ "$prev" = --op ] && op="$a"; prev="$a"; done
    echo '{"gpu": "fake", "rows": []}' > "$OUT/__STEM__kernels-$op.json";;
  *"bench model"*)
    preset=""; prev=""; for a in "$@"; do [ "$prev" = --preset ] && preset="$a"; prev="$a"; done
    echo '{"gpu": "fake", "rows": []}' > "$OUT/__STEM__model-$preset.json";;
  *"bench targets"*) prev=""; for a in "$@"; do [ "$prev" = --out ] && echo "| table |" > "$a"; prev="$a"; done;;
esac
exit 0
""".replace("__STEM__", STEM)


@pytest.fixture
def suite(tmp_path):
    """Run the suite in a copy of bench/ (the script cd's to its parent) with fake tools."""
    if shutil.which("timeout") is None:
        pytest.skip("coreutils timeout is missing")
    tree = tmp_path / "tree"
    (tree / "bench").mkdir(parents=True)
    shutil.copy(SUITE, tree / "bench" / "gpu_suite.sh")
    tools = tmp_path / "bin"
    tools.mkdir()
    py = tools / "fakepython"
    py.write_text(FAKE_PY)
    for name in ("nvidia-smi", "compute-sanitizer"):
        (tools / name).write_text(f'#!/usr/bin/env bash\necho "TOOL {name} AUTOTUNE=${{SPARSEDM_TRITON_AUTOTUNE:-unset}} $*" >> "$FAKE_LOG"\nexit 0\n')
    # nvcc "builds" the probe: a script at its -o path that logs its run
    (tools / "nvcc").write_text(
        '#!/usr/bin/env bash\necho "TOOL nvcc $*" >> "$FAKE_LOG"\nprev=""\n'
        'for a in "$@"; do if [ "$prev" = -o ]; then printf \'#!/usr/bin/env bash\\necho "TOOL probe $*" >> "$FAKE_LOG"\\n\' > "$a"; '
        'chmod +x "$a"; fi; prev="$a"; done\nexit 0\n')
    for f in tools.iterdir():
        f.chmod(0o755)
    out = tmp_path / "out"
    log = tmp_path / "calls.log"

    def run(*stages, **env):
        # the suite's own knobs come from the test alone, never from the caller's environment
        knobs = ("SUITE_BUDGET", "STEP_TIMEOUT", "TEST_WORKERS", "TEST_TIMEOUT", "BENCH_OPS", "PACK", "FAKE_PREBUILT",
                 "FAKE_BUILD_FAILS", "NVCC", "CUDA_HOME", "SPARSEDM_TRITON_AUTOTUNE", "SPARSEDM_BUILD_EXT")
        full = {k: v for k, v in os.environ.items() if k not in knobs and not k.startswith("QUICK_")}
        full.update(PATH=f"{tools}:{os.environ['PATH']}", PYTHON=str(py), OUT=str(out), FAKE_LOG=str(log),
                    SPARSEDM_COMMIT="abc123", **env)
        proc = subprocess.run(["bash", str(tree / "bench" / "gpu_suite.sh"), *stages], env=full,
                              capture_output=True, text=True, timeout=120)
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return proc, calls

    run.out = out
    return run


def _index(calls, needle):
    hits = [i for i, c in enumerate(calls) if needle in c]
    assert hits, f"no call with {needle!r} in:\n" + "\n".join(calls)
    return hits[0]


def test_quick_runs_everything_in_order_with_limits(suite):
    proc, calls = suite("quick")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    order = [
        _index(calls, "ext_stamp.py check"), _index(calls, "-m pip install"), _index(calls, "ext_stamp.py write"),
        _index(calls, "TOOL nvcc -std"), _index(calls, "TOOL probe"), _index(calls, "-m pytest"), _index(calls, "--op linear"), _index(calls, "--op int8"),
        _index(calls, "--op sparse-int8"), _index(calls, "--op conv"), _index(calls, "--preset uvit-s2-cifar10"),
        _index(calls, "--preset ddpm-unet-cifar10"), _index(calls, "TOOL compute-sanitizer"), _index(calls, "bench targets"),
    ]
    assert order == sorted(order), "\n".join(calls)
    tests = [c for c in calls if "-m pytest" in c]
    assert len(tests) == 1, tests  # every GPU test in one run
    assert tests[0].startswith("AUTOTUNE=0 ") and "-m gpu" in tests[0] and tests[0].endswith(" tests"), tests
    install = calls[_index(calls, "-m pip install")]
    assert "BUILD_EXT=1 " in install, install  # the stamp check failed: a real build, whatever the caller set
    assert f"--junitxml={suite.out}/{STEM}junit-all.xml" in tests[0]
    # xdist and pytest-timeout are "installed" (the stand-in imports anything): 8 workers, and
    # a per-test limit that also ends a test stuck inside a CUDA call (thread method)
    assert " -n 8 " in tests[0] and " --timeout 180 -o timeout_method=thread " in tests[0], tests[0]
    # the benchmarks tune for real, on the tables the speed targets read
    benches = [c for c in calls if "bench kernels" in c or "bench model" in c]
    assert benches and all(c.startswith("AUTOTUNE=unset BUILD_EXT=unset ") for c in benches), benches
    assert "--shapes square,small-m,uvit-l2" in calls[_index(calls, "--op linear")]
    assert "--shapes ddpm-unet,sd15-unet" in calls[_index(calls, "--op conv")]
    sanitizer = [c for c in calls if "TOOL compute-sanitizer" in c]
    assert [s.split("--tool ")[1].split()[0] for s in sanitizer] == ["memcheck", "racecheck"], sanitizer
    assert all("AUTOTUNE=0 " in s for s in sanitizer), sanitizer  # no autotuning under the sanitizer
    assert sanitizer[0].endswith("bench/sanitizer_case.py"), sanitizer  # every case
    assert sanitizer[1].endswith("bench/sanitizer_case.py --cases pipeline,split,conv --backends cuda"), sanitizer
    assert "-arch=sm_90 " in calls[_index(calls, "TOOL nvcc -std")] and f"{STEM}mma-probe.json" in calls[_index(calls, "TOOL probe")]
    # the result files are packed (more than six), the log stays beside the archive
    archives = sorted(p for p in os.listdir(suite.out) if p.endswith(".tar.gz"))
    assert len(archives) == 1, os.listdir(suite.out)
    with tarfile.open(suite.out / archives[0]) as tar:
        names = tar.getnames()
    assert f"{STEM}junit-all.xml" in names and f"{STEM}kernels-conv.json" in names and f"{STEM}targets.md" in names, names
    assert sorted(os.listdir(suite.out)) == sorted(archives + ["gpu_suite.log"])
    log = (suite.out / "gpu_suite.log").read_text()  # complete when the script returns
    assert log.rstrip().endswith("(python bench/ingest_results.py takes it)"), log[-500:]


def test_prebuilt_extension_is_not_rebuilt(suite):
    """A build that passes the stamp check is kept: the package is still installed (the
    editable install maps sparsedm.kernels), with SPARSEDM_BUILD_EXT=0 so nothing compiles."""
    proc, calls = suite("test-cuda", FAKE_PREBUILT="1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    installs = [c for c in calls if "pip install" in c]
    assert len(installs) == 1 and "BUILD_EXT=0 " in installs[0], installs
    assert not any("ext_stamp.py write" in c for c in calls), calls
    tests = [c for c in calls if "-m pytest" in c]
    assert len(tests) == 1 and tests[0].endswith(" tests/cuda") and tests[0].startswith("AUTOTUNE=0 "), tests
    assert not any("bench " in c for c in calls) and not any("compute-sanitizer" in c for c in calls), calls


def test_a_failed_build_is_not_stamped(suite):
    """A build that fails leaves no stamp saying the extension matches these sources (the next
    call would reuse an old one), and the suite exits non-zero."""
    proc, calls = suite("test-cuda", FAKE_BUILD_FAILS="1")
    assert proc.returncode == 1 and "!!! failed (exit 1)" in proc.stdout
    assert any("-m pip install" in c for c in calls) and not any("ext_stamp.py write" in c for c in calls), calls


def test_unknown_stage_is_refused(suite):
    proc, calls = suite("tests")
    assert proc.returncode == 2 and "unknown stage 'tests'" in proc.stderr and "test-all" in proc.stderr
    assert calls == []


def test_all_runs_the_three_test_stages_and_every_table(suite):
    proc, calls = suite(FAKE_PREBUILT="1", SPARSEDM_TRITON_AUTOTUNE="0")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert any("TOOL probe" in c for c in calls)
    benches = [c for c in calls if "bench kernels" in c]
    assert benches and all(c.startswith("AUTOTUNE=unset ") for c in benches), benches  # a caller's 0 never reaches them
    tests = [c.split()[-1] for c in calls if "-m pytest" in c]
    assert tests == ["tests/cuda", "tests/triton", "--ignore=tests/triton"], tests
    kernels = [c for c in calls if "bench kernels" in c]
    assert len(kernels) == 4 and not any("--shapes" in c for c in kernels), kernels
    sanitizer = [c for c in calls if "TOOL compute-sanitizer" in c]
    assert [s.split("--tool ")[1].split()[0] for s in sanitizer] == ["memcheck", "racecheck", "synccheck"]


def test_budget_cuts_a_slow_step_and_skips_the_rest(suite):
    """A test step that outlives its cap is stopped; the steps after it still run while the
    budget lasts, and the ones past it are reported as skipped; the suite exits non-zero."""
    proc, calls = suite("quick", FAKE_PREBUILT="1", SUITE_BUDGET="60", QUICK_TEST_S="3", FAKE_SLOW_TESTS="30")
    assert proc.returncode == 1
    assert "!!! failed (exit 124)" in proc.stdout  # the test step, stopped at its 3 s cap
    assert any("--op linear" in c for c in calls)  # the benchmarks ran after it
    budget = suite("quick", FAKE_PREBUILT="1", SUITE_BUDGET="30")
    # steps the budget leaves out are listed at the end; a cut-short run is not a failed one
    assert budget[0].returncode == 0 and "!!! skipped (SUITE_BUDGET spent)" in budget[0].stdout
    assert "not run, the budget (SUITE_BUDGET=30) was spent:" in budget[0].stdout
    assert not any("-m pytest" in c for c in budget[1])
