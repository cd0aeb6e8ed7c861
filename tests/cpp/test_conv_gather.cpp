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
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "mma_emulator.h"
#include "mma_layout.cuh"
#include "relayout.cuh"

using namespace sparsedm;

namespace {

int failures = 0;
std::mt19937 rng(4321);

int rand_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

// fp16 bits of a small integer (exact) and back.
uint16_t half_bits(int v) {
  if (v == 0) return 0;
  const uint16_t sign = v < 0 ? 0x8000 : 0;
  int e = 0;
  const float m = std::frexp(std::fabs(static_cast<float>(v)), &e);
  return static_cast<uint16_t>(sign | ((e - 1 + 15) << 10) | static_cast<uint16_t>((m * 2.f - 1.f) * 1024.f));
}
double half_value(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  const double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}

struct Case {
  const char* name;
  int N, H, W, C, Cout, kh, kw, sh, sw, ph, pw, dh, dw;
};

// Deliberate gather bugs, to prove the check can fail.
enum Bug { kNoBug = 0, kTransposedTap = 1, kNoPaddingPredicate = 2 };

// One convolution through BT-token blocks of kThreads emulated threads. Returns true when every
// output equals the direct convolution.
template <int kBT, int kThreads>
bool run_conv(const Case& cs, Bug bug) {
  using S = layout::Sp16;
  const int P = (cs.H + 2 * cs.ph - cs.dh * (cs.kh - 1) - 1) / cs.sh + 1;
  const int Q = (cs.W + 2 * cs.pw - cs.dw * (cs.kw - 1) - 1) / cs.sw + 1;
  const int M = cs.N * P * Q, K = cs.kh * cs.kw * cs.C;
  const int Kp = (K + S::kKPerStage - 1) / S::kKPerStage * S::kKPerStage;
  const int n_tiles = cs.Cout / 16;

  // Input NHWC, weight KRSC [Cout, K] 2:4 (random kept positions, nonzero kept values).
  std::vector<int> x(static_cast<size_t>(cs.N) * cs.H * cs.W * cs.C);
  for (int& v : x) v = rand_int(-3, 3);
  std::vector<uint16_t> xbits(x.size());
  for (size_t i = 0; i < x.size(); ++i) xbits[i] = half_bits(x[i]);
  std::vector<int> w(static_cast<size_t>(cs.Cout) * K, 0);
  // Canonical compressed form of the zero-padded K: values [Cout, Kp/2], meta [Cout, Kp/8]
  // (padding groups: values 0, nibble 0x4 = positions {0, 1}, as cuda_backend pads them).
  std::vector<uint16_t> vbits(static_cast<size_t>(cs.Cout) * Kp / 2, 0);
  std::vector<uint8_t> meta(static_cast<size_t>(cs.Cout) * Kp / 8, 0x44);
  for (int co = 0; co < cs.Cout; ++co)
    for (int gr = 0; gr < K / 4; ++gr) {
      const int i0 = rand_int(0, 2), i1 = rand_int(i0 + 1, 3);
      int v0 = 0, v1 = 0;
      while (v0 == 0) v0 = rand_int(-4, 4);
      while (v1 == 0) v1 = rand_int(-4, 4);
      w[co * K + 4 * gr + i0] = v0;
      w[co * K + 4 * gr + i1] = v1;
      vbits[co * Kp / 2 + 2 * gr] = half_bits(v0);
      vbits[co * Kp / 2 + 2 * gr + 1] = half_bits(v1);
      uint8_t& byte = meta[co * Kp / 8 + gr / 2];
      const int shift = 4 * (gr % 2);
      byte = static_cast<uint8_t>((byte & ~(0xF << shift)) | (meta_nibble(i0, i1) << shift));
    }
  std::vector<uint32_t> src(vbits.size() / 2);
  for (size_t i = 0; i < src.size(); ++i) src[i] = vbits[2 * i] | (static_cast<uint32_t>(vbits[2 * i + 1]) << 16);
  std::vector<uint32_t> aw(relayout::a_words(relayout::kSp16, cs.Cout, Kp));
  std::vector<uint32_t> mw(relayout::meta_words(relayout::kSp16, cs.Cout, Kp));
  for (size_t i = 0; i < aw.size(); ++i) aw[i] = src[relayout::a_source_word<relayout::kSp16>(i, cs.Cout, Kp)];
  for (size_t i = 0; i < mw.size(); ++i) mw[i] = relayout::meta_word<relayout::kSp16>(i, meta.data(), cs.Cout, Kp);

  const layout::ConvGeom g{cs.H, cs.W, cs.C, P, Q, cs.kw, cs.sh, cs.sw, cs.ph, cs.pw, cs.dh, cs.dw, K, M};
  using Gather = layout::ConvGather<kBT, kThreads>;
  constexpr int kNT = kBT / 8;

  bool ok = true;
  std::vector<double> got(static_cast<size_t>(M) * cs.Cout, 0.0);
  for (int t0 = 0; t0 < M; t0 += kBT) {
    std::vector<Gather> threads;
    for (int tid = 0; tid < kThreads; ++tid) threads.emplace_back(g, t0, tid);
    std::vector<double> acc(static_cast<size_t>(n_tiles) * kNT * 32 * 4, 0.0);
    for (int kb = 0; kb < Kp / S::kKPerStage; ++kb) {
      // The stage's shared-memory image, written by the emulated cp.async of every thread.
      std::vector<uint8_t> smem(kBT * 128, 0xFF);  // garbage where nobody writes
      std::vector<int> writes(kBT * 8, 0);
      for (const Gather& th : threads) {
        layout::ConvTap tap = th.tap(g, kb);
        if (bug == kTransposedTap) std::swap(tap.dh, tap.dw);
        for (int j = 0; j < Gather::kRows; ++j) {
          if (!th.active(j)) continue;
          long off = layout::conv_x_offset(g, th.px[j], tap);
          if (bug == kNoPaddingPredicate && off < 0 && th.px[j].ih0 != layout::kConvNoPixel && tap.dh != layout::kConvNoPixel) {
            const int ih = std::min(std::max(th.px[j].ih0 + tap.dh, 0), cs.H - 1);
            const int iw = std::min(std::max(th.px[j].iw0 + tap.dw, 0), cs.W - 1);
            off = (static_cast<long>(th.px[j].nh + ih) * cs.W + iw) * cs.C + tap.c;  // reads the border pixel
          }
          uint8_t* dst = &smem[layout::smem_x_byte_offset(th.row(j), th.chunk)];
          if (off >= 0) {
            if (off % 8 != 0 || off + 8 > static_cast<long>(x.size())) {
              std::fprintf(stderr, "  %s: misaligned or out-of-bounds chunk offset %ld\n", cs.name, off);
              return false;
            }
            std::memcpy(dst, &xbits[off], 16);
          } else {
            std::memset(dst, 0, 16);  // src-size 0: zero-fill
          }
          ++writes[th.row(j) * 8 + th.chunk];
        }
      }
      for (int c : writes) ok = ok && c == 1;  // every chunk of the stage copied exactly once
      for (int half = 0; half < 2; ++half)
        for (int nt = 0; nt < kNT; ++nt) {
          int addr[32];
          uint32_t breg[32][4];
          for (int lane = 0; lane < 32; ++lane)
            addr[lane] = layout::smem_x_byte_offset(nt * 8 + layout::ldsm_x4_token(lane), 4 * half + layout::ldsm_x4_chunk(lane));
          emu::ldmatrix_x4(smem.data(), addr, breg);
          for (int mt = 0; mt < n_tiles; ++mt) {
            double a[32][8], b[32][8], d[32][4], c[32][4];
            uint32_t e[32];
            double* tile = &acc[((mt * kNT) + nt) * 32 * 4];
            for (int lane = 0; lane < 32; ++lane) {
              for (int r = 0; r < 4; ++r) {
                const uint32_t word = aw[layout::a_word_index<S>(kb, mt, n_tiles, half, lane, r)];
                a[lane][2 * r] = half_value(word & 0xFFFF);
                a[lane][2 * r + 1] = half_value(word >> 16);
                b[lane][2 * r] = half_value(breg[lane][r] & 0xFFFF);
                b[lane][2 * r + 1] = half_value(breg[lane][r] >> 16);
              }
              e[lane] = mw[layout::meta_word_index<S>(kb, mt, n_tiles, S::meta_entry(lane), half)];
              for (int i = 0; i < 4; ++i) c[lane][i] = tile[lane * 4 + i];
            }
            emu::mma_sp_m16n8k32(a, b, e, 0, c, d);
            for (int lane = 0; lane < 32; ++lane)
              for (int i = 0; i < 4; ++i) tile[lane * 4 + i] = d[lane][i];
          }
        }
    }
    // The kernel's epilogue map: accumulator (mt, nt, lane, i) -> (token, feature).
    for (int mt = 0; mt < n_tiles; ++mt)
      for (int nt = 0; nt < kNT; ++nt)
        for (int lane = 0; lane < 32; ++lane)
          for (int i = 0; i < 4; ++i) {
            const int f = mt * 16 + layout::acc_row(lane, i), tok = t0 + nt * 8 + layout::acc_col(lane, i);
            if (tok < M) got[static_cast<size_t>(tok) * cs.Cout + f] = acc[((mt * kNT + nt) * 32 + lane) * 4 + i];
          }
  }

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
