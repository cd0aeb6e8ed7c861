// Host proof of the CUDA GEMMs' warp-level layouts (kernels/cuda/mma_layout.cuh, relayout.cuh).
//
// For each instruction family, a small layer (N = 32 features, K = 2 stages, 16 tokens) is
// compressed to the canonical form, re-laid out with the same functions the GPU re-layout
// kernel runs, and then 32 emulated lanes do exactly what gemm_kernel does for one warp: read
// the weight fragment words and metadata words at the kernel's indices, ldmatrix the B
// fragments out of the swizzled shared-memory image of the activation tile, and issue the mma
// to the PTX-table emulator (mma_emulator.h). The result, scattered through the kernel's
// accumulator map, must equal the plain product exactly (integer-valued data). A deliberately
// wrong metadata lane must fail, so the check is not vacuous.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "mma_emulator.h"
#include "mma_layout.cuh"
#include "relayout.cuh"

using namespace sparsedm;

namespace {

int failures = 0;
std::mt19937 rng(1234);

int rand_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
int rand_nonzero(int lim) {
  int v = 0;
  while (v == 0) v = rand_int(-lim, lim);
  return v;
}

// fp16 bits of a small integer-valued float (exact), and back.
uint16_t float_to_half_bits(float f) {
  if (f == 0.f) return 0;
  const uint16_t sign = f < 0 ? 0x8000 : 0;
  int e = 0;
  const float m = std::frexp(std::fabs(f), &e);  // f = m * 2^e, m in [0.5, 1)
  const uint16_t exp_bits = static_cast<uint16_t>(e - 1 + 15);
  const uint16_t mant = static_cast<uint16_t>((m * 2.f - 1.f) * 1024.f);
  return static_cast<uint16_t>(sign | (exp_bits << 10) | mant);
}
double half_bits_to_double(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  const double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}
uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);  // exact for the small integers used here
}
double bf16_bits_to_double(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A random 2:4 weight [N, K] (integers, kept values nonzero), canonically compressed:
// kept values (ascending k) and meta bytes (i0 | i1 << 2, even group in the low nibble).
struct Sparse24 {
  int N, K;
  std::vector<int> dense, kept;  // [N, K], [N, K/2]
  std::vector<uint8_t> meta;     // [N, K/8]
  Sparse24(int n, int k, int lim) : N(n), K(k), dense(n * k, 0), kept(n * k / 2), meta(n * k / 8, 0) {
    for (int r = 0; r < N; ++r)
      for (int gr = 0; gr < K / 4; ++gr) {
        const int i0 = rand_int(0, 2), i1 = rand_int(i0 + 1, 3);
        const int v0 = rand_nonzero(lim), v1 = rand_nonzero(lim);
        dense[r * K + 4 * gr + i0] = v0;
        dense[r * K + 4 * gr + i1] = v1;
        kept[r * K / 2 + 2 * gr] = v0;
        kept[r * K / 2 + 2 * gr + 1] = v1;
        meta[r * K / 8 + gr / 2] |= static_cast<uint8_t>(meta_nibble(i0, i1) << (4 * (gr % 2)));
      }
  }
};

std::vector<uint32_t> pack16(const std::vector<uint16_t>& h) {
  std::vector<uint32_t> w(h.size() / 2);
  for (size_t i = 0; i < w.size(); ++i) w[i] = h[2 * i] | (static_cast<uint32_t>(h[2 * i + 1]) << 16);
  return w;
}
std::vector<uint32_t> pack8(const std::vector<int>& b) {
  std::vector<uint32_t> w(b.size() / 4);
  for (size_t i = 0; i < w.size(); ++i)
    for (int j = 0; j < 4; ++j) w[i] |= static_cast<uint32_t>(static_cast<uint8_t>(b[4 * i + j])) << (8 * j);
  return w;
}

// Shared-memory image of one stage of activations exactly as gemm_kernel's cp.async writes it:
// tokens x 128 bytes, chunk c of token row r at smem_x_byte_offset(r, c).
std::vector<uint8_t> smem_stage(const std::vector<uint8_t>& xbytes, int tokens, int row_bytes, int kb) {
  std::vector<uint8_t> s(tokens * 128);
  for (int r = 0; r < tokens; ++r)
    for (int c = 0; c < 8; ++c)
      std::memcpy(&s[layout::smem_x_byte_offset(r, c)], &xbytes[r * row_bytes + kb * 128 + c * 16], 16);
  return s;
}

// The B registers of token tile nt for half `half` of the stage, as the kernel's ldmatrix gets them.
void load_b(const std::vector<uint8_t>& smem, int nt, int half, uint32_t breg[32][4]) {
  int addr[32];
  for (int lane = 0; lane < 32; ++lane)
    addr[lane] = layout::smem_x_byte_offset(nt * 8 + layout::ldsm_x4_token(lane), 4 * half + layout::ldsm_x4_chunk(lane));
  emu::ldmatrix_x4(smem.data(), addr, breg);
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

constexpr int kN = 32, kM = 16;

// fp16/bf16 2:4 (m16n8k32). bug = 1: each lane takes its neighbour's metadata entry.
template <bool kBf16>
bool run_sp16(int bug) {
  using S = layout::Sp16;
  const int K = 2 * S::kKPerStage, n_tiles = kN / 16;
  Sparse24 w(kN, K, 4);
  std::vector<uint16_t> vbits(w.kept.size()), xbits(kM * K);
  std::vector<int> x(kM * K);
  for (size_t i = 0; i < w.kept.size(); ++i) vbits[i] = kBf16 ? float_to_bf16_bits(w.kept[i]) : float_to_half_bits(w.kept[i]);
  for (int i = 0; i < kM * K; ++i) {
    x[i] = rand_int(-4, 4);
    xbits[i] = kBf16 ? float_to_bf16_bits(x[i]) : float_to_half_bits(x[i]);
  }
  auto to_double = [](uint16_t h) { return kBf16 ? bf16_bits_to_double(h) : half_bits_to_double(h); };
  const std::vector<uint32_t> src = pack16(vbits);
  std::vector<uint32_t> aw(relayout::a_words(relayout::kSp16, kN, K)), mw(relayout::meta_words(relayout::kSp16, kN, K));
  for (size_t i = 0; i < aw.size(); ++i) aw[i] = src[relayout::a_source_word<relayout::kSp16>(i, kN, K)];
  for (size_t i = 0; i < mw.size(); ++i) mw[i] = relayout::meta_word<relayout::kSp16>(i, w.meta.data(), kN, K);
  std::vector<uint8_t> xbytes(kM * K * 2);
  std::memcpy(xbytes.data(), xbits.data(), xbytes.size());

  double acc[2][2][32][4] = {};
  for (int kb = 0; kb < K / S::kKPerStage; ++kb) {
    const std::vector<uint8_t> smem = smem_stage(xbytes, kM, 2 * K, kb);
    for (int half = 0; half < 2; ++half)
      for (int nt = 0; nt < 2; ++nt) {
        uint32_t breg[32][4];
        load_b(smem, nt, half, breg);
        for (int mt = 0; mt < n_tiles; ++mt) {
          double a[32][8], b[32][8];
          uint32_t e[32];
          for (int lane = 0; lane < 32; ++lane) {
            for (int r = 0; r < 4; ++r) {
              const uint32_t word = aw[layout::a_word_index<S>(kb, mt, n_tiles, half, lane, r)];
              a[lane][2 * r] = to_double(word & 0xFFFF);
              a[lane][2 * r + 1] = to_double(word >> 16);
              b[lane][2 * r] = to_double(breg[lane][r] & 0xFFFF);
              b[lane][2 * r + 1] = to_double(breg[lane][r] >> 16);
            }
            const int entry = S::meta_entry(bug ? (lane ^ 1) : lane);
            e[lane] = mw[layout::meta_word_index<S>(kb, mt, n_tiles, entry, half)];
          }
          emu::mma_sp_m16n8k32(a, b, e, 0, acc[mt][nt], acc[mt][nt]);
        }
      }
  }
  bool ok = true;
  for (int mt = 0; mt < n_tiles; ++mt)
    for (int nt = 0; nt < 2; ++nt)
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) {
          const int f = mt * 16 + layout::acc_row(lane, i), tok = nt * 8 + layout::acc_col(lane, i);
          long long want = 0;
          for (int k = 0; k < K; ++k) want += static_cast<long long>(w.dense[f * K + k]) * x[tok * K + k];
          ok = ok && acc[mt][nt][lane][i] == static_cast<double>(want);
        }
  return ok;
}

// int8: 2:4 (m16n8k64) when kSparse, dense (m16n8k32) otherwise.
template <bool kSparse>
bool run_int8(int bug) {
  constexpr int kStepsPerHalf = kSparse ? 1 : 2;
  const int K = 256, n_tiles = kN / 16;
  Sparse24 w(kN, K, 127);
  std::vector<int> dense_w(kN * K), x(kM * K);
  for (int i = 0; i < kN * K; ++i) dense_w[i] = kSparse ? w.dense[i] : rand_int(-127, 127);
  for (int i = 0; i < kM * K; ++i) x[i] = rand_int(-127, 127);
  const std::vector<uint32_t> src = pack8(kSparse ? w.kept : dense_w);
  const int fam = kSparse ? relayout::kSp8 : relayout::kD8;
  std::vector<uint32_t> aw(relayout::a_words(fam, kN, K)), mw(relayout::meta_words(fam, kN, K));
  for (size_t i = 0; i < aw.size(); ++i)
    aw[i] = src[kSparse ? relayout::a_source_word<relayout::kSp8>(i, kN, K) : relayout::a_source_word<relayout::kD8>(i, kN, K)];
  if (kSparse)
    for (size_t i = 0; i < mw.size(); ++i) mw[i] = relayout::meta_word<relayout::kSp8>(i, w.meta.data(), kN, K);
  std::vector<uint8_t> xbytes(kM * K);
  for (int i = 0; i < kM * K; ++i) xbytes[i] = static_cast<uint8_t>(static_cast<int8_t>(x[i]));

  int acc[2][2][32][4] = {};
  for (int kb = 0; kb < K / 128; ++kb) {
    const std::vector<uint8_t> smem = smem_stage(xbytes, kM, K, kb);
    for (int half = 0; half < 2; ++half)
      for (int nt = 0; nt < 2; ++nt) {
        uint32_t breg[32][4];
        load_b(smem, nt, half, breg);
        for (int sub = 0; sub < kStepsPerHalf; ++sub) {
          const int step = half * kStepsPerHalf + sub;
          for (int mt = 0; mt < n_tiles; ++mt) {
            int a[32][16], b[32][16];
            uint32_t e[32];
            for (int lane = 0; lane < 32; ++lane) {
              for (int r = 0; r < 4; ++r) {
                const long idx = kSparse ? layout::a_word_index<layout::Sp8>(kb, mt, n_tiles, step, lane, r)
                                         : layout::a_word_index<layout::D8>(kb, mt, n_tiles, step, lane, r);
                for (int j = 0; j < 4; ++j) a[lane][4 * r + j] = static_cast<int8_t>((aw[idx] >> (8 * j)) & 0xFF);
              }
              const int nb = kSparse ? 4 : 2;
              for (int r = 0; r < nb; ++r)
                for (int j = 0; j < 4; ++j)
                  b[lane][4 * r + j] = static_cast<int8_t>((breg[lane][sub * nb + r] >> (8 * j)) & 0xFF);
              if (kSparse) {
                const int entry = layout::Sp8::meta_entry(bug ? (lane ^ 1) : lane);
                e[lane] = mw[layout::meta_word_index<layout::Sp8>(kb, mt, n_tiles, entry, step)];
              }
            }
            if (kSparse) {
              emu::mma_sp_m16n8k64_s8(a, b, e, acc[mt][nt], acc[mt][nt]);
            } else {
              int b8[32][8];
              for (int lane = 0; lane < 32; ++lane)
                for (int i = 0; i < 8; ++i) b8[lane][i] = b[lane][i];
              if (bug)  // dense has no metadata: the deliberate bug swaps two A registers
                for (int lane = 0; lane < 32; ++lane)
                  for (int i = 0; i < 4; ++i) std::swap(a[lane][i], a[lane][4 + i]);
              emu::mma_m16n8k32_s8(a, b8, acc[mt][nt], acc[mt][nt]);
            }
          }
        }
      }
  }
  bool ok = true;
  for (int mt = 0; mt < n_tiles; ++mt)
    for (int nt = 0; nt < 2; ++nt)
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) {
          const int f = mt * 16 + layout::acc_row(lane, i), tok = nt * 8 + layout::acc_col(lane, i);
          long long want = 0;
          for (int k = 0; k < K; ++k) want += static_cast<long long>(dense_w[f * K + k]) * x[tok * K + k];
          ok = ok && acc[mt][nt][lane][i] == want;
        }
  return ok;
}

