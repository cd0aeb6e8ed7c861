// Host proof of the activation (B operand) path of gemm_block (kernels/cuda/gemm_mma.cuh): the
// cp.async work split and swizzled shared-memory layout of an X stage (mma_layout.cuh
// x_tile_row / x_tile_chunk / smem_x_byte_offset; the conv's ConvGather), the ldmatrix.x4 row
// addresses (ldsm_x4_token / ldsm_x4_chunk) and the registers each family hands to its mma
// (&bfrag[b][sub * kBRegsPerStep]), register by register rather than through a product.
//
// ldmatrix is emulated here a second time, in b16 elements straight from the PTX ISA text
// ("Warp-level matrix load instruction: ldmatrix": for .x4 threads 8j..8j+7 give the row
// addresses of matrix j; thread t receives, in register j, elements 2(t%4) and 2(t%4)+1 of row
// t/4 of matrix j, the lower column in the lower half), and must agree with emu::ldmatrix_x4,
// which the end-to-end tests (test_mma_fragments, test_conv_gather) use. Every B register must
// equal the elements of X^T that the mma emulator's B maps (mma_emulator.h b_row_16bit /
// b_row_8bit / b_col) assign to it; those maps are checked against per-register tables
// transcribed from the sources (docs/KERNELS.md, "Fragment maps: sources").
// Layout checks: every 16-byte chunk of the stage written exactly once, 16-byte aligned, inside
// the X area; rows past M zero-filled; the 8 rows of each ldmatrix phase (one 8x8 matrix) and the
// 8 chunks of each quarter-warp of cp.async fall in 8 distinct 16-byte bank groups.
// Deliberately wrong variants (unswizzled write, reversed ldmatrix chunk order, SP16 registers 1
// and 2 exchanged) must fail.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "host_check.h"
#include "mma_emulator.h"
#include "mma_layout.cuh"

using namespace sparsedm;

