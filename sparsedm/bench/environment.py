"""Who measured: the header every results file carries, and the GPU peaks rows compare to."""

from __future__ import annotations

import datetime
import os
import subprocess
from typing import Optional

import torch

import sparsedm

# Dense tensor-core peaks in TFLOP/s (fp16/bf16 with fp32 accumulation) and TOPS (int8),
# from the vendors' data sheets (DESIGN.md "Benchmark method"). Sparse peaks are twice these.
PEAKS = {
    "A100": {"fp16": 312.0, "bf16": 312.0, "int8": 624.0},
    "A40": {"fp16": 149.7, "bf16": 149.7, "int8": 299.3},
    "H100 SXM": {"fp16": 989.0, "bf16": 989.0, "int8": 1979.0},
    "H100 PCIe": {"fp16": 756.0, "bf16": 756.0, "int8": 1513.0},
    "H100": {"fp16": 989.0, "bf16": 989.0, "int8": 1979.0},  # HBM3 SXM part, the common one
    "H200": {"fp16": 989.0, "bf16": 989.0, "int8": 1979.0},
}


def gpu_peak(gpu_name: Optional[str], precision: str) -> Optional[float]:
    """Dense peak for the GPU whose name contains a known key (longest key wins)."""
    if not gpu_name:
        return None
    name = gpu_name.replace(" ", "").lower()
    for key in sorted(PEAKS, key=len, reverse=True):
        if key.replace(" ", "").lower() in name:
            return PEAKS[key].get(precision)
    return None


# Names the commit when the tree is a copy without git (a GPU runner that gets the files only).
ENV_COMMIT = "SPARSEDM_COMMIT"


def git_commit() -> Optional[str]:
    """The checkout's short commit (``-dirty`` with uncommitted changes), ``$SPARSEDM_COMMIT``
    when that is set, or None outside a git checkout."""
    given = os.environ.get(ENV_COMMIT, "").strip()
    if given:
        return given
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip() if out.returncode == 0 else None
    if commit:
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
        if dirty.strip():
            commit += "-dirty"
    return commit


def header(device: torch.device | str) -> dict:
    """The results-file header of DESIGN.md: gpu, capability, torch, triton, cuda, commit, date."""
    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        capability = f"{major}.{minor}"
    else:
        gpu, capability = "cpu", None
    return {
        "gpu": gpu,
        "capability": capability,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "sparsedm": sparsedm.__version__,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
