"""sparse24_conv2d on the triton backend (implicit GEMM) against the reference and float64 F.conv2d.

Without CUDA these run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so shapes stay small; the ``gpu`` tests use DDPM CIFAR10 UNet shapes.
"""

import pytest
import torch
import torch.nn.functional as F

from sparsedm import ops
from sparsedm.ops.checks import conv_output_memory_format
from tests.helpers import TOLERANCES, assert_close_rel, randn, sparse_weight

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ACT64 = {
    "none": lambda y: y,
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "silu": F.silu,
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

CASES = [
    # (N, Cin, H, W, Cout, kh, kw, stride, padding, dilation)
    (1, 8, 7, 7, 16, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 16, 9, 5, 24, 3, 3, (2, 2), (1, 1), (1, 1)),   # Cout tail (24 = 16 + 8), stride 2
    (1, 8, 9, 9, 12, 3, 3, (1, 1), (0, 0), (2, 2)),    # dilation 2, no padding
    (2, 16, 5, 7, 8, 1, 1, (1, 1), (0, 0), (1, 1)),    # pointwise
    (1, 8, 7, 9, 20, 2, 3, (2, 1), (1, 0), (1, 2)),    # rectangular kernel, mixed stride/dilation
    (1, 12, 5, 5, 8, 2, 3, (1, 1), (1, 1), (1, 1)),    # Cin=12: meta bytes straddle filter taps
    (2, 2, 5, 7, 8, 2, 2, (1, 2), (1, 1), (1, 1)),     # Cin=2: each 2:4 group spans two taps
    (1, 40, 6, 6, 16, 3, 3, (1, 1), (1, 1), (1, 1)),   # several channel blocks with a tail
    (2, 8, 9, 9, 24, 3, 3, (1, 1), (1, 1), (1, 1)),    # 6 x 2 programs: grouped order with a partial group
]


def _case_id(case):
    n, cin, h, w, cout, kh, kw, st, pad, dil = case
    return f"n{n}c{cin}{h}x{w}o{cout}k{kh}x{kw}s{st[0]}{st[1]}p{pad[0]}{pad[1]}d{dil[0]}{dil[1]}"


def _problem(case, dtype, seed, bias=True):
    n, cin, h, wd, cout, kh, kw, stride, padding, dilation = case
    w, values, meta = sparse_weight((cout, cin, kh, kw), dtype, seed=seed)
    x = randn(n, cin, h, wd, dtype=dtype, seed=seed + 1)
    b = randn(cout, dtype=dtype, seed=seed + 2) if bias else None
    to = dict(device=DEVICE)
    return x.to(**to), w.to(**to), values.to(**to), meta.to(**to), None if b is None else b.to(**to)


def _check(case, dtype, channels_last, activation, bias, seed):
    n, cin, h, wd, cout, kh, kw, stride, padding, dilation = case
    x, w, values, meta, b = _problem(case, dtype, seed, bias)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = (x, values, meta, b, list(w.shape), stride, padding, dilation, activation)
    before = ops.dispatch_counts[("sparse24_conv2d", "triton")]
    y = ops.sparse24_conv2d(*args, backend="triton")
    assert ops.dispatch_counts[("sparse24_conv2d", "triton")] == before + 1
    y_ref = ops.sparse24_conv2d(*args, backend="reference")

    expected = F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding, dilation)
    expected = ACT64[activation](expected)
    what = f"triton conv {_case_id(case)} {dtype} cl={channels_last} {activation} bias={bias}"
    assert y.dtype == dtype and y.shape == expected.shape, what
    fmt = conv_output_memory_format(x)
    assert y.is_contiguous(memory_format=fmt), f"{what}: output is not in {fmt}"
    assert fmt == (torch.channels_last if channels_last and x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1 else torch.contiguous_format)
    assert_close_rel(y, expected, TOLERANCES[dtype], what)
    # Same precision as the reference backend: the two may differ by a few output roundings.
    assert_close_rel(y, y_ref, 2 * TOLERANCES[dtype], what + " vs reference")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_conv_geometry(case, dtype, channels_last):
    # Activation and bias rotate over the cases; test_conv_epilogue covers every pair.
    i = CASES.index(case)
    activation = list(ACT64)[i % 4]
    _check(case, dtype, channels_last, activation, bias=i % 3 != 2, seed=10 * i)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", list(ACT64))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_conv_epilogue(activation, bias, dtype):
    _check(CASES[1], dtype, True, activation, bias, seed=3)


