"""Says whether the compiled extension ``sparsedm._C`` was built from the sources at hand.

    python bench/ext_stamp.py write [--archs 9.0]   after a build: record what it was built from
    python bench/ext_stamp.py check                  exit 0 when the build can be reused, else 1

The stamp (``sparsedm/_C.stamp``, ignored by git like the .so beside it) holds a hash of the
build inputs' contents (csrc/, kernels/cuda/, setup.py), the torch version built against and
the CUDA archs. ``check`` passes when the extension imports with its CUDA ops, the hash and
torch version match, and this GPU's arch is among the built ones. Contents, not file times:
a tree copied to another machine (bench/gpu_suite.sh on a lent GPU) has fresh times, and an
extension built elsewhere for that machine (bench/prebuild_extension.sh) must still count.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAMP = os.path.join(ROOT, "sparsedm", "_C.stamp")


def sources_hash() -> str:
    files = [p for pat in ("csrc/**/*", "kernels/cuda/**/*") for p in glob.glob(os.path.join(ROOT, pat), recursive=True)]
    files = sorted(os.path.relpath(p, ROOT) for p in files + [os.path.join(ROOT, "setup.py")] if os.path.isfile(p))
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode() + b"\0")
        with open(os.path.join(ROOT, rel), "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def write(archs: str) -> None:
    import torch

    doc = {"sources": sources_hash(), "torch": torch.__version__, "archs": archs}
    tmp = STAMP + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, STAMP)
    print(f"wrote {os.path.relpath(STAMP, ROOT)}: {doc}")


def _cuda_ops_problem() -> str | None:
    sys.path.insert(0, ROOT)
    import torch

    try:
        import sparsedm._C  # noqa: F401
    except ImportError as e:
        return f"sparsedm._C does not import: {e}"
    if not hasattr(torch.ops.sparsedm, "_cuda_sparse24_gemm"):
        return "sparsedm._C has no CUDA ops (a CPU-only build)"
    return None


def check(cuda_ops_problem=_cuda_ops_problem) -> str | None:
    """None when the built extension can be reused, else why not."""
    try:
        with open(STAMP) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return f"no readable {os.path.relpath(STAMP, ROOT)} (the extension was not built by this workflow)"
    problem = cuda_ops_problem()
    if problem is not None:
        return problem
    import torch

    if doc.get("torch") != torch.__version__:
        return f"built against torch {doc.get('torch')}, this is torch {torch.__version__}"
    if doc.get("sources") != sources_hash():
        return "the sources (csrc/, kernels/cuda/, setup.py) changed since the build"
    if torch.cuda.is_available():
        cap = "%d.%d" % torch.cuda.get_device_capability(0)
        # TORCH_CUDA_ARCH_LIST spellings: "8.0;9.0", "8.0 9.0", "9.0+PTX", "9.0a"
        if cap not in {f"{a}.{b}" for a, b in re.findall(r"(\d+)\.(\d+)", str(doc.get("archs", "")))}:
            return f"built for archs {doc.get('archs')}, this GPU is sm {cap}"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="record the sources, torch version and archs of the build just made")
    w.add_argument("--archs", default=os.environ.get("TORCH_CUDA_ARCH_LIST", ""), help="default: $TORCH_CUDA_ARCH_LIST")
    sub.add_parser("check", help="exit 0 when the built extension matches the sources, torch and this GPU")
    args = parser.parse_args(argv)
    if args.cmd == "write":
        write(args.archs)
        return 0
    why = check()
    print("sparsedm._C is up to date: reusing it" if why is None else f"sparsedm._C must be (re)built: {why}")
    return 0 if why is None else 1


if __name__ == "__main__":
    sys.exit(main())
