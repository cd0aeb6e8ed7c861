// C entry points over the mma emulator for Python tests (tests/cuda/test_emulator_cutlass.py):
// one warp tile, operands distributed to the 32 lanes with the KERNEL's index functions
// (kernels/cuda/mma_layout.cuh) and multiplied by the PTX-table emulator (mma_emulator.h) --
// the same pair tests/cpp/test_mma_fragments.cpp checks -- so metadata produced elsewhere
// (torch's CUTLASS converter) can be pushed through the exact path the kernels use.
// Built by the test with the host compiler into a shared library; not part of the package.
#include <cstdint>

#include "mma_emulator.h"
#include "mma_layout.cuh"

using namespace sparsedm::layout;

// values: kept f16/bf16 values as double, [16, 16] row-major (2 per group, ascending k);
// meta16: [16, 2] uint16, row r word c = nibbles of groups 4c..4c+3 (group 4c lowest);
// b: [32, 8] (k, token) as double; d: [16, 8] output.
extern "C" int sparsedm_emu_sp16_tile(const double* values, const uint16_t* meta16, const double* b, double* d) {
  double a[32][8], bl[32][8], c[32][4] = {}, out[32][4];
  uint32_t e[32];
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {
      const int row = sp16_a_row(lane, r), group = sp16_a_group(lane, r);
      a[lane][2 * r] = values[row * 16 + 2 * group];
      a[lane][2 * r + 1] = values[row * 16 + 2 * group + 1];
      bl[lane][2 * r] = b[sp16_b_k(lane, r) * 8 + b_token(lane)];
      bl[lane][2 * r + 1] = b[(sp16_b_k(lane, r) + 1) * 8 + b_token(lane)];
    }
    const int fg = sp16_meta_first_group(lane);
    e[lane] = static_cast<uint32_t>(meta16[sp16_meta_row(lane, 0) * 2 + fg / 4]) |
              (static_cast<uint32_t>(meta16[sp16_meta_row(lane, 1) * 2 + fg / 4]) << 16);
  }
  emu::mma_sp_m16n8k32(a, bl, e, 0, c, out);
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) d[acc_row(lane, i) * 8 + acc_col(lane, i)] = out[lane][i];
  return 0;
}

// values: kept int8 [16, 32]; meta32: [16, 2] uint32, row r word c = groups 8c..8c+7
// (CUTLASS's int8 metadata element); b: int8 [64, 8] (k, token); d: int32 [16, 8].
extern "C" int sparsedm_emu_sp8_tile(const int8_t* values, const uint32_t* meta32, const int8_t* b, int32_t* d) {
  int a[32][16], bl[32][16], c[32][4] = {}, out[32][4];
  uint32_t e[32];
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {
      const int row = sp8_a_row(lane, r), group = sp8_a_group(lane, r);
      for (int j = 0; j < 4; ++j) {
        a[lane][4 * r + j] = values[row * 32 + 2 * group + j];
        bl[lane][4 * r + j] = b[(sp8_b_k(lane, r) + j) * 8 + b_token(lane)];
      }
    }
    const int fg = sp8_meta_first_group(lane);
    uint32_t word = 0;
    for (int half = 0; half < 2; ++half) {
      const uint32_t w = meta32[sp8_meta_row(lane, half) * 2 + fg / 8];
      word |= ((w >> (4 * (fg % 8))) & 0xFFFFu) << (16 * half);
    }
    e[lane] = word;
  }
  emu::mma_sp_m16n8k64_s8(a, bl, e, c, out);
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) d[acc_row(lane, i) * 8 + acc_col(lane, i)] = out[lane][i];
  return 0;
}
