// A transformer for one new position with a KV cache, as one CPU call (see model/fused_step.py),
// and the local model's whole patch with its sampling, as another.
//
// The same arithmetic as model.layers.Transformer over one position with a cache: pre-norm
// blocks (LayerNorm, causal self-attention over the cached positions 0..position, LayerNorm,
// tanh-GELU MLP), the final LayerNorm, and optionally a head, with the model's own (out, in)
// weight matrices, stored in fp32 or bf16. Sums are in fp32; with bf16 weights the products'
// inputs are rounded to bf16, as in torch's bf16 layers. In decoding, each of these matrices
// meets one row per sample: torch runs each as its own small kernel (~30 per byte in
// MegaByte's local model), and its matrix-vector product reads a matrix that is not already in
// cache at ~9 GB/s where a plain read reaches ~65 here. Blocked kernels (AVX-512, and
// AVX512-BF16 dot products for bf16 weights, where -march=native finds them; plain vectorised
// loops elsewhere) do better on both counts. Over a long cache, attention is a read of every
// cached key and value per step (melody_long's global model: 134 MB at 16,384 positions in fp32): a
// kernel with the query and output in registers reads them near the memory's speed, its
// (sample, head) pairs on torch's intra-op threads.
//
// local_patch draws a patch's bytes as model.sampling.sample does (temperature, top-k, top-p,
// min-p; one uniform number per byte), so that per byte nothing returns to Python.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kWeightsPerBlock = 12;  // norm1 w b, qkv w b, proj w b, norm2 w b, up w b, down w b

// Weights, caches, input and output are stored as T (float or bf16); all arithmetic is fp32.
inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }

template <typename T>
const T* data(const at::Tensor& t) { return t.data_ptr<T>(); }

// Matrix-vector products, y (B, out) = x (B, in) W^T + b for W (out, in): each step multiplies
// every weight matrix by one row per sample, so reading W dominates. The kernels below take R
// rows of W and S samples at a time, R*S sums in registers: each weight vector is loaded once
// for S samples, and the R*S independent sums keep the FMA units busy. Sample groups run
// inside each block of rows, so a block read from memory stays in L1 for the next group.
#if defined(__AVX512F__)
// Loops over the R*S sums, fully unrolled: otherwise GCC stores every sum to the stack at every
// step (measured: twice as many stores as FMAs), which costs more than the FMAs.
#define UNROLLED _Pragma("GCC unroll 16")

inline __mmask16 first16(int64_t n) { return n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1); }

// `bytes` from p on into L1 (a prefetch never faults, but the callers keep to their arrays)
inline void prefetch(const void* p, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(static_cast<const char*>(p) + b, _MM_HINT_T0);
}

