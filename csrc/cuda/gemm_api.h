// Plain C entry points of the CUDA kernels (csrc/cuda/*_launch.cu), torch-free.
// Each returns SPARSEDM_OK or an error code; sparsedm_cuda_error_string() turns a code into
// text, csrc/cuda_ops.cpp into a readable torch error. All pointers are device pointers;
// `stream` is a cudaStream_t passed as void* so that this header needs no CUDA include.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum sparsedm_cuda_status {
  SPARSEDM_OK = 0,
  SPARSEDM_ERR_N_ALIGN = 1,       // N (out features) is not a multiple of 16
  SPARSEDM_ERR_K_ALIGN = 2,       // K is not a multiple of the kernel's K stage (64 f16/bf16, 128 int8)
  SPARSEDM_ERR_BAD_DTYPE = 3,     // unsupported dtype code
  SPARSEDM_ERR_BAD_ARG = 4,       // null pointer, M < 1, bad activation or family
  SPARSEDM_ERR_ARCH = 5,          // the device is older than sm_80 (no mma.sp / cp.async)
  SPARSEDM_ERR_CUDA = 6,          // a CUDA runtime call failed (launch, attribute)
  SPARSEDM_ERR_ALIGN = 7,         // a pointer is not 16-byte aligned (4 bytes: the re-layout source)
  SPARSEDM_ERR_C_ALIGN = 8,       // conv: input channels C is not a multiple of 8
  SPARSEDM_ERR_TOO_LARGE = 9,     // M > 2^31 - 2^18 tokens / output pixels, or conv N*H >= 2^31 or K > 2^30
};

// Largest M (tokens, or conv output pixels N*P*Q) of the GEMMs and the conv, 2^31 - 2^18
// (grid::kMaxTokens: int32 token indices). No limit comes from the 65535 grid-y limit.
#define SPARSEDM_MAX_TOKENS 0x7FFC0000

// dtype codes of activations / outputs.
enum sparsedm_dtype { SPARSEDM_F16 = 0, SPARSEDM_BF16 = 1, SPARSEDM_F32 = 2 };
// Weight families (relayout.cuh): 2:4 f16/bf16, 2:4 int8, dense int8.
enum sparsedm_family { SPARSEDM_SP16 = 0, SPARSEDM_SP8 = 1, SPARSEDM_D8 = 2 };

const char* sparsedm_cuda_error_string(int status);
// Last CUDA runtime error text seen by an entry point that returned SPARSEDM_ERR_CUDA.
const char* sparsedm_cuda_last_cuda_error(void);

// K stage of a family (64 for SP16, 128 for the int8 ones): K must be a multiple of it.
int sparsedm_cuda_k_multiple(int family);
// Words (uint32) of the re-laid-out weight and metadata of an N x K layer.
long sparsedm_cuda_relayout_words(int family, int N, int K, long* meta_words);

// Canonical -> kernel order. src: SP16 values [N, K/2] f16/bf16; SP8 values_q [N, K/2] int8;
// D8 w_q [N, K] int8 (all row-major contiguous, 4-byte aligned). meta: uint8 [N, K/8] (sparse
// families; may be null for D8). out_w / out_meta: sizes from sparsedm_cuda_relayout_words.
int sparsedm_cuda_relayout(int family, const void* src, const uint8_t* meta, uint32_t* out_w, uint32_t* out_meta,
                           int N, int K, void* stream);

// Per-token int8 quantization of x [M, K] (dtype x_dtype) into q int8 [M, K] and scale
// float32 [M]; static_scale float32 (1 or M elements) or null for dynamic absmax scales.
int sparsedm_cuda_quantize_rows(const void* x, int x_dtype, int8_t* q, float* scale, const float* static_scale,
                                int static_numel, int M, int K, void* stream);

