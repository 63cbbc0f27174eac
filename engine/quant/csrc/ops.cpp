// The PyTorch custom ops (torch.ops.glassbox.*): shapes and dtypes are checked here, activations are
// quantized once per call, and output rows are split over ATen's threads. The arithmetic lives in the
// per-ISA kernel tables (kernels_*.cpp); which one runs is chosen from the CPU's features at load.
//   packed_linear(x [..., K], packed uint8 [tiles, G, record bytes], format, N) -> [..., N] in x's dtype
//   packed_dequantize(packed, format, N, K, ids) -> float32 [len(ids) or N, K]
// The packed layout and the formats are described in qlinear.h. K <= 32 G: the weights' padding past K
// is zero, and so is the activations' (quantize pads).
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
    if (cpu_supports(isa) && table_for(isa).tile != nullptr) out.emplace_back(isa);
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

}  // namespace

const KernelTable& kernels() { return active_table(); }

// Activations quantized for the kernels (row m's blocks at m * G); fresh tensors per call.
struct Quantized {
  at::Tensor q, dx, sum_x, sum_q;
  int64_t G;
  QuantizedRows rows() const {
    return {q.data_ptr<int8_t>(), dx.data_ptr<float>(), sum_x.data_ptr<float>(), sum_q.data_ptr<int32_t>(), G};
  }
};

Quantized quantize_rows(const float* src, int64_t M, int64_t K, int64_t G) {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  Quantized out{at::empty({M, G * kBlock}, opts.dtype(at::kChar)), at::empty({M, G}, opts), at::empty({M, G}, opts),
                at::empty({M, G}, opts.dtype(at::kInt)), G};
  quantize_into(src, M, K, out.rows());
  return out;
}

void quantize_into(const float* src, int64_t M, int64_t K, const QuantizedRows& x) {
  const KernelTable& table = active_table();
  const int64_t G = x.G;
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      table.quantize(src + m * K, K, G, const_cast<int8_t*>(x.q) + m * G * kBlock, const_cast<float*>(x.dx) + m * G,
                     const_cast<float*>(x.sum_x) + m * G, const_cast<int32_t*>(x.sum_q) + m * G);
  });
}

// out[m * ldo + n] = row n of the packed weight (N rows, tiles of 16) . activation row m, for m < M.
// Threads take whole tiles, so each streams its own part of the weights once; many activation rows go
// in chunks of 64 against a thread's tiles, the chunk's activations staying in cache.
void linear_into(const uint8_t* packed, int format, int64_t N, const QuantizedRows& x, int64_t M, float* out,
                 int64_t ldo) {
  const KernelTable& table = active_table();
  const int64_t tiles = (N + kTileRows - 1) / kTileRows, stride = x.G * record_bytes(format);
  // Enough tiles per thread that a chunk outweighs waking a thread (~4k block products).
  const int64_t grain = std::max<int64_t>(1, 256 / std::max<int64_t>(1, M * x.G));
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t m0 = 0; m0 < M; m0 += 64)
      for (int64_t t = t0; t < t1; ++t) {
        const int rows = static_cast<int>(std::min<int64_t>(kTileRows, N - t * kTileRows));
        table.tile(packed + t * stride, format, x, m0, std::min<int64_t>(64, M - m0), rows,
                   out + m0 * ldo + t * kTileRows, ldo);
      }
  });
}

