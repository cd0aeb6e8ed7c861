// Torch glue of the CUDA kernels: private ops sparsedm::_cuda_* (schemas + CUDA impls) that
// call the plain C entry points of csrc/cuda/gemm_api.h on the current CUDA stream and turn
// their error codes into readable torch errors. The public ops (sparsedm/ops/library.py) reach
// these through the backend registry (sparsedm/ops/cuda_backend.py), never directly, so that
// backend forcing and `supports` reasons keep working (docs/KERNELS.md, "CUDA GEMMs").
// Compiled to nothing in a CPU-only build.
#ifdef SPARSEDM_WITH_CUDA

#include <algorithm>
#include <cstdint>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include "cuda/gemm_api.h"

namespace {

void check_status(int status, const char* op) {
  if (status == SPARSEDM_OK) return;
  std::string msg = std::string(op) + ": " + sparsedm_cuda_error_string(status);
  if (status == SPARSEDM_ERR_CUDA) msg += std::string(" (") + sparsedm_cuda_last_cuda_error() + ")";
  TORCH_CHECK(false, msg);
}

int dtype_code(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kHalf: return SPARSEDM_F16;
    case at::kBFloat16: return SPARSEDM_BF16;
    case at::kFloat: return SPARSEDM_F32;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", t, " (float16, bfloat16 or float32)");
  }
  return -1;
}

void* stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

void require_cuda_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void require_device_of(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device(),
              " (move both to one GPU)");
}

// K (the last dim) of an activation tensor, checked before anything divides by it.
int64_t reduction_length(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, op, ": ", name, " must have a non-empty last dimension (K), got shape ",
              x.sizes());
  TORCH_CHECK(x.size(-1) <= INT32_MAX, op, ": K=", x.size(-1), " does not fit in int32");
  return x.size(-1);
}

// The re-laid-out weight (w) and metadata words of one family at N x K, as _cuda_relayout24
// made them: int32, on x's device, exactly the word counts the kernels index (a short buffer
// would be read past its end).
void require_relayout(const at::Tensor& w, const std::optional<at::Tensor>& meta, int family, int64_t N, int64_t K,
                      const at::Tensor& x, const char* op) {
  TORCH_CHECK(N > 0 && N <= INT32_MAX, op, ": N=", N, " must be in 1..2^31-1");
  long meta_words = 0;
  const long w_words = sparsedm_cuda_relayout_words(family, static_cast<int>(N), static_cast<int>(K), &meta_words);
  require_cuda_contiguous(w, op, "w");
  require_device_of(w, x, op, "w");
  TORCH_CHECK(w.scalar_type() == at::kInt && w.numel() == w_words, op, ": w must be the int32 re-layout of an N=", N,
              " K=", K, " weight (", w_words, " words, from _cuda_relayout24), got ", w.scalar_type(), " with ", w.numel(),
              " elements");
  if (family == SPARSEDM_D8) return;
  TORCH_CHECK(meta.has_value(), op, ": the 2:4 families need meta (from _cuda_relayout24)");
  require_cuda_contiguous(*meta, op, "meta");
  require_device_of(*meta, x, op, "meta");
  TORCH_CHECK(meta->scalar_type() == at::kInt && meta->numel() == meta_words, op, ": meta must be the int32 re-layout of an N=",
              N, " K=", K, " weight (", meta_words, " words), got ", meta->scalar_type(), " with ", meta->numel(), " elements");
}

// M (tokens) as the int the C entry points take: at most SPARSEDM_MAX_TOKENS (int32 token
// indices in the kernels; the launchers handle grids past 65535 token tiles themselves).
int tokens_arg(int64_t M, const char* op) {
  TORCH_CHECK(M <= SPARSEDM_MAX_TOKENS, op, ": M=", M, " tokens exceed the cuda kernels' limit of ", SPARSEDM_MAX_TOKENS,
              " (int32 token indices); split the batch (cuda_backend.supports routes such calls to another backend)");
  return static_cast<int>(M);
}