// ---- metadata thread maps against tables transcribed from the sources ----------------------
// For quad 0 (lanes 0..3), which row and which first group the 32 metadata bits of each lane
// cover (PTX ISA metadata figures for m16n8k32 f16/bf16 and m16n8k64 s8, cross-read with
// CUTLASS's metadata storage, see docs/KERNELS.md "Fragment maps: sources"); quad g adds g to
// every row. Each entry: {row of bits [15:0], first group of [15:0], row of [31:16], first
// group of [31:16]}; a half holds 4 consecutive groups, the first in bits [3:0].
struct MetaHalves {
  int row0, group0, row1, group1;
};
// m16n8k32 f16/bf16, selector 0: lanes 0, 1 (2, 3 belong to selector 1 and are not read).
const MetaHalves kSp16Quad0[2] = {{0, 0, 8, 0}, {0, 4, 8, 4}};
// m16n8k64 s8, selector 0: all four lanes, each one row and 8 consecutive groups (32 k).
const MetaHalves kSp8Quad0[4] = {{0, 0, 0, 4}, {8, 0, 8, 4}, {0, 8, 0, 12}, {8, 8, 8, 12}};

// The (row, group) a table assigns to nibble q (0..7) of `lane`.
void table_slot(const MetaHalves* quad0, int lane, int q, int* row, int* group) {
  const MetaHalves& h = quad0[lane & 3];
  *row = (lane >> 2) + (q < 4 ? h.row0 : h.row1);
  *group = (q < 4 ? h.group0 : h.group1) + (q & 3);
}

