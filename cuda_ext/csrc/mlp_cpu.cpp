// Small MLPs on the CPU, fused: every layer of a block of rows runs while the block's activations are in L1.
//
// Why: the fields' MLPs are 16-32 wide. Through torch, each layer of a 32k-sample chunk writes [32k, 32] floats
// (4 MiB, past L2) and the next op reads them back: the bias copy, ReLU, sigmoid and each matmul are passes over
// memory. On the demo avatar at 128x128 (156k samples a frame, 2 threads) those passes took 25 of the 72 ms of a
// frame, the matmuls themselves 8 ms (docs/BENCHMARKS.md, fifth session).
//
// A layer is computed as register tiles of kRows rows x 8-16 outputs: each weight vector is loaded once per tile and
// multiplied into kRows accumulators (AVX2 with FMA; a portable loop elsewhere). Weights are transposed and padded to a
// multiple of kLanes outputs once per call (a few thousand floats), so the inner loop has no remainder.
#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "api_cpu.h"

namespace nt {
namespace cpu {
namespace {

// 6 rows x 16 outputs: 12 accumulators, 2 weight vectors and a broadcast fill the 16 AVX2 registers.
constexpr int kRows = 6;
constexpr int kLanes = 8;
// Rows per block (16 tiles): two [96, 32] float buffers are 24 KiB, in L1 at the fields' widths.
constexpr int64_t kBlock = 96;

int padded(int n) { return (n + kLanes - 1) / kLanes * kLanes; }

#if defined(__AVX2__) && defined(__FMA__)
// out[r, o0 .. o0 + 8V) = bias + sum_i in[r, i] wt[i, o] for R rows: R x V accumulators in registers, each weight
// vector loaded once per R rows. (Intrinsics: the build turns off contraction, -ffp-contract=off, and the compiler
// did not vectorise the portable loop below into fused multiply-adds.)
template <int R, int V>
inline void tile(const float* in, int64_t ld_in, int in_dim, const float* wt, const float* bias, int out_pad,
                 float* out, int64_t ld_out, int o0) {
  __m256 acc[R][V];
  for (int v = 0; v < V; ++v) {
    const __m256 b = _mm256_loadu_ps(bias + o0 + 8 * v);
    for (int k = 0; k < R; ++k) acc[k][v] = b;
  }
  for (int i = 0; i < in_dim; ++i) {
    const float* w = wt + static_cast<int64_t>(i) * out_pad + o0;
    __m256 wv[V];
    for (int v = 0; v < V; ++v) wv[v] = _mm256_loadu_ps(w + 8 * v);
    for (int k = 0; k < R; ++k) {
      const __m256 xi = _mm256_broadcast_ss(in + k * ld_in + i);
      for (int v = 0; v < V; ++v) acc[k][v] = _mm256_fmadd_ps(xi, wv[v], acc[k][v]);
    }
  }
  for (int k = 0; k < R; ++k)
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(out + k * ld_out + o0 + 8 * v, acc[k][v]);
}

template <int R>
inline void tiles(const float* in, int64_t ld_in, int in_dim, const float* wt, const float* bias, int out_pad,
                  float* out, int64_t ld_out) {
  int o0 = 0;
  for (; o0 + 16 <= out_pad; o0 += 16) tile<R, 2>(in, ld_in, in_dim, wt, bias, out_pad, out, ld_out, o0);
  if (o0 < out_pad) tile<R, 1>(in, ld_in, in_dim, wt, bias, out_pad, out, ld_out, o0);
}
#else
template <int R>
inline void tiles(const float* in, int64_t ld_in, int in_dim, const float* wt, const float* bias, int out_pad,
                  float* out, int64_t ld_out) {
  for (int k = 0; k < R; ++k) {
    float* o = out + k * ld_out;
    for (int c = 0; c < out_pad; ++c) o[c] = bias[c];
    for (int i = 0; i < in_dim; ++i) {
      const float xi = in[k * ld_in + i];
      const float* w = wt + static_cast<int64_t>(i) * out_pad;
#pragma omp simd
      for (int c = 0; c < out_pad; ++c) o[c] += xi * w[c];
    }
  }
}
#endif

void layer(const float* in, int64_t ld_in, int in_dim, const float* wt, const float* bias, int out_pad, float* out,
           int64_t ld_out, int64_t n) {
  int64_t r = 0;
  for (; r + kRows <= n; r += kRows) tiles<kRows>(in + r * ld_in, ld_in, in_dim, wt, bias, out_pad, out + r * ld_out,
                                                  ld_out);
  for (; r < n; ++r) tiles<1>(in + r * ld_in, ld_in, in_dim, wt, bias, out_pad, out + r * ld_out, ld_out);
}

}  // namespace

void mlp_forward(const float* x, int64_t ld_x, int64_t n, const MlpParams& p, const int64_t* add_rows,
                 const float* add_values, int64_t n_add, float* out, int n_threads) {
  if (n == 0) return;
  const int L = p.n_layers;
  // Transposed, zero-padded weights [in, out_pad] and biases [out_pad] of every layer, in one buffer.
  std::vector<int64_t> w_at(L), b_at(L);
  int64_t total = 0;
  int width = 0;
  for (int l = 0; l < L; ++l) {
    const int out_pad = padded(p.dims[l + 1]);
    w_at[l] = total;
    total += static_cast<int64_t>(p.dims[l]) * out_pad;
    b_at[l] = total;
    total += out_pad;
    width = std::max(width, out_pad);
  }
  std::vector<float> packed(total, 0.0f);
  for (int l = 0; l < L; ++l) {
    const int in_dim = p.dims[l], out_dim = p.dims[l + 1], out_pad = padded(out_dim);
    for (int o = 0; o < out_dim; ++o) {
      for (int i = 0; i < in_dim; ++i) packed[w_at[l] + i * out_pad + o] = p.weights[l][o * in_dim + i];
      packed[b_at[l] + o] = p.biases[l][o];
    }
  }
  const float* pk = packed.data();
  const int out_dim = p.dims[L];
  const int h0 = p.dims[1];
  const int64_t n_blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel num_threads(n_threads) if (n >= kParallelMin / 16)
  {
    std::vector<float> buf_a(kBlock * width), buf_b(kBlock * width);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t i0 = b * kBlock, rows = std::min(kBlock, n - i0);
      const float* in = x + i0 * ld_x;
      int64_t ld_in = ld_x;
      float *cur = buf_a.data(), *next = buf_b.data();
      for (int l = 0; l < L; ++l) {
        const int out_pad = padded(p.dims[l + 1]);
        layer(in, ld_in, p.dims[l], pk + w_at[l], pk + b_at[l], out_pad, cur, width, rows);
        if (l == 0 && n_add > 0) {  // sparse additions to the first layer's pre-activations (rows sorted)
          const int64_t* first = std::lower_bound(add_rows, add_rows + n_add, i0);
          for (const int64_t* a = first; a != add_rows + n_add && *a < i0 + rows; ++a) {
            float* dst = cur + (*a - i0) * width;
            const float* src = add_values + (a - add_rows) * h0;
            for (int o = 0; o < h0; ++o) dst[o] += src[o];
          }
        }
        if (l + 1 < L) {
          for (int64_t k = 0; k < rows * width; ++k) cur[k] = std::max(cur[k], 0.0f);
          in = cur;
          ld_in = width;
          std::swap(cur, next);
        }
      }
      float* o = out + i0 * out_dim;
      for (int64_t r = 0; r < rows; ++r) {
        for (int c = 0; c < out_dim; ++c) {
          const float v = cur[r * width + c];
          o[r * out_dim + c] = p.sigmoid_output ? 1.0f / (1.0f + std::exp(-v)) : v;
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace nt
