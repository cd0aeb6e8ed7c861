// sparsedm tensor-core GEMMs: Y = act(X W^T * scales + bias) (+ residual), computed as
// Y^T = W X^T so that the (sparse) weight is the mma A operand (Sparse-Marlin's orientation).
// Layouts and fragment maps: docs/KERNELS.md, "CUDA GEMMs"; index math: mma_layout.cuh.
//
// One kernel template, three instruction families chosen by a Traits class:
//   Sparse16<bf16=false/true>  mma.sp::ordered_metadata m16n8k32 f16/bf16 -> f32 (2:4 weight)
//   Sparse8                    mma.sp::ordered_metadata m16n8k64 s8 -> s32       (2:4 int8)
//   Dense8                     mma.sync m16n8k32 s8 -> s32                       (dense int8)
// They share the whole pipeline: per stage the block copies 128 bytes of k of BT tokens of X
// (cp.async, swizzled, read back with ldmatrix.x4) and the matching pre-laid-out weight and
// metadata fragments (cp.async, read back with one 16-byte / 8-byte load per lane per mma),
// STAGES stages in flight. Only the mma and the dequantization differ.
//
// Split-K (small M, gemm_grid.cuh): gemm_partial_kernel runs the same block over one slice of the
// K stages (blockIdx.z) and stores raw accumulators; split_k_reduce_kernel sums the slices and
// applies the same epilogue function (store_output) as the fused kernel.
//
// Requirements (checked by the launcher, gemm_api.h): N % 16 == 0; K % 64 == 0 (f16/bf16) or
// K % 128 == 0 (int8); 1 <= M <= grid::kMaxTokens (token rows past M are zero-filled and
// never stored; split-K: M <= 65535 * 16); X, Y, residual row-major contiguous; 16-byte aligned X rows (follows from K).
// Torch-free: CUDA runtime headers only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "mma_layout.cuh"
#include "gemm_grid.cuh"

namespace sparsedm {
namespace gemm {

// Activation codes, the same order as sparsedm.ops.checks.ACTIVATIONS.
enum Activation : int { kActNone = 0, kActGelu = 1, kActGeluTanh = 2, kActSilu = 3 };

// ---------------------------------------------------------------------------------------
// PTX helpers
// ---------------------------------------------------------------------------------------

// 32-bit shared-state-space address: cp.async and ldmatrix take shared addresses, not generic.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Asynchronous 16-byte global->shared copy that bypasses L1 (.cg: every byte is used once per
// block); src-size 0 zero-fills, which is how rows past M / tiles past N become zeros.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem), "r"(src_bytes));
}

// Closes the group of cp.async issued for one pipeline stage, so it can be waited on alone.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N stage groups are still in flight (the oldest stage has landed).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices from shared memory in one instruction: the warp-cooperative load that
// produces the mma B fragment of 8 tokens without shuffles (mapping in mma_layout.cuh).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem)));
}

// 2:4 sparse tensor-core MMA, f16 in, f32 accumulate; selector 0x0: metadata from lanes t<2.
// ::ordered_metadata: indices within a group are ascending, which canonical meta guarantees.
__device__ __forceinline__ void mma_sp_m16n8k32_f16(float (&d)[4], const uint4& a, const uint32_t* b, uint32_t e) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
}

// Same as above for bf16 operands (the only difference is the type suffix).
__device__ __forceinline__ void mma_sp_m16n8k32_bf16(float (&d)[4], const uint4& a, const uint32_t* b, uint32_t e) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
}

// 2:4 sparse int8 MMA (k64: twice the k of the dense s8 shape per instruction), exact s32 sums.
__device__ __forceinline__ void mma_sp_m16n8k64_s8(int (&d)[4], const uint4& a, const uint32_t* b, uint32_t e) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k64.row.col.s32.s8.s8.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
}

// Dense int8 MMA, the largest s8 shape of mma.sync on sm_80+ (k32), exact s32 sums.
__device__ __forceinline__ void mma_m16n8k32_s8(int (&d)[4], const uint4& a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]));
}

