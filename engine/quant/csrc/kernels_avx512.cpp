// The AVX-512 VNNI path (Ice Lake and later, Zen 4): `vpdpbusd` multiplies 64 unsigned by 64 signed
// bytes and adds them in fours into 16 int32 in one instruction, so two 32-value blocks go per
// instruction. Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni (setup.py); chosen at run
// time only on CPUs that have them (ops.cpp).
#include "qlinear.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstring>

namespace glassbox {
namespace {

// 16 lanes: the first 8 take element 0 of a 4-vector, the last 8 element `second`.
inline __m512 spread_pair(__m128 v, int second) {
  const __m512i idx = _mm512_set_epi32(second, second, second, second, second, second, second, second,
                                       0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
}

// Rows are short (K = 576: 9 cache lines of q8) and a tile reads 4 of them side by side, an order the
// hardware prefetcher follows poorly: ask for the weights (and scales) well ahead of the tile (16 KB:
// 4.5 -> 3.9 ms for the default model's Q8_0 LM head at one thread, where 1 KB gave 4.6 and none 6.3).
constexpr int kPrefetchBytes = 16384;
inline void prefetch_ahead(const void* weights, const void* scales) {
  _mm_prefetch(static_cast<const char*>(weights) + kPrefetchBytes, _MM_HINT_T0);
  _mm_prefetch(static_cast<const char*>(scales) + kPrefetchBytes / 8, _MM_HINT_T0);
}

inline float hsum128(__m128 s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// 32 bytes = two q4 blocks -> their 64 codes in value order: 128-bit lanes [b0 low, b0 high, b1 low, b1 high].
inline __m512i q4_codes_pair(const uint8_t* p) {
  __m512i t = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  t = _mm512_shuffle_i64x2(t, t, _MM_SHUFFLE(1, 1, 0, 0));        // lanes [b0, b0, b1, b1]
  t = _mm512_mask_blend_epi64(0xCC, t, _mm512_srli_epi16(t, 4));  // lanes 1 and 3: the high nibbles
  return _mm512_and_si512(t, _mm512_set1_epi8(0x0f));
}

// One block with 256-bit VNNI (the last block of an odd count).
inline int32_t q4_dot_one(const uint8_t* p, const int8_t* a) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i codes = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0f));
  const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes,
                                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a)));
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(dot), _mm256_extracti128_si256(dot, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1))));
}

inline int32_t q8_dot_one(const int8_t* w, const int8_t* a) {
  int32_t dot = 0;
  for (int j = 0; j < kBlock; ++j) dot += w[j] * a[j];
  return dot;
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

// NR rows at once: each pair of activation blocks (and its scales) is loaded once for NR weight rows.
// Per pair and row: integer dot -> float, times d * dx per block (lanes 0-7 block b, 8-15 block b+1);
// the offsets m * sum(x) go into a 4-lane accumulator beside it.
template <int NR>
void q4_tile(const uint8_t* qs, const uint16_t* dm, int64_t G, const QuantizedRow& x, float* out) {
  __m512 acc[NR];
  __m128 offsets[NR];
  for (int r = 0; r < NR; ++r) { acc[r] = _mm512_setzero_ps(); offsets[r] = _mm_setzero_ps(); }
  int64_t b = 0;
  for (; b + 2 <= G; b += 2) {
    const __m512i a = _mm512_loadu_si512(x.q + b * kBlock);
    const __m512 dx = spread_pair(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x.dx + b))), 1);
    const __m128 sx = _mm_unpacklo_ps(_mm_setzero_ps(), _mm_castsi128_ps(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x.sum_x + b))));  // [0, sx_b, 0, sx_b+1]
    for (int r = 0; r < NR; ++r) {
      prefetch_ahead(qs + (r * G + b) * (kBlock / 2), dm + (r * G + b) * 2);
      // [d_b, m_b, d_b+1, m_b+1]
      const __m128 s = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(dm + (r * G + b) * 2)));
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q4_codes_pair(qs + (r * G + b) * (kBlock / 2)), a);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(spread_pair(s, 2), dx), acc[r]);
      offsets[r] = _mm_fmadd_ps(s, sx, offsets[r]);
    }
  }
  for (int r = 0; r < NR; ++r) {
    float tail = 0;
    if (b < G) {
      const float d = _cvtsh_ss(dm[(r * G + b) * 2]), m = _cvtsh_ss(dm[(r * G + b) * 2 + 1]);
      tail = d * x.dx[b] * static_cast<float>(q4_dot_one(qs + (r * G + b) * (kBlock / 2), x.q + b * kBlock))
             + m * x.sum_x[b];
    }
    out[r] = _mm512_reduce_add_ps(acc[r]) + hsum128(offsets[r]) + tail;
  }
}