// Emulator side: a single marked nibble (0b1110: kept 2, 3) in lane L, slot q, every other
// nibble 0: the emulator must read index 2 at exactly the table's (row, group).
bool emulator_meta_map_matches_table(bool sp8) {
  bool ok = true;
  const int lanes_used = sp8 ? 4 : 2, groups = sp8 ? 16 : 8;
  for (int lane = 0; lane < 32; ++lane) {
    if ((lane & 3) >= lanes_used) continue;
    for (int q = 0; q < 8; ++q) {
      uint32_t e[32] = {};
      e[lane] = 0xEu << (4 * q);
      int want_row, want_group;
      table_slot(sp8 ? kSp8Quad0 : kSp16Quad0, lane, q, &want_row, &want_group);
      for (int row = 0; row < 16; ++row)
        for (int j = 0; j < groups; ++j) {
          const int idx = sp8 ? emu::sp8_meta_index(e, row, j, 0) : emu::sp16_meta_index(e, 0, row, j, 0);
          ok = ok && idx == ((row == want_row && j == want_group) ? 2 : 0);
        }
    }
  }
  return ok;
}

// Kernel side: canonical meta of one 16-row tile and one stage (2 sparse steps) with every
// group 0b0100 (kept 0, 1) except one (row, group) = 0b1110; the metadata registers the kernel
// hands to mma.sp (load-time re-layout + read index) must carry the mark at the table's lane
// and nibble, and nowhere else.
bool kernel_meta_map_matches_table(bool sp8) {
  const int K = sp8 ? layout::Sp8::kKPerStage : layout::Sp16::kKPerStage, N = 16;
  const int groups_per_step = sp8 ? 16 : 8, lanes_used = sp8 ? 4 : 2;
  bool ok = true;
  for (int row = 0; row < 16; ++row)
    for (int grp = 0; grp < K / 4; ++grp) {
      std::vector<uint8_t> meta(N * K / 8, 0x44);
      meta[row * (K / 8) + grp / 2] = static_cast<uint8_t>(grp % 2 ? 0xE4 : 0x4E);
      int marks = 0;
      for (int s = 0; s < 2; ++s)
        for (int lane = 0; lane < 32; ++lane) {
          if ((lane & 3) >= lanes_used) continue;
          const long idx = sp8 ? layout::meta_word_index<layout::Sp8>(0, 0, 1, layout::Sp8::meta_entry(lane), s)
                               : layout::meta_word_index<layout::Sp16>(0, 0, 1, layout::Sp16::meta_entry(lane), s);
          const uint32_t w = sp8 ? relayout::meta_word<relayout::kSp8>(idx, meta.data(), N, K)
                                 : relayout::meta_word<relayout::kSp16>(idx, meta.data(), N, K);
          for (int q = 0; q < 8; ++q) {
            const uint32_t nib = (w >> (4 * q)) & 0xF;
            int trow, tgroup;
            table_slot(sp8 ? kSp8Quad0 : kSp16Quad0, lane, q, &trow, &tgroup);
            const bool marked_here = trow == row && s * groups_per_step + tgroup == grp;
            ok = ok && nib == (marked_here ? 0xEu : 0x4u);
            marks += nib == 0xEu;
          }
        }
      ok = ok && marks == 1;
    }
  return ok;
}

}  // namespace