// exp per lane, as Cephes' expf: x = n ln2 + r with |r| <= ln2/2, e^r by its polynomial, and
// 2^n by scalef (denormals, then 0, as expf). Within 1.3 ulp of exp on every float in
// [-110, 80], attention's scores (<= 0) and GELU's range; lower x is clamped to -110, where
// e^x is 0 in fp32 anyway, so that r stays small; a NaN stays NaN. One expf call per score
// made a step over a full bf16 cache ~40% slower.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-110.f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 in two parts, n times this one exact
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// Lane i of the result: the sum of rows[i]'s 16 lanes, added as GCC's _mm512_reduce_add_ps adds
// them (lanes j and j + 8, then j and j + 4 of those sums, j and j + 2, j and j + 1), for 16
// rows at once: 45 instructions where 16 horizontal sums take ~140 (with those, the local
// model's products of 128 inputs took 4% longer a patch at batch 8).
// Inlined, so that the rows stay in registers: as a call, GCC's choice, it took a third of the
// products' time at batch 8.
[[gnu::always_inline]] inline __m512 sums_of(const __m512 (&rows)[16]) {
  // the pairing below leaves the sum of its input 4 j + n in lane 4 n + j: it reads the rows so
  const auto row = [&](int k) { return rows[k % 4 * 4 + k / 4]; };
  __m512 eight[8], four[4], two[2];
  UNROLLED for (int i = 0; i < 8; ++i)  // per row of two: lanes j + j+8, 8 sums in 256 bits
    eight[i] = _mm512_add_ps(_mm512_shuffle_f32x4(row(2 * i), row(2 * i + 1), _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(row(2 * i), row(2 * i + 1), _MM_SHUFFLE(3, 2, 3, 2)));
  UNROLLED for (int i = 0; i < 4; ++i)  // per row of four: j + j+4, 4 sums in 128 bits
    four[i] = _mm512_add_ps(_mm512_shuffle_f32x4(eight[2 * i], eight[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_f32x4(eight[2 * i], eight[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  UNROLLED for (int i = 0; i < 2; ++i) {  // per row of eight: j + j+2, 2 sums in 64 bits
    const __m512d a = _mm512_castps_pd(four[2 * i]), b = _mm512_castps_pd(four[2 * i + 1]);
    two[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(two[0], two[1], _MM_SHUFFLE(2, 0, 2, 0)),  // j + j+1
                       _mm512_shuffle_ps(two[0], two[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// y[s * out + r] = the sum of sums[r][s]'s lanes, for R * S <= 16
template <int R, int S>
inline void store_sums(const __m512 (&sums)[R][S], float* y, int64_t out) {
  static_assert(R * S <= 16);
  __m512 rows[16];
  UNROLLED for (int i = 0; i < 16; ++i) rows[i] = i < R * S ? sums[i % R][i / R] : _mm512_setzero_ps();
  const __m512 lanes = sums_of(rows);  // lane s R + r: sums[r][s]'s sum
  UNROLLED for (int s = 0; s < S; ++s)  // lanes s R.. to y + s out..
    _mm512_mask_storeu_ps(y + s * (out - R), static_cast<__mmask16>(((1u << R) - 1) << (s * R)), lanes);
}

// y[s * out + r] = W row r · x row s, for fp32 weights and inputs
template <int R, int S>
void dots(const float* w, const float* x, float* y, int64_t in, int64_t out) {
  __m512 sum[R][S];
  UNROLLED for (int r = 0; r < R; ++r)
    UNROLLED for (int s = 0; s < S; ++s) sum[r][s] = _mm512_setzero_ps();
  for (int64_t i = 0; i < in; i += 16) {
    const __mmask16 m = first16(in - i);
    __m512 xs[S];
    UNROLLED for (int s = 0; s < S; ++s) xs[s] = _mm512_maskz_loadu_ps(m, x + s * in + i);
    UNROLLED for (int r = 0; r < R; ++r) {
      const __m512 wr = _mm512_maskz_loadu_ps(m, w + r * in + i);
      UNROLLED for (int s = 0; s < S; ++s) sum[r][s] = _mm512_fmadd_ps(wr, xs[s], sum[r][s]);
    }
  }
  store_sums(sum, y, out);
}
#endif

#if defined(__AVX512BF16__)
inline __mmask32 first32(int64_t n) { return n >= 32 ? 0xFFFFFFFFu : static_cast<__mmask32>((1u << n) - 1); }

// The same for bf16 weights and inputs: _mm512_dpbf16_ps multiplies 32 pairs at once and sums
// each two neighbours' products into one of 16 fp32 sums.
template <int R, int S>
void dots(const c10::BFloat16* w, const c10::BFloat16* x, float* y, int64_t in, int64_t out) {
  __m512 sum[R][S];
  UNROLLED for (int r = 0; r < R; ++r)
    UNROLLED for (int s = 0; s < S; ++s) sum[r][s] = _mm512_setzero_ps();
  for (int64_t i = 0; i < in; i += 32) {
    const __mmask32 m = first32(in - i);
    __m512bh xs[S];
    UNROLLED for (int s = 0; s < S; ++s) xs[s] = (__m512bh)_mm512_maskz_loadu_epi16(m, x + s * in + i);
    UNROLLED for (int r = 0; r < R; ++r) {
      const __m512bh wr = (__m512bh)_mm512_maskz_loadu_epi16(m, w + r * in + i);
      UNROLLED for (int s = 0; s < S; ++s) sum[r][s] = _mm512_dpbf16_ps(sum[r][s], wr, xs[s]);
    }
  }
  store_sums(sum, y, out);
}
#endif

#if defined(__AVX512F__)
// R rows of W (at w) against every sample, up to four at a time while the rows are in L1.
template <int R, typename T>
void rows_times_samples(const T* w, const T* x, float* y, int64_t batch, int64_t out, int64_t in) {
  for (int64_t s = 0; s < batch; s += 4) {
    const T* xs = x + s * in;
    float* ys = y + s * out;
    switch (std::min<int64_t>(batch - s, 4)) {
      case 1: dots<R, 1>(w, xs, ys, in, out); break;
      case 2: dots<R, 2>(w, xs, ys, in, out); break;
      case 3: dots<R, 3>(w, xs, ys, in, out); break;
      default: dots<R, 4>(w, xs, ys, in, out); break;
    }
  }
}

// Rows kAhead on are prefetched into L1 as each block starts: the global model's weights come
// from memory or L3 at every step, and on the hardware's prefetcher alone its step at batch 8
// took ~13% longer.
template <typename T>
void blocked_product(const T* w, const T* x, float* y, int64_t batch, int64_t out, int64_t in) {
  constexpr int64_t kAhead = 16;
  int64_t o = 0;
  if (batch == 1)  // blocks of 8 rows: one sample's 4 sums alone would wait on each other's FMAs
    for (; o + 8 <= out; o += 8) {
      if (o + kAhead + 8 <= out) prefetch(w + (o + kAhead) * in, 8 * in * static_cast<int64_t>(sizeof(T)));
      dots<8, 1>(w + o * in, x, y + o, in, out);
    }
  for (; o + 4 <= out; o += 4) {
    if (o + kAhead + 4 <= out) prefetch(w + (o + kAhead) * in, 4 * in * static_cast<int64_t>(sizeof(T)));
    rows_times_samples<4>(w + o * in, x, y + o, batch, out, in);
  }
  for (; o < out; ++o) rows_times_samples<1>(w + o * in, x, y + o, batch, out, in);
}
#endif

// The portable product, where the CPU has none of the kernels above: loops the compiler vectorises.
template <typename T>
void plain_product(const T* w, const float* x, float* y, int64_t batch, int64_t out, int64_t in) {
  for (int64_t o = 0; o < out; ++o) {
    const T* row = w + o * in;
    for (int64_t s = 0; s < batch; ++s) {
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < in; ++i) sum += to_float(row[i]) * x[s * in + i];
      y[s * out + o] = sum;
    }
  }
}

void product(const float* w, const float* x, float* y, int64_t batch, int64_t out, int64_t in) {
#if defined(__AVX512F__)
  blocked_product(w, x, y, batch, out, in);
#else
  plain_product(w, x, y, batch, out, in);
#endif
}

#if defined(__AVX512BF16__)
// x (n) rounded to bf16, to nearest even as c10::BFloat16 rounds, 16 at a time; a denormal
// becomes 0. As bits: a vector of c10::BFloat16 is filled one element at a time when made.
std::vector<uint16_t> to_bf16(const float* x, int64_t n) {
  std::vector<uint16_t> rounded(n);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first16(n - i);
    _mm256_mask_storeu_epi16(rounded.data() + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i)));
  }
  return rounded;
}
#endif

void product(const c10::BFloat16* w, const float* x, float* y, int64_t batch, int64_t out, int64_t in) {
#if defined(__AVX512BF16__)
  const std::vector<uint16_t> rounded = to_bf16(x, batch * in);  // bf16 inputs, as torch's bf16 layers have
  blocked_product(w, reinterpret_cast<const c10::BFloat16*>(rounded.data()), y, batch, out, in);
#else
  plain_product(w, x, y, batch, out, in);
#endif
}

template <typename T>
void linear(const T* w, const T* b, const float* x, float* y, int64_t batch, int64_t out, int64_t in) {
  product(w, x, y, batch, out, in);
  for (int64_t s = 0; s < batch; ++s)
    for (int64_t o = 0; o < out; ++o) y[s * out + o] += to_float(b[o]);
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

// GELU, tanh form: 0.5 x (1 + tanh(u)) = x sigmoid(2u), through exp. 2u is clamped to ±80,
// where the sigmoid is 0 or 1 in float anyway, so exp never overflows. GCC calls expf once per
// value here (it vectorises exp only with -ffast-math): that took a third of a local step at
// batch 8, hence exp16 where there is AVX-512.
void gelu(float* x, int64_t n) {
  const float two_c = 2.f * std::sqrt(2.f / static_cast<float>(M_PI));
#if defined(__AVX512F__)
  const __m512 limit = _mm512_set1_ps(80.f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first16(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    const __m512 cube = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
    __m512 two_u = _mm512_mul_ps(_mm512_set1_ps(two_c), _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), cube, v));
    two_u = _mm512_min_ps(limit, _mm512_max_ps(-limit, two_u));  // a NaN, the second operand, stays NaN
    _mm512_mask_storeu_ps(x + i, m, _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.f), exp16(-two_u))));
  }
#else
  for (int64_t i = 0; i < n; ++i) {
    const float two_u = std::clamp(two_c * (x[i] + 0.044715f * x[i] * x[i] * x[i]), -80.f, 80.f);
    x[i] = x[i] / (1.f + std::exp(-two_u));
  }
#endif
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

// Attention for one query over a long cache is a read of its keys and values (the global
// model's: 134 MB in fp32 at 16,384 positions), so it should run at the memory's speed.
// Over caches this long, a step's (sample, head) pairs run on torch's intra-op threads
// (at::parallel_for); shorter ones, like the local model's P positions, cost less than
// waking a thread. Each pair is one thread's, in one order: the thread count never shows.
constexpr int64_t kParallelFrom = 256;

// One head: softmax(q·k_j / √head_dim) over j = 0..n-1, times the values -> y (head_dim).
// scores: scratch for n floats.
template <typename T>
void plain_head(const float* q, const T* k, const T* v, float* y, int64_t head_dim, int64_t n, float* scores) {
  const float scale = 1.f / std::sqrt(static_cast<float>(head_dim));
  float top = std::numeric_limits<float>::lowest();
  for (int64_t j = 0; j < n; ++j) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < head_dim; ++i) s += q[i] * to_float(k[j * head_dim + i]);
    scores[j] = s * scale;
    top = std::max(top, scores[j]);
  }
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = std::exp(scores[j] - top);
    total += scores[j];
  }
  std::fill_n(y, head_dim, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    const float weight = scores[j] / total;
#pragma omp simd
    for (int64_t i = 0; i < head_dim; ++i) y[i] += weight * to_float(v[j * head_dim + i]);
  }
}

#if defined(__AVX512F__)
// 16 stored values as fp32 (a bf16 is the upper half of an fp32).
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// q · k_j for 16 positions' keys (rows of 16 N values at k), the first `rows` of them; the
// rest, which may lie past the cache's end, are not read.
template <int N, typename T>
inline __m512 scores16(const __m512 (&q)[N], const T* k, int rows) {
  __m512 partial[16];
  UNROLLED for (int r = 0; r < 16; ++r) {
    partial[r] = _mm512_setzero_ps();
    if (r < rows)
      UNROLLED for (int i = 0; i < N; ++i) partial[r] = _mm512_fmadd_ps(q[i], load16(k + (r * N + i) * 16), partial[r]);
  }
  return sums_of(partial);
}

// 16 rows of `width` values, from 48 rows ahead, into L1 (the caller checks they are the
// head's): with the hardware's prefetcher alone, a step over a full bf16 cache took ~30% longer.
template <typename T>
inline void prefetch_rows(const T* rows, int64_t width) {
  prefetch(rows + 48 * width, 16 * width * static_cast<int64_t>(sizeof(T)));
}

// plain_head for head_dim = 16 N, in two passes: the scores 16 positions at a time with the
// query in registers, then the weighted sum of the values with the output in registers.
// scores: scratch for n rounded up to 16 floats.
template <int N, typename T>
void vector_head(const float* query, const T* k, const T* v, float* y, int64_t n, float* scores) {
  constexpr int64_t kWidth = 16 * N;
  const __m512 scale = _mm512_set1_ps(1.f / std::sqrt(static_cast<float>(kWidth)));
  __m512 q[N];
  UNROLLED for (int i = 0; i < N; ++i) q[i] = _mm512_loadu_ps(query + 16 * i);
  __m512 top = _mm512_set1_ps(std::numeric_limits<float>::lowest());
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    if (j + 64 <= n) prefetch_rows(k + j * kWidth, kWidth);
    const __m512 s = _mm512_mul_ps(scores16<N>(q, k + j * kWidth, 16), scale);
    _mm512_storeu_ps(scores + j, s);
    top = _mm512_max_ps(top, s);
  }
  if (j < n) {
    const __m512 s = _mm512_mul_ps(scores16<N>(q, k + j * kWidth, static_cast<int>(n - j)), scale);
    _mm512_storeu_ps(scores + j, s);
    top = _mm512_mask_max_ps(top, first16(n - j), top, s);
  }
  const __m512 peak = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  __m512 out[N], total = _mm512_setzero_ps();
  UNROLLED for (int i = 0; i < N; ++i) out[i] = _mm512_setzero_ps();
  alignas(64) float weights[16];
  for (j = 0; j < n; j += 16) {
    const int64_t rows = std::min<int64_t>(16, n - j);
    const __m512 w = _mm512_maskz_mov_ps(first16(rows), exp16(_mm512_sub_ps(_mm512_loadu_ps(scores + j), peak)));
    total = _mm512_add_ps(total, w);
    _mm512_store_ps(weights, w);
    if (j + 64 <= n) prefetch_rows(v + j * kWidth, kWidth);
    for (int64_t r = 0; r < rows; ++r) {
      const __m512 weight = _mm512_set1_ps(weights[r]);
      const T* row = v + (j + r) * kWidth;
      UNROLLED for (int i = 0; i < N; ++i) out[i] = _mm512_fmadd_ps(weight, load16(row + 16 * i), out[i]);
    }
  }
  const __m512 inverse = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(total));
  UNROLLED for (int i = 0; i < N; ++i) _mm512_storeu_ps(y + 16 * i, _mm512_mul_ps(out[i], inverse));
}

