// Glassbox's quantized linear kernels: shared declarations of the per-ISA kernel tables.
//
// Weights stay in 32-value blocks (GGUF's block size) with fp16 scales:
//   q4: codes u in 0..15, two per byte as GGUF stores them (byte j holds value j in its low nibble
//       and value j + 16 in its high one), one (d, m) fp16 pair per block:  w = d * u + m
//       (GGUF Q4_1 as stored; Q4_0 is m = -8 d; our int4-gN is d = scale, m = zero - 8 scale).
//   q8: codes int8, one fp16 d per block:  w = d * q  (GGUF Q8_0; our int8 with d per row repeated).
// Activations are quantized per 32-block to int8 (xq = round(x / dx), dx = max|x| / 127), so a block's
// dot product is d * dx * sum(u * xq) (an integer dot product) + m * sum(x).
#pragma once
#include <cstdint>

namespace glassbox {

constexpr int kBlock = 32;

// One activation row, quantized: q [G * 32], and per block dx, the float sum of x and the sum of q.
struct QuantizedRow {
  const int8_t* q;
  const float* dx;
  const float* sum_x;
  const int32_t* sum_q;
};

// rows: R weight rows of G blocks each; out[r] = dot(weight row r, activation row).
using QuantizeFn = void (*)(const float* x, int64_t K, int64_t G, int8_t* q, float* dx, float* sum_x,
                            int32_t* sum_q);
using Q4RowsFn = void (*)(const uint8_t* qs, const uint16_t* dm, int64_t R, int64_t G, const QuantizedRow& x,
                          float* out);
using Q8RowsFn = void (*)(const int8_t* qs, const uint16_t* d, int64_t R, int64_t G, const QuantizedRow& x,
                          float* out);

struct KernelTable {
  const char* name;  // "scalar" | "avx2" | "avx512"
  QuantizeFn quantize;
  Q4RowsFn q4_rows;
  Q8RowsFn q8_rows;
};

// Each is defined in its own translation unit, compiled with that ISA's flags; a table whose
// code was not compiled for this platform has null functions. The caller checks the CPU first.
KernelTable scalar_table();
KernelTable avx2_table();
KernelTable avx512_table();

float half_to_float(uint16_t h);  // portable IEEE fp16 -> fp32 (scalar path and tests of the others)

}  // namespace glassbox
