// The AVX-512 VNNI path (Ice Lake and later, Zen 4): `vpdpbusd` multiplies 64 unsigned by 64 signed
// bytes and adds them in fours into 16 int32 lanes in one instruction. With the packed layout
// (qlinear.h) one load is a 4-byte word of 16 rows, so the 16 lanes are 16 output rows and the
// activation word is one broadcast. Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni
// (setup.py); chosen at run time only on CPUs that have them (ops.cpp).
#include "decode_math.h"
#include "qlinear.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstring>

namespace glassbox {
namespace {

// No software prefetch: a tile is one stream read front to back, which the hardware prefetcher follows
// (prefetching 1, 2 or 4 KB ahead measured the same or slower, bench --kernels default).
inline __m512i broadcast_word(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return _mm512_set1_epi32(v);
}

void quantize(const float* x, int64_t K, int64_t G, int8_t* q, float* dx, float* sum_x, int32_t* sum_q) {
  for (int64_t b = 0; b < G; ++b) {
    alignas(64) float tail[kBlock] = {0};
    const float* p = x + b * kBlock;
    if (K - b * kBlock < kBlock) {  // the last, partial block: zero-padded like the weights
      std::memcpy(tail, p, (K - b * kBlock) * sizeof(float));
      p = tail;
    }
    const __m512 v0 = _mm512_loadu_ps(p), v1 = _mm512_loadu_ps(p + 16);
    const float max_abs = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const __m512 inv = _mm512_set1_ps(max_abs > 0 ? 127.0f / max_abs : 0.0f);
    const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv));  // to nearest, ties to even
    const __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * kBlock), _mm512_cvtsepi32_epi8(i0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * kBlock + 16), _mm512_cvtsepi32_epi8(i1));
    dx[b] = max_abs / 127.0f;
    sum_x[b] = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
    sum_q[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
  }
}

// MR activation rows against one 16-row tile, the weights decoded once per word for all MR rows.
// Per row and block: two integer accumulators (low and high nibbles, or even and odd words, so the
// `vpdpbusd` chains are half as long), the integer offset, then one float multiply-add with d * dx.
template <int MR, int F>
void tile_mr(const uint8_t* tile, const QuantizedRows& x, int64_t m0, int rows, float* out, int64_t ldo) {
  constexpr int64_t stride = record_bytes(F);
  constexpr int words = F == kQ8_0 ? 8 : 4;
  constexpr int32_t offset = F == kQ4_0 ? 8 : F == kQ8_0 ? 128 : 0;
  const int64_t G = x.G;
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  __m512 acc[MR], acc_m[MR];
  for (int m = 0; m < MR; ++m) acc[m] = acc_m[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < G; ++b) {
    const uint8_t* record = tile + b * stride;
    __m512i lo[MR], hi[MR];
    for (int m = 0; m < MR; ++m) lo[m] = hi[m] = _mm512_setzero_si512();
    for (int k = 0; k < words; ++k) {
      const __m512i w = _mm512_loadu_si512(record + 64 * k);
      if constexpr (F == kQ8_0) {
        for (int m = 0; m < MR; ++m) {
          const __m512i a = broadcast_word(x.q + ((m0 + m) * G + b) * kBlock + 4 * k);
          if (k & 1) hi[m] = _mm512_dpbusd_epi32(hi[m], w, a);
          else lo[m] = _mm512_dpbusd_epi32(lo[m], w, a);
        }
      } else {
        const __m512i low = _mm512_and_si512(w, nibble), high = _mm512_and_si512(_mm512_srli_epi16(w, 4), nibble);
        for (int m = 0; m < MR; ++m) {
          const int8_t* a = x.q + ((m0 + m) * G + b) * kBlock;
          lo[m] = _mm512_dpbusd_epi32(lo[m], low, broadcast_word(a + 4 * k));
          hi[m] = _mm512_dpbusd_epi32(hi[m], high, broadcast_word(a + 16 + 4 * k));
        }
      }
    }
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(record + code_bytes(F))));
    __m512 mins = _mm512_setzero_ps();
    if constexpr (F == kQ4_1)
      mins = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(record + code_bytes(F) + 32)));
    for (int m = 0; m < MR; ++m) {
      const int64_t i = (m0 + m) * G + b;
      __m512i dot = _mm512_add_epi32(lo[m], hi[m]);
      if constexpr (offset != 0) dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(offset * x.sum_q[i]));
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d, _mm512_set1_ps(x.dx[i])), acc[m]);
      if constexpr (F == kQ4_1) acc_m[m] = _mm512_fmadd_ps(mins, _mm512_set1_ps(x.sum_x[i]), acc_m[m]);
    }
  }
  const __mmask16 keep = static_cast<__mmask16>((1u << rows) - 1);
  for (int m = 0; m < MR; ++m)
    _mm512_mask_storeu_ps(out + m * ldo, keep, F == kQ4_1 ? _mm512_add_ps(acc[m], acc_m[m]) : acc[m]);
}

template <int F>
void tile_format(const uint8_t* tile, const QuantizedRows& x, int64_t m0, int64_t M, int rows, float* out, int64_t ldo) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) tile_mr<4, F>(tile, x, m0 + m, rows, out + m * ldo, ldo);
  if (M - m == 3) tile_mr<3, F>(tile, x, m0 + m, rows, out + m * ldo, ldo);
  if (M - m == 2) tile_mr<2, F>(tile, x, m0 + m, rows, out + m * ldo, ldo);
  if (M - m == 1) tile_mr<1, F>(tile, x, m0 + m, rows, out + m * ldo, ldo);
}

void tile(const uint8_t* tile, int format, const QuantizedRows& x, int64_t m0, int64_t M, int rows, float* out,
          int64_t ldo) {
  if (format == kQ4_1) tile_format<kQ4_1>(tile, x, m0, M, rows, out, ldo);
  else if (format == kQ4_0) tile_format<kQ4_0>(tile, x, m0, M, rows, out, ldo);
  else tile_format<kQ8_0>(tile, x, m0, M, rows, out, ldo);
}

}  // namespace

KernelTable avx512_table() { return {"avx512", quantize, tile, decode_math::attend, decode_math::silu_mul}; }

}  // namespace glassbox

#else
namespace glassbox {
KernelTable avx512_table() { return {"avx512", nullptr, nullptr, nullptr, nullptr}; }
}  // namespace glassbox
#endif