// vector_head for head_dim = 16 N, N <= kMost (the query and output in 2 N registers, of 32),
// where it is; false for other widths.
template <int kMost, typename T>
bool vector_head_of_width(const float* q, const T* k, const T* v, float* y, int64_t head_dim, int64_t n,
                          float* scores) {
  if (head_dim == 16 * kMost) {
    vector_head<kMost>(q, k, v, y, n, scores);
    return true;
  }
  if constexpr (kMost > 1) return vector_head_of_width<kMost - 1>(q, k, v, y, head_dim, n, scores);
  return false;
}
#endif

// Each sample's query per head (in qkv, rows of q, k, v, each (heads, head_dim)) against its
// keys/values (B, heads, capacity, head_dim) at 0..position -> y (B, heads * head_dim).
template <typename T>
void attend(const float* qkv, const T* keys, const T* values, float* y, int64_t batch, int64_t heads,
            int64_t capacity, int64_t head_dim, int64_t position) {
  const int64_t dim = heads * head_dim, n = position + 1, pairs = batch * heads;
  at::parallel_for(0, pairs, position >= kParallelFrom ? 1 : pairs, [&](int64_t begin, int64_t end) {
    std::vector<float> scores((n + 15) / 16 * 16);
    for (int64_t pair = begin; pair < end; ++pair) {
      const float* q = qkv + pair / heads * 3 * dim + pair % heads * head_dim;
      const T* k = keys + pair * capacity * head_dim;
      const T* v = values + pair * capacity * head_dim;
      float* yh = y + pair * head_dim;  // (B, heads, head_dim) is (B, width)
#if defined(__AVX512F__)
      if (vector_head_of_width<8>(q, k, v, yh, head_dim, n, scores.data())) continue;
#endif
      plain_head(q, k, v, yh, head_dim, n, scores.data());
    }
  });
}

