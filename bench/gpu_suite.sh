#!/usr/bin/env bash
# All GPU validation: build the extension with its CUDA kernels, run the GPU tests, the
# kernels under compute-sanitizer, the kernel benchmarks on every shape table and the model
# benchmarks. Installs nothing from the network (torch, triton and nvcc must be there).
#
#   bash bench/gpu_suite.sh [STAGE ...]     stages: build probe test-cuda test-triton test-rest
#                                            test-all sanitizer bench-kernels bench-models
#                                            test (= the three test stages + sanitizer)
#                                            bench (= both bench stages), all (default)
#                                            quick (one call of about 9 minutes, below)
#
# Each step runs under `timeout $STEP_TIMEOUT` (default 540 s) so that a step that hangs
# still leaves its log; SUITE_BUDGET caps the whole call (below). Stages can go in separate
# calls of a 10-minute command limit: the build is reused when bench/ext_stamp.py says it was
# made from these sources for this torch and GPU (also a build made on another machine by
# bench/prebuild_extension.sh), and Triton's cache lives in .triton-cache/ inside the checkout.
#
# `quick` fits the whole validation into one call of SUITE_BUDGET (default 540 s here): the
# build (reused if prebuilt), the tensor-core instruction probe, every GPU test in one parallel pytest run (test-all, at most
# QUICK_TEST_S = 200 s), the kernel benchmarks on the tables the speed targets read (at most
# QUICK_BENCH_S = 150 s), the model benchmarks of the targets (QUICK_MODEL_S = 100 s) and
# compute-sanitizer (memcheck, then racecheck on the cuda kernels) with what is left.
#
# Results go to $OUT if set, else bench/results/: <gpu>-<date>-<commit>-kernels-<op>.{json,csv,md,png},
# ...-model-<preset>.*, ...-junit-<stage>.xml for the test stages, and gpu_suite.log.
# Where the tree is a copy without .git, set SPARSEDM_COMMIT to the commit it was copied from.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGES="${*:-all}"
for s in $STAGES; do
  case "$s" in
    all|quick|test|bench|build|probe|test-all|test-cuda|test-triton|test-rest|sanitizer|bench-kernels|bench-models) ;;
    *) echo "gpu_suite.sh: unknown stage '$s' (stages: build probe test-all test-cuda test-triton test-rest sanitizer" \
            "bench-kernels bench-models; groups: test bench all quick)" >&2; exit 2;;
  esac
done
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
LOG="$OUT/gpu_suite.log"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
PY="${PYTHON:-python3}"
NVCC="${NVCC:-$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")}"
STEP_TIMEOUT="${STEP_TIMEOUT:-540}"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$PWD/.triton-cache}"
export SPARSEDM_CUDA=1  # a CPU-only build here would make every cuda test skip: fail instead
export SPARSEDM_REQUIRE_BACKENDS=1  # GPU tests fail, not skip, when a backend cannot run
unset SPARSEDM_TRITON_AUTOTUNE  # the benchmarks tune; the test stages set it to 0 themselves
status=0
QUICK=0
case " $STAGES " in *" quick "*) QUICK=1; SUITE_BUDGET="${SUITE_BUDGET:-540}";; esac
want() {
  for s in $STAGES; do
    case "$s" in
      "$1") return 0;;
      all) case "$1" in test-all) ;; *) return 0;; esac;;
      test) case "$1" in test-cuda|test-triton|test-rest|sanitizer) return 0;; esac;;
      bench) case "$1" in bench-*) return 0;; esac;;
      quick) case "$1" in probe|test-all|bench-*|sanitizer) return 0;; esac;;
    esac
  done
  return 1
}
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
# SUITE_BUDGET (seconds, 0 = none): the whole call's time. Each step's limit is cut to what is
# left of it, so a runner that kills the call at a fixed time (a 10-minute command limit) finds
# the suite already finished, its files written. A bench step stopped by its limit (SIGTERM)
# still writes the rows it measured, marked partial.
SUITE_BUDGET="${SUITE_BUDGET:-0}"
SUITE_START=$(date +%s)
# run [--cap SECONDS] [--int] CMD...: CMD under timeout, its limit the smallest of
# STEP_TIMEOUT, the cap and what is left of SUITE_BUDGET; --int stops it with SIGINT instead
# of SIGTERM (pytest then still writes its junit file). Returns CMD's exit status, or 1 when
# the budget left no time for it; a failure sets the suite's status, a step the budget skips
# is listed at the end (a run cut short by its budget is not a failed run).
NOT_RUN=()
run() {
  local limit="$STEP_TIMEOUT" signal=TERM rc=0
  if [ "${1:-}" = --cap ]; then [ "$2" -lt "$limit" ] && limit="$2"; shift 2; fi
  if [ "${1:-}" = --int ]; then signal=INT; shift; fi
  if [ "$SUITE_BUDGET" -gt 0 ]; then
    local left=$((SUITE_BUDGET - ($(date +%s) - SUITE_START) - 15))
    if [ "$left" -lt 20 ]; then echo "!!! skipped (SUITE_BUDGET spent): $*"; NOT_RUN+=("$*"); return 1; fi
    [ "$left" -lt "$limit" ] && limit="$left"
  fi
  timeout -s "$signal" -k 10 "$limit" "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then echo "!!! failed (exit $rc): $*"; status=1; fi
  return "$rc"
}

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"
"$NVCC" --version | tail -2
# A copy of the tree without .git names its commit: SPARSEDM_COMMIT=<short hash> bash bench/gpu_suite.sh
if [ -z "${SPARSEDM_COMMIT:-}" ] && ! git rev-parse HEAD 2>/dev/null; then
  echo "!!! not a git checkout and SPARSEDM_COMMIT is unset: result files will say 'nocommit'"
