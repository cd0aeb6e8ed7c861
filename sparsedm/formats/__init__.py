"""On-disk and in-memory formats: 2:4 masks and compression, int8 quantization."""

from sparsedm.formats.int8 import (
    Int8FormatError,
    dequantize_int8,
    quantize_activation_int8,
    quantize_weight_int8,
    quantize_with_scale,
)
from sparsedm.formats.sparse24 import (
    Sparse24FormatError,
    check_compressed,
    compress24,
    decompress24,
    gemm_view,
    is_24_sparse,
    mask24,
    unview_gemm,
)

__all__ = [
    "Int8FormatError",
    "Sparse24FormatError",
    "check_compressed",
    "compress24",
    "decompress24",
    "dequantize_int8",
    "gemm_view",
    "is_24_sparse",
    "mask24",
    "quantize_activation_int8",
    "quantize_weight_int8",
    "quantize_with_scale",
    "unview_gemm",
]
