// Glassbox's quantized linear kernels: the packed weight layout and the per-ISA kernel tables.
//
// Values come in 32-value blocks (GGUF's block size) with fp16 scales, in three formats:
//   Q4_1: codes u in 0..15 and one (d, m) pair per block:   w = d * u + m  (GGUF Q4_1; our int4-gN)
//   Q4_0: codes u in 0..15 and one d per block:             w = d * (u - 8)  (GGUF Q4_0: no m to read)
//   Q8_0: codes q in -128..127 and one d per block:         w = d * q  (GGUF Q8_0; our int8)
// Packed layout: output rows go in tiles of 16 (the last tile padded with zero rows). A tile is one
// contiguous run of G records, one per block; a record holds that block for all 16 rows:
//   codes: for each 4-byte word k of a row's block (4 for q4, 8 for q8), the 16 rows' words side by side
//          (64 bytes), so one 512-bit load is word k of 16 rows and each 32-bit lane is one row.
//          q4 bytes are GGUF's (byte j: value j in the low nibble, value j + 16 in the high one);
//          q8 codes are stored plus 128 (as unsigned bytes: what `vpdpbusd` multiplies).
//   then the 16 rows' d (fp16), then for Q4_1 the 16 rows' m (fp16).
// One stream per tile, read front to back (what the hardware prefetcher follows best), and each lane
// of a vector accumulates one row: no shuffles and no horizontal sums in the inner loop.
// Activations are quantized per 32-block to int8 (xq = round(x / dx), dx = max|x| / 127), so a block's
// dot product is d * dx * (sum(u * xq) - offset * sum(xq)) [+ m * sum(x) for Q4_1], with the integer
// offset 8 (Q4_0), 128 (stored q8) or 0 (Q4_1).
#pragma once
#include <cstdint>

namespace glassbox {

constexpr int kBlock = 32;
constexpr int kTileRows = 16;

enum Format : int { kQ4_1 = 0, kQ4_0 = 1, kQ8_0 = 2 };

constexpr int64_t code_bytes(int format) { return format == kQ8_0 ? kTileRows * kBlock : kTileRows * kBlock / 2; }
constexpr int64_t record_bytes(int format) {
  return code_bytes(format) + kTileRows * 2 * (format == kQ4_1 ? 2 : 1);
}

// M activation rows of G blocks each, quantized: row m's block b is q[(m * G + b) * 32 ...], with its
// dx, the float sum of its x and the sum of its q at [m * G + b].
struct QuantizedRows {
  const int8_t* q;
  const float* dx;
  const float* sum_x;
  const int32_t* sum_q;
  int64_t G;
};

// One tile (G records from `tile`) against activation rows m0 .. m0 + M - 1:
// out[(m - m0) * ldo + r] for the tile's first `rows` rows (r < rows <= 16).
// The arithmetic of each activation row is the same whatever M is, so a row's result does not depend on
// the rows computed beside it (a decode step equals the same token in a verify or a batch, bit for bit).
using QuantizeFn = void (*)(const float* x, int64_t K, int64_t G, int8_t* q, float* dx, float* sum_x,
                            int32_t* sum_q);
using TileFn = void (*)(const uint8_t* tile, int format, const QuantizedRows& x, int64_t m0, int64_t M,
                        int rows, float* out, int64_t ldo);

// The decode step's other arithmetic (decode_math.h, built per ISA like the matmuls).
using AttendFn = void (*)(const float* q, int64_t group, int64_t d, const float* keys, const float* values,
                          int64_t stride, const int64_t* slots, int64_t n, float scale, float* scores, float* out,
                          float* stats);
using SiluMulFn = void (*)(const float* gate, const float* up, float* out, int64_t n);

struct KernelTable {
  const char* name;  // "scalar" | "avx2" | "avx512"
  QuantizeFn quantize;
  TileFn tile;
  AttendFn attend;
  SiluMulFn silu_mul;
};

// Each is defined in its own translation unit, compiled with that ISA's flags; a table whose
// code was not compiled for this platform has null functions. The caller checks the CPU first.
KernelTable scalar_table();
KernelTable avx2_table();
KernelTable avx512_table();

float half_to_float(uint16_t h);  // portable IEEE fp16 -> fp32 (scalar path and tests of the others)

// The table in use (the CPU's best, or the one a test forced).
const KernelTable& kernels();

// With the active table (ops.cpp), split over ATen's threads; shared by the ops and the fused decode step.
// Quantize M rows of K floats (row stride K) into x (G = x.G blocks a row).
void quantize_into(const float* src, int64_t M, int64_t K, const QuantizedRows& x);
// out[m * ldo + n] = packed row n . activation row m, for n < N, m < M.
void linear_into(const uint8_t* packed, int format, int64_t N, const QuantizedRows& x, int64_t M, float* out,
                 int64_t ldo);

}  // namespace glassbox
