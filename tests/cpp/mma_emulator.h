// Host emulator of the warp-level tensor-core instructions sparsedm's CUDA GEMMs use, written
// from the PTX ISA fragment tables (sections "Matrix fragments for mma.m16n8k32" and "Matrix
// fragments for multiply-accumulate operation with sparse matrix A"), per element a_i / b_i /
// c_i, deliberately NOT through kernels/cuda/mma_layout.cuh (whose per-register formulation
// the tests check against this). Each emulator rebuilds the dense 16 x K tile of A from the 32
// lanes' fragments and metadata, the K x 8 tile of B, multiplies, and hands D back per lane.
//
// Operands are given per lane as element arrays in PTX order (a[lane][i] is a_i of that lane),
// already unpacked from registers: register r holds elements (2r, 2r+1) for 16-bit types and
// (4r .. 4r+3) for 8-bit types, lowest element in the lowest bits.
#pragma once

#include <cstdint>
#include <cstdio>

namespace emu {

inline int gid(int lane) { return lane >> 2; }
inline int tig(int lane) { return lane & 3; }

// B operand (k x 8 tokens, "col"): element b_i of a lane is column (token) gid(lane) and row
// (k) given below; the emulators place B through these, and tests/cpp/test_x_tile_ldmatrix.cpp
// checks the kernel's ldmatrix registers against them.
// f16/bf16, sparse m16n8k32 (PTX: figure only; the dense m16n8k16 B formula 2t + (i & 1),
// + 8 for i >= 2, continued by 8 per register pair): i in [0, 8).
inline int b_row_16bit(int lane, int i) { return 2 * tig(lane) + (i & 1) + 8 * (i >> 1); }
// 8-bit, dense m16n8k32 (PTX text: 4t + (i & 3), + 16 for i >= 4; i in [0, 8)) and sparse
// m16n8k64 (four figures of 16 rows, one per register; i in [0, 16)).
inline int b_row_8bit(int lane, int i) { return 4 * tig(lane) + (i & 3) + 16 * (i >> 2); }
inline int b_col(int lane) { return gid(lane); }

// Reads 2-bit index `which` (0: first kept, 1: second kept) of group `j` of row `row` out of
// the metadata registers, given which lanes hold which (row, group) nibbles.
// PTX m16n8k32 f16/bf16: the threads of each quad picked by the sparsity selector (0: T0,T1;
// 1: T2,T3) hold, for quad g: thread (selector*2 + c) bits [16h + 4q + 3 : 16h + 4q] = the
// nibble of row g + 8h, group 4c + q (c in {0,1}: columns 0-15 / 16-31).
inline int sp16_meta_index(const uint32_t e[32], int selector, int row, int j, int which) {
  const int g = row % 8, h = row / 8, c = j / 4, q = j % 4;
  const int lane = 4 * g + 2 * selector + c;
  return static_cast<int>((e[lane] >> (16 * h + 4 * q + 2 * which)) & 3u);
}

// m16n8k32 sparse, f16/bf16 (values as double: the test data are exact in both).
// a[lane][0..7]: compressed A 16x16; row = g for i in {0,1,4,5}, g+8 otherwise;
//                compressed col = 2t + (i & 1) + 8 * (i >= 4).
// b[lane][0..7]: B 32x8; row (k) = 2t + (i & 1) + 8 * (i >> 1); col = g.
// c/d[lane][0..3]: row = g + 8 * (i >= 2); col = 2t + (i & 1).
inline void mma_sp_m16n8k32(const double a[32][8], const double b[32][8], const uint32_t e[32], int selector,
                            const double c[32][4], double d[32][4]) {
  double A[16][32] = {}, B[32][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      const int row = gid(lane) + (((i >> 1) & 1) ? 8 : 0);
      const int ccol = 2 * tig(lane) + (i & 1) + (i >= 4 ? 8 : 0);
      const int group = ccol / 2, which = ccol % 2;
      const int idx = sp16_meta_index(e, selector, row, group, which);
      A[row][4 * group + idx] += a[lane][i];
      B[b_row_16bit(lane, i)][b_col(lane)] = b[lane][i];
    }
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const int row = gid(lane) + (i >= 2 ? 8 : 0), col = 2 * tig(lane) + (i & 1);
      double s = c[lane][i];
      for (int k = 0; k < 32; ++k) s += A[row][k] * B[k][col];
      d[lane][i] = s;
    }
}