fi
# <gpu>-<date>-<commit>-, the stem every result file of this run starts with.
results_stem() {
  "$PY" -c "from sparsedm.bench.environment import header; from sparsedm.bench.report import results_stem; print(results_stem(header('cuda'), ''))" 2>/dev/null || echo "unknown-gpu-"
}
STEM="$(results_stem)"
echo "result files: $OUT/${STEM}*"

have_cuda_ops() {
  "$PY" -c "import sys, torch, sparsedm._C; sys.exit(0 if hasattr(torch.ops.sparsedm, '_cuda_sparse24_gemm') else 1)" 2>/dev/null
}

step "build"
# The editable install maps sparsedm.kernels to kernels/triton (the Triton backend), so it runs
# either way. The extension is reused when bench/ext_stamp.py says it was built from these
# sources, for this torch and GPU (by an earlier call here, or elsewhere by
# bench/prebuild_extension.sh): SPARSEDM_BUILD_EXT=0 then compiles nothing. Else it says why not.
if "$PY" bench/ext_stamp.py check; then
  SPARSEDM_BUILD_EXT=0 run "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .
else
  # Only the GPU at hand: a suite run is about this machine, and one arch builds 4x faster.
  TORCH_CUDA_ARCH_LIST="$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")"
  export TORCH_CUDA_ARCH_LIST MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  rm -f sparsedm/_C.stamp
  if SPARSEDM_BUILD_EXT=1 run "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
    "$PY" bench/ext_stamp.py write --archs "$TORCH_CUDA_ARCH_LIST" || true
  fi
fi
if ! have_cuda_ops; then
  echo "!!! sparsedm._C has no CUDA ops after the build: the cuda backend cannot be tested"
  status=1
fi
"$PY" -m sparsedm info --backends || status=1

