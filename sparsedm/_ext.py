"""Loads the compiled extension ``sparsedm._C`` if it was built.

The package works without it (reference and Triton paths); ``C`` is None then and
``import_error`` says why, for ``sparsedm info`` and the ``cuda`` backend's probe.
"""

from __future__ import annotations

from types import ModuleType
from typing import Optional

C: Optional[ModuleType]
import_error: Optional[str]

_HOW = (
    "reinstall with `pip install --no-build-isolation -e .` on a machine with a C++ compiler "
    "(and nvcc matching torch's CUDA for the CUDA kernels)"
)

try:
    import importlib

    import torch  # noqa: F401  (libtorch must be loaded before the extension)

    C = importlib.import_module("sparsedm._C")
    import_error = None
except ModuleNotFoundError:
    C = None
    import_error = f"sparsedm._C was not built; {_HOW}"
except ImportError as exc:  # built, but against another torch, or a missing library
    C = None
    import_error = f"sparsedm._C failed to load ({exc}); {_HOW}"