def test_conv_strided_input_view():
    """A channel slice of a larger tensor (neither NCHW- nor NHWC-contiguous) runs from its strides."""
    case = CASES[0]
    x, w, values, meta, b = _problem(case, torch.float32, seed=5)
    big = randn(1, 20, 9, 11, seed=6).to(DEVICE)
    x = big[:, 4:12, 1:8, 2:9]
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    y = ops.sparse24_conv2d(x, values, meta, b, list(w.shape), (1, 1), (1, 1), (1, 1), backend="triton")
    expected = F.conv2d(x.double(), w.double(), b.double(), 1, 1, 1)
    assert y.is_contiguous()
    assert_close_rel(y, expected, TOLERANCES[torch.float32], "strided view")


def test_conv_float64_is_refused():
    x, w, values, meta, b = _problem(CASES[0], torch.float64, seed=1)
    with pytest.raises(ops.BackendUnavailableError, match="float64 runs on the reference backend"):
        ops.sparse24_conv2d(x, values, meta, b, list(w.shape), (1, 1), (1, 1), (1, 1), backend="triton")


def test_conv_bad_arguments_use_the_shared_checks():
    x, w, values, meta, b = _problem(CASES[0], torch.float32, seed=2)
    with pytest.raises(ops.OpArgumentError, match="x has C=4 channels"):
        ops.sparse24_conv2d(x[:, :4], values, meta, b, list(w.shape), (1, 1), (1, 1), (1, 1), backend="triton")


def test_conv_opcheck():
    x, w, values, meta, b = _problem(CASES[3], torch.float32, seed=4)
    with ops.use_backend("triton"):
        torch.library.opcheck(
            torch.ops.sparsedm.sparse24_conv2d.default,
            (x.contiguous(memory_format=torch.channels_last), values, meta, b, list(w.shape), [1, 1], [0, 0], [1, 1], "silu"),
        )


# DDPM CIFAR10 UNet 3x3 convs (ch 128, mult (1, 2, 2, 2)) at batch 8.
DDPM_SHAPES = [(8, 128, 32, 32, 128), (8, 128, 16, 16, 256), (8, 256, 16, 16, 256), (8, 256, 8, 8, 256), (8, 256, 4, 4, 256)]


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", DDPM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_ddpm_unet_gpu(shape, dtype, channels_last):
    n, cin, h, wd, cout = shape
    w, values, meta = sparse_weight((cout, cin, 3, 3), dtype, seed=cin + h)
    values, meta, w = values.cuda(), meta.cuda(), w.cuda()
    x = randn(n, cin, h, wd, dtype=dtype, seed=1).cuda()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    b = randn(cout, dtype=dtype, seed=2).cuda()
    args = (x, values, meta, b, list(w.shape), [1, 1], [1, 1], [1, 1], "silu")
    y = ops.sparse24_conv2d(*args, backend="triton")
    y_ref = ops.sparse24_conv2d(*args, backend="reference")
    expected = F.silu(F.conv2d(x.double(), w.double(), b.double(), 1, 1))
    assert y.is_contiguous(memory_format=conv_output_memory_format(x))
    assert_close_rel(y, expected, TOLERANCES[dtype], f"ddpm {shape} {dtype}")
    assert_close_rel(y, y_ref, 2 * TOLERANCES[dtype], f"ddpm {shape} {dtype} vs reference")


def test_conv_int64_offsets(monkeypatch):
    """The INDEX_64 variant (tensors past 2**31 elements) computes the same result."""
    from sparsedm.kernels import conv2d

    monkeypatch.setattr(conv2d, "_span", lambda t: 2**31)
    _check(CASES[4], torch.float16, True, "gelu", bias=True, seed=9)


# Every candidate config, forced (config=): autotuning runs them all but checks only the winner.
def _conv_configs():
    from sparsedm.kernels import conv2d

    return list(conv2d._CONFIGS) + list(conv2d._NCHW_CONFIGS) + list(conv2d._FP32_CONFIGS)


def _is_fp32_config(config):
    from sparsedm.kernels import conv2d

    return any(config is c for c in conv2d._FP32_CONFIGS)


def _conv_config_id(c):
    kw = c.kwargs
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}-w{c.num_warps}s{c.num_stages}"


