"""Inference modules for 2:4 sparse and int8 layers, and :func:`optimize` to swap them in."""

from sparsedm.ops import dense as _dense  # noqa: F401  (registers the dense backend's kernels)
from sparsedm.nn.modules import Int8Linear, Sparse24Int8Linear, SparseConv2d, SparseLinear
from sparsedm.nn.optimize import LayerReport, OptimizeReport, fuse_activations_in, last_report, optimize

__all__ = [
    "Int8Linear",
    "LayerReport",
    "OptimizeReport",
    "Sparse24Int8Linear",
    "SparseConv2d",
    "SparseLinear",
    "fuse_activations_in",
    "last_report",
    "optimize",
]
