"""``torch.library`` definitions of the ``sparsedm::`` ops.

Each op has one schema, one fake implementation (shapes only, repeating the checks) and one
real implementation that asks the backend registry which kernel to run. The ops are opaque
to ``torch.compile`` and ``torch.export``.
"""

from __future__ import annotations

import torch

from sparsedm.ops import checks, registry

SCHEMAS = {
    "compress24": "(Tensor w) -> (Tensor values, Tensor meta)",
    "decompress24": "(Tensor values, Tensor meta) -> Tensor",
    "sparse24_linear": "(Tensor x, Tensor values, Tensor meta, Tensor? bias, str activation) -> Tensor",
    # `activation` is an addition at the end, with a default (conv and both int8 ops): calls
    # written for the base schema keep working, and these layers fuse their activation too.
    "sparse24_conv2d": (
        "(Tensor x, Tensor values, Tensor meta, Tensor? bias, int[] weight_shape, int[] stride, "
        "int[] padding, int[] dilation, str activation=\"none\") -> Tensor"
    ),
    "int8_linear": (
        "(Tensor x, Tensor w_q, Tensor w_scale, Tensor? bias, Tensor? x_scale, str activation=\"none\") -> Tensor"
    ),
    "sparse24_int8_linear": (
        "(Tensor x, Tensor values_q, Tensor meta, Tensor w_scale, Tensor? bias, Tensor? x_scale, "
        "str activation=\"none\") -> Tensor"
    ),
}

OPS = tuple(SCHEMAS)


def _define(name: str):
    def dispatch(*args):
        return registry.run(name, *args)

    dispatch.__name__ = name
    return torch.library.custom_op(f"sparsedm::{name}", dispatch, mutates_args=(), schema=SCHEMAS[name])


compress24 = _define("compress24")
decompress24 = _define("decompress24")
sparse24_linear = _define("sparse24_linear")
sparse24_conv2d = _define("sparse24_conv2d")
int8_linear = _define("int8_linear")
sparse24_int8_linear = _define("sparse24_int8_linear")


@compress24.register_fake
def _(w):
    if w.dim() != 2:
        raise checks.OpArgumentError(f"compress24: the op takes a 2-D weight [N, K], got shape {tuple(w.shape)}")
    n, k = w.shape
    checks.require(k % 8 == 0, f"compress24: K={k} is not a multiple of 8")
    return w.new_empty(n, k // 2), w.new_empty(n, k // 8, dtype=torch.uint8)


@decompress24.register_fake
def _(values, meta):
    n, k = checks.check_compressed_pair("decompress24", values, meta)
    return values.new_empty(n, k)


@sparse24_linear.register_fake
def _(x, values, meta, bias, activation):
    n = checks.check_sparse24_linear(x, values, meta, bias, activation)
    return x.new_empty(*x.shape[:-1], n)


@sparse24_conv2d.register_fake
def _(x, values, meta, bias, weight_shape, stride, padding, dilation, activation="none"):
    cout, oh, ow, *_ = checks.check_sparse24_conv2d(
        x, values, meta, bias, weight_shape, stride, padding, dilation, activation
    )
    fmt = checks.conv_output_memory_format(x)
    return x.new_empty(x.shape[0], cout, oh, ow).contiguous(memory_format=fmt)


@int8_linear.register_fake
def _(x, w_q, w_scale, bias, x_scale, activation="none"):
    n = checks.check_int8_linear(x, w_q, w_scale, bias, x_scale, activation)
    return x.new_empty(*x.shape[:-1], n)


@sparse24_int8_linear.register_fake
def _(x, values_q, meta, w_scale, bias, x_scale, activation="none"):
    n = checks.check_sparse24_int8_linear(x, values_q, meta, w_scale, bias, x_scale, activation)
    return x.new_empty(*x.shape[:-1], n)
