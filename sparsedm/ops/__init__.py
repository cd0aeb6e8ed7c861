"""The ``sparsedm::`` ops: Python wrappers with a ``backend=`` choice.

Each wrapper calls the ``torch.ops.sparsedm`` op; the backend registry
(:mod:`sparsedm.ops.registry`) picks the kernel. ``backend=None`` (or ``"auto"``) leaves the
choice to ``SPARSEDM_BACKEND`` and the registry; a named backend is forced for this call and
raises :class:`BackendUnavailableError` if it cannot run it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from sparsedm.ops import backends as _backends  # noqa: F401  (registers the backends)
from sparsedm.ops import library as _library
from sparsedm.ops.checks import ACTIVATIONS, OpArgumentError
from sparsedm.ops.registry import BackendUnavailableError, backend_status, dispatch_counts, use_backend

__all__ = [
    "ACTIVATIONS",
    "BackendUnavailableError",
    "OpArgumentError",
    "backend_status",
    "dispatch_counts",
    "use_backend",
    "compress24",
    "decompress24",
    "sparse24_linear",
    "sparse24_conv2d",
    "int8_linear",
    "sparse24_int8_linear",
]


def _call(op, backend: Optional[str], *args):
    if backend is None:  # the common path stays free of Python context managers (torch.compile)
        return op(*args)
    with use_backend(backend):
        return op(*args)


def compress24(w: torch.Tensor, *, backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D 2:4-sparse ``w [N, K]`` -> canonical ``(values [N, K/2], meta uint8 [N, K/8])``."""
    return _call(_library.compress24, backend, w)


def decompress24(values: torch.Tensor, meta: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """Canonical ``(values, meta)`` -> dense ``[N, K]``."""
    return _call(_library.decompress24, backend, values, meta)


def sparse24_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: str = "none",
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """``act(x @ W^T + bias)`` with W given in canonical 2:4 form; x ``[..., K]`` -> ``[..., N]``."""
    return _call(_library.sparse24_linear, backend, x, values, meta, bias, activation)


def sparse24_conv2d(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: Optional[torch.Tensor],
    weight_shape: Sequence[int],
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    activation: str = "none",
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """2-D convolution (groups=1) with a 2:4 weight compressed from its KRSC view.

    x is NCHW or channels_last; the output has the same memory format.
    """
    return _call(
        _library.sparse24_conv2d, backend, x, values, meta, bias,
        list(weight_shape), list(stride), list(padding), list(dilation), activation,
    )


def int8_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    x_scale: Optional[torch.Tensor] = None,
    activation: str = "none",
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """W8A8: ``act((q(x) @ w_q^T) * s_x * s_w + bias)``; x quantized per token unless ``x_scale``."""
    return _call(_library.int8_linear, backend, x, w_q, w_scale, bias, x_scale, activation)


def sparse24_int8_linear(
    x: torch.Tensor,
    values_q: torch.Tensor,
    meta: torch.Tensor,
    w_scale: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    x_scale: Optional[torch.Tensor] = None,
    activation: str = "none",
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """int8 GEMM with a 2:4 int8 weight (canonical values_q / meta, per-channel w_scale), then
    the activation, fused in the epilogue."""
    return _call(_library.sparse24_int8_linear, backend, x, values_q, meta, w_scale, bias, x_scale, activation)
