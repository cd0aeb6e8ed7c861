"""The file: sizes, manifest, atomic writes, a fuzzed reader, and the fast 2:4 path."""

import json
import math
import os
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from sparsedm.convert import FileFormatError, cli, convert, read_header, top2_compress
from sparsedm.convert.fileformat import AtomicWriter, TensorSpec
from sparsedm.formats import compress24, mask24
from tests.convert.conftest import dir_listing, make_uvit


@pytest.fixture
def converted(tmp_path):
    model, _ = make_uvit(qkv_bias=True)
    src = tmp_path / "nnet_ema.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / "m.safetensors"
    convert(str(src), str(out), preset="toy-uvit")
    return out


def test_manifest_schema(converted):
    m = read_header(str(converted)).manifest
    assert m["format"] == "sparsedm" and m["format_version"] == 1
    assert m["architecture"]["arch"] == "toy_uvit" and m["architecture"]["resolution"] == 8
    assert len(m["source"]["sha256"]) == 64 and m["source"]["reader"] == "sparsedm"
    layer = m["layers"]["in_blocks.0.attn.qkv"]
    assert layer == {**layer, "kind": "sparse24", "op": "linear", "sparsity": "2:4", "quantization": None, "weight_shape": [96, 32]}


@pytest.mark.parametrize("dtype,quant,ratio", [("fp16", None, 0.5625), ("fp16", "int8", 0.3125)])
def test_sizes(tmp_path, dtype, quant, ratio):
    """One large 2:4 layer: the file is the layer's ratio x its dense fp16 bytes (+ int8 scales)
    plus the other tensors, and exceeds that only by the header."""
    model, _ = make_uvit(qkv_bias=True, embed_dim=256, depth=1, mlp_ratio=4.0)
    src = tmp_path / "big.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / "s.safetensors"
    convert(str(src), str(out), source_format="sparsedm", config_path=_cfg(tmp_path, embed_dim=256, depth=1), dtype=dtype, quant=quant)
    h = read_header(str(out))
    expected = 0
    for name, t in model.state_dict().items():
        layer = name.rsplit(".", 1)[0]
        info = h.manifest["layers"].get(layer)
        if info and info["kind"] != "dense" and name.endswith(".weight"):
            expected += math.ceil(2 * t.numel() * ratio) + (4 * t.shape[0] if quant else 0)
        else:
            expected += 2 * t.numel()
    assert os.path.getsize(out) - (8 + h.header_bytes) == expected
    assert h.header_bytes < 64 * 1024


def _cfg(tmp_path, **kw):
    from tests.convert.toy_models import UVIT_CONFIG

    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"arch": "toy_uvit", "config": {**UVIT_CONFIG, **kw}, "resolution": 8, "in_channels": 3}))
    return str(p)


def test_atomic_writer_leaves_nothing_on_failure(tmp_path):
    specs = [TensorSpec("a", torch.float32, (4, 4)), TensorSpec("b", torch.uint8, (3,))]
    target = tmp_path / "f.safetensors"
    with pytest.raises(RuntimeError):
        with AtomicWriter(str(target), specs) as w:
            w.write("a", torch.ones(4, 4))
            assert len(dir_listing(tmp_path)) == 1  # the temporary file, in the same directory
            raise RuntimeError("boom")
    assert dir_listing(tmp_path) == []
    with pytest.raises(ValueError, match="not completely written"):
        with AtomicWriter(str(target), specs) as w:
            w.write("a", torch.ones(4, 4))
            w.commit({})
    assert dir_listing(tmp_path) == []


def test_info_reports_macs_and_size(converted, capsys):
    assert cli.file_info(str(converted)) == 0
    text = capsys.readouterr().out
    assert "MACs at 8px" in text and "dense fp16" in text and "the same model dense in this file's dtypes" in text
    assert cli.file_info(str(converted), as_json=True) == 0
    report = json.loads(capsys.readouterr().out)
    # the fp32 file against its dense fp32 self: the source checkpoint, every tensor at 4 bytes
    source = make_uvit(qkv_bias=True)[0].state_dict()
    assert report["dense_same_dtype_bytes"] == 4 * sum(t.numel() for t in source.values())
    assert report["size_vs_dense_same_dtype"] < 1.0 < report["size_vs_dense_fp16"]
    macs = report["macs"]
    assert macs["dense"] > macs["sparse24"] > macs["dense"] / 2
    assert report["manifest"]["layers"]["mid_block.mlp.fc1"]["kind"] == "sparse24"