int main() {
  // Thread maps of the metadata registers: emulator and kernel each against the source tables
  // (the SP8 check is the one that catches the "rows g / g+8 in the two halves" misreading).
  check(emulator_meta_map_matches_table(false), "sp16: emulator metadata thread map == PTX/CUTLASS table");
  check(emulator_meta_map_matches_table(true), "sp8: emulator metadata thread map == PTX/CUTLASS table");
  check(kernel_meta_map_matches_table(false), "sp16: kernel metadata registers == PTX/CUTLASS table");
  check(kernel_meta_map_matches_table(true), "sp8: kernel metadata registers == PTX/CUTLASS table");
  for (int rep = 0; rep < 3; ++rep) {
    check(run_sp16<false>(0), "sp16 f16: kernel fragment path == tile product");
    check(run_sp16<true>(0), "sp16 bf16: kernel fragment path == tile product");
    check(run_int8<true>(0), "sp8 s8: kernel fragment path == tile product");
    check(run_int8<false>(0), "d8 s8: kernel fragment path == tile product");
  }
  check(!run_sp16<false>(1), "sp16: a wrong metadata lane must be detected");
  check(!run_int8<true>(1), "sp8: a wrong metadata lane must be detected");
  check(!run_int8<false>(1), "d8: swapped A registers must be detected");
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("mma fragments: all checks passed\n");
  return EXIT_SUCCESS;
}