# One line per test (-v), so a stage killed by its timeout still shows which tests ran and how
# they ended; a junit XML per stage is the GPU run's record of every test (committed with the
# results); the slowest tests are listed to see where a stage's time went.
# SPARSEDM_TRITON_AUTOTUNE=0: the Triton kernels run the first candidate config of each shape
# bucket instead of compiling and timing every one (tests/triton's test_gpu_every_config_forced
# runs each candidate on its own). With pytest-xdist, TEST_WORKERS processes share the GPU
# (compiling Triton kernels is CPU work); with pytest-timeout, a test that hangs past
# TEST_TIMEOUT seconds fails alone instead of stalling the stage.
TEST_WORKERS="${TEST_WORKERS:-8}"
TEST_TIMEOUT="${TEST_TIMEOUT:-180}"
gpu_tests() {
  local cap="$1" name="$2"; shift 2
  local extra=()
  # The per-test limit needs xdist: its thread method ends the process of a test stuck inside a
  # CUDA call (no signal handler runs there), and only xdist replaces that process and goes on.
  if [ "$TEST_WORKERS" -gt 1 ] && "$PY" -c "import xdist" 2>/dev/null; then
    extra+=(-n "$TEST_WORKERS")
    if "$PY" -c "import pytest_timeout" 2>/dev/null; then extra+=(--timeout "$TEST_TIMEOUT" -o timeout_method=thread); fi
  fi
  SPARSEDM_TRITON_AUTOTUNE=0 run --cap "$cap" --int "$PY" -m pytest -m gpu -v --tb=short -rfEs --durations=15 -p no:cacheprovider \
    ${extra[@]+"${extra[@]}"} --junitxml="$OUT/${STEM}junit-$name.xml" "$@"
}
# Each tensor-core instruction of the kernels, alone on one warp, against the PTX-table
# emulator the fragment maps were built on (bench/mma_probe.cu): seconds, and where a kernel
# test fails it says whether the instruction's operand map is the cause (and which B register
# order would fix it). Raw operands and results: ...-mma-probe.json.
if want probe; then
  step "tensor-core instruction probe (bench/mma_probe.cu)"
  arch="$("$PY" -c "import torch; print('%d%d' % torch.cuda.get_device_capability(0))")"
  mkdir -p build && rm -f build/mma_probe
  if run --cap 120 "$NVCC" -std=c++17 -O2 -arch="sm_$arch" -I kernels/cuda -I tests/cpp bench/mma_probe.cu -o build/mma_probe; then
    run --cap 60 build/mma_probe "$OUT/${STEM}mma-probe.json"
  fi
fi

NO_CAP="$STEP_TIMEOUT"
if want test-all; then
  step "GPU tests: all of them in one run"
  gpu_tests "$([ $QUICK = 1 ] && echo "${QUICK_TEST_S:-200}" || echo "$NO_CAP")" all tests
fi
if want test-cuda; then
  step "GPU tests: CUDA kernels"
  gpu_tests "$NO_CAP" cuda tests/cuda
fi
if want test-triton; then
  step "GPU tests: Triton kernels"
  gpu_tests "$NO_CAP" triton tests/triton
fi
if want test-rest; then
  step "GPU tests: runtime, sampling, the rest"
  gpu_tests "$NO_CAP" rest tests --ignore=tests/cuda --ignore=tests/triton
fi
# The kernel benchmarks: every table, or in quick mode the tables the speed targets read
# (sparsedm/bench/targets.py), each op family's cap a share of QUICK_BENCH_S.
kernel_bench() {
  local op="$1" share="$2" tables="$3"
  local args=(--op "$op" --reps "${REPS:-30}" --warmup "${WARMUP:-5}" --out "$OUT")
  if [ $QUICK = 1 ]; then
    run --cap $(( ${QUICK_BENCH_S:-150} * share / 100 )) "$PY" -m sparsedm bench kernels "${args[@]}" --shapes "$tables"
  else
    run "$PY" -m sparsedm bench kernels "${args[@]}"
  fi
}
if want bench-kernels; then
  step "kernel benchmarks, one run per op family"
  for op in ${BENCH_OPS:-linear int8 sparse-int8 conv}; do
    case "$op" in
      linear) kernel_bench linear 40 square,small-m,uvit-l2;;
      int8) kernel_bench int8 15 square;;
      sparse-int8) kernel_bench sparse-int8 15 square;;
      conv) kernel_bench conv 30 ddpm-unet,sd15-unet;;
      *) kernel_bench "$op" 25 "";;
    esac
  done