// h (B, D), the input at `pos`, through every block, the final norm and the head if there is
// one -> (B, D), or the head's (B, V), in fp32; writes the caches at `pos`.
template <typename T>
std::vector<float> forward(std::vector<float> h, int64_t pos, const std::vector<at::Tensor>& w, at::TensorList cache,
                           int64_t heads, bool with_head, const float* frequencies) {
  const int64_t blocks = static_cast<int64_t>(cache.size()) / 2;
  const int64_t dim = w[blocks * kWeightsPerBlock].size(0), batch = static_cast<int64_t>(h.size()) / dim;
  const int64_t head_dim = dim / heads;
  const int64_t hidden = blocks ? w[8].size(0) : 0, capacity = blocks ? cache[0].size(2) : 1;
  TORCH_CHECK(0 <= pos && pos < capacity, "position outside the cache");
  std::vector<float> normed(batch * dim), qkv(batch * 3 * dim), mixed(batch * dim), up(batch * hidden);
  for (int64_t l = 0; l < blocks; ++l) {
    const at::Tensor* p = &w[l * kWeightsPerBlock];
    layer_norm(h.data(), data<T>(p[0]), data<T>(p[1]), normed.data(), batch, dim);
    linear(data<T>(p[2]), data<T>(p[3]), normed.data(), qkv.data(), batch, 3 * dim, dim);
    T* keys = cache[2 * l].data_ptr<T>();
    T* values = cache[2 * l + 1].data_ptr<T>();
    for (int64_t s = 0; s < batch; ++s) {
      // qkv holds q, k, v one after the other, each as (heads, head_dim)
      float* q = &qkv[s * 3 * dim];
      if (frequencies) {
        rotate(q, frequencies, heads, head_dim, pos);
        rotate(q + dim, frequencies, heads, head_dim, pos);
      }
      for (int64_t hh = 0; hh < heads; ++hh) {
        const int64_t at = ((s * heads + hh) * capacity + pos) * head_dim;
        for (int64_t i = 0; i < head_dim; ++i) {
          keys[at + i] = static_cast<T>(q[dim + hh * head_dim + i]);
          values[at + i] = static_cast<T>(q[2 * dim + hh * head_dim + i]);
        }
      }
    }
    attend(qkv.data(), keys, values, normed.data(), batch, heads, capacity, head_dim, pos);
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
  if (!with_head) return normed;
  const int64_t vocab = w[last + 2].size(0);
  std::vector<float> logits(batch * vocab);
  linear(data<T>(w[last + 2]), data<T>(w[last + 3]), normed.data(), logits.data(), batch, vocab, dim);
  return logits;
}

// A sampling rule, Sampling.knobs' first four: the C++ sampler draws by these alone.
struct Rule {
  float temperature;
  int64_t top_k;
  float top_p, min_p;
};

// Sample s's rule from knobs (7,), one rule for all, or (B, 7), a rule per sample.
Rule rule_of(const at::Tensor& knobs, int64_t s) {
  const float* k = knobs.data_ptr<float>() + (knobs.dim() == 2 ? s * knobs.size(1) : 0);
  return {k[0], static_cast<int64_t>(k[1]), k[2], k[3]};
}

// The float's bits as an unsigned integer of the same order: larger floats, larger integers;
// -0 as +0, which torch's sort ties with it.
uint32_t ordered_bits(float v) {
  v += 0.f;  // -0 + 0 is +0
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits & 0x80000000u ? ~bits : bits | 0x80000000u;
}

// Draws bytes as model.sampling.sample does: the bytes ranked likeliest first, the rules keep
// the first few, and `uniform` times their probability falls in one byte's share of their
// cumulative distribution. Its buffers serve every draw of a call.
class Sampler {
 public:
  explicit Sampler(int64_t vocab) : probs_(vocab), ranked_(vocab), spare_(vocab) {}

  // One byte drawn from logits (vocab).
  int64_t draw(const float* logits, const Rule& rule, float uniform) {
    const int64_t n = static_cast<int64_t>(probs_.size());
    const int64_t top = std::max_element(logits, logits + n) - logits;  // the first of equal maxima
    if (!(rule.temperature > 0)) return top;  // greedy
    softmax(logits, std::max(rule.temperature, 1e-4f), logits[top]);
    // The bytes min-p keeps, as keys that sort likeliest first and, among equal logits, the
    // lower byte first (torch's stable sort): the logit's order inverted, then the byte.
    kept_ = sorted_ = 0;
    for (int64_t i = 0; i < n; ++i)
      if (probs_[i] >= rule.min_p * probs_[top]) ranked_[kept_++] = uint64_t{~ordered_bits(logits[i])} << 32 | i;
    if (rule.top_p < 1) {  // its walk goes as far as top_p of the probability: often every rank
      radix_sort(ranked_.data(), kept_);
      sorted_ = kept_;
    }
    if (rule.top_k < kept_) {  // top-k: the first k (in any order, unless top-p sorted them)
      if (!sorted_) keep_smallest(rule.top_k);
      kept_ = rule.top_k;
      sorted_ = std::min(sorted_, kept_);
    }
    // Cumulative probabilities are summed in double and rounded to float, as torch's cumsum
    // does; so the kept bytes' total is the same float summed in any order (but within double
    // rounding of a float's halfway point), and only top-p needs the ranks to find it.
    double total = 0;
    if (rule.top_p < 1) {
      for (int64_t r = 0; r < kept_; ++r) {
        const float p = probs_[byte(r)];
        // top-p keeps a byte while the probability ranked before it is under top_p, computed as
        // torch computes it (cdf - p); the first always
        if (r > 0 && static_cast<float>(total + p) - p >= rule.top_p) {
          kept_ = r;
          break;
        }
        total += p;
      }
    } else {  // top_p 1 keeps every byte (torch's cdf - p may reach 1 before the last, by rounding)
      for (int64_t r = 0; r < kept_; ++r) total += probs_[ranked_[r] & 0xFFFFFFFFu];
    }
    const float target = uniform * static_cast<float>(total);
    double cdf = 0;
    for (int64_t r = 0; r + 1 < kept_; ++r) {
      cdf += probs_[byte(r)];
      if (static_cast<float>(cdf) > target) return byte(r);
    }
    return byte(kept_ - 1);
  }

 private:
  // probs_ = softmax(logits / temperature), top_logit the largest
  void softmax(const float* logits, float temperature, float top_logit) {
    const int64_t n = static_cast<int64_t>(probs_.size());
    float* probs = probs_.data();
    const float peak = top_logit / temperature;
    float total = 0.f;
#if defined(__AVX512F__)  // exp16: GCC calls expf once per logit (see gelu)
    __m512 sums = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = first16(n - i);
      const __m512 scaled = _mm512_div_ps(_mm512_maskz_loadu_ps(m, logits + i), _mm512_set1_ps(temperature));
      const __m512 e = exp16(_mm512_sub_ps(scaled, _mm512_set1_ps(peak)));
      sums = _mm512_mask_add_ps(sums, m, sums, e);
      _mm512_mask_storeu_ps(probs + i, m, e);
    }
    total = _mm512_reduce_add_ps(sums);
#else
#pragma omp simd reduction(+ : total)
    for (int64_t i = 0; i < n; ++i) {
      probs[i] = std::exp(logits[i] / temperature - peak);
      total += probs[i];
    }
#endif
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) probs[i] /= total;
  }

  // The byte at rank r of the kept ones. Unless top-p sorted them all, ranks are sorted in
  // blocks as the walk reaches them: a draw seldom walks far, and sorting every kept byte by
  // std::sort made plain sampling (top-k 256) slower than top-k 50.
  int64_t byte(int64_t r) {
    constexpr int64_t kBlock = 32;
    if (r >= sorted_) {
      const auto begin = ranked_.begin() + sorted_, end = begin + std::min(kBlock, kept_ - sorted_);
      std::nth_element(begin, end, ranked_.begin() + kept_);
      std::sort(begin, end);
      sorted_ = end - ranked_.begin();
    }
    return static_cast<int64_t>(ranked_[r] & 0xFFFFFFFFu);
  }

  // Moves the k smallest of the kept keys to the front, in the order they come: the k-th
  // smallest found a byte of the key at a time from the highest (a radix select), then every
  // key up to it taken, without branches. With std::nth_element's partitions, which branch on
  // every key, bench.speed's compiled patch step at batch 8 (top-k 50) took ~13% longer.
  void keep_smallest(int64_t k) {
    uint64_t prefix = 0, mask = 0;  // the k-th smallest key's bytes found so far
    for (int shift = 56; shift >= 0; shift -= 8) {
      int64_t count[256] = {};
      for (int64_t i = 0; i < kept_; ++i) count[ranked_[i] >> shift & 255] += (ranked_[i] & mask) == prefix;
      int digit = 0;
      for (; count[digit] < k; ++digit) k -= count[digit];  // k: now its rank among the keys with this byte
      prefix |= uint64_t(digit) << shift;
      mask |= uint64_t{255} << shift;
      if (count[digit] == k) break;  // every key with these bytes is taken
    }
    int64_t taken = 0;
    for (int64_t i = 0; i < kept_; ++i) {
      const uint64_t key = ranked_[i];
      ranked_[taken] = key;
      taken += (key & mask) <= prefix;
    }
  }

  // Sorts n keys made in byte order by their logits' bits, a byte of them a pass from the
  // lowest (LSD radix sort, stable: equal logits stay in byte order), skipping bytes that every
  // key shares. At batch 8, top-p 0.9 drew in half the time it took in blocks of 32 (std::sort:
  // 256 keys in ~6 us, this ~1.2).
  void radix_sort(uint64_t* keys, int64_t n) {
    uint64_t *from = keys, *to = spare_.data();
    for (int shift = 32; shift < 64; shift += 8) {
      int64_t start[257] = {};
      for (int64_t i = 0; i < n; ++i) ++start[(from[i] >> shift & 255) + 1];
      if (start[(from[0] >> shift & 255) + 1] == n) continue;
      for (int d = 0; d < 256; ++d) start[d + 1] += start[d];
      for (int64_t i = 0; i < n; ++i) to[start[from[i] >> shift & 255]++] = from[i];
      std::swap(from, to);
    }
    if (from != keys) std::copy(from, from + n, keys);
  }

  std::vector<float> probs_;
  // the kept bytes' keys: ranked_[0, sorted_) in order, then the rest to kept_; spare_: room for radix_sort's passes
  std::vector<uint64_t> ranked_, spare_;
  int64_t kept_ = 0, sorted_ = 0;
};

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