// Split-K (docs/KERNELS.md, "Tile configurations and split-K"): the number of K slices the GEMM
// of `family` with M x N x K runs on the current device; 1 = no split (no workspace). split_k
// > 0 forces that count (tests, benchmarks), clamped to [1, K / k stage] so that no slice is
// empty; 0 = the launcher's rule. Returns 1 for arguments the GEMM would reject. The caller
// passes the result as `splits` to the GEMM below with a workspace of splits * M * N
// accumulators: float32 (SPARSEDM_SP16) or int32 (the int8 families), 16-byte aligned,
// allocated on (or ordered before) `stream`; the GEMM fully overwrites it, no zeroing needed.
int sparsedm_cuda_gemm_splits(int family, int M, int N, int K, int split_k);

// y [M, N] = act(x [M, K] . W^T + bias) (+ residual), 2:4 f16/bf16 weight re-laid out by
// sparsedm_cuda_relayout(SPARSEDM_SP16). dtype: SPARSEDM_F16 or SPARSEDM_BF16 (x, y, residual).
// bias float32 [N] or null; residual [M, N] or null; activation 0..3 (none, gelu, gelu_tanh, silu).
// 1 <= M <= SPARSEDM_MAX_TOKENS. splits: from sparsedm_cuda_gemm_splits; workspace: float32
// [splits, M, N] when splits > 1, else ignored (may be null).
int sparsedm_cuda_sparse24_gemm(const void* x, const uint32_t* w, const uint32_t* meta, const float* bias,
                                const void* residual, void* y, int M, int N, int K, int dtype, int activation,
                                int splits, void* workspace, void* stream);

// y [M, N] = act((q [M, K] . W_q^T) * x_scale[:, None] * w_scale[None, :] + bias) (+ residual)
// with int32 accumulation. family SPARSEDM_SP8 (meta required) or SPARSEDM_D8 (meta null).
// out_dtype: SPARSEDM_F16, SPARSEDM_BF16 or SPARSEDM_F32. 1 <= M <= SPARSEDM_MAX_TOKENS.
// splits: from sparsedm_cuda_gemm_splits; workspace: int32 [splits, M, N] when splits > 1.
int sparsedm_cuda_int8_gemm(int family, const int8_t* q, const float* x_scale, const uint32_t* w,
                            const uint32_t* meta, const float* w_scale, const float* bias, const void* residual,
                            void* y, int M, int N, int K, int out_dtype, int activation, int splits, void* workspace,
                            void* stream);

// Implicit-GEMM 2:4 conv2d (kernels/cuda/conv_mma.cuh), groups = 1:
// y NHWC [N, P, Q, Cout] = act(conv2d(x NHWC [N, H, W, C], W) + bias) (+ residual), where W
// [Cout, C, kh, kw] is compressed from its KRSC view ([Cout, K], K = kh*kw*C, cin innermost),
// zero-padded along K to sparsedm_cuda_conv_k_padded(K) (values 0, meta nibbles 0x4) and
// re-laid out by sparsedm_cuda_relayout(SPARSEDM_SP16, ..., Cout, K padded). P, Q follow
// F.conv2d. dtype: SPARSEDM_F16 or SPARSEDM_BF16 (x, y, residual); bias float32 [Cout] or
// null; residual NHWC [N, P, Q, Cout] or null (added after the activation). C % 8 == 0,
// Cout % 16 == 0; x, y, residual contiguous NHWC, x 16-byte aligned; N*P*Q <=
// SPARSEDM_MAX_TOKENS, N*H < 2^31, kh*kw*C <= 2^30 (else SPARSEDM_ERR_TOO_LARGE). No split-K.
int sparsedm_cuda_sparse24_conv2d(const void* x, const uint32_t* w, const uint32_t* meta, const float* bias,
                                  const void* residual, void* y, int N, int H, int W, int C, int Cout, int kh, int kw,
                                  int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int dtype,
                                  int activation, void* stream);
// The GEMM K of a conv weight with K = kh*kw*C: K rounded up to the SP16 K stage (64).
int sparsedm_cuda_conv_k_padded(int K);

#ifdef __cplusplus
}
#endif
