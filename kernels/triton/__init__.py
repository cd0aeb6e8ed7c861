"""Triton kernels of sparsedm (installed as ``sparsedm.kernels``).

Importing this package registers every kernel family with the ``triton`` backend.
"""

from sparsedm.kernels import compress, conv2d  # noqa: F401
from sparsedm.kernels import linear  # noqa: F401
