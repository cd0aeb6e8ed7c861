"""Triton kernels of sparsedm (installed as ``sparsedm.kernels``).

Importing this package registers every kernel family with the ``triton`` backend.
"""
