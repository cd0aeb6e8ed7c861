// Load-time kernels of the CUDA backend: canonical 2:4 / int8 weights -> the fragment order
// of gemm_mma.cuh, and per-token int8 quantization of activations.
// Layout definitions: mma_layout.cuh ("load-time re-layout"); docs/KERNELS.md, "CUDA GEMMs".
//
// The re-layout kernels are pure gathers, one thread per output 32-bit word, written through
// the same index functions the host emulator test checks; they run once per weight and
// device (sparsedm/ops/cuda_backend.py caches the result), so clarity beats speed here.
#pragma once

#include <stdint.h>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include "mma_layout.cuh"

namespace sparsedm {
namespace relayout {

enum Family : int { kSp16 = 0, kSp8 = 1, kD8 = 2 };

// Decomposes the word index of a re-laid-out weight into (kb, mt, step, lane, register).
template <class S>
SPARSEDM_HD void split_a_word(long idx, int n_tiles, int* kb, int* mt, int* s, int* lane, int* r) {
  *r = static_cast<int>(idx % S::kRegsA);
  idx /= S::kRegsA;
  *lane = static_cast<int>(idx % 32);
  idx /= 32;
  *s = static_cast<int>(idx % S::kStepsPerStage);
  idx /= S::kStepsPerStage;
  *mt = static_cast<int>(idx % n_tiles);
  *kb = static_cast<int>(idx / n_tiles);
}

// Source word of re-laid-out weight word `idx`, as an index into the canonical tensor viewed
// as 32-bit words row-major: values [N, K/2] f16/bf16 -> [N, K/4] words (SP16);
// values_q [N, K/2] int8 -> [N, K/8] words (SP8); w_q [N, K] int8 -> [N, K/4] words (D8).
template <int kFamily>
SPARSEDM_HD long a_source_word(long idx, int N, int K) {
  const int n_tiles = N / 16;
  int kb, mt, s, lane, r, row, col;
  if (kFamily == kSp16) {
    split_a_word<layout::Sp16>(idx, n_tiles, &kb, &mt, &s, &lane, &r);
    layout::sp16_a_source(kb, mt, s, lane, r, &row, &col);  // col = group = word of 2 halves
    return static_cast<long>(row) * (K / 4) + col;
  } else if (kFamily == kSp8) {
    split_a_word<layout::Sp8>(idx, n_tiles, &kb, &mt, &s, &lane, &r);
    layout::sp8_a_source(kb, mt, s, lane, r, &row, &col);  // 2 groups = 4 bytes = 1 word
    return static_cast<long>(row) * (K / 8) + col / 2;
  } else {
    split_a_word<layout::D8>(idx, n_tiles, &kb, &mt, &s, &lane, &r);
    layout::d8_a_source(kb, mt, s, lane, r, &row, &col);  // 4 bytes of k
    return static_cast<long>(row) * (K / 4) + col / 4;
  }
}

// Re-laid-out metadata word `idx` assembled from canonical meta uint8 [N, K/8]: two 16-bit
// halves, each = 2 consecutive canonical bytes (4 groups of one row), low byte first. SP16:
// halves = rows g and g + 8; SP8: one row, 8 consecutive groups (mma_layout.cuh, sp8_meta_*).
template <int kFamily>
SPARSEDM_HD uint32_t meta_word(long idx, const uint8_t* meta, int N, int K) {
  const int n_tiles = N / 16;
  const int entries = kFamily == kSp16 ? layout::Sp16::kMetaEntries : layout::Sp8::kMetaEntries;
  const int s = static_cast<int>(idx % 2);
  const long rest = idx / 2;
  const int e = static_cast<int>(rest % entries);
  const int mt = static_cast<int>((rest / entries) % n_tiles);
  const int kb = static_cast<int>(rest / entries / n_tiles);
  uint32_t word = 0;
  for (int half = 0; half < 2; ++half) {
    int row, first_group;
    if (kFamily == kSp16) layout::sp16_meta_source(kb, mt, e, s, half, &row, &first_group);
    else layout::sp8_meta_source(kb, mt, e, s, half, &row, &first_group);
    const uint8_t* src = meta + static_cast<long>(row) * (K / 8) + first_group / 2;
    word |= (static_cast<uint32_t>(src[0]) | (static_cast<uint32_t>(src[1]) << 8)) << (16 * half);
  }
  return word;
}

// Number of 32-bit words of the re-laid-out weight / metadata of an N x K layer.
SPARSEDM_HD long a_words(int family, int N, int K) {
  return family == kSp16 ? static_cast<long>(N) * K / 4 : (family == kSp8 ? static_cast<long>(N) * K / 8 : static_cast<long>(N) * K / 4);
}
SPARSEDM_HD long meta_words(int family, int N, int K) {
  return family == kD8 ? 0 : static_cast<long>(N) * K / 32;  // 4 bits per group of 4 logical k
}

#ifdef __CUDACC__
// Weight gather: out [a_words] <- src (canonical tensor as 32-bit words). 1 thread per word.
template <int kFamily>
__global__ void relayout_weight_kernel(const uint32_t* __restrict__ src, uint32_t* __restrict__ out, int N, int K) {
  const long n = a_words(kFamily, N, K);
  for (long idx = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x; idx < n; idx += static_cast<long>(gridDim.x) * blockDim.x)
    out[idx] = src[a_source_word<kFamily>(idx, N, K)];
}

// Metadata gather: out [meta_words] <- canonical meta uint8 [N, K/8].
template <int kFamily>
__global__ void relayout_meta_kernel(const uint8_t* __restrict__ meta, uint32_t* __restrict__ out, int N, int K) {
  const long n = meta_words(kFamily, N, K);
  for (long idx = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x; idx < n; idx += static_cast<long>(gridDim.x) * blockDim.x)
    out[idx] = meta_word<kFamily>(idx, meta, N, K);
}

template <class T> __device__ __forceinline__ float load_float(const T* p);
template <> __device__ __forceinline__ float load_float<__half>(const __half* p) { return __half2float(*p); }
template <> __device__ __forceinline__ float load_float<__nv_bfloat16>(const __nv_bfloat16* p) { return __bfloat162float(*p); }
template <> __device__ __forceinline__ float load_float<float>(const float* p) { return *p; }

__device__ __forceinline__ float nan_max(float a, float b) { return (b != b || b > a) ? b : a; }

// Per-token symmetric int8 quantization, one warp per row (sparsedm.formats.int8 contract):
// s = max|x_row| / 127 (float32), q = round_half_even(x / s) clamped to [-127, 127], a zero
// row gives s = 0 and q = 0. With static_scale (float32, 1 element or [M]) s is taken from it.
// x [M, K] row-major; q int8 [M, K]; scale_out float32 [M].
template <class T>
__global__ void quantize_rows_kernel(const T* __restrict__ x, int8_t* __restrict__ q, float* __restrict__ scale_out,
                                     const float* __restrict__ static_scale, int static_numel, int M, int K) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (row >= M) return;
  const T* xr = x + static_cast<long>(row) * K;
  float s;
  if (static_scale != nullptr) {
    s = static_scale[static_numel == 1 ? 0 : row];
  } else {
    // NaN-propagating max (fmaxf skips NaN): a row holding a NaN gets a NaN scale and codes 0,
    // as torch's amax gives, so the GEMM's output row is NaN rather than silently finite.
    float amax = 0.f;
    for (int k = lane; k < K; k += 32) amax = nan_max(amax, fabsf(load_float(xr + k)));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = nan_max(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    s = __fdiv_rn(amax, 127.f);
  }
  if (lane == 0) scale_out[row] = s;
  int8_t* qr = q + static_cast<long>(row) * K;
  const float safe = s > 0.f ? s : 1.f;
  for (int k = lane; k < K; k += 32) {
    int v = __float2int_rn(__fdiv_rn(load_float(xr + k), safe));  // round half to even, like torch.round
    v = max(-127, min(127, v));
    qr[k] = static_cast<int8_t>(s > 0.f ? v : 0);
  }
}
#endif  // __CUDACC__

}  // namespace relayout
}  // namespace sparsedm
