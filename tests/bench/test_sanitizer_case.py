"""bench/sanitizer_case.py builds valid calls that the cuda kernels accept and that reach the
parts of the kernels compute-sanitizer must see (pipeline wrap-around, split-K, conv K tail).
Run here with CPU tensors on the reference path; on a GPU the suite runs it under the sanitizer."""

import importlib.util
from pathlib import Path

import pytest
import torch

from sparsedm import ops
from sparsedm.ops import cuda_backend, reference

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_SLOTS = 4  # the cuda GEMMs' deepest cp.async pipeline (docs/KERNELS.md, "Tile configurations")


def _load():
    spec = importlib.util.spec_from_file_location("sanitizer_case", ROOT / "bench" / "sanitizer_case.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def case_module():
    return _load()


SMS = 8  # a small "GPU" keeps the large-tile case cheap on the CPU


@pytest.fixture(scope="module")
def cases(case_module):
    torch.manual_seed(0)
    return case_module.build_cases(case_module.CASES, dev="cpu", sms=SMS)


def _uses_large_tile(m, n, sms):
    """csrc/cuda/gemm_launch.cuh use_large_tile: more than one small tile of tokens (16) and
    at least one large block (128 features x 64 tokens) per SM."""
    return m > 16 and -(-n // 128) * -(-m // 64) >= sms


def _family(op):
    return {"sparse24_linear": cuda_backend.SP16, "int8_linear": cuda_backend.D8, "sparse24_int8_linear": cuda_backend.SP8}[op]


def _gemm_nk(op, args):
    x, w = args[0], args[1]
    return w.shape[0], x.shape[-1]


def test_every_call_runs_on_the_reference_path(cases):
    for name, calls, _ in cases:
        for op, args in calls.items():
            with ops.use_backend("reference"):
                out = getattr(torch.ops.sparsedm, op)(*args)
            outs = out if isinstance(out, tuple) else (out,)
            assert all(torch.isfinite(o.float()).all() for o in outs), (name, op)


def test_gemm_calls_fit_the_cuda_kernels(cases):
    for name, calls, _ in cases:
        for op, args in calls.items():
            if op.endswith("linear"):
                n, k = _gemm_nk(op, args)
                assert cuda_backend._shape_reason(op, n, k, _family(op), args[0].shape[0]) is None, (name, op, n, k)


def test_pipeline_case_wraps_every_gemm_pipeline(cases):
    pipeline = [calls for name, calls, _ in cases if name == "pipeline"]
    tiles = {_uses_large_tile(args[0].shape[0], _gemm_nk(op, args)[0], SMS) for calls in pipeline for op, args in calls.items()}
    assert tiles == {False, True}  # the small tile and the large one
    for calls in pipeline:
        assert set(calls) == {"sparse24_linear", "int8_linear", "sparse24_int8_linear"}
        for op, args in calls.items():
            n, k = _gemm_nk(op, args)
            assert k // cuda_backend.K_MULTIPLE[_family(op)] > PIPELINE_SLOTS, (op, k)


def test_split_case_gives_every_slice_stages(cases):
    (calls, split_k), = [(calls, s) for name, calls, s in cases if name == "split"]
    assert split_k > 1
    for op, args in calls.items():
        n, k = _gemm_nk(op, args)
        assert k // cuda_backend.K_MULTIPLE[_family(op)] >= 2 * split_k, op  # at least two stages per slice


def test_conv_cases_cover_the_k_tail_and_a_wrapping_pipeline(cases):
    convs = [calls["sparse24_conv2d"] for name, calls, _ in cases if name == "conv"]
    ks = []
    for x, values, meta, bias, shape, stride, padding, dilation, act in convs:
        cout, cin, kh, kw = shape
        assert cin % cuda_backend.CONV_C_MULTIPLE == 0 and cout % cuda_backend.N_MULTIPLE == 0
        assert x.is_contiguous(memory_format=torch.channels_last)
        ks.append(kh * kw * cin)
        ref = reference.sparse24_conv2d(x, values, meta, bias, shape, stride, padding, dilation, act)
        assert ref.shape[1] == cout
    stage = cuda_backend.K_MULTIPLE[cuda_backend.SP16]
    assert any(k % stage for k in ks)  # padded K tail
    assert any(cuda_backend.conv_k_padded(k) // stage > PIPELINE_SLOTS for k in ks)


def test_cli_refuses_unknown_cases(case_module):
    with pytest.raises(SystemExit) as err:
        case_module.parse_args(["--cases", "small,nope"])
    assert err.value.code == 2
    assert case_module.parse_args(["--cases", "split,conv", "--backends", "cuda"]).backends == ["cuda"]
