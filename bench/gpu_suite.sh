#!/usr/bin/env bash
# All GPU validation: build the extension with its CUDA kernels, run the GPU tests, the
# kernels under compute-sanitizer, the kernel benchmarks on every shape table and the model
# benchmarks. Installs nothing from the network (torch, triton and nvcc must be there).
#
#   bash bench/gpu_suite.sh [STAGE ...]     stages: build test-cuda test-triton test-rest
#                                            sanitizer bench-kernels bench-models
#                                            test (= the three test stages + sanitizer)
#                                            bench (= both bench stages), all (default)
#
# Each step runs under `timeout $STEP_TIMEOUT` (default 540 s) so that a step that hangs
# still leaves its log; SUITE_BUDGET caps the whole call (below). Stages can go in separate
# calls of a 10-minute command limit: the build is reused when the extension already has its
# CUDA ops and is newer than the sources, and Triton's cache lives in .triton-cache/ inside
# the checkout.
#
# Results go to $OUT if set, else bench/results/: <gpu>-<date>-<commit>-kernels-<op>.{json,csv,md,png},
# ...-model-<preset>.*, ...-junit-<stage>.xml for the test stages, and gpu_suite.log.
# Where the tree is a copy without .git, set SPARSEDM_COMMIT to the commit it was copied from.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
LOG="$OUT/gpu_suite.log"
exec > >(tee -a "$LOG") 2>&1
PY="${PYTHON:-python3}"
STEP_TIMEOUT="${STEP_TIMEOUT:-540}"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$PWD/.triton-cache}"
export SPARSEDM_CUDA=1  # a CPU-only build here would make every cuda test skip: fail instead
export SPARSEDM_REQUIRE_BACKENDS=1  # GPU tests fail, not skip, when a backend cannot run
status=0
STAGES="${*:-all}"
want() { for s in $STAGES; do case "$s" in all|"$1") return 0;; test) case "$1" in test-*|sanitizer) return 0;; esac;; bench) case "$1" in bench-*) return 0;; esac;; esac; done; return 1; }
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
# SUITE_BUDGET (seconds, 0 = none): the whole call's time. Each step's limit is cut to what is
# left of it, so a runner that kills the call at a fixed time (a 10-minute command limit) finds
# the suite already finished, its files written. A bench step stopped by its limit (SIGTERM)
# still writes the rows it measured, marked partial.
SUITE_BUDGET="${SUITE_BUDGET:-0}"
SUITE_START=$(date +%s)
run() {
  local limit="$STEP_TIMEOUT"
  if [ "$SUITE_BUDGET" -gt 0 ]; then
    local left=$((SUITE_BUDGET - ($(date +%s) - SUITE_START) - 15))
    if [ "$left" -lt 20 ]; then echo "!!! skipped (SUITE_BUDGET spent): $*"; status=1; return; fi
    [ "$left" -lt "$limit" ] && limit="$left"
  fi
  timeout -k 10 "$limit" "$@" || { rc=$?; echo "!!! failed (exit $rc): $*"; status=1; }
}

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"
nvcc --version | tail -2
# A copy of the tree without .git names its commit: SPARSEDM_COMMIT=<short hash> bash bench/gpu_suite.sh
if [ -z "${SPARSEDM_COMMIT:-}" ] && ! git rev-parse HEAD 2>/dev/null; then
  echo "!!! not a git checkout and SPARSEDM_COMMIT is unset: result files will say 'nocommit'"
fi
# <gpu>-<date>-<commit>-, the stem every result file of this run starts with.
STEM="$("$PY" -c "from sparsedm.bench.environment import header; from sparsedm.bench.report import results_stem; print(results_stem(header('cuda'), ''))" 2>/dev/null || echo "unknown-gpu-")"
echo "result files: $OUT/${STEM}*"

have_cuda_ops() {
  "$PY" - <<'PY'
import glob, os, sys
import torch
try:
    import sparsedm._C  # noqa: F401
except ImportError:
    sys.exit(1)
if not hasattr(torch.ops.sparsedm, "_cuda_sparse24_gemm"):
    sys.exit(1)
so = max(glob.glob("sparsedm/_C*.so"), key=os.path.getmtime, default=None)
sources = [p for pat in ("csrc/**/*", "kernels/cuda/*") for p in glob.glob(pat, recursive=True) if os.path.isfile(p)]
sys.exit(0 if so and os.path.getmtime(so) >= max(os.path.getmtime(p) for p in sources) else 1)
PY
}

