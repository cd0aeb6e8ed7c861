// Warp-level index math of the sparsedm tensor-core GEMMs (docs/KERNELS.md, "CUDA GEMMs").
//
// Every "which lane holds which element" question the kernels (gemm_mma.cuh) and the load-time
// re-layout (relayout.cuh) answer goes through the functions below, and nothing else. They are
// plain __host__ __device__ C++ so that tests/cpp/test_mma_fragments.cpp can drive 32 emulated
// lanes through exactly this code into an mma emulator written from the PTX ISA tables.
//
// Notation (PTX ISA): lane in [0, 32), g = lane >> 2 ("groupID"), t = lane & 3
// ("threadID_in_group"). The GEMM is Y^T = W X^T: the mma A operand is a 16-row tile of the
// weight W [N, K] (rows = output features), B is X^T (K x tokens, "col" = X row-major), C/D
// is 16 features x 8 tokens. A "group" is 4 consecutive logical k (the 2:4 group).
//
// Three instruction shapes are used:
//   SP16 : mma.sp::ordered_metadata m16n8k32, f16/bf16 in, f32 accumulate (8 groups per row)
//   SP8  : mma.sp::ordered_metadata m16n8k64, s8 in, s32 accumulate     (16 groups per row)
//   D8   : mma.sync m16n8k32, s8 in, s32 accumulate (dense)
// Torch-free, NVRTC-compatible.
#pragma once

#include "sparse24_meta.cuh"  // SPARSEDM_HD

// Full unroll of short constant-trip loops in device code (keeps per-thread arrays in
// registers); nothing on the host, where g++ -Wall would warn about the unknown pragma.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define SPARSEDM_UNROLL _Pragma("unroll")
#else
#define SPARSEDM_UNROLL
#endif