// The weights (kWeightsPerBlock per block, the final norm's w b, then optionally a head's w b)
// and caches checked for dtype, device and shape against x (B, D) -> the weights, contiguous.
std::vector<at::Tensor> checked_weights(const at::Tensor& x, at::TensorList weights, at::TensorList cache,
                                        int64_t heads, bool with_head, const at::Tensor& rotary) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK((dtype == at::kFloat || dtype == at::kBFloat16) && x.dim() == 2 && x.device().is_cpu(),
              "the fused step takes fp32 or bf16 CPU inputs (B, D)");
  const int64_t blocks = static_cast<int64_t>(weights.size()) / kWeightsPerBlock;
  const int64_t extra = static_cast<int64_t>(weights.size()) - blocks * kWeightsPerBlock;
  TORCH_CHECK(extra == (with_head ? 4 : 2), "12 weights per block, the final norm's, and a head's if any");
  TORCH_CHECK(static_cast<int64_t>(cache.size()) == 2 * blocks, "one keys and one values tensor per block");
  std::vector<at::Tensor> w;
  for (const auto& t : weights) {
    TORCH_CHECK(t.scalar_type() == dtype && t.device().is_cpu(), "weights on the CPU in the input's dtype");
    w.push_back(t.contiguous());  // the model's own parameters are contiguous already: no copy
  }
  for (const auto& t : cache)
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == dtype && t.device().is_cpu() && t.dim() == 4,
                "contiguous (B, heads, capacity, head width) caches on the CPU in the input's dtype");
  check_shapes(x, w, cache, heads, blocks, with_head, rotary);
  return w;
}