namespace {

std::mt19937 rng(2024);

// ---- the sources' B fragment maps, per register ------------------------------------------
// First k of register r of lanes 0..3 (quad 0); lane 4g + t has the same k for token g. A
// register holds that k and the next (16-bit: 2 elements; 8-bit: 4 bytes), lowest in the low bits.
// SP16: PTX figure "Sparse MMA .m16n8k32 fragment layout for matrix B with .f16/.bf16" (the
// dense m16n8k16 B pattern continued to k 32); Sparse-Marlin (vLLM marlin_24) hands the ldmatrix
// words of k 0-7, 8-15, 16-23, 24-31 of 8 tokens to mma.sp as b registers 0..3.
const int kSp16FirstK[4][4] = {{0, 8, 16, 24}, {2, 10, 18, 26}, {4, 12, 20, 28}, {6, 14, 22, 30}};
// SP8: PTX figures "Sparse MMA .m16n8k64 fragment layout for rows 0-15 / 16-31 / 32-47 / 48-63
// of matrix B" (one figure per register); NVIDIA's public sm_89 sparse m16n8k64 test places
// byte i of register n of lane l at k = 16n + 4(l%4) + i, token l/4.
const int kSp8FirstK[4][4] = {{0, 16, 32, 48}, {4, 20, 36, 52}, {8, 24, 40, 56}, {12, 28, 44, 60}};
// D8: PTX "Matrix Fragments for mma.m16n8k32", .s8 B: row 4t + (i & 3), + 16 for i >= 4; col g.
const int kD8FirstK[4][2] = {{0, 16}, {4, 20}, {8, 24}, {12, 28}};

// The emulator's B maps and the kernel's documented ones (mma_layout.cuh sp16_b_k, sp8_b_k,
// d8_b_k, b_token) against the tables, every lane and element.
bool b_maps_match_tables() {
  bool ok = true;
  for (int lane = 0; lane < 32; ++lane) {
    const int t = lane & 3, g = lane >> 2;
    ok = ok && emu::b_col(lane) == g && layout::b_token(lane) == g;
    for (int r = 0; r < 4; ++r) {
      for (int e = 0; e < 2; ++e) ok = ok && emu::b_row_16bit(lane, 2 * r + e) == kSp16FirstK[t][r] + e;
      for (int e = 0; e < 4; ++e) ok = ok && emu::b_row_8bit(lane, 4 * r + e) == kSp8FirstK[t][r] + e;
      ok = ok && layout::sp16_b_k(lane, r) == kSp16FirstK[t][r] && layout::sp8_b_k(lane, r) == kSp8FirstK[t][r];
    }
    for (int r = 0; r < 2; ++r) {
      for (int e = 0; e < 4; ++e) ok = ok && emu::b_row_8bit(lane, 4 * r + e) == kD8FirstK[t][r] + e;
      ok = ok && layout::d8_b_k(lane, r) == kD8FirstK[t][r];
    }
  }
  return ok;
}

// ---- ldmatrix.sync.aligned.m8n8.x4.shared.b16, from the PTX text, in b16 elements -----------
uint16_t b16_at(const std::vector<uint8_t>& smem, int byte) {
  return static_cast<uint16_t>(smem[byte] | (smem[byte + 1] << 8));  // little-endian shared memory
}
void ldmatrix_x4_ptx(const std::vector<uint8_t>& smem, const int addr[32], uint32_t out[32][4]) {
  for (int t = 0; t < 32; ++t)
    for (int j = 0; j < 4; ++j) {
      const int row_start = addr[8 * j + t / 4];  // row t/4 of matrix j, given by thread 8j + t/4
      const int col = 2 * (t % 4);
      out[t][j] = b16_at(smem, row_start + 2 * col) | (static_cast<uint32_t>(b16_at(smem, row_start + 2 * (col + 1))) << 16);
    }
}

// ---- what is mirrored from the kernel ------------------------------------------------------
// Tile shapes of csrc/cuda/gemm_launch.cuh (TileConfig<WARPS_N, WARPS_T, WARP_MT, WARP_NT, ..>).
struct Config {
  const char* name;
  int warps_n, warps_t, warp_nt;
  int threads() const { return warps_n * warps_t * 32; }
  int bt() const { return warps_t * warp_nt * 8; }
};
// Instruction families of gemm_mma.cuh (Traits::kXBytes, kStepsPerHalf, kBRegsPerStep).
struct Family {
  const char* name;
  int x_bytes, steps_per_half, b_regs_per_step;
};
const Family kFamilies[3] = {{"Sparse16 (m16n8k32 f16/bf16)", 2, 1, 4},
                             {"Sparse8 (m16n8k64 s8)", 1, 1, 4},
                             {"Dense8 (m16n8k32 s8)", 1, 2, 2}};

// kNoSwizzle: write and read at row * 128 + chunk * 16 (consistent, but bank conflicts);
// kUnswizzledWrite: only the write unswizzled (the reader then gets other k).
enum Variant { kKernel = 0, kNoSwizzle, kUnswizzledWrite, kReversedLdsmChunk, kSp16Regs12Swapped };

int x_offset(int row, int chunk, bool swizzled) { return swizzled ? layout::smem_x_byte_offset(row, chunk) : row * 128 + chunk * 16; }

struct Result {
  bool layout = true;  // bijection, alignment, bounds, zero fill, ldmatrix agreement
  bool family[3] = {true, true, true};
  bool banks = true;  // conflict-free ldmatrix phases and cp.async quarter-warps
};

// One X [M, K-bytes] through every stage of one token tile of `cfg`: the loader writes the
// swizzled image (as RowMajorXTile::load), every warp ldmatrixes its B fragments (as gemm_block),
// and each family's registers are compared with X^T.
Result run_tile(const Config& cfg, int M, int t0, Variant v) {
  const int BT = cfg.bt(), threads = cfg.threads(), row_bytes = 256;  // K: 2 stages of 128 bytes
  const int tokens = t0 + BT + 8;
  std::vector<uint8_t> x(static_cast<size_t>(tokens) * row_bytes);
  for (auto& b : x) b = static_cast<uint8_t>(rng());
  Result res;
  for (int kb = 0; kb < row_bytes / 128; ++kb) {
    // The loader: work item i = tid + j * threads copies chunk x_tile_chunk(i) of row x_tile_row(i).
    std::vector<uint8_t> smem(BT * 128, 0xA5);  // garbage where nobody writes
    std::vector<int> writes(BT * 128, 0);
    const int iterations = (BT * 8 + threads - 1) / threads;
    std::vector<unsigned> quarter_banks(iterations * (threads / 8), 0);  // bank groups per (iteration, quarter-warp)
    for (int tid = 0; tid < threads; ++tid)
      for (int i = tid, j = 0; i < BT * 8; i += threads, ++j) {
        const int row = layout::x_tile_row(i), chunk = layout::x_tile_chunk(i);
        const int dst = x_offset(row, chunk, v != kNoSwizzle && v != kUnswizzledWrite);
        if (dst % 16 != 0 || dst < 0 || dst + 16 > BT * 128) {
          std::fprintf(stderr, "  %s: chunk (%d, %d) at byte %d: misaligned or outside the X area\n", cfg.name, row, chunk, dst);
          res.layout = false;
          continue;
        }
        const int token = t0 + row;
        for (int b = 0; b < 16; ++b) {
          smem[dst + b] = token < M ? x[static_cast<size_t>(token) * row_bytes + kb * 128 + chunk * 16 + b] : 0;  // src-size 0
          ++writes[dst + b];
        }
        // Quarter-warp q of this iteration: threads 8q..8q+7 (warps are 32 consecutive threads).
        unsigned& mask = quarter_banks[j * (threads / 8) + tid / 8];
        const unsigned bank_group = 1u << ((dst >> 4) & 7);
        if (mask & bank_group) res.banks = false;
        mask |= bank_group;
      }
    for (int c : writes) res.layout = res.layout && c == 1;

    // The reader: warp (warp_n, warp_t) loads token tile warp_t * WARP_NT + b for half `half`.
    std::vector<int> tile_reads(BT / 8, 0);
    for (int warp_t = 0; warp_t < cfg.warps_t; ++warp_t)
      for (int b = 0; b < cfg.warp_nt; ++b) {
        const int tile = warp_t * cfg.warp_nt + b;
        ++tile_reads[tile];
        for (int half = 0; half < 2; ++half) {
          int addr[32];
          for (int lane = 0; lane < 32; ++lane) {
            const int row = tile * 8 + layout::ldsm_x4_token(lane);
            const int c = v == kReversedLdsmChunk ? 3 - layout::ldsm_x4_chunk(lane) : layout::ldsm_x4_chunk(lane);
            addr[lane] = x_offset(row, 4 * half + c, v != kNoSwizzle);
            res.layout = res.layout && addr[lane] % 16 == 0 && addr[lane] >= 0 && addr[lane] + 16 <= BT * 128;
          }
          for (int m = 0; m < 4; ++m) {  // one phase per 8x8 matrix: its 8 rows in 8 bank groups
            unsigned mask = 0;
            for (int r = 0; r < 8; ++r) mask |= 1u << ((addr[8 * m + r] >> 4) & 7);
            res.banks = res.banks && mask == 0xFFu;
          }
          uint32_t reg[32][4], reg_emu[32][4];
          ldmatrix_x4_ptx(smem, addr, reg);
          emu::ldmatrix_x4(smem.data(), addr, reg_emu);
          res.layout = res.layout && std::memcmp(reg, reg_emu, sizeof reg) == 0;

          for (int f = 0; f < 3; ++f) {
            const Family& fam = kFamilies[f];
            const int k_per_step = 64 / fam.x_bytes / fam.steps_per_half;  // elements of k per mma
            const int elems_per_reg = 4 / fam.x_bytes;
            for (int sub = 0; sub < fam.steps_per_half; ++sub)
              for (int lane = 0; lane < 32; ++lane)
                for (int r = 0; r < fam.b_regs_per_step; ++r) {
                  int slot = sub * fam.b_regs_per_step + r;  // &bfrag[b][sub * kBRegsPerStep] + r
                  if (v == kSp16Regs12Swapped && fam.x_bytes == 2 && (r == 1 || r == 2)) slot = 3 - slot;
                  uint32_t want = 0;
                  const int token = t0 + tile * 8 + emu::b_col(lane);
                  for (int e = 0; e < elems_per_reg; ++e) {
                    const int i = elems_per_reg * r + e;  // element b_i of this mma's B operand
                    const int k_local = fam.x_bytes == 2 ? emu::b_row_16bit(lane, i) : emu::b_row_8bit(lane, i);
                    const int k = kb * (128 / fam.x_bytes) + half * (64 / fam.x_bytes) + sub * k_per_step + k_local;
                    uint32_t value = 0;
                    if (token < M) {
                      const uint8_t* p = &x[static_cast<size_t>(token) * row_bytes + k * fam.x_bytes];
                      value = fam.x_bytes == 2 ? static_cast<uint32_t>(p[0] | (p[1] << 8)) : p[0];
                    }
                    want |= value << (8 * fam.x_bytes * e);
                  }
                  if (reg[lane][slot] != want) {
                    if (v == kKernel && res.family[f])
                      std::fprintf(stderr, "  %s %s kb %d tile %d half %d sub %d lane %d reg %d: got %08x, want %08x\n", cfg.name,
                                   fam.name, kb, tile, half, sub, lane, r, reg[lane][slot], want);
                    res.family[f] = false;
                  }
                }
          }
        }
      }
    for (int c : tile_reads) res.layout = res.layout && c == 1;  // every token tile read by one warp
  }
  return res;
}

// The conv gather's work split (ConvGather, used by ConvXTile::load) is the GEMM loader's: each
// thread keeps chunk tid & 7, its rows are x_tile_row of its work items, every chunk of the
// stage is written once, and chunk c of stage kb holds logical k = kb * 64 + 8c (checked on a
// 1x1 conv with C = K, where the channel is k).
template <int kBT, int kThreads>
bool conv_split_matches_loader() {
  using Gather = layout::ConvGather<kBT, kThreads>;
  const int K = 256;
  const layout::ConvGeom g{1, 1 << 20, K, 1, 1 << 20, 1, 1, 1, 0, 0, 1, 1, K, 1 << 20};
  bool ok = true;
  for (int kb = 0; kb < K / layout::Sp16::kKPerStage; ++kb) {
    std::vector<int> writes(kBT * 8, 0);
    for (int tid = 0; tid < kThreads; ++tid) {
      const Gather th(g, 0, tid);
      const layout::ConvTap tap = th.tap(g, kb);
      ok = ok && tap.c == kb * 64 + 8 * th.chunk && tap.dh == 0 && tap.dw == 0;
      for (int j = 0; j < Gather::kRows; ++j) {
        const int i = tid + j * kThreads;
        ok = ok && th.active(j) == (i < kBT * 8);
        if (!th.active(j)) continue;
        ok = ok && th.row(j) == layout::x_tile_row(i) && th.chunk == layout::x_tile_chunk(i);
        ++writes[th.row(j) * 8 + th.chunk];
      }
    }
    for (int c : writes) ok = ok && c == 1;
  }
  return ok;
}

bool all(const Result& r) { return r.layout && r.banks && r.family[0] && r.family[1] && r.family[2]; }

}  // namespace

