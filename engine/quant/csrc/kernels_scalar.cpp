// The portable path: plain C++ that any compiler and CPU run (and the reference the SIMD paths are
// tested against). Integer arithmetic is exact, so it differs from them only in float summation order.
#include <cmath>
#include <cstring>

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

void q4_rows(const uint8_t* qs, const uint16_t* dm, int64_t R, int64_t G, const QuantizedRow& x, float* out) {
  for (int64_t r = 0; r < R; ++r) {
    float acc = 0;
    for (int64_t b = 0; b < G; ++b) {
      const uint8_t* w = qs + (r * G + b) * (kBlock / 2);
      const int8_t* a = x.q + b * kBlock;
      int32_t dot = 0;
      for (int j = 0; j < kBlock / 2; ++j) dot += (w[j] & 0x0f) * a[j] + (w[j] >> 4) * a[j + kBlock / 2];
      const float d = half_to_float(dm[(r * G + b) * 2]), m = half_to_float(dm[(r * G + b) * 2 + 1]);
      acc += d * x.dx[b] * static_cast<float>(dot) + m * x.sum_x[b];
    }
    out[r] = acc;
  }
}

void q8_rows(const int8_t* qs, const uint16_t* d, int64_t R, int64_t G, const QuantizedRow& x, float* out) {
  for (int64_t r = 0; r < R; ++r) {
    float acc = 0;
    for (int64_t b = 0; b < G; ++b) {
      const int8_t* w = qs + (r * G + b) * kBlock;
      const int8_t* a = x.q + b * kBlock;
      int32_t dot = 0;
      for (int j = 0; j < kBlock; ++j) dot += w[j] * a[j];
      acc += half_to_float(d[r * G + b]) * x.dx[b] * static_cast<float>(dot);
    }
    out[r] = acc;
  }
}

}  // namespace

KernelTable scalar_table() { return {"scalar", quantize, q4_rows, q8_rows}; }

}  // namespace glassbox
