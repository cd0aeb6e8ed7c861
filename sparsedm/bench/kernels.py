"""``sparsedm bench kernels``: every backend against dense, on the shape tables.

For each shape, the candidates are the dense baseline (cuBLAS ``F.linear`` / cuDNN
``F.conv2d`` channels_last on CUDA, plain torch on CPU), torch's own 2:4 paths where the GPU
has them (cuSPARSELt ``torch._cslt_sparse_mm``, CUTLASS ``to_sparse_semi_structured`` on 8.x),
``torch._int_mm`` with separate scaling for the int8 ops, and every sparsedm backend that
can run the op. Each candidate's output is checked against the reference before it is timed,
so a wrong kernel cannot post a fast number.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from sparsedm import ops
from sparsedm.bench.environment import gpu_peak
from sparsedm.bench.shapes import ConvShape, LinearShape
from sparsedm.bench.timing import Timer, measure, rotation_copies, timer_for
from sparsedm.formats import compress24, decompress24, mask24, quantize_activation_int8, quantize_weight_int8
from sparsedm.formats.sparse24 import holds_24
from sparsedm.ops import registry

log = logging.getLogger("sparsedm.bench")

OPS = ("linear", "int8", "sparse-int8", "conv")
OP_NAMES = {"linear": "sparse24_linear", "int8": "int8_linear", "sparse-int8": "sparse24_int8_linear", "conv": "sparse24_conv2d"}
# Backends that run 2:4 on sparse tensor cores: their peak is twice the dense one.
SPARSE_TENSOR_CORE_BACKENDS = {"cuda", "cusparselt", "cutlass"}


@dataclass
class Candidate:
    backend: str
    run: Callable[[int], torch.Tensor]  # run(i): compute on input copy i
    sparse_tensor_cores: bool = False
    int8: bool = False


def _sparsedm_backends(op: str, args: tuple, wanted: Optional[set[str]]) -> list[str]:
    """sparsedm backends to time beside the baselines. The registry's ``dense`` backend is the
    baseline's own cuBLAS/cuDNN call (it would be a second "dense" row); ``reference`` is the
    CPU path, timed only on CPU."""
    names = []
    on_cuda = args[0].device.type == "cuda"
    for backend in registry.backends():
        if backend.name == "dense" or (on_cuda and backend.name == "reference"):
            continue
        if wanted is not None and backend.name not in wanted:
            continue
        reason = registry.why_not(backend, op, args)
        if reason is None:
            names.append(backend.name)
        elif wanted is not None:  # asked for by name: say why it has no row
            log.warning("%s: backend %s not timed: %s", op, backend.name, reason)
    return names


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _linear_candidates(op: str, shape: LinearShape, dtype, device, wanted, copies: int):
    """Candidates for one GEMM shape. Activations and weights both come in ``copies`` copies
    (the same numbers in distinct memory), so a timed call finds neither in L2, as in a model
    where other layers run between two calls of this one."""
    g = torch.Generator(device="cpu").manual_seed(shape.M * 7 + shape.N)
    w = torch.randn(shape.N, shape.K, generator=g).to(device=device, dtype=dtype)
    w = w * mask24(w)
    xs = [torch.randn(shape.M, shape.K, generator=g).to(device=device, dtype=dtype) for _ in range(copies)]
    bias = torch.randn(shape.N, generator=g).to(device=device, dtype=dtype)

    def rotated(t):
        return [t] + [t.clone() for _ in range(copies - 1)]

    ws = rotated(w)
    # The dense baseline is the float layer; int8 candidates are checked against the int8
    # reference, not against it.
    cands: list[Candidate] = [Candidate("dense", lambda i: F.linear(xs[i], ws[i], bias))]
    if op == "linear":
        values, meta = compress24(w)
        vs, ms = rotated(values), rotated(meta)
        args = (xs[0], values, meta, bias, "none")
        if device.type == "cuda" and _cusparselt_ok():
            wcs: dict = {}  # compressed on first use, inside the candidate (a refusal skips only it)

            def cslt(i):
                if i not in wcs:
                    wcs[i] = torch._cslt_compress(ws[i])
                return torch._cslt_sparse_mm(wcs[i], xs[i].t(), bias).t()

            cands.append(Candidate("torch-cusparselt", cslt, True))
        if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 8:
            cutlass_ws = [_cutlass_weight(wi) for wi in ws]
            if cutlass_ws[0] is not None:
                cands.append(Candidate("torch-cutlass", lambda i: F.linear(xs[i], cutlass_ws[i], bias), True))
        for b in _sparsedm_backends("sparse24_linear", args, wanted):
            cands.append(Candidate(b, lambda i, b=b: ops.sparse24_linear(xs[i], vs[i], ms[i], bias, "none", backend=b),
                                   b in SPARSE_TENSOR_CORE_BACKENDS))
        return cands, lambda: ops.sparse24_linear(xs[0], values, meta, bias, "none", backend="reference")
    w_q, w_scale = quantize_weight_int8(w)
    if op == "int8":
        wqs = rotated(w_q)
        args = (xs[0], w_q, w_scale, bias, None)
        if device.type == "cuda" and shape.M > 16 and shape.K % 8 == 0 and shape.N % 8 == 0:
            # torch's own W8A8: per-token quantization, cuBLAS int8 GEMM, scaling as separate ops.
            def int_mm(i):
                x_q, s_x = quantize_activation_int8(xs[i])
                acc = torch._int_mm(x_q, wqs[i].t())
                return (acc.float() * s_x[:, None] * w_scale + bias).to(dtype)

            cands.append(Candidate("torch-int_mm", int_mm, int8=True))
        for b in _sparsedm_backends("int8_linear", args, wanted):
            cands.append(Candidate(b, lambda i, b=b: ops.int8_linear(xs[i], wqs[i], w_scale, bias, None, backend=b), int8=True))
        return cands, lambda: ops.int8_linear(xs[0], w_q, w_scale, bias, None, backend="reference")
    # sparse-int8: quantize after masking, compress the codes.
    values_q, meta = compress24(w_q.float())
    values_q = values_q.to(torch.int8)
    vqs, ms = rotated(values_q), rotated(meta)
    args = (xs[0], values_q, meta, w_scale, bias, None)
    if device.type == "cuda" and _cusparselt_ok() and shape.M > 16:
        # torch's 2:4 int8 path: cuSPARSELt on the int8 codes (int32 sums), per-token
        # quantization and the scaling as separate ops; checked against the reference like
        # every candidate, so a layout this torch does not take is reported and skipped.
        w_q_dense = decompress24(values_q, meta)
        wcs8: dict = {}  # compressed on first use, inside the candidate: a refusal is that candidate's failure

        def cslt_int8(i):
            if i not in wcs8:
                wcs8[i] = torch._cslt_compress(w_q_dense.clone())
            x_q, s_x = quantize_activation_int8(xs[i])
            acc = torch._cslt_sparse_mm(wcs8[i], x_q.t(), out_dtype=torch.int32).t()
            return (acc.float() * s_x[:, None] * w_scale + bias).to(dtype)

        cands.append(Candidate("torch-cusparselt", cslt_int8, True, int8=True))
    for b in _sparsedm_backends("sparse24_int8_linear", args, wanted):
        cands.append(Candidate(b, lambda i, b=b: ops.sparse24_int8_linear(xs[i], vqs[i], ms[i], w_scale, bias, None, backend=b),
                               b in SPARSE_TENSOR_CORE_BACKENDS, int8=True))
    return cands, lambda: ops.sparse24_int8_linear(xs[0], values_q, meta, w_scale, bias, None, backend="reference")


def _conv_candidates(shape: ConvShape, dtype, device, wanted, copies: int):
    g = torch.Generator(device="cpu").manual_seed(shape.C * 13 + shape.H)
    w = torch.randn(shape.K, shape.C, shape.R, shape.S, generator=g).to(device=device, dtype=dtype)
    if not holds_24(w.shape):
        # A conv the 2:4 format cannot hold (the UNets' 3- or 4-channel input conv, K = 27 / 36):
        # only dense runs it, which is what the automatic choice does with it; its row is kept so
        # the tables cover every conv of the model.
        x = torch.randn(shape.N, shape.C, shape.H, shape.W, generator=g).to(device=device, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        b = torch.randn(shape.K, generator=g).to(device=device, dtype=dtype)
        w_cl = w.contiguous(memory_format=torch.channels_last)
        run = lambda i: F.conv2d(x, w_cl, b, shape.stride, shape.padding)  # noqa: E731
        return [Candidate("dense", run)], lambda: run(0)
    w = w * mask24(w)
    values, meta = compress24(w)
    xs = [
        torch.randn(shape.N, shape.C, shape.H, shape.W, generator=g).to(device=device, dtype=dtype)
        .contiguous(memory_format=torch.channels_last)
        for _ in range(copies)
    ]
    bias = torch.randn(shape.K, generator=g).to(device=device, dtype=dtype)
    # Conv weights are small next to their activations; rotating the activations suffices.
    w_cl = w.contiguous(memory_format=torch.channels_last)
    stride, padding = [shape.stride] * 2, [shape.padding] * 2
    cands = [Candidate("dense", lambda i: F.conv2d(xs[i], w_cl, bias, stride, padding))]
    args = (xs[0], values, meta, bias, list(w.shape), stride, padding, [1, 1], "none")
    backends = _sparsedm_backends("sparse24_conv2d", args, wanted)
    for b in backends:
        cands.append(Candidate(b, lambda i, b=b: ops.sparse24_conv2d(xs[i], values, meta, bias, w.shape, stride, padding, [1, 1], backend=b),
                               b in SPARSE_TENSOR_CORE_BACKENDS))
    if backends:
        # The same kernels fed NCHW input (an NCHW model that never converts): the row
        # "<backend>+nchw" includes the layout changes in and out.
        xs_nchw = [x.contiguous() for x in xs]
        for b in backends:
            cands.append(Candidate(f"{b}+nchw", lambda i, b=b: ops.sparse24_conv2d(
                xs_nchw[i], values, meta, bias, w.shape, stride, padding, [1, 1], backend=b), b in SPARSE_TENSOR_CORE_BACKENDS))
    return cands, lambda: ops.sparse24_conv2d(xs[0], values, meta, bias, w.shape, stride, padding, [1, 1], backend="reference")


def _cusparselt_ok() -> bool:
    return hasattr(torch, "_cslt_sparse_mm") and torch.backends.cusparselt.is_available()


def _cutlass_weight(w: torch.Tensor):
    try:
        from torch.sparse import SparseSemiStructuredTensorCUTLASS

        # The class itself, not to_sparse_semi_structured: that one would need torch's global
        # _FORCE_CUTLASS switch, which changes every later conversion in the process.
        return SparseSemiStructuredTensorCUTLASS.from_dense(w)
    except Exception as exc:  # shape or dtype torch's CUTLASS path does not take
        log.info("torch CUTLASS 2:4 path unavailable for %s: %s", tuple(w.shape), exc)
        return None


def _bytes_per_call(shape, dtype) -> int:
    elem = torch.tensor([], dtype=dtype).element_size()
    if isinstance(shape, LinearShape):
        return (shape.M * shape.K + shape.M * shape.N + shape.N * shape.K) * elem
    oh, ow = shape.out_hw
    return (shape.N * shape.C * shape.H * shape.W + shape.N * shape.K * oh * ow) * elem


def bench_shape(
    op: str,
    shape,
    table_name: str,
    dtype: torch.dtype,
    device: torch.device,
    *,
    backends: Optional[Iterable[str]] = None,
    warmup: int = 10,
    reps: int = 50,
    timer: Optional[Timer] = None,
    gpu_name: Optional[str] = None,
) -> list[dict]:
    """Rows (DESIGN.md results schema) for one shape: the dense baseline first."""
    wanted = set(backends) if backends else None
    copies = rotation_copies(_bytes_per_call(shape, dtype)) if device.type == "cuda" else 2
    if op == "conv":
        cands, reference = _conv_candidates(shape, dtype, device, wanted, copies)
    else:
        cands, reference = _linear_candidates(op, shape, dtype, device, wanted, copies)
    expected = reference()
    timer = timer or timer_for(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    dtype_name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    rows, dense_ms = [], None
    for cand in cands:
        try:
            if cand.backend != "dense":
                err = _rel_err(cand.run(0), expected)
                tol = 2e-2 if dtype != torch.float32 else 1e-4
                if err > tol:
                    log.warning("%s %s %s: output differs from the reference (rel err %.2e); not timed", op, shape, cand.backend, err)
                    continue
            m = measure(cand.run, copies=copies, warmup=warmup, reps=reps, timer=timer, sync=sync)
        except Exception as exc:  # one candidate that fails (a baseline torch lacks here) must not end the run
            if cand.backend == "dense":
                raise
            log.warning("%s %s %s: failed (%s: %s); not timed", op, shape, cand.backend, type(exc).__name__,
                        str(exc).splitlines()[0] if str(exc) else "")
            continue
        if cand.backend == "dense":
            dense_ms = m.median_ms
        tflops = 2.0 * shape.macs / (m.median_ms * 1e-3) / 1e12
        precision = "int8" if cand.int8 else dtype_name
        peak = gpu_peak(gpu_name, precision) if device.type == "cuda" else None
        if peak is not None and cand.sparse_tensor_cores:
            peak *= 2
        rows.append({
            "kind": "kernel",
            "op": op,
            "shape": shape.as_dict(),
            "layer": shape.layer,
            "table": table_name,
            "dtype": dtype_name,
            "backend": cand.backend,
            "ms": round(m.median_ms, 6),
            "tflops": round(tflops, 4),
            "speedup_vs_dense": round(dense_ms / m.median_ms, 4) if dense_ms else None,
            "peak_fraction": round(tflops / peak, 4) if peak else None,
        })
    return rows