int main() {
  EXPECT(b_maps_match_tables());

  // ldmatrix from the PTX text == the emulator's ldmatrix on arbitrary 16-byte aligned rows.
  {
    std::vector<uint8_t> smem(4096);
    for (auto& b : smem) b = static_cast<uint8_t>(rng());
    int addr[32];
    for (int& a : addr) a = 16 * std::uniform_int_distribution<int>(0, 255)(rng);
    uint32_t r1[32][4], r2[32][4];
    ldmatrix_x4_ptx(smem, addr, r1);
    emu::ldmatrix_x4(smem.data(), addr, r2);
    EXPECT(std::memcmp(r1, r2, sizeof r1) == 0);
  }

  const Config large{"Large (2x2 warps, WARP_NT 4, BT 64)", 2, 2, 4};
  const Config small{"Small (4x1 warps, WARP_NT 2, BT 16)", 4, 1, 2};
  for (const Config& cfg : {large, small}) {
    const int bt = cfg.bt();
    // Full tile, a tile cut by M (rows past M zero-filled), a tile at a later token offset.
    EXPECT(all(run_tile(cfg, bt, 0, kKernel)));
    EXPECT(all(run_tile(cfg, bt - 5, 0, kKernel)));
    EXPECT(all(run_tile(cfg, 3 * bt + 9, 2 * bt, kKernel)));

    // Each deliberate error must be seen, by the check it concerns.
    const Result no_swizzle = run_tile(cfg, bt, 0, kNoSwizzle);
    EXPECT(no_swizzle.layout && no_swizzle.family[0] && no_swizzle.family[1] && no_swizzle.family[2]);
    EXPECT(!no_swizzle.banks);  // the 8 rows of an ldmatrix phase in one bank group
    const Result unswizzled = run_tile(cfg, bt, 0, kUnswizzledWrite);
    EXPECT(!unswizzled.family[0] && !unswizzled.family[1] && !unswizzled.family[2]);
    const Result reversed = run_tile(cfg, bt, 0, kReversedLdsmChunk);
    EXPECT(!reversed.family[0] && !reversed.family[1] && !reversed.family[2]);
    const Result swapped = run_tile(cfg, bt, 0, kSp16Regs12Swapped);
    EXPECT(!swapped.family[0] && swapped.family[1] && swapped.family[2]);
  }
  EXPECT((conv_split_matches_loader<64, 128>()));
  EXPECT((conv_split_matches_loader<16, 128>()));
  return host_check::finish("x tile / ldmatrix B fragments");
}
