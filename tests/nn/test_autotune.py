"""Automatic backend choice with a fake timer and fake candidates; the dense backend's kernels."""

import json
import logging

import pytest
import torch

import sparsedm
from sparsedm.formats import compress24, quantize_weight_int8
from sparsedm.ops import autotune, dense, registry
from tests.helpers import assert_close_rel, randn, sparse_weight

ENV = {"gpu": "Fake GPU 80GB", "torch": "2.13.0", "triton": "3.9.0", "sparsedm": "0.1.0"}


def _args(m=5, n=16, k=32):
    _, values, meta = sparse_weight((n, k), seed=m)
    return (randn(m, k, seed=1), values, meta, None, "none")


class FakeTimer:
    """Runs each candidate (a fake kernel that records its name) and reports that name's time."""

    def __init__(self, times):
        self.times, self.calls, self.ran = dict(times), 0, []

    def __call__(self, fn):
        self.calls += 1
        fn()
        return self.times[self.ran[-1]]


def _candidates(timer, names):
    def make(name):
        def kernel(*args):
            timer.ran.append(name)
        return kernel
    return lambda: [(name, make(name)) for name in names]


def test_picks_the_fastest_candidate_never_slower(tmp_path):
    timer = FakeTimer({"cuda": 0.9, "triton": 0.4, "dense": 0.5})
    tuner = autotune.Autotuner(timer=timer, path=tmp_path / "a.json", environment=ENV, can_measure=lambda: True)
    winner = tuner.choose("sparse24_linear", _args(), _candidates(timer, ["cuda", "triton", "dense"]))
    assert winner == "triton" and timer.calls == 3
    assert timer.times[winner] == min(timer.times.values())
    # dense wins when it is fastest
    timer2 = FakeTimer({"triton": 0.7, "dense": 0.3})
    tuner2 = autotune.Autotuner(timer=timer2, path=tmp_path / "b.json", environment=ENV, can_measure=lambda: True)
    assert tuner2.choose("sparse24_linear", _args(), _candidates(timer2, ["triton", "dense"])) == "dense"


def test_cache_reuse_in_memory_on_disk_and_by_bucket(tmp_path):
    path = tmp_path / "cache.json"
    timer = FakeTimer({"triton": 0.4, "dense": 0.5})
    tuner = autotune.Autotuner(timer=timer, path=path, environment=ENV, can_measure=lambda: True)
    cands = _candidates(timer, ["triton", "dense"])
    assert tuner.choose("sparse24_linear", _args(m=5), cands) == "triton"
    assert tuner.choose("sparse24_linear", _args(m=7), cands) == "triton"  # M 5 and 7: same bucket (8)
    assert timer.calls == 2
    data = json.loads(path.read_text())
    (section,) = data["environments"].values()
    assert section["gpu"] == ENV["gpu"] and "sparse24_linear|M8|N16|K32|float32|none|nobias" in section["entries"]
    # a new process (fresh tuner) reads the file and measures nothing
    timer_b = FakeTimer({"triton": 9.0, "dense": 0.1})
    fresh = autotune.Autotuner(timer=timer_b, path=path, environment=ENV, can_measure=lambda: True)
    assert fresh.choose("sparse24_linear", _args(m=6), _candidates(timer_b, ["triton", "dense"])) == "triton"
    assert timer_b.calls == 0
    # another bucket is measured and both are kept in the file
    assert fresh.choose("sparse24_linear", _args(m=100), _candidates(timer_b, ["triton", "dense"])) == "dense"
    entries = json.loads(path.read_text())["environments"]
    assert len(next(iter(entries.values()))["entries"]) == 2
    rows = autotune.cache_summary(path)
    assert {r["backend"] for r in rows} == {"triton", "dense"}
    assert all(r["op"] == "sparse24_linear" and r["gpu"] == ENV["gpu"] for r in rows)
    assert next(r for r in rows if r["backend"] == "triton")["speedup_vs_dense"] == pytest.approx(0.5 / 0.4)


