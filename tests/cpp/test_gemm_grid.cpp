// Host checks of kernels/cuda/gemm_grid.cuh, the grid shapes of the GEMM and conv launches:
//  - token_grid / token_tile: grids of more than 65535 token tiles laid out as gridDim.z layers
//    cover every token tile exactly once, waste fewer than z tiles, stay inside the launch
//    limits, and keep every token index of every block in int32 up to grid::kMaxTokens;
//  - split_k::slice_range: for many (num_kb, splits) the slices are contiguous, non-empty, as
//    even as possible and cover every K stage exactly once;
//  - split_k::choose_splits: the rule's promises (docs/KERNELS.md, "Tile configurations and
//    split-K") over a sweep of shapes and SM counts, and its value on the U-ViT-L/2 linears.
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "gemm_grid.cuh"
#include "host_check.h"

using namespace sparsedm;

namespace {

// One layered grid: limits, waste, and (for small grids) that the block -> tile map is a
// bijection onto [0, y * z) whose first `tiles` values are the real tiles.
void check_token_grid(long tiles) {
  const grid::TokenGrid g = grid::token_grid(static_cast<int>(tiles));
  EXPECT(g.y >= 1 && g.y <= grid::kMaxGridY);
  EXPECT(g.z >= 1 && g.z <= grid::kMaxGridY);
  const long blocks = static_cast<long>(g.y) * g.z;
  EXPECT(blocks >= tiles);
  EXPECT(blocks - tiles < g.z);  // tiles past the end: fewer than one per layer
  if (tiles <= grid::kMaxGridY) EXPECT(g.z == 1 && g.y == tiles);
  // The fewest layers: one layer less could not hold the tiles.
  if (g.z > 1) EXPECT(static_cast<long>(grid::kMaxGridY) * (g.z - 1) < tiles);
  if (blocks <= 400000) {
    std::vector<unsigned char> seen(blocks, 0);
    for (int z = 0; z < g.z; ++z)
      for (int y = 0; y < g.y; ++y) {
        const int t = grid::token_tile(y, z, g.y);
        EXPECT(t >= 0 && t < blocks);
        if (t >= 0 && t < blocks) ++seen[t];
      }
    for (long t = 0; t < blocks; ++t) EXPECT(seen[t] == 1);
  } else {  // corners only: consecutive within a layer and across layers
    EXPECT(grid::token_tile(0, 0, g.y) == 0);
    EXPECT(grid::token_tile(g.y - 1, 0, g.y) + 1 == grid::token_tile(0, 1, g.y));
    EXPECT(static_cast<long>(grid::token_tile(g.y - 1, g.z - 1, g.y)) == blocks - 1);
  }
}

// The largest token index any block of a BT-token tile computes (t0 + BT - 1 of the last
// block, a padding tile included) must stay below 2^31 for M = grid::kMaxTokens.
void check_max_token(int bt) {
  const long M = grid::kMaxTokens;
  const long tiles = (M + bt - 1) / bt;
  const grid::TokenGrid g = grid::token_grid(static_cast<int>(tiles));
  const long last_first_token = static_cast<long>(grid::token_tile(g.y - 1, g.z - 1, g.y)) * bt;
  EXPECT(last_first_token + bt - 1 <= INT_MAX);
  // ... and one tile more tokens than the limit would still fit, so the limit is not tight
  // by accident of one rounding.
  EXPECT(last_first_token + 2 * bt - 1 <= INT_MAX);
}

void check_slices(int num_kb, int splits) {
  std::vector<int> covered(num_kb, 0);
  int next = 0, smallest = INT_MAX, largest = 0;
  for (int s = 0; s < splits; ++s) {
    const split_k::Range r = split_k::slice_range(num_kb, splits, s);
    EXPECT(r.count >= 1);       // every slice non-empty
    EXPECT(r.begin == next);    // contiguous, in slice order
    for (int kb = r.begin; kb < r.begin + r.count; ++kb) {
      EXPECT(kb >= 0 && kb < num_kb);
      if (kb >= 0 && kb < num_kb) ++covered[kb];
    }
    next = r.begin + r.count;
    smallest = r.count < smallest ? r.count : smallest;
    largest = r.count > largest ? r.count : largest;
  }
  EXPECT(next == num_kb);
  EXPECT(largest - smallest <= 1);  // as even as possible
  for (int kb = 0; kb < num_kb; ++kb) EXPECT(covered[kb] == 1);
}

int blocks_of(int M, int N) { return ((N + 63) / 64) * ((M + 15) / 16); }  // the Small tile

void check_rule(int M, int N, int num_kb, int sms) {
  const int s = split_k::choose_splits(M, N, num_kb, sms, 64, 16, 0);
  const long blocks = blocks_of(M, N);
  EXPECT(s >= 1 && s <= split_k::kMaxSplits);
  if (M > split_k::kMaxTokens || blocks >= sms) EXPECT(s == 1);
  if (s > 1) {
    EXPECT(num_kb / s >= split_k::kMinStagesPerSlice);  // every slice keeps >= 4 stages
    EXPECT(blocks * s < 2 * sms);                        // at most 2 waves
    const bool capped = s == num_kb / split_k::kMinStagesPerSlice || s == split_k::kMaxSplits;
    if (!capped) EXPECT(blocks * s >= sms);              // else at least 1 wave
    if (!capped) EXPECT(blocks * (s - 1) < sms);         // and the fewest slices that do it
  }
  if (s == 1 && M <= split_k::kMaxTokens && blocks < sms) EXPECT(num_kb < 2 * split_k::kMinStagesPerSlice);
}

}  // namespace

