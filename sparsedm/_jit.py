"""Development build of the CUDA kernels without reinstalling (``torch.utils.cpp_extension.load``).

    python -c "import sparsedm._jit as j; j.load_cuda_ops(verbose=True)"

compiles csrc/cuda_ops.cpp + csrc/cuda/*.cu (kernels/cuda headers) into a throwaway extension
that registers the private ops ``sparsedm::_cuda_*``, and the ``cuda`` backend uses them.
``SPARSEDM_JIT=1`` does the same on the first use of the ``cuda`` backend (its probe), so an
installed CPU-only ``sparsedm._C`` plus a GPU is enough for kernel development. Nothing is
built when the ops are already registered (a CUDA ``sparsedm._C``, or an earlier load). Needs
a CUDA build of torch and nvcc of the same major version. Archs come from
``TORCH_CUDA_ARCH_LIST`` (default: the visible GPU's).
"""

from __future__ import annotations

import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV_JIT = "SPARSEDM_JIT"


def cuda_ops_registered() -> bool:
    """Whether the private CUDA ops exist in this process (from sparsedm._C or a JIT build)."""
    import torch

    return hasattr(torch.ops.sparsedm, "_cuda_sparse24_gemm")


def load_cuda_ops(verbose: bool = False):
    """Build and load the CUDA ops; returns the loaded library, or None when they were
    already registered (then nothing is built: a second registration would be an error)."""
    import torch
    from torch.utils.cpp_extension import load

    if cuda_ops_registered():
        return None

    if torch.version.cuda is None:
        raise RuntimeError(f"torch {torch.__version__} is a CPU build; the JIT CUDA build needs a CUDA torch")
    gen = os.path.join(ROOT, "build", "jit_generated")
    os.makedirs(gen, exist_ok=True)
    with open(os.path.join(gen, "sparsedm_build_config.h"), "w") as f:
        f.write('#pragma once\n#define SPARSEDM_WHY_CPU_ONLY ""\n#define SPARSEDM_CUDA_ARCHS "jit"\n')
    sources = [os.path.join(ROOT, "csrc", "cuda_ops.cpp")] + sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*_launch.cu")))
    includes = [gen, os.path.join(ROOT, "kernels", "cuda"), os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "cuda")]
    module = load(
        name="sparsedm_cuda_jit",
        sources=sources,
        extra_include_paths=includes,
        extra_cflags=["-O3", "-std=c++17", "-DSPARSEDM_WITH_CUDA=1"],
        extra_cuda_cflags=["-O3", "-std=c++17", "-lineinfo"],
        is_python_module=False,
        verbose=verbose,
    )
    import sparsedm.ops.cuda_backend  # noqa: F401  (registers the Python kernels)
    from sparsedm.ops import registry

    registry.get_backend("cuda").reprobe()  # it may have said "built without CUDA" before
    return module
