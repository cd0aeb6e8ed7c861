"""Test setup shared by the whole suite.

Without a CUDA GPU the Triton kernels run in Triton's CPU interpreter, which must be chosen
before any kernel is defined, so TRITON_INTERPRET is set here, before sparsedm is imported.
Tests marked ``gpu`` are skipped when CUDA is unavailable.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}"
