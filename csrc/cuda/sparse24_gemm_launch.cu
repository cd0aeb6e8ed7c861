// C entry point of the 2:4 f16/bf16 GEMM (kernels/cuda/gemm_mma.cuh, Sparse16 family).
// Instantiated: {f16, bf16} x {Large, Small} tile configs = 4 kernels, plus split-K (small M):
// {f16, bf16} partial kernels (Small tile) and {f16, bf16} reductions = 4 kernels.
#include "gemm_launch.cuh"

using namespace sparsedm;

extern "C" int sparsedm_cuda_sparse24_gemm(const void* x, const uint32_t* w, const uint32_t* meta, const float* bias,
                                           const void* residual, void* y, int M, int N, int K, int dtype,
                                           int activation, int splits, void* workspace, void* stream) {
  gemm::GemmParams p{x, w, meta, nullptr, nullptr, bias, residual, y, M, N, K, activation};
  p.workspace = workspace;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == SPARSEDM_F16) return launch::launch_gemm<gemm::Sparse16<false>, launch::LargeSparse, __half>(p, splits, s);
  if (dtype == SPARSEDM_BF16) return launch::launch_gemm<gemm::Sparse16<true>, launch::LargeSparse, __nv_bfloat16>(p, splits, s);
  return SPARSEDM_ERR_BAD_DTYPE;
}
