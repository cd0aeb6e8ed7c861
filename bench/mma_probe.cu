// Hardware check of the tensor-core instructions under the CUDA GEMMs and the conv, one warp at
// a time, before (and independently of) the full kernels: each instruction wrapper of
// kernels/cuda/gemm_mma.cuh (mma.sp f16 and bf16 m16n8k32, mma.sp s8 m16n8k64, mma s8
// m16n8k32) and ldmatrix.x4 runs on random small-integer operands, and every lane's result is
// compared exactly with the emulator written from the PTX ISA tables (tests/cpp/mma_emulator.h),
// on which all fragment maps of the kernels were built and checked without a GPU. Where an
// instruction disagrees, the probe also runs it with its B registers in every other order and
// names the orders that agree: the least documented piece of the maps (docs/KERNELS.md,
// "Unverified without a GPU"). The raw operands and results of every trial go to a JSON file
// for analysis without a GPU.
//
//   nvcc -std=c++17 -O2 -arch=sm_90 -I kernels/cuda -I tests/cpp bench/mma_probe.cu -o mma_probe
//   ./mma_probe [out.json]          exit 0: every instruction agrees with the emulator
//
// bench/gpu_suite.sh builds and runs it first (stage `probe`).
//
// Built with -DSPARSEDM_PROBE_FAKE_HW the "hardware" is the emulator itself, reading the B
// registers in the order SPARSEDM_PROBE_FAKE_ORDER (e.g. 0213) for family
// SPARSEDM_PROBE_FAKE_FAMILY: tests/cuda/test_mma_probe.py checks on the CPU that the probe
// passes a faithful instruction and finds the order of an unfaithful one.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gemm_mma.cuh"
#include "mma_emulator.h"

namespace {

enum Family { kSp16F16 = 0, kSp16Bf16 = 1, kSp8 = 2, kD8 = 3, kFamilies = 4 };
const char* const kNames[kFamilies] = {"mma.sp m16n8k32 f16", "mma.sp m16n8k32 bf16", "mma.sp m16n8k64 s8",
                                       "mma m16n8k32 s8"};
constexpr int kTrials = 8;

int b_regs(int family) { return family == kD8 ? 2 : 4; }

#ifndef SPARSEDM_PROBE_FAKE_HW
// One warp: lane l passes a[l][0..3], b[l][perm[j]] as its B register j, e[l]; writes d[l][0..3]
// (float bits for the f16/bf16 families, int32 otherwise).
__global__ void mma_kernel(int family, const uint32_t* a, const uint32_t* b, const uint32_t* e, const int* perm,
                           uint32_t* d) {
  const int lane = threadIdx.x;
  const uint4 av = make_uint4(a[4 * lane], a[4 * lane + 1], a[4 * lane + 2], a[4 * lane + 3]);
  uint32_t bv[4];
  for (int j = 0; j < 4; ++j) bv[j] = b[4 * lane + perm[j]];
  if (family == kSp16F16 || family == kSp16Bf16) {
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (family == kSp16F16) sparsedm::gemm::mma_sp_m16n8k32_f16(acc, av, bv, e[lane]);
    else sparsedm::gemm::mma_sp_m16n8k32_bf16(acc, av, bv, e[lane]);
    for (int i = 0; i < 4; ++i) d[4 * lane + i] = __float_as_uint(acc[i]);
  } else {
    int acc[4] = {0, 0, 0, 0};
    if (family == kSp8) sparsedm::gemm::mma_sp_m16n8k64_s8(acc, av, bv, e[lane]);
    else sparsedm::gemm::mma_m16n8k32_s8(acc, av, bv);
    for (int i = 0; i < 4; ++i) d[4 * lane + i] = static_cast<uint32_t>(acc[i]);
  }
}

// ldmatrix.x4 from 4 matrices of 8 rows x 16 bytes; lane l gives the address of row
// order[l & 7] of matrix (l >> 3), so the row-address mapping is exercised, not only the identity.
__global__ void ldmatrix_kernel(const uint8_t* src, const int* row_addr, uint32_t* out) {
  __shared__ __align__(16) uint8_t smem[4 * 8 * 16];
  const int lane = threadIdx.x;
  for (int i = lane; i < 4 * 8 * 16; i += 32) smem[i] = src[i];
  __syncwarp();
  uint32_t r[4];
  sparsedm::gemm::ldmatrix_x4(r, smem + row_addr[lane]);
  for (int j = 0; j < 4; ++j) out[4 * lane + j] = r[j];
}
#endif

#define CHECK_CUDA(x)                                                                          \
  do {                                                                                         \
    cudaError_t err_ = (x);                                                                    \
    if (err_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(err_), __FILE__, __LINE__); \
      std::exit(2);                                                                            \
    }                                                                                          \
  } while (0)

