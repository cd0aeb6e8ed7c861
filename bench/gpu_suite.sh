#!/usr/bin/env bash
# All GPU validation in one command: build the extension, run the GPU tests, one small case
# under compute-sanitizer, the kernel benchmarks on every shape table and the model
# benchmarks. Installs nothing from the network (torch, triton and nvcc must be there).
#
#   bash bench/gpu_suite.sh [all|test|bench]     (default: all)
#
# Results go to $OUT if set, else bench/results/: <gpu>-<date>-<commit>-kernels.{json,csv,md,png}
# (and -model.*), plus gpu_suite-<stage>.log. Stages can run in separate calls (each under
# 10 minutes on one H100): `test` builds and tests, `bench` builds (cached) and measures.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE="${1:-all}"
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
LOG="$OUT/gpu_suite-$STAGE.log"
exec > >(tee "$LOG") 2>&1
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"
git rev-parse HEAD 2>/dev/null || echo "commit: not a git checkout"

step "build (pip install --no-deps --no-build-isolation -e .)"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  # Build only for the GPU at hand: a suite run is about this machine, and it halves the build.
  TORCH_CUDA_ARCH_LIST="$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")"
  export TORCH_CUDA_ARCH_LIST
fi
SPARSEDM_CUDA="${SPARSEDM_CUDA:-auto}" "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . || status=1
"$PY" -m sparsedm info --backends || status=1

if [ "$STAGE" = all ] || [ "$STAGE" = test ]; then
  step "GPU tests (pytest -m gpu)"
  "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests || status=1

  step "compute-sanitizer on one small case per available GPU backend"
  if command -v compute-sanitizer >/dev/null; then
    compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" bench/sanitizer_case.py || status=1
  else
    echo "compute-sanitizer not found; skipped"
  fi
fi

if [ "$STAGE" = all ] || [ "$STAGE" = bench ]; then
  step "kernel benchmarks (all shape tables)"
  "$PY" -m sparsedm bench kernels --op all --reps "${REPS:-30}" --warmup "${WARMUP:-5}" --out "$OUT" || status=1
  if "$PY" -m sparsedm bench model --help >/dev/null 2>&1; then
    step "model benchmarks"
    "$PY" -m sparsedm bench model --preset uvit-s2-cifar10 --batch 128 --cuda-graph --out "$OUT" || status=1
    "$PY" -m sparsedm bench model --preset ddpm-unet-cifar10 --batch 64 --cuda-graph --out "$OUT" || status=1
  fi
fi

step "done: exit status $status; files in $OUT"
ls -la "$OUT"
exit $status
