// The portable path: plain C++ that any compiler and CPU run (and the reference the SIMD paths are
// tested against). Integer arithmetic is exact, so it differs from them only in float summation order.
#include <cmath>
#include <cstring>

#include "decode_math.h"
#include "qlinear.h"

namespace glassbox {

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ffu, bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf / nan
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int shift = 0;
    while (!(mantissa & 0x400u)) { mantissa <<= 1; ++shift; }
    bits = sign | ((113 - shift) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

namespace {

void quantize(const float* x, int64_t K, int64_t G, int8_t* q, float* dx, float* sum_x, int32_t* sum_q) {
  for (int64_t b = 0; b < G; ++b) {
    float block[kBlock] = {0};  // the tail past K is zero, as the weights' padding is
    const int64_t n = K - b * kBlock < kBlock ? K - b * kBlock : kBlock;
    std::memcpy(block, x + b * kBlock, n * sizeof(float));
    float amax = 0, total = 0;
    for (float v : block) { amax = std::fmax(amax, std::fabs(v)); total += v; }
    const float inv = amax > 0 ? 127.0f / amax : 0.0f;
    int32_t total_q = 0;
    for (int j = 0; j < kBlock; ++j) {
      const int32_t v = static_cast<int32_t>(std::nearbyint(block[j] * inv));  // to nearest, ties to even
      q[b * kBlock + j] = static_cast<int8_t>(v);
      total_q += v;
    }
    dx[b] = amax / 127.0f;
    sum_x[b] = total;
    sum_q[b] = total_q;
  }
}

// Word k of row r in a record: the 16 rows' k-th words lie side by side (qlinear.h).
inline const uint8_t* word(const uint8_t* record, int k, int r) { return record + (k * kTileRows + r) * 4; }

void tile(const uint8_t* tile, int format, const QuantizedRows& x, int64_t m0, int64_t M, int rows, float* out,
          int64_t ldo) {
  const int64_t G = x.G, stride = record_bytes(format);
  const int32_t offset = format == kQ4_0 ? 8 : format == kQ8_0 ? 128 : 0;
  for (int64_t m = m0; m < m0 + M; ++m) {
    for (int r = 0; r < rows; ++r) {
      float acc = 0, acc_m = 0;
      for (int64_t b = 0; b < G; ++b) {
        const uint8_t* record = tile + b * stride;
        const int8_t* a = x.q + (m * G + b) * kBlock;
        int32_t dot = 0;
        if (format == kQ8_0) {
          for (int k = 0; k < 8; ++k)
            for (int j = 0; j < 4; ++j) dot += word(record, k, r)[j] * a[4 * k + j];
        } else {
          for (int k = 0; k < 4; ++k)
            for (int j = 0; j < 4; ++j) {
              const uint8_t byte = word(record, k, r)[j];
              dot += (byte & 0x0f) * a[4 * k + j] + (byte >> 4) * a[16 + 4 * k + j];
            }
        }
        dot -= offset * x.sum_q[m * G + b];
        uint16_t d, mn;
        std::memcpy(&d, record + code_bytes(format) + 2 * r, 2);
        acc += half_to_float(d) * x.dx[m * G + b] * static_cast<float>(dot);
        if (format == kQ4_1) {
          std::memcpy(&mn, record + code_bytes(format) + 2 * (kTileRows + r), 2);
          acc_m += half_to_float(mn) * x.sum_x[m * G + b];
        }
      }
      out[(m - m0) * ldo + r] = acc + acc_m;
    }
  }
}

}  // namespace

KernelTable scalar_table() { return {"scalar", quantize, tile, decode_math::attend, decode_math::silu_mul}; }

}  // namespace glassbox
