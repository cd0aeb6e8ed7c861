"""Checkpoint conversion: readers for each source, the writer, the file format and the loader.

- :func:`convert` (``sparsedm convert``): a checkpoint -> one ``.safetensors`` file with a manifest;
- :func:`load` (``sparsedm.load``): that file -> a ready model;
- :func:`read_header`: the validated container and manifest of a file.

Formats: docs/FORMAT.md ("File format"); readers and errors: docs/CONVERT.md.
"""

from sparsedm.convert.convert import Summary, convert, top2_compress
from sparsedm.convert.errors import ConvertError, FileFormatError
from sparsedm.convert.fileformat import FORMAT_VERSION, read_header
from sparsedm.convert.load import LoadedModel, load

__all__ = ["ConvertError", "FileFormatError", "FORMAT_VERSION", "LoadedModel", "Summary", "convert", "load", "read_header", "top2_compress"]
