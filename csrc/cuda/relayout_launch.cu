// C entry points of the load-time kernels (kernels/cuda/relayout.cuh), the error strings shared
// by every entry point of gemm_api.h, and the GEMMs' split-K count (gemm_launch.cuh).
// Grids here are 1-D (gridDim.x up to 2^31 - 1; the re-layout caps it and loops).
#include <cuda_runtime.h>

#include "gemm_launch.cuh"
#include "relayout.cuh"

using namespace sparsedm;

namespace {
thread_local const char* g_last_cuda_error = "";
int grid_for(long n) { return static_cast<int>(n / 256 + 1 < 65535 ? n / 256 + 1 : 65535); }
}  // namespace

void sparsedm::launch::remember_cuda_error(cudaError_t err) { g_last_cuda_error = cudaGetErrorString(err); }

extern "C" const char* sparsedm_cuda_last_cuda_error(void) { return g_last_cuda_error; }

extern "C" const char* sparsedm_cuda_error_string(int status) {
  switch (status) {
    case SPARSEDM_OK: return "ok";
    case SPARSEDM_ERR_N_ALIGN: return "N (out_features) must be a multiple of 16";
    case SPARSEDM_ERR_K_ALIGN: return "K (in_features) must be a multiple of 64 (f16/bf16) or 128 (int8)";
    case SPARSEDM_ERR_BAD_DTYPE: return "unsupported dtype";
    case SPARSEDM_ERR_BAD_ARG: return "invalid argument (null pointer, empty size or unknown activation/family)";
    case SPARSEDM_ERR_ARCH: return "the GPU is older than compute capability 8.0 (mma.sp needs sm_80+)";
    case SPARSEDM_ERR_CUDA: return "a CUDA runtime call failed";
    case SPARSEDM_ERR_ALIGN: return "a tensor is not aligned (16 bytes for the GEMM and conv operands, 4 for the re-layout source)";
    case SPARSEDM_ERR_C_ALIGN: return "conv input channels must be a multiple of 8 (the layer stays on another backend)";
    case SPARSEDM_ERR_TOO_LARGE:
      return "a size exceeds the kernels' int32 index range (tokens / conv output pixels N*P*Q must be <= 2^31 - 2^18; "
             "conv: N*H < 2^31 and kh*kw*C <= 2^30); split the batch";
    default: return "unknown error";
  }
}

extern "C" int sparsedm_cuda_k_multiple(int family) {
  return family == SPARSEDM_SP16 ? layout::Sp16::kKPerStage : layout::Sp8::kKPerStage;
}

extern "C" int sparsedm_cuda_gemm_splits(int family, int M, int N, int K, int split_k) {
  return launch::gemm_splits(M, N, K, sparsedm_cuda_k_multiple(family), split_k);
}

extern "C" long sparsedm_cuda_relayout_words(int family, int N, int K, long* meta_words) {
  if (meta_words) *meta_words = relayout::meta_words(family, N, K);
  return relayout::a_words(family, N, K);
}

extern "C" int sparsedm_cuda_relayout(int family, const void* src, const uint8_t* meta, uint32_t* out_w,
                                      uint32_t* out_meta, int N, int K, void* stream) {
  if (src == nullptr || out_w == nullptr || N < 1 || K < 1) return SPARSEDM_ERR_BAD_ARG;
  if (family != SPARSEDM_D8 && (meta == nullptr || out_meta == nullptr)) return SPARSEDM_ERR_BAD_ARG;
  if (N % 16 != 0) return SPARSEDM_ERR_N_ALIGN;
  if (K % sparsedm_cuda_k_multiple(family) != 0) return SPARSEDM_ERR_K_ALIGN;
  if (reinterpret_cast<uintptr_t>(src) % 4 != 0) return SPARSEDM_ERR_ALIGN;  // read as 32-bit words
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const uint32_t* src_w = static_cast<const uint32_t*>(src);
  const long nw = relayout::a_words(family, N, K), nm = relayout::meta_words(family, N, K);
  switch (family) {
    case SPARSEDM_SP16:
      relayout::relayout_weight_kernel<relayout::kSp16><<<grid_for(nw), 256, 0, s>>>(src_w, out_w, N, K);
      relayout::relayout_meta_kernel<relayout::kSp16><<<grid_for(nm), 256, 0, s>>>(meta, out_meta, N, K);
      break;
    case SPARSEDM_SP8:
      relayout::relayout_weight_kernel<relayout::kSp8><<<grid_for(nw), 256, 0, s>>>(src_w, out_w, N, K);
      relayout::relayout_meta_kernel<relayout::kSp8><<<grid_for(nm), 256, 0, s>>>(meta, out_meta, N, K);
      break;
    case SPARSEDM_D8:
      relayout::relayout_weight_kernel<relayout::kD8><<<grid_for(nw), 256, 0, s>>>(src_w, out_w, N, K);
      break;
    default: return SPARSEDM_ERR_BAD_ARG;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    launch::remember_cuda_error(err);
    return SPARSEDM_ERR_CUDA;
  }
  return SPARSEDM_OK;
}

extern "C" int sparsedm_cuda_quantize_rows(const void* x, int x_dtype, int8_t* q, float* scale,
                                           const float* static_scale, int static_numel, int M, int K, void* stream) {
  if (x == nullptr || q == nullptr || scale == nullptr || M < 1 || K < 1) return SPARSEDM_ERR_BAD_ARG;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int rows_per_block = 8;  // 8 warps, one row each
  const dim3 grid((M + rows_per_block - 1) / rows_per_block);
  switch (x_dtype) {
    case SPARSEDM_F16:
      relayout::quantize_rows_kernel<__half><<<grid, 256, 0, s>>>(static_cast<const __half*>(x), q, scale, static_scale, static_numel, M, K);
      break;
    case SPARSEDM_BF16:
      relayout::quantize_rows_kernel<__nv_bfloat16><<<grid, 256, 0, s>>>(static_cast<const __nv_bfloat16*>(x), q, scale, static_scale, static_numel, M, K);
      break;
    case SPARSEDM_F32:
      relayout::quantize_rows_kernel<float><<<grid, 256, 0, s>>>(static_cast<const float*>(x), q, scale, static_scale, static_numel, M, K);
      break;
    default: return SPARSEDM_ERR_BAD_DTYPE;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    launch::remember_cuda_error(err);
    return SPARSEDM_ERR_CUDA;
  }
  return SPARSEDM_OK;
}
