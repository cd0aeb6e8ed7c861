"""Inference modules holding canonical 2:4 / int8 tensors and calling the ``sparsedm::`` ops.

Each module stores only the canonical tensors of DESIGN.md ("The 2:4 contract") as buffers,
which are exactly its ``state_dict``:

- ``SparseLinear``: ``values`` [N, K/2] (weight dtype), ``meta`` uint8 [N, K/8], ``bias`` [N];
- ``SparseConv2d``: the same, compressed from the KRSC view (K = kh*kw*Cin);
- ``Int8Linear``: ``w_q`` int8 [N, K], ``w_scale`` float32 [N], ``bias``, optional ``x_scale`` [1];
- ``Sparse24Int8Linear``: ``values_q`` int8 [N, K/2], ``meta``, ``w_scale``, ``bias``, ``x_scale``;

plus ``weight_shape`` (int64: [N, K] or [Cout, Cin, kh, kw]) so a file says what it holds, and
loading checks it against the module. Kernel-specific layouts are built lazily by each
backend, cached per canonical tensor, and never stored. Scales stay float32 under
``.half()`` / ``.to(dtype)``; everything else follows the usual module dtype rules.

``backend`` ("auto" by default) is passed to every op call; "auto" lets the registry choose
(reference on CPU, the measured winner on CUDA). The modules are inference-only (the ops
have no autograd formula) and work under ``torch.compile(fullgraph=True)`` and CUDA graphs
with ``backend="auto"`` (a forced backend enters a Python context manager per call).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from sparsedm import ops
from sparsedm.formats import compress24, decompress24, dequantize_int8, is_24_sparse, mask24, quantize_weight_int8
from sparsedm.formats.sparse24 import Sparse24FormatError
from sparsedm.ops.checks import ACTIVATIONS

__all__ = ["SparseLinear", "SparseConv2d", "Int8Linear", "Sparse24Int8Linear"]

_SCALE_BUFFERS = ("w_scale", "x_scale")


def _pair(v: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(i) for i in v)
    return v if len(v) == 2 else (v[0], v[0])


def _masked_weight(weight: torch.Tensor, prune: bool, what: str) -> torch.Tensor:
    """The weight as a 2:4 tensor: masked by the DESIGN rule (``prune``) or checked to be 2:4."""
    w = weight.detach()
    if prune:
        return w * mask24(w)
    if not is_24_sparse(w):
        raise Sparse24FormatError(
            f"{what}: the weight {tuple(w.shape)} is not 2:4 sparse (some group of 4 along the reduction "
            f"axis has more than 2 nonzeros); pass prune=True to keep the 2 largest |w| of each group"
        )
    return w


def _check_activation(activation: str) -> None:
    """The epilogue activations every sparsedm module takes (the ops' ACTIVATIONS)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")


class _CanonicalModule(nn.Module):
    """Shared plumbing: backend attribute, float32 scales, weight_shape check on load."""

    weight_shape: torch.Tensor

    def _init_common(self, weight_shape: Sequence[int], backend: str, device) -> None:
        self.backend = backend
        self._weight_shape = tuple(int(s) for s in weight_shape)
        self.register_buffer("weight_shape", torch.tensor(self._weight_shape, dtype=torch.int64, device=device))

    @property
    def _op_backend(self) -> Optional[str]:
        return None if self.backend in (None, "auto") else self.backend

    def _apply(self, fn, recurse=True):
        # Scales are float32 by contract: keep their dtype when the module is cast, follow the device.
        saved = {name: self._buffers.pop(name) for name in _SCALE_BUFFERS if name in self._buffers}
        try:
            super()._apply(fn, recurse)
        finally:
            for name, scale in saved.items():
                if scale is not None:
                    moved = fn(scale)
                    scale = moved if moved.dtype == scale.dtype else scale.to(device=moved.device)
                self._buffers[name] = scale
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        shape = state_dict.get(prefix + "weight_shape")
        if shape is not None and shape.device.type != "meta":
            stored = tuple(int(s) for s in shape.tolist())
            if stored != self._weight_shape:
                error_msgs.append(
                    f"{prefix}weight_shape: the file holds a layer of weight shape {list(stored)} but this "
                    f"{type(self).__name__} was built for {list(self._weight_shape)}; build the model with the "
                    f"file's config"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _bias_repr(self) -> str:
        return f"bias={self.bias is not None}"


class SparseLinear(_CanonicalModule):
    """``nn.Linear`` with a 2:4 weight in canonical compressed form: ``y = act(x W^T + b)``.

    Input ``[..., in_features]``, output ``[..., out_features]``, any float dtype equal to the
    module's. ``activation`` (none, gelu, gelu_tanh, silu) is fused into the op's epilogue.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        activation: str = "none",
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if in_features % 8:
            raise Sparse24FormatError(
                f"SparseLinear: in_features={in_features} is not a multiple of 8 (canonical meta packs two "
                f"groups of 4 per byte); this layer stays dense (pad in_features or exclude it)"
            )
        _check_activation(activation)
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        dtype = dtype or torch.get_default_dtype()
        self.register_buffer("values", torch.zeros(out_features, in_features // 2, dtype=dtype, device=device))
        self.register_buffer("meta", torch.zeros(out_features, in_features // 8, dtype=torch.uint8, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        self._init_common((out_features, in_features), backend, device)

    @classmethod
    def from_dense(cls, linear: nn.Linear, *, prune: bool = False, activation: str = "none", backend: str = "auto") -> "SparseLinear":
        """Compress ``linear``'s weight (2:4 already, or masked first with ``prune=True``).

        A weight on the meta device gives a module of the right shapes to load into.
        """
        w = linear.weight
        module = cls(linear.in_features, linear.out_features, linear.bias is not None,
                     activation=activation, backend=backend, device=w.device, dtype=w.dtype)
        if w.device.type != "meta":
            module.values, module.meta = compress24(_masked_weight(w, prune, "SparseLinear.from_dense"))
            if linear.bias is not None:
                module.bias = linear.bias.detach().clone()
        return module

    def dense_weight(self) -> torch.Tensor:
        """The decompressed ``[out_features, in_features]`` weight (for checks and export)."""
        return decompress24(self.values, self.meta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.sparse24_linear(x, self.values, self.meta, self.bias, self.activation, backend=self._op_backend)

    def extra_repr(self) -> str:
        act = "" if self.activation == "none" else f", activation={self.activation}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self._bias_repr()}, "
                f"format=2:4 {str(self.values.dtype).replace('torch.', '')}{act}, backend={self.backend}")


class SparseConv2d(_CanonicalModule):
    """``nn.Conv2d`` (groups=1, zero padding) with a 2:4 weight compressed from its KRSC view.

    Input ``[N, C, H, W]`` (NCHW or channels_last; the output keeps the input's memory format)
    or unbatched ``[C, H, W]``, like ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Sequence[int]],
        stride: Union[int, Sequence[int]] = 1,
        padding: Union[int, Sequence[int]] = 0,
        dilation: Union[int, Sequence[int]] = 1,
        bias: bool = True,
        *,
        activation: str = "none",
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        kh, kw = _pair(kernel_size)
        k = kh * kw * in_channels
        if k % 8:
            raise Sparse24FormatError(
                f"SparseConv2d: reduction length K = kh*kw*Cin = {kh}*{kw}*{in_channels} = {k} is not a multiple "
                f"of 8; this layer stays dense (pad the input channels or exclude it)"
            )
        _check_activation(activation)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = (kh, kw), _pair(stride), _pair(padding), _pair(dilation)
        self.activation = activation
        dtype = dtype or torch.get_default_dtype()
        self.register_buffer("values", torch.zeros(out_channels, k // 2, dtype=dtype, device=device))
        self.register_buffer("meta", torch.zeros(out_channels, k // 8, dtype=torch.uint8, device=device))
        self.register_buffer("bias", torch.zeros(out_channels, dtype=dtype, device=device) if bias else None)
        self._init_common((out_channels, in_channels, kh, kw), backend, device)

    @staticmethod
    def unsupported_reason(conv: nn.Conv2d) -> Optional[str]:
        """Why ``conv`` cannot become a SparseConv2d, or None."""
        if conv.groups != 1:
            return f"groups={conv.groups}: the 2:4 conv op handles groups=1 only"
        if conv.padding_mode != "zeros":
            return f"padding_mode={conv.padding_mode!r}: the 2:4 conv op pads with zeros only"
        if isinstance(conv.padding, str) and _string_padding(conv) is None:
            return f"padding={conv.padding!r} is asymmetric for kernel {conv.kernel_size} and dilation {conv.dilation}"
        k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        if k % 8:
            return (f"K = Cin*kh*kw = {k} is not a multiple of 8; this layer stays dense "
                    f"(pad the input channels or exclude it)")
        return None

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, *, prune: bool = False, activation: str = "none", backend: str = "auto") -> "SparseConv2d":
        """Compress ``conv``'s weight (KRSC view; 2:4 already, or masked first with ``prune=True``)."""
        reason = cls.unsupported_reason(conv)
        if reason is not None:
            raise ValueError(f"SparseConv2d.from_dense: {reason}; keep this layer an nn.Conv2d")
        padding = _string_padding(conv) if isinstance(conv.padding, str) else conv.padding
        w = conv.weight
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding, conv.dilation,
                     conv.bias is not None, activation=activation, backend=backend, device=w.device, dtype=w.dtype)
        if w.device.type != "meta":
            module.values, module.meta = compress24(_masked_weight(w, prune, "SparseConv2d.from_dense"))
            if conv.bias is not None:
                module.bias = conv.bias.detach().clone()
        return module

    def dense_weight(self) -> torch.Tensor:
        """The decompressed ``[Cout, Cin, kh, kw]`` weight."""
        return decompress24(self.values, self.meta, shape=self._weight_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        y = ops.sparse24_conv2d(x, self.values, self.meta, self.bias, self._weight_shape, self.stride,
                                self.padding, self.dilation, self.activation, backend=self._op_backend)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        act = "" if self.activation == "none" else f", activation={self.activation}"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, {self._bias_repr()}, "
                f"format=2:4 KRSC {str(self.values.dtype).replace('torch.', '')}{act}, backend={self.backend}")


def _string_padding(conv: nn.Conv2d) -> Optional[tuple[int, int]]:
    """Integer padding for ``padding='valid'/'same'``; None when 'same' would be asymmetric."""
    if conv.padding == "valid":
        return (0, 0)
    total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    if any(t % 2 for t in total):
        return None
    return (total[0] // 2, total[1] // 2)


class _Int8Base(_CanonicalModule):
    def _init_int8(self, in_features, out_features, bias, static_x_scale, activation, backend, device, dtype):
        _check_activation(activation)
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        dtype = dtype or torch.get_default_dtype()
        self.register_buffer("w_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        self.register_buffer("x_scale", torch.ones(1, dtype=torch.float32, device=device) if static_x_scale else None)
        self._init_common((out_features, in_features), backend, device)

    def _copy_dense(self, linear: nn.Linear, x_scale) -> None:
        if linear.bias is not None:
            self.bias = linear.bias.detach().clone()
        if x_scale is not None:
            self.x_scale = torch.as_tensor(x_scale, dtype=torch.float32, device=linear.weight.device).reshape(1).clone()

    def _scale_repr(self) -> str:
        act = "" if self.activation == "none" else f", activation={self.activation}"
        return ("activations=static scale" if self.x_scale is not None else "activations=per-token dynamic") + act


class Int8Linear(_Int8Base):
    """W8A8 linear: per-channel int8 weight, activations quantized per token (or one static scale).

    ``y = (q(x) @ w_q^T) * s_x * s_w + bias``, int32 accumulation, output in x's dtype.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, static_x_scale: bool = False,
                 activation: str = "none", backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.register_buffer("w_q", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self._init_int8(in_features, out_features, bias, static_x_scale, activation, backend, device, dtype)

    @classmethod
    def from_dense(cls, linear: nn.Linear, *, x_scale: Optional[float] = None, activation: str = "none",
                   backend: str = "auto") -> "Int8Linear":
        """Quantize ``linear``'s weight per output channel; ``x_scale``: a calibrated static activation scale."""
        w = linear.weight
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, static_x_scale=x_scale is not None,
                     activation=activation, backend=backend, device=w.device, dtype=w.dtype)
        if w.device.type != "meta":
            module.w_q, module.w_scale = quantize_weight_int8(w.detach())
            module._copy_dense(linear, x_scale)
        return module

    def dense_weight(self) -> torch.Tensor:
        """The dequantized float32 weight."""
        return dequantize_int8(self.w_q, self.w_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.int8_linear(x, self.w_q, self.w_scale, self.bias, self.x_scale, self.activation, backend=self._op_backend)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self._bias_repr()}, "
                f"format=int8 per-channel, {self._scale_repr()}, backend={self.backend}")


class Sparse24Int8Linear(_Int8Base):
    """2:4 sparse W8A8 linear: masked, then quantized (per-channel scale over the kept values)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, static_x_scale: bool = False,
                 activation: str = "none", backend: str = "auto", device=None, dtype=None):
        super().__init__()
        if in_features % 8:
            raise Sparse24FormatError(
                f"Sparse24Int8Linear: in_features={in_features} is not a multiple of 8; this layer stays dense "
                f"(pad in_features or exclude it)"
            )
        self.register_buffer("values_q", torch.zeros(out_features, in_features // 2, dtype=torch.int8, device=device))
        self.register_buffer("meta", torch.zeros(out_features, in_features // 8, dtype=torch.uint8, device=device))
        self._init_int8(in_features, out_features, bias, static_x_scale, activation, backend, device, dtype)

    @classmethod
    def from_dense(cls, linear: nn.Linear, *, prune: bool = False, x_scale: Optional[float] = None,
                   activation: str = "none", backend: str = "auto") -> "Sparse24Int8Linear":
        """Mask (``prune``) or check 2:4, compress, then quantize the kept values per output channel."""
        w = linear.weight
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, static_x_scale=x_scale is not None,
                     activation=activation, backend=backend, device=w.device, dtype=w.dtype)
        if w.device.type != "meta":
            values, module.meta = compress24(_masked_weight(w, prune, "Sparse24Int8Linear.from_dense"))
            # The kept values have the same per-row max |w| as the masked weight: quantize after masking.
            module.values_q, module.w_scale = quantize_weight_int8(values)
            module._copy_dense(linear, x_scale)
        return module

    def dense_weight(self) -> torch.Tensor:
        """The dequantized, decompressed float32 weight."""
        return dequantize_int8(decompress24(self.values_q, self.meta), self.w_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.sparse24_int8_linear(x, self.values_q, self.meta, self.w_scale, self.bias, self.x_scale,
                                        self.activation, backend=self._op_backend)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self._bias_repr()}, "
                f"format=2:4 int8 per-channel, {self._scale_repr()}, backend={self.backend}")