def _check_forced_config(config, case, dtype, channels_last, seed):
    from sparsedm.kernels import conv2d

    n, cin, h, wd, cout, kh, kw, stride, padding, dilation = case
    x, w, values, meta, b = _problem(case, dtype, seed)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = conv2d.sparse24_conv2d(x, values, meta, b, list(w.shape), stride, padding, dilation, "silu", config=config)
    expected = F.silu(F.conv2d(x.double(), w.double(), b.double(), stride, padding, dilation))
    what = f"conv config {config.kwargs} {_case_id(case)} {dtype} cl={channels_last}"
    assert y.is_contiguous(memory_format=conv_output_memory_format(x)), what
    assert_close_rel(y, expected, TOLERANCES[dtype], what)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("config", _conv_configs(), ids=_conv_config_id)
def test_every_conv_config_forced(config, channels_last):
    """Cin = 40 (a channel-block tail for every BLOCK_K), Cout = 24 (an N tail), M = 2*7*7 = 98
    (an M tail for every BLOCK_M), stride 1, padding 1; float32 for the float32 list."""
    dtype = torch.float32 if _is_fp32_config(config) else torch.float16
    _check_forced_config(config, (2, 40, 7, 7, 24, 3, 3, (1, 1), (1, 1), (1, 1)), dtype, channels_last, seed=5)


def test_forced_conv_config_errors():
    from sparsedm.kernels import conv2d

    triton = pytest.importorskip("triton")
    x, w, values, meta, b = _problem(CASES[0], torch.float32, seed=3)
    for kwargs in ({"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16}, {"BLOCK_M": 32, "BLOCK_N": 24, "BLOCK_K": 16, "GROUP_M": 4}):
        with pytest.raises(ops.OpArgumentError, match="config"):
            conv2d.sparse24_conv2d(x, values, meta, b, list(w.shape), (1, 1), (1, 1), (1, 1), config=triton.Config(kwargs))


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("config", _conv_configs(), ids=_conv_config_id)
def test_gpu_every_conv_config_forced(config, channels_last):
    """Each candidate compiled for the real GPU on a DDPM-like conv with tails in M (4 * 15 * 15
    pixels), Cin (72: a partial channel block) and Cout (200); the GPU test stages run with
    SPARSEDM_TRITON_AUTOTUNE=0, so this is where the other candidates run."""
    for dtype in (torch.float32,) if _is_fp32_config(config) else (torch.float16, torch.bfloat16):
        _check_forced_config(config, (4, 72, 15, 15, 200, 3, 3, (1, 1), (1, 1), (1, 1)), dtype, channels_last, seed=11)


def test_autotune_off_launches_the_bucket_first_directly(monkeypatch):
    """SPARSEDM_TRITON_AUTOTUNE=0 (here: _common.TUNE patched off, and the launcher told it is on
    a GPU; the kernel itself still runs in the interpreter): the conv launches its bucket's first
    candidate itself, never through the autotuner, which would still time a single pruned config."""
    from sparsedm.kernels import _common, conv2d

    monkeypatch.setattr(_common, "TUNE", False)
    monkeypatch.setattr(conv2d, "INTERPRET", False)
    launched = []
    kernel = conv2d._sparse24_conv2d_kernel

    class Spy:
        def __getitem__(self, grid):
            def call(*args, **kwargs):
                launched.append({k: kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps")})
                return kernel[grid](*args, **kwargs)
            return call

    class NoTuner:
        def __getitem__(self, grid):
            raise AssertionError("the autotuner ran with autotuning off")

    monkeypatch.setattr(conv2d, "_sparse24_conv2d_kernel", Spy())
    monkeypatch.setattr(conv2d, "_sparse24_conv2d_tuned", NoTuner())
    case = (2, 40, 7, 7, 24, 3, 3, (1, 1), (1, 1), (1, 1))
    x, w, values, meta, b = _problem(case, torch.float16, seed=4)
    for channels_last in (False, True):  # NCHW input has its own list
        launched.clear()
        xl = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        y = conv2d.sparse24_conv2d(xl, values, meta, b, list(w.shape), (1, 1), (1, 1), (1, 1), "none")
        first = conv2d.conv_configs(2 * 7 * 7, 24, 40, channels_last=channels_last)[0]
        kw = first.kwargs
        assert launched == [{"BLOCK_M": kw["BLOCK_M"], "BLOCK_N": kw["BLOCK_N"], "BLOCK_K": kw["BLOCK_K"], "num_warps": first.num_warps}]
        assert_close_rel(y, F.conv2d(x.double(), w.double(), b.double(), 1, 1), TOLERANCES[torch.float16], "autotune off")
    assert conv2d.conv_configs(98, 24, 40, channels_last=False)[0] in conv2d._NCHW_CONFIGS
    assert conv2d.conv_configs(98, 24, 40)[0] in conv2d._CONFIGS