// ---------------------------------------------------------------------------------------
// Instruction families
// ---------------------------------------------------------------------------------------

// fp16/bf16 2:4. One mma per 64-byte half-stage (k32); B = the 4 ldmatrix registers.
template <bool kBf16>
struct Sparse16 {
  using Shape = layout::Sp16;
  using Acc = float;
  static constexpr bool kSparse = true;
  static constexpr bool kInt8 = false;
  static constexpr int kXBytes = 2;  // bytes per x element
  static constexpr int kStepsPerHalf = 1;
  static constexpr int kBRegsPerStep = 4;
  __device__ __forceinline__ static void mma(float (&d)[4], const uint4& a, const uint32_t* b, uint32_t e) {
    if (kBf16) mma_sp_m16n8k32_bf16(d, a, b, e);
    else mma_sp_m16n8k32_f16(d, a, b, e);
  }
};

// int8 2:4. One mma per half-stage (k64).
struct Sparse8 {
  using Shape = layout::Sp8;
  using Acc = int;
  static constexpr bool kSparse = true;
  static constexpr bool kInt8 = true;
  static constexpr int kXBytes = 1;
  static constexpr int kStepsPerHalf = 1;
  static constexpr int kBRegsPerStep = 4;
  __device__ __forceinline__ static void mma(int (&d)[4], const uint4& a, const uint32_t* b, uint32_t e) {
    mma_sp_m16n8k64_s8(d, a, b, e);
  }
};

// Dense int8. Two mma per half-stage (k32 each), 2 B registers each.
struct Dense8 {
  using Shape = layout::D8;
  using Acc = int;
  static constexpr bool kSparse = false;
  static constexpr bool kInt8 = true;
  static constexpr int kXBytes = 1;
  static constexpr int kStepsPerHalf = 2;
  static constexpr int kBRegsPerStep = 2;
  __device__ __forceinline__ static void mma(int (&d)[4], const uint4& a, const uint32_t* b, uint32_t) {
    mma_m16n8k32_s8(d, a, b);
  }
};

// ---------------------------------------------------------------------------------------
// Epilogue math (fp32, the formulas of sparsedm.ops.reference)
// ---------------------------------------------------------------------------------------

__device__ __forceinline__ float apply_activation(float v, int act) {
  switch (act) {
    case kActGelu: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case kActGeluTanh: {
      const float inner = 0.79788456080286536f * (v + 0.044715f * v * v * v);
      return 0.5f * v * (1.0f + tanhf(inner));
    }
    case kActSilu: return v / (1.0f + expf(-v));
    default: return v;
  }
}

template <class T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Kernel arguments. M = tokens, N = output features, K = logical reduction length.
struct GemmParams {
  const void* x;            // [M, K] row-major: f16/bf16 (Sparse16) or int8 codes (int8 families)
  const uint32_t* w;        // re-laid-out weight fragments (mma_layout.cuh a_word_index), N/16*K/kKPerStage tiles
  const uint32_t* meta;     // re-laid-out metadata (meta_word_index); nullptr for Dense8
  const float* x_scale;     // int8 only: float32 [M], per-token scale of x (s_x)
  const float* w_scale;     // int8 only: float32 [N], per-channel scale of W (s_w)
  const float* bias;        // float32 [N] or nullptr
  const void* residual;     // [M, N] row-major, output dtype, or nullptr (added after the activation)
  void* y;                  // [M, N] row-major, output dtype
  int M, N, K;
  int activation;           // Activation code
  void* workspace = nullptr;  // split-K only: Acc [splits, M, N] row-major, raw accumulators of each K slice
};