// Metadata of m16n8k64 s8 (selector 0, all four threads of a quad contribute). A thread's
// 32 bits are 8 nibbles of ONE row: thread t of quad g holds row g + 8 * (t & 1), groups
// 8 * (t >> 1) + q (logical k 32 * (t >> 1) .. +31) at bits [4q + 3 : 4q], q in [0, 8).
// PTX ISA "Sparse matrix storage" (integer types: all four threads, selector 0) and the
// m16n8k64 .u8/.s8 metadata figures ("columns 0-31" held by T0 = row 0, T1 = row 8); the same
// thread map follows from CUTLASS's int8 metadata storage + ldmatrix load, which
// tests/cuda/test_emulator_cutlass.py feeds straight into this function.
inline int sp8_meta_index(const uint32_t e[32], int row, int j, int which) {
  const int g = row % 8, h = row / 8, half_k = j / 8, q = j % 8;
  return static_cast<int>((e[4 * g + 2 * half_k + h] >> (4 * q + 2 * which)) & 3u);
}

// m16n8k64 sparse s8 -> s32.
// a[lane][0..15]: compressed A 16x32; row = g for i in [0,4) U [8,12), g+8 otherwise;
//                 compressed col = 4t + (i & 3) + 16 * (i >= 8).
// b[lane][0..15]: B 64x8; row (k) = 4t + (i & 3) + 16 * (i >> 2); col = g.
inline void mma_sp_m16n8k64_s8(const int a[32][16], const int b[32][16], const uint32_t e[32], const int c[32][4],
                               int d[32][4]) {
  long long A[16][64] = {}, B[64][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 16; ++i) {
      const int row = gid(lane) + (((i >> 2) & 1) ? 8 : 0);
      const int ccol = 4 * tig(lane) + (i & 3) + (i >= 8 ? 16 : 0);
      const int group = ccol / 2, which = ccol % 2;
      A[row][4 * group + sp8_meta_index(e, row, group, which)] += a[lane][i];
      B[b_row_8bit(lane, i)][b_col(lane)] = b[lane][i];
    }
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const int row = gid(lane) + (i >= 2 ? 8 : 0), col = 2 * tig(lane) + (i & 1);
      long long s = c[lane][i];
      for (int k = 0; k < 64; ++k) s += A[row][k] * B[k][col];
      d[lane][i] = static_cast<int>(s);
    }
}

// Dense m16n8k32 s8 -> s32.
// a[lane][0..15]: A 16x32; row = g for i in [0,4) U [8,12), g+8 otherwise; col = 4t + (i & 3) + 16 * (i >= 8).
// b[lane][0..7]: B 32x8; row (k) = 4t + (i & 3) + 16 * (i >> 2); col = g.
inline void mma_m16n8k32_s8(const int a[32][16], const int b[32][8], const int c[32][4], int d[32][4]) {
  long long A[16][32] = {}, B[32][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 16; ++i)
      A[gid(lane) + (((i >> 2) & 1) ? 8 : 0)][4 * tig(lane) + (i & 3) + (i >= 8 ? 16 : 0)] = a[lane][i];
    for (int i = 0; i < 8; ++i) B[b_row_8bit(lane, i)][b_col(lane)] = b[lane][i];
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const int row = gid(lane) + (i >= 2 ? 8 : 0), col = 2 * tig(lane) + (i & 1);
      long long s = c[lane][i];
      for (int k = 0; k < 32; ++k) s += A[row][k] * B[k][col];
      d[lane][i] = static_cast<int>(s);
    }
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lanes 8j..8j+7 give the row addresses of matrix j
// (16 bytes each); register j of lane l receives 32-bit word (l % 4) of row (l / 4) of matrix j.
inline void ldmatrix_x4(const uint8_t* smem, const int row_addr[32], uint32_t out[32][4]) {
  for (int l = 0; l < 32; ++l)
    for (int j = 0; j < 4; ++j) {
      const uint8_t* p = smem + row_addr[8 * j + l / 4] + 4 * (l % 4);
      out[l][j] = p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24);
    }
}

}  // namespace emu
