"""Opening source checkpoints safely: ``torch.load(mmap=True, weights_only=True)`` or safetensors.

Nothing here executes code from a checkpoint: pickles are read with ``weights_only=True`` and
memory-mapped where the file is in torch's zip format, so a tensor's bytes are only read when
the converter reaches it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import zipfile
from typing import Any

import torch

from sparsedm.convert.errors import ConvertError


def sha256_file(path: str, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def load_pickle(path: str) -> Any:
    """``torch.load`` a ``.pth``/``.pt``/``.ckpt`` file: weights only, memory-mapped when possible."""
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file", "check the path")
    if os.path.getsize(path) == 0:
        raise ConvertError(f"{path}: file is empty", "re-download or re-save the checkpoint")
    mmap = zipfile.is_zipfile(path)  # mmap needs torch's zip format; legacy pickles are read whole
    if not mmap:
        with open(path, "rb") as f:
            head = f.read(64)
        # every torch.save output is a zip (a truncated one still starts with PK) or a pickle
        if not head.startswith((b"\x80", b"PK")):
            raise ConvertError(f"{path}: not a PyTorch checkpoint ({_describe(head)})",
                               "pass a .pth/.pt/.ckpt state_dict, a .safetensors file, or a diffusers UNet folder")
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "Weights only load failed" in str(e):
            raise ConvertError(
                f"{path}: the checkpoint holds Python objects other than tensors and plain containers "
                f"({_unsupported_global(str(e)) or 'rejected by the weights-only unpickler'}); sparsedm never unpickles code",
                "re-save it as a plain state_dict (torch.save(model.state_dict(), path))",
            ) from None
        raise ConvertError(f"{path}: not a PyTorch checkpoint ({first})", "pass a .pth state_dict or a .safetensors file") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError, TypeError,
            AttributeError, MemoryError, struct.error) as e:  # what torch.load raises on garbage bytes
        msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ConvertError(f"{path}: cannot read the checkpoint, it is truncated or corrupted ({msg})",
                           "re-download or re-save it") from None


def _describe(head: bytes) -> str:
    """What the first bytes of a file that is no checkpoint look like."""
    try:
        text = head.decode("utf-8").lstrip()
    except UnicodeDecodeError:
        text = None
    if text is None or any(not (c.isprintable() or c.isspace()) for c in text):
        return f"it starts with the bytes {head[:8].hex(' ')}"
    if text[:1] in "{[":
        return "it is JSON text (a config.json? give the checkpoint, and the config with --config)"
    return f"it is text: {text[:30]!r}"


def _unsupported_global(message: str) -> str:
    for line in message.splitlines():
        if "Unsupported global" in line:
            return line.strip().rstrip(".")
    return ""


def load_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (lazily memory-mapped by safetensors) and the metadata of a safetensors file."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file", "check the path")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' own error types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ConvertError(f"{path}: not a readable safetensors file ({msg})", "re-download or re-save it") from None
    return tensors, metadata


def load_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file", "check the path") from None
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}: not valid JSON ({e})", "fix the file") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object", "fix the file")
    return data


def load_any(path: str) -> tuple[Any, dict[str, str]]:
    """Load a checkpoint by its content: safetensors (by header) or a torch pickle."""
    with open(path, "rb") as f:
        head = f.read(9)
    if path.endswith(".safetensors") or (len(head) == 9 and head[8:9] == b"{"):
        return load_safetensors(path)
    return load_pickle(path), {}