// Split-K workspace (docs/KERNELS.md, "Tile configurations and split-K"): the raw accumulators
// of the K slices, [splits, M, N] float32 (2:4 f16/bf16) or int32 (int8), from torch's caching
// allocator on the current stream, so the GEMM's launches on that stream are ordered after the
// allocation and the block returns to the pool when the op returns. Undefined when splits == 1.
at::Tensor split_k_workspace(int splits, int64_t M, int64_t N, at::ScalarType acc, const at::Tensor& like) {
  if (splits <= 1) return at::Tensor();
  return at::empty({splits, M, N}, like.options().dtype(acc));
}

void* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// The split_k argument (>= 0, checked) as the int of sparsedm_cuda_gemm_splits: a count past
// INT32_MAX is clamped like every count past the K stages (a plain cast would wrap it to 0 =
// automatic, or to a negative count).
int forced_splits(int64_t split_k) { return static_cast<int>(std::min<int64_t>(split_k, INT32_MAX)); }

// A float32 per-token / per-feature vector of exactly `count` values (the kernels index it by
// token or feature, so a short one would be read past its end); nullptr when absent.
const float* opt_f32(const std::optional<at::Tensor>& t, int64_t count, const char* op, const char* name) {
  if (!t.has_value()) return nullptr;
  require_cuda_contiguous(*t, op, name);
  TORCH_CHECK(t->device().index() == c10::cuda::current_device(), op, ": ", name, " is on ", t->device(),
              ", not on the GPU of the other operands (cuda:", static_cast<int>(c10::cuda::current_device()), ")");
  TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": ", name, " must be float32 (the backend converts it)");
  TORCH_CHECK(t->numel() == count, op, ": ", name, " must hold ", count, " values, got ", t->numel());
  return t->data_ptr<float>();
}

// (weight_words, meta_words) = re-layout of canonical (src [N, K/2] or [N, K], meta [N, K/8]).
std::tuple<at::Tensor, at::Tensor> relayout(const at::Tensor& src, const std::optional<at::Tensor>& meta, int64_t family,
                                            int64_t N, int64_t K) {
  const char* op = "sparsedm::_cuda_relayout24";
  require_cuda_contiguous(src, op, "src");
  TORCH_CHECK(N > 0 && K > 0 && N <= INT32_MAX && K <= INT32_MAX, op, ": N=", N, " and K=", K, " must be in 1..2^31-1");
  TORCH_CHECK(family == SPARSEDM_SP16 || family == SPARSEDM_SP8 || family == SPARSEDM_D8, op, ": unknown family ", family);
  const int64_t src_cols = family == SPARSEDM_D8 ? K : K / 2;
  TORCH_CHECK(src.dim() == 2 && src.size(0) == N && src.size(1) == src_cols, op, ": src must be [N, ",
              family == SPARSEDM_D8 ? "K" : "K/2", "] = [", N, ", ", src_cols, "], got ", src.sizes());
  // The kernel reads src as 32-bit words: the element size decides what a word holds.
  const int64_t elem = family == SPARSEDM_SP16 ? 2 : 1;
  TORCH_CHECK(src.element_size() == elem, op, ": src must hold ", family == SPARSEDM_SP16 ? "float16/bfloat16" : "int8",
              " values for this family, got ", src.scalar_type());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(src.data_ptr()) % 4 == 0, op,
              ": src must start on a 4-byte boundary (it is read as 32-bit words); pass src.clone()");
  c10::cuda::CUDAGuard guard(src.device());
  long meta_words = 0;
  const long w_words = sparsedm_cuda_relayout_words(static_cast<int>(family), static_cast<int>(N), static_cast<int>(K), &meta_words);
  auto opts = src.options().dtype(at::kInt);
  at::Tensor out_w = at::empty({w_words}, opts);
  at::Tensor out_m = at::empty({meta_words}, opts);
  const uint8_t* meta_ptr = nullptr;
  if (meta.has_value()) {
    require_cuda_contiguous(*meta, op, "meta");
    require_device_of(*meta, src, op, "meta");
    TORCH_CHECK(meta->scalar_type() == at::kByte && meta->numel() == N * (K / 8), op, ": meta must be uint8 [N, K/8] = [", N,
                ", ", K / 8, "], got ", meta->scalar_type(), " ", meta->sizes());
    meta_ptr = meta->data_ptr<uint8_t>();
  }
  TORCH_CHECK(meta_ptr != nullptr || family == SPARSEDM_D8, op, ": the 2:4 families need meta");
  check_status(sparsedm_cuda_relayout(static_cast<int>(family), src.data_ptr(), meta_ptr,
                                      reinterpret_cast<uint32_t*>(out_w.data_ptr<int>()),
                                      reinterpret_cast<uint32_t*>(out_m.data_ptr<int>()), static_cast<int>(N),
                                      static_cast<int>(K), stream_of(src)),
               op);
  return {out_w, out_m};
}

