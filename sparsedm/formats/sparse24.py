"""The canonical 2:4 format: masks, compression and decompression.

Layout (docs/FORMAT.md): a weight is viewed as a GEMM operand ``[N, K]`` with K the
reduction axis. Linear weights ``[N, K]`` are used as they are; conv weights
``[Cout, Cin, kh, kw]`` are viewed as ``[Cout, kh, kw, Cin]`` (KRSC) and flattened to
``[Cout, kh*kw*Cin]``, so cin is innermost in the reduction index. K is split into
groups of 4 consecutive elements, and each group keeps exactly 2 of them:

- ``values`` ``[N, K/2]``, the weight's dtype: the two kept elements of each group, in
  ascending index order;
- ``meta`` uint8 ``[N, K/8]``: one nibble per group, the even group in the low nibble;
  nibble = ``i0 | i1 << 2`` with ``i0 < i1`` the kept positions inside the group.

Everything here is vectorized torch and runs on any device.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = [
    "Sparse24FormatError",
    "gemm_view",
    "unview_gemm",
    "mask24",
    "is_24_sparse",
    "compress24",
    "decompress24",
    "check_compressed",
]


class Sparse24FormatError(ValueError):
    """A tensor does not satisfy the 2:4 contract (shape, dtype or sparsity pattern)."""


def gemm_view(weight: torch.Tensor) -> torch.Tensor:
    """Return the ``[N, K]`` GEMM view of a linear (2-D) or conv (4-D, KRSC) weight."""
    if weight.dim() == 2:
        return weight
    if weight.dim() == 4:
        cout = weight.shape[0]
        return weight.permute(0, 2, 3, 1).reshape(cout, -1)
    raise Sparse24FormatError(
        f"expected a 2-D linear weight [N, K] or a 4-D conv weight [Cout, Cin, kh, kw], "
        f"got a {weight.dim()}-D tensor of shape {tuple(weight.shape)}"
    )


def unview_gemm(matrix: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`gemm_view`: turn ``[N, K]`` back into ``shape`` (2-D or 4-D)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        if tuple(matrix.shape) != shape:
            raise Sparse24FormatError(f"decompressed shape {tuple(matrix.shape)} != requested {shape}")
        return matrix
    if len(shape) == 4:
        cout, cin, kh, kw = shape
        if tuple(matrix.shape) != (cout, kh * kw * cin):
            raise Sparse24FormatError(
                f"decompressed GEMM view {tuple(matrix.shape)} does not fit conv weight shape "
                f"{shape}: expected [Cout, kh*kw*Cin] = [{cout}, {kh * kw * cin}]"
            )
        return matrix.reshape(cout, kh, kw, cin).permute(0, 3, 1, 2).contiguous()
    raise Sparse24FormatError(f"shape must be 2-D or 4-D, got {shape}")


def _groups(weight: torch.Tensor, what: str) -> torch.Tensor:
    """``[N, K/4, 4]`` groups of the GEMM view; K must be a multiple of 4."""
    mat = gemm_view(weight)
    n, k = mat.shape
    if k % 4 != 0:
        raise Sparse24FormatError(
            f"{what}: reduction length K={k} is not a multiple of 4, so it cannot be split into "
            f"2:4 groups; this layer stays dense (pad in_features/channels or exclude it)"
        )
    return mat.reshape(n, k // 4, 4)


def _from_groups(groups: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``[N, K/4, 4]`` tensor back to the layout of ``like`` (2-D or 4-D)."""
    mat = groups.reshape(groups.shape[0], -1)
    return unview_gemm(mat, like.shape) if like.dim() == 4 else mat


def mask24(weight: torch.Tensor) -> torch.Tensor:
    """Bool mask of ``weight``'s shape keeping the 2 largest |w| of each group of 4.

    Groups run along the reduction axis (dim 1 of a linear weight; cin in the KRSC view of a
    conv weight). Ties go to the lower index. NaN counts as the largest magnitude so it is
    never silently dropped.
    """
    groups = _groups(weight, "mask24")
    mag = groups.abs().float()
    mag = torch.where(torch.isnan(mag), torch.full_like(mag, float("inf")), mag)
    # A stable descending sort keeps equal magnitudes in index order, so ties go low.
    order = torch.sort(mag, dim=-1, descending=True, stable=True).indices[..., :2]
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order, True)
    return _from_groups(keep, weight)


def is_24_sparse(weight: torch.Tensor) -> bool:
    """True when every group of 4 along the reduction axis holds at most 2 nonzeros."""
    mat = gemm_view(weight)
    if mat.shape[1] % 4 != 0:
        return False
    return bool(((_groups(weight, "is_24_sparse") != 0).sum(-1) <= 2).all())


