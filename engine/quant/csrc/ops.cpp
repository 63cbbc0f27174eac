// The PyTorch custom ops (torch.ops.glassbox.*): shapes and dtypes are checked here, activations are
// quantized once per call, and output rows are split over ATen's threads. The arithmetic lives in the
// per-ISA kernel tables (kernels_*.cpp); which one runs is chosen from the CPU's features at load.
//   q4_linear(x [..., K], qs uint8 [N, G, 16], dm float16 [N, G, 2]) -> [..., N]
//   q8_linear(x [..., K], qs int8 [N, G, 32], d float16 [N, G])     -> [..., N]
//   q4_dequantize / q8_dequantize(qs, scales, K) -> float32 [N, K]   (prefill: one GEMM over many rows)
// K <= 32 G: the weights' padding past K is zero, and so is the activations' (quantize pads).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "qlinear.h"

#if defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <immintrin.h>
#include <intrin.h>
#endif

namespace glassbox {
namespace {

bool cpu_supports(const std::string& isa) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
  int leaf1[4], leaf7[4];
  __cpuid(leaf1, 1);
  __cpuidex(leaf7, 7, 0);
  const bool osxsave = (leaf1[2] >> 27) & 1;
  const unsigned long long xcr0 = osxsave ? _xgetbv(0) : 0;
  const bool avx_state = (xcr0 & 0x6) == 0x6, avx512_state = (xcr0 & 0xe6) == 0xe6;
  const bool avx2 = avx_state && ((leaf7[1] >> 5) & 1) && ((leaf1[2] >> 12) & 1) && ((leaf1[2] >> 29) & 1);
  if (isa == "avx2") return avx2;
  if (isa == "avx512")
    return avx2 && avx512_state && ((leaf7[1] >> 16) & 1) && ((leaf7[1] >> 30) & 1) && ((leaf7[1] >> 31) & 1) &&
           ((leaf7[2] >> 11) & 1);
#endif
  return isa == "scalar";
}

KernelTable table_for(const std::string& isa) {
  if (isa == "avx512") return avx512_table();
  if (isa == "avx2") return avx2_table();
  return scalar_table();
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const char* isa : {"avx512", "avx2", "scalar"})
    if (cpu_supports(isa) && table_for(isa).q4_rows != nullptr) out.emplace_back(isa);
  return out;  // best first
}

KernelTable& active_table() {
  static KernelTable table = table_for(supported_isas().front());
  return table;
}

std::string kernel_isa() { return active_table().name; }

// Tests force each path in turn; returns the one it replaces. "best" picks the CPU's best again.
std::string use_isa(const std::string& isa) {
  const std::string previous = active_table().name;
  const auto supported = supported_isas();
  const std::string wanted = isa == "best" ? supported.front() : isa;
  TORCH_CHECK(std::find(supported.begin(), supported.end(), wanted) != supported.end(),
              "glassbox kernels: ", isa, " is not supported on this CPU or build");
  active_table() = table_for(wanted);
  return previous;
}

struct Quantized {
  at::Tensor q, dx, sum_x, sum_q;
  QuantizedRow row(int64_t m, int64_t G) const {
    return {q.data_ptr<int8_t>() + m * G * kBlock, dx.data_ptr<float>() + m * G, sum_x.data_ptr<float>() + m * G,
            sum_q.data_ptr<int32_t>() + m * G};
  }
};

Quantized quantize_rows(const KernelTable& table, const at::Tensor& x, int64_t G) {
  const int64_t M = x.size(0), K = x.size(1);
  Quantized out{at::empty({M, G * kBlock}, x.options().dtype(at::kChar)), at::empty({M, G}, x.options()),
                at::empty({M, G}, x.options()), at::empty({M, G}, x.options().dtype(at::kInt))};
  const float* src = x.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const QuantizedRow r = out.row(m, G);
      table.quantize(src + m * K, K, G, const_cast<int8_t*>(r.q), const_cast<float*>(r.dx),
                     const_cast<float*>(r.sum_x), const_cast<int32_t*>(r.sum_q));
    }
  });
  return out;
}

constexpr int64_t kRowTile = 16;  // weight rows kept in L1 while every activation row passes over them

template <typename W, typename RowsFn>
at::Tensor linear(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales, int64_t scales_per_block,
                  int64_t bytes_per_block, RowsFn rows) {
  TORCH_CHECK(x.is_cpu() && qs.is_cpu() && scales.is_cpu(), "glassbox kernels: CPU tensors only");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "glassbox kernels: x must be a float tensor");
  TORCH_CHECK(qs.dim() == 3 && qs.size(2) == bytes_per_block && qs.is_contiguous(), "glassbox kernels: qs must be contiguous [N, G, ",
              bytes_per_block, "]");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.is_contiguous() &&
                  scales.numel() == qs.size(0) * qs.size(1) * scales_per_block,
              "glassbox kernels: scales must be contiguous float16 with ", scales_per_block, " per block");
  const int64_t N = qs.size(0), G = qs.size(1), K = x.size(-1);
  TORCH_CHECK(K <= G * kBlock && K > (G - 1) * kBlock, "glassbox kernels: x has ", K, " features, the weight ",
              G * kBlock, " (in blocks of 32)");
  const at::Tensor x2 = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t M = x2.size(0);
  at::Tensor out = at::empty({M, N}, x2.options());
  auto sizes = x.sizes().vec();
  sizes.back() = N;
  if (M == 0 || N == 0) return out.view(sizes).to(x.scalar_type());
  const KernelTable table = active_table();
  const Quantized xq = quantize_rows(table, x2, G);
  const W* w = reinterpret_cast<const W*>(qs.data_ptr());
  const uint16_t* s = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  float* y = out.data_ptr<float>();
  // Enough rows per thread that a chunk outweighs waking a thread (~4k block products).
  const int64_t grain = std::max<int64_t>(kRowTile, 4096 / std::max<int64_t>(1, M * G));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t t0 = n0; t0 < n1; t0 += kRowTile) {
      const int64_t R = std::min(kRowTile, n1 - t0);
      for (int64_t m = 0; m < M; ++m)
        rows(table, w + t0 * G * bytes_per_block, s + t0 * G * scales_per_block, R, G, xq.row(m, G), y + m * N + t0);
    }
  });
  return out.view(sizes).to(x.scalar_type());
}

