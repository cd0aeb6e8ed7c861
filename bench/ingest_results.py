"""Bring a GPU run's files into bench/results/ and write docs/BENCHMARKS.md "Latest numbers".

    python bench/ingest_results.py PATH [PATH ...] [--results DIR] [--docs FILE] [--dry-run]

PATH: what bench/gpu_suite.sh left in $OUT, as it came back (the results-*.tar.gz archives,
loose result files, gpu_suite.log, or a folder holding them; several calls of one run may be
given together). The result files go into bench/results/, the log as ``<stem>gpu_suite.log``.
Nothing is ever overwritten: a file whose name is taken by different contents (a second
call's log, a stage run again) is stored as ``<name>-2``, ``-3``, ...; an identical one is not
stored twice, so ingesting the same files again changes nothing. Then the section
between the "Latest numbers" markers of docs/BENCHMARKS.md is rewritten from this run's files
alone: the machine and versions, the GPU tests (junit files: passed / failed / skipped, the
failures named), the instruction probe, and the speed targets (sparsedm.bench.targets). Files
are written atomically. Prints the same summary.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sparsedm._io import write_atomic  # noqa: E402
from sparsedm.bench import targets  # noqa: E402

BEGIN, END = "<!-- latest-numbers:begin -->", "<!-- latest-numbers:end -->"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
STEM = re.compile(r"^(.+?-\d{4}-\d{2}-\d{2}-[A-Za-z0-9]+(?:-dirty)?-)")


class IngestError(Exception):
    pass


def _collect(paths: list[str], scratch: str) -> list[str]:
    """Every file named by ``paths`` (each archive unpacked into a folder of its own under
    ``scratch``), flat."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += _collect(sorted(os.path.join(p, f) for f in os.listdir(p)), scratch)
        elif p.endswith(".tar.gz"):
            into = tempfile.mkdtemp(dir=scratch)
            with tarfile.open(p) as tar:
                for m in tar.getmembers():
                    if not m.isfile() or not SAFE_NAME.match(m.name):
                        raise IngestError(f"{p}: member {m.name!r} is not a plain file with a plain name; refusing the archive")
                    dest = os.path.join(into, m.name)
                    with tar.extractfile(m) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
                    files.append(dest)
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise IngestError(f"{p}: no such file or folder")
    return files


def _destination(results: str, name: str, data: bytes, planned: dict[str, bytes]) -> str:
    """``results/name``, or ``name-2``, ``-3``... when that name holds other contents (on disk or
    planned); a name that already holds exactly ``data`` is reused."""
    base, ext = os.path.splitext(name)
    n = 1
    while True:
        dest = os.path.join(results, name if n == 1 else f"{base}-{n}{ext}")
        if dest in planned:
            held = planned[dest]
        elif os.path.exists(dest):
            with open(dest, "rb") as fh:
                held = fh.read()
        else:
            return dest
        if held == data:
            return dest
        n += 1


def plan(paths: list[str], results: str, scratch: str) -> tuple[str, dict[str, bytes]]:
    """This run's stem and {destination in ``results``: contents} (one run only)."""
    files = _collect(paths, scratch)
    named = [f for f in files if os.path.basename(f) != "gpu_suite.log"]
    stems = {m.group(1) for f in named if (m := STEM.match(os.path.basename(f)))}
    if not stems:
        raise IngestError("no result files (<gpu>-<date>-<commit>-...) among the inputs")
    if len(stems) > 1:
        raise IngestError(f"files of several runs ({', '.join(sorted(stems))}): ingest one run at a time")
    stem = stems.pop()
    out: dict[str, bytes] = {}
    for f in files:
        name = os.path.basename(f)
        if name == "gpu_suite.log":
            name = stem + "gpu_suite.log"
        elif not name.startswith(stem):
            continue  # not this run's (e.g. bench/results/README.md of a copied folder)
        if not SAFE_NAME.match(name):
            raise IngestError(f"{name!r}: not a plain file name")
        with open(f, "rb") as fh:
            data = fh.read()
        out[_destination(results, name, data, out)] = data
    return stem, out


def _junit(path: str) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "failed": []}
    for s in suites:
        for key in ("tests", "failures", "errors", "skipped"):
            out[key] += int(s.get(key, 0))
        for case in s.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                out["failed"].append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return out


