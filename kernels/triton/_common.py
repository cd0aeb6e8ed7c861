"""Shared pieces of the Triton launchers: device checks and epilogue codes."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl
import triton.testing

# Activation codes passed to kernels as a constexpr (order = sparsedm.ops.checks.ACTIVATIONS).
ACTIVATION_CODE = {"none": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3}

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# How long triton.autotune times each candidate config, in milliseconds (Triton's default is
# 25 ms of warm-up and 100 of timing). Every config of these lists runs in 5 us to 2 ms at the
# shapes they serve, so 25 ms still gives 12 or more timed launches whose median decides, and
# a new shape bucket costs about 0.1 s per candidate instead of 0.5 s: that is paid on the
# first call of every (op, shape bucket, dtype), and in every GPU test session.
AUTOTUNE_WARMUP_MS = 5
AUTOTUNE_REP_MS = 25


def autotune_bench(kernel_call, quantiles):
    """The timing function given to ``triton.autotune(do_bench=...)`` (median and quantiles)."""
    return triton.testing.do_bench(kernel_call, warmup=AUTOTUNE_WARMUP_MS, rep=AUTOTUNE_REP_MS, quantiles=quantiles)


def _autotune_setting() -> bool:
    value = os.environ.get("SPARSEDM_TRITON_AUTOTUNE", "1").strip()
    if value not in ("0", "1"):
        raise ValueError(
            f"SPARSEDM_TRITON_AUTOTUNE={value!r}: set it to 1 (time every candidate config, the default) "
            f"or 0 (run the first candidate of each shape bucket)"
        )
    return value == "1"


# SPARSEDM_TRITON_AUTOTUNE=0 (read at import): each kernel runs the first candidate config of
# its shape bucket instead of compiling and timing all of them. For correctness runs, where
# which config wins does not matter and compiling every candidate of every shape and dtype
# costs most of the time (bench/gpu_suite.sh sets it for its test stages); every config is
# still tested on its own, forced through the launchers' ``config=`` argument.
TUNE = _autotune_setting()


def candidates(configs: list) -> list:
    """The configs an autotuner is built with: all of ``configs``, or its first under TUNE=False."""
    return list(configs) if TUNE else list(configs[:1])


TILE_PARAMETERS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")


def check_tile_config(config, where: str, int8: bool = False) -> None:
    """A ``config=`` forced on a launcher sets exactly TILE_PARAMETERS, powers of two, blocks >= 16
    (BLOCK_K >= 32 for int8 operands: the smallest K of an 8-bit ``tl.dot`` on NVIDIA GPUs)."""
    from sparsedm.ops.checks import OpArgumentError

    kwargs = getattr(config, "kwargs", None)
    if not isinstance(kwargs, dict) or set(kwargs) != set(TILE_PARAMETERS):
        raise OpArgumentError(f"config={config!r}: pass a triton.Config with exactly {', '.join(TILE_PARAMETERS)} (as in {where})")
    if not all(isinstance(v, int) and v >= 1 and v & (v - 1) == 0 for v in kwargs.values()) or min(
            kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["BLOCK_K"]) < 16:
        raise OpArgumentError(f"config {kwargs}: every value must be a power of two and BLOCK_M/N/K >= 16 (tl.dot's smallest tile)")
    if int8 and kwargs["BLOCK_K"] < 32:
        raise OpArgumentError(f"config {kwargs}: the int8 ops need BLOCK_K >= 32 (an 8-bit tl.dot's smallest K)")


def launches_on_first_tensor(fn):
    """Run a launcher with its first argument's GPU as the current device: Triton launches on
    the *current* CUDA device and its stream, so a model on cuda:1 would otherwise run (and
    fail) on cuda:0."""

    @functools.wraps(fn)
    def wrapped(t, *args, **kwargs):
        with torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext():
            return fn(t, *args, **kwargs)

    return wrapped


def device_reason(*tensors: Optional[torch.Tensor]) -> Optional[str]:
    """None when Triton can run on these tensors' device, else why not (for ``supports``)."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and INTERPRET:
            continue
        return (
            f"the Triton kernels need CUDA tensors (got {t.device}); CPU tensors run only under "
            f"TRITON_INTERPRET=1 set before sparsedm is imported"
        )
    return None


@triton.jit
def apply_activation(y, ACTIVATION: tl.constexpr):
    """Epilogue activation on a float32 tile; codes as in ACTIVATION_CODE."""
    if ACTIVATION == 1:  # gelu (erf)
        y = 0.5 * y * (1.0 + tl.erf(y * 0.7071067811865476))
    elif ACTIVATION == 2:  # gelu_tanh: 0.5 y (1 + tanh(sqrt(2/pi) (y + 0.044715 y^3)))
        # exp is clamped at e^80: past it the result is already exact in fp32, and the clamp
        # keeps inf out of the intermediate values.
        inner = 0.7978845608028654 * (y + 0.044715 * y * y * y)
        y = 0.5 * y * (2.0 - 2.0 / (1.0 + tl.exp(tl.minimum(2.0 * inner, 80.0))))
    elif ACTIVATION == 3:  # silu
        y = y / (1.0 + tl.exp(tl.minimum(-y, 80.0)))
    return y
