// A transformer for one new position with a KV cache, as one CPU call (see model/fused_step.py).
//
// The same arithmetic as model.layers.Transformer over one position with a cache: pre-norm
// blocks (LayerNorm, causal self-attention over the cached positions 0..position, LayerNorm,
// tanh-GELU MLP), the final LayerNorm, and optionally a head, with the model's own (out, in)
// weight matrices, stored in fp32 or bf16 (arithmetic in fp32 either way). In decoding, each
// of these matrices meets one row per sample: torch runs each as its own small kernel (~30
// per byte in MegaByte's local model), and its matrix-vector product reads a matrix that is
// not already in cache at ~9 GB/s where a plain read reaches ~65 here. Plain loops that the
// compiler vectorises do better on both counts.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kWeightsPerBlock = 12;  // norm1 w b, qkv w b, proj w b, norm2 w b, up w b, down w b

// Weights, caches, input and output are stored as T (float or bf16); all arithmetic is fp32.
inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }

template <typename T>
const T* data(const at::Tensor& t) { return t.data_ptr<T>(); }

// y (B, out) = x (B, in) W^T + b for W (out, in). Four rows of W at a time, so four
// independent sums are in flight, each row read once for all B inputs while it is in L1.
template <typename T>
void linear(const T* w, const T* b, const float* x, float* y, int64_t batch, int64_t out, int64_t in) {
  int64_t o = 0;
  for (; o + 4 <= out; o += 4) {
    const T *r0 = w + o * in, *r1 = r0 + in, *r2 = r1 + in, *r3 = r2 + in;
    for (int64_t s = 0; s < batch; ++s) {
      const float* xs = x + s * in;
      float y0 = 0.f, y1 = 0.f, y2 = 0.f, y3 = 0.f;
#pragma omp simd reduction(+ : y0, y1, y2, y3)
      for (int64_t i = 0; i < in; ++i) {
        y0 += to_float(r0[i]) * xs[i];
        y1 += to_float(r1[i]) * xs[i];
        y2 += to_float(r2[i]) * xs[i];
        y3 += to_float(r3[i]) * xs[i];
      }
      float* ys = y + s * out + o;
      ys[0] = y0 + to_float(b[o]);
      ys[1] = y1 + to_float(b[o + 1]);
      ys[2] = y2 + to_float(b[o + 2]);
      ys[3] = y3 + to_float(b[o + 3]);
    }
  }
  for (; o < out; ++o) {
    const T* row = w + o * in;
    for (int64_t s = 0; s < batch; ++s) {
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < in; ++i) sum += to_float(row[i]) * x[s * in + i];
      y[s * out + o] = sum + to_float(b[o]);
    }
  }
}

template <typename T>
void layer_norm(const float* x, const T* w, const T* b, float* y, int64_t batch, int64_t n) {
  for (int64_t s = 0; s < batch; ++s, x += n, y += n) {
    float mean = 0.f, square = 0.f;
#pragma omp simd reduction(+ : mean)
    for (int64_t i = 0; i < n; ++i) mean += x[i];
    mean /= n;
#pragma omp simd reduction(+ : square)
    for (int64_t i = 0; i < n; ++i) square += (x[i] - mean) * (x[i] - mean);
    const float scale = 1.f / std::sqrt(square / n + 1e-5f);  // nn.LayerNorm's default eps
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * scale * to_float(w[i]) + to_float(b[i]);
  }
}

// GELU, tanh form: 0.5 x (1 + tanh(u)) = x sigmoid(2u), which vectorises through exp. 2u is
// clamped to ±80, where the sigmoid is 0 or 1 in float anyway, so exp never overflows.
void gelu(float* x, int64_t n) {
  const float c = std::sqrt(2.f / static_cast<float>(M_PI));
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float two_u = std::clamp(2.f * c * (x[i] + 0.044715f * x[i] * x[i] * x[i]), -80.f, 80.f);
    x[i] = x[i] / (1.f + std::exp(-two_u));
  }
}

void add(float* x, const float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

// Rotary positions on one (heads, head_dim) vector at `pos`, as model.layers.rotate: each pair
// of channels (i, i + head_dim/2) turned by pos * frequency_i, the angle in fp32 as torch's.
void rotate(float* x, const float* frequencies, int64_t heads, int64_t head_dim, int64_t pos) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float angle = static_cast<float>(pos) * frequencies[i];
    const float c = std::cos(angle), s = std::sin(angle);
    for (int64_t h = 0; h < heads; ++h) {
      float* first = x + h * head_dim + i;
      const float a = first[0], b = first[half];
      first[0] = a * c - b * s;
      first[half] = a * s + b * c;
    }
  }
}

