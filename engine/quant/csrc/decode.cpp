// One decode step of a llama-family model on the CPU in a single call: every layer's norms, quantized
// matmuls, RoPE, KV-cache write, attention and gated MLP, then the final norm and the LM head.
//
// Why in C++: a decoded token of the default model is ~1,100 PyTorch operator calls from Python, each a
// few microseconds of dispatch, as much time as all its matmuls (docs/benchmarks.md); and ATen's CPU
// rms_norm (~40 us) and SDPA (~45 us) cost more at one query than their arithmetic. Here a step is our
// quantized matmuls, attention read straight from the paged pool (no gather into a copy), RMSNorm, RoPE
// and SiLU as plain loops (decode_math.h, built per ISA), with nothing between them. The same
// arithmetic as the model code up to float summation order (tests/engine/test_fused_decode.py holds
// the logits to the Python path's and the greedy tokens equal). engine/runtime/fused_decode.py decides
// when a model and a step qualify and hands the weights over.
// Shape legend: B sequences, D dim, H query heads, K kv heads, d head_dim, S key slots read (whole blocks),
// L layers, F hidden dim, V vocab.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "qlinear.h"

namespace glassbox {
namespace {

// The step's scratch tensors, kept from one step to the next and grown when a step needs more (a longer
// context, a bigger batch): a decode step allocates nothing once the sizes have settled. One per thread
// (the engine's worker is the one caller; a second thread gets its own).
class Workspace {
 public:
  at::Tensor get(size_t slot, at::IntArrayRef sizes, at::ScalarType dtype) {
    int64_t numel = 1;
    for (int64_t n : sizes) numel *= n;
    if (slot >= buffers_.size()) buffers_.resize(slot + 1);
    at::Tensor& buffer = buffers_[slot];
    if (!buffer.defined() || buffer.scalar_type() != dtype || buffer.numel() < numel)
      buffer = at::empty({std::max<int64_t>(numel, buffer.defined() ? 2 * buffer.numel() : 0)}, dtype);
    return buffer.narrow(0, 0, numel).view(sizes);
  }

 private:
  std::vector<at::Tensor> buffers_;
};

Workspace& workspace() {
  static thread_local Workspace kept;
  return kept;
}

// Scratch for the activations of one linear: quantized rows of the widest input of the step.
class Linears {
 public:
  Linears(int64_t rows, int64_t widest)
      : G_(widest / kBlock + 1),
        q_(workspace().get(0, {rows * G_ * kBlock}, at::kChar)),
        dx_(workspace().get(1, {rows * G_}, at::kFloat)),
        sum_x_(workspace().get(2, {rows * G_}, at::kFloat)),
        sum_q_(workspace().get(3, {rows * G_}, at::kInt)) {}

  // out [M, N] = in [M, K] (contiguous float) times the packed weight, as packed_linear computes it.
  void run(const at::Tensor& in, const at::Tensor& packed, int64_t format, int64_t N, at::Tensor& out) {
    const int64_t M = in.size(0), K = in.size(1), G = (K + kBlock - 1) / kBlock;
    TORCH_CHECK(packed.size(1) == G && G <= G_, "glassbox decode_step: a weight of ", packed.size(1) * kBlock,
                " inputs met ", K, " features");
    const QuantizedRows x{q_.data_ptr<int8_t>(), dx_.data_ptr<float>(), sum_x_.data_ptr<float>(),
                          sum_q_.data_ptr<int32_t>(), G};
    quantize_into(in.data_ptr<float>(), M, K, x);
    linear_into(packed.data_ptr<uint8_t>(), static_cast<int>(format), N, x, M, out.data_ptr<float>(), N);
  }

