"""The cuda backend's implicit-GEMM 2:4 conv (docs/KERNELS.md, "CUDA implicit-GEMM 2:4 conv").

GPU tests (marker ``gpu``; skipped without CUDA) compare ``sparse24_conv2d`` forced onto the
cuda backend with the float64 reference on the DDPM CIFAR10 UNet and SD1.5 UNet conv shapes
(batch reduced where the reference would be slow), in NCHW and channels_last, across stride /
padding / dilation, K not a multiple of 64 (Cin = 8, 24), every activation, bias or none, and
the private op's residual. The unmarked tests at the end check the ``supports`` reasons and the
K padding on the CPU.
"""

import pytest
import torch

from sparsedm.formats import compress24
from sparsedm.formats.sparse24 import mask24
from sparsedm.ops import checks, reference, registry
from tests.helpers import need_backend

# (N, Cin, H, W, Cout, kh, kw, stride, padding): the conv layers of the two UNets
# (sparsedm.bench.shapes "ddpm-unet" and "sd15-unet", smaller batches).
DDPM = [
    (4, 128, 32, 32, 128, 3, 3, 1, 1),
    (4, 256, 16, 16, 256, 3, 3, 1, 1),
    (8, 256, 8, 8, 256, 3, 3, 1, 1),
    (16, 256, 4, 4, 256, 3, 3, 1, 1),
    (4, 128, 32, 32, 256, 3, 3, 1, 1),
    (4, 128, 32, 32, 128, 3, 3, 2, 1),  # downsample conv
    (4, 256, 16, 16, 256, 1, 1, 1, 0),
]
SD15 = [
    (1, 320, 64, 64, 320, 3, 3, 1, 1),
    (1, 640, 32, 32, 640, 3, 3, 1, 1),
    (2, 1280, 16, 16, 1280, 3, 3, 1, 1),
    (2, 1280, 8, 8, 1280, 3, 3, 1, 1),
    (1, 640, 32, 32, 640, 1, 1, 1, 0),
    (1, 320, 64, 64, 640, 1, 1, 1, 0),  # resnet skip 1x1
    (1, 320, 64, 64, 320, 3, 3, 2, 1),  # downsample
]
# Awkward geometry: odd H/W, dilation, asymmetric stride/padding, K % 64 != 0, 1 output pixel.
ODD = [
    (2, 8, 9, 7, 16, 3, 3, 1, 1, 1),
    (3, 24, 11, 5, 32, 3, 3, 2, 1, 1),
    (2, 64, 13, 13, 48, 3, 3, 1, 2, 2),
    (1, 16, 5, 9, 16, 1, 3, (1, 2), (0, 1), 1),
    (2, 32, 3, 3, 16, 3, 3, 1, 0, 1),
    (1, 40, 17, 17, 64, 5, 5, 2, 2, 1),
]


def _need_cuda_backend():
    need_backend("cuda")


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _conv_weight(cout, cin, kh, kw, dtype, device="cuda"):
    """A random 2:4 conv weight compressed from its KRSC view: (values, meta)."""
    w = torch.randn(cout, cin, kh, kw, device=device) / (cin * kh * kw) ** 0.5
    krsc = w.permute(0, 2, 3, 1).reshape(cout, -1).to(dtype)
    return compress24(krsc * mask24(krsc))


