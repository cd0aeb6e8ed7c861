// Canonical 2:4 metadata, shared by host code and CUDA kernels (docs/FORMAT.md).
//
// A weight row of K elements is split into K/4 groups; each group keeps two positions
// i0 < i1 in [0, 4). One nibble per group holds i0 | i1 << 2; a meta byte holds two groups,
// the even group in the low nibble. Plain C++ (no torch, no CUDA runtime), NVRTC-compatible.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define SPARSEDM_HD __host__ __device__ __forceinline__
#else
#define SPARSEDM_HD inline
#endif

namespace sparsedm {

// Nibble of one group from its kept positions; requires i0 < i1.
SPARSEDM_HD uint32_t meta_nibble(uint32_t i0, uint32_t i1) { return (i0 & 3u) | ((i1 & 3u) << 2); }

// Meta byte of an (even, odd) pair of groups.
SPARSEDM_HD uint32_t meta_byte(uint32_t even_nibble, uint32_t odd_nibble) {
  return (even_nibble & 0xFu) | ((odd_nibble & 0xFu) << 4);
}

// Kept position `which` (0: i0, 1: i1) of group `group_in_byte` (0: even, 1: odd) of a byte.
SPARSEDM_HD int meta_index(uint32_t byte, int group_in_byte, int which) {
  return static_cast<int>((byte >> (4 * group_in_byte + 2 * which)) & 3u);
}

// True when a nibble is canonical (i0 < i1); the other 10 of the 16 codes are invalid.
SPARSEDM_HD bool meta_nibble_valid(uint32_t nibble) { return (nibble & 3u) < ((nibble >> 2) & 3u); }

}  // namespace sparsedm