template <typename T>
std::vector<float> to_floats(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  const T* p = c.data_ptr<T>();
  std::vector<float> out(c.numel());
  for (size_t i = 0; i < out.size(); ++i) out[i] = to_float(p[i]);
  return out;
}

// x (B, D): the input at `position` (a one-element tensor); weights: kWeightsPerBlock per
// block, the final norm's w b, then optionally a head's w b; cache: keys and values
// (B, heads, capacity, D / heads) per block, written at `position`. All fp32, or all bf16.
// rotary: the inverse frequencies (D / heads / 2, fp32) of rotary positions, or empty for none.
// -> (B, D) after the final norm, or the head's (B, V).
at::Tensor transformer_step(const at::Tensor& x, const at::Tensor& position, at::TensorList weights,
                            at::TensorList cache, int64_t heads, const at::Tensor& rotary) {
  TORCH_CHECK(position.numel() == 1, "one position");
  const bool with_head = weights.size() % kWeightsPerBlock == 4;  // else 2, as checked_weights checks
  const std::vector<at::Tensor> w = checked_weights(x, weights, cache, heads, with_head, rotary);
  const int64_t pos = position.item<int64_t>();
  const float* frequencies = rotary.numel() ? rotary.data_ptr<float>() : nullptr;
  const bool fp32 = x.scalar_type() == at::kFloat;
  const std::vector<float> result =
      fp32 ? forward<float>(to_floats<float>(x), pos, w, cache, heads, with_head, frequencies)
           : forward<c10::BFloat16>(to_floats<c10::BFloat16>(x), pos, w, cache, heads, with_head, frequencies);
  const int64_t batch = x.size(0);
  return at::tensor(result).reshape({batch, static_cast<int64_t>(result.size()) / batch}).to(x.scalar_type());
}