// 16-bit encodings of small integers (exact in both formats).
uint16_t f16_bits(int v) {
  const __half h = __float2half(static_cast<float>(v));
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}
uint16_t bf16_bits(int v) {
  const float f = static_cast<float>(v);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);  // small integers: the low 16 bits are zero
}

struct Trial {
  uint32_t a[32][4], b[32][4], e[32];
  int ea[32][16], eb[32][16];  // the same operands as elements, PTX order (register r: 2r, 2r+1 or 4r..4r+3)
};

Trial make_trial(int family, std::mt19937& rng) {
  Trial t{};
  std::uniform_int_distribution<int> val16(-4, 4), val8(-8, 8), pair(0, 5);
  const int pairs[6] = {0x4, 0x8, 0xC, 0x9, 0xD, 0xE};  // (i0, i1) with i0 < i1: i0 | i1 << 2
  const bool sixteen = family == kSp16F16 || family == kSp16Bf16;
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {
      uint32_t wa = 0, wb = 0;
      if (sixteen) {
        for (int h = 0; h < 2; ++h) {
          const int va = val16(rng), vb = val16(rng);
          t.ea[lane][2 * r + h] = va;
          t.eb[lane][2 * r + h] = vb;
          const uint16_t ba = family == kSp16F16 ? f16_bits(va) : bf16_bits(va);
          const uint16_t bb = family == kSp16F16 ? f16_bits(vb) : bf16_bits(vb);
          wa |= static_cast<uint32_t>(ba) << (16 * h);
          wb |= static_cast<uint32_t>(bb) << (16 * h);
        }
      } else {
        for (int q = 0; q < 4; ++q) {
          const int va = val8(rng), vb = val8(rng);
          t.ea[lane][4 * r + q] = va;
          t.eb[lane][4 * r + q] = vb;
          wa |= static_cast<uint32_t>(static_cast<uint8_t>(va)) << (8 * q);
          wb |= static_cast<uint32_t>(static_cast<uint8_t>(vb)) << (8 * q);
        }
      }
      t.a[lane][r] = wa;
      t.b[lane][r] = r < b_regs(family) ? wb : 0;
    }
    uint32_t e = 0;  // every nibble a valid ordered pair, in every lane (the maps pick which count)
    for (int q = 0; q < 8; ++q) e |= static_cast<uint32_t>(pairs[pair(rng)]) << (4 * q);
    t.e[lane] = family == kD8 ? 0 : e;
  }
  return t;
}

// The emulator's d, as the bits the kernel writes (float bits or int32).
void emulate(int family, const Trial& t, uint32_t d[32][4]) {
  if (family == kSp16F16 || family == kSp16Bf16) {
    double a[32][8], b[32][8], c[32][4] = {}, out[32][4];
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < 8; ++i) a[l][i] = t.ea[l][i], b[l][i] = t.eb[l][i];
    emu::mma_sp_m16n8k32(a, b, t.e, 0, c, out);
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < 4; ++i) {
        const float f = static_cast<float>(out[l][i]);
        std::memcpy(&d[l][i], &f, 4);
      }
  } else {
    int c[32][4] = {}, out[32][4];
    if (family == kSp8) {
      emu::mma_sp_m16n8k64_s8(t.ea, t.eb, t.e, c, out);
    } else {
      int b8[32][8];
      for (int l = 0; l < 32; ++l)
        for (int i = 0; i < 8; ++i) b8[l][i] = t.eb[l][i];
      emu::mma_m16n8k32_s8(t.ea, b8, c, out);
    }
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < 4; ++i) d[l][i] = static_cast<uint32_t>(out[l][i]);
  }
}

struct Device {
  uint32_t *a, *b, *e, *d;
  int* perm;
};

