"""The backends sparsedm knows, with probes that say what each one needs.

Kernels are registered by the module that implements them: the reference kernels here, the
Triton kernels by ``sparsedm.kernels`` (kernels/triton), the CUDA ones by the ``sparsedm._C``
glue. A backend with no kernels reports itself unavailable, so ``sparsedm info`` never claims
more than the installed version can do.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

from sparsedm import _ext
from sparsedm.ops import reference, registry
from sparsedm.ops.library import OPS


def _cuda_device_reason() -> Optional[str]:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a build without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    return None


def _probe_triton() -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton; Linux only)"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    reason = _cuda_device_reason()
    if reason is not None:
        return f"{reason}; set TRITON_INTERPRET=1 to run the Triton kernels in the CPU interpreter (slow, for tests)"
    return None


def _probe_cuda() -> Optional[str]:
    from sparsedm import _jit

    if _jit.cuda_ops_registered():  # by sparsedm._C's CUDA build, or by an earlier JIT build
        return _cuda_device_reason()
    if os.environ.get(_jit.ENV_JIT) == "1":
        reason = _cuda_device_reason()
        if reason is not None:
            return reason
        try:
            _jit.load_cuda_ops()
        except Exception as exc:  # a compiler error, no nvcc, ...: one readable line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return f"{_jit.ENV_JIT}=1 but the JIT build of the CUDA ops failed: {type(exc).__name__}: {first}"
        return None
    hint = f" ({_jit.ENV_JIT}=1 builds the CUDA ops at first use instead, for development)"
    if _ext.C is None:
        return f"the compiled extension sparsedm._C is missing: {_ext.import_error}{hint}"
    info = _ext.C.build_info()
    return f"sparsedm._C was built without CUDA: {info.get('why_cpu_only') or 'SPARSEDM_CUDA=0'}{hint}"


def _probe_cusparselt() -> Optional[str]:
    reason = _cuda_device_reason()
    if reason is not None:
        return reason
    if not hasattr(torch, "_cslt_sparse_mm") or not torch.backends.cusparselt.is_available():
        return f"torch {torch.__version__} was built without cuSPARSELt"
    return None


def _probe_cutlass() -> Optional[str]:
    reason = _cuda_device_reason()
    if reason is not None:
        return reason
    major, minor = torch.cuda.get_device_capability()
    if major != 8:
        return f"torch's CUTLASS 2:4 kernels run on compute capability 8.x only; this GPU is {major}.{minor}"
    return None


_GEMMS = ("sparse24_linear", "int8_linear", "sparse24_int8_linear", "sparse24_conv2d")
registry.register_backend("reference", "plain torch on the decompressed weight; any device (the oracle)", lambda: None,
                          provides=tuple(OPS))
registry.register_backend(
    "triton", "Triton kernels (sparsedm.kernels)", _probe_triton, loader=lambda: importlib.import_module("sparsedm.kernels"),
    provides=tuple(OPS),
)
registry.register_backend(
    "cuda",
    "hand-written mma.sp / int8 mma CUDA kernels (sparsedm._C)",
    _probe_cuda,
    loader=lambda: importlib.import_module("sparsedm.ops.cuda_backend"),
    provides=_GEMMS,
)
_load_torch_sparse = lambda: importlib.import_module("sparsedm.ops.torch_sparse")  # noqa: E731
registry.register_backend("cusparselt", "torch's cuSPARSELt 2:4 GEMM (torch._cslt_sparse_mm)", _probe_cusparselt,
                          loader=_load_torch_sparse, provides=("sparse24_linear",))
registry.register_backend("cutlass", "torch's CUTLASS 2:4 GEMM (to_sparse_semi_structured, sm_8x)", _probe_cutlass,
                          loader=_load_torch_sparse, provides=("sparse24_linear",))
registry.register_backend(
    "dense",
    "cuBLAS/cuDNN on the decompressed weight (cached per weight)",
    _cuda_device_reason,
    loader=lambda: importlib.import_module("sparsedm.ops.dense"),
    provides=_GEMMS,
)

for _op in OPS:
    registry.register_kernel(_op, "reference", getattr(reference, _op))
