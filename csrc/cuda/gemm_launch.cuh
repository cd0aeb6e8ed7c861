// Shared host-side launcher of gemm_kernel (kernels/cuda/gemm_mma.cuh) for the *_launch.cu
// translation units: argument checks that become error codes, the tile-config choice, and the
// launch on the caller's stream. Torch-free.
#pragma once

#include <cuda_runtime.h>

#include "gemm_api.h"
#include "gemm_mma.cuh"

namespace sparsedm {
namespace launch {

// Tile configurations. Only two, until GPU benchmarks justify more (docs/KERNELS.md):
//  - Large: 2x2 warps of 64 features x 32 tokens -> 128 x 64 block tile; enough reuse of each
//    weight fragment (8 token tiles) for compute-bound shapes.
//  - Small: 4x1 warps of 16 features x 16 tokens -> 64 x 16 block tile; for few tokens (the
//    weight stream dominates) and for grids the large tile would leave short of SMs.
using LargeSparse = gemm::TileConfig<2, 2, 4, 4, 4>;
using LargeDense = gemm::TileConfig<2, 2, 4, 4, 3>;  // 24 KiB stages: 3 fit sm_86's 99 KiB
using Small = gemm::TileConfig<4, 1, 1, 2, 4>;

void remember_cuda_error(cudaError_t err);

inline int device_check(void) {
  int dev = 0, major = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (err != cudaSuccess) {
    remember_cuda_error(err);
    return SPARSEDM_ERR_CUDA;
  }
  return major >= 8 ? SPARSEDM_OK : SPARSEDM_ERR_ARCH;
}

inline int sm_count(void) {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 108;
  return n;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Launches `kernel` (a gemm_block kernel of tile config Cfg: grid = N / BN x M / BT blocks)
// with its dynamic shared memory on the caller's stream; CUDA failures become error codes.
template <class Cfg, class Kernel, class... Args>
int launch_tiles(Kernel kernel, int smem, int M, int N, cudaStream_t stream, const Args&... args) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) {
    remember_cuda_error(err);
    return SPARSEDM_ERR_CUDA;
  }
  const dim3 grid((N + Cfg::kBN - 1) / Cfg::kBN, (M + Cfg::kBT - 1) / Cfg::kBT);
  kernel<<<grid, Cfg::kThreads, smem, stream>>>(args...);
  err = cudaGetLastError();
  if (err != cudaSuccess) {
    remember_cuda_error(err);
    return SPARSEDM_ERR_CUDA;
  }
  return SPARSEDM_OK;
}

template <class Traits, class Cfg, class OutT>
int launch_with(const gemm::GemmParams& p, cudaStream_t stream) {
  return launch_tiles<Cfg>(gemm::gemm_kernel<Traits, Cfg, OutT>, gemm::StageBytes<Traits, Cfg>::kTotal, p.M, p.N, stream, p);
}

// The large tile when the problem has more than one small tile of tokens and fills the SMs
// with large tiles; the small one otherwise.
template <class LargeCfg>
bool use_large_tile(int M, int N) {
  const long large_blocks = static_cast<long>((N + LargeCfg::kBN - 1) / LargeCfg::kBN) * ((M + LargeCfg::kBT - 1) / LargeCfg::kBT);
  return M > Small::kBT && large_blocks >= sm_count();
}

// Checks what the kernel assumes, picks the tile config and launches.
template <class Traits, class LargeCfg, class OutT>
int launch_gemm(const gemm::GemmParams& p, cudaStream_t stream) {
  if (p.x == nullptr || p.w == nullptr || p.y == nullptr || p.M < 1 || p.N < 1 || p.K < 1) return SPARSEDM_ERR_BAD_ARG;
  if (Traits::kSparse && p.meta == nullptr) return SPARSEDM_ERR_BAD_ARG;
  if (Traits::kInt8 && (p.x_scale == nullptr || p.w_scale == nullptr)) return SPARSEDM_ERR_BAD_ARG;
  if (p.activation < 0 || p.activation > 3) return SPARSEDM_ERR_BAD_ARG;
  if (p.N % 16 != 0) return SPARSEDM_ERR_N_ALIGN;
  if (p.K % Traits::Shape::kKPerStage != 0) return SPARSEDM_ERR_K_ALIGN;
  if (!aligned16(p.x) || !aligned16(p.w) || (p.meta && !aligned16(p.meta))) return SPARSEDM_ERR_ALIGN;
  const int dev = device_check();
  if (dev != SPARSEDM_OK) return dev;
  if (use_large_tile<LargeCfg>(p.M, p.N)) return launch_with<Traits, LargeCfg, OutT>(p, stream);
  return launch_with<Traits, Small, OutT>(p, stream);
}

}  // namespace launch
}  // namespace sparsedm
