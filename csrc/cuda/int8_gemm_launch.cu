// C entry point of the int8 GEMMs (kernels/cuda/gemm_mma.cuh, Sparse8 and Dense8 families).
// Instantiated: {2:4, dense} x {f16, bf16, f32 out} x {Large, Small} = 12 kernels (the output
// dtype follows the activation dtype of the layer, so all three occur), plus split-K (small M):
// {2:4, dense} partial kernels (Small tile; int32 sums, no output dtype) and one int32
// reduction per output dtype (shared by both families) = 5 kernels.
#include "gemm_launch.cuh"

using namespace sparsedm;

namespace {
template <class Traits, class Large>
int by_out_dtype(const gemm::GemmParams& p, int out_dtype, int splits, cudaStream_t s) {
  if (out_dtype == SPARSEDM_F16) return launch::launch_gemm<Traits, Large, __half>(p, splits, s);
  if (out_dtype == SPARSEDM_BF16) return launch::launch_gemm<Traits, Large, __nv_bfloat16>(p, splits, s);
  if (out_dtype == SPARSEDM_F32) return launch::launch_gemm<Traits, Large, float>(p, splits, s);
  return SPARSEDM_ERR_BAD_DTYPE;
}
}  // namespace

extern "C" int sparsedm_cuda_int8_gemm(int family, const int8_t* q, const float* x_scale, const uint32_t* w,
                                       const uint32_t* meta, const float* w_scale, const float* bias,
                                       const void* residual, void* y, int M, int N, int K, int out_dtype,
                                       int activation, int splits, void* workspace, void* stream) {
  gemm::GemmParams p{q, w, meta, x_scale, w_scale, bias, residual, y, M, N, K, activation};
  p.workspace = workspace;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (family == SPARSEDM_SP8) return by_out_dtype<gemm::Sparse8, launch::LargeSparse>(p, out_dtype, splits, s);
  if (family == SPARSEDM_D8) return by_out_dtype<gemm::Dense8, launch::LargeDense>(p, out_dtype, splits, s);
  return SPARSEDM_ERR_BAD_ARG;
}