namespace sparsedm {
namespace layout {

SPARSEDM_HD int lane_group(int lane) { return lane >> 2; }
SPARSEDM_HD int lane_in_group(int lane) { return lane & 3; }

// ---- accumulator (C/D), identical for the three shapes ---------------------------------
// Element i in [0, 4) of a lane: feature row g (+8 for i >= 2), token column 2t + (i & 1).
SPARSEDM_HD int acc_row(int lane, int i) { return lane_group(lane) + 8 * (i >> 1); }
SPARSEDM_HD int acc_col(int lane, int i) { return 2 * lane_in_group(lane) + (i & 1); }

// ---- SP16: m16n8k32 f16/bf16, A is the compressed 16 x 16 tile -------------------------
// Register r in [0, 4) of a lane holds the two kept values (ascending k) of ONE 2:4 group:
// row g + 8*(r & 1), group t + 4*(r >> 1). So the 4 registers are 4 whole groups, and the
// canonical `values` pair of that group is one aligned 32-bit word: re-layout is a gather.
SPARSEDM_HD int sp16_a_row(int lane, int r) { return lane_group(lane) + 8 * (r & 1); }
SPARSEDM_HD int sp16_a_group(int lane, int r) { return lane_in_group(lane) + 4 * (r >> 1); }
// Metadata, sparsity selector 0: lanes with t in {0, 1} supply it. Bits [15:0] are the 4
// nibbles (groups q0..q0+3, group q0 lowest) of row g, bits [31:16] the same groups of row
// g + 8, with q0 = 4 * t. Lanes t >= 2 are ignored by the hardware (we give them t & 1's word).
SPARSEDM_HD int sp16_meta_first_group(int lane) { return 4 * (lane_in_group(lane) & 1); }
SPARSEDM_HD int sp16_meta_row(int lane, int half) { return lane_group(lane) + 8 * half; }
// B (32 k x 8 tokens): register r holds k = 2t + 8r and k + 1 (low half first) of token g.
SPARSEDM_HD int sp16_b_k(int lane, int r) { return 2 * lane_in_group(lane) + 8 * r; }
SPARSEDM_HD int b_token(int lane) { return lane_group(lane); }

// ---- SP8: m16n8k64 s8, A is the compressed 16 x 32 byte tile ---------------------------
// Register r holds 4 kept bytes = the kept pairs of TWO consecutive groups of row
// g + 8*(r & 1): groups 2t + 8*(r >> 1) (low 16 bits) and that + 1 (high 16 bits).
SPARSEDM_HD int sp8_a_row(int lane, int r) { return lane_group(lane) + 8 * (r & 1); }
SPARSEDM_HD int sp8_a_group(int lane, int r) { return 2 * lane_in_group(lane) + 8 * (r >> 1); }
// Metadata, selector 0 (the only legal value for k64 s8), all four lanes of a quad. Unlike
// SP16, a lane's word covers ONE row: the 8 nibbles (group 8*(t >> 1) lowest, bits [3:0]) of
// 8 consecutive groups, i.e. 32 logical k, of row g + 8*(t & 1):
//   t = 0: row g, k 0..31   t = 1: row g+8, k 0..31   t = 2: row g, k 32..63   t = 3: row g+8, k 32..63
// Sources (docs/KERNELS.md, "Fragment maps: sources"): PTX ISA "Sparse matrix storage" (all
// four threads, selector 0) and the m16n8k64 .u8/.s8 metadata figures; CUTLASS's int8 E
// layout (reorder_meta rows g, g+8 adjacent + 2x2 swizzle, ColumnMajorInterleaved<2>, ldmatrix
// in SparseMmaTensorOpMetaTileIterator), checked by tests/cuda/test_emulator_cutlass.py.
// Half h of the word (h = 0: bits [15:0]) holds groups sp8_meta_first_group(lane, h) .. +3.
SPARSEDM_HD int sp8_meta_row(int lane) { return lane_group(lane) + 8 * (lane_in_group(lane) & 1); }
SPARSEDM_HD int sp8_meta_first_group(int lane, int half) { return 8 * (lane_in_group(lane) >> 1) + 4 * half; }
// B (64 k x 8 tokens): register r holds k = 4t + 16r .. +3 of token g (lowest byte first).
SPARSEDM_HD int sp8_b_k(int lane, int r) { return 4 * lane_in_group(lane) + 16 * r; }

// ---- D8: dense m16n8k32 s8 --------------------------------------------------------------
// A register r: 4 bytes k = 4t + 16*(r >> 1) .. +3 of row g + 8*(r & 1). B register r in
// [0, 2): k = 4t + 16r .. +3 of token g.
SPARSEDM_HD int d8_a_row(int lane, int r) { return lane_group(lane) + 8 * (r & 1); }
SPARSEDM_HD int d8_a_k(int lane, int r) { return 4 * lane_in_group(lane) + 16 * (r >> 1); }
SPARSEDM_HD int d8_b_k(int lane, int r) { return 4 * lane_in_group(lane) + 16 * r; }

// ---- activation tile in shared memory and ldmatrix --------------------------------------
// A stage holds ROWS tokens x 128 bytes of k (64 halves or 128 int8), as 8 chunks of 16 B
// per token. Chunk c of token row r is stored at chunk c ^ (r & 7): the 8 row addresses of one
// ldmatrix phase then hit 8 different 16-byte bank groups (no conflicts), and a cp.async of
// one 16-byte chunk stays contiguous.
SPARSEDM_HD int smem_x_byte_offset(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }
// cp.async work split of one X stage: work item i (items tid, tid + threads, ...) of a block
// copies 16-byte chunk (i & 7) of token row (i >> 3). With a thread count that is a multiple of
// 8, a thread keeps one chunk index for the whole kernel (the conv gather relies on it).
SPARSEDM_HD int x_tile_row(int i) { return i >> 3; }
SPARSEDM_HD int x_tile_chunk(int i) { return i & 7; }
// ldmatrix.x4: lane supplies the address of row (lane & 7) of matrix (lane >> 3). Our matrices
// are 8 tokens x 16 bytes: matrix j = k chunk (chunk0 + j) of tokens token0 .. token0 + 7.
SPARSEDM_HD int ldsm_x4_token(int lane) { return lane & 7; }
SPARSEDM_HD int ldsm_x4_chunk(int lane) { return lane >> 3; }
// ldmatrix result: register j of lane l = 32-bit word (l & 3) of row (l >> 2) of matrix j.
// So register j = token g, bytes 4t..4t+3 of chunk j: for f16 that is k = 8j + 2t (+1), i.e.
// sp16_b register j; for s8 k = 16j + 4t, i.e. sp8_b register j / d8_b register j of the
// k-step that contains chunk j.

// ---- load-time re-layout of the weight (canonical -> kernel order) -------------------------
// The kernel walks K in stages of 128 bytes of logical k (64 halves: 2 SP16 steps; 128 int8:
// 2 SP8 steps or 4 D8 steps). For every (stage kb, 16-row tile mt) the weight fragments of all
// steps are one contiguous block of kATileWords 32-bit words, in the order
//   [step][lane][register]  (512 bytes per step: one 16-byte load per lane per mma),
// and blocks are ordered [kb][mt], so the tiles a thread block needs for one stage are one
// contiguous range (cp.async.cg, 16 bytes per thread and instruction).
// Metadata likewise: per (kb, mt) a block of kMetaEntries x 2 words, entry e holding the
// metadata words of the 2 sparse steps of the stage (one 8-byte load per lane per stage).
struct Sp16 {
  static constexpr int kStepsPerStage = 2;
  static constexpr int kRegsA = 4;
  static constexpr int kATileWords = kStepsPerStage * 32 * kRegsA;  // 1 KiB
  static constexpr int kMetaEntries = 16;                           // lanes with t < 2
  static constexpr int kKPerStage = 64;                             // logical k
  SPARSEDM_HD static int meta_entry(int lane) { return 2 * lane_group(lane) + (lane_in_group(lane) & 1); }
};
struct Sp8 {
  static constexpr int kStepsPerStage = 2;
  static constexpr int kRegsA = 4;
  static constexpr int kATileWords = kStepsPerStage * 32 * kRegsA;  // 1 KiB
  static constexpr int kMetaEntries = 32;                           // every lane
  static constexpr int kKPerStage = 128;
  SPARSEDM_HD static int meta_entry(int lane) { return lane; }
};
struct D8 {
  static constexpr int kStepsPerStage = 4;
  static constexpr int kRegsA = 4;
  static constexpr int kATileWords = kStepsPerStage * 32 * kRegsA;  // 2 KiB
  static constexpr int kMetaEntries = 0;
  static constexpr int kKPerStage = 128;
};

// Word index (32-bit units) of register r of `lane` for step s of tile (kb, mt) in the
// re-laid-out weight of a layer with n_tiles = N / 16 row tiles.
template <class S>
SPARSEDM_HD long a_word_index(int kb, int mt, int n_tiles, int s, int lane, int r) {
  return ((static_cast<long>(kb) * n_tiles + mt) * S::kATileWords) + (s * 32 + lane) * S::kRegsA + r;
}
// Word index of the metadata of step s (0/1) of entry e for tile (kb, mt).
template <class S>
SPARSEDM_HD long meta_word_index(int kb, int mt, int n_tiles, int e, int s) {
  return ((static_cast<long>(kb) * n_tiles + mt) * S::kMetaEntries + e) * 2 + s;
}

// Re-layout sources, in canonical terms (values [N, K/2], meta uint8 [N, K/8]).
// SP16: the 32-bit word of register r = values row, half-columns 2*group .. +1 (4-byte aligned).
SPARSEDM_HD void sp16_a_source(int kb, int mt, int s, int lane, int r, int* row, int* group) {
  *row = mt * 16 + sp16_a_row(lane, r);
  *group = kb * 16 + s * 8 + sp16_a_group(lane, r);
}
// SP8: the word of register r = values_q row, byte-columns 2*group .. 2*group + 3.
SPARSEDM_HD void sp8_a_source(int kb, int mt, int s, int lane, int r, int* row, int* group) {
  *row = mt * 16 + sp8_a_row(lane, r);
  *group = kb * 32 + s * 16 + sp8_a_group(lane, r);
}
// D8: the word of register r = w_q row, bytes k .. k + 3.
SPARSEDM_HD void d8_a_source(int kb, int mt, int s, int lane, int r, int* row, int* k) {
  *row = mt * 16 + d8_a_row(lane, r);
  *k = kb * 128 + s * 32 + d8_a_k(lane, r);
}
// Metadata: a 16-bit half = 4 consecutive groups of one row = 2 canonical meta bytes (the even
// group in the low nibble, as the hardware wants the lower group in the lower bits), starting
// at byte column first_group / 2 (first_group is a multiple of 4). SP16: the halves are rows
// g and g + 8; SP8: the same row, groups q0..q0+3 and q0+4..q0+7 (4 consecutive bytes).
SPARSEDM_HD void sp16_meta_source(int kb, int mt, int e, int s, int half, int* row, int* first_group) {
  const int lane = 4 * (e >> 1) + (e & 1);  // a lane that owns entry e
  *row = mt * 16 + sp16_meta_row(lane, half);
  *first_group = kb * 16 + s * 8 + sp16_meta_first_group(lane);
}
SPARSEDM_HD void sp8_meta_source(int kb, int mt, int e, int s, int half, int* row, int* first_group) {
  *row = mt * 16 + sp8_meta_row(e);
  *first_group = kb * 32 + s * 16 + sp8_meta_first_group(e, half);
}

// ---- implicit-GEMM conv gather (docs/KERNELS.md, "CUDA implicit-GEMM 2:4 conv") -----------
// The conv is the SP16 GEMM with token m = output pixel (n, oh, ow) (ow fastest; M = N*P*Q) and
// logical k = (r * kw + s) * C + c (KRSC, cin innermost; K = kh*kw*C). The X stage holds the
// same 64 k x BT tokens as the GEMM's, but chunk `chunk` (8 consecutive k) of token row m is
// gathered from the NHWC input: pixel (n, oh*sh - ph + r*dh, ow*sw - pw + s*dw), channels
// c .. c+7. C % 8 == 0 keeps the 8 channels of a chunk inside one tap and 16-byte aligned. A
// chunk outside the image (padding), past K (the weight is zero-padded to a multiple of 64) or
// of a pixel past M is zero-filled by cp.async (src-size 0), never read.
struct ConvGeom {
  int H, W, C;           // input [N, H, W, C] (NHWC), element offsets fit int64
  int P, Q;              // output height and width
  int kw;                // filter width (kh = K / (kw * C))
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int K;                 // real reduction length kh*kw*C (<= the GEMM's padded K)
  int M;                 // N * P * Q output pixels
};

// The input position of tap (0, 0) for output pixel m, fixed per thread for the whole kernel.
// nh = n * H (row base of the image). A pixel past M gets ih0 far below 0: never in the image.
struct ConvPixel {
  int nh, ih0, iw0;
};
constexpr int kConvNoPixel = -(1 << 30);
SPARSEDM_HD ConvPixel conv_pixel(const ConvGeom& g, int m) {
  ConvPixel px;
  if (m >= g.M) {
    px.nh = 0, px.ih0 = kConvNoPixel, px.iw0 = kConvNoPixel;
    return px;
  }
  const int ow = m % g.Q, rest = m / g.Q;
  const int oh = rest % g.P, n = rest / g.P;
  px.nh = n * g.H;
  px.ih0 = oh * g.stride_h - g.pad_h;
  px.iw0 = ow * g.stride_w - g.pad_w;
  return px;
}

// Logical k (a multiple of 8) -> the tap's input offsets (r * dh, s * dw) and the channel c.
// Same for every token row, so a thread computes it once per stage. k >= K gives dh = a value
// that no pixel can reach (the chunk is zero-filled).
struct ConvTap {
  int dh, dw, c;
};
SPARSEDM_HD ConvTap conv_tap(const ConvGeom& g, int k) {
  ConvTap t;
  const int tap = k / g.C;
  t.c = k - tap * g.C;
  const int r = tap / g.kw, s = tap - r * g.kw;
  t.dh = k < g.K ? r * g.dil_h : kConvNoPixel;
  t.dw = s * g.dil_w;
  return t;
}

// Element offset in the NHWC input of the 8 channels (px, tap), or -1 when the chunk reads
// padding / past K / past M (zero-filled).
SPARSEDM_HD long conv_x_offset(const ConvGeom& g, const ConvPixel& px, const ConvTap& t) {
  const int ih = px.ih0 + t.dh, iw = px.iw0 + t.dw;
  if (static_cast<unsigned>(ih) >= static_cast<unsigned>(g.H) || static_cast<unsigned>(iw) >= static_cast<unsigned>(g.W)) return -1;
  return (static_cast<long>(px.nh + ih) * g.W + iw) * g.C + t.c;
}

// The gather state of one thread of a block of kThreads threads whose X tile is BT token rows:
// work items i = tid + j * kThreads (j < kRows) -> token row x_tile_row(i), chunk tid & 7.
template <int kBT, int kThreads>
struct ConvGather {
  static_assert(kThreads % 8 == 0, "a thread must keep one chunk index");
  static constexpr int kRows = (kBT * 8 + kThreads - 1) / kThreads;
  ConvPixel px[kRows];
  int tid, chunk;
  SPARSEDM_HD ConvGather(const ConvGeom& g, int first_token, int thread) : tid(thread), chunk(x_tile_chunk(thread)) {
    SPARSEDM_UNROLL
    for (int j = 0; j < kRows; ++j) px[j] = conv_pixel(g, first_token + x_tile_row(item(j)));
  }
  SPARSEDM_HD int item(int j) const { return tid + j * kThreads; }
  SPARSEDM_HD bool active(int j) const { return item(j) < kBT * 8; }
  SPARSEDM_HD int row(int j) const { return x_tile_row(item(j)); }
  // The tap of this thread's chunk in stage kb (64 logical k per stage, 8 per chunk).
  SPARSEDM_HD ConvTap tap(const ConvGeom& g, int kb) const { return conv_tap(g, kb * Sp16::kKPerStage + chunk * 8); }
};

}  // namespace layout
}  // namespace sparsedm
