"""The ``cusparselt`` and ``cutlass`` backends: torch's own 2:4 sparse GEMMs for ``sparse24_linear``.

torch ships two semi-structured sparse matmuls: cuSPARSELt (``SparseSemiStructuredTensorCUSPARSELT``,
``torch._cslt_sparse_mm`` underneath, any GPU the library supports) and CUTLASS
(``SparseSemiStructuredTensorCUTLASS``, compute capability 8.x). Both take a dense 2:4 weight
and build their own packed layout from it, so the canonical pair is decompressed once per
weight, converted, and the converted tensor is cached (weakly keyed on ``values``, rebuilt
when ``values`` or ``meta`` change in place, like the ``dense`` backend's cache).
``F.linear(x, W_sparse, bias)`` then runs torch's kernel (it pads M itself); the activation
is applied afterwards (torch fuses none).

They are candidates of the automatic backend choice next to ``cuda``, ``triton`` and
``dense``; ``sparsedm bench kernels`` also times them as ``torch-cusparselt`` /
``torch-cutlass`` straight from torch. Only float16 / bfloat16 ``sparse24_linear`` is served:
torch's int8 2:4 paths take no per-token activation scales, and there is no 2:4 convolution.
"""

from __future__ import annotations

import threading
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakTensorKeyDictionary

from sparsedm.formats import decompress24
from sparsedm.ops import checks, registry
from sparsedm.ops.reference import apply_activation

__all__ = ["semi_structured_weight", "clear_cache"]

# values tensor -> {backend: (meta, values._version, meta._version, converted weight)}
_CACHE = WeakTensorKeyDictionary()
_LOCK = threading.Lock()


def _tensor_class(backend: str):
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    return SparseSemiStructuredTensorCUSPARSELT if backend == "cusparselt" else SparseSemiStructuredTensorCUTLASS


def semi_structured_weight(backend: str, values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """torch's semi-structured weight (``backend`` "cusparselt" or "cutlass") of a canonical pair, cached."""
    with _LOCK:
        per_backend = _CACHE.get(values)
        hit = None if per_backend is None else per_backend.get(backend)
        if hit is not None and hit[0] is meta and hit[1] == values._version and hit[2] == meta._version:
            return hit[3]
        weight = _tensor_class(backend).from_dense(decompress24(values, meta))
        if per_backend is None:
            per_backend = _CACHE[values] = {}
        per_backend[backend] = (meta, values._version, meta._version, weight)
        return weight


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def forget(args: tuple, backend: Optional[str] = None) -> None:
    """Drop the converted weights of the canonical tensors among one call's ``args`` (all
    backends, or one): what the autotuner does for a backend that lost the measurement."""
    with _LOCK:
        for a in args:
            if isinstance(a, torch.Tensor) and a in _CACHE:
                if backend is None:
                    del _CACHE[a]
                else:
                    _CACHE[a].pop(backend, None)


def _supports(backend: str):
    def supports(x, values, meta, bias, activation="none") -> Optional[str]:
        if not (x.is_cuda and values.is_cuda and meta.is_cuda):
            return f"torch's {backend} 2:4 GEMM needs CUDA tensors"
        if backend == "cutlass":
            major, minor = torch.cuda.get_device_capability(x.device)
            if major != 8:  # the probe looked at the current device; x may be on another GPU
                return f"torch's CUTLASS 2:4 kernels run on compute capability 8.x only; {x.device} is {major}.{minor}"
        if x.dtype not in (torch.float16, torch.bfloat16) or values.dtype != x.dtype:
            return f"torch's {backend} 2:4 GEMM takes float16 or bfloat16 x and values of x's dtype, got {x.dtype} / {values.dtype}"
        limits = _tensor_class(backend)._DTYPE_SHAPE_CONSTRAINTS.get(x.dtype)
        n, k = values.shape[0], 2 * values.shape[1]
        if limits is None:
            return f"torch's {backend} 2:4 GEMM does not take {x.dtype}"
        if n % limits.sparse_min_rows or k % limits.sparse_min_cols:
            return (f"torch's {backend} 2:4 GEMM needs N a multiple of {limits.sparse_min_rows} and K a multiple of "
                    f"{limits.sparse_min_cols}, got N={n}, K={k}")
        return None

    return supports


def _linear(backend: str):
    def sparse24_linear(x, values, meta, bias, activation="none"):
        checks.check_sparse24_linear(x, values, meta, bias, activation)
        w = semi_structured_weight(backend, values, meta)
        n, k = values.shape[0], x.shape[-1]
        y = F.linear(x.reshape(-1, k).contiguous(), w, None if bias is None else bias.to(x.dtype))
        # torch returns the transpose of its [N, M] product: make it the row-major [M, N] the
        # op's fake (and every other backend) promises, or torch.compile's stride checks fail.
        return apply_activation(y, activation).contiguous().reshape(*x.shape[:-1], n)

    sparse24_linear.__name__ = f"{backend}_sparse24_linear"
    return sparse24_linear


for _backend in ("cusparselt", "cutlass"):
    registry.register_kernel("sparse24_linear", _backend, _linear(_backend), _supports(_backend))