def test_manifest_disagreeing_with_tensors(tmp_path, converted):
    """Rewrite the manifest so a layer claims a wider weight: the reader names the tensor."""
    data = bytearray(converted.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    manifest = json.loads(header["__metadata__"]["sparsedm"])
    manifest["layers"]["in_blocks.0.attn.qkv"]["weight_shape"] = [96, 64]
    header["__metadata__"]["sparsedm"] = json.dumps(manifest)
    raw = json.dumps(header).encode()
    raw += b" " * ((-len(raw)) % 8)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data[8 + n:]))
    with pytest.raises(FileFormatError, match="in_blocks.0.attn.qkv.values"):
        read_header(str(bad))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_reader(tmp_path_factory, data):
    """Corrupted headers and sizes: the reader either accepts the file or raises FileFormatError."""
    global _GOOD
    if _GOOD is None:
        tmp = tmp_path_factory.mktemp("fuzz")
        model, _ = make_uvit(qkv_bias=True)
        torch.save(model.state_dict(), tmp / "s.pth")
        convert(str(tmp / "s.pth"), str(tmp / "g.safetensors"), preset="toy-uvit")
        _GOOD = (tmp / "g.safetensors").read_bytes()
    blob = bytearray(_GOOD)
    (n,) = struct.unpack("<Q", blob[:8])
    action = data.draw(st.sampled_from(["truncate", "flip_header", "size_field", "flip_json_digit", "append"]))
    if action == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif action == "flip_header":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(8, 8 + n - 1))
            blob[i] = data.draw(st.integers(0, 255))
    elif action == "size_field":
        blob[:8] = struct.pack("<Q", data.draw(st.one_of(st.integers(0, 2 * n), st.integers(0, 2 ** 64 - 1))))
    elif action == "flip_json_digit":
        digits = [i for i in range(8, 8 + n) if chr(blob[i]).isdigit()]
        i = data.draw(st.sampled_from(digits))
        blob[i] = ord(str(data.draw(st.integers(0, 9))))
    else:
        blob += bytes(data.draw(st.integers(1, 64)))
    path = tmp_path_factory.mktemp("f") / "x.safetensors"
    path.write_bytes(bytes(blob))
    try:
        h = read_header(str(path))
    except FileFormatError as e:
        assert "\n" not in str(e)
        return
    # accepted: then every tensor must load with its declared shape
    from sparsedm.convert.fileformat import read_tensors

    for k, t in read_tensors(h).items():
        assert tuple(t.shape) == h.tensors[k].shape


_GOOD = None


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), groups=st.integers(1, 6), seed=st.integers(0, 2 ** 16),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), ties=st.booleans())
def test_top2_compress_equals_mask24_then_compress24(n, groups, seed, dtype, ties):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, 8 * groups, generator=g)
    if ties:  # few distinct magnitudes and zeros: exercises ties-to-lower-index
        w = torch.randint(-2, 3, (n, 8 * groups), generator=g).float()
    w = w.to(dtype)
    v, m = top2_compress(w)
    v2, m2 = compress24(w * mask24(w))
    assert torch.equal(m, m2) and torch.equal(v, v2)


def test_load_checks_its_arguments_first(converted):
    import sparsedm
    from sparsedm.ops import BackendUnavailableError

    with pytest.raises(ValueError, match="use torch.float16"):
        sparsedm.load(converted, dtype="fp8")
    with pytest.raises(ValueError, match="take a floating dtype"):
        sparsedm.load(converted, dtype=torch.int8)
    with pytest.raises(ValueError, match="is not a device"):
        sparsedm.load(converted, device="fp16")
    with pytest.raises(BackendUnavailableError, match="unknown backend 'bogus'"):
        sparsedm.load(converted, backend="bogus")
    loaded = sparsedm.load(converted, dtype="fp16")  # names of dtypes are accepted
    assert {p.dtype for p in loaded.model.parameters() if p.is_floating_point()} == {torch.float16}