// First token of this block: token tile blockIdx.z * gridDim.y + blockIdx.y (grid::token_grid:
// more than 65535 token tiles, e.g. M = 2^22 conv pixels, are laid out as gridDim.z layers;
// tiles past M, from the last layer's rounding, zero-fill their loads and store nothing). For
// every grid of at most 65535 token tiles gridDim.z = 1 and this is blockIdx.y * BT as before:
// built from special registers, which the compiler may re-read, it left every kernel's register
// count unchanged, where a kernel parameter token_base cost the Large tile 1 to 10 registers.
// Split-K grids (kSplitK) use blockIdx.z for the K slice and have at most 65535 token tiles.
template <class Cfg, bool kSplitK = false>
__device__ __forceinline__ int block_first_token() {
  return (kSplitK ? static_cast<int>(blockIdx.y) : grid::token_tile(blockIdx.y, blockIdx.z, gridDim.y)) * Cfg::kBT;
}

// The epilogue of one output element Y[tok, f] (y, res: p.y, p.residual as OutT): dequantize
// (int8: (acc * s_x) * s_w, each product rounded once, as the reference; no FMA contraction),
// + bias, activation, + residual (after the activation), cast, store. The fused epilogue of
// gemm_block and the split-K reduction both call it, so the two paths apply the same float
// operations to their sums. (y and res come in as arguments because deriving them from p
// here cost the Sparse8 Small tile 8 registers on sm_80.)
template <bool kInt8, class OutT, class Acc>
__device__ __forceinline__ void store_output(const GemmParams& p, OutT* y, const OutT* res, Acc acc, int tok, int f) {
  float v;
  if constexpr (kInt8) {
    v = __fmul_rn(__fmul_rn(static_cast<float>(acc), p.x_scale[tok]), p.w_scale[f]);
  } else {
    v = static_cast<float>(acc);
  }
  if (p.bias) v = __fadd_rn(v, p.bias[f]);
  v = apply_activation(v, p.activation);
  const long off = static_cast<long>(tok) * p.N + f;
  if (res) v += to_float(res[off]);
  y[off] = from_float<OutT>(v);
}

// Tile configuration: WARPS_N x WARPS_T warps; each warp owns WARP_MT 16-feature tiles x
// WARP_NT 8-token tiles. Block tile: BN = WARPS_N*WARP_MT*16 features, BT = WARPS_T*WARP_NT*8 tokens.
template <int WARPS_N_, int WARPS_T_, int WARP_MT_, int WARP_NT_, int STAGES_>
struct TileConfig {
  static constexpr int kWarpsN = WARPS_N_, kWarpsT = WARPS_T_, kWarpMT = WARP_MT_, kWarpNT = WARP_NT_;
  static constexpr int kStages = STAGES_;
  static constexpr int kThreads = kWarpsN * kWarpsT * 32;
  static constexpr int kBN = kWarpsN * kWarpMT * 16;
  static constexpr int kBT = kWarpsT * kWarpNT * 8;
  static constexpr int kTiles = kBN / 16;
};

// Shared memory of one stage, in bytes: X tile, weight fragments, metadata fragments.
template <class Traits, class Cfg>
struct StageBytes {
  using S = typename Traits::Shape;
  static constexpr int kX = Cfg::kBT * 128;
  static constexpr int kA = Cfg::kTiles * S::kATileWords * 4;
  static constexpr int kMeta = Cfg::kTiles * S::kMetaEntries * 2 * 4;
  static constexpr int kStage = kX + kA + kMeta;
  static constexpr int kTotal = kStage * Cfg::kStages;
};