void run_hw(const Device& dev, int family, const Trial& t, const int perm[4], uint32_t d[32][4]) {
#ifdef SPARSEDM_PROBE_FAKE_HW
  // The emulator as the hardware: it takes B register j as register fake[j] (the identity
  // unless this family is the one named in SPARSEDM_PROBE_FAKE_FAMILY).
  (void)dev;
  int fake[4] = {0, 1, 2, 3};
  const char* fam = std::getenv("SPARSEDM_PROBE_FAKE_FAMILY");
  const char* order = std::getenv("SPARSEDM_PROBE_FAKE_ORDER");
  if (fam && order && std::atoi(fam) == family) {
    // a permutation of 0 .. b_regs - 1 (the dense s8 shape has 2 B registers)
    const int nb = b_regs(family);
    bool seen[4] = {false, false, false, false}, valid = static_cast<int>(std::strlen(order)) == nb;
    for (int j = 0; valid && j < nb; ++j) {
      const int v = order[j] - '0';
      valid = v >= 0 && v < nb && !seen[v];
      if (valid) seen[v] = true, fake[j] = v;
    }
    if (!valid) {
      std::fprintf(stderr, "SPARSEDM_PROBE_FAKE_ORDER=%s: give a permutation of 0..%d\n", order, nb - 1);
      std::exit(2);
    }
  }
  const int per_reg = (family == kSp16F16 || family == kSp16Bf16) ? 2 : 4;
  Trial u = t;
  for (int l = 0; l < 32; ++l)
    for (int j = 0; j < b_regs(family); ++j)
      for (int q = 0; q < per_reg; ++q) u.eb[l][per_reg * fake[j] + q] = t.eb[l][per_reg * perm[j] + q];
  emulate(family, u, d);
#else
  CHECK_CUDA(cudaMemcpy(dev.a, t.a, sizeof(t.a), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dev.b, t.b, sizeof(t.b), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dev.e, t.e, sizeof(t.e), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dev.perm, perm, 4 * sizeof(int), cudaMemcpyHostToDevice));
  mma_kernel<<<1, 32>>>(family, dev.a, dev.b, dev.e, dev.perm, dev.d);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaMemcpy(d, dev.d, 32 * 4 * sizeof(uint32_t), cudaMemcpyDeviceToHost));
#endif
}

// Float results compare by value (a zero may come back as -0.0), integers by bits.
int mismatches(int family, const uint32_t x[32][4], const uint32_t y[32][4]) {
  int n = 0;
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      if (family == kSp16F16 || family == kSp16Bf16) {
        float fx, fy;
        std::memcpy(&fx, &x[l][i], 4);
        std::memcpy(&fy, &y[l][i], 4);
        n += fx != fy;
      } else {
        n += x[l][i] != y[l][i];
      }
    }
  return n;
}

void json_array(std::string& s, const uint32_t* v, int n) {
  s += "[";
  for (int i = 0; i < n; ++i) s += (i ? "," : "") + std::to_string(v[i]);
  s += "]";
}

}  // namespace

int main(int argc, char** argv) {
  Device dev{};
#ifdef SPARSEDM_PROBE_FAKE_HW
  const std::string gpu_name = "emulator (SPARSEDM_PROBE_FAKE_HW)";
#else
  int device = 0;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDevice(&device));
  CHECK_CUDA(cudaGetDeviceProperties(&prop, device));
  const std::string gpu_name = prop.name;
  CHECK_CUDA(cudaMalloc(&dev.a, 32 * 4 * sizeof(uint32_t)));
  CHECK_CUDA(cudaMalloc(&dev.b, 32 * 4 * sizeof(uint32_t)));
  CHECK_CUDA(cudaMalloc(&dev.e, 32 * sizeof(uint32_t)));
  CHECK_CUDA(cudaMalloc(&dev.d, 32 * 4 * sizeof(uint32_t)));
  CHECK_CUDA(cudaMalloc(&dev.perm, 4 * sizeof(int)));
