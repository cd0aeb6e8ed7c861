// Grid shapes of the sparsedm GEMM and conv launches (docs/KERNELS.md, "CUDA GEMMs": "Grid and
// token limits", "Tile configurations and split-K"): how token tiles map to blocks when there
// are more than gridDim.y allows, which K stages a split-K slice reduces, and how many slices
// the launcher picks. Plain __host__ __device__ C++ so that tests/cpp/test_gemm_grid.cpp checks
// them on the host (csrc/cuda/gemm_launch.cuh and gemm_mma.cuh use exactly these functions).
// Torch-free, NVRTC-compatible.
#pragma once

#include "sparse24_meta.cuh"  // SPARSEDM_HD

namespace sparsedm {
namespace grid {

// Largest gridDim.y (and gridDim.z) of a launch.
constexpr int kMaxGridY = 65535;

// Largest M (tokens, or conv output pixels). Token indices are int32; token_grid rounds the
// tile count up by fewer than z <= 2^11 tiles of at most 64 tokens, so 2^31 - 2^18 keeps every
// token index of every block below 2^31. (Offsets that scale with M, such as token * N,
// token * row bytes and workspace slices, are 64-bit in the kernels.)
constexpr int kMaxTokens = 0x7FFC0000;

// `tiles` token tiles as z layers of y tiles: block (blockIdx.y, blockIdx.z) owns token tile
// z * y + blockIdx.y (token_tile). The fewest layers with y <= kMaxGridY, and y = ceil(tiles /
// z), so y * z - tiles < z: the tiles past the end (zero-filled loads, no stores) are at most
// z - 1. Every tiles <= kMaxGridY gives z = 1, the plain grid. A 3x3 conv on 256x256 images at
// batch 64 (M = 2^22 pixels, 65536 tiles of 64) gives z = 2, y = 32768.
struct TokenGrid {
  int y, z;
};
SPARSEDM_HD TokenGrid token_grid(int tiles) {
  TokenGrid g;
  g.z = (tiles + kMaxGridY - 1) / kMaxGridY;
  g.y = (tiles + g.z - 1) / g.z;
  return g;
}
SPARSEDM_HD int token_tile(unsigned block_y, unsigned block_z, unsigned grid_y) {
  return static_cast<int>(block_z * grid_y + block_y);
}

}  // namespace grid

// ---- split-K ----------------------------------------------------------------------------
// At few tokens (sampling at batch 1: M = 1..64) a GEMM streams its weight once and does
// little else, so its speed is the memory bandwidth its grid can pull. The Small tile
// (64 features x 16 tokens) gives only N/64 blocks per 16 tokens, e.g. 16 blocks for N = 1024
// on a GPU with 108-132 SMs. Split-K multiplies the grid by cutting the K loop into `splits`
// contiguous slices (blockIdx.z); each slice writes its raw accumulators to a workspace
// [splits, M, N] and a second kernel sums the slices in a fixed order and applies the epilogue.
namespace split_k {

// K stages [begin, begin + count) of slice `slice` out of `splits` over num_kb stages.
struct Range {
  int begin, count;
};

// As even as possible: the first num_kb % splits slices get one stage more. Contiguous slices
// in slice order, so their union is [0, num_kb) with every stage in exactly one slice; every
// slice is non-empty when 1 <= splits <= num_kb (the launcher guarantees it).
SPARSEDM_HD Range slice_range(int num_kb, int splits, int slice) {
  const int base = num_kb / splits, extra = num_kb % splits;
  Range r;
  r.begin = slice * base + (slice < extra ? slice : extra);
  r.count = base + (slice < extra ? 1 : 0);
  return r;
}

// The automatic rule's constants (reasons in docs/KERNELS.md; UNMEASURED on hardware, to be
// tuned with bench/bench_cuda_gemm.py --split-k on a GPU).
constexpr int kMaxTokens = 64;         // split only for M <= 64: above that the workspace traffic
                                       // (2 * splits * M * N * 4 bytes) nears the weight bytes
constexpr int kMinStagesPerSlice = 4;  // a slice shorter than the 4-stage cp.async pipeline
                                       // spends most of its time filling and draining it
constexpr int kMaxSplits = 16;         // bounds the workspace and the reduction's reads

// Number of K slices for an M x N GEMM with num_kb K stages on `sms` SMs, run with a tile of
// tile_n features x tile_t tokens (the Small tile). 1 = no split. forced > 0 overrides the
// rule (tests, benchmarks) and is only clamped to [1, num_kb] so that no slice is empty.
//
// Rule: split only when M <= kMaxTokens and the unsplit grid has fewer blocks than SMs; then
// the fewest slices that give every SM a block (ceil(sms / blocks): the grid becomes 1 to 2
// waves of SMs), capped so that each slice keeps kMinStagesPerSlice stages, and by kMaxSplits.
SPARSEDM_HD int choose_splits(int M, int N, int num_kb, int sms, int tile_n, int tile_t, int forced) {
  if (num_kb < 1) return 1;
  if (forced > 0) return forced < num_kb ? forced : num_kb;
  if (M > kMaxTokens) return 1;
  const long blocks = static_cast<long>((N + tile_n - 1) / tile_n) * ((M + tile_t - 1) / tile_t);
  if (blocks >= sms) return 1;
  long splits = (sms + blocks - 1) / blocks;
  const int by_stages = num_kb / kMinStagesPerSlice;
  if (splits > by_stages) splits = by_stages;
  if (splits > kMaxSplits) splits = kMaxSplits;
  return splits > 1 ? static_cast<int>(splits) : 1;
}

}  // namespace split_k
}  // namespace sparsedm
