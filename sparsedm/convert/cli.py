"""CLI pieces the ``sparsedm`` command wires in: ``sparsedm convert`` and ``sparsedm info FILE``.

``register(subparsers)`` adds the ``convert`` subcommand; ``file_info(path, as_json)`` is what
``sparsedm info FILE [--json]`` calls. Errors print one line on stderr (the problem and the
fix) and return a non-zero exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from sparsedm.convert.errors import ConvertError
from sparsedm.convert.readers import READERS

EXIT_ERROR = 1


def _fail(e: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    else:
        message = str(e) if isinstance(e, ConvertError) else f"unexpected {e.__class__.__name__}: {e} (rerun with --debug and report it)"
        print("error: " + " ".join(message.split()), file=sys.stderr)
    return EXIT_ERROR


def run_convert(args: argparse.Namespace) -> int:
    from sparsedm.convert.convert import convert

    try:
        summary = convert(args.src, args.output, source_format=args.source_format, preset=args.preset,
                          config_path=args.config, quant=args.quant, dtype=args.dtype, prune=args.prune,
                          strict=args.strict, progress=not args.quiet and sys.stderr.isatty(),
                          log=print if not args.quiet else (lambda s: None))
    except KeyboardInterrupt:
        print("error: interrupted; no output written", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 (every failure becomes one line)
        return _fail(e, args.debug)
    if not args.quiet:
        print(summary.table(logged=True))  # the detection line and notes were printed as they came
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``convert`` to an argparse ``subparsers`` object; returns its parser."""
    p = subparsers.add_parser(
        "convert",
        help="convert a sparse/distilled checkpoint into one compact .safetensors file",
        description="Convert a SparseDM, U-ViT, ASP, 2:4-zeroed, diffusion_distiller, diffusers or compressed-tensors "
        "checkpoint into a sparsedm .safetensors file (canonical 2:4 values/meta, optional int8, JSON manifest). "
        "See docs/CONVERT.md.",
    )
    p.add_argument("src", help="checkpoint file (.pth/.pt/.ckpt/.safetensors) or diffusers UNet folder")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file (written atomically)")
    p.add_argument("--from", dest="source_format", choices=READERS + ("dense",), help="source kind (default: detected)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", help="architecture preset, e.g. uvit-s2-cifar10")
    g.add_argument("--config", help="architecture config JSON: {\"arch\", \"config\", \"resolution\", \"in_channels\", \"sampler\"}")
    p.add_argument("--quant", choices=["int8"], help="int8 weights for the sparse linear layers")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="floating dtype of the file (default: the source's)")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--prune", action="store_true", help="make a dense source 2:4 with the top-2 |w| rule")
    m.add_argument("--strict", action="store_true", help="fail instead of keeping a declared-sparse layer dense")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_convert)
    return p


def file_info(path: str, as_json: bool = False, debug: bool = False) -> int:
    """Print the report of a sparsedm file; 0 on success, non-zero with one stderr line otherwise."""
    from sparsedm.convert.info import file_report, format_report

    try:
        report = file_report(path)
    except Exception as e:  # noqa: BLE001
        return _fail(e, debug)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0
