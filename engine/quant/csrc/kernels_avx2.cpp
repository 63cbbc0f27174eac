// The AVX2 path (Haswell and later, Zen): 8-bit products summed in pairs by `maddubs` (unsigned x
// signed bytes -> int16, then `madd` with ones -> int32). Compiled with -mavx2 -mfma -mf16c (setup.py);
// chosen at run time only on CPUs that have them (ops.cpp).
#include "qlinear.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstring>

namespace glassbox {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1))));
}

// Rows are short (K = 576: 9 cache lines of q8) and a tile reads 4 of them side by side, an order the
// hardware prefetcher follows poorly: ask for the weights (and scales) well ahead of the tile.
constexpr int kPrefetchBytes = 16384;
inline void prefetch_ahead(const void* weights, const void* scales) {
  _mm_prefetch(static_cast<const char*>(weights) + kPrefetchBytes, _MM_HINT_T0);
  _mm_prefetch(static_cast<const char*>(scales) + kPrefetchBytes / 8, _MM_HINT_T0);
}

// 16 bytes of a q4 block -> its 32 codes in value order (low nibbles are values 0..15).
inline __m256i q4_codes(const uint8_t* p) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0f));
}

// unsigned bytes u times signed bytes s, summed in eights -> 8 int32. Pairs stay within int16:
// |u| <= 128 (q4 codes, |q8| after the sign trick) and |s| <= 127.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

void quantize(const float* x, int64_t K, int64_t G, int8_t* q, float* dx, float* sum_x, int32_t* sum_q) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t b = 0; b < G; ++b) {
    alignas(32) float tail[kBlock] = {0};
    const float* p = x + b * kBlock;
    if (K - b * kBlock < kBlock) {  // the last, partial block: zero-padded like the weights
      std::memcpy(tail, p, (K - b * kBlock) * sizeof(float));
      p = tail;
    }
    __m256 v[4], amax = _mm256_setzero_ps(), total = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(p + 8 * i);
      amax = _mm256_max_ps(amax, _mm256_and_ps(v[i], abs_mask));
      total = _mm256_add_ps(total, v[i]);
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    const float max_abs = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    const __m256 inv = _mm256_set1_ps(max_abs > 0 ? 127.0f / max_abs : 0.0f);
    __m256i i[4];
    for (int k = 0; k < 4; ++k) i[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], inv));  // to nearest, ties to even
    const __m256i sums = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
    // packs work within 128-bit lanes: the permute puts the 8 groups of 4 back in order
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * kBlock),
                        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    dx[b] = max_abs / 127.0f;
    sum_x[b] = hsum(total);
    sum_q[b] = hsum_i32(sums);
  }
}

// NR rows at once: each activation block is loaded once for NR weight rows.
template <int NR>
void q4_tile(const uint8_t* qs, const uint16_t* dm, int64_t G, const QuantizedRow& x, float* out) {
  __m256 acc[NR];
  float offsets[NR];
  for (int r = 0; r < NR; ++r) { acc[r] = _mm256_setzero_ps(); offsets[r] = 0; }
  for (int64_t b = 0; b < G; ++b) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + b * kBlock));
    const float dx = x.dx[b], sx = x.sum_x[b];
    for (int r = 0; r < NR; ++r) {
      const uint16_t* s = dm + (r * G + b) * 2;
      if (b % 2 == 0) prefetch_ahead(qs + (r * G + b) * (kBlock / 2), s);  // a cache line holds 4 q4 blocks
      const __m256 p = _mm256_cvtepi32_ps(dot_u8s8(q4_codes(qs + (r * G + b) * (kBlock / 2)), a));
      acc[r] = _mm256_fmadd_ps(p, _mm256_set1_ps(_cvtsh_ss(s[0]) * dx), acc[r]);
      offsets[r] += _cvtsh_ss(s[1]) * sx;
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = hsum(acc[r]) + offsets[r];
}

template <int NR>
void q8_tile(const int8_t* qs, const uint16_t* d, int64_t G, const QuantizedRow& x, float* out) {
  __m256 acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < G; ++b) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + b * kBlock));
    const float dx = x.dx[b];
    for (int r = 0; r < NR; ++r) {
      prefetch_ahead(qs + (r * G + b) * kBlock, d + r * G + b);
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + (r * G + b) * kBlock));
      // |w| as unsigned, its sign moved onto the activations: the product is unchanged
      const __m256 p = _mm256_cvtepi32_ps(dot_u8s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)));
      acc[r] = _mm256_fmadd_ps(p, _mm256_set1_ps(_cvtsh_ss(d[r * G + b]) * dx), acc[r]);
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = hsum(acc[r]);
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

KernelTable avx2_table() { return {"avx2", quantize, q4_rows, q8_rows}; }

}  // namespace glassbox

#else
namespace glassbox {
KernelTable avx2_table() { return {"avx2", nullptr, nullptr, nullptr}; }
}  // namespace glassbox
#endif