// Activation tile of the plain GEMM: stage kb of BT token rows of X [M, K] row-major.
// The conv kernel (conv_mma.cuh) swaps this for a gather from an NHWC image; everything else
// of the block (weight/metadata pipeline, mma loop, epilogue) is gemm_block below.
template <class Traits, class Cfg>
struct RowMajorXTile {
  const unsigned char* x;  // X as bytes
  long row_bytes;          // bytes per token row (K * element size)
  int M, t0;               // tokens, first token of this block
  __device__ __forceinline__ RowMajorXTile(const GemmParams& p, int first_token)
      : x(static_cast<const unsigned char*>(p.x)), row_bytes(static_cast<long>(Traits::kXBytes) * p.K), M(p.M), t0(first_token) {}
  // Issues the cp.async of stage kb into the X area `xs` of a pipeline slot.
  __device__ __forceinline__ void load(unsigned char* xs, int kb) const {
#pragma unroll
    for (int i = threadIdx.x; i < Cfg::kBT * 8; i += Cfg::kThreads) {
      const int row = layout::x_tile_row(i), chunk = layout::x_tile_chunk(i);
      const int token = t0 + row;
      const bool ok = token < M;
      const unsigned char* src = x + (ok ? token : 0) * row_bytes + kb * 128 + chunk * 16;
      cp_async16(xs + layout::smem_x_byte_offset(row, chunk), src, ok);
    }
  }
};

