"""One small call of each op on every GPU backend that can run it, for compute-sanitizer.

Odd sizes (M=3, tails in N) so out-of-bounds accesses in predicated loads would show.
"""

import torch

from sparsedm import ops
from sparsedm.formats import compress24, mask24, quantize_weight_int8
from sparsedm.ops import registry


def main() -> None:
    dev = "cuda"
    torch.manual_seed(0)
    w = torch.randn(40, 64, device=dev, dtype=torch.float16)
    w = w * mask24(w)
    values, meta = compress24(w)
    x = torch.randn(3, 64, device=dev, dtype=torch.float16)
    w_q, s = quantize_weight_int8(w.float())
    vq, mq = compress24(w_q.float())
    vq = vq.to(torch.int8)
    cw = torch.randn(32, 24, 3, 3, device=dev, dtype=torch.float16)  # Cout 32: whole mma tiles; K = 216 pads to 256
    cw = cw * mask24(cw)
    cv, cm = compress24(cw)
    cx = torch.randn(1, 24, 7, 9, device=dev, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    calls = {
        "sparse24_linear": (x, values, meta, None, "gelu"),
        "int8_linear": (x, w_q, s, None, None),
        "sparse24_int8_linear": (x, vq, mq, s, None, None),
        "sparse24_conv2d": (cx, cv, cm, None, list(cw.shape), [1, 1], [1, 1], [1, 1], "none"),
        "compress24": (w,),
        "decompress24": (values, meta),
    }
    for backend in registry.backends():
        if backend.name == "reference":
            continue
        for op, args in calls.items():
            if registry.why_not(backend, op, args) is None:
                with ops.use_backend(backend.name):
                    getattr(torch.ops.sparsedm, op)(*args)
                torch.cuda.synchronize()
                print(f"ran {op} on {backend.name}")


if __name__ == "__main__":
    main()
