// Shared host-side launcher of gemm_kernel (kernels/cuda/gemm_mma.cuh) for the *_launch.cu
// translation units: argument checks that become error codes, the tile-config and split-K
// choice, and the launches on the caller's stream. Torch-free.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <mutex>
#include <set>
#include <utility>

#include "gemm_api.h"
#include "gemm_mma.cuh"

namespace sparsedm {
namespace launch {

static_assert(SPARSEDM_MAX_TOKENS == grid::kMaxTokens, "gemm_api.h and gemm_grid.cuh disagree on the largest M");

// Tile configurations. Only two, until GPU benchmarks justify more (docs/KERNELS.md):
//  - Large: 2x2 warps of 64 features x 32 tokens -> 128 x 64 block tile; enough reuse of each
//    weight fragment (8 token tiles) for compute-bound shapes.
//  - Small: 4x1 warps of 16 features x 16 tokens -> 64 x 16 block tile; for few tokens (the
//    weight stream dominates) and for grids the large tile would leave short of SMs. Split-K
//    (gemm_grid.cuh) runs on it only: it exists for M <= 64, where the Small tile is the one used.
using LargeSparse = gemm::TileConfig<2, 2, 4, 4, 4>;
using LargeDense = gemm::TileConfig<2, 2, 4, 4, 3>;  // 24 KiB stages: 3 fit sm_86's 99 KiB
using Small = gemm::TileConfig<4, 1, 1, 2, 4>;

void remember_cuda_error(cudaError_t err);

// Compute capability major and SM count of a device, read from the runtime once per device:
// a launch at M = 1 runs for microseconds, and these queries ran on every call before.
struct DeviceAttrs {
  int major;
  int sms;
};
constexpr int kMaxCachedDevices = 64;

inline cudaError_t device_attrs(int dev, DeviceAttrs* a) {
  static std::atomic<int> major[kMaxCachedDevices], sms[kMaxCachedDevices];  // 0 = not read yet
  const bool cached = dev >= 0 && dev < kMaxCachedDevices;
  if (cached && major[dev].load(std::memory_order_acquire) > 0) {
    a->major = major[dev].load(std::memory_order_relaxed);
    a->sms = sms[dev].load(std::memory_order_relaxed);
    return cudaSuccess;
  }
  cudaError_t err = cudaDeviceGetAttribute(&a->major, cudaDevAttrComputeCapabilityMajor, dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&a->sms, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) return err;
  if (cached) {
    sms[dev].store(a->sms, std::memory_order_relaxed);
    major[dev].store(a->major, std::memory_order_release);  // published after sms
  }
  return cudaSuccess;
}

inline int device_check(void) {
  int dev = 0;
  DeviceAttrs a{};
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = device_attrs(dev, &a);
  if (err != cudaSuccess) {
    remember_cuda_error(err);
    return SPARSEDM_ERR_CUDA;
  }
  return a.major >= 8 ? SPARSEDM_OK : SPARSEDM_ERR_ARCH;
}

inline int sm_count(void) {
  int dev = 0;
  DeviceAttrs a{};
  if (cudaGetDevice(&dev) != cudaSuccess || device_attrs(dev, &a) != cudaSuccess) return 108;
  return a.sms;
}

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) once per (kernel, device): the limit is a
// property of the function on that device, and `smem` is fixed per kernel instantiation.
inline cudaError_t allow_dynamic_smem(const void* kernel, int smem) {
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (done.count({kernel, dev})) return cudaSuccess;
  }
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err == cudaSuccess) {
    std::lock_guard<std::mutex> lock(mu);
    done.insert({kernel, dev});
  }
  return err;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Launches `kernel` (a gemm_block kernel of tile config Cfg taking (GemmParams, args...)) over
// all N / BN x M / BT tiles with its dynamic shared memory on the caller's stream, in one
// launch. gridDim.y is limited to 65535, so the token tiles are laid out as gridDim.z layers
// (grid::token_grid; gemm::block_first_token); for every M <= 65535 * BT that is the plain
// (N / BN, M / BT, 1) grid. splits > 1 (split-K): gridDim.z = splits K slices instead, which
// needs M / BT <= 65535 (launch_gemm checks). CUDA failures become error codes.
template <class Cfg, class Kernel, class... Args>
int launch_tiles(Kernel kernel, int smem, const gemm::GemmParams& p, int splits, cudaStream_t stream, const Args&... args) {
  cudaError_t err = allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  if (err != cudaSuccess) {
    remember_cuda_error(err);
    return SPARSEDM_ERR_CUDA;
  }
  const int tiles = (p.M + Cfg::kBT - 1) / Cfg::kBT;  // no overflow: M <= grid::kMaxTokens
  const grid::TokenGrid tg = splits > 1 ? grid::TokenGrid{tiles, 1} : grid::token_grid(tiles);
  const dim3 blocks((p.N + Cfg::kBN - 1) / Cfg::kBN, tg.y, splits > 1 ? splits : tg.z);
  kernel<<<blocks, Cfg::kThreads, smem, stream>>>(p, args...);
  err = cudaGetLastError();
  if (err != cudaSuccess) {
    remember_cuda_error(err);
    return SPARSEDM_ERR_CUDA;
  }
  return SPARSEDM_OK;
}