at::Tensor q4_linear(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& dm) {
  TORCH_CHECK(qs.scalar_type() == at::kByte, "glassbox q4_linear: qs must be uint8");
  return linear<uint8_t>(
      x, qs, dm, 2, kBlock / 2, [](const KernelTable& t, const uint8_t* w, const uint16_t* s, int64_t R, int64_t G,
                                   const QuantizedRow& r, float* y) { t.q4_rows(w, s, R, G, r, y); });
}

at::Tensor q8_linear(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d) {
  TORCH_CHECK(qs.scalar_type() == at::kChar, "glassbox q8_linear: qs must be int8");
  return linear<int8_t>(
      x, qs, d, 1, kBlock, [](const KernelTable& t, const int8_t* w, const uint16_t* s, int64_t R, int64_t G,
                              const QuantizedRow& r, float* y) { t.q8_rows(w, s, R, G, r, y); });
}

// The float weight [N, K] (for many activation rows at once, where one GEMM over it beats per-row dot
// products: prefill). Rows split over threads; fp16 scales widened once per block.
at::Tensor dequantize(const at::Tensor& qs, const at::Tensor& scales, int64_t K, bool q4) {
  TORCH_CHECK(qs.is_cpu() && qs.dim() == 3 && qs.is_contiguous() && scales.scalar_type() == at::kHalf &&
                  scales.is_contiguous(), "glassbox dequantize: contiguous blocks and float16 scales");
  const int64_t N = qs.size(0), G = qs.size(1);
  TORCH_CHECK(K <= G * kBlock && K > (G - 1) * kBlock, "glassbox dequantize: ", K, " features in ", G, " blocks");
  at::Tensor out = at::empty({N, K}, qs.options().dtype(at::kFloat));
  const uint16_t* s = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  const uint8_t* w = reinterpret_cast<const uint8_t*>(qs.data_ptr());
  float* y = out.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    float block[kBlock];
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t b = 0; b < G; ++b) {
        if (q4) {
          const uint8_t* p = w + (n * G + b) * (kBlock / 2);
          const float d = half_to_float(s[(n * G + b) * 2]), m = half_to_float(s[(n * G + b) * 2 + 1]);
          for (int j = 0; j < kBlock / 2; ++j) {
            block[j] = static_cast<float>(p[j] & 0x0f) * d + m;
            block[j + kBlock / 2] = static_cast<float>(p[j] >> 4) * d + m;
          }
        } else {
          const int8_t* p = reinterpret_cast<const int8_t*>(w) + (n * G + b) * kBlock;
          const float d = half_to_float(s[n * G + b]);
          for (int j = 0; j < kBlock; ++j) block[j] = static_cast<float>(p[j]) * d;
        }
        const int64_t count = std::min<int64_t>(kBlock, K - b * kBlock);
        std::copy(block, block + count, y + n * K + b * kBlock);
      }
    }
  });
  return out;
}

at::Tensor q4_dequantize(const at::Tensor& qs, const at::Tensor& dm, int64_t K) {
  TORCH_CHECK(qs.scalar_type() == at::kByte && qs.size(2) == kBlock / 2, "glassbox q4_dequantize: qs uint8 [N, G, 16]");
  return dequantize(qs, dm, K, true);
}

at::Tensor q8_dequantize(const at::Tensor& qs, const at::Tensor& d, int64_t K) {
  TORCH_CHECK(qs.scalar_type() == at::kChar && qs.size(2) == kBlock, "glassbox q8_dequantize: qs int8 [N, G, 32]");
  return dequantize(qs, d, K, false);
}

}  // namespace
}  // namespace glassbox

TORCH_LIBRARY(glassbox, m) {
  m.def("q4_dequantize(Tensor qs, Tensor dm, int K) -> Tensor");
  m.def("q8_dequantize(Tensor qs, Tensor d, int K) -> Tensor");
  m.def("q4_linear(Tensor x, Tensor qs, Tensor dm) -> Tensor");
  m.def("q8_linear(Tensor x, Tensor qs, Tensor d) -> Tensor");
  m.def("kernel_isa() -> str", [] { return glassbox::kernel_isa(); });
  m.def("supported_isas() -> str[]", [] { return glassbox::supported_isas(); });
  m.def("use_isa(str isa) -> str", [](std::string isa) { return glassbox::use_isa(isa); });
}

TORCH_LIBRARY_IMPL(glassbox, CPU, m) {
  m.impl("q4_linear", glassbox::q4_linear);
  m.impl("q8_linear", glassbox::q8_linear);
  m.impl("q4_dequantize", glassbox::q4_dequantize);
  m.impl("q8_dequantize", glassbox::q8_dequantize);
}
