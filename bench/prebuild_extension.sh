#!/usr/bin/env bash
# Build sparsedm._C with its CUDA kernels on a machine without a GPU, for a GPU machine whose
# Python and torch are known, so that bench/gpu_suite.sh there reuses the build
# (bench/ext_stamp.py check) instead of compiling on borrowed GPU time. Defaults: the lent
# H200 of docs/BENCHMARKS.md (python 3.12, torch 2.11.0+cu130 from PyPI, sm_90).
#
#   bash bench/prebuild_extension.sh
#   then send sparsedm/_C.cpython-312-x86_64-linux-gnu.so and sparsedm/_C.stamp with the tree
#
# Needs: nvcc of torch's CUDA major version, a python of the target version (PYTHON, default
# python3.12), network for the torch wheel (once: the venv is kept in $VENV). Builds the
# working tree as it is (uncommitted changes included) in a temporary copy; the checkout only
# gains the two files above. If the target machine cannot load the result (other system
# libraries), gpu_suite.sh says why and builds there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.12}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.11.0}"
ARCHS="${ARCHS:-9.0}"
VENV="${VENV:-/tmp/sparsedm-prebuild-venv}"
ROOT="$PWD"

if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"; do
    if [ -f "$c/include/cuda_runtime_api.h" ]; then CUDA_HOME="$c"; break; fi
  done
fi
if [ -z "${CUDA_HOME:-}" ] || [ ! -f "$CUDA_HOME/include/cuda_runtime_api.h" ]; then
  echo "no CUDA toolkit found: set CUDA_HOME to the folder holding bin/nvcc and include/" >&2
  exit 2
fi
export CUDA_HOME

command -v "$PYTHON" >/dev/null || { echo "$PYTHON not found: set PYTHON to the target machine's Python version" >&2; exit 2; }
want_py="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" || exit 2
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
have_py="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$have_py" != "$want_py" ]; then
  echo "$VENV holds python $have_py, not $want_py ($PYTHON): remove it or set VENV elsewhere" >&2
  exit 2
fi
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC" numpy safetensors tqdm setuptools wheel pybind11 ninja
"$VENV/bin/python" -c "import torch; print('building against torch', torch.__version__, 'CUDA', torch.version.cuda)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# what a copy of the tree holds (tracked and untracked-not-ignored files; a deleted one is skipped)
git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$work"
(cd "$work" && TORCH_CUDA_ARCH_LIST="$ARCHS" SPARSEDM_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
   "$VENV/bin/python" setup.py -q build_ext --inplace)
so="$(cd "$work" && ls sparsedm/_C.cpython-*.so)"
strip --strip-debug "$work/$so"  # host debug info only (the GPU code keeps -lineinfo)
# the stamp hashes the copy that was compiled, not the checkout (which may have changed since)
(cd "$work" && "$VENV/bin/python" bench/ext_stamp.py write --archs "$ARCHS")
cp "$work/$so" "$ROOT/$so.tmp" && mv "$ROOT/$so.tmp" "$ROOT/$so"
cp "$work/sparsedm/_C.stamp" "$ROOT/sparsedm/_C.stamp.tmp" && mv "$ROOT/sparsedm/_C.stamp.tmp" "$ROOT/sparsedm/_C.stamp"
echo "built $so ($(du -h "$so" | cut -f1)) for archs $ARCHS; send it and sparsedm/_C.stamp with the tree"