step "build"
if have_cuda_ops; then
  echo "sparsedm._C with CUDA ops is up to date; not rebuilding"
else
  # Only the GPU at hand: a suite run is about this machine, and one arch builds 4x faster.
  TORCH_CUDA_ARCH_LIST="$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")"
  export TORCH_CUDA_ARCH_LIST MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  run "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .
fi
if ! have_cuda_ops; then
  echo "!!! sparsedm._C has no CUDA ops after the build: the cuda backend cannot be tested"
  status=1
fi
"$PY" -m sparsedm info --backends || status=1

# One line per test (-v), so a stage killed by its timeout still shows which tests ran and how
# they ended; a junit XML per stage is the GPU run's record of every test (committed with the
# results); the slowest tests are listed to see where a stage's time went.
gpu_tests() {
  local name="$1"; shift
  run "$PY" -m pytest -m gpu -v --tb=short -rfEs --durations=15 -p no:cacheprovider \
    --junitxml="$OUT/${STEM}junit-$name.xml" "$@"
}
if want test-cuda; then
  step "GPU tests: CUDA kernels"
  gpu_tests cuda tests/cuda
fi
if want test-triton; then
  step "GPU tests: Triton kernels"
  gpu_tests triton tests/triton
fi
if want test-rest; then
  step "GPU tests: runtime, sampling, the rest"
  gpu_tests rest tests --ignore=tests/cuda --ignore=tests/triton
fi
if want sanitizer; then
  step "compute-sanitizer (memcheck, racecheck, synccheck) on small calls of every op and backend"
  if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck synccheck; do
      run compute-sanitizer --tool "$tool" --error-exitcode 9 "$PY" bench/sanitizer_case.py
    done
  else
    echo "compute-sanitizer not found; skipped"
  fi
fi
if want bench-kernels; then
  step "kernel benchmarks (all shape tables), one run per op family"
  for op in ${BENCH_OPS:-linear int8 sparse-int8 conv}; do
    run "$PY" -m sparsedm bench kernels --op "$op" --reps "${REPS:-30}" --warmup "${WARMUP:-5}" --out "$OUT"
  done
fi
if want bench-models; then
  step "model benchmarks"
  run "$PY" -m sparsedm bench model --preset uvit-s2-cifar10 --batch 128 --cuda-graph --out "$OUT"
  run "$PY" -m sparsedm bench model --preset uvit-s2-cifar10 --batch 128 --out "$OUT"  # images/s without graphs
  run "$PY" -m sparsedm bench model --preset ddpm-unet-cifar10 --batch 64 --cuda-graph --channels-last --out "$OUT"
fi

if want bench-kernels || want bench-models; then
  step "speed targets (sparsedm bench targets) over this run's results"
  # this run's files only: $OUT may hold other GPUs' and commits' results (bench/results/)
  "$PY" -m sparsedm bench targets "$OUT/${STEM}"*.json --out "$OUT/${STEM}targets.md" || true
fi

step "done: exit status $status; files in $OUT"
ls -la "$OUT"
# Some runners return only a handful of files from $OUT (the device tool: 8). When there are
# more, this run's result files (those named ${STEM}*; nothing else in $OUT, such as committed
# results or bench/results/README.md) go into one archive beside the log (PACK=0 keeps them loose).
n_files=$(find "$OUT" -maxdepth 1 -type f -name "${STEM}*" | wc -l)
if [ "${PACK:-auto}" != 0 ] && [ "$n_files" -gt 0 ] && { [ "${PACK:-auto}" = 1 ] || [ "$n_files" -gt 6 ]; }; then
  archive="results-$(date -u +%Y%m%d-%H%M%S).tar.gz"
  (cd "$OUT" && find . -maxdepth 1 -type f -name "${STEM}*" -printf '%f\n' | tar czf "$archive" -T - \
     && find . -maxdepth 1 -type f -name "${STEM}*" -delete)
  echo "packed $n_files result files into $OUT/$archive (tar xzf it into bench/results/)"
fi
sync
exit $status