fi
if want bench-models; then
  step "model benchmarks"
  if [ $QUICK = 1 ]; then
    # the variants the targets read (dense is every speedup's baseline)
    run --cap $(( ${QUICK_MODEL_S:-100} / 2 )) "$PY" -m sparsedm bench model --preset uvit-s2-cifar10 --batch 128 --cuda-graph --variants dense,sparse,sparse+int8 --out "$OUT"
    run --cap $(( ${QUICK_MODEL_S:-100} / 2 )) "$PY" -m sparsedm bench model --preset ddpm-unet-cifar10 --batch 64 --cuda-graph --channels-last --variants dense,sparse --out "$OUT"
  else
    run "$PY" -m sparsedm bench model --preset uvit-s2-cifar10 --batch 128 --cuda-graph --out "$OUT"
    run "$PY" -m sparsedm bench model --preset uvit-s2-cifar10 --batch 128 --out "$OUT"  # images/s without graphs
    run "$PY" -m sparsedm bench model --preset ddpm-unet-cifar10 --batch 64 --cuda-graph --channels-last --out "$OUT"
  fi
fi
if want sanitizer; then
  step "compute-sanitizer on small calls of every op and backend"
  if command -v compute-sanitizer >/dev/null; then
    # Triton autotuning off: timing every candidate of every new shape under the sanitizer
    # would spend the budget on compiles, not on the checks.
    if [ $QUICK = 1 ]; then
      # every case under memcheck, then racecheck on the cuda kernels' refilled pipeline slots,
      # split-K and the conv (the shared-memory hazards only a GPU can show)
      SPARSEDM_TRITON_AUTOTUNE=0 run compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" bench/sanitizer_case.py
      SPARSEDM_TRITON_AUTOTUNE=0 run compute-sanitizer --tool racecheck --error-exitcode 9 "$PY" bench/sanitizer_case.py \
        --cases pipeline,split,conv --backends cuda
    else
      for tool in memcheck racecheck synccheck; do
        SPARSEDM_TRITON_AUTOTUNE=0 run compute-sanitizer --tool "$tool" --error-exitcode 9 "$PY" bench/sanitizer_case.py
      done
    fi
  else
    echo "compute-sanitizer not found; skipped"
  fi
fi

# A run that crossed midnight (UTC) names its later files with the new date: both stems count.
STEM_END="$(results_stem)"
STEMS="$STEM"
[ "$STEM_END" != "$STEM" ] && STEMS="$STEM $STEM_END"
if want bench-kernels || want bench-models; then
  step "speed targets (sparsedm bench targets) over this run's results"
  # this run's files only: $OUT may hold other GPUs' and commits' results (bench/results/)
  jsons=()
  for st in $STEMS; do for f in "$OUT/${st}"*.json; do [ -f "$f" ] && jsons+=("$f"); done; done
  if [ ${#jsons[@]} -gt 0 ]; then
    "$PY" -m sparsedm bench targets "${jsons[@]}" --out "$OUT/${STEM}targets.md" || true
  else
    echo "no results files to check"
  fi
fi

step "done: exit status $status; files in $OUT"
if [ ${#NOT_RUN[@]} -gt 0 ]; then
  echo "not run, the budget (SUITE_BUDGET=$SUITE_BUDGET) was spent:"
  for c in "${NOT_RUN[@]}"; do echo "  $c"; done
fi
ls -la "$OUT"
# Some runners return only a handful of files from $OUT (the device tool: 8). When there are
# more, this run's result files (those named ${STEM}*; nothing else in $OUT, such as committed
# results or bench/results/README.md) go into one archive beside the log (PACK=0 keeps them loose).
names=()
for st in $STEMS; do names+=(-o -name "${st}*"); done
find_run_files() { find "$OUT" -maxdepth 1 -type f \( "${names[@]:1}" \) "$@"; }
n_files=$(find_run_files | wc -l)
if [ "${PACK:-auto}" != 0 ] && [ "$n_files" -gt 0 ] && { [ "${PACK:-auto}" = 1 ] || [ "$n_files" -gt 6 ]; }; then
  archive="results-$(date -u +%Y%m%d-%H%M%S).tar.gz"
  find_run_files -printf '%f\n' | (cd "$OUT" && tar czf "$archive" -T -) && find_run_files -delete
  echo "packed $n_files result files into $OUT/$archive (python bench/ingest_results.py takes it)"
fi
# Let tee write the last lines before the runner collects $OUT (it ends what is left running).
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null || sleep 1
sync
exit $status
