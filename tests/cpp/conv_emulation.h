// The implicit-GEMM 2:4 conv's data path on the host (tests/cpp/test_conv_gather.cpp,
// tests/cpp/emulator_capi.cpp): every emulated thread of a block builds its layout::ConvGather,
// derives the tap of its chunk per K stage and each copy's element offset / zero-fill predicate,
// and writes the 16-byte chunk into the swizzled shared-memory image of the stage (what cp.async
// does); then 32 emulated lanes ldmatrix the B fragments out of that image and issue mma.sp with
// the re-laid-out weight of the zero-padded K (relayout.cuh) to the PTX-table emulator
// (mma_emulator.h); accumulators are read back through the kernel's accumulator map.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "mma_emulator.h"
#include "mma_layout.cuh"
#include "relayout.cuh"

namespace sparsedm {
namespace convemu {

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

struct ConvCase {
  const char* name;
  int N, H, W, C, Cout, kh, kw, sh, sw, ph, pw, dh, dw;
};

// Deliberate gather bugs, to prove the check can fail.
enum Bug { kNoBug = 0, kTransposedTap = 1, kNoPaddingPredicate = 2 };

// One convolution through BT-token blocks of kThreads emulated threads: x NHWC integers, w the
// KRSC view [Cout, kh*kw*C] of a 2:4 weight (at most 2 nonzeros per group of 4; integers, exact
// in fp16), got [N*P*Q, Cout]. Returns false (with a message) when a thread's copy is misaligned
// or out of bounds, or a shared-memory chunk is not written exactly once.
template <int kBT, int kThreads>
bool emulate_conv(const ConvCase& cs, const std::vector<int>& x, const std::vector<int>& w, std::vector<double>& got,
                  Bug bug = kNoBug) {
  using S = layout::Sp16;
  const int P = (cs.H + 2 * cs.ph - cs.dh * (cs.kh - 1) - 1) / cs.sh + 1;
  const int Q = (cs.W + 2 * cs.pw - cs.dw * (cs.kw - 1) - 1) / cs.sw + 1;
  const int M = cs.N * P * Q, K = cs.kh * cs.kw * cs.C;
  const int Kp = (K + S::kKPerStage - 1) / S::kKPerStage * S::kKPerStage;
  const int n_tiles = cs.Cout / 16;

  std::vector<uint16_t> xbits(x.size());
  for (size_t i = 0; i < x.size(); ++i) xbits[i] = half_bits(x[i]);
  // Canonical compressed form of the zero-padded K: values [Cout, Kp/2], meta [Cout, Kp/8]
  // (padding groups: values 0, nibble 0x4 = positions {0, 1}, as cuda_backend pads them). The
  // kept positions of a group are its nonzeros, topped up with its first zero positions.
  std::vector<uint16_t> vbits(static_cast<size_t>(cs.Cout) * Kp / 2, 0);
  std::vector<uint8_t> meta(static_cast<size_t>(cs.Cout) * Kp / 8, 0x44);
  for (int co = 0; co < cs.Cout; ++co)
    for (int gr = 0; gr < K / 4; ++gr) {
      int pos[4], n = 0;
      for (int i = 0; i < 4; ++i)
        if (w[co * K + 4 * gr + i] != 0) pos[n++] = i;
      if (n > 2) {
        std::fprintf(stderr, "  %s: weight group (%d, %d) holds %d nonzeros: not 2:4\n", cs.name, co, gr, n);
        return false;
      }
      for (int i = 0; i < 4 && n < 2; ++i)
        if (w[co * K + 4 * gr + i] == 0 && (n == 0 || pos[0] != i)) pos[n++] = i;
      if (pos[0] > pos[1]) std::swap(pos[0], pos[1]);
      vbits[co * Kp / 2 + 2 * gr] = half_bits(w[co * K + 4 * gr + pos[0]]);
      vbits[co * Kp / 2 + 2 * gr + 1] = half_bits(w[co * K + 4 * gr + pos[1]]);
      uint8_t& byte = meta[co * Kp / 8 + gr / 2];
      const int shift = 4 * (gr % 2);
      byte = static_cast<uint8_t>((byte & ~(0xF << shift)) | (meta_nibble(pos[0], pos[1]) << shift));
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
  got.assign(static_cast<size_t>(M) * cs.Cout, 0.0);
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
  return ok;
}

}  // namespace convemu
}  // namespace sparsedm
