"""The ``sparsedm`` command.

Subcommands: ``info`` (versions, devices, backends; or a converted file), ``convert``,
``sample``, ``bench``, ``macs`` and ``demo``. Each subpackage registers its own subcommand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Optional, Sequence

import torch

import sparsedm
from sparsedm import _ext
from sparsedm.ops import backend_status


def _devices() -> list[dict]:
    rows = [{"device": "cpu", "name": platform.processor() or platform.machine()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            rows.append({"device": f"cuda:{i}", "name": torch.cuda.get_device_name(i), "capability": f"{major}.{minor}"})
    return rows


def _info(args: argparse.Namespace) -> int:
    if args.file:
        from sparsedm.convert.cli import file_info

        if args.backends:
            print("error: --backends describes this machine, not a file; run `sparsedm info --backends` alone",
                  file=sys.stderr)
            return 2
        return file_info(args.file, args.json, args.debug)
    triton_version = None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        pass
    ext = _ext.C.build_info() if _ext.C is not None else {"error": _ext.import_error}
    report = {
        "sparsedm": sparsedm.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "extension": ext,
        "devices": _devices(),
        "backends": [
            {"name": name, "available": ok, "detail": detail, "ops": ops}
            for name, ok, detail, ops in backend_status()
        ],
    }
    if args.backends:
        from sparsedm.ops import autotune

        report["autotune_cache"] = {"path": str(autotune.cache_path()), "entries": autotune.cache_summary()}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"sparsedm {report['sparsedm']}  (python {report['python']}, torch {report['torch']}, "
          f"CUDA {report['torch_cuda'] or 'none'}, triton {triton_version or 'not installed'})")
    if _ext.C is None:
        print(f"extension: not loaded: {_ext.import_error}")
    else:
        kind = "CUDA (archs " + ext["cuda_archs"] + ")" if ext["cuda"] else "CPU-only: " + ext["why_cpu_only"]
        print(f"extension: sparsedm._C, {kind}")
    print("devices:")
    for d in report["devices"]:
        cap = f" (capability {d['capability']})" if "capability" in d else ""
        print(f"  {d['device']:<8} {d['name']}{cap}")
    print("backends:")
    width = max(len(b["name"]) for b in report["backends"])
    for b in report["backends"]:
        mark = "yes" if b["available"] else "no "
        print(f"  {b['name']:<{width}}  {mark}  {b['detail']}")
        if args.backends and b["ops"]:
            print(f"  {'':<{width}}       ops: {', '.join(b['ops'])}")
    if args.backends:
        _print_autotune_cache()
    return 0


def _print_autotune_cache() -> None:
    """The automatic backend choices remembered on disk (sparsedm.ops.autotune)."""
    from sparsedm.ops import autotune

    rows = autotune.cache_summary()
    print(f"automatic backend choices ({autotune.cache_path()}):")
    if not rows:
        print("  none yet: the first CUDA call of each op and shape bucket measures the candidates")
        return
    for r in rows:
        stale = "" if r["current"] else "  (other versions; remeasured when used)"
        times = ", ".join(f"{b} {ms:.3f} ms" for b, ms in sorted(r["ms"].items(), key=lambda kv: kv[1]))
        print(f"  {r['gpu']}: {r['key']} -> {r['backend']}  [{times}]{stale}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsedm",
        description="2:4 sparse and int8 inference of diffusion models: convert checkpoints, "
        "load the optimized runtime, benchmark the kernels.",
    )
    parser.add_argument("--version", action="version", version=f"sparsedm {sparsedm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser(
        "info",
        help="show versions, devices and backends; or describe a converted FILE",
        description="Without FILE: the sparsedm version, torch/triton/CUDA versions, how the compiled "
        "extension was built, the devices, and each kernel backend with whether it can run here and why "
        "not. With FILE (a file written by `sparsedm convert`): its manifest, layer table, MACs dense vs "
        "2:4 and size against dense fp16.",
    )
    info.add_argument("file", nargs="?", help="a converted .safetensors file to describe")
    info.add_argument("--backends", action="store_true", help="also list the ops each backend implements")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    info.add_argument("--debug", action="store_true", help="show tracebacks on errors (with FILE)")
    info.set_defaults(func=_info)
    from sparsedm.bench.cli import register as register_bench
    from sparsedm.convert.cli import register as register_convert
    from sparsedm.demo import register as register_demo
    from sparsedm.sampling.cli import register as register_sample

    register_convert(sub)
    register_sample(sub)
    register_bench(sub)
    register_demo(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:  # `sparsedm info ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