// The body of one thread block: Y tile [t0 .. t0 + BT) x [mt0*16 .. + BN) of Y [M, N] row-major,
// X tile from `xtile` (RowMajorXTile or the conv gather), everything else from p. Shared by
// gemm_kernel, gemm_partial_kernel and conv_kernel (conv_mma.cuh). smem:
// StageBytes<Traits, Cfg>::kTotal bytes. kPartial (split-K): reduce only the K slice
// blockIdx.z of gridDim.z and store the raw accumulators to p.workspace[blockIdx.z] instead of
// the epilogue; OutT is then unused. Without it the K range is the compile-time [0, num_kb).
template <class Traits, class Cfg, class OutT, bool kPartial = false, class XTile>
__device__ __forceinline__ void gemm_block(const GemmParams p, const XTile& xtile, unsigned char* smem) {
  using S = typename Traits::Shape;
  using Acc = typename Traits::Acc;
  using SB = StageBytes<Traits, Cfg>;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warp_n = warp % Cfg::kWarpsN;  // which WARP_MT tiles of features
  const int warp_t = warp / Cfg::kWarpsN;  // which WARP_NT tiles of tokens

  const int n_tiles = p.N / 16;
  const int mt0 = blockIdx.x * Cfg::kTiles;  // first 16-feature tile of this block
  const int tiles_valid = min(Cfg::kTiles, n_tiles - mt0);
  const int t0 = block_first_token<Cfg, kPartial>();
  const int num_kb = p.K / S::kKPerStage;
  // K stages [kb0, kb_end) of this block: all of them, or one split-K slice.
  int kb0 = 0, kb_end = num_kb;
  if constexpr (kPartial) {
    const split_k::Range r = split_k::slice_range(num_kb, static_cast<int>(gridDim.z), static_cast<int>(blockIdx.z));
    kb0 = r.begin;
    kb_end = r.begin + r.count;
  }

  // Issues the cp.async of stage kb into pipeline slot `slot` (one commit group per stage).
  auto load_stage = [&](int slot, int kb) {
    unsigned char* xs = smem + slot * SB::kStage;
    unsigned char* as = xs + SB::kX;
    unsigned char* ms = as + SB::kA;
    xtile.load(xs, kb);
    const uint32_t* wsrc = p.w + layout::a_word_index<S>(kb, mt0, n_tiles, 0, 0, 0);
    constexpr int kAChunksPerTile = S::kATileWords / 4;
#pragma unroll
    for (int i = threadIdx.x; i < Cfg::kTiles * kAChunksPerTile; i += Cfg::kThreads) {
      const bool ok = i / kAChunksPerTile < tiles_valid;
      cp_async16(as + i * 16, ok ? wsrc + i * 4 : p.w, ok);
    }
    if constexpr (Traits::kSparse) {
      const uint32_t* msrc = p.meta + layout::meta_word_index<S>(kb, mt0, n_tiles, 0, 0);
      constexpr int kMChunksPerTile = S::kMetaEntries * 2 / 4;
#pragma unroll
      for (int i = threadIdx.x; i < Cfg::kTiles * kMChunksPerTile; i += Cfg::kThreads) {
        const bool ok = i / kMChunksPerTile < tiles_valid;
        cp_async16(ms + i * 16, ok ? msrc + i * 4 : p.meta, ok);
      }
    }
  };

  Acc acc[Cfg::kWarpMT][Cfg::kWarpNT][4];
#pragma unroll
  for (int a = 0; a < Cfg::kWarpMT; ++a)
#pragma unroll
    for (int b = 0; b < Cfg::kWarpNT; ++b)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[a][b][i] = Acc(0);

  // Prologue: STAGES-1 stages in flight. Empty groups keep wait_group's count uniform.
#pragma unroll
  for (int s = 0; s < Cfg::kStages - 1; ++s) {
    if (kb0 + s < kb_end) load_stage(s, kb0 + s);
    cp_async_commit();
  }

  // Stage kb lives in slot (kb - kb0) % STAGES (kb0 = 0 unless split-K).
  for (int kb = kb0; kb < kb_end; ++kb) {
    cp_async_wait<Cfg::kStages - 2>();
    // Makes stage kb visible to all warps, and proves every warp is done with the slot that
    // the next load overwrites (it held stage kb - 1).
    __syncthreads();
    const int next = kb + Cfg::kStages - 1;
    if (next < kb_end) load_stage((next - kb0) % Cfg::kStages, next);
    cp_async_commit();

    const unsigned char* xs = smem + ((kb - kb0) % Cfg::kStages) * SB::kStage;
    const uint32_t* as = reinterpret_cast<const uint32_t*>(xs + SB::kX);
    const uint32_t* ms = reinterpret_cast<const uint32_t*>(xs + SB::kX + SB::kA);

    // Metadata of the whole stage for my tiles: one 8-byte load per tile (both sparse steps).
    uint2 meta[Cfg::kWarpMT] = {};  // dense int8 passes it to an mma that ignores it: defined anyway
    if constexpr (Traits::kSparse) {
#pragma unroll
      for (int a = 0; a < Cfg::kWarpMT; ++a) {
        const int tile = warp_n * Cfg::kWarpMT + a;
        meta[a] = *reinterpret_cast<const uint2*>(ms + (tile * S::kMetaEntries + S::meta_entry(lane)) * 2);
      }
    }

#pragma unroll
    for (int half = 0; half < 2; ++half) {
      // B fragments of my WARP_NT token tiles for this 64-byte half of the stage.
      uint32_t bfrag[Cfg::kWarpNT][4];
#pragma unroll
      for (int b = 0; b < Cfg::kWarpNT; ++b) {
        const int row = (warp_t * Cfg::kWarpNT + b) * 8 + layout::ldsm_x4_token(lane);
        ldmatrix_x4(bfrag[b], xs + layout::smem_x_byte_offset(row, 4 * half + layout::ldsm_x4_chunk(lane)));
      }
#pragma unroll
      for (int sub = 0; sub < Traits::kStepsPerHalf; ++sub) {
        const int step = half * Traits::kStepsPerHalf + sub;
#pragma unroll
        for (int a = 0; a < Cfg::kWarpMT; ++a) {
          const int tile = warp_n * Cfg::kWarpMT + a;
          if (tile >= tiles_valid) continue;  // warp-uniform: N % 16 == 0, zero meta is invalid
          const uint4 afrag = *reinterpret_cast<const uint4*>(as + tile * S::kATileWords + (step * 32 + lane) * S::kRegsA);
          const uint32_t e = step == 0 ? meta[a].x : meta[a].y;
#pragma unroll
          for (int b = 0; b < Cfg::kWarpNT; ++b)
            Traits::mma(acc[a][b], afrag, &bfrag[b][sub * Traits::kBRegsPerStep], e);
        }
      }
    }
  }
  cp_async_wait<0>();  // no copy may outlive the block (empty groups only, but be explicit)

  // Epilogue straight from the accumulator registers: lanes g = 0..7 of one (t, i) write 8
  // consecutive features. Fused: store_output. Split-K: the raw sums of this slice.
  OutT* y = static_cast<OutT*>(p.y);
  const OutT* res = static_cast<const OutT*>(p.residual);
  Acc* partial = nullptr;
  if constexpr (kPartial) partial = static_cast<Acc*>(p.workspace) + static_cast<long>(blockIdx.z) * p.M * p.N;
#pragma unroll
  for (int a = 0; a < Cfg::kWarpMT; ++a) {
#pragma unroll
    for (int b = 0; b < Cfg::kWarpNT; ++b) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int f = (mt0 + warp_n * Cfg::kWarpMT + a) * 16 + layout::acc_row(lane, i);
        const int tok = t0 + (warp_t * Cfg::kWarpNT + b) * 8 + layout::acc_col(lane, i);
        if (f >= p.N || tok >= p.M) continue;
        if constexpr (kPartial) partial[static_cast<long>(tok) * p.N + f] = acc[a][b][i];
        else store_output<Traits::kInt8>(p, y, res, acc[a][b][i], tok, f);
      }
    }
  }
}