// One query per head against one sample's keys/values (heads, capacity, head_dim) at 0..position.
template <typename T>
void attend(const float* q, const T* keys, const T* values, float* y, int64_t heads,
            int64_t capacity, int64_t head_dim, int64_t position, float* scores) {
  const float scale = 1.f / std::sqrt(static_cast<float>(head_dim));
  for (int64_t h = 0; h < heads; ++h) {
    const float* qh = q + h * head_dim;
    const T* kh = keys + h * capacity * head_dim;
    const T* vh = values + h * capacity * head_dim;
    float top = std::numeric_limits<float>::lowest();
    for (int64_t j = 0; j <= position; ++j) {
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < head_dim; ++i) s += qh[i] * to_float(kh[j * head_dim + i]);
      scores[j] = s * scale;
      top = std::max(top, scores[j]);
    }
    float total = 0.f;
    for (int64_t j = 0; j <= position; ++j) total += scores[j] = std::exp(scores[j] - top);
    float* yh = y + h * head_dim;
    std::fill_n(yh, head_dim, 0.f);
    for (int64_t j = 0; j <= position; ++j) {
      const float weight = scores[j] / total;
#pragma omp simd
      for (int64_t i = 0; i < head_dim; ++i) yh[i] += weight * to_float(vh[j * head_dim + i]);
    }
  }
}

template <typename T>
at::Tensor step(const at::Tensor& x, int64_t pos, const std::vector<at::Tensor>& w, at::TensorList cache,
                int64_t heads, bool with_head, const float* frequencies) {
  const int64_t blocks = static_cast<int64_t>(cache.size()) / 2;
  const int64_t batch = x.size(0), dim = x.size(1), head_dim = dim / heads;
  const int64_t hidden = blocks ? w[8].size(0) : 0, capacity = blocks ? cache[0].size(2) : 1;
  TORCH_CHECK(0 <= pos && pos < capacity, "position outside the cache");
  std::vector<float> h(batch * dim), normed(batch * dim), qkv(batch * 3 * dim), mixed(batch * dim),
      up(batch * hidden), scores(capacity);
  const T* input = x.data_ptr<T>();
  for (int64_t i = 0; i < batch * dim; ++i) h[i] = to_float(input[i]);
  for (int64_t l = 0; l < blocks; ++l) {
    const at::Tensor* p = &w[l * kWeightsPerBlock];
    layer_norm(h.data(), data<T>(p[0]), data<T>(p[1]), normed.data(), batch, dim);
    linear(data<T>(p[2]), data<T>(p[3]), normed.data(), qkv.data(), batch, 3 * dim, dim);
    for (int64_t s = 0; s < batch; ++s) {
      // qkv holds q, k, v one after the other, each as (heads, head_dim)
      float* q = &qkv[s * 3 * dim];
      if (frequencies) {
        rotate(q, frequencies, heads, head_dim, pos);
        rotate(q + dim, frequencies, heads, head_dim, pos);
      }
      T* keys = cache[2 * l].data_ptr<T>() + s * heads * capacity * head_dim;
      T* values = cache[2 * l + 1].data_ptr<T>() + s * heads * capacity * head_dim;
      for (int64_t hh = 0; hh < heads; ++hh) {
        for (int64_t i = 0; i < head_dim; ++i) {
          keys[(hh * capacity + pos) * head_dim + i] = static_cast<T>(q[dim + hh * head_dim + i]);
          values[(hh * capacity + pos) * head_dim + i] = static_cast<T>(q[2 * dim + hh * head_dim + i]);
        }
      }
      attend(q, keys, values, &normed[s * dim], heads, capacity, head_dim, pos, scores.data());
    }
    linear(data<T>(p[4]), data<T>(p[5]), normed.data(), mixed.data(), batch, dim, dim);
    add(h.data(), mixed.data(), batch * dim);
    layer_norm(h.data(), data<T>(p[6]), data<T>(p[7]), normed.data(), batch, dim);
    linear(data<T>(p[8]), data<T>(p[9]), normed.data(), up.data(), batch, hidden, dim);
    gelu(up.data(), batch * hidden);
    linear(data<T>(p[10]), data<T>(p[11]), up.data(), mixed.data(), batch, dim, hidden);
    add(h.data(), mixed.data(), batch * dim);
  }
  const int64_t last = blocks * kWeightsPerBlock;
  layer_norm(h.data(), data<T>(w[last]), data<T>(w[last + 1]), normed.data(), batch, dim);
  std::vector<float> logits;
  if (with_head) {
    logits.resize(batch * w[last + 2].size(0));
    linear(data<T>(w[last + 2]), data<T>(w[last + 3]), normed.data(), logits.data(), batch, w[last + 2].size(0), dim);
  }
  const std::vector<float>& result = with_head ? logits : normed;
  at::Tensor out = at::empty({batch, static_cast<int64_t>(result.size()) / batch}, x.options());
  T* o = out.data_ptr<T>();
  for (size_t i = 0; i < result.size(); ++i) o[i] = static_cast<T>(result[i]);
  return out;
}

}  // namespace