void check_sampling(const at::Tensor& logits, const at::Tensor& knobs, const at::Tensor& uniform) {
  TORCH_CHECK(logits.dim() == 2 && logits.device().is_cpu(), "logits (B, V) on the CPU");
  TORCH_CHECK(knobs.scalar_type() == at::kFloat && knobs.is_contiguous() && knobs.size(-1) == 7 &&
                  (knobs.dim() == 1 || (knobs.dim() == 2 && knobs.size(0) == logits.size(0))),
              "knobs (7,) or (B, 7) in fp32, as Sampling.knobs makes them");
  TORCH_CHECK(uniform.scalar_type() == at::kFloat && uniform.size(0) == logits.size(0), "fp32 uniforms, one row a sample");
  const at::Tensor unsupported = knobs.reshape({-1, 7}).slice(1, 4);  // η, floor, sharpen
  TORCH_CHECK(!unsupported.any().item<bool>(), "the C++ sampler draws by temperature, top-k, top-p and min-p only");
}

// logits (B, V), knobs (7,) or (B, 7) (Sampling.knobs), uniform (B,) in [0, 1) -> one byte
// per sample (B,), as model.sampling.sample draws it for the rules in Rule.
at::Tensor sample(const at::Tensor& logits, const at::Tensor& knobs, const at::Tensor& uniform) {
  check_sampling(logits, knobs, uniform);
  TORCH_CHECK(uniform.dim() == 1, "one uniform per sample");
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  const std::vector<float> values = to_floats<float>(logits.to(at::kFloat));
  const at::Tensor u = uniform.contiguous();
  at::Tensor bytes = at::empty({batch}, logits.options().dtype(at::kLong));
  Sampler sampler(vocab);
  for (int64_t s = 0; s < batch; ++s)
    bytes.data_ptr<int64_t>()[s] = sampler.draw(&values[s * vocab], rule_of(knobs, s), u.data_ptr<float>()[s]);
  return bytes;
}