def test_version_change_invalidates(tmp_path):
    path = tmp_path / "cache.json"
    timer = FakeTimer({"triton": 0.4, "dense": 0.5})
    autotune.Autotuner(timer=timer, path=path, environment=ENV, can_measure=lambda: True).choose(
        "sparse24_linear", _args(), _candidates(timer, ["triton", "dense"]))
    new_env = {**ENV, "torch": "2.14.0"}
    timer2 = FakeTimer({"triton": 0.6, "dense": 0.5})
    tuner = autotune.Autotuner(timer=timer2, path=path, environment=new_env, can_measure=lambda: True)
    assert tuner.choose("sparse24_linear", _args(), _candidates(timer2, ["triton", "dense"])) == "dense"
    assert timer2.calls == 2
    sections = json.loads(path.read_text())["environments"]
    assert [s["torch"] for s in sections.values()] == ["2.14.0"]  # the stale section was dropped


def test_corrupted_cache_is_ignored_with_a_warning_and_rewritten(tmp_path, caplog):
    path = tmp_path / "cache.json"
    path.write_text("{not json")
    timer = FakeTimer({"triton": 0.4, "dense": 0.5})
    tuner = autotune.Autotuner(timer=timer, path=path, environment=ENV, can_measure=lambda: True)
    with pytest.warns(RuntimeWarning, match="ignoring the corrupted autotune cache"):
        assert tuner.choose("sparse24_linear", _args(), _candidates(timer, ["triton", "dense"])) == "triton"
    data = json.loads(path.read_text())
    assert data["schema"] == autotune.SCHEMA and len(data["environments"]) == 1
    assert not list(tmp_path.glob(".autotune-*"))  # no temporary file left behind
    path.write_text(json.dumps({"schema": 1, "environments": {"x": {"entries": {"k": {}}}}}))
    with pytest.warns(RuntimeWarning, match="an entry has no 'backend'"):
        autotune.Autotuner(timer=timer, path=path, environment=ENV).lookup("sparse24_linear", _args())


def test_no_measurement_when_not_allowed_or_single_candidate(tmp_path, monkeypatch):
    timer = FakeTimer({"triton": 0.4, "dense": 0.1})
    path = tmp_path / "c.json"
    capturing = autotune.Autotuner(timer=timer, path=path, environment=ENV, can_measure=lambda: False)
    assert capturing.choose("sparse24_linear", _args(), _candidates(timer, ["triton", "dense"])) == "triton"
    tuner = autotune.Autotuner(timer=timer, path=path, environment=ENV, can_measure=lambda: True)
    assert tuner.choose("sparse24_linear", _args(), _candidates(timer, ["dense"])) == "dense"
    monkeypatch.setenv("SPARSEDM_AUTOTUNE", "0")
    assert tuner.choose("sparse24_linear", _args(), _candidates(timer, ["triton", "dense"])) == "triton"
    assert timer.calls == 0 and not path.exists()


def test_failing_candidate_is_skipped(tmp_path, caplog):
    timer = FakeTimer({"dense": 0.5})

    def broken(*args):
        raise RuntimeError("out of shared memory")

    tuner = autotune.Autotuner(timer=timer, path=tmp_path / "d.json", environment=ENV, can_measure=lambda: True)
    with caplog.at_level(logging.WARNING, logger="sparsedm.autotune"):
        name = tuner.choose("sparse24_linear", _args(), lambda: [("cuda", broken), *_candidates(timer, ["dense"])()])
    assert name == "dense" and "out of shared memory" in caplog.text


def test_epilogue_is_part_of_the_key():
    x, values, meta, _, _ = _args()
    plain = autotune.entry_key("sparse24_linear", (x, values, meta, None, "none"))
    assert plain.endswith("|none|nobias")
    assert autotune.entry_key("sparse24_linear", (x, values, meta, randn(16), "gelu")) != plain


