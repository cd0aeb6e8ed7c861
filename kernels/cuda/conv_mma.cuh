// sparsedm implicit-GEMM 2:4 convolution on sparse tensor cores (docs/KERNELS.md, "CUDA
// implicit-GEMM 2:4 conv"; gather index math: mma_layout.cuh, "implicit-GEMM conv gather").
//
//   y[n, oh, ow, co] = act(bias[co] + sum_{r,s,c} x[n, oh*sh - ph + r*dh, ow*sw - pw + s*dw, c]
//                                                 * W[co, (r*kw + s)*C + c]) (+ residual)
//
// is the Sparse16 GEMM of gemm_mma.cuh with M = N*P*Q output pixels (tokens), N = Cout (the
// 2:4 weight, A operand, compressed from the KRSC view and re-laid out exactly like a linear
// weight [Cout, K]), K = kh*kw*C. Only the activation tile differs: instead of 128 contiguous
// bytes of a token row, each 16-byte chunk of a stage is cp.async-gathered from the NHWC image
// (ConvXTile below), with zero-fill for padding, image borders, k past K and pixels past M.
// No im2col buffer exists. The output [N*P*Q, Cout] row-major IS the NHWC output, so
// pipeline, mma loop and epilogue (bias, activation, residual) are gemm_block's, unchanged.
//
// Requirements (checked by the launcher, csrc/cuda/sparse24_conv_launch.cu): C % 8 == 0 (a
// chunk = 8 channels of one tap, 16-byte aligned); Cout % 16 == 0; the weight re-laid out for
// K padded to a multiple of 64 (zero values, valid meta) and GemmParams::K = that padded K;
// x, y, residual NHWC contiguous; M = N*P*Q <= grid::kMaxTokens and N*H < 2^31 (conv_pixel keeps
// n*H in int32). Torch-free: CUDA runtime headers only.
#pragma once

#include "gemm_mma.cuh"

namespace sparsedm {
namespace gemm {

// Activation tile of the conv: stage kb of BT output pixels gathered from NHWC x. Each thread
// keeps the tap-(0,0) input position of its token rows in registers (ConvGather::px, computed
// once) and per stage derives its chunk's tap (one division by C and one by kw).
template <class Traits, class Cfg>
struct ConvXTile {
  static_assert(Traits::kXBytes == 2, "the conv gather is written for 16-bit activations (8 per chunk)");
  using Gather = layout::ConvGather<Cfg::kBT, Cfg::kThreads>;
  const __half* x;  // NHWC input as 16-bit elements (f16 or bf16 bits)
  const layout::ConvGeom& g;
  Gather gather;
  __device__ __forceinline__ ConvXTile(const void* x_, const layout::ConvGeom& geom, int first_token)
      : x(static_cast<const __half*>(x_)), g(geom), gather(geom, first_token, threadIdx.x) {}
  __device__ __forceinline__ void load(unsigned char* xs, int kb) const {
    const layout::ConvTap tap = gather.tap(g, kb);
#pragma unroll
    for (int j = 0; j < Gather::kRows; ++j) {
      if (!gather.active(j)) continue;
      const long off = layout::conv_x_offset(g, gather.px[j], tap);
      const bool ok = off >= 0;
      cp_async16(xs + layout::smem_x_byte_offset(gather.row(j), gather.chunk), ok ? x + off : x, ok);
    }
  }
};

// The conv kernel. Grid: (ceil(Cout / BN), gridDim.y, gridDim.z) with gridDim.y * gridDim.z >=
// ceil(N*P*Q / BT) pixel tiles (block_first_token: layers of <= 65535 tiles for large M);
// block: Cfg::kThreads; dynamic shared memory: StageBytes<Traits, Cfg>::kTotal. p: x = NHWC
// input, w/meta = re-laid-out weight of the padded K, y/residual = NHWC [N*P*Q, Cout],
// M = N*P*Q, N = Cout, K = padded K.
template <class Traits, class Cfg, class OutT>
__global__ void __launch_bounds__(Cfg::kThreads) conv_kernel(const GemmParams p, const layout::ConvGeom geom) {
  extern __shared__ __align__(16) unsigned char smem[];
  gemm_block<Traits, Cfg, OutT>(p, ConvXTile<Traits, Cfg>(p.x, geom, block_first_token<Cfg>()), smem);
}

}  // namespace gemm
}  // namespace sparsedm