def summary(stem: str, files: list[str]) -> str:
    """The "Latest numbers" text of one run."""
    jsons = [f for f in files if f.endswith(".json") and not f.endswith("mma-probe.json")]
    header = {}
    for f in jsons:
        with open(f) as fh:
            doc = json.load(fh)
        if isinstance(doc, dict) and "gpu" in doc and "rows" in doc:
            header = {k: doc.get(k) for k in ("gpu", "capability", "torch", "triton", "cuda", "commit", "date")}
            break
    name = lambda f: os.path.basename(f)  # noqa: E731
    lines = [f"Run `{stem}*` (files in `bench/results/`)."]
    if header:
        lines.append(f"GPU {header['gpu']} (sm {header['capability']}), torch {header['torch']}, triton {header['triton']}, "
                     f"CUDA {header['cuda']}, commit `{header['commit']}`, {header['date']}.")
    lines += ["", "**GPU tests** (junit files of bench/gpu_suite.sh):", ""]
    junits = [f for f in files if re.search(r"junit-[A-Za-z0-9_-]+\.xml$", f)]
    if not junits:
        lines.append("- no junit file: no test stage ran, or one was killed before writing it (see the log)")
    for f in junits:
        j = _junit(f)
        passed = j["tests"] - j["failures"] - j["errors"] - j["skipped"]
        lines.append(f"- `{name(f)}`: {passed} passed, {j['failures'] + j['errors']} failed, {j['skipped']} skipped")
        for t in j["failed"][:20]:
            lines.append(f"  - failed: `{t}`")
        if len(j["failed"]) > 20:
            lines.append(f"  - and {len(j['failed']) - 20} more")
    probes = [f for f in files if f.endswith("mma-probe.json")]
    lines += ["", "**Instruction probe** (bench/mma_probe.cu):", ""]
    if not probes:
        lines.append("- not in this run")
    for f in probes:
        with open(f) as fh:
            doc = json.load(fh)
        for fam in doc.get("families", []):
            extra = "" if fam["agree"] else f" (B register orders that agree: {fam.get('agreeing_b_orders') or 'none'})"
            lines.append(f"- {fam['name']}: {'agrees' if fam['agree'] else 'DISAGREES'} with the emulator{extra}")
        if "ldmatrix_x4" in doc:
            lines.append(f"- ldmatrix.x4: {'agrees' if doc['ldmatrix_x4']['agree'] else 'DISAGREES'}")
    lines += ["", "**Speed targets** (`sparsedm bench targets`; the worst matching shape counts):", ""]
    lines.append(targets.markdown(targets.evaluate(targets.load_rows(jsons))).rstrip("\n"))
    return "\n".join(lines) + "\n"


def write_docs(docs: str, text: str) -> None:
    with open(docs) as fh:
        doc = fh.read()
    if BEGIN not in doc or END not in doc or doc.index(BEGIN) > doc.index(END):
        raise IngestError(f"{docs}: no {BEGIN} ... {END} markers to write between")
    before, rest = doc.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    write_atomic(docs, before + BEGIN + "\n" + text + END + after)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="results-*.tar.gz archives, result files, gpu_suite.log, or folders of them")
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "results"), help="default: bench/results")
    parser.add_argument("--docs", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"), help="default: docs/BENCHMARKS.md")
    parser.add_argument("--dry-run", action="store_true", help="check and print the summary; write nothing")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            stem, files = plan(args.paths, args.results, scratch)
            # the summary comes from scratch copies, before anything is written: a file it
            # cannot read stops the whole ingest
            staged = os.path.join(scratch, "staged")
            os.makedirs(staged)
            for dest, data in files.items():
                with open(os.path.join(staged, os.path.basename(dest)), "wb") as fh:
                    fh.write(data)
            try:
                text = summary(stem, sorted(os.path.join(staged, os.path.basename(d)) for d in files))
            except (KeyError, TypeError, AttributeError) as e:
                raise IngestError(f"a result file of this run is not in the expected format ({type(e).__name__}: {e})")
            if not args.dry_run:
                with open(args.docs) as fh:  # the markers are checked before the results are written
                    if BEGIN not in fh.read():
                        raise IngestError(f"{args.docs}: no {BEGIN} ... {END} markers to write between")
                for dest, data in files.items():
                    write_atomic(dest, data)
                write_docs(args.docs, text)
    except (IngestError, OSError, ValueError, tarfile.TarError, ET.ParseError) as e:
        print(f"ingest_results: {e}", file=sys.stderr)
        return 2
    print(text)
    print(("would write" if args.dry_run else "wrote") + f" {len(files)} files to {args.results}"
          + ("" if args.dry_run else f" and the Latest numbers of {args.docs}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