// The bytes of one patch, each drawn and then run through the local model, in one call: byte 0
// from `logits` (B, V); byte i from the logits of the local model at position i, whose input is
// byte i-1's embedding plus from_global[:, i] (B, P, D), rounded to the weights' dtype as
// torch's sum is. weights: the local model's and the head's; cache: its (B, heads, P, D/heads)
// keys and values; uniform (B, P), one per byte. -> the bytes (B, P).
template <typename T>
at::Tensor draw_patch(const at::Tensor& logits, const at::Tensor& from_global, const at::Tensor& embed,
                      const std::vector<at::Tensor>& w, at::TensorList cache, int64_t heads, const at::Tensor& knobs,
                      const at::Tensor& uniform) {
  const int64_t batch = from_global.size(0), patch = from_global.size(1), dim = from_global.size(2);
  const int64_t vocab = logits.size(1);
  const T* global = from_global.data_ptr<T>();
  const T* table = embed.data_ptr<T>();
  const float* u = uniform.data_ptr<float>();
  at::Tensor bytes = at::empty({batch, patch}, logits.options().dtype(at::kLong));
  int64_t* out = bytes.data_ptr<int64_t>();
  std::vector<float> current = to_floats<float>(logits.to(at::kFloat));
  Sampler sampler(vocab);
  for (int64_t i = 0; i < patch; ++i) {
    for (int64_t s = 0; s < batch; ++s)
      out[s * patch + i] = sampler.draw(&current[s * vocab], rule_of(knobs, s), u[s * patch + i]);
    if (i + 1 == patch) break;
    std::vector<float> x(batch * dim);
    for (int64_t s = 0; s < batch; ++s) {
      const T* row = table + out[s * patch + i] * dim;
      const T* add = global + (s * patch + i + 1) * dim;
      for (int64_t d = 0; d < dim; ++d) x[s * dim + d] = to_float(static_cast<T>(to_float(row[d]) + to_float(add[d])));
    }
    current = forward<T>(std::move(x), i + 1, w, cache, heads, true, nullptr);
  }
  return bytes;
}

at::Tensor local_patch(const at::Tensor& logits, const at::Tensor& from_global, const at::Tensor& embed,
                       at::TensorList weights, at::TensorList cache, int64_t heads, const at::Tensor& knobs,
                       const at::Tensor& uniform) {
  check_sampling(logits, knobs, uniform);
  TORCH_CHECK(from_global.dim() == 3 && from_global.is_contiguous(), "from_global (B, P, D), contiguous");
  TORCH_CHECK(uniform.dim() == 2 && uniform.size(1) == from_global.size(1) && uniform.is_contiguous(),
              "uniform (B, P), contiguous");
  const at::Tensor first = from_global.select(1, 0);
  const std::vector<at::Tensor> w = checked_weights(first, weights, cache, heads, true, at::empty({0}));
  TORCH_CHECK(embed.dim() == 2 && embed.size(0) == logits.size(1) && embed.size(1) == from_global.size(2) &&
                  embed.scalar_type() == from_global.scalar_type() && embed.is_contiguous(),
              "the byte embedding (V, D), contiguous, in the weights' dtype");
  TORCH_CHECK(cache.empty() || cache[0].size(2) >= from_global.size(1), "a local cache of a patch's positions");
  return from_global.scalar_type() == at::kFloat
             ? draw_patch<float>(logits, from_global, embed, w, cache, heads, knobs, uniform)
             : draw_patch<c10::BFloat16>(logits, from_global, embed, w, cache, heads, knobs, uniform);
}

TORCH_LIBRARY(megabyte, m) {
  m.def("transformer_step(Tensor x, Tensor position, Tensor[] weights, Tensor(a!)[] cache, int heads, "
        "Tensor rotary) -> Tensor");
  m.def("sample(Tensor logits, Tensor knobs, Tensor uniform) -> Tensor");
  m.def("local_patch(Tensor logits, Tensor from_global, Tensor embed, Tensor[] weights, Tensor(a!)[] cache, "
        "int heads, Tensor knobs, Tensor uniform) -> Tensor");
}

TORCH_LIBRARY_IMPL(megabyte, CPU, m) {
  m.impl("transformer_step", &transformer_step);
  m.impl("sample", &sample);
  m.impl("local_patch", &local_patch);
}
