"""The sparsedm file: one ``.safetensors`` file whose metadata holds a JSON manifest.

Layout (docs/FORMAT.md, "File format"): the standard safetensors container (8-byte
little-endian header length, a JSON header padded with spaces to a multiple of 8 bytes, then
the raw tensor bytes), with

- ``__metadata__["format"] = "pt"`` (so generic safetensors tools accept it) and
  ``__metadata__["sparsedm"]`` = the manifest as JSON;
- tensors placed largest element size first, so every tensor starts at an offset that is a
  multiple of its element size (no holes: safetensors rejects them).

The writer streams: the output shapes are planned from the source shapes, the header space is
reserved up front, each tensor (or row block of one) is written at its planned offset as soon
as it is produced, and the header is written last. Everything goes to a temporary file in the
output directory, which replaces the target with ``os.replace`` only after the last byte is
written; on any failure the temporary file is removed.

The reader validates the container before any tensor is touched (sizes, offsets, dtypes,
manifest schema, manifest against tensors) and raises :class:`FileFormatError` with one line
naming the problem.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch

from sparsedm._io import publish, temp_beside
from sparsedm.convert.errors import FileFormatError

FORMAT_NAME = "sparsedm"
FORMAT_VERSION = 1
MANIFEST_KEY = "sparsedm"
# A header larger than this is not something the writer produces: refuse instead of reading it.
MAX_HEADER_BYTES = 64 << 20

# safetensors dtype names <-> torch dtypes
DTYPE_NAMES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_NAME = {v: k for k, v in DTYPE_NAMES.items()}

# Layer kinds and the tensors each stores under "<layer>.<suffix>" (docs/FORMAT.md).
LAYER_KINDS = {
    "dense": ("weight",),
    "sparse24": ("values", "meta"),
    "int8": ("weight_q", "weight_scale"),
    "sparse24_int8": ("values", "meta", "weight_scale"),
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the file: its name, dtype and shape (known before its data is)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _header_bytes(entries: dict[str, Any], reserve_to: int = 0) -> bytes:
    raw = json.dumps(entries, separators=(",", ":"), sort_keys=False).encode("utf-8")
    size = max(len(raw), reserve_to)
    size += (-size) % 8  # data must start 8-byte aligned
    return raw + b" " * (size - len(raw))


class AtomicWriter:
    """Write a safetensors file tensor by tensor, atomically.

    ``specs`` fixes every tensor's name, dtype and shape up front. Use as a context manager:
    ``write`` / ``write_rows`` put data at its planned place, ``commit(metadata)`` writes the
    header and renames the temporary file onto ``path``. Leaving the ``with`` block without a
    commit (an exception included) deletes the temporary file, so no partial file is ever left.
    """

    def __init__(self, path: str, specs: Iterable[TensorSpec], header_reserve: int = 0):
        self.path = os.path.abspath(path)
        specs = list(specs)
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"tensor name {dup!r} planned twice")
        # Largest element size first keeps every tensor aligned to its element size.
        order = sorted(specs, key=lambda s: -_itemsize(s.dtype))
        self.specs = {s.name: s for s in specs}
        self.offsets: dict[str, tuple[int, int]] = {}
        pos = 0
        for s in order:
            self.offsets[s.name] = (pos, pos + s.nbytes)
            pos += s.nbytes
        self.data_bytes = pos
        self._written = {name: 0 for name in self.specs}
        # Header size is fixed now (the data follows it), so the manifest written at commit
        # may grow by at most header_reserve bytes over a placeholder manifest of "{}".
        self._header_size = len(_header_bytes(self._entries({MANIFEST_KEY: "{}"}), 0)) + int(header_reserve)
        self._header_size += (-self._header_size) % 8
        self._file = None
        self._tmp: Optional[str] = None

    def _entries(self, metadata: dict[str, str]) -> dict[str, Any]:
        entries: dict[str, Any] = {"__metadata__": metadata}
        for name in sorted(self.specs, key=lambda n: self.offsets[n][0]):
            s = self.specs[name]
            entries[name] = {"dtype": TORCH_TO_NAME[s.dtype], "shape": list(s.shape), "data_offsets": list(self.offsets[name])}
        return entries

    def __enter__(self) -> "AtomicWriter":
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            raise FileFormatError(f"output directory {directory} does not exist", "create it or choose another -o path")
        fd, self._tmp = temp_beside(self.path)
        self._file = os.fdopen(fd, "r+b")
        self._file.truncate(8 + self._header_size + self.data_bytes)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None:  # not committed: remove the partial file
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the whole tensor ``name``."""
        self.write_rows(name, 0, tensor)

    def write_rows(self, name: str, row0: int, block: torch.Tensor) -> None:
        """Write rows ``row0 .. row0 + len(block)`` of tensor ``name`` (dim 0 blocks)."""
        spec = self.specs[name]
        if block.dtype != spec.dtype:
            raise ValueError(f"{name}: planned {spec.dtype}, got {block.dtype}")
        full = tuple(block.shape) == spec.shape
        if not full and (block.dim() != len(spec.shape) or tuple(block.shape[1:]) != spec.shape[1:]):
            raise ValueError(f"{name}: planned shape {spec.shape}, got a block of shape {tuple(block.shape)}")
        row_bytes = spec.nbytes // spec.shape[0] if spec.shape and spec.shape[0] else spec.nbytes
        begin = self.offsets[name][0] + (row0 * row_bytes if spec.shape else 0)
        data = block.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        if begin + data.nbytes > self.offsets[name][1]:
            raise ValueError(f"{name}: rows {row0}.. overrun the planned shape {spec.shape}")
        self._file.seek(8 + self._header_size + begin)
        self._file.write(memoryview(data))
        self._written[name] += data.nbytes

    def commit(self, metadata: dict[str, str]) -> None:
        """Write the header and atomically move the file into place."""
        missing = [n for n, s in self.specs.items() if self._written[n] != s.nbytes]
        if missing:
            raise ValueError(f"tensors not completely written: {missing[:5]}")
        header = _header_bytes(self._entries(metadata), self._header_size)
        if len(header) != self._header_size:
            raise ValueError(f"manifest grew beyond the reserved header space ({len(header)} > {self._header_size} bytes)")
        self._file.seek(0)
        self._file.write(struct.pack("<Q", len(header)))
        self._file.write(header)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        publish(self._tmp, self.path)
        self._tmp = None