// split_k: 0 = the launcher's rule, n > 0 forces n K slices (tests, benchmarks).
at::Tensor sparse24_gemm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& meta,
                         const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual, int64_t N,
                         int64_t activation, int64_t split_k) {
  const char* op = "sparsedm::_cuda_sparse24_gemm";
  require_cuda_contiguous(x, op, "x");
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t K = reduction_length(x, op, "x"), M = x.numel() / K;
  require_relayout(w, meta, SPARSEDM_SP16, N, K, x, op);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty(out_shape, x.options());
  const void* res = nullptr;
  if (residual.has_value()) {
    require_cuda_contiguous(*residual, op, "residual");
    require_device_of(*residual, x, op, "residual");
    TORCH_CHECK(residual->scalar_type() == x.scalar_type() && residual->numel() == M * N, op, ": residual must match the output");
    res = residual->data_ptr();
  }
  const int m = tokens_arg(M, op);
  TORCH_CHECK(split_k >= 0, op, ": split_k must be >= 0 (0 = automatic), got ", split_k);
  const int splits = sparsedm_cuda_gemm_splits(SPARSEDM_SP16, m, static_cast<int>(N), static_cast<int>(K), forced_splits(split_k));
  at::Tensor ws = split_k_workspace(splits, M, N, at::kFloat, x);
  check_status(sparsedm_cuda_sparse24_gemm(x.data_ptr(), reinterpret_cast<const uint32_t*>(w.data_ptr<int>()),
                                           reinterpret_cast<const uint32_t*>(meta.data_ptr<int>()), opt_f32(bias, N, op, "bias"),
                                           res, y.data_ptr(), m, static_cast<int>(N), static_cast<int>(K),
                                           dtype_code(x.scalar_type(), op), static_cast<int>(activation), splits,
                                           data_or_null(ws), stream_of(x)),
               op);
  return y;
}

