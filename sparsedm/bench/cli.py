"""``sparsedm bench ...`` subcommands."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading

import torch

from sparsedm.bench import kernels as kernel_bench
from sparsedm.bench.environment import header
from sparsedm.bench.report import terminal_table, write_results
from sparsedm.bench.shapes import CONV_TABLES, CPU_TABLES, LINEAR_TABLES, table

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _check_setup(out: str, backends) -> str | None:
    """Problems to report before any measurement: an unwritable --out, unknown backends."""
    from sparsedm.ops import registry

    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        return f"cannot write results to --out {out}: {exc.strerror}; choose another directory"
    for name in backends or ():
        if name != "auto":
            try:
                reason = registry.get_backend(name).unavailable_reason()
            except registry.BackendUnavailableError as exc:
                return str(exc)
            if reason is not None:
                return f"backend {name!r} cannot run here: {reason}"
    return None


def _progress(iterable, total, desc):
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)
    except ImportError:
        return iterable


def _kernels(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible; use --device cpu", file=sys.stderr)
        return 2
    ops = kernel_bench.OPS if args.op == "all" else (args.op,)
    if args.shapes:
        names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    elif device.type == "cuda":
        names = [*LINEAR_TABLES, *CONV_TABLES]
    else:
        names = list(CPU_TABLES)
    try:
        tables = {n: table(n) for n in names}
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    if device.type == "cpu":
        print("note: CPU run: these are single-threaded CPU numbers of the CPU paths (reference backend), "
              "not GPU kernel timings", file=sys.stderr)
    backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
    problem = _check_setup(args.out, backends)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    hdr = header(device)
    jobs = []
    for op in ops:
        is_conv = op == "conv"
        for tname, shapes in tables.items():
            conv_table = tname in CONV_TABLES or tname == "cpu-conv"
            if is_conv == conv_table:
                jobs += [(op, tname, s) for s in shapes]
    if not jobs:
        print(f"error: no shapes for op {args.op!r} in tables {', '.join(names)} "
              f"(linear ops use {', '.join(LINEAR_TABLES)} or cpu-linear; conv uses {', '.join(CONV_TABLES)} or cpu-conv)",
              file=sys.stderr)
        return 2
    rows, done = [], 0
    threads = torch.get_num_threads()
    try:
        # CPU runs use one thread: on a shared or small machine the thread pool's scheduling
        # noise would be most of what is measured.
        if device.type == "cpu":
            torch.set_num_threads(1)
        with _sigterm_as_interrupt():
            for op, tname, shape in _progress(jobs, len(jobs), "bench kernels"):
                rows += kernel_bench.bench_shape(op, shape, tname, dtype, device, backends=backends,
                                                 warmup=args.warmup, reps=args.reps, gpu_name=hdr["gpu"])
                done += 1
    except KeyboardInterrupt:
        print(f"\ninterrupted after {done} of {len(jobs)} shapes", file=sys.stderr)
    finally:
        torch.set_num_threads(threads)
    if done < len(jobs):
        if not rows:
            return 130
        # A run cut short (Ctrl-C, a time limit's SIGTERM) keeps what it measured, marked as such.
        hdr = {**hdr, "partial": f"{done} of {len(jobs)} shapes"}
    print(terminal_table(rows))
    # One file set per op family when --op names one, so runs of single families sit side by side.
    paths = write_results(rows, hdr, args.out, "kernels" if args.op == "all" else f"kernels-{args.op}")
    print("\nwrote " + ", ".join(paths.values()) + (" (partial)" if "partial" in hdr else ""))
    return 130 if "partial" in hdr else 0


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (what `timeout` sends) raises KeyboardInterrupt in the main thread meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _model(args: argparse.Namespace) -> int:
    import json

    from sparsedm.bench import model as model_bench

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible; use --device cpu", file=sys.stderr)
        return 2
    if args.cuda_graph and device.type != "cuda":
        print("error: --cuda-graph needs a CUDA device", file=sys.stderr)
        return 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in model_bench.VARIANTS]
    if unknown:
        print(f"error: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(model_bench.VARIANTS)}", file=sys.stderr)
        return 2
    if bool(args.model) == bool(args.preset):
        print("error: give either a converted MODEL file or --preset NAME (see `sparsedm bench model --help`)", file=sys.stderr)
        return 2
    if args.override and args.model:
        print("error: --override changes a preset's config; a converted file is measured as it is (drop --override)",
              file=sys.stderr)
        return 2
    overrides = None
    if args.override:
        try:
            overrides = json.loads(args.override)
        except json.JSONDecodeError:
            overrides = None
        if not isinstance(overrides, dict):
            print(f"error: --override {args.override!r} is not a JSON object; pass one such as '{{\"depth\": 2}}'", file=sys.stderr)
            return 2
    problem = _check_setup(args.out, [args.backend])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from sparsedm.convert.errors import ConvertError

    base = None
    try:
        if args.model:
            spec, base = model_bench.from_file(args.model)
        else:
            spec = model_bench.spec_from_preset(args.preset, overrides)
    except ConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyError, ValueError, TypeError, OSError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    if device.type == "cpu":
        print("note: CPU run: these are CPU numbers of the reference paths, not GPU timings", file=sys.stderr)
    steps = args.steps or min(int(spec.sampler.get("steps", 50)), 50)
    rows = model_bench.bench_variants(
        spec, variants=variants, batch=args.batch, steps=steps, device=device, dtype=dtype,
        cuda_graph=args.cuda_graph, compile=args.compile, channels_last=args.channels_last, backend=args.backend,
        warmup=args.warmup, reps=args.reps, progress=lambda line: print(line, file=sys.stderr, flush=True),
        base=base,
    )
    print(terminal_table(rows))
    # The loop setting is part of the name, so eager and CUDA-graph runs of one model sit side by side.
    setting = ("-graph" if args.cuda_graph else "") + ("-compile" if args.compile else "") + ("-cl" if args.channels_last else "")
    hdr = header(device)
    if args.override:  # a shrunk or altered preset is not the preset: say so in the name and the header
        setting += "-override"
        hdr["override"] = overrides
    paths = write_results(rows, hdr, args.out, f"model-{spec.name}{setting}")
    print("\nwrote " + ", ".join(paths.values()))
    return 0


def _targets(args: argparse.Namespace) -> int:
    import json

    from sparsedm._io import write_atomic
    from sparsedm.bench import targets

    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        print(f"error: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        rows = targets.load_rows(args.paths)
    except targets.ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: no sparsedm results files (JSON with 'gpu' and 'rows') in {', '.join(args.paths)}", file=sys.stderr)
        return 2
    results = targets.evaluate(rows)
    gpus = sorted({r["_gpu"] for r in rows if r.get("_gpu")})
    text = f"Speed targets, from {len(rows)} result rows ({', '.join(gpus)})\n\n" + targets.markdown(results)
    print(json.dumps(results, indent=1) if args.json else text)
    if args.out:
        write_atomic(args.out, text)
    return 0


def _holds_24(module) -> bool:
    """Whether the 2:4 format can hold this layer's weight: its reduction length (in_features,
    or kh * kw * Cin of a groups=1 conv) is a multiple of 8 (docs/FORMAT.md). SparseDM also
    masks layers that fail this (the DDPM UNet's 3-channel input conv, K = 27), but no 2:4
    kernel can run them, so their MACs are not halved."""
    from sparsedm.formats.sparse24 import holds_24

    return getattr(module, "groups", 1) == 1 and holds_24(module.weight.shape)


def _macs(args: argparse.Namespace) -> int:
    from sparsedm.bench.macs import count_macs
    from sparsedm.convert import arch as archs

    if bool(args.model) == bool(args.preset):
        print("error: give either a converted MODEL file or --preset NAME (see `sparsedm macs --help`)", file=sys.stderr)
        return 2
    try:
        if args.model:
            from sparsedm.convert.fileformat import read_header
            from sparsedm.convert.info import model_macs

            manifest = read_header(args.model).manifest
            resolution = args.resolution or manifest["architecture"]["resolution"]
            report = model_macs(manifest, batch=1, resolution=resolution)
            source = args.model
        else:
            from sparsedm.models import PRESETS, build, sparse_layer_names

            if args.preset not in PRESETS:
                print(f"error: unknown preset {args.preset!r}; known: {', '.join(PRESETS)}", file=sys.stderr)
                return 2
            p = PRESETS[args.preset]
            resolution = args.resolution or p["resolution"]
            config = archs.config_at_resolution(p["config"], resolution)
            model = build(p["arch"], config, "meta")
            inputs, kwargs = archs.example_inputs(model, config, resolution, p["in_channels"], batch=1, device="meta")
            names = [n for n in sparse_layer_names(p["arch"], model) if _holds_24(model.get_submodule(n))]
            report = count_macs(model, inputs, names, kwargs=kwargs)
            source = f"preset {args.preset} (2:4 layers: those SparseDM sparsifies that the 2:4 format can hold)"
    except Exception as exc:  # noqa: BLE001  (one readable line; --debug for the traceback)
        if args.debug:
            raise
        print(f"error: cannot count MACs: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    doc = {"source": source, "resolution": resolution, **report.as_dict()}
    if args.json:
        import json

        print(json.dumps(doc, indent=2))
        return 0
    width = max([len(r.name) for r in report.rows] + [5])
    print(f"MACs per image of {source} at {resolution}px")
    print(f"  {'layer':<{width}}  {'kind':<9} {'shape':<18} {'dense':>14} {'2:4':>14}")
    for r in report.rows:
        print(f"  {r.name:<{width}}  {r.kind:<9} {r.shape:<18} {r.dense_macs:>14,} {r.sparse_macs:>14,}")
    d, sp = report.dense_macs, report.sparse_macs
    print(f"total: dense {d / 1e9:.3f} G, with 2:4 {sp / 1e9:.3f} G ({d / max(sp, 1):.2f}x fewer)")
    print("share of dense MACs: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(report.share_by_kind().items(), key=lambda kv: -kv[1])))
    return 0


def register(subparsers) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="micro-benchmark the kernels against dense baselines",
        description="Benchmarks with the method of docs/BENCHMARKS.md (warm-up, inputs rotated beyond L2, "
        "median of individually timed calls), writing CSV, JSON, markdown and PNG results.",
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    k = sub.add_parser(
        "kernels",
        help="time every backend of each op on shape tables, against dense",
        description="Time dense cuBLAS/cuDNN, torch's 2:4 and int8 paths and every sparsedm backend on the "
        "shape tables; each candidate's output is checked against the reference before it is timed.",
    )
    k.add_argument("--op", choices=[*kernel_bench.OPS, "all"], default="all", help="which op family (default: all)")
    k.add_argument("--shapes", help="comma-separated shape tables: " + ", ".join([*LINEAR_TABLES, *CONV_TABLES, *CPU_TABLES])
                   + " (default: all GPU tables on CUDA, the tiny cpu-* tables on CPU)")
    k.add_argument("--dtype", choices=list(DTYPES), help="activation/weight dtype (default fp16 on CUDA, fp32 on CPU)")
    k.add_argument("--backends", help="comma-separated sparsedm backends to include (default: every one that can run)")
    k.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    k.add_argument("--warmup", type=positive_int, default=10, help="untimed calls before timing (default 10)")
    k.add_argument("--reps", type=positive_int, default=50, help="timed calls; the median is reported (default 50)")
    k.add_argument("--out", default="bench/out", help="directory for the results files (default bench/out)")
    k.set_defaults(func=_kernels)
    logging.getLogger("sparsedm.bench").setLevel(logging.INFO)

    mb = sub.add_parser(
        "model",
        help="denoiser-step latency and images/s of a model's dense, sparse and int8 variants",
        description="Benchmark variants of one model: dense, sparse (sparsedm.optimize), int8 (W8A8 "
        "linears), sparse+int8. The model is a converted file (its weights, 2:4 layers decompressed for the "
        "dense variant) or a preset (random weights, SparseDM's layers masked 2:4). Reports the "
        "denoiser-step median latency, images/s of a whole sampling run, peak GPU memory and each "
        "variant's max difference from the dense masked model.",
    )
    mb.add_argument("model", nargs="?", help="a converted .safetensors file (or use --preset)")
    mb.add_argument("--preset", help="model preset, e.g. uvit-s2-cifar10 or ddpm-unet-cifar10")
    mb.add_argument("--override", help='JSON dict of config overrides, e.g. \'{"depth": 2}\' (for quick runs)')
    mb.add_argument("--batch", type=positive_int, default=8, help="images per step (default 8)")
    mb.add_argument("--steps", type=positive_int, help="sampling steps of the whole-run measurement (default: the preset's, at most 50)")
    mb.add_argument("--variants", default=",".join(("dense", "sparse", "int8", "sparse+int8")),
                    help="comma-separated: dense, sparse, int8, sparse+int8 (default: all)")
    mb.add_argument("--dtype", choices=list(DTYPES), help="default fp16 on CUDA, fp32 on CPU")
    mb.add_argument("--backend", default="auto", help="sparsedm backend for the sparse layers (default auto)")
    mb.add_argument("--cuda-graph", action="store_true", help="replay the denoiser step from a CUDA graph")
    mb.add_argument("--compile", action="store_true", help="torch.compile each variant")
    mb.add_argument("--channels-last", action="store_true",
                    help="channels_last memory format for every variant and the input (conv models: cuDNN's fast layout)")
    mb.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    mb.add_argument("--warmup", type=positive_int, default=3, help="untimed steps before timing (default 3)")
    mb.add_argument("--reps", type=positive_int, default=20, help="timed steps; the median is reported (default 20)")
    mb.add_argument("--out", default="bench/out", help="directory for the results files (default bench/out)")
    mb.set_defaults(func=_model)

    t = sub.add_parser(
        "targets",
        help="check results files against the project's speed targets",
        description="Read benchmark results (JSON files, or directories of them) and check each speed target "
        "of the project (sparsedm/bench/targets.py): the worst matching shape counts; a target no file "
        "measured is 'missing', never passed.",
    )
    t.add_argument("paths", nargs="+", help="results .json files or directories holding them")
    t.add_argument("--out", help="also write the table as markdown to this file")
    t.add_argument("--json", action="store_true", help="print the results as JSON")
    t.set_defaults(func=_targets)

    m = subparsers.add_parser(
        "macs",
        help="multiply-accumulates per layer, dense and with 2:4",
        description="Count the MACs of one forward pass (one image) per Linear/Conv2d layer, dense and with "
        "2:4 (a 2:4 layer costs half), plus attention matmuls as separate rows. For a converted file the "
        "2:4 layers are the file's; for a preset, the layers SparseDM sparsifies.",
    )
    m.add_argument("model", nargs="?", help="a converted .safetensors file")
    m.add_argument("--preset", help="a model preset instead of a file, e.g. uvit-s2-cifar10")
    m.add_argument("--resolution", type=positive_int, help="image/latent size (default: the model's)")
    m.add_argument("--json", action="store_true", help="print JSON (keys include dense_macs and sparse_macs)")
    m.add_argument("--debug", action="store_true", help="show the traceback on errors")
    m.set_defaults(func=_macs)
