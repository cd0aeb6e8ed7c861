"""The one error type of the converter, loader and file reader.

Every message names the problem and the fix in one line (STYLE.md lesson 5); the CLI prints
it as is, without a traceback unless ``--debug``.
"""

from __future__ import annotations


class ConvertError(Exception):
    """A checkpoint or .safetensors file cannot be converted or loaded; the message says why and what to do."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class FileFormatError(ConvertError):
    """A sparsedm .safetensors file is truncated, corrupted or disagrees with its manifest."""
