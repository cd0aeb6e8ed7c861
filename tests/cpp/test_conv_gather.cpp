// Host proof of the implicit-GEMM 2:4 conv's gather (kernels/cuda/mma_layout.cuh, "implicit-GEMM
// conv gather"; kernel: kernels/cuda/conv_mma.cuh).
//
// For small convolutions (3x3 stride 1 and 2, padding 1 and 2, dilation 2, odd H/W, 1x1,
// a non-square 1x3 tap with per-axis stride/padding, C = 8 and 24 so that taps straddle K
// stages, K not a multiple of 64) a random NHWC input and a random 2:4 KRSC weight are pushed
// through exactly what the conv kernel's thread blocks do: every emulated thread of a block
// builds its layout::ConvGather (pixels of its token rows, computed once), derives the tap of
// its chunk per K stage and the element offset / zero-fill predicate of each copy, and writes
// the 16-byte chunk into the swizzled shared-memory image of the stage (what cp.async does).
// Then 32 emulated lanes ldmatrix the B fragments out of that image and issue mma.sp with the
// re-laid-out weight of the zero-padded K (relayout.cuh, the same gather the GPU runs) to the
// PTX-table emulator (mma_emulator.h). The accumulators, read through the kernel's accumulator
// map, must equal a direct convolution computed here on the host (exact: integer data).
// Deliberately broken gathers (taps transposed, padding predicate dropped) must fail.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "conv_emulation.h"

using namespace sparsedm;
using namespace sparsedm::convemu;

namespace {

int failures = 0;
std::mt19937 rng(4321);

int rand_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

using Case = ConvCase;

// One convolution with random data through the emulated kernel; true when every output equals
// the direct convolution computed here.
template <int kBT, int kThreads>
bool run_conv(const Case& cs, Bug bug) {
  const int P = (cs.H + 2 * cs.ph - cs.dh * (cs.kh - 1) - 1) / cs.sh + 1;
  const int Q = (cs.W + 2 * cs.pw - cs.dw * (cs.kw - 1) - 1) / cs.sw + 1;
  const int M = cs.N * P * Q, K = cs.kh * cs.kw * cs.C;
  // Input NHWC, weight KRSC [Cout, K] 2:4 (random kept positions, nonzero kept values).
  std::vector<int> x(static_cast<size_t>(cs.N) * cs.H * cs.W * cs.C);
  for (int& v : x) v = rand_int(-3, 3);
  std::vector<int> w(static_cast<size_t>(cs.Cout) * K, 0);
  for (int co = 0; co < cs.Cout; ++co)
    for (int gr = 0; gr < K / 4; ++gr) {
      const int i0 = rand_int(0, 2), i1 = rand_int(i0 + 1, 3);
      int v0 = 0, v1 = 0;
      while (v0 == 0) v0 = rand_int(-4, 4);
      while (v1 == 0) v1 = rand_int(-4, 4);
      w[co * K + 4 * gr + i0] = v0;
      w[co * K + 4 * gr + i1] = v1;
    }
  std::vector<double> got;
  const bool ok = emulate_conv<kBT, kThreads>(cs, x, w, got, bug);

  // Direct convolution, NHWC in, [N*P*Q, Cout] out.
  long bad = 0;
  for (int n = 0; n < cs.N; ++n)
    for (int oh = 0; oh < P; ++oh)
      for (int ow = 0; ow < Q; ++ow)
        for (int co = 0; co < cs.Cout; ++co) {
          long long want = 0;
          for (int r = 0; r < cs.kh; ++r)
            for (int s = 0; s < cs.kw; ++s) {
              const int ih = oh * cs.sh - cs.ph + r * cs.dh, iw = ow * cs.sw - cs.pw + s * cs.dw;
              if (ih < 0 || ih >= cs.H || iw < 0 || iw >= cs.W) continue;
              for (int c = 0; c < cs.C; ++c)
                want += static_cast<long long>(x[((static_cast<long>(n) * cs.H + ih) * cs.W + iw) * cs.C + c]) *
                        w[co * K + (r * cs.kw + s) * cs.C + c];
            }
          const int m = (n * P + oh) * Q + ow;
          bad += got[static_cast<size_t>(m) * cs.Cout + co] != static_cast<double>(want);
        }
  if (bad && bug == kNoBug) std::fprintf(stderr, "  %s (BT=%d): %ld of %ld outputs differ\n", cs.name, kBT, bad, static_cast<long>(M) * cs.Cout);
  return ok && bad == 0;
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

}  // namespace

int main() {
  //                name                    N  H  W   C  Cout kh kw sh sw ph pw dh dw
  const Case cases[] = {
      {"3x3 s1 p1 odd HW", 2, 7, 5, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1},
      {"3x3 s2 p1 C=8 K=72", 2, 9, 7, 8, 16, 3, 3, 2, 2, 1, 1, 1, 1},
      {"3x3 s1 p2 d2 C=24", 1, 6, 7, 24, 32, 3, 3, 1, 1, 2, 2, 2, 2},
      {"3x3 s2 p1 d2 C=64", 1, 9, 9, 64, 16, 3, 3, 2, 2, 1, 1, 2, 2},
      {"1x1 s1 C=64", 3, 5, 3, 64, 32, 1, 1, 1, 1, 0, 0, 1, 1},
      {"1x1 s2 C=32 K=32", 2, 7, 7, 32, 16, 1, 1, 2, 2, 0, 0, 1, 1},
      {"1x3 s(1,2) p(0,1) C=40", 2, 5, 9, 40, 16, 1, 3, 1, 2, 0, 1, 1, 1},
      {"5x5 s1 p2 C=8 (pixel past M)", 1, 3, 11, 8, 16, 5, 5, 1, 1, 2, 2, 1, 1},
  };
  for (const Case& cs : cases) {
    char what[160];
    std::snprintf(what, sizeof what, "conv %s, large block (64 tokens, 128 threads) == direct conv", cs.name);
    check(run_conv<64, 128>(cs, kNoBug), what);
    std::snprintf(what, sizeof what, "conv %s, small block (16 tokens, 128 threads) == direct conv", cs.name);
    check(run_conv<16, 128>(cs, kNoBug), what);
  }
  check(!run_conv<64, 128>(cases[0], kTransposedTap), "a transposed tap (r*dh <-> s*dw) must be detected");
  check(!run_conv<16, 128>(cases[1], kNoPaddingPredicate), "a dropped padding predicate must be detected");
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("conv gather: all checks passed\n");
  return EXIT_SUCCESS;
}
