"""CPU-side throughput benchmarks (pytest-benchmark): compression, quantization, conversion.

    python -m pytest bench/test_cpu_benchmarks.py --benchmark-only

Not part of the test suite (pytest's testpaths is tests/); numbers are CPU-specific.
"""

import pytest
import torch

from sparsedm.formats import compress24, decompress24, mask24, quantize_activation_int8, quantize_weight_int8

SHAPES = [(1152, 4608), (4608, 1152)]  # U-ViT-H/2 fc1 / fc2


@pytest.fixture(params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def weight(request):
    torch.manual_seed(0)
    return torch.randn(request.param, dtype=torch.float16)


def test_mask24(benchmark, weight):
    benchmark(mask24, weight)


def test_compress24(benchmark, weight):
    w = weight * mask24(weight)
    values, meta = benchmark(compress24, w)
    assert torch.equal(decompress24(values, meta), w)


def test_decompress24(benchmark, weight):
    values, meta = compress24(weight * mask24(weight))
    benchmark(decompress24, values, meta)


def test_quantize_weight_int8(benchmark, weight):
    benchmark(quantize_weight_int8, weight.float())


def test_quantize_activation_int8(benchmark):
    x = torch.randn(128 * 258, 1152)
    benchmark(quantize_activation_int8, x)


def test_convert_small_uvit(benchmark, tmp_path):
    """End-to-end `sparsedm convert --prune` of a U-ViT-S/2 state_dict (44M parameters)."""
    from sparsedm.convert.cli import register
    from sparsedm.models import PRESETS, build
    import argparse

    p = PRESETS["uvit-s2-cifar10"]
    src = tmp_path / "nnet_ema.pth"
    torch.save(build(p["arch"], p["config"], device="cpu").state_dict(), src)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["convert", str(src), "-o", str(tmp_path / "out.safetensors"), "--preset", "uvit-s2-cifar10",
                              "--prune", "-q"])
    assert benchmark.pedantic(args.func, args=(args,), rounds=2, iterations=1) == 0