def test_losing_dense_drops_its_decompressed_copy(tmp_path):
    """Measuring dense decompresses the weight into its cache; when dense loses, that copy
    must go, or every sparse layer would keep a dense duplicate."""
    args = _args()
    timer = FakeTimer({"triton": 0.1, "dense": 0.5})
    dense_kernel = registry.get_backend("dense").kernels["sparse24_linear"].fn

    def candidates():
        def triton_like(*a):
            timer.ran.append("triton")

        def dense_like(*a):
            dense_kernel(*a)  # fills dense's cache, as a real measurement would
            timer.ran.append("dense")

        return [("triton", triton_like), ("dense", dense_like)]

    tuner = autotune.Autotuner(timer=timer, path=tmp_path / "e.json", environment=ENV, can_measure=lambda: True)
    assert tuner.choose("sparse24_linear", args, candidates) == "triton"
    assert args[1] not in dense._CACHE


def test_entry_keys():
    x = randn(2, 16, 8, 8)
    _, values, meta = sparse_weight((32, 144))
    conv_args = (x, values, meta, None, [32, 16, 3, 3], [1, 1], [1, 1], [1, 1], "none")
    assert autotune.entry_key("sparse24_conv2d", conv_args) == (
        "sparse24_conv2d|B2|C16|H8|W8|K32|R3|S3|stride1x1|pad1x1|dil1x1|nchw|float32|none|nobias")
    w_q, s = quantize_weight_int8(randn(16, 32))
    x = randn(3, 4, 32)
    assert autotune.entry_key("int8_linear", (x, w_q, s, None, None)) == "int8_linear|M16|N16|K32|float32|none|nobias|dynamic_x"
    assert autotune.entry_key("int8_linear", (x, w_q, s, randn(16), torch.tensor([0.1]), "gelu")) == (
        "int8_linear|M16|N16|K32|float32|gelu|bias|static_x")
    values_q, meta_q = compress24(quantize_weight_int8(sparse_weight((16, 32))[0])[0])
    assert autotune.entry_key("sparse24_int8_linear", (x, values_q, meta_q, s, None, None, "silu")) == (
        "sparse24_int8_linear|M16|N16|K32|float32|silu|nobias|dynamic_x")


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEDM_CACHE_DIR", str(tmp_path / "c"))
    assert autotune.cache_path() == tmp_path / "c" / "autotune.json"
    monkeypatch.delenv("SPARSEDM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert autotune.cache_dir() == tmp_path / "x" / "sparsedm"


def test_registry_uses_autotune_for_cuda_tensors(tmp_path, monkeypatch):
    """The hook in registry.select, driven on CPU by pretending the tensors are on CUDA."""
    timer = FakeTimer({"fast_a": 0.9, "fast_b": 0.2})
    reference = registry.get_backend("reference").kernels["sparse24_linear"].fn
    for name in ("fast_a", "fast_b"):
        registry.register_backend(name, "test only", lambda: None)

        def kernel(*args, name=name):
            timer.ran.append(name)
            return reference(*args)

        registry.register_kernel("sparse24_linear", name, kernel)
    old = autotune.set_autotuner(autotune.Autotuner(timer=timer, path=tmp_path / "r.json", environment=ENV, can_measure=lambda: True))
    real_why_not = registry.why_not
    monkeypatch.setattr(registry, "_first_device_type", lambda args: "cuda")
    monkeypatch.setattr(registry, "why_not", lambda b, op, args: real_why_not(b, op, args) if b.name in ("fast_a", "fast_b", "reference") else "test")
    try:
        args = _args()
        y = sparsedm.ops.sparse24_linear(*args)
        assert timer.calls == 2 and timer.ran[-1] == "fast_b"
        assert registry.select("sparse24_linear", args)[0] == "fast_b"
        assert torch.equal(y, reference(*args))
        # forcing still wins over the measured choice
        with sparsedm.use_backend("fast_a"):
            assert registry.select("sparse24_linear", args)[0] == "fast_a"
    finally:
        autotune.set_autotuner(old)
        for name in ("fast_a", "fast_b"):
            registry._BACKENDS.pop(name)


# -- the dense backend's kernels, called directly (its probe needs CUDA) ----------------------


def test_dense_linear_and_conv_match_reference():
    ref = registry.get_backend("reference").kernels
    x, values, meta, _, _ = _args(m=6)
    bias = randn(16, seed=3)
    assert_close_rel(dense.sparse24_linear(x, values, meta, bias, "gelu"), ref["sparse24_linear"].fn(x, values, meta, bias, "gelu"), 1e-5, "dense linear")
    _, cv, cm = sparse_weight((8, 16, 3, 3), seed=4)
    xc = randn(2, 16, 6, 6, seed=5).contiguous(memory_format=torch.channels_last)
    conv_args = (xc, cv, cm, None, [8, 16, 3, 3], [1, 1], [1, 1], [1, 1], "silu")
    y = dense.sparse24_conv2d(*conv_args)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close_rel(y, ref["sparse24_conv2d"].fn(*conv_args), 1e-5, "dense conv")


def test_dense_int8_is_the_int8_contract():
    ref = registry.get_backend("reference").kernels
    w_q, s = quantize_weight_int8(randn(16, 32, seed=6))
    x = randn(3, 7, 32, seed=7)  # 21 rows: torch._int_mm needs more than 16 on CUDA
    bias = randn(16, seed=8)
    assert torch.allclose(dense.int8_linear(x, w_q, s, bias, None), ref["int8_linear"].fn(x, w_q, s, bias, None), rtol=1e-6, atol=1e-6)
    xs = torch.tensor([0.02])
    assert torch.allclose(dense.int8_linear(x, w_q, s, None, xs), ref["int8_linear"].fn(x, w_q, s, None, xs), rtol=1e-6, atol=1e-6)
    _, vq, mq = sparse_weight((16, 32), dtype=torch.float32, seed=9)
    vq, s2 = quantize_weight_int8(vq)
    assert torch.allclose(dense.sparse24_int8_linear(x, vq, mq, s2, bias, None),
                          ref["sparse24_int8_linear"].fn(x, vq, mq, s2, bias, None), rtol=1e-6, atol=1e-6)


def test_dense_weight_cache_follows_the_tensors():
    _, values, meta = sparse_weight((8, 16), seed=10)
    w1 = dense.decompressed_weight(values, meta)
    assert dense.decompressed_weight(values, meta) is w1  # cached
    values.mul_(2)  # in-place change: version counter moves, cache rebuilt
    w2 = dense.decompressed_weight(values, meta)
    assert w2 is not w1 and torch.equal(w2, 2 * w1)
    assert "dense" in registry.get_backend("dense").kernels.get("sparse24_linear").fn.__module__


def test_each_device_has_its_own_section(tmp_path):
    """A host with two different GPUs: the winner measured on one is never used on the other."""
    envs = {"cpu": {**ENV, "gpu": "Fake GPU A"}, "meta": {**ENV, "gpu": "Fake GPU B"}}
    seen = []

    def environment(device):
        seen.append(device.type)
        return envs[device.type]

    path = tmp_path / "multi.json"
    timer = FakeTimer({"triton": 0.4, "dense": 0.5})
    tuner = autotune.Autotuner(timer=timer, path=path, environment=environment, can_measure=lambda: True)
    args_a = _args()
    args_b = (args_a[0].to("meta"),) + args_a[1:]
    assert tuner.choose("sparse24_linear", args_a, _candidates(timer, ["triton", "dense"])) == "triton"
    assert tuner.lookup("sparse24_linear", args_b) is None  # nothing measured on device B yet
    timer.times = {"triton": 0.9, "dense": 0.5}
    assert tuner.choose("sparse24_linear", args_b, _candidates(timer, ["triton", "dense"])) == "dense"
    assert tuner.lookup("sparse24_linear", args_a) == "triton" and timer.calls == 4
    sections = json.loads(path.read_text())["environments"]
    assert sorted(s["gpu"] for s in sections.values()) == ["Fake GPU A", "Fake GPU B"]
    assert seen.count("cpu") == 1 and seen.count("meta") == 1  # one environment lookup per device
    fresh = autotune.Autotuner(timer=timer, path=path, environment=environment, can_measure=lambda: True)
    assert fresh.lookup("sparse24_linear", args_a) == "triton" and fresh.lookup("sparse24_linear", args_b) == "dense"
