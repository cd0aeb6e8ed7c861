"""torch.library.opcheck for every op, and the ops inside torch.compile(fullgraph=True)."""

import pytest
import torch

from sparsedm import ops
from sparsedm.formats import quantize_weight_int8
from sparsedm.ops import library
from tests.helpers import randn, sparse_weight


def _cases():
    w, values, meta = sparse_weight((16, 32), seed=1)
    x = randn(3, 32, seed=2)
    bias = randn(16, seed=3)
    w_q, w_scale = quantize_weight_int8(w)
    values_q, meta_q = ops.compress24(w_q.float())
    cw, cvalues, cmeta = sparse_weight((8, 8, 3, 3), seed=4)
    cx = randn(2, 8, 5, 6, seed=5)
    return {
        "compress24": [(w,)],
        "decompress24": [(values, meta)],
        "sparse24_linear": [(x, values, meta, bias, "gelu"), (randn(2, 3, 32), values, meta, None, "none")],
        "sparse24_conv2d": [
            (cx, cvalues, cmeta, None, list(cw.shape), [1, 1], [1, 1], [1, 1], "none"),
            (cx.contiguous(memory_format=torch.channels_last), cvalues, cmeta, randn(8), list(cw.shape), [2, 2], [0, 1], [1, 1], "silu"),
        ],
        "int8_linear": [(x, w_q, w_scale, bias, None), (x, w_q, w_scale, None, torch.tensor([0.05]), "gelu")],
        "sparse24_int8_linear": [(x, values_q.to(torch.int8), meta_q, w_scale, bias, None),
                                 (x, values_q.to(torch.int8), meta_q, w_scale, bias, None, "silu")],
    }


@pytest.mark.parametrize("name", library.OPS)
def test_opcheck(name):
    for args in _cases()[name]:
        torch.library.opcheck(getattr(torch.ops.sparsedm, name).default, args)


class TinySparseBlock(torch.nn.Module):
    """A module whose forward calls the ops, as the runtime modules will."""

    def __init__(self):
        super().__init__()
        w, values, meta = sparse_weight((16, 32), seed=7)
        self.register_buffer("values", values)
        self.register_buffer("meta", meta)
        w_q, s = quantize_weight_int8(randn(32, 16, seed=8))
        self.register_buffer("w_q", w_q)
        self.register_buffer("w_scale", s)
        _, cv, cm = sparse_weight((8, 8, 3, 3), seed=9)
        self.register_buffer("cvalues", cv)
        self.register_buffer("cmeta", cm)

    def forward(self, x, img):
        h = ops.sparse24_linear(x, self.values, self.meta, None, "silu")
        h = ops.int8_linear(h, self.w_q, self.w_scale)
        c = ops.sparse24_conv2d(img, self.cvalues, self.cmeta, None, [8, 8, 3, 3], [1, 1], [1, 1], [1, 1])
        return h * 2 + 1, c.relu()


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    block = TinySparseBlock()
    x, img = randn(5, 32, seed=10), randn(1, 8, 6, 6, seed=11)
    eager = block(x, img)
    compiled = torch.compile(block, fullgraph=True, backend="inductor")(x, img)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
