"""``sparsedm sample``: sample images from a converted file, a preset + state_dict, or a factory.

    sparsedm sample MODEL -n 64 --steps N --seed S -o samples.png [--npz samples.npz]
    torchrun --nproc-per-node G -m sparsedm.sampling MODEL -n 50000 --npz samples.npz

``register(subparsers)`` adds the subcommand to the ``sparsedm`` parser; ``main(argv)`` runs it
alone (``python -m sparsedm.sampling``, what torchrun launches).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import struct
import sys
import time
from typing import IO, Callable, Optional, Sequence

import numpy as np
import torch

from sparsedm._io import publish, temp_beside
from sparsedm.sampling.run import label_classes, label_rows, shard

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1  # torch.Generator.manual_seed and the step-noise hash take int64 seeds


class SampleError(Exception):
    """A user-facing error: what was wrong and what to do."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a converted .safetensors file (sparsedm convert); or use --preset / --factory")
    p.add_argument("--preset", help="a model preset (sparsedm.models.PRESETS) instead of a converted file")
    p.add_argument("--state-dict", help="with --preset: a plain state_dict (.pth/.safetensors) to load")
    p.add_argument("--prune", action="store_true",
                   help="with --preset: mask the layers SparseDM sparsifies by the 2:4 rule (2 largest |w| of each 4) "
                   "and run them on the 2:4 kernels; for checkpoints that keep their pruned weights (SparseDM's "
                   "nnet_ema.pth). Without it only layers already exactly 2:4 are swapped")
    p.add_argument("--quant", choices=["int8"], default=None,
                   help="with --preset: int8 weights and activations (W8A8) for the swapped 2:4 layers and the dense linears")
    p.add_argument("--factory", help="MODULE:FUNCTION returning {model, sampler, shape, num_classes} "
                   "(e.g. sparsedm.sampling.testing:tiny_factory)")
    p.add_argument("-n", "--num-samples", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's sampler config)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i, an int64 (default 0)")
    p.add_argument("-o", "--output", help="PNG grid of the samples (at most --grid-max images)")
    p.add_argument("--npz", help=".npz for FID tools: uint8 NHWC under arr_0 (+ labels)")
    p.add_argument("--grid-max", type=int, default=256, help="images in the PNG grid, 1 or more (default 256)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="network dtype (default: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per network call per device (default 64)")
    p.add_argument("--backend", default=None, help="kernel backend for sparse/int8 layers (auto, triton, cuda, ...)")
    p.add_argument("--sampler", dest="sampler_kind", default=None,
                   help="override the sampler kind (euler_maruyama, euler_ode, ddim, ddpm, dpm_solver, dpm_solver++)")
    p.add_argument("--order", type=int, default=None, help="DPM-Solver order (1-3)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (0: deterministic, 1: DDPM)")
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance, U-ViT form: cond + s (cond - uncond)")
    p.add_argument("--class-label", type=int, default=None, help="sample this class only (default: random per sample)")
    p.add_argument("--sampler-json", default=None, help="a JSON sampler config (docs/SAMPLING.md) replacing the model's")
    p.add_argument("--autoencoder", default=None, metavar="PATH",
                   help="latent models: the KL autoencoder that decodes latents to images, a diffusers AutoencoderKL "
                   "folder or its state_dict file (U-ViT's autoencoder_kl.pth works); needs diffusers")
    p.add_argument("--latent-scale", type=float, default=None, metavar="S",
                   help="latents are divided by this before decoding (default: the model's autoencoder_scale, "
                   "else the autoencoder's scaling_factor, else 0.18215)")
    p.add_argument("--context", default=None, metavar="FILE",
                   help="text models: .npy of CLIP text embeddings, [77, 768] or [P, 77, 768]; sample i uses prompt i %% P")
    p.add_argument("--uncond-context", default=None, metavar="FILE",
                   help="text models: .npy [77, 768] of the empty prompt, for classifier-free guidance "
                   "(U-ViT's empty_context.npy)")
    p.add_argument("--cuda-graph", action="store_true", help="replay the network from a CUDA graph (static shapes)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (conv models)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sample", help="sample images (PNG grid, .npz for FID); shards over GPUs under torchrun",
        description="Sample images from a converted model, a preset + state_dict, or a factory. "
        "Sample i uses seed + i, so the same seeds give the same images whatever the batch size or the "
        "number of GPUs (torchrun --nproc-per-node G -m sparsedm.sampling ...).")
    add_arguments(p)
    p.set_defaults(func=run_sample)
    return p


# --------------------------------------------------------------------------------------------
# loading


def _load_factory(spec: str, device: str, dtype) -> dict:
    if ":" not in spec:
        raise SampleError(f"--factory {spec!r} must be MODULE:FUNCTION", "e.g. sparsedm.sampling.testing:tiny_factory")
    mod, fn = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise SampleError(f"--factory {spec}: {e}", "check the module path and the function name") from None
    out = factory(device=device, dtype=dtype)
    missing = {"model", "sampler", "shape"} - set(out)
    if missing:
        raise SampleError(f"--factory {spec} returned no {sorted(missing)}", "return {model, sampler, shape, num_classes}")
    return out


def _load_preset(name: str, state_dict: Optional[str], device: str, dtype, *, prune: bool = False,
                 quant: Optional[str] = None, backend: Optional[str] = None) -> dict:
    try:
        import sparsedm.models as models
    except ImportError:
        raise SampleError("--preset needs sparsedm.models, which is not in this installation",
                          "use a converted file (sparsedm convert) or --factory") from None
    presets = getattr(models, "PRESETS", {})
    if name not in presets:
        raise SampleError(f"unknown preset {name!r}", f"known presets: {', '.join(sorted(presets)) or 'none'}")
    p = presets[name]
    sd = _read_state_dict(state_dict) if state_dict else None
    config = models.config_for_checkpoint(p["arch"], p["config"], sd.keys()) if sd is not None else p["config"]
    if sd is not None:
        # Compare against a meta-device build (no memory, no init) so a checkpoint of another size
        # fails in one line before the real model is built (load_state_dict raises on a size
        # mismatch with a line per tensor, even with strict=False).
        _check_state_dict_fits(name, state_dict, models.build(p["arch"], config, device="meta").state_dict(), sd)
    model = models.build(p["arch"], config, device=device)
    if sd is not None:
        model.load_state_dict(sd)
    else:
        print(f"sparsedm sample: preset {name} with random weights (no --state-dict): images will be noise-like",
              file=sys.stderr)
    model = model.to(device=device, dtype=dtype).eval()
    _optimize_preset(name, p["arch"], model, state_dict, prune, quant, backend)
    return {"model": model, "sampler": p.get("sampler"), "shape": (p["in_channels"], p["resolution"], p["resolution"]),
            "num_classes": max(int(p["config"].get("num_classes", 0) or 0), 0), "context_shape": _context_shape(p["config"])}


def _file_head(path: str, option: str = "", n: int = 16) -> bytes:
    """The first ``n`` bytes of an input file; a file that cannot be opened is a SampleError naming it."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise SampleError(f"{option} {path} cannot be read: {e.strerror}".lstrip(),
                          "check the path and the file's permissions (chmod u+r), or copy it somewhere readable") from None


def _checkpoint_kind(path: str, head: bytes) -> Optional[str]:
    """"torch" (torch.save's zip or pickle), "safetensors", or None when the first bytes are neither."""
    if head.startswith((b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")):
        return "torch"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= os.path.getsize(path) - 8 and head[8:9] == b"{":
            return "safetensors"
    return None


def _is_converted(path: str) -> bool:
    """Whether a .safetensors file is one `sparsedm convert` wrote (its metadata holds the manifest)."""
    from safetensors import safe_open

    from sparsedm.convert.fileformat import MANIFEST_KEY

    try:
        with safe_open(path, framework="pt") as f:
            return MANIFEST_KEY in (f.metadata() or {})
    except Exception:  # not readable as safetensors: the load below says so
        return False


def _read_state_dict(path: str) -> dict:
    """The --state-dict file as a dict of tensors; errors name the file and what to pass instead."""
    if not os.path.isfile(path):
        raise SampleError(f"--state-dict {path}: no such file", "give the path of the checkpoint's state_dict")
    kind = _checkpoint_kind(path, _file_head(path, "--state-dict"))
    if kind is None:
        raise SampleError(f"--state-dict {path} cannot be read as a checkpoint: it is neither a torch.save file "
                          "nor .safetensors",
                          "pass the model's state_dict, saved with torch.save or safetensors")
    if kind == "safetensors" and _is_converted(path):
        raise SampleError(f"--state-dict {path} is a converted sparsedm file, not a plain state_dict",
                          f"pass it as MODEL instead, without --preset/--state-dict: sparsedm sample {path} ...")
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            sd = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch/safetensors say "invalid header", "PytorchStreamReader failed", ...
        raise SampleError(f"--state-dict {path} cannot be read as a checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})",
                          "pass a torch.save'd state_dict or a .safetensors file") from None
    if not isinstance(sd, dict):
        raise SampleError(f"--state-dict {path} holds a {type(sd).__name__}, not a state_dict",
                          "pass the model's state_dict (or convert the checkpoint with `sparsedm convert`)")
    return sd


def _check_state_dict_fits(preset: str, path: str, expected: dict, sd: dict) -> None:
    """Every tensor of the preset's model is in ``sd`` with its shape, and ``sd`` holds no other."""
    for key, want in expected.items():
        got = sd.get(key)
        if isinstance(got, torch.Tensor) and tuple(got.shape) != tuple(want.shape):
            raise SampleError(f"--state-dict {path} does not fit preset {preset}: {key} is {list(got.shape)} in the "
                              f"file, {list(want.shape)} in the preset",
                              "pass the preset this checkpoint was trained with (a model of another size needs its own)")
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise SampleError(f"--state-dict {path} does not fit preset {preset}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}", "check the preset, or convert the checkpoint first")


def _optimize_preset(name: str, arch: str, model: torch.nn.Module, state_dict: Optional[str], prune: bool,
                     quant: Optional[str], backend: Optional[str]) -> None:
    """Put the preset model on the sparse/int8 runtime (sparsedm.optimize) and say what ran where."""
    import sparsedm
    from sparsedm.models import sparse_layer_names

    include = sparse_layer_names(arch, model) if prune else None
    sparsedm.optimize(model, quant=quant, backend=backend or "auto", prune=prune, include=include)
    report = sparsedm.last_report()
    swapped = len(report.changed)
    print(f"sparsedm sample: preset {name}: {swapped} of {len(report.rows)} linear/conv layers run on sparsedm's "
          f"2:4/int8 modules (the others stay dense)", file=sys.stderr)
    if state_dict and not prune and not any(r.changed and "Sparse" in r.kind for r in report.rows):
        print("sparsedm sample: no layer of this checkpoint is exactly 2:4, so none runs on the 2:4 kernels; a "
              "SparseDM checkpoint keeps its pruned weights: add --prune (or convert it with `sparsedm convert`)",
              file=sys.stderr)


def _context_shape(config: dict) -> Optional[tuple[int, int]]:
    """(tokens, dim) of a text-conditional U-ViT's context, None for other models."""
    if not config.get("clip_dim"):
        return None
    return int(config.get("num_clip_token", 77)), int(config["clip_dim"])


def _load_converted(path: str, device: str, dtype, backend: Optional[str]) -> dict:
    if not os.path.exists(path):
        raise SampleError(f"{path}: no such file", "pass a file written by `sparsedm convert`, or --preset/--factory")
    _file_head(path)  # unreadable: say so here, not as a traceback from the reader
    load = getattr(__import__("sparsedm"), "load", None)
    if load is None:
        raise SampleError("this installation has no sparsedm.load (the runtime loader)", "use --preset or --factory")
    kwargs = {"device": device, "dtype": dtype}
    if backend:
        kwargs["backend"] = backend
    loaded = load(path, **kwargs)
    arch = (getattr(loaded, "manifest", None) or {}).get("architecture", {})
    res, ch = arch.get("resolution"), arch.get("in_channels")
    if not res or not ch:
        raise SampleError(f"{path}: the manifest records no resolution/in_channels", "re-convert with --preset NAME")
    distilled = ((getattr(loaded, "manifest", None) or {}).get("source") or {}).get("reader") == "distiller"
    return {"model": loaded.model.eval(), "sampler": loaded.sampler, "shape": (int(ch), int(res), int(res)),
            "distilled": distilled,
            "num_classes": max(int((arch.get("config") or {}).get("num_classes", 0) or 0), 0),
            "context_shape": _context_shape(arch.get("config") or {})}


def _sampler_config(args, loaded: dict) -> dict:
    cfg = loaded.get("sampler")
    if args.sampler_json:
        try:
            with open(args.sampler_json) as f:
                cfg = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SampleError(f"--sampler-json {args.sampler_json}: {e}", "give a JSON file with a sampler config") from None
    if not cfg:
        raise SampleError("the model records no sampler config", "pass --sampler-json FILE (docs/SAMPLING.md)")
    cfg = dict(cfg)
    distilled = loaded.get("distilled") or "_distillation" in cfg  # diffusion_distiller's file, or sparsedm.train's
    if distilled and args.steps is not None and args.steps != cfg.get("steps"):
        print(f"sparsedm sample: warning: this model was distilled for {cfg.get('steps')} steps; sampling it with "
              f"--steps {args.steps} leaves the schedule it learned (expect worse images)", file=sys.stderr)
    for key, val in (("kind", args.sampler_kind), ("steps", args.steps), ("order", args.order), ("eta", args.eta),
                     ("cfg_scale", args.cfg_scale)):
        if val is not None:
            cfg[key] = val
    if args.sampler_kind and args.sampler_kind not in ("dpm_solver", "dpm_solver++"):
        cfg.pop("order", None) if args.order is None else None
        cfg.pop("lower_order_final", None)
        cfg.pop("solver_type", None)
    if args.sampler_kind and args.sampler_kind != "ddim" and args.eta is None:
        cfg.pop("eta", None)
    if cfg.get("cfg_scale") and loaded.get("num_classes") and cfg.get("null_class") is None:
        # The null class of guided models is the last row of their label table (U-ViT ImageNet:
        # 1001 rows, label 1000 = the dataset's K; a factory's model may say num_classes=10 and
        # hold 11 rows). Without a table to look at, the row after the classes.
        rows = label_rows(loaded["model"])
        cfg["null_class"] = rows - 1 if rows else int(loaded["num_classes"])
    return cfg


def _latent_decoder(args, shape: tuple, sampler_cfg: dict, device: str):
    """The autoencoder of a latent model (None for pixel models); errors name what to pass."""
    from sparsedm.sampling.latent import LatentError, load_autoencoder

    channels = shape[0]
    if args.autoencoder is None:
        if args.latent_scale is not None:
            raise SampleError("--latent-scale goes with --autoencoder", "add --autoencoder, or drop --latent-scale")
        if channels in (1, 3):
            return None
        if channels == 4:
            raise SampleError("this is a latent model (4 channels): its samples are latents, which need the model's "
                              "autoencoder to become images",
                              "pass --autoencoder PATH (a diffusers AutoencoderKL folder such as a local sd-vae-ft-ema, "
                              "or U-ViT's autoencoder_kl.pth)")
        raise SampleError(f"{channels}-channel outputs cannot be saved as images", "sample a pixel or latent image model")
    scale = args.latent_scale if args.latent_scale is not None else sampler_cfg.get("autoencoder_scale")
    one_file = os.path.isfile(args.autoencoder)
    if one_file and _checkpoint_kind(args.autoencoder, _file_head(args.autoencoder, "--autoencoder")) is None:
        # the reader would fail on it with a pickle opcode for a message ("KeyError: 101")
        raise SampleError(f"--autoencoder {args.autoencoder} is not a readable checkpoint of the KL autoencoder "
                          "(neither a torch.save file nor .safetensors)",
                          "pass a diffusers AutoencoderKL folder or the autoencoder's state_dict file "
                          "(U-ViT's autoencoder_kl.pth)")
    try:
        ae = load_autoencoder(args.autoencoder, device=device, dtype=torch.float32, scale=scale)
    except LatentError as e:
        raise SampleError(*e.args) from None
    latent = int(ae.vae.config.latent_channels)
    if latent != channels:
        raise SampleError(f"--autoencoder {args.autoencoder} decodes {latent}-channel latents, the model samples "
                          f"{channels} channels", "pass the autoencoder the model was trained with")
    return ae


def _text_contexts(args, loaded: dict, sampler_cfg: dict):
    """(contexts [P, T, D], uncond [T, D]) for text models; (None, None) otherwise."""
    from sparsedm.sampling.latent import LatentError, load_contexts

    ctx_shape = loaded.get("context_shape")
    if ctx_shape is None:
        if args.context or args.uncond_context:
            raise SampleError("--context/--uncond-context are for text-conditional models; this model takes none",
                              "drop them (class-conditional models take --class-label)")
        return None, None
    if not args.context:
        raise SampleError(f"this model is text-conditional: it needs prompt embeddings [{ctx_shape[0]}, {ctx_shape[1]}]",
                          "pass --context prompts.npy (CLIP text embeddings, as U-ViT precomputes them)")
    guided = bool(sampler_cfg.get("cfg_scale"))
    if guided and not args.uncond_context:
        raise SampleError(f"classifier-free guidance (cfg_scale {sampler_cfg.get('cfg_scale')}) needs the empty "
                          "prompt's embedding", "pass --uncond-context empty_context.npy, or --cfg-scale 0")
    try:
        contexts = load_contexts(args.context, *ctx_shape)
        uncond = load_contexts(args.uncond_context, *ctx_shape, what="--uncond-context") if args.uncond_context else None
    except LatentError as e:
        raise SampleError(*e.args) from None
    if uncond is not None and uncond.shape[0] != 1:
        raise SampleError(f"--uncond-context {args.uncond_context} holds {uncond.shape[0]} embeddings",
                          "pass the one embedding of the empty prompt")
    return contexts, (uncond[0] if uncond is not None and guided else None)


# --------------------------------------------------------------------------------------------
# the command


def _check_writable(option: str, path: str) -> None:
    """Fail before sampling, not after it, when ``path`` cannot be written: create and remove a
    temporary file beside it, as the final write will."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise SampleError(f"cannot write {option} {path}: its directory does not exist", "create it first")
    if os.path.isdir(path):
        raise SampleError(f"cannot write {option} {path}: it is a directory", "give a file name inside it")
    try:
        fd, tmp = temp_beside(path)
    except OSError as e:
        raise SampleError(f"cannot write {option} {path}: {e.strerror} (in {directory})",
                          "write to a directory you can create files in") from None
    os.close(fd)
    os.unlink(tmp)


def _write_together(outputs: list[tuple[str, Callable[[IO[bytes]], object]]]) -> None:
    """Write every (path, write) to a temporary file beside its path, and rename them into place
    only once all are written: a failed write (disk full, ...) leaves no output, not one of two.
    (The renames themselves come last; each is atomic, and they fail only on a vanished directory.)"""
    temps: list[str] = []
    try:
        for path, write in outputs:
            try:
                fd, tmp = temp_beside(path)
                temps.append(tmp)
                with os.fdopen(fd, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise SampleError(f"cannot write {path}: {e.strerror}; no output was written",
                                  "free disk space or write to another directory, then sample again") from None
        for tmp, (path, _) in zip(temps, outputs):
            publish(tmp, path)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def run_sample(args: argparse.Namespace) -> int:
    from sparsedm.convert.errors import ConvertError
    from sparsedm.ops import BackendUnavailableError

    try:
        return _run(args)
    except (SampleError, ValueError, OSError, ConvertError, BackendUnavailableError) as e:
        if args.debug:
            raise
        if isinstance(e, ConvertError):  # already "problem; fix"
            message, hint = str(e), ""
        elif isinstance(e, OSError) and e.strerror:  # args[0] of an OSError is its errno
            message = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
            hint = ""
        else:
            message = e.args[0] if e.args else str(e)
            hint = f"\n  what to do: {e.args[1]}" if isinstance(e, SampleError) and len(e.args) > 1 else ""
        print(f"sparsedm sample: error: {message}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        # The PNG and the .npz are written once, at the end, atomically: nothing half-written.
        print("\nsparsedm sample: interrupted; no output written (existing files are untouched)", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from sparsedm.sampling.images import make_grid, png_bytes
    from sparsedm.sampling.run import generate, init_distributed
    from sparsedm.sampling.samplers import from_config

    sources = [s for s in (args.model, args.preset, args.factory) if s]
    if len(sources) != 1:
        raise SampleError("give exactly one model: a converted file, --preset NAME, or --factory MODULE:FUNCTION",
                          "e.g. sparsedm sample model.safetensors -n 64 -o samples.png")
    if args.state_dict and not args.preset:
        raise SampleError("--state-dict goes with --preset NAME", "add --preset, or convert the checkpoint first")
    if (args.prune or args.quant) and not args.preset:
        raise SampleError("--prune and --quant go with --preset NAME (a converted file keeps the sparsity and "
                          "quantization it was converted with)", "convert with `sparsedm convert --prune --quant int8`")
    if not args.output and not args.npz:
        raise SampleError("nothing to write", "pass -o samples.png and/or --npz samples.npz")
    if args.num_samples < 1 or args.batch_size < 1:
        raise SampleError("-n and --batch-size must be positive")
    if args.output and args.grid_max < 1:
        raise SampleError(f"--grid-max {args.grid_max}: the PNG grid needs at least one image",
                          "pass --grid-max 1 or more (default 256), or drop -o to write only the .npz")
    if args.output and not args.output.lower().endswith(".png"):
        raise SampleError(f"-o {args.output}: the grid is written as PNG", "use a name ending in .png")
    if args.npz and not args.npz.endswith(".npz"):
        raise SampleError(f"--npz {args.npz}: the file name must end in .npz",
                          "use a name ending in .npz (numpy would append .npz to any other)")
    for option, path in (("-o", args.output), ("--npz", args.npz)):
        if path:
            _check_writable(option, path)

    if args.backend:
        from sparsedm.ops import registry

        registry.get_backend(args.backend.strip().lower())  # unknown names fail before any work
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SampleError(f"--device {device} but CUDA is not available here", "use --device cpu")
    d = init_distributed(device)
    # Batches are padded past n (shard), and every padded sample owns a seed too.
    last_index = shard(args.num_samples, d.world, d.world - 1, args.batch_size)[0][-1][-1]
    if not MIN_SEED <= args.seed <= MAX_SEED - last_index:
        raise SampleError(f"--seed {args.seed} is out of range: sample i uses seed + i, which must be an int64",
                          f"pass a --seed from {MIN_SEED} to {MAX_SEED - last_index}")
    if d.active and device == "cuda":
        device = f"cuda:{d.local_rank}"
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.startswith("cuda") else torch.float32)
    if args.cuda_graph and not device.startswith("cuda"):
        raise SampleError("--cuda-graph needs a CUDA device", "drop --cuda-graph on CPU")

    if args.factory:
        loaded = _load_factory(args.factory, device, dtype)
    elif args.preset:
        loaded = _load_preset(args.preset, args.state_dict, device, dtype, prune=args.prune, quant=args.quant,
                              backend=args.backend)
    else:
        loaded = _load_converted(args.model, device, dtype, args.backend)
    shape = tuple(int(s) for s in loaded["shape"])
    sampler_cfg = _sampler_config(args, loaded)
    num_classes = label_classes(int(loaded.get("num_classes", 0) or 0), sampler_cfg.get("null_class"),
                                label_rows(loaded["model"]))
    if sampler_cfg.get("cfg_scale") and not num_classes and loaded.get("context_shape") is None:
        # guidance contrasts a conditional and an unconditional call: with no labels or text there is no pair
        if args.cfg_scale is not None:
            raise SampleError(f"--cfg-scale {args.cfg_scale}: this model is unconditional (no class labels, no text), "
                              "so classifier-free guidance has nothing to guide",
                              "drop --cfg-scale; guidance needs a class-conditional model (--class-label C picks "
                              "the class) or a text model (--context)")
        raise SampleError(f"the sampler config sets cfg_scale {sampler_cfg['cfg_scale']}, but this model is "
                          "unconditional (no class labels, no text)", "pass --cfg-scale 0")
    contexts, uncond_context = _text_contexts(args, loaded, sampler_cfg)
    decoder = _latent_decoder(args, shape, sampler_cfg, device)
    sampler = from_config(sampler_cfg)
    if args.class_label is not None and not 0 <= args.class_label < max(num_classes, 1):
        raise SampleError(f"--class-label {args.class_label} is out of range",
                          f"the model has {num_classes} classes (0..{num_classes - 1})" if num_classes else
                          "the model is not class-conditional: drop --class-label")

    model = loaded["model"]
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model, mode="max-autotune-no-cudagraphs" if args.cuda_graph else None)
    if args.cuda_graph:
        from sparsedm.sampling.graphs import GraphedModel

        model = GraphedModel(model)

    from tqdm import tqdm

    batches, bs = shard(args.num_samples, d.world, d.rank, args.batch_size)
    bar = tqdm(total=len(batches) * sampler.steps, unit="step", desc=f"sample {sampler.kind}",
               disable=args.no_progress or d.rank != 0, dynamic_ncols=True)
    from sparsedm.ops import use_backend

    t0 = time.perf_counter()
    with use_backend(args.backend):  # forces the sparse layers' backend for presets/factories too
        images, labels = generate(model, sampler, shape, args.num_samples, args.seed, device=device,
                                  batch_size=args.batch_size, num_classes=num_classes, class_label=args.class_label,
                                  dtype=dtype, channels_last=args.channels_last, dist_info=d, progress=bar.update,
                                  contexts=contexts, uncond_context=uncond_context,
                                  decode=decoder.decode if decoder is not None else None)
    bar.close()
    elapsed = time.perf_counter() - t0
    if d.rank == 0:
        outputs = []
        if args.npz:
            extra = {"labels": labels} if labels is not None else {}
            if contexts is not None:
                extra["prompt_index"] = np.arange(args.num_samples, dtype=np.int64) % contexts.shape[0]
            outputs.append((args.npz, lambda f: np.savez(f, images, **extra)))
        if args.output:
            grid = make_grid(images[: args.grid_max])
            png = png_bytes(np.ascontiguousarray(grid if grid.shape[2] != 1 else grid[:, :, 0]))
            outputs.append((args.output, lambda f: f.write(png)))
        _write_together(outputs)
        wrote = " and ".join(p for p in (args.output, args.npz) if p)
        print(f"sparsedm sample: {args.num_samples} images ({sampler.describe()}; batch {bs} x {d.world} "
              f"rank{'s' if d.world > 1 else ''}) in {elapsed:.1f} s, {args.num_samples / elapsed:.2f} images/s; wrote {wrote}",
              file=sys.stderr)
    if d.active:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsedm.sampling", description="sparsedm sample (see `sparsedm sample -h`)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_sample(args)
