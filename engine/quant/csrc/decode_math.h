// The decode step's arithmetic besides the matmuls: attention of one query per head over the paged pool,
// and SiLU(gate) * up. Plain loops written to vectorize; each kernels_*.cpp includes this file, so the
// compiler builds them with that translation unit's SIMD flags (AVX-512, AVX2 or the portable baseline)
// and the kernel table picks them with the matmuls.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// Internal linkage on purpose: each translation unit keeps its own copy built with its own flags (shared
// inline functions would let the linker hand the AVX-512 copy to every path).
namespace glassbox {
namespace {
namespace decode_math {

// e^x for x <= 0 (softmax after subtracting the max; SiLU's e^-|g|), relative error ~2e-7: 2^n by the
// exponent bits and a degree-6 polynomial on the rest, branch-free so a loop of it vectorizes (libm's expf
// does not). Below -87 it is 0, as expf's result would be a denormal or 0.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  // round to nearest by adding and taking back 1.5 * 2^23 (plain arithmetic, so the loop vectorizes; a call
  // to nearbyint would not)
  constexpr float kRound = 12582912.0f;
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;  // ln 2 in two parts
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float dot(const float* a, const float* b, int64_t n) {
  float total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) total += a[i] * b[i];
  return total;
}

// One KV group of one sequence over one run of its keys: `group` query heads q [group, d] read the keys and
// values of `n` slots (key j at keys + slots[j] * stride, likewise values). Per head: out [d] = sum of
// e^(s_j - top) v_j, unnormalised, and stats = (top, sum of e^(s_j - top)), so runs of one long context
// computed on different threads merge exactly into the softmax (decode.cpp). scores: group * n floats.
inline void attend(const float* q, int64_t group, int64_t d, const float* keys, const float* values,
                   int64_t stride, const int64_t* slots, int64_t n, float scale, float* scores, float* out,
                   float* stats) {
  for (int64_t j = 0; j < n; ++j) {
    const float* k = keys + slots[j] * stride;
    for (int64_t h = 0; h < group; ++h) scores[h * n + j] = dot(q + h * d, k, d) * scale;
  }
  for (int64_t h = 0; h < group; ++h) {
    float* s = scores + h * n;
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j) top = s[j] > top ? s[j] : top;
    float total = 0;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < n; ++j) {
      s[j] = exp_nonpositive(s[j] - top);
      total += s[j];
    }
    stats[2 * h] = top;
    stats[2 * h + 1] = total;
    float* o = out + h * d;
    for (int64_t i = 0; i < d; ++i) o[i] = 0;
  }
  for (int64_t j = 0; j < n; ++j) {
    const float* v = values + slots[j] * stride;
    for (int64_t h = 0; h < group; ++h) {
      const float p = scores[h * n + j];
      float* o = out + h * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) o[i] += p * v[i];
    }
  }
}

// out = gate / (1 + e^-gate) * up, e^-gate taken for the non-positive side only (stable both ways).
inline void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float e = exp_nonpositive(g < 0 ? g : -g);  // e^-|g|
    const float sigmoid = g >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e);
    out[i] = g * sigmoid * up[i];
  }
}

}  // namespace decode_math
}  // namespace
}  // namespace glassbox
