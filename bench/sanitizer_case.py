"""Small calls of each op on every GPU backend that can run it, for compute-sanitizer.

Cases (``--cases``, default all):

- ``small``: odd sizes (M = 3, M tails past a tile, N tails), so out-of-bounds accesses in
  predicated loads would show; one call large enough for the CUDA GEMM's large tile.
- ``pipeline``: K = 640, more K stages than the CUDA GEMMs' cp.async pipeline has slots
  (10 fp16 stages, 5 int8 ones against 4 / 3 slots), so every slot is refilled while
  another is read: the case racecheck and synccheck need. Once on the small tile (M = 3) and
  once on the large one, which the launcher picks only when its blocks fill the SMs (M = 64
  per SM with N = 128: one block of 128 x 64 each).
- ``split``: M = 3, N = K = 1024 with the CUDA GEMMs forced to 3 K slices, so the
  partial-sum kernels and the reduction run.
- ``conv``: a 3x3 conv with Cin = 24 (K = 216, padded to 256: the K tail) and one with
  Cin = 64 (K = 576, 9 stages: the pipeline wraps).

Shapes respect the cuda kernels' limits (N % 16, K % 64 for fp16 / % 128 for int8, Cin % 8),
or they would be skipped there.
"""

import argparse
from typing import Optional

import torch

from sparsedm import ops
from sparsedm.formats import compress24, mask24, quantize_weight_int8
from sparsedm.ops import cuda_backend, registry

CASES = ("small", "pipeline", "split", "conv")


def linear_calls(m: int, n: int, k: int, dev: str = "cuda") -> dict:
    w = torch.randn(n, k, device=dev, dtype=torch.float16)
    w = w * mask24(w)
    values, meta = compress24(w)
    x = torch.randn(m, k, device=dev, dtype=torch.float16)
    w_q, s = quantize_weight_int8(w.float())
    vq, mq = compress24(w_q.float())
    return {
        "sparse24_linear": (x, values, meta, None, "gelu"),
        "int8_linear": (x, w_q, s, None, None),
        "sparse24_int8_linear": (x, vq.to(torch.int8), mq, s, None, None),
        "compress24": (w,),
        "decompress24": (values, meta),
    }


def gemm_calls(m: int, n: int, k: int, dev: str = "cuda") -> dict:
    calls = linear_calls(m, n, k, dev)
    return {op: args for op, args in calls.items() if op.endswith("linear")}


def conv_call(cout: int, cin: int, dev: str = "cuda") -> tuple:
    cw = torch.randn(cout, cin, 3, 3, device=dev, dtype=torch.float16)
    cw = cw * mask24(cw)
    cv, cm = compress24(cw)
    cx = torch.randn(1, cin, 7, 9, device=dev, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    return (cx, cv, cm, None, list(cw.shape), [1, 1], [1, 1], [1, 1], "none")


def sm_count(dev: str = "cuda") -> int:
    """SMs of the GPU the calls run on (the large tile needs a block per SM); 132 off a GPU."""
    if dev == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return 132


def build_cases(names, dev: str = "cuda", sms: Optional[int] = None) -> list:
    """``(name, {op: args}, cuda split-K)`` per selected case; ``sms`` sizes the large-tile case."""
    sms = sms or sm_count(dev)
    cases = []
    if "small" in names:
        cases += [("small", linear_calls(3, 48, 128, dev), 0), ("small", linear_calls(1100, 2064, 128, dev), 0)]
    if "pipeline" in names:  # the small tile, then the large one (64 tokens x 128 features per block)
        cases += [("pipeline", gemm_calls(3, 48, 640, dev), 0), ("pipeline", gemm_calls(64 * sms, 128, 640, dev), 0)]
    if "split" in names:
        cases.append(("split", gemm_calls(3, 1024, 1024, dev), 3))
    if "conv" in names:
        cases.append(("conv", {"sparse24_conv2d": conv_call(32, 24, dev)}, 0))  # K = 216 pads to 256
        cases.append(("conv", {"sparse24_conv2d": conv_call(32, 64, dev)}, 0))  # K = 576: 9 stages
    return cases


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)} (default: all)")
    parser.add_argument("--backends", default="", help="comma-separated backend names (default: every GPU backend that can run)")
    args = parser.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    args.backends = [b for b in args.backends.split(",") if b]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    cases = build_cases(args.cases)
    split_default = cuda_backend.SPLIT_K
    ran = 0
    for backend in registry.backends():
        if backend.name == "reference" or (args.backends and backend.name not in args.backends):
            continue
        for name, calls, split_k in cases:
            for op, op_args in calls.items():
                if registry.why_not(backend, op, op_args) is not None:
                    continue
                cuda_backend.SPLIT_K = split_k if backend.name == "cuda" and split_k else split_default
                try:
                    with ops.use_backend(backend.name):
                        getattr(torch.ops.sparsedm, op)(*op_args)
                    torch.cuda.synchronize()
                finally:
                    cuda_backend.SPLIT_K = split_default
                ran += 1
                print(f"ran {name}: {op} {tuple(op_args[0].shape)} on {backend.name}" + (f" split_k={split_k}" if split_k and backend.name == "cuda" else ""))
    if ran == 0:
        raise SystemExit("sanitizer_case: no (op, backend) pair could run: nothing was checked")


if __name__ == "__main__":
    main()