def _run_and_check(n, cin, h, w, cout, kh, kw, stride, padding, dilation, dtype, channels_last, activation, bias=True):
    torch.manual_seed(n * 1000 + cin + h + cout + kh)
    values, meta = _conv_weight(cout, cin, kh, kw, dtype)
    x = torch.randn(n, cin, h, w, device="cuda", dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    b = torch.randn(cout, device="cuda", dtype=dtype) if bias else None
    args = (values, meta, b, [cout, cin, kh, kw], stride, padding, dilation, activation)
    with registry.use_backend("cuda"):
        y = torch.ops.sparsedm.sparse24_conv2d(x, *args)
    ref = reference.sparse24_conv2d(x.double(), values.double(), meta, None if b is None else b.double(), *args[3:])
    assert y.dtype == dtype and y.shape == ref.shape
    fmt = checks.conv_output_memory_format(x)
    assert y.is_contiguous(memory_format=fmt), f"output must be {fmt}"
    assert not y.isnan().any()
    err = _rel_err(y, ref)
    tol = 1e-2 if dtype == torch.bfloat16 else 3e-3
    assert err < tol, f"rel err {err:.2e}, max abs {(y.double() - ref).abs().max():.3e}, mean abs {(y.double() - ref).abs().mean():.3e}"


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", DDPM + SD15, ids=lambda s: "x".join(map(str, s)))
def test_unet_convs_match_reference(shape, dtype, channels_last):
    _need_cuda_backend()
    n, cin, h, w, cout, kh, kw, stride, padding = shape
    _run_and_check(n, cin, h, w, cout, kh, kw, stride, padding, 1, dtype, channels_last, "none")


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", ODD, ids=lambda s: "x".join(map(str, s)))
def test_odd_geometry_matches_reference(shape, dtype, channels_last):
    _need_cuda_backend()
    n, cin, h, w, cout, kh, kw, stride, padding, dilation = shape
    _run_and_check(n, cin, h, w, cout, kh, kw, stride, padding, dilation, dtype, channels_last, "none")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", checks.ACTIVATIONS)
def test_fused_epilogue_matches_reference(activation, bias, dtype):
    _need_cuda_backend()
    _run_and_check(2, 64, 15, 15, 64, 3, 3, 1, 1, 1, dtype, True, activation, bias)


@pytest.mark.gpu
def test_private_op_residual_and_relayout_cache():
    _need_cuda_backend()
    from sparsedm.ops import cuda_backend

    torch.manual_seed(0)
    values, meta = _conv_weight(64, 24, 3, 3, torch.float16)  # K = 216: padded to 256
    x = torch.randn(2, 24, 9, 9, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    res = torch.randn(2, 64, 9, 9, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    args = (values, meta, None, [64, 24, 3, 3], [1, 1], [1, 1], [1, 1], "silu")
    y1 = cuda_backend.sparse24_conv2d(x, *args, residual=res)
    y2 = cuda_backend.sparse24_conv2d(x, *args, residual=res)
    assert torch.equal(y1, y2)
    ref = reference.sparse24_conv2d(x.double(), values.double(), meta, None, *args[3:]) + res.double()
    assert _rel_err(y1, ref) < 3e-3


@pytest.mark.gpu
@pytest.mark.parametrize("n,hw", [(64, 256), (65, 255)], ids=["2^22-pixels", "odd"])
def test_huge_m_conv_grid_layers(n, hw):
    """More than 65535 pixel tiles of 64 (a 3x3 conv on 256x256 at batch 64: M = 2^22 pixels): the
    grid is laid out in gridDim.z layers (docs/KERNELS.md, "Grid and token limits"). Images on
    both sides of the layer boundary and the last one against the float64 reference."""
    _need_cuda_backend()
    torch.manual_seed(n)
    cin, cout = 8, 16
    values, meta = _conv_weight(cout, cin, 3, 3, torch.float16)
    x = torch.randn(n, cin, hw, hw, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    args = (values, meta, None, [cout, cin, 3, 3], [1, 1], [1, 1], [1, 1], "none")
    with registry.use_backend("cuda"):
        y = torch.ops.sparsedm.sparse24_conv2d(x, *args)
    tiles = -(-n * hw * hw // 64)
    layers = -(-tiles // 65535)
    assert layers == 2
    boundary_image = (-(-tiles // layers) * 64) // (hw * hw)  # image holding the first pixel of layer 2
    images = sorted({0, boundary_image - 1, boundary_image, boundary_image + 1, n - 1})
    ref = reference.sparse24_conv2d(x[images].double(), values.double(), meta, None, *args[3:])
    assert not y.isnan().any()
    err = _rel_err(y[images], ref)
    assert err < 3e-3, f"rel err {err:.2e}"


@pytest.mark.gpu
def test_unsupported_convs_fall_back_with_reasons():
    _need_cuda_backend()
    from sparsedm.ops import cuda_backend

    values, meta = _conv_weight(16, 4, 3, 3, torch.float16)  # SD1.5 conv_in: Cin = 4
    x = torch.randn(1, 4, 8, 8, device="cuda", dtype=torch.float16)
    args = (values, meta, None, [16, 4, 3, 3], [1, 1], [1, 1], [1, 1], "none")
    reason = cuda_backend.supports_sparse24_conv2d(x, *args)
    assert reason and "Cin=4" in reason and "multiple of 8" in reason
    with pytest.raises(registry.BackendUnavailableError, match="multiple of 8"):
        with registry.use_backend("cuda"):
            torch.ops.sparsedm.sparse24_conv2d(x, *args)
    values, meta = _conv_weight(24, 16, 3, 3, torch.float16)
    x = torch.randn(1, 16, 8, 8, device="cuda", dtype=torch.float16)
    reason = cuda_backend.supports_sparse24_conv2d(x, values, meta, None, [24, 16, 3, 3], [1, 1], [1, 1], [1, 1], "none")
    assert reason and "Cout=24" in reason


# ---- CPU: registration, reasons, K padding -------------------------------------------------


def test_conv_kernel_registered_with_cpu_reason():
    from sparsedm.ops import cuda_backend

    assert "sparse24_conv2d" in registry.get_backend("cuda").kernels
    values, meta = _conv_weight(16, 8, 3, 3, torch.float16, device="cpu")
    x = torch.randn(1, 8, 6, 6, dtype=torch.float16)
    reason = cuda_backend.supports_sparse24_conv2d(x, values, meta, None, [16, 8, 3, 3], [1, 1], [1, 1], [1, 1], "none")
    assert reason and "CUDA tensors" in reason


def test_conv_k_padding_keeps_the_product():
    """The zero groups appended to K (values 0, nibble 0x4) decompress to zeros, so the padded
    weight times any input padded with anything finite is the original product."""
    from sparsedm.formats import decompress24
    from sparsedm.ops import cuda_backend

    assert [cuda_backend.conv_k_padded(k) for k in (72, 64, 216, 9 * 320, 8)] == [128, 64, 256, 2880, 64]
    values, meta = _conv_weight(16, 24, 3, 3, torch.float32, device="cpu")
    k = values.shape[1] * 2
    extra = cuda_backend.conv_k_padded(k) - k
    v_pad = torch.nn.functional.pad(values, (0, extra // 2))
    m_pad = torch.nn.functional.pad(meta, (0, extra // 8), value=0x44)
    dense = decompress24(v_pad, m_pad)
    assert torch.equal(dense[:, :k], decompress24(values, meta)) and not dense[:, k:].any()