namespace {

void check_packed(const at::Tensor& packed, int64_t format, int64_t N, int64_t K) {
  TORCH_CHECK(format == kQ4_1 || format == kQ4_0 || format == kQ8_0, "glassbox kernels: unknown format ", format);
  const int64_t G = (K + kBlock - 1) / kBlock, tiles = (N + kTileRows - 1) / kTileRows;
  TORCH_CHECK(packed.dim() != 3 || packed.size(1) == G, "glassbox kernels: x has ", K, " features, the weight ",
              packed.size(1) * kBlock, " (in blocks of 32)");
  TORCH_CHECK(packed.is_cpu() && packed.scalar_type() == at::kByte && packed.is_contiguous() && packed.dim() == 3 &&
                  packed.size(0) == tiles && packed.size(1) == G && packed.size(2) == record_bytes(format),
              "glassbox kernels: packed must be contiguous uint8 [", tiles, ", ", G, ", ", record_bytes(format), "]");
}

//   packed_linear(x [..., K], packed, format, N) -> [..., N] (float32; x of any float dtype)
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, int64_t format, int64_t N) {
  TORCH_CHECK(x.is_cpu() && at::isFloatingType(x.scalar_type()), "glassbox kernels: x must be a CPU float tensor");
  const int64_t K = x.size(-1), G = (K + kBlock - 1) / kBlock;
  check_packed(packed, format, N, K);
  const at::Tensor x2 = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t M = x2.size(0);
  auto sizes = x.sizes().vec();
  sizes.back() = N;
  at::Tensor out = at::empty({M, N}, x2.options());
  if (M == 0 || N == 0) return out.view(sizes).to(x.scalar_type());
  const Quantized xq = quantize_rows(x2.data_ptr<float>(), M, K, G);
  linear_into(packed.data_ptr<uint8_t>(), static_cast<int>(format), N, xq.rows(), M, out.data_ptr<float>(), N);
  return out.view(sizes).to(x.scalar_type());
}

// The float values of rows `ids` (all rows when empty) of a packed weight: [len(ids), K]. Embedding
// lookups of a quantized table, and tests.
at::Tensor packed_dequantize(const at::Tensor& packed, int64_t format, int64_t N, int64_t K, const at::Tensor& ids) {
  check_packed(packed, format, N, K);
  const int64_t G = (K + kBlock - 1) / kBlock, stride = G * record_bytes(format);
  const at::Tensor rows = ids.numel() ? ids.reshape({-1}).to(at::kLong).contiguous() : at::arange(N, at::kLong);
  const int64_t R = rows.numel();
  TORCH_CHECK(R == 0 || (rows.min().item<int64_t>() >= 0 && rows.max().item<int64_t>() < N),
              "glassbox dequantize: row index out of range");
  at::Tensor out = at::empty({R, K}, at::kFloat);
  const uint8_t* base = packed.data_ptr<uint8_t>();
  const int64_t* row_ids = rows.data_ptr<int64_t>();
  float* y = out.data_ptr<float>();
  const int words = format == kQ8_0 ? 8 : 4;
  at::parallel_for(0, R, 64, [&](int64_t i0, int64_t i1) {
    float block[kBlock];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = row_ids[i], r = n % kTileRows;
      for (int64_t b = 0; b < G; ++b) {
        const uint8_t* record = base + (n / kTileRows) * stride + b * record_bytes(format);
        uint16_t d16, m16 = 0;
        std::memcpy(&d16, record + code_bytes(format) + 2 * r, 2);
        if (format == kQ4_1) std::memcpy(&m16, record + code_bytes(format) + 2 * (kTileRows + r), 2);
        const float d = half_to_float(d16), m = format == kQ4_1 ? half_to_float(m16) : -8.0f * d;
        for (int k = 0; k < words; ++k)
          for (int j = 0; j < 4; ++j) {
            const uint8_t byte = record[(k * kTileRows + r) * 4 + j];
            if (format == kQ8_0) {
              block[4 * k + j] = static_cast<float>(static_cast<int>(byte) - 128) * d;
            } else {
              block[4 * k + j] = static_cast<float>(byte & 0x0f) * d + m;
              block[16 + 4 * k + j] = static_cast<float>(byte >> 4) * d + m;
            }
          }
        const int64_t count = std::min<int64_t>(kBlock, K - b * kBlock);
        std::copy(block, block + count, y + i * K + b * kBlock);
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace glassbox

TORCH_LIBRARY(glassbox, m) {
  m.def("packed_linear(Tensor x, Tensor packed, int format, int N) -> Tensor");
  m.def("packed_dequantize(Tensor packed, int format, int N, int K, Tensor ids) -> Tensor");
  m.def("kernel_isa() -> str", [] { return glassbox::kernel_isa(); });
  m.def("supported_isas() -> str[]", [] { return glassbox::supported_isas(); });
  m.def("use_isa(str isa) -> str", [](std::string isa) { return glassbox::use_isa(isa); });
}

TORCH_LIBRARY_IMPL(glassbox, CPU, m) {
  m.impl("packed_linear", glassbox::packed_linear);
  m.impl("packed_dequantize", glassbox::packed_dequantize);
}
