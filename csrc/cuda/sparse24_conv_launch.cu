// C entry point of the implicit-GEMM 2:4 conv (kernels/cuda/conv_mma.cuh).
// Instantiated: {f16, bf16} x {Large, Small} tile configs = 4 kernels (the GEMM's configs:
// no conv-specific tuning until GPU benchmarks justify one, docs/KERNELS.md).
#include "gemm_launch.cuh"
#include "conv_mma.cuh"

using namespace sparsedm;

namespace {

template <class Traits, class Cfg, class OutT>
int launch_conv_with(const gemm::GemmParams& p, const layout::ConvGeom& g, cudaStream_t s) {
  return launch::launch_tiles<Cfg>(gemm::conv_kernel<Traits, Cfg, OutT>, gemm::StageBytes<Traits, Cfg>::kTotal, p, 1, s, g);
}

template <class Traits, class OutT>
int launch_conv(const gemm::GemmParams& p, const layout::ConvGeom& g, cudaStream_t s) {
  if (launch::use_large_tile<launch::LargeSparse>(p.M, p.N)) return launch_conv_with<Traits, launch::LargeSparse, OutT>(p, g, s);
  return launch_conv_with<Traits, launch::Small, OutT>(p, g, s);
}

}  // namespace

extern "C" int sparsedm_cuda_conv_k_padded(int K) {
  const int stage = layout::Sp16::kKPerStage;
  return (K + stage - 1) / stage * stage;
}

extern "C" int sparsedm_cuda_sparse24_conv2d(const void* x, const uint32_t* w, const uint32_t* meta, const float* bias,
                                             const void* residual, void* y, int N, int H, int W, int C, int Cout,
                                             int kh, int kw, int stride_h, int stride_w, int pad_h, int pad_w,
                                             int dil_h, int dil_w, int dtype, int activation, void* stream) {
  if (x == nullptr || w == nullptr || meta == nullptr || y == nullptr) return SPARSEDM_ERR_BAD_ARG;
  if (N < 1 || H < 1 || W < 1 || C < 1 || Cout < 1 || kh < 1 || kw < 1) return SPARSEDM_ERR_BAD_ARG;
  if (stride_h < 1 || stride_w < 1 || dil_h < 1 || dil_w < 1 || pad_h < 0 || pad_w < 0) return SPARSEDM_ERR_BAD_ARG;
  if (activation < 0 || activation > 3) return SPARSEDM_ERR_BAD_ARG;
  if (C % 8 != 0) return SPARSEDM_ERR_C_ALIGN;
  if (Cout % 16 != 0) return SPARSEDM_ERR_N_ALIGN;
  const int P = (H + 2 * pad_h - dil_h * (kh - 1) - 1) / stride_h + 1;
  const int Q = (W + 2 * pad_w - dil_w * (kw - 1) - 1) / stride_w + 1;
  if (H + 2 * pad_h - dil_h * (kh - 1) - 1 < 0 || W + 2 * pad_w - dil_w * (kw - 1) - 1 < 0) return SPARSEDM_ERR_BAD_ARG;
  const long M = static_cast<long>(N) * P * Q;
  const long K = static_cast<long>(kh) * kw * C;
  // int32 index math: pixel indices (grid::kMaxTokens), n*H of conv_pixel, the tap's k (2^30
  // keeps k past K and the no-pixel marker -2^30 apart). Grids past 65535 pixel tiles are
  // laid out in gridDim.z layers by launch_tiles (one launch), so M is not bounded by the grid.
  if (M > grid::kMaxTokens || static_cast<long>(N) * H >= (1L << 31) || K > (1L << 30)) return SPARSEDM_ERR_TOO_LARGE;
  // x, w and meta are read with 16-byte cp.async; y and residual element by element.
  if (!launch::aligned16(x) || !launch::aligned16(w) || !launch::aligned16(meta)) return SPARSEDM_ERR_ALIGN;
  const int dev = launch::device_check();
  if (dev != SPARSEDM_OK) return dev;

  const gemm::GemmParams p{x, w, meta, nullptr, nullptr, bias, residual, y, static_cast<int>(M), Cout,
                           sparsedm_cuda_conv_k_padded(static_cast<int>(K)), activation};
  const layout::ConvGeom g{H, W, C, P, Q, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, static_cast<int>(K), static_cast<int>(M)};
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == SPARSEDM_F16) return launch_conv<gemm::Sparse16<false>, __half>(p, g, s);
  if (dtype == SPARSEDM_BF16) return launch_conv<gemm::Sparse16<true>, __nv_bfloat16>(p, g, s);
  return SPARSEDM_ERR_BAD_DTYPE;
}
