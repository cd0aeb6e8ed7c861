"""The conversion pipeline: source checkpoint -> one sparsedm ``.safetensors`` file.

read (readers.py) -> resolve the architecture and build it on the meta device (expected keys,
shapes, layer types) -> plan every layer (sparse24 / sparse24_int8 / int8 / dense) and every
output tensor -> stream: each source tensor is checked (finite), masked, compressed,
quantized and written in row blocks, so peak memory is a few row blocks beyond the
memory-mapped source -> the manifest goes into the header -> atomic rename.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

import sparsedm
from sparsedm.convert import arch as archs
from sparsedm.convert import checkpoint
from sparsedm.convert.errors import ConvertError
from sparsedm.convert.fileformat import (
    FORMAT_NAME, FORMAT_VERSION, MANIFEST_KEY, AtomicWriter, TensorSpec, count_nonfinite, dtype_name,
)
from sparsedm.convert.readers import Source, read
from sparsedm.formats import Sparse24FormatError, compress24, decompress24, gemm_view, mask24, quantize_weight_int8, unview_gemm

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Elements per streamed row block. Masking and compression make about 6 bytes of temporaries
# per fp32 input byte, so 1M-element blocks keep them near 25 MB, about 1x the largest U-ViT-H/2
# tensor (bench/bench_convert.py: H/2 peak extra RAM and time); smaller blocks cost Python
# overhead without lowering the peak much further.
BLOCK_ELEMENTS = 1 << 20


# ------------------------------------------------------------------------- 2:4 kernels

# keep-pattern of a group (bit i = position i kept) -> kept positions and the canonical nibble
_I0 = torch.zeros(16, dtype=torch.int64)
_I1 = torch.zeros(16, dtype=torch.int64)
_NIBBLE = torch.zeros(16, dtype=torch.uint8)
for _p in range(16):
    _pos = [i for i in range(4) if _p >> i & 1]
    if len(_pos) == 2:
        _I0[_p], _I1[_p], _NIBBLE[_p] = _pos[0], _pos[1], _pos[0] | _pos[1] << 2


def top2_compress(mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask and compress a finite ``[N, K]`` matrix in one pass (K a multiple of 8).

    Same result as ``compress24(mat * mask24(mat))`` (top-2 |w| per group of 4, ties to the
    lower index; tests/convert check the equality), about 2x faster because it ranks the 4
    elements of each group with 6 comparisons instead of a sort.
    """
    n, k = mat.shape
    groups = mat.reshape(n, k // 4, 4)
    a = groups.abs()
    if a.dtype != torch.float32:
        a = a.float()
    a0, a1, a2, a3 = a.unbind(-1)
    # rank of each element = how many others outrank it (larger, or equal at a lower index)
    r0 = (a1 > a0).to(torch.uint8) + (a2 > a0) + (a3 > a0)
    r1 = (a0 >= a1).to(torch.uint8) + (a2 > a1) + (a3 > a1)
    r2 = (a0 >= a2).to(torch.uint8) + (a1 >= a2) + (a3 > a2)
    r3 = (a0 >= a3).to(torch.uint8) + (a1 >= a3) + (a2 >= a3)
    pattern = ((r0 < 2).to(torch.uint8) | ((r1 < 2).to(torch.uint8) << 1)
               | ((r2 < 2).to(torch.uint8) << 2) | ((r3 < 2).to(torch.uint8) << 3)).long()
    kept = torch.stack((_I0[pattern], _I1[pattern]), -1)
    values = torch.gather(groups, -1, kept).reshape(n, k // 2)
    nibbles = _NIBBLE[pattern]
    meta = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
    return values, meta


def flat_mask(weight: torch.Tensor) -> torch.Tensor:
    """SparseDM's rule on the whole flattened (KRSC for convs) weight: top-2 |w| per group of 4
    consecutive elements, groups crossing rows when K is not a multiple of 4. Returns the
    masked weight in its own layout."""
    mat = gemm_view(weight)
    flat = mat.reshape(-1, 4)
    masked = (flat * mask24(flat)).reshape(mat.shape)
    return unview_gemm(masked, weight.shape) if weight.dim() == 4 else masked


# ------------------------------------------------------------------------------ planning


@dataclass
class LayerPlan:
    name: str
    op: str  # "linear" | "conv2d"
    weight_shape: tuple[int, ...]
    kind: str  # "dense" | "sparse24" | "int8" | "sparse24_int8"
    mask: Optional[str]  # how the 2:4 pattern is obtained: "topk-flat", "topk", "given", "zeros", None
    dtype: torch.dtype
    has_bias: bool
    note: str = ""
    retained: Optional[float] = None

    @property
    def k(self) -> int:
        return math.prod(self.weight_shape[1:])

    def manifest(self) -> dict:
        return {
            "kind": self.kind,
            "op": self.op,
            "weight_shape": list(self.weight_shape),
            "sparsity": "2:4" if self.kind.startswith("sparse24") else None,
            "quantization": "int8" if self.kind.endswith("int8") else None,
            "dtype": dtype_name(self.dtype),
            "mask": self.mask,
            "retained_magnitude": None if self.retained is None else round(self.retained, 6),
            "note": self.note or None,
        }


@dataclass
class Summary:
    output: str
    detected: str
    arch: str
    layers: list[LayerPlan]
    source_bytes: int
    file_bytes: int
    dense_fp16_bytes: int
    notes: list[str] = field(default_factory=list)

    def table(self, logged: bool = False) -> str:
        """The summary; ``logged=True`` leaves out what ``convert`` already logged as it went
        (the detection line and the notes), for a caller that printed those."""
        count = {}
        for p in self.layers:
            count[p.kind] = count.get(p.kind, 0) + 1
        lines = ([] if logged else [f"{self.detected}"]) + [f"architecture {self.arch}; layers: " + ", ".join(f"{v} {k}" for k, v in sorted(count.items()))]
        w = max([len(p.name) for p in self.layers] + [5])
        lines.append(f"  {'layer':<{w}}  {'kind':<13} {'shape':<20} {'retained':>8}  note")
        for p in self.layers:
            ret = f"{p.retained:.4f}" if p.retained is not None else "-"
            lines.append(f"  {p.name:<{w}}  {p.kind:<13} {str(list(p.weight_shape)):<20} {ret:>8}  {p.note}")
        rets = [p.retained for p in self.layers if p.retained is not None]
        if rets:
            lines.append(f"retained magnitude (kept |w| / all |w|) over masked layers: mean {sum(rets) / len(rets):.4f}, "
                         f"min {min(rets):.4f}")
        lines.append(f"bytes: source {_mb(self.source_bytes)}, dense fp16 {_mb(self.dense_fp16_bytes)}, "
                     f"written {_mb(self.file_bytes)} ({self.file_bytes / max(self.source_bytes, 1):.3f}x source)")
        lines.append(f"wrote {self.output}")
        return "\n".join(lines + ([] if logged else self.notes))


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def resolve_architecture(src: Source, preset: Optional[str], config_path: Optional[str]) -> tuple[archs.Architecture, dict, dict]:
    """``(architecture, config, extra)`` where extra has resolution, in_channels, preset, sampler."""
    extra: dict[str, Any] = {"preset": None, "resolution": None, "in_channels": None, "sampler": None}
    if preset is not None and config_path is not None:
        raise ConvertError("--preset and --config both given", "pass one of them")
    if preset is not None:
        table = archs.presets()
        if preset not in table:
            raise ConvertError(f"unknown preset {preset!r}", f"choose one of {', '.join(sorted(table)) or '(none installed)'}")
        p = table[preset]
        name, config = p["arch"], dict(p["config"])
        if name in ("uvit", "ddpm_unet"):  # SparseDM's U-ViTs add a qkv bias to the published configs
            from sparsedm.models import config_for_checkpoint

            config = config_for_checkpoint(name, config, src.state.keys())
        extra.update(preset=preset, resolution=p.get("resolution"), in_channels=p.get("in_channels"), sampler=p.get("sampler"))
    elif config_path is not None:
        data = checkpoint.load_json(config_path)
        if "config" in data and isinstance(data["config"], dict):
            name, config = data.get("arch", src.arch), dict(data["config"])
            extra.update({k: data.get(k) for k in ("resolution", "in_channels", "sampler")})
        else:
            name, config = src.arch, data
        if name is None:
            raise ConvertError(f"{config_path}: no \"arch\" and the checkpoint's architecture was not recognised",
                               f"add \"arch\": one of {', '.join(archs.known_architectures())}")
    else:
        name, config = src.arch, src.config
        if name is None:
            raise ConvertError(f"{src.path}: unknown architecture (the keys match none of "
                               f"{', '.join(archs.known_architectures()) or 'the installed ones'})",
                               "pass --preset NAME or --config FILE.json")
    architecture = archs.get_architecture(name)
    if config is None:
        if architecture.infer_config is None:
            raise ConvertError(f"architecture {name!r} cannot infer its config from the shapes", "pass --preset or --config")
        try:
            config = dict(architecture.infer_config({k: v for k, v in src.state.items()}))
        except ConvertError:
            raise
        except Exception as e:
            raise ConvertError(f"cannot infer the {name} config from the checkpoint's shapes ({e})",
                               "pass --preset NAME or --config FILE.json") from None
        extra["inferred"] = True
    for key in ("img_size", "resolution", "sample_size"):
        if extra["resolution"] is None and isinstance(config.get(key), int):
            extra["resolution"] = config[key]
    for key in ("in_chans", "in_channels", "in_channel"):
        if extra["in_channels"] is None and isinstance(config.get(key), int):
            extra["in_channels"] = config[key]
    if src.sampler is not None:
        extra["sampler"] = src.sampler  # the checkpoint's own settings win over a preset's
    return architecture, config, extra


def _check_keys(src: Source, expected: dict[str, torch.Tensor]) -> None:
    missing = [k for k in expected if k not in src.state]
    unexpected = [k for k in src.state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise ConvertError(f"{src.path}: the checkpoint does not match the architecture ({'; '.join(parts)})",
                           "check --preset/--config (or --from) against the checkpoint")
    for k, v in expected.items():
        if tuple(src.state[k].shape) != tuple(v.shape):
            raise ConvertError(f"{src.path}: {k} has shape {list(src.state[k].shape)}, the architecture expects {list(v.shape)}",
                               "check --preset/--config against the checkpoint")


def _already_zeroed(src: Source, names: list[str]) -> bool:
    """Every listed layer's weight is 2:4 in its zeros (checked lazily: the first miss stops)."""
    if not names:
        return False
    for name in names:
        w = src.state[f"{name}.weight"]
        if gemm_view(w).shape[1] % 4 != 0 or not _is_24(w):
            return False
    return True


def _nearly_24(src: Source, names: list[str], max_fraction: float = 0.01) -> Optional[tuple[str, int, int]]:
    """The first listed layer that is 2:4 in its zeros but for a few groups (at most
    ``max_fraction`` of them): ``(name, bad groups, groups)``; None when there is none. A
    checkpoint like that was meant to be 2:4 (a training bug, an edit, a rounding) and should
    not silently become dense."""
    for name in names:
        mat = gemm_view(src.state[f"{name}.weight"])
        if mat.shape[1] % 4:
            continue
        bad = int(((mat.reshape(mat.shape[0], -1, 4) != 0).sum(-1) > 2).sum())
        total = mat.numel() // 4
        if 0 < bad <= max_fraction * total:
            return name, bad, total
    return None


def _is_24(w: torch.Tensor) -> bool:
    mat = gemm_view(w)
    for r0 in range(0, mat.shape[0], max(1, BLOCK_ELEMENTS // max(mat.shape[1], 1))):
        block = gemm_view(w[r0:r0 + max(1, BLOCK_ELEMENTS // max(mat.shape[1], 1))])
        if bool(((block.reshape(block.shape[0], -1, 4) != 0).sum(-1) > 2).any()):
            return False
    return True


def plan_layers(src: Source, model: nn.Module, architecture: archs.Architecture, *, quant: Optional[str],
                dtype: Optional[torch.dtype], prune: bool, strict: bool) -> list[LayerPlan]:
    candidates = set(architecture.sparse_layers(model))
    plans = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or f"{name}.weight" not in src.state:
            continue
        w = src.state[f"{name}.weight"]
        op = "linear" if isinstance(module, nn.Linear) else "conv2d"
        plan = LayerPlan(name, op, tuple(w.shape), "dense", None, dtype or w.dtype, f"{name}.bias" in src.state)
        if src.rule == "given":
            mask = "given" if f"{name}.weight" in src.masks else None
        elif name not in candidates:
            mask = None
        elif src.rule == "dense" or (src.rule == "zeros" and prune):
            mask = "topk" if prune else None  # --prune: the 2:4 rule, also on a zeroed source's stray groups
        else:
            mask = src.rule
        if isinstance(module, nn.Conv2d) and mask is not None and module.groups != 1:
            plan.note = f"groups={module.groups} convolution stays dense"
            mask = None
        plan.mask = mask
        k = plan.k
        if mask is not None:
            if k % 8 == 0:
                plan.kind = "sparse24"
            elif strict:
                raise ConvertError(f"layer {name} is declared 2:4 but its reduction length K={k} is not a multiple of 8",
                                   "drop --strict to keep it dense, or pad its input channels")
            elif mask == "topk":
                plan.mask, plan.note = None, f"K={k} is not a multiple of 8: not pruned, stays dense"
            else:
                plan.note = f"K={k} is not a multiple of 8: masked weights stored dense"
        wants_int8 = quant == "int8" and op == "linear" and (name in candidates or mask is not None)
        if wants_int8:
            plan.kind = "sparse24_int8" if plan.kind == "sparse24" else "int8"
        if op == "conv2d" and quant == "int8" and plan.kind == "sparse24":
            plan.note = "convolution: int8 not supported, kept in " + dtype_name(plan.dtype)
        plans.append(plan)
    return plans


def _specs(src: Source, plans: list[LayerPlan], dtype: Optional[torch.dtype]) -> list[TensorSpec]:
    by_weight = {f"{p.name}.weight": p for p in plans}
    specs = []
    for key, t in src.state.items():
        target = (dtype or t.dtype) if t.is_floating_point() else t.dtype
        p = by_weight.get(key)
        if p is None:
            specs.append(TensorSpec(key, target, tuple(t.shape)))
            continue
        n, k = p.weight_shape[0], p.k
        if p.kind == "dense":
            specs.append(TensorSpec(key, p.dtype, p.weight_shape))
        elif p.kind == "int8":
            specs += [TensorSpec(f"{p.name}.weight_q", torch.int8, (n, k)), TensorSpec(f"{p.name}.weight_scale", torch.float32, (n,))]
        elif p.kind == "sparse24":
            specs += [TensorSpec(f"{p.name}.values", p.dtype, (n, k // 2)), TensorSpec(f"{p.name}.meta", torch.uint8, (n, k // 8))]
        else:
            specs += [TensorSpec(f"{p.name}.values", torch.int8, (n, k // 2)), TensorSpec(f"{p.name}.meta", torch.uint8, (n, k // 8)),
                      TensorSpec(f"{p.name}.weight_scale", torch.float32, (n,))]
    return specs


# ----------------------------------------------------------------------------- streaming


def _check_finite(key: str, t: torch.Tensor, path: str) -> None:
    bad = count_nonfinite(t)
    if bad:
        raise ConvertError(f"{path}: tensor {key} has {bad} NaN/Inf value(s)",
                           "fix or re-export the checkpoint (a diverged run or a corrupted file)")


def _write_layer(writer: AtomicWriter, src: Source, p: LayerPlan) -> None:
    w = src.state[f"{p.name}.weight"]
    n, k = p.weight_shape[0], p.k
    given = src.masks.get(f"{p.name}.weight")
    if p.kind in ("dense", "int8"):
        _check_finite(f"{p.name}.weight", w, src.path)
        if p.mask == "topk-flat":
            w = flat_mask(w)
        elif p.mask == "given":
            w = w * given
        if p.kind == "dense":
            writer.write(f"{p.name}.weight", w.to(p.dtype))
        else:
            q, s = quantize_weight_int8(gemm_view(w).float())
            writer.write(f"{p.name}.weight_q", q)
            writer.write(f"{p.name}.weight_scale", s)
        return
    rows = max(1, BLOCK_ELEMENTS // k)
    kept_sum = total_sum = 0.0
    for r0 in range(0, n, rows):
        block = w[r0:r0 + rows]
        _check_finite(f"{p.name}.weight", block, src.path)
        mat = gemm_view(block)
        if p.mask in ("topk", "topk-flat"):
            values, meta = top2_compress(mat)
            kept_sum += float(values.abs().sum(dtype=torch.float64))
            total_sum += float(mat.abs().sum(dtype=torch.float64))
        else:
            if p.mask == "given":
                m = gemm_view(given[r0:r0 + rows])
                counts = m.reshape(m.shape[0], -1, 4).sum(-1)
                if bool((counts > 2).any()):
                    row, group = (int(v) for v in (counts > 2).nonzero()[0])
                    raise ConvertError(f"{src.path}: the stored mask of {p.name} keeps {int(counts[row, group])} of 4 "
                                       f"elements in row {r0 + row}, group {group}: not a 2:4 mask",
                                       "re-export the checkpoint, or pass --from sparsedm to recompute the masks")
                mat = mat * m
            try:
                values, meta = compress24(mat)
            except Sparse24FormatError as e:
                raise ConvertError(f"{src.path}: layer {p.name} is not 2:4 sparse in its zeros "
                                   f"({str(e).split(': ', 2)[-1].split(';')[0]}, rows from {r0})",
                                   "pass --from sparsedm to apply the top-2 mask, or --prune") from None
        if p.kind == "sparse24":
            writer.write_rows(f"{p.name}.values", r0, values.to(p.dtype))
            writer.write_rows(f"{p.name}.meta", r0, meta)
        else:
            q, s = quantize_weight_int8(decompress24(values.float(), meta))
            vq, mq = compress24(q)
            writer.write_rows(f"{p.name}.values", r0, vq)
            writer.write_rows(f"{p.name}.meta", r0, mq)
            writer.write_rows(f"{p.name}.weight_scale", r0, s)
    if p.mask in ("topk", "topk-flat"):
        p.retained = kept_sum / total_sum if total_sum > 0 else 1.0


def convert(src_path: str, out_path: str, *, source_format: Optional[str] = None, preset: Optional[str] = None,
            config_path: Optional[str] = None, quant: Optional[str] = None, dtype: Optional[str] = None,
            prune: bool = False, strict: bool = False, progress: bool = False,
            log: Callable[[str], None] = lambda s: None) -> Summary:
    """Convert ``src_path`` into the sparsedm file ``out_path``; see docs/CONVERT.md."""
    if quant not in (None, "int8"):
        raise ConvertError(f"--quant {quant!r} is not supported", "use --quant int8 or leave it out")
    if dtype is not None and dtype not in DTYPES:
        raise ConvertError(f"--dtype {dtype!r} is not supported", f"choose one of {', '.join(DTYPES)}")
    if prune and strict:
        raise ConvertError("--prune and --strict contradict each other", "pass one of them")
    target = DTYPES[dtype] if dtype else None
    out_path = os.fspath(out_path)
    if os.path.isdir(out_path):
        raise ConvertError(f"-o {out_path} is a directory", "give a file name ending in .safetensors")
    if os.path.abspath(out_path) == os.path.abspath(src_path):
        raise ConvertError("the output would overwrite the source checkpoint", "choose another -o path")
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        raise ConvertError(f"-o {out_path}: the directory {out_dir} does not exist", "create it first")
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ConvertError(f"-o {out_path}: the directory {out_dir} is not writable", "choose a directory you can write to")

    src = read(src_path, source_format)
    log(src.detected)
    architecture, config, extra = resolve_architecture(src, preset, config_path)
    model = archs.build_model(architecture, config, "meta")
    expected = model.state_dict()
    _check_keys(src, expected)
    if src.detected.startswith("detected") and src.rule in ("topk-flat", "dense"):
        names = [n for n in architecture.sparse_layers(model) if f"{n}.weight" in src.state]
        if _already_zeroed(src, names):
            src.reader, src.rule = "zeroed", "zeros"
            src.detected = "detected zeroed: every sparse layer is already 2:4 in its zeros (verified)"
            log(src.detected)
        elif not prune and (near := _nearly_24(src, names)) is not None:
            name, bad, total = near
            msg = (f"layer {name} is almost 2:4 in its zeros ({bad} of {total} groups of 4 hold more than 2 nonzeros), "
                   f"so no layer is read as 2:4")
            if strict:
                raise ConvertError(msg, "fix those groups, or pass --prune to apply the 2:4 rule (it zeroes the smallest)")
            note = f"note: {msg}; --prune applies the 2:4 rule to them (--strict makes this an error)"
            src.notes.append(note)
            log(note)
    plans = plan_layers(src, model, architecture, quant=quant, dtype=target, prune=prune, strict=strict)
    specs = _specs(src, plans, target)
    by_weight = {f"{p.name}.weight": p for p in plans}
    source_bytes = sum(t.numel() * t.element_size() for t in src.state.values())
    sha = checkpoint.sha256_file(src.path) if os.path.isfile(src.path) else None

    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sparsedm_version": sparsedm.__version__,
        "architecture": {"arch": architecture.name, "config": config, **{k: extra.get(k) for k in ("resolution", "in_channels", "preset")}},
        "sampler": extra.get("sampler"),
        "source": {"file": os.path.basename(src.path.rstrip("/")), "sha256": sha, "reader": src.reader, "detected": src.detected},
        "conversion": {"quant": quant, "dtype": dtype, "prune": prune, "strict": strict},
        "layers": {p.name: p.manifest() for p in plans},
    }
    try:
        placeholder = json.dumps(json.dumps(manifest))  # as it appears in the header: a JSON string, escaped
    except TypeError as e:
        raise ConvertError(f"the architecture config is not JSON-serializable ({e})", "pass --config with plain values") from None
    # retained_magnitude is filled in after streaming: reserve room for one float per layer
    reserve = len(placeholder) + 24 * len(plans) + 512

    from tqdm import tqdm

    bar = tqdm(total=source_bytes, unit="B", unit_scale=True, desc="convert", disable=not progress, leave=False)
    try:
        with AtomicWriter(out_path, specs, header_reserve=reserve) as writer:
            for key, t in src.state.items():
                p = by_weight.get(key)
                if p is not None:
                    _write_layer(writer, src, p)
                else:
                    _check_finite(key, t, src.path)
                    target_dtype = (target or t.dtype) if t.is_floating_point() else t.dtype
                    writer.write(key, t.to(target_dtype))
                bar.update(t.numel() * t.element_size())
            manifest["layers"] = {p.name: p.manifest() for p in plans}
            writer.commit({"format": "pt", MANIFEST_KEY: json.dumps(manifest)})
    except OSError as e:  # disk full, a directory that refuses files (/proc), a lost mount: nothing was left behind
        raise ConvertError(f"cannot write {out_path}: {e.strerror or e}", "choose another -o path (free space, permissions)") from None
    finally:
        bar.close()
    dense_fp16 = sum(t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in src.state.values())
    return Summary(out_path, src.detected, architecture.name, plans, source_bytes, os.path.getsize(out_path), dense_fp16, src.notes)