// q8: vpdpbusd wants unsigned x signed; w + 128 (w xor 0x80) is unsigned, and sum((w + 128) xq) =
// sum(w xq) + 128 sum(xq), so each block takes back 128 * sum_q * dx * d.
template <int NR>
void q8_tile(const int8_t* qs, const uint16_t* d, int64_t G, const QuantizedRow& x, float* out) {
  __m512 acc[NR];
  __m128 offsets[NR];
  for (int r = 0; r < NR; ++r) { acc[r] = _mm512_setzero_ps(); offsets[r] = _mm_setzero_ps(); }
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  int64_t b = 0;
  for (; b + 2 <= G; b += 2) {
    const __m512i a = _mm512_loadu_si512(x.q + b * kBlock);
    const __m512 dx = spread_pair(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x.dx + b))), 1);
    const __m128 back = _mm_setr_ps(-128.0f * x.dx[b] * static_cast<float>(x.sum_q[b]),
                                    -128.0f * x.dx[b + 1] * static_cast<float>(x.sum_q[b + 1]), 0, 0);
    for (int r = 0; r < NR; ++r) {
      prefetch_ahead(qs + (r * G + b) * kBlock, d + r * G + b);
      int32_t two_scales;
      std::memcpy(&two_scales, d + r * G + b, sizeof two_scales);
      const __m128 s = _mm_cvtph_ps(_mm_cvtsi32_si128(two_scales));  // [d_b, d_b+1, 0, 0]
      const __m512i w = _mm512_xor_si512(_mm512_loadu_si512(qs + (r * G + b) * kBlock), flip);
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(spread_pair(s, 1), dx), acc[r]);
      offsets[r] = _mm_fmadd_ps(s, back, offsets[r]);
    }
  }
  for (int r = 0; r < NR; ++r) {
    float tail = 0;
    if (b < G)
      tail = _cvtsh_ss(d[r * G + b]) * x.dx[b] * static_cast<float>(q8_dot_one(qs + (r * G + b) * kBlock, x.q + b * kBlock));
    out[r] = _mm512_reduce_add_ps(acc[r]) + hsum128(offsets[r]) + tail;
  }
}

void q4_rows(const uint8_t* qs, const uint16_t* dm, int64_t R, int64_t G, const QuantizedRow& x, float* out) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) q4_tile<4>(qs + r * G * (kBlock / 2), dm + r * G * 2, G, x, out + r);
  for (; r < R; ++r) q4_tile<1>(qs + r * G * (kBlock / 2), dm + r * G * 2, G, x, out + r);
}

void q8_rows(const int8_t* qs, const uint16_t* d, int64_t R, int64_t G, const QuantizedRow& x, float* out) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) q8_tile<4>(qs + r * G * kBlock, d + r * G, G, x, out + r);
  for (; r < R; ++r) q8_tile<1>(qs + r * G * kBlock, d + r * G, G, x, out + r);
}

}  // namespace

KernelTable avx512_table() { return {"avx512", quantize, q4_rows, q8_rows}; }

}  // namespace glassbox

#else
namespace glassbox {
KernelTable avx512_table() { return {"avx512", nullptr, nullptr, nullptr}; }
}  // namespace glassbox
#endif