// y [N, Cout, P, Q] channels_last = act(conv2d(x, W) + bias) (+ residual). x [N, C, H, W]
// channels_last (NHWC memory); w/meta: re-layout of the KRSC weight zero-padded to
// sparsedm_cuda_conv_k_padded(kh*kw*C); residual channels_last like the output.
at::Tensor sparse24_conv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& meta,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual, int64_t Cout,
                           int64_t kh, int64_t kw, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           int64_t activation) {
  const char* op = "sparsedm::_cuda_sparse24_conv2d";
  TORCH_CHECK(x.is_cuda() && x.dim() == 4, op, ": x must be a 4-D CUDA tensor [N, C, H, W]");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), op,
              ": x must be channels_last (NHWC memory); the backend converts NCHW input");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must have 2 elements");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0 && dilation[0] > 0 && dilation[1] > 0 && padding[0] >= 0 && padding[1] >= 0,
              op, ": stride and dilation must be positive and padding non-negative, got stride ", stride, " padding ",
              padding, " dilation ", dilation);
  TORCH_CHECK(kh > 0 && kw > 0 && kh <= 64 && kw <= 64 && Cout > 0, op, ": kh=", kh, ", kw=", kw, ", Cout=", Cout,
              " must be positive (kernel sides at most 64)");
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(std::max({N, C, H, W, Cout}) <= INT32_MAX && C * kh * kw <= INT32_MAX, op,
              ": every size of x, Cout and kh*kw*C must fit in int32");
  TORCH_CHECK(N > 0 && C > 0, op, ": x must not be empty, got ", x.sizes());
  require_relayout(w, meta, SPARSEDM_SP16, Cout, sparsedm_cuda_conv_k_padded(static_cast<int>(C * kh * kw)), x, op);
  const int64_t P = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) / stride[0] + 1;
  const int64_t Q = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) / stride[1] + 1;
  TORCH_CHECK(P > 0 && Q > 0, op, ": the input is too small for the kernel");
  at::Tensor y = at::empty({N, Cout, P, Q}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const void* res = nullptr;
  if (residual.has_value()) {
    TORCH_CHECK(residual->device() == x.device() && residual->sizes() == y.sizes() && residual->scalar_type() == x.scalar_type() &&
                    residual->is_contiguous(at::MemoryFormat::ChannelsLast),
                op, ": residual must be a channels_last tensor of the output's shape and dtype");
    res = residual->data_ptr();
  }
  check_status(sparsedm_cuda_sparse24_conv2d(
                   x.data_ptr(), reinterpret_cast<const uint32_t*>(w.data_ptr<int>()),
                   reinterpret_cast<const uint32_t*>(meta.data_ptr<int>()), opt_f32(bias, Cout, op, "bias"), res, y.data_ptr(),
                   static_cast<int>(N), static_cast<int>(H), static_cast<int>(W), static_cast<int>(C),
                   static_cast<int>(Cout), static_cast<int>(kh), static_cast<int>(kw), static_cast<int>(stride[0]),
                   static_cast<int>(stride[1]), static_cast<int>(padding[0]), static_cast<int>(padding[1]),
                   static_cast<int>(dilation[0]), static_cast<int>(dilation[1]), dtype_code(x.scalar_type(), op),
                   static_cast<int>(activation), stream_of(x)),
               op);
  return y;
}

// (q int8 [.., K], scale float32 [M]) of x; static_scale float32 (1 or M elements) optional.
std::tuple<at::Tensor, at::Tensor> quantize_rows(const at::Tensor& x, const std::optional<at::Tensor>& static_scale) {
  const char* op = "sparsedm::_cuda_quantize_rows";
  require_cuda_contiguous(x, op, "x");
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t K = reduction_length(x, op, "x"), M = x.numel() / K;
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor s = at::empty({M}, x.options().dtype(at::kFloat));
  const int64_t n_static = static_scale.has_value() && static_scale->numel() == 1 ? 1 : M;  // one, or one per token
  const float* ss = opt_f32(static_scale, n_static, op, "static_scale");
  check_status(sparsedm_cuda_quantize_rows(x.data_ptr(), dtype_code(x.scalar_type(), op), q.data_ptr<int8_t>(),
                                           s.data_ptr<float>(), ss, ss ? static_cast<int>(static_scale->numel()) : 0,
                                           tokens_arg(M, op), static_cast<int>(K), stream_of(x)),
               op);
  return {q, s};
}