 private:
  int64_t G_;
  at::Tensor q_, dx_, sum_x_, sum_q_;
};

// One KV group of one sequence over keys start .. start + length - 1.
struct Run {
  int64_t b, g, start, length;
};
constexpr int64_t kRun = 512;  // keys a work item takes: short contexts stay one item per group

// The softmax over all of a group's keys from its runs' (top, total, unnormalised sum): each run's share is
// rescaled by e^(top_run - top) (the usual merge of split attention), then divided by the total.
void merge_runs(const std::vector<Run>& runs, int64_t group, int64_t d, int64_t H, const float* partial_out,
                const float* partial_stats, float* attended) {
  for (size_t first = 0; first < runs.size();) {
    size_t last = first + 1;
    while (last < runs.size() && runs[last].b == runs[first].b && runs[last].g == runs[first].g) ++last;
    const Run& run = runs[first];
    for (int64_t h = 0; h < group; ++h) {
      float top = -std::numeric_limits<float>::infinity();
      for (size_t i = first; i < last; ++i) top = std::max(top, partial_stats[(i * group + h) * 2]);
      float total = 0;
      std::vector<float> weights(last - first);
      for (size_t i = first; i < last; ++i) {
        weights[i - first] = std::exp(partial_stats[(i * group + h) * 2] - top);
        total += weights[i - first] * partial_stats[(i * group + h) * 2 + 1];
      }
      float* out = attended + run.b * H * d + (run.g * group + h) * d;
      for (int64_t k = 0; k < d; ++k) {
        float sum = 0;
        for (size_t i = first; i < last; ++i) sum += weights[i - first] * partial_out[(i * group + h) * d + k];
        out[k] = sum / total;
      }
    }
    first = last;
  }
}

// x / rms(x) * w per row of [B, D], as RMSNorm does in float32.
void rms_norm(const float* x, const float* w, int64_t B, int64_t D, double eps, float* out) {
  for (int64_t b = 0; b < B; ++b) {
    const float* row = x + b * D;
    float squares = 0;
#pragma omp simd reduction(+ : squares)
    for (int64_t i = 0; i < D; ++i) squares += row[i] * row[i];
    const float inv = 1.0f / std::sqrt(squares / static_cast<float>(D) + static_cast<float>(eps));
    for (int64_t i = 0; i < D; ++i) out[b * D + i] = row[i] * inv * w[i];
  }
}

void add_into(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

// x * cos + roll(x, d / 2) * folded_sin on every head of rows [B, heads, d], in place: the rotate-half
// of engine/layers/rope.py with its sign folded into the sine table. Two products and a sum, each rounded
// (this file is built without FMA contraction of the portable flags), as the tensor expression does.
void rotate(float* x, int64_t B, int64_t heads, int64_t stride_b, int64_t d, const float* cos, const float* sin) {
  const int64_t half = d / 2;
  std::vector<float> head(d);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < heads; ++h) {
      float* p = x + b * stride_b + h * d;
      std::memcpy(head.data(), p, d * sizeof(float));
      const float* c = cos + b * d;
      const float* s = sin + b * d;
      for (int64_t i = 0; i < d; ++i) {
        const float straight = head[i] * c[i];
        const float rolled = head[i < half ? i + half : i - half] * s[i];
        p[i] = straight + rolled;
      }
    }
}

at::Tensor decode_step(const at::Tensor& embedded, const at::Tensor& cos, const at::Tensor& folded_sin,
                       const at::Tensor& slots, const at::Tensor& block_tables, const at::Tensor& context_lens,
                       int64_t block_size, const at::Tensor& k_pool, const at::Tensor& v_pool, at::TensorList norms,
                       at::TensorList weights, at::IntArrayRef formats, at::IntArrayRef rows,
                       at::TensorList qkv_bias, int64_t n_heads, int64_t n_kv_heads, double eps,
                       std::optional<double> scale) {
  const int64_t B = embedded.size(0), D = embedded.size(1), L = k_pool.size(0), d = k_pool.size(3);
  const int64_t H = n_heads, K = n_kv_heads, group = H / K;
  TORCH_CHECK(embedded.dim() == 2 && embedded.scalar_type() == at::kFloat, "decode_step: embedded [B, D] float32");
  TORCH_CHECK(k_pool.scalar_type() == at::kFloat && k_pool.is_contiguous() && v_pool.is_contiguous() &&
                  k_pool.size(2) == K && v_pool.sizes() == k_pool.sizes() && H % K == 0,
              "decode_step: float32 pools [L, slots, K, d]");
  TORCH_CHECK(static_cast<int64_t>(norms.size()) == 2 * L + 1 && static_cast<int64_t>(weights.size()) == 4 * L + 1 &&
                  static_cast<int64_t>(formats.size()) == 4 * L + 1 && static_cast<int64_t>(rows.size()) == 4 * L + 1 &&
                  (qkv_bias.empty() || static_cast<int64_t>(qkv_bias.size()) == L),
              "decode_step: 2L + 1 norms, 4L + 1 weights, L or no qkv biases");
  TORCH_CHECK(cos.is_contiguous() && folded_sin.is_contiguous() && cos.numel() == B * d && folded_sin.numel() == B * d,
              "decode_step: cos / folded sin [B, d]");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && block_tables.is_contiguous() && block_tables.size(0) == B &&
                  context_lens.scalar_type() == at::kLong && slots.scalar_type() == at::kLong,
              "decode_step: int64 block tables [B, nb], context lengths [B] and slots [B]");
  for (const auto& n : norms) TORCH_CHECK(n.scalar_type() == at::kFloat && n.is_contiguous(), "decode_step: float32 norms");
  const int64_t F = rows[2] / 2, V = rows[4 * L];
  const float attn_scale = static_cast<float>(scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(d)));
  const auto f32 = at::TensorOptions().dtype(at::kFloat);