int main() {
  // Token layering: small, around each multiple of 65535, the 256x256 batch-64 conv (M = 2^22
  // pixels: 65536 tiles of 64, 262144 of 16) and the largest M.
  const long edges[] = {1, 2, 1000, 65534, 65535, 65536, 65537, 131070, 131071, 131072, 196605, 196606,
                        262144, 65536L * 3 + 7, 1L << 22, (grid::kMaxTokens + 15L) / 16, (grid::kMaxTokens + 63L) / 64};
  for (long tiles : edges) check_token_grid(tiles);
  for (long tiles = 1; tiles < (1L << 27); tiles = tiles * 3 + 1) check_token_grid(tiles);
  {
    const grid::TokenGrid g = grid::token_grid((1 << 22) / 64);
    EXPECT(g.z == 2 && g.y == 32768);
  }
  check_max_token(16);
  check_max_token(64);

  // Split-K partition.
  for (int num_kb = 1; num_kb <= 300; ++num_kb)
    for (int splits = 1; splits <= num_kb && splits <= 70; ++splits) check_slices(num_kb, splits);

  // Forced counts: clamped to [1, num_kb] only.
  EXPECT(split_k::choose_splits(1, 1024, 16, 108, 64, 16, 3) == 3);
  EXPECT(split_k::choose_splits(4096, 4096, 16, 108, 64, 16, 5) == 5);
  EXPECT(split_k::choose_splits(1, 1024, 16, 108, 64, 16, 100) == 16);
  EXPECT(split_k::choose_splits(1, 1024, 16, 108, 64, 16, 1) == 1);

  // The rule over a sweep.
  const int sms_list[] = {46, 84, 108, 132};
  const int kb_list[] = {1, 2, 4, 7, 8, 9, 16, 32, 64, 128, 512};
  for (int sms : sms_list)
    for (int M = 1; M <= 130; M += (M < 70 ? 1 : 17))
      for (int N = 16; N <= 16384; N *= 2)
        for (int num_kb : kb_list) check_rule(M, N, num_kb, sms);

  // U-ViT-L/2 linears (D 1024): (N, K) of qkv, proj, fc1, fc2 at M = 1, 33, 64 on A100 (108 SMs)
  // and H100 SXM (132 SMs); K stage 64 (f16/bf16) and 128 (int8). Printed for the docs.
  const int shapes[4][2] = {{3072, 1024}, {1024, 1024}, {4096, 1024}, {1024, 4096}};
  const int expect_f16_m1_108[4] = {3, 4, 2, 7}, expect_i8_m1_108[4] = {2, 2, 2, 7};
  const int expect_f16_m1_132[4] = {3, 4, 3, 9};
  std::printf("U-ViT-L/2 split-K (auto): layer N K | f16 M=1/33/64 on 108, 132 SMs | int8 M=1/33/64 on 108, 132 SMs\n");
  for (int i = 0; i < 4; ++i) {
    const int N = shapes[i][0], K = shapes[i][1];
    int f16[2][3], i8[2][3];
    for (int d = 0; d < 2; ++d)
      for (int j = 0; j < 3; ++j) {
        const int M = j == 0 ? 1 : (j == 1 ? 33 : 64), sms = d == 0 ? 108 : 132;
        f16[d][j] = split_k::choose_splits(M, N, K / 64, sms, 64, 16, 0);
        i8[d][j] = split_k::choose_splits(M, N, K / 128, sms, 64, 16, 0);
      }
    std::printf("  %5d %5d | %d/%d/%d, %d/%d/%d | %d/%d/%d, %d/%d/%d\n", N, K, f16[0][0], f16[0][1], f16[0][2], f16[1][0],
                f16[1][1], f16[1][2], i8[0][0], i8[0][1], i8[0][2], i8[1][0], i8[1][1], i8[1][2]);
    EXPECT(f16[0][0] == expect_f16_m1_108[i]);
    EXPECT(i8[0][0] == expect_i8_m1_108[i]);
    EXPECT(f16[1][0] == expect_f16_m1_132[i]);
  }

  return host_check::finish("gemm_grid");
}