at::Tensor int8_gemm(const at::Tensor& q, const at::Tensor& x_scale, const at::Tensor& w,
                     const std::optional<at::Tensor>& meta, const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                     const std::optional<at::Tensor>& residual, int64_t family, int64_t N, at::ScalarType out_dtype,
                     int64_t activation, int64_t split_k) {
  const char* op = "sparsedm::_cuda_int8_gemm";
  require_cuda_contiguous(q, op, "q");
  TORCH_CHECK(q.scalar_type() == at::kChar, op, ": q must be int8");
  TORCH_CHECK(family == SPARSEDM_SP8 || family == SPARSEDM_D8, op, ": family must be SP8 (2:4 int8) or D8 (dense int8), got ",
              family);
  c10::cuda::CUDAGuard guard(q.device());
  const int64_t K = reduction_length(q, op, "q"), M = q.numel() / K;
  TORCH_CHECK(family == SPARSEDM_SP8 || !meta.has_value(), op, ": dense int8 (D8) takes no meta");
  require_relayout(w, meta, static_cast<int>(family), N, K, q, op);
  std::vector<int64_t> out_shape(q.sizes().begin(), q.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty(out_shape, q.options().dtype(out_dtype));
  const uint32_t* meta_ptr = meta.has_value() ? reinterpret_cast<const uint32_t*>(meta->data_ptr<int>()) : nullptr;
  const void* res = nullptr;
  if (residual.has_value()) {
    require_cuda_contiguous(*residual, op, "residual");
    require_device_of(*residual, q, op, "residual");
    TORCH_CHECK(residual->scalar_type() == out_dtype && residual->numel() == M * N, op, ": residual must match the output");
    res = residual->data_ptr();
  }
  const int m = tokens_arg(M, op);
  TORCH_CHECK(split_k >= 0, op, ": split_k must be >= 0 (0 = automatic), got ", split_k);
  const int splits = sparsedm_cuda_gemm_splits(static_cast<int>(family), m, static_cast<int>(N), static_cast<int>(K),
                                               forced_splits(split_k));
  at::Tensor ws = split_k_workspace(splits, M, N, at::kInt, q);
  check_status(sparsedm_cuda_int8_gemm(static_cast<int>(family), q.data_ptr<int8_t>(), opt_f32(x_scale, M, op, "x_scale"),
                                       reinterpret_cast<const uint32_t*>(w.data_ptr<int>()), meta_ptr,
                                       opt_f32(w_scale, N, op, "w_scale"), opt_f32(bias, N, op, "bias"), res, y.data_ptr(), m,
                                       static_cast<int>(N), static_cast<int>(K), dtype_code(out_dtype, op),
                                       static_cast<int>(activation), splits, data_or_null(ws), stream_of(q)),
               op);
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparsedm, m) {
  m.def("_cuda_relayout24(Tensor src, Tensor? meta, int family, int N, int K) -> (Tensor, Tensor)");
  m.def(
      "_cuda_sparse24_gemm(Tensor x, Tensor w, Tensor meta, Tensor? bias, Tensor? residual, int N, int activation, "
      "int split_k=0) -> Tensor");
  m.def("_cuda_quantize_rows(Tensor x, Tensor? static_scale) -> (Tensor, Tensor)");
  m.def(
      "_cuda_sparse24_conv2d(Tensor x, Tensor w, Tensor meta, Tensor? bias, Tensor? residual, int Cout, int kh, int kw, "
      "int[] stride, int[] padding, int[] dilation, int activation) -> Tensor");
  m.def(
      "_cuda_int8_gemm(Tensor q, Tensor x_scale, Tensor w, Tensor? meta, Tensor w_scale, Tensor? bias, Tensor? residual, "
      "int family, int N, ScalarType out_dtype, int activation, int split_k=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparsedm, CUDA, m) {
  m.impl("_cuda_relayout24", &relayout);
  m.impl("_cuda_sparse24_gemm", &sparse24_gemm);
  m.impl("_cuda_quantize_rows", &quantize_rows);
  m.impl("_cuda_sparse24_conv2d", &sparse24_conv2d);
  m.impl("_cuda_int8_gemm", &int8_gemm);
}

#endif  // SPARSEDM_WITH_CUDA
