// The AVX2 path (Haswell and later, Zen): 8-bit products summed in pairs by `maddubs` (unsigned x
// signed bytes -> int16, then `madd` with ones -> int32), on the packed layout of qlinear.h.
// Compiled with -mavx2 -mfma -mf16c (setup.py); chosen at run time only on CPUs that have them (ops.cpp).
#include "decode_math.h"
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

inline __m256i broadcast_word(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return _mm256_set1_epi32(v);
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

// MR activation rows against one 16-row tile, taken as two halves of 8 rows (one 256-bit vector
// holds a word of 8 rows: each 32-bit lane is one row). AVX2 has 16 vector registers: MR stays <= 2.
// q8 codes are stored plus 128; here they go back to signed and the sign trick keeps pairs in int16,
// so the sum is already sum(q * xq) and no offset is taken.
template <int MR, int F>
void half_mr(const uint8_t* tile, int half, const QuantizedRows& x, int64_t m0, __m256* result) {
  constexpr int64_t stride = record_bytes(F);
  constexpr int words = F == kQ8_0 ? 8 : 4;
  const int64_t G = x.G;
  const __m256i nibble = _mm256_set1_epi8(0x0f), flip = _mm256_set1_epi8(static_cast<char>(0x80));
  __m256 acc[MR], acc_m[MR];
  for (int m = 0; m < MR; ++m) acc[m] = acc_m[m] = _mm256_setzero_ps();
  for (int64_t b = 0; b < G; ++b) {
    const uint8_t* record = tile + b * stride;
    __m256i dot[MR];
    for (int m = 0; m < MR; ++m) dot[m] = _mm256_setzero_si256();
    for (int k = 0; k < words; ++k) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(record + 64 * k + 32 * half));
      if constexpr (F == kQ8_0) {
        const __m256i q = _mm256_xor_si256(w, flip), magnitude = _mm256_sign_epi8(q, q);
        for (int m = 0; m < MR; ++m) {
          const __m256i a = broadcast_word(x.q + ((m0 + m) * G + b) * kBlock + 4 * k);
          dot[m] = _mm256_add_epi32(dot[m], dot_u8s8(magnitude, _mm256_sign_epi8(a, q)));
        }
      } else {
        const __m256i low = _mm256_and_si256(w, nibble), high = _mm256_and_si256(_mm256_srli_epi16(w, 4), nibble);
        for (int m = 0; m < MR; ++m) {
          const int8_t* a = x.q + ((m0 + m) * G + b) * kBlock;
          dot[m] = _mm256_add_epi32(dot[m], _mm256_add_epi32(dot_u8s8(low, broadcast_word(a + 4 * k)),
                                                             dot_u8s8(high, broadcast_word(a + 16 + 4 * k))));
        }
      }
    }
    const uint8_t* scales = record + code_bytes(F) + 16 * half;
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)));
    __m256 mins = _mm256_setzero_ps();
    if constexpr (F == kQ4_1) mins = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + 32)));
    for (int m = 0; m < MR; ++m) {
      const int64_t i = (m0 + m) * G + b;
      __m256i total = dot[m];
      if constexpr (F == kQ4_0) total = _mm256_sub_epi32(total, _mm256_set1_epi32(8 * x.sum_q[i]));
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(d, _mm256_set1_ps(x.dx[i])), acc[m]);
      if constexpr (F == kQ4_1) acc_m[m] = _mm256_fmadd_ps(mins, _mm256_set1_ps(x.sum_x[i]), acc_m[m]);
    }
  }
  for (int m = 0; m < MR; ++m) result[m] = F == kQ4_1 ? _mm256_add_ps(acc[m], acc_m[m]) : acc[m];
}

template <int MR, int F>
void tile_mr(const uint8_t* tile, const QuantizedRows& x, int64_t m0, int rows, float* out, int64_t ldo) {
  __m256 result[2][MR];
  half_mr<MR, F>(tile, 0, x, m0, result[0]);
  half_mr<MR, F>(tile, 1, x, m0, result[1]);
  for (int m = 0; m < MR; ++m) {
    alignas(32) float row[kTileRows];
    _mm256_store_ps(row, result[0][m]);
    _mm256_store_ps(row + 8, result[1][m]);
    std::memcpy(out + m * ldo, row, rows * sizeof(float));
  }
}

template <int F>
void tile_format(const uint8_t* tile, const QuantizedRows& x, int64_t m0, int64_t M, int rows, float* out, int64_t ldo) {
  int64_t m = 0;
  for (; m + 2 <= M; m += 2) tile_mr<2, F>(tile, x, m0 + m, rows, out + m * ldo, ldo);
  if (m < M) tile_mr<1, F>(tile, x, m0 + m, rows, out + m * ldo, ldo);
}

void tile(const uint8_t* tile, int format, const QuantizedRows& x, int64_t m0, int64_t M, int rows, float* out,
          int64_t ldo) {
  if (format == kQ4_1) tile_format<kQ4_1>(tile, x, m0, M, rows, out, ldo);
  else if (format == kQ4_0) tile_format<kQ4_0>(tile, x, m0, M, rows, out, ldo);
  else tile_format<kQ8_0>(tile, x, m0, M, rows, out, ldo);
}

}  // namespace

KernelTable avx2_table() { return {"avx2", quantize, tile, decode_math::attend, decode_math::silu_mul}; }

}  // namespace glassbox

#else
namespace glassbox {
KernelTable avx2_table() { return {"avx2", nullptr, nullptr, nullptr, nullptr}; }
}  // namespace glassbox
#endif