// The GEMM kernel. Grid: (ceil(N / BN), gridDim.y, gridDim.z) with gridDim.y * gridDim.z >=
// ceil(M / BT) token tiles (block_first_token); block: Cfg::kThreads; dynamic shared memory:
// StageBytes<Traits, Cfg>::kTotal bytes. OutT: __half, __nv_bfloat16 or float.
template <class Traits, class Cfg, class OutT>
__global__ void __launch_bounds__(Cfg::kThreads) gemm_kernel(const GemmParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  gemm_block<Traits, Cfg, OutT>(p, RowMajorXTile<Traits, Cfg>(p, block_first_token<Cfg>()), smem);
}

// Split-K first pass. Grid: (ceil(N / BN), ceil(M / BT) <= 65535, splits); block z
// reduces the stages split_k::slice_range(num_kb, splits, z) and writes its raw accumulators
// (float32 for Sparse16, int32 for the int8 families) to p.workspace: Acc [splits, M, N].
template <class Traits, class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads) gemm_partial_kernel(const GemmParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  gemm_block<Traits, Cfg, void, true>(p, RowMajorXTile<Traits, Cfg>(p, block_first_token<Cfg, true>()), smem);
}

// Split-K second pass: Y = epilogue(ws[0] + ws[1] + ... + ws[splits - 1]) over Y [M, N], ws =
// p.workspace (Acc [splits, M, N]). One thread sums the slices of an element in slice order, so
// two runs give the same bits (and the int32 sums of the int8 families are exact). One element
// per thread (a warp reads 128 contiguous bytes per slice): with 4 per thread, the silu
// division's slow-path calls made ptxas spill. Grid: (ceil(N / kReduceThreads),
// min(M, 65535)), grid-stride over tokens; block: kReduceThreads. No tensor cores: it
// streams splits * M * N accumulators once, small next to the weight at the M <= 64 it is for.
constexpr int kReduceThreads = 256;
template <class Acc, bool kInt8, class OutT>
__global__ void __launch_bounds__(kReduceThreads) split_k_reduce_kernel(const GemmParams p, int splits) {
  const long slice = static_cast<long>(p.M) * p.N;
  const Acc* ws = static_cast<const Acc*>(p.workspace);
  OutT* y = static_cast<OutT*>(p.y);
  const OutT* res = static_cast<const OutT*>(p.residual);
  const int f = blockIdx.x * kReduceThreads + threadIdx.x;
  if (f >= p.N) return;
  for (int tok = blockIdx.y; tok < p.M; tok += gridDim.y) {
    const long e = static_cast<long>(tok) * p.N + f;
    Acc sum = ws[e];
    for (int s = 1; s < splits; ++s) sum += ws[s * slice + e];
    store_output<kInt8>(p, y, res, sum, tok, f);
  }
}

}  // namespace gemm
}  // namespace sparsedm