  // Each sequence's readable slots in position order, once for every layer: the pool index of position j
  // is block_tables[b][j / P] * P + j % P.
  const int64_t* table = block_tables.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> read(B);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lens[b] >= 1 && lens[b] <= block_tables.size(1) * block_size, "decode_step: a context length past its blocks");
    read[b].resize(lens[b]);
    for (int64_t j = 0; j < lens[b]; ++j)
      read[b][j] = table[b * block_tables.size(1) + j / block_size] * block_size + j % block_size;
  }

  Workspace& kept = workspace();
  at::Tensor x = kept.get(4, {B, D}, at::kFloat);  // the residual stream [B, D]
  x.copy_(embedded);
  at::Tensor h = kept.get(5, {B, D}, at::kFloat), projected = kept.get(6, {B, D}, at::kFloat);
  at::Tensor qkv = kept.get(7, {B, (H + 2 * K) * d}, at::kFloat), attended = kept.get(8, {B, H * d}, at::kFloat);
  at::Tensor gate_up = kept.get(9, {B, 2 * F}, at::kFloat), act = kept.get(10, {B, F}, at::kFloat);
  std::vector<Run> runs;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < K; ++g)
      for (int64_t start = 0; start < lens[b]; start += kRun)
        runs.push_back({b, g, start, std::min(kRun, lens[b] - start)});
  const int64_t n_runs = static_cast<int64_t>(runs.size());
  at::Tensor scores = kept.get(11, {n_runs * group * kRun}, at::kFloat);
  float* partial_out = kept.get(12, {n_runs * group * d}, at::kFloat).data_ptr<float>();
  float* partial_stats = kept.get(13, {n_runs * group * 2}, at::kFloat).data_ptr<float>();
  at::Tensor logits = at::empty({B, V}, f32);  // returned: the caller keeps it
  Linears linears(B, std::max({D, H * d, F}));
  const KernelTable& math = kernels();
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t qkv_row = (H + 2 * K) * d;
  float *xs = x.data_ptr<float>(), *hs = h.data_ptr<float>(), *ps = projected.data_ptr<float>();
  float *qs = qkv.data_ptr<float>(), *as = attended.data_ptr<float>();

  for (int64_t l = 0; l < L; ++l) {
    // attention: norm, q/k/v in one matmul, RoPE on q and k, K/V into their slots, each KV group of each
    // sequence over its readable slots
    rms_norm(xs, norms[2 * l].data_ptr<float>(), B, D, eps, hs);
    linears.run(h, weights[4 * l], formats[4 * l], rows[4 * l], qkv);
    if (!qkv_bias.empty())
      for (int64_t b = 0; b < B; ++b) add_into(qs + b * qkv_row, qkv_bias[l].data_ptr<float>(), qkv_row);
    rotate(qs, B, H + K, qkv_row, d, cos.data_ptr<float>(), folded_sin.data_ptr<float>());
    float* k_layer = k_pool.data_ptr<float>() + l * k_pool.stride(0);
    float* v_layer = v_pool.data_ptr<float>() + l * v_pool.stride(0);
    for (int64_t b = 0; b < B; ++b) {
      std::memcpy(k_layer + slot[b] * K * d, qs + b * qkv_row + H * d, K * d * sizeof(float));
      std::memcpy(v_layer + slot[b] * K * d, qs + b * qkv_row + (H + K) * d, K * d * sizeof(float));
    }
    // Work items: each KV group of each sequence, its keys in runs of kRun, so a long context keeps every
    // thread busy (one sequence has only K groups); the runs' partial softmaxes merge below.
    at::parallel_for(0, static_cast<int64_t>(runs.size()), 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const Run& run = runs[i];
        math.attend(qs + run.b * qkv_row + run.g * group * d, group, d, k_layer + run.g * d, v_layer + run.g * d,
                    K * d, read[run.b].data() + run.start, run.length, attn_scale,
                    scores.data_ptr<float>() + i * group * kRun,
                    partial_out + i * group * d, partial_stats + i * group * 2);
      }
    });
    merge_runs(runs, group, d, H, partial_out, partial_stats, as);
    linears.run(attended, weights[4 * l + 1], formats[4 * l + 1], rows[4 * l + 1], projected);
    add_into(xs, ps, B * D);
    // MLP: norm, gate and up in one matmul, SiLU(gate) * up, down
    rms_norm(xs, norms[2 * l + 1].data_ptr<float>(), B, D, eps, hs);
    linears.run(h, weights[4 * l + 2], formats[4 * l + 2], rows[4 * l + 2], gate_up);
    for (int64_t b = 0; b < B; ++b)
      math.silu_mul(gate_up.data_ptr<float>() + b * 2 * F, gate_up.data_ptr<float>() + b * 2 * F + F,
                    act.data_ptr<float>() + b * F, F);
    linears.run(act, weights[4 * l + 3], formats[4 * l + 3], rows[4 * l + 3], projected);
    add_into(xs, ps, B * D);
  }
  rms_norm(xs, norms[2 * L].data_ptr<float>(), B, D, eps, hs);
  linears.run(h, weights[4 * L], formats[4 * L], V, logits);
  return logits;
}

}  // namespace
}  // namespace glassbox

TORCH_LIBRARY_FRAGMENT(glassbox, m) {
  m.def("decode_step(Tensor embedded, Tensor cos, Tensor folded_sin, Tensor slots, Tensor block_tables, "
        "Tensor context_lens, int block_size, Tensor k_pool, Tensor v_pool, Tensor[] norms, Tensor[] weights, "
        "int[] formats, int[] rows, Tensor[] qkv_bias, int n_heads, int n_kv_heads, float eps, float? scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(glassbox, CPU, m) { m.impl("decode_step", glassbox::decode_step); }