def holds_24(shape: Sequence[int]) -> bool:
    """Whether a weight of ``shape`` (2-D linear, or 4-D conv in its KRSC view) can be stored in
    the 2:4 format: its reduction length K is a multiple of 8 (the meta byte packs two groups)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return shape[1] % 8 == 0
    if len(shape) == 4:
        return (shape[1] * shape[2] * shape[3]) % 8 == 0
    return False


def _check_k(k: int, what: str) -> None:
    if k % 8 != 0:
        raise Sparse24FormatError(
            f"{what}: reduction length K={k} is not a multiple of 8; the canonical meta packs "
            f"two 4-element groups per byte. This layer stays dense (pad in_features/channels "
            f"to a multiple of 8 or exclude it)"
        )


def compress24(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress a 2:4-sparse weight into canonical ``(values [N, K/2], meta uint8 [N, K/8])``.

    ``weight`` is 2-D ``[N, K]`` or a 4-D conv weight (compressed from its KRSC view). Every
    group of 4 must have at most 2 nonzeros; a group with fewer keeps its nonzero positions
    completed by its lowest-index zero positions. Apply :func:`mask24` first for a dense
    weight.
    """
    mat = gemm_view(weight)
    n, k = mat.shape
    _check_k(k, "compress24")
    groups = mat.reshape(n, k // 4, 4)
    nonzero = groups != 0
    counts = nonzero.sum(-1)
    bad = counts > 2
    if bool(bad.any()):
        row, group = (int(v) for v in bad.nonzero()[0])
        raise Sparse24FormatError(
            f"compress24: weight is not 2:4 sparse: row {row}, group {group} (elements "
            f"{4 * group}..{4 * group + 3} of the reduction axis) has {int(counts[row, group])} "
            f"nonzeros; apply sparsedm.formats.mask24 (or prune) first"
        )
    # Nonzero positions sort first (score = index), zero positions after (score = 4 + index);
    # the two smallest scores, which come out ascending, are the kept positions i0 < i1.
    position = torch.arange(4, device=mat.device, dtype=torch.int64)
    score = position + 4 * (~nonzero).to(torch.int64)
    kept = torch.sort(score, dim=-1).values[..., :2] % 4
    kept = torch.sort(kept, dim=-1).values
    values = torch.gather(groups, -1, kept).reshape(n, k // 2).contiguous()
    nibbles = (kept[..., 0] | (kept[..., 1] << 2)).to(torch.uint8)  # [N, K/4]
    meta = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).contiguous()
    return values, meta


def check_compressed(values: torch.Tensor, meta: torch.Tensor, what: str = "decompress24") -> tuple[int, int]:
    """Validate a canonical ``(values, meta)`` pair; return the GEMM shape ``(N, K)``."""
    if values.dim() != 2 or meta.dim() != 2:
        raise Sparse24FormatError(
            f"{what}: values and meta must be 2-D ([N, K/2] and [N, K/8]), got shapes "
            f"{tuple(values.shape)} and {tuple(meta.shape)}"
        )
    if meta.dtype != torch.uint8:
        raise Sparse24FormatError(f"{what}: meta must be uint8, got {meta.dtype}")
    n, half_k = values.shape
    k = 2 * half_k
    if k % 8 != 0 or tuple(meta.shape) != (n, k // 8):
        raise Sparse24FormatError(
            f"{what}: values {tuple(values.shape)} and meta {tuple(meta.shape)} do not match: "
            f"values [N, K/2] requires meta [N, K/8] = [{n}, {k / 8:g}] with K a multiple of 8"
        )
    if values.device != meta.device:
        raise Sparse24FormatError(f"{what}: values on {values.device} but meta on {meta.device}")
    return n, k


def _kept_positions(meta: torch.Tensor) -> torch.Tensor:
    """``[N, K/4, 2]`` int64 kept positions (i0, i1) decoded from canonical meta."""
    m = meta.to(torch.int64)
    nibbles = torch.stack((m & 0xF, m >> 4), dim=-1).reshape(meta.shape[0], -1)  # [N, K/4]
    return torch.stack((nibbles & 0x3, (nibbles >> 2) & 0x3), dim=-1)


def decompress24(values: torch.Tensor, meta: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
    """Expand canonical ``(values, meta)`` into the dense weight.

    Returns ``[N, K]``, or ``shape`` when given (a 4-D conv weight shape undoes the KRSC
    view). Metadata must be valid (``i0 < i1`` in every nibble).
    """
    n, k = check_compressed(values, meta)
    kept = _kept_positions(meta)
    if bool((kept[..., 0] >= kept[..., 1]).any()):
        row, group = (int(v) for v in (kept[..., 0] >= kept[..., 1]).nonzero()[0])
        raise Sparse24FormatError(
            f"decompress24: invalid meta at row {row}, group {group}: a nibble must hold "
            f"i0 | i1 << 2 with i0 < i1 (canonical layout, docs/FORMAT.md)"
        )
    dense = torch.zeros(n, k // 4, 4, dtype=values.dtype, device=values.device)
    dense.scatter_(-1, kept, values.reshape(n, k // 4, 2))
    dense = dense.reshape(n, k)
    return dense if shape is None else unview_gemm(dense, shape)