#endif
  std::printf("mma probe on %s\n", gpu_name.c_str());

  std::mt19937 rng(20261202);
  std::string json = "{\"gpu\": \"" + gpu_name + "\", \"families\": [";
  bool all_ok = true;
  for (int family = 0; family < kFamilies; ++family) {
    const int nb = b_regs(family);
    int identity[4] = {0, 1, 2, 3};
    int failed_trials = 0;
    std::vector<Trial> trials;
    std::vector<std::vector<uint32_t>> hw_out, emu_out;
    for (int k = 0; k < kTrials; ++k) {
      trials.push_back(make_trial(family, rng));
      uint32_t hw[32][4], ref[32][4];
      run_hw(dev, family, trials.back(), identity, hw);
      emulate(family, trials.back(), ref);
      failed_trials += mismatches(family, hw, ref) != 0;
      hw_out.emplace_back(&hw[0][0], &hw[0][0] + 128);
      emu_out.emplace_back(&ref[0][0], &ref[0][0] + 128);
    }
    // The B register orders under which every trial agrees: order "abcd" passes the lane's
    // register a (in the emulator's numbering) as the instruction's first B operand, b as the
    // second, ...; "none" when no order agrees (the cause is then not the B order).
    std::string agreeing;
    if (failed_trials) {
      all_ok = false;
      int perm[4] = {0, 1, 2, 3};
      do {
        if (nb == 2 && (perm[2] != 2 || perm[3] != 3)) continue;
        bool ok = true;
        for (const Trial& t : trials) {
          uint32_t hw[32][4], ref[32][4];
          run_hw(dev, family, t, perm, hw);
          emulate(family, t, ref);
          ok = ok && mismatches(family, hw, ref) == 0;
        }
        if (ok) agreeing += std::string(agreeing.empty() ? "" : " ") + char('0' + perm[0]) + char('0' + perm[1]) +
                            (nb == 4 ? std::string() + char('0' + perm[2]) + char('0' + perm[3]) : std::string());
      } while (std::next_permutation(perm, perm + 4));
      if (agreeing.empty()) agreeing = "none";
    }
    std::printf("%-22s %s (%d of %d random trials agree with the emulator)%s%s\n", kNames[family],
                failed_trials ? "FAIL" : "ok", kTrials - failed_trials, kTrials,
                failed_trials ? "; B register orders that agree: " : "",
                failed_trials ? agreeing.c_str() : "");
    json += std::string(family ? ", " : "") + "{\"name\": \"" + kNames[family] + "\", \"agree\": " +
            (failed_trials ? "false" : "true") + ", \"agreeing_b_orders\": \"" + agreeing + "\", \"trials\": [";
    for (int k = 0; k < kTrials; ++k) {
      json += std::string(k ? ", " : "") + "{\"a\": ";
      json_array(json, &trials[k].a[0][0], 128);
      json += ", \"b\": ";
      json_array(json, &trials[k].b[0][0], 128);
      json += ", \"e\": ";
      json_array(json, trials[k].e, 32);
      json += ", \"hw\": ";
      json_array(json, hw_out[k].data(), 128);
      json += ", \"emu\": ";
      json_array(json, emu_out[k].data(), 128);
      json += "}";
    }
    json += "]}";
  }

  // ldmatrix.x4: bytes i of the 4 matrices hold i (mod 256); lanes address rows in a shuffled order.
  {
    uint8_t src[4 * 8 * 16];
    for (int i = 0; i < 4 * 8 * 16; ++i) src[i] = static_cast<uint8_t>(i * 7 + 3);
    int order[8] = {3, 0, 7, 1, 6, 2, 5, 4}, row_addr[32];
    for (int l = 0; l < 32; ++l) row_addr[l] = ((l >> 3) * 8 + order[l & 7]) * 16;
    uint32_t hw[32][4], ref[32][4];
#ifdef SPARSEDM_PROBE_FAKE_HW
    emu::ldmatrix_x4(src, row_addr, hw);
#else
    uint8_t* dsrc;
    int* daddr;
    uint32_t* dout;
    CHECK_CUDA(cudaMalloc(&dsrc, sizeof(src)));
    CHECK_CUDA(cudaMalloc(&daddr, sizeof(row_addr)));
    CHECK_CUDA(cudaMalloc(&dout, 32 * 4 * sizeof(uint32_t)));
    CHECK_CUDA(cudaMemcpy(dsrc, src, sizeof(src), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(daddr, row_addr, sizeof(row_addr), cudaMemcpyHostToDevice));
    ldmatrix_kernel<<<1, 32>>>(dsrc, daddr, dout);
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaMemcpy(hw, dout, sizeof(hw), cudaMemcpyDeviceToHost));
#endif
    emu::ldmatrix_x4(src, row_addr, ref);
    const bool ok = mismatches(kSp8, hw, ref) == 0;  // bits
    all_ok = all_ok && ok;
    std::printf("%-22s %s\n", "ldmatrix.x4", ok ? "ok" : "FAIL");
    json += "], \"ldmatrix_x4\": {\"agree\": ";
    json += ok ? "true" : "false";
    json += ", \"hw\": ";
    json_array(json, &hw[0][0], 128);
    json += ", \"emu\": ";
    json_array(json, &ref[0][0], 128);
    json += "}}\n";
  }

  if (argc > 1) {
    const std::string tmp = std::string(argv[1]) + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f || std::fwrite(json.data(), 1, json.size(), f) != json.size() || std::fclose(f) != 0 ||
        std::rename(tmp.c_str(), argv[1]) != 0) {
      std::fprintf(stderr, "could not write %s\n", argv[1]);
      return 2;
    }
    std::printf("raw operands and results: %s\n", argv[1]);
  }
  std::printf("%s\n", all_ok ? "every instruction agrees with the emulator" : "MISMATCH: see above");
  return all_ok ? 0 : 1;
}
