"""Small calls of each op on every GPU backend that can run it, for compute-sanitizer.

Odd sizes (M = 3 and M tails past a tile, N tails) so out-of-bounds accesses in predicated
loads would show; one case large enough for the CUDA GEMM's large tile. Shapes respect the
cuda kernels' limits (N % 16, K % 64 for fp16 / % 128 for int8, Cin % 8), or they would be
skipped there.
"""

import torch

from sparsedm import ops
from sparsedm.formats import compress24, mask24, quantize_weight_int8
from sparsedm.ops import registry


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


def conv_call(dev: str = "cuda") -> tuple:
    cw = torch.randn(32, 24, 3, 3, device=dev, dtype=torch.float16)  # Cout 32: whole mma tiles; K = 216 pads to 256
    cw = cw * mask24(cw)
    cv, cm = compress24(cw)
    cx = torch.randn(1, 24, 7, 9, device=dev, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    return (cx, cv, cm, None, list(cw.shape), [1, 1], [1, 1], [1, 1], "none")


def main() -> None:
    torch.manual_seed(0)
    cases = [linear_calls(3, 48, 128), linear_calls(1100, 2064, 128)]
    cases.append({"sparse24_conv2d": conv_call()})
    for backend in registry.backends():
        if backend.name == "reference":
            continue
        for calls in cases:
            for op, args in calls.items():
                if registry.why_not(backend, op, args) is None:
                    with ops.use_backend(backend.name):
                        getattr(torch.ops.sparsedm, op)(*args)
                    torch.cuda.synchronize()
                    print(f"ran {op} {tuple(args[0].shape)} on {backend.name}")


if __name__ == "__main__":
    main()
