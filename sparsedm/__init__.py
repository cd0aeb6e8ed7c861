"""sparsedm: 2:4 semi-structured sparse and int8 inference for diffusion models."""

from sparsedm._version import __version__
from sparsedm import formats, ops
from sparsedm.ops import BackendUnavailableError, use_backend
from sparsedm.nn import last_report, optimize

__all__ = ["__version__", "formats", "ops", "BackendUnavailableError", "use_backend"]
__all__ += ["optimize", "last_report"]
from sparsedm.convert import load  # noqa: E402  (sparsedm.load: a converted file -> a ready model)

__all__ += ["load"]