// Every shape the loops rely on, checked before any is used: the operator writes the caches.
void check_shapes(const at::Tensor& x, at::TensorList w, at::TensorList cache, int64_t heads, int64_t blocks,
                  bool with_head, const at::Tensor& rotary) {
  const int64_t batch = x.size(0), dim = x.size(1);
  TORCH_CHECK(heads > 0 && dim % heads == 0, "heads must divide the width");
  const int64_t hidden = blocks ? w[8].size(0) : 0;
  auto expect = [](const at::Tensor& t, std::vector<int64_t> shape, const char* what) {
    TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), what, " has shape ", t.sizes(), ", expected ", at::IntArrayRef(shape));
  };
  for (int64_t l = 0; l < blocks; ++l) {
    const at::Tensor* p = &w[l * kWeightsPerBlock];
    expect(p[0], {dim}, "norm1.weight");
    expect(p[1], {dim}, "norm1.bias");
    expect(p[2], {3 * dim, dim}, "qkv.weight");
    expect(p[3], {3 * dim}, "qkv.bias");
    expect(p[4], {dim, dim}, "proj.weight");
    expect(p[5], {dim}, "proj.bias");
    expect(p[6], {dim}, "norm2.weight");
    expect(p[7], {dim}, "norm2.bias");
    expect(p[8], {hidden, dim}, "up.weight");
    expect(p[9], {hidden}, "up.bias");
    expect(p[10], {dim, hidden}, "down.weight");
    expect(p[11], {dim}, "down.bias");
    const int64_t capacity = cache[0].size(2);
    expect(cache[2 * l], {batch, heads, capacity, dim / heads}, "keys");
    expect(cache[2 * l + 1], {batch, heads, capacity, dim / heads}, "values");
  }
  const int64_t last = blocks * kWeightsPerBlock;
  expect(w[last], {dim}, "norm.weight");
  expect(w[last + 1], {dim}, "norm.bias");
  if (with_head) {
    TORCH_CHECK(w[last + 2].dim() == 2 && w[last + 2].size(1) == dim, "head.weight must be (V, width)");
    expect(w[last + 3], {w[last + 2].size(0)}, "head.bias");
  }
  if (rotary.numel()) {
    TORCH_CHECK((dim / heads) % 2 == 0, "rotary positions need an even head width");
    TORCH_CHECK(rotary.scalar_type() == at::kFloat && rotary.is_contiguous(), "rotary frequencies in fp32");
    expect(rotary, {dim / heads / 2}, "rotary frequencies");
  }
}

// x (B, D): the input at `position` (a one-element tensor); weights: kWeightsPerBlock per
// block, the final norm's w b, then optionally a head's w b; cache: keys and values
// (B, heads, capacity, D / heads) per block, written at `position`. All fp32, or all bf16.
// rotary: the inverse frequencies (D / heads / 2, fp32) of rotary positions, or empty for none.
// -> (B, D) after the final norm, or the head's (B, V).
at::Tensor transformer_step(const at::Tensor& x, const at::Tensor& position, at::TensorList weights,
                            at::TensorList cache, int64_t heads, const at::Tensor& rotary) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK((dtype == at::kFloat || dtype == at::kBFloat16) && x.dim() == 2,
              "transformer_step takes fp32 or bf16 inputs (B, D)");
  TORCH_CHECK(x.device().is_cpu() && position.numel() == 1, "a CPU input and one position");
  const int64_t blocks = static_cast<int64_t>(weights.size()) / kWeightsPerBlock;
  const int64_t extra = static_cast<int64_t>(weights.size()) - blocks * kWeightsPerBlock;
  TORCH_CHECK(extra == 2 || extra == 4, "12 weights per block, the final norm's, and a head's if any");
  TORCH_CHECK(static_cast<int64_t>(cache.size()) == 2 * blocks, "one keys and one values tensor per block");
  std::vector<at::Tensor> w;
  for (const auto& t : weights) {
    TORCH_CHECK(t.scalar_type() == dtype && t.device().is_cpu(), "weights on the CPU in the input's dtype");
    w.push_back(t.contiguous());  // the model's own parameters are contiguous already: no copy
  }
  for (const auto& t : cache)
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == dtype && t.device().is_cpu() && t.dim() == 4,
                "contiguous (B, heads, capacity, head width) caches on the CPU in the input's dtype");
  check_shapes(x, w, cache, heads, blocks, extra == 4, rotary);
  const at::Tensor input = x.contiguous();
  const int64_t pos = position.item<int64_t>();
  const float* frequencies = rotary.numel() ? rotary.data_ptr<float>() : nullptr;
  return dtype == at::kFloat ? step<float>(input, pos, w, cache, heads, extra == 4, frequencies)
                             : step<c10::BFloat16>(input, pos, w, cache, heads, extra == 4, frequencies);
}

TORCH_LIBRARY(megabyte, m) {
  m.def("transformer_step(Tensor x, Tensor position, Tensor[] weights, Tensor(a!)[] cache, int heads, "
        "Tensor rotary) -> Tensor");
}

TORCH_LIBRARY_IMPL(megabyte, CPU, m) { m.impl("transformer_step", &transformer_step); }