# ----------------------------------------------------------------------------- reading


@dataclass
class FileHeader:
    """The validated container header of a sparsedm file."""

    path: str
    tensors: dict[str, TensorSpec]
    metadata: dict[str, str]
    manifest: dict[str, Any]
    header_bytes: int
    file_bytes: int


def _bad(path: str, problem: str, fix: str = "re-run `sparsedm convert` to write the file again") -> FileFormatError:
    return FileFormatError(f"{path}: {problem}", fix)


def read_header(path: str) -> FileHeader:
    """Parse and validate the safetensors container and the sparsedm manifest of ``path``."""
    name = os.fspath(path)
    if os.path.isdir(name):
        raise FileFormatError(f"{name} is a directory, not a converted file", "give the .safetensors file `sparsedm convert` wrote")
    if not os.path.isfile(name):
        raise FileFormatError(f"{name}: no such file", "check the path")
    size = os.path.getsize(name)
    with open(name, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _bad(name, f"file is {size} bytes, too short to be a safetensors file (truncated?)")
        (n,) = struct.unpack("<Q", head)
        torch_magic = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # zip, pickle protocols 2-5
        if (n == 0 or n > MAX_HEADER_BYTES or n > size - 8) and head.startswith(torch_magic):
            # not a safetensors length, and torch.save's zip or pickle magic
            raise FileFormatError(f"{name} is a PyTorch checkpoint, not a file written by `sparsedm convert`",
                                  f"convert it first: sparsedm convert {name} -o model.safetensors [--preset NAME]")
        if n == 0 or n > MAX_HEADER_BYTES or n > size - 8:
            raise _bad(name, f"header length field says {n} bytes but the file has {size - 8} bytes after it "
                       "(truncated, or not a safetensors file)")
        raw = f.read(n)
    try:
        entries = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(name, f"header is not valid JSON ({e.__class__.__name__}: {e})") from None
    if not isinstance(entries, dict):
        raise _bad(name, "header is not a JSON object")
    metadata = entries.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _bad(name, "header __metadata__ must map strings to strings")
    data_bytes = size - 8 - n
    specs: dict[str, TensorSpec] = {}
    spans = []
    for key, info in entries.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _bad(name, f"tensor {key!r}: header entry must have exactly dtype, shape, data_offsets")
        dtype = DTYPE_NAMES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise _bad(name, f"tensor {key!r}: unknown dtype {info['dtype']!r}")
        shape, offs = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 1 << 40 for d in shape):
            raise _bad(name, f"tensor {key!r}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs) and 0 <= offs[0] <= offs[1]):
            raise _bad(name, f"tensor {key!r}: data_offsets {offs!r} is not [begin, end] with begin <= end")
        spec = TensorSpec(key, dtype, tuple(shape))
        if offs[1] - offs[0] != spec.nbytes:
            raise _bad(name, f"tensor {key!r}: {offs[1] - offs[0]} bytes stored but dtype {info['dtype']} and shape "
                       f"{shape} need {spec.nbytes}")
        specs[key] = spec
        spans.append((offs[0], offs[1], key))
    spans.sort()
    pos = 0
    for begin, end, key in spans:
        if begin != pos:
            raise _bad(name, f"tensor {key!r} starts at byte {begin} of the data but the previous tensor ends at {pos} "
                       "(overlapping or holes)")
        pos = end
    if pos != data_bytes:
        what = "truncated" if pos > data_bytes else "has trailing bytes"
        raise _bad(name, f"file {what}: the header describes {pos} data bytes, the file holds {data_bytes}")
    if MANIFEST_KEY not in metadata:
        raise FileFormatError(f"{name}: a safetensors file without a sparsedm manifest",
                              "convert the checkpoint with `sparsedm convert` first")
    try:
        manifest = json.loads(metadata[MANIFEST_KEY])
    except json.JSONDecodeError as e:
        raise _bad(name, f"manifest is not valid JSON ({e})") from None
    check_manifest(manifest, specs, name)
    return FileHeader(name, specs, metadata, manifest, n, size)


def check_manifest(manifest: Any, specs: dict[str, TensorSpec], path: str = "<file>") -> None:
    """The manifest's schema, and every layer's tensors present with consistent shapes and dtypes."""
    if not isinstance(manifest, dict):
        raise _bad(path, "manifest is not a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise _bad(path, f"manifest format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    version = manifest.get("format_version")
    if type(version) is not int:
        raise _bad(path, f"manifest format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise FileFormatError(f"{path}: file format version {version} is newer than this sparsedm reads ({FORMAT_VERSION})",
                              "upgrade sparsedm")
    arch = manifest.get("architecture")
    if not isinstance(arch, dict) or not isinstance(arch.get("arch"), str) or not isinstance(arch.get("config"), dict):
        raise _bad(path, "manifest architecture must be {\"arch\": str, \"config\": {...}, ...}")
    layers = manifest.get("layers")
    if not isinstance(layers, dict):
        raise _bad(path, "manifest layers must be an object")
    for layer, info in layers.items():
        if not isinstance(info, dict) or info.get("kind") not in LAYER_KINDS:
            raise _bad(path, f"layer {layer!r}: kind must be one of {sorted(LAYER_KINDS)}")
        wshape = info.get("weight_shape")
        if not isinstance(wshape, list) or len(wshape) not in (2, 4) or not all(type(d) is int and d > 0 for d in wshape):
            raise _bad(path, f"layer {layer!r}: weight_shape {wshape!r} must list 2 or 4 positive integers")
        n = wshape[0]
        k = math.prod(wshape[1:])
        need = {f"{layer}.{suffix}" for suffix in LAYER_KINDS[info["kind"]]}
        missing = sorted(need - set(specs))
        if missing:
            raise _bad(path, f"layer {layer!r} ({info['kind']}) lacks tensor(s) {', '.join(missing)}")
        kind = info["kind"]
        expect: dict[str, tuple[tuple[int, ...], Optional[torch.dtype]]] = {}
        if kind == "dense":
            expect[f"{layer}.weight"] = (tuple(wshape), None)
        elif kind == "int8":
            expect[f"{layer}.weight_q"] = ((n, k), torch.int8)
            expect[f"{layer}.weight_scale"] = ((n,), torch.float32)
        else:
            if k % 8 != 0:
                raise _bad(path, f"layer {layer!r} is declared 2:4 but its reduction length K={k} is not a multiple of 8")
            expect[f"{layer}.values"] = ((n, k // 2), torch.int8 if kind == "sparse24_int8" else None)
            expect[f"{layer}.meta"] = ((n, k // 8), torch.uint8)
            if kind == "sparse24_int8":
                expect[f"{layer}.weight_scale"] = ((n,), torch.float32)
        if f"{layer}.bias" in specs:
            expect[f"{layer}.bias"] = ((n,), None)
        for key, (shape, dtype) in expect.items():
            spec = specs[key]
            if spec.shape != shape or (dtype is not None and spec.dtype != dtype):
                want = f"{list(shape)} {dtype_name(dtype) if dtype else ''}".strip()
                raise _bad(path, f"tensor {key!r} is {list(spec.shape)} {dtype_name(spec.dtype)} but the manifest's layer "
                           f"{layer!r} ({kind}, weight_shape {wshape}) needs {want}")
            if dtype is None and not spec.dtype.is_floating_point:
                raise _bad(path, f"tensor {key!r} must be floating point, is {dtype_name(spec.dtype)}")


def count_nonfinite(t: torch.Tensor) -> int:
    """NaN/Inf values in a floating tensor (0 for other dtypes). ``aminmax`` first (NaN and
    +-Inf reach its min or max; one pass, nothing allocated: about 15 ms per 512 MiB of fp16 on
    2 cores): the elementwise count, with a mask as large as the tensor, runs only when something
    is wrong."""
    if not t.is_floating_point() or t.numel() == 0:
        return 0
    low, high = torch.aminmax(t)
    if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
        return 0
    return int((~torch.isfinite(t)).sum())


def read_tensors(header: FileHeader, device: str = "cpu", names: Optional[Iterable[str]] = None) -> dict[str, torch.Tensor]:
    """Load tensors of a validated file (all, or ``names``) onto ``device``."""
    from safetensors import safe_open

    try:
        with safe_open(header.path, framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in (names if names is not None else header.tensors)}
    except Exception as e:  # safetensors raises its own types; keep the one-line contract
        raise _bad(header.path, f"cannot read tensors ({e.__class__.__name__}: {e})") from None
