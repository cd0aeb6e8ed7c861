// C entry points over the mma emulator for Python tests (tests/cuda/test_emulator_cutlass.py):
// one warp tile, operands distributed to the 32 lanes with the KERNEL's index functions
// (kernels/cuda/mma_layout.cuh) and multiplied by the PTX-table emulator (mma_emulator.h) --
// the same pair tests/cpp/test_mma_fragments.cpp checks -- so metadata produced elsewhere
// (torch's CUTLASS converter) can be pushed through the exact path the kernels use.
// Built by the test with the host compiler into a shared library; not part of the package.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "conv_emulation.h"
#include "mma_emulator.h"
#include "mma_layout.cuh"
#include "relayout.cuh"

using namespace sparsedm::layout;

// The tiles with the metadata REGISTERS given per lane (e[32]): lets a test hand the emulator
// the registers CUTLASS's warp-level metadata iterator would load, so the emulator's metadata
// thread map is checked against CUTLASS's storage layout independently of sparsedm's kernel
// code. values: kept values [16, K/2] row-major (ascending k per group); b: [K, 8] (k, token).
extern "C" int sparsedm_emu_sp16_tile_regs(const double* values, const uint32_t* e, int selector, const double* b,
                                           double* d) {
  double a[32][8], bl[32][8], c[32][4] = {}, out[32][4];
  uint32_t el[32];
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {
      const int row = sp16_a_row(lane, r), group = sp16_a_group(lane, r);
      a[lane][2 * r] = values[row * 16 + 2 * group];
      a[lane][2 * r + 1] = values[row * 16 + 2 * group + 1];
      bl[lane][2 * r] = b[sp16_b_k(lane, r) * 8 + b_token(lane)];
      bl[lane][2 * r + 1] = b[(sp16_b_k(lane, r) + 1) * 8 + b_token(lane)];
    }
    el[lane] = e[lane];
  }
  emu::mma_sp_m16n8k32(a, bl, el, selector, c, out);
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) d[acc_row(lane, i) * 8 + acc_col(lane, i)] = out[lane][i];
  return 0;
}

extern "C" int sparsedm_emu_sp8_tile_regs(const int8_t* values, const uint32_t* e, const int8_t* b, int32_t* d) {
  int a[32][16], bl[32][16], c[32][4] = {}, out[32][4];
  uint32_t el[32];
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {
      const int row = sp8_a_row(lane, r), group = sp8_a_group(lane, r);
      for (int j = 0; j < 4; ++j) {
        a[lane][4 * r + j] = values[row * 32 + 2 * group + j];
        bl[lane][4 * r + j] = b[(sp8_b_k(lane, r) + j) * 8 + b_token(lane)];
      }
    }
    el[lane] = e[lane];
  }
  emu::mma_sp_m16n8k64_s8(a, bl, el, c, out);
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) d[acc_row(lane, i) * 8 + acc_col(lane, i)] = out[lane][i];
  return 0;
}

// The same tiles with the metadata registers built by the KERNEL's metadata lane functions.
// values: kept f16/bf16 values as double, [16, 16]; meta16: [16, 2] uint16, row r word c =
// nibbles of groups 4c..4c+3 (group 4c lowest); b: [32, 8] (k, token) as double; d: [16, 8].
extern "C" int sparsedm_emu_sp16_tile(const double* values, const uint16_t* meta16, const double* b, double* d) {
  uint32_t e[32];
  for (int lane = 0; lane < 32; ++lane) {
    const int fg = sp16_meta_first_group(lane);
    e[lane] = static_cast<uint32_t>(meta16[sp16_meta_row(lane, 0) * 2 + fg / 4]) |
              (static_cast<uint32_t>(meta16[sp16_meta_row(lane, 1) * 2 + fg / 4]) << 16);
  }
  return sparsedm_emu_sp16_tile_regs(values, e, 0, b, d);
}

// values: kept int8 [16, 32]; meta32: [16, 2] uint32, row r word c = groups 8c..8c+7
// (CUTLASS's int8 metadata element); b: int8 [64, 8] (k, token); d: int32 [16, 8].
extern "C" int sparsedm_emu_sp8_tile(const int8_t* values, const uint32_t* meta32, const int8_t* b, int32_t* d) {
  uint32_t e[32];
  for (int lane = 0; lane < 32; ++lane) {
    uint32_t word = 0;
    for (int half = 0; half < 2; ++half) {
      const int fg = sp8_meta_first_group(lane, half);
      const uint32_t w = meta32[sp8_meta_row(lane) * 2 + fg / 8];
      word |= ((w >> (4 * (fg % 8))) & 0xFFFFu) << (16 * half);
    }
    e[lane] = word;
  }
  return sparsedm_emu_sp8_tile_regs(values, e, b, d);
}

// The metadata register each lane passes to mma.sp in the KERNEL, for every sparse k-step
// (32 logical k for SP16, 64 for SP8) and 16-row tile, straight from
// the load-time re-layout (relayout::meta_word) and the kernel's read index (meta_entry,
// meta_word_index). meta: canonical uint8 [N, K/8]; family 0 = SP16, 1 = SP8;
// out: uint32 [K / k_step][N / 16][32].
extern "C" int sparsedm_kernel_meta_registers(int family, const uint8_t* meta, int N, int K, uint32_t* out) {
  namespace rl = sparsedm::relayout;
  const int n_tiles = N / 16;
  const int k_stage = family == 0 ? Sp16::kKPerStage : Sp8::kKPerStage;
  if (N % 16 != 0 || K % k_stage != 0) return 1;
  long o = 0;
  for (int kb = 0; kb < K / k_stage; ++kb)
    for (int s = 0; s < 2; ++s)
      for (int mt = 0; mt < n_tiles; ++mt)
        for (int lane = 0; lane < 32; ++lane) {
          if (family == 0) {
            const long idx = meta_word_index<Sp16>(kb, mt, n_tiles, Sp16::meta_entry(lane), s);
            out[o++] = rl::meta_word<rl::kSp16>(idx, meta, N, K);
          } else {
            const long idx = meta_word_index<Sp8>(kb, mt, n_tiles, Sp8::meta_entry(lane), s);
            out[o++] = rl::meta_word<rl::kSp8>(idx, meta, N, K);
          }
        }
  return 0;
}

// One whole convolution through the 2:4 conv kernel's emulated data path (conv_emulation.h):
// x NHWC integers, w the KRSC view [Cout, kh*kw*C] of a 2:4 integer weight, out [N*P*Q, Cout].
// small_tile: the small block (16 tokens) instead of the large one (64). Returns 0, or 1 when
// the emulation refused (a weight group that is not 2:4, a bad copy; the reason is on stderr).
extern "C" int sparsedm_emu_conv(int N, int H, int W, int C, int Cout, int kh, int kw, int sh, int sw, int ph, int pw,
                                 int dh, int dw, const int* x, const int* w, double* out, int small_tile) {
  const sparsedm::convemu::ConvCase cs{"capi", N, H, W, C, Cout, kh, kw, sh, sw, ph, pw, dh, dw};
  const std::vector<int> xv(x, x + static_cast<size_t>(N) * H * W * C);
  const std::vector<int> wv(w, w + static_cast<size_t>(Cout) * kh * kw * C);
  std::vector<double> got;
  const bool ok = small_tile ? sparsedm::convemu::emulate_conv<16, 128>(cs, xv, wv, got)
                             : sparsedm::convemu::emulate_conv<64, 128>(cs, xv, wv, got);
  if (!ok) return 1;
  std::copy(got.begin(), got.end(), out);
  return 0;
}