template <class Traits, class Cfg, class OutT>
int launch_with(const gemm::GemmParams& p, cudaStream_t stream) {
  return launch_tiles<Cfg>(gemm::gemm_kernel<Traits, Cfg, OutT>, gemm::StageBytes<Traits, Cfg>::kTotal, p, 1, stream);
}

// Split-K: the K slices on the Small tile (gemm_partial_kernel, raw sums into p.workspace),
// then split_k_reduce_kernel (sum in slice order + the fused kernel's epilogue), both on
// `stream`, so the reduction sees the partial sums without any extra synchronization.
template <class Traits, class OutT>
int launch_split_k(const gemm::GemmParams& p, int splits, cudaStream_t stream) {
  const int status =
      launch_tiles<Small>(gemm::gemm_partial_kernel<Traits, Small>, gemm::StageBytes<Traits, Small>::kTotal, p, splits, stream);
  if (status != SPARSEDM_OK) return status;
  const dim3 blocks((p.N + gemm::kReduceThreads - 1) / gemm::kReduceThreads, p.M < grid::kMaxGridY ? p.M : grid::kMaxGridY);
  gemm::split_k_reduce_kernel<typename Traits::Acc, Traits::kInt8, OutT><<<blocks, gemm::kReduceThreads, 0, stream>>>(p, splits);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    remember_cuda_error(err);
    return SPARSEDM_ERR_CUDA;
  }
  return SPARSEDM_OK;
}

// The large tile when the problem has more than one small tile of tokens and fills the SMs
// with large tiles; the small one otherwise.
template <class LargeCfg>
bool use_large_tile(int M, int N) {
  const long large_blocks = static_cast<long>((N + LargeCfg::kBN - 1) / LargeCfg::kBN) * ((M + LargeCfg::kBT - 1) / LargeCfg::kBT);
  return M > Small::kBT && large_blocks >= sm_count();
}

// K slices of an M x N x K GEMM whose K stage is k_stage (docs/KERNELS.md, "Tile
// configurations and split-K"): split_k::choose_splits on the Small tile and this device's
// SM count; forced > 0 overrides the rule (clamped to [1, K stages]). 1 for arguments the
// launcher would reject (it reports them) and for M > 65535 * 16 (split grids have one layer
// of token tiles; such an M has enough blocks without splitting anyway).
inline int gemm_splits(int M, int N, int K, int k_stage, int forced) {
  if (M < 1 || N < 1 || K < k_stage || K % k_stage != 0) return 1;
  if ((M + Small::kBT - 1) / Small::kBT > grid::kMaxGridY) return 1;  // blockIdx.z is the slice
  return split_k::choose_splits(M, N, K / k_stage, sm_count(), Small::kBN, Small::kBT, forced);
}

// Checks what the kernel assumes, picks the tile config and launches. splits: from
// gemm_splits (1 = the fused kernel); splits > 1 needs p.workspace, Acc [splits, M, N].
template <class Traits, class LargeCfg, class OutT>
int launch_gemm(const gemm::GemmParams& p, int splits, cudaStream_t stream) {
  if (p.x == nullptr || p.w == nullptr || p.y == nullptr || p.M < 1 || p.N < 1 || p.K < 1) return SPARSEDM_ERR_BAD_ARG;
  if (Traits::kSparse && p.meta == nullptr) return SPARSEDM_ERR_BAD_ARG;
  if (Traits::kInt8 && (p.x_scale == nullptr || p.w_scale == nullptr)) return SPARSEDM_ERR_BAD_ARG;
  if (p.activation < 0 || p.activation > 3) return SPARSEDM_ERR_BAD_ARG;
  if (p.M > grid::kMaxTokens) return SPARSEDM_ERR_TOO_LARGE;
  if (p.N % 16 != 0) return SPARSEDM_ERR_N_ALIGN;
  if (p.K % Traits::Shape::kKPerStage != 0) return SPARSEDM_ERR_K_ALIGN;
  if (splits < 1 || splits > p.K / Traits::Shape::kKPerStage) return SPARSEDM_ERR_BAD_ARG;  // an empty K slice
  if (splits > 1 && (p.workspace == nullptr || (p.M + Small::kBT - 1) / Small::kBT > grid::kMaxGridY)) return SPARSEDM_ERR_BAD_ARG;
  if (!aligned16(p.x) || !aligned16(p.w) || (p.meta && !aligned16(p.meta))) return SPARSEDM_ERR_ALIGN;
  if (splits > 1 && !aligned16(p.workspace)) return SPARSEDM_ERR_ALIGN;
  const int dev = device_check();
  if (dev != SPARSEDM_OK) return dev;
  if (splits > 1) return launch_split_k<Traits, OutT>(p, splits, stream);
  if (use_large_tile<LargeCfg>(p.M, p.N)) return launch_with<Traits, LargeCfg, OutT>(p, stream);
  return launch_with<Traits, Small, OutT>(p, stream);
}

}  // namespace launch
}  // namespace sparsedm
