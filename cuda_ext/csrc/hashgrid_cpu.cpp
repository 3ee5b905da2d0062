// Hash-grid encoding on the CPU: the per-(point, level) bodies of hashgrid.h in OpenMP loops.
#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "api_cpu.h"

namespace nt {
namespace cpu {
namespace {

// The forward pass sweeps blocks of points, one level at a time over a block: a level's constants are resolved once
// and its loop over the block's points has no branch, so the compiler vectorises it (gathers on AVX2/AVX-512), while
// the block's output rows (512 x L x F floats: 32 KiB at 8 levels x 2 features) stay in cache. Measured on the 2-core
// x86-64 Xeon, 8 levels x 2 features, 2^14 entries, 32k points, 1 thread: 30 ns per point and level as one flat
// (level, point) loop, 28 blocked, 16 blocked and vectorised, 12.5 with -march=native (cuda_ext/_backend.py).
constexpr int64_t kForwardBlock = 512;

template <int D, int FT, typename T>
void forward_impl(const T* x, const T* table, T* out, int64_t n, const HashGridParams& p, int n_threads) {
  const int L = p.n_levels, F = FT > 0 ? FT : p.n_features;
  const int64_t n_blocks = (n + kForwardBlock - 1) / kForwardBlock;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (L * n >= kParallelMin)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t i0 = b * kForwardBlock, i1 = std::min(n, i0 + kForwardBlock);
    for (int level = 0; level < L; ++level) {
      // One level over the block's points: constants resolved, no branch inside, so the loop is vectorised (with a
      // feature count known at compile time; others run the same code on a runtime count).
      const T* tl = table + static_cast<int64_t>(level) * p.table_size * F;
      const T scale = static_cast<T>(p.scales[level]);
      const uint32_t res = p.resolutions[level], size = p.table_size;
      T* o = out + level * F;
      const int64_t stride = static_cast<int64_t>(L) * F;
      auto sweep = [=](auto dense) {
        constexpr bool DENSE = decltype(dense)::value;
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) {
          T acc[FT > 0 ? FT : kMaxFeatures];
          hash_level_lookup<D, T, T, FT, DENSE>(scale, res, size, F, x + i * D, tl, acc);
          for (int f = 0; f < F; ++f) o[i * stride + f] = acc[f];
        }
      };
      if (p.dense[level] != 0) sweep(std::true_type{});
      else sweep(std::false_type{});
    }
  }
}

#if defined(__AVX512F__)
// The forward pass for 2 features per level in float, by hand in AVX-512: 16 points at a time, one per lane, every
// level while the block's coordinates are in registers (two 16-lane gathers per corner, one per feature), the block's
// output rows transposed into place through a 4 KiB buffer. The compiler's vectorisation of forward_impl (above)
// gathered with 64-bit indices and gave 10 ns per point and level; this 4.9 (8 levels, 2^14 entries: the demo's
// head) and 11 against 15 (12 levels, 2^16: the CPU recipe's, whose 6 MiB of tables do not fit L2), on one core of
// the 2-core Xeon (Sapphire Rapids), bit for bit the same output (same operations, same order, no contraction).
template <int D>
void forward_avx512_f2(const float* x, const float* table, float* out, int64_t n_groups, const HashGridParams& p,
                       int n_threads) {
  const int L = p.n_levels, LF = 2 * L;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lane_d = _mm512_mullo_epi32(lane, _mm512_set1_epi32(D));
  const __m512i lane_16 = _mm512_slli_epi32(lane, 4);
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
  const __m512i index_mask = _mm512_set1_epi32(static_cast<int>(p.table_size - 1));
  const __m512i primes[3] = {_mm512_set1_epi32(1), _mm512_set1_epi32(static_cast<int>(2654435761u)),
                             _mm512_set1_epi32(805459861)};
#pragma omp parallel for num_threads(n_threads) schedule(static) if (L * 16 * n_groups >= kParallelMin)
  for (int64_t g = 0; g < n_groups; ++g) {
    alignas(64) float buf[2 * kMaxLevels][16];  // [output column][point of the group]
    const float* xg = x + g * 16 * D;
    __m512 xs[D];
    for (int d = 0; d < D; ++d) {
      const __m512 v = _mm512_i32gather_ps(_mm512_add_epi32(lane_d, _mm512_set1_epi32(d)), xg, 4);
      xs[d] = _mm512_min_ps(_mm512_max_ps(v, zero), one);  // clamp_(x, 0, 1)
    }
    for (int level = 0; level < L; ++level) {
      const float* tl = table + static_cast<int64_t>(level) * p.table_size * 2;
      const __m512 scale = _mm512_set1_ps(static_cast<float>(p.scales[level]));
      const uint32_t res = p.resolutions[level];
      __m512i cell[D];
      __m512 frac[D], rest[D];
      for (int d = 0; d < D; ++d) {  // cell_position
        const __m512 pos = _mm512_add_ps(_mm512_mul_ps(xs[d], scale), half);
        const __m512 fl = _mm512_roundscale_ps(pos, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        cell[d] = _mm512_cvttps_epi32(fl);
        frac[d] = _mm512_sub_ps(pos, fl);
        rest[d] = _mm512_sub_ps(one, frac[d]);
      }
      __m512 acc0 = zero, acc1 = zero;
      for (int corner = 0; corner < (1 << D); ++corner) {  // hash_level_lookup's order
        __m512 w = one;
        __m512i index = _mm512_setzero_si512(), stride = _mm512_set1_epi32(1);
        for (int d = 0; d < D; ++d) {
          const int bit = (corner >> d) & 1;
          w = _mm512_mul_ps(w, bit ? frac[d] : rest[d]);
          const __m512i c = bit ? _mm512_add_epi32(cell[d], _mm512_set1_epi32(1)) : cell[d];
          if (p.dense[level] != 0) {  // hash_grid_index
            index = _mm512_add_epi32(index, _mm512_mullo_epi32(c, stride));
            stride = _mm512_mullo_epi32(stride, _mm512_set1_epi32(static_cast<int>(res)));
          } else {
            index = _mm512_xor_si512(index, _mm512_mullo_epi32(c, primes[d]));
          }
        }
        const __m512i at = _mm512_slli_epi32(_mm512_and_si512(index, index_mask), 1);
        acc0 = _mm512_add_ps(acc0, _mm512_mul_ps(w, _mm512_i32gather_ps(at, tl, 4)));
        acc1 = _mm512_add_ps(acc1, _mm512_mul_ps(w, _mm512_i32gather_ps(at, tl + 1, 4)));
      }
      _mm512_store_ps(buf[2 * level], acc0);
      _mm512_store_ps(buf[2 * level + 1], acc1);
    }
    float* og = out + g * 16 * LF;
    for (int k = 0; k < 16; ++k) {
      for (int j0 = 0; j0 < LF; j0 += 16) {
        const __mmask16 m = static_cast<__mmask16>((1u << std::min(16, LF - j0)) - 1u);
        _mm512_mask_storeu_ps(og + k * LF + j0, m, _mm512_mask_i32gather_ps(zero, m, lane_16, &buf[j0][k], 4));
      }
    }
  }
}
#endif

template <int D, int FT, typename T>
void backward_impl(const T* x, const T* table, const T* grad_out, T* grad_table, T* grad_x, int64_t n,
                   const HashGridParams& p, int n_threads) {
  const int L = p.n_levels, F = p.n_features;
  if (grad_table != nullptr) {
    // One thread owns a level: no two threads write the same entries, so no atomics.
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1) if (L * n >= kParallelMin)
    for (int level = L - 1; level >= 0; --level) {
      for (int64_t i = 0; i < n; ++i) {
        hash_level_backward_table<D, false, T, T, FT>(p, level, x + i * D, grad_out + i * L * F + level * F,
                                                  grad_table);
      }
    }
  }
  if (grad_x != nullptr) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if (L * n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      T g[D];
      for (int d = 0; d < D; ++d) g[d] = T(0);
      for (int level = 0; level < L; ++level) {
        hash_level_backward_x<D, T, T, FT>(p, level, x + i * D, table, grad_out + i * L * F + level * F, g);
      }
      for (int d = 0; d < D; ++d) {
        const T xd = x[i * D + d];
        grad_x[i * D + d] = (xd < T(0) || xd > T(1)) ? T(0) : g[d];
      }
    }
  }
}

}  // namespace

template <typename T>
void hash_encode_forward(const T* x, const T* table, T* out, int64_t n, const HashGridParams& p, int n_threads) {
  if (n == 0) return;
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value) {
    // (32-bit lanes: table offsets 2 x index and cells must stay below 2^31; any grid a CPU trains is far below)
    bool small = p.table_size <= (1u << 29);
    for (int l = 0; l < p.n_levels; ++l) small = small && p.resolutions[l] < (1u << 30);
    if (p.n_features == 2 && small) {  // groups of 16 points by hand, the rest below
      const int64_t groups = n / 16, done = groups * 16;
      if (p.dims == 2) forward_avx512_f2<2>(x, table, out, groups, p, n_threads);
      else forward_avx512_f2<3>(x, table, out, groups, p, n_threads);
      x += done * p.dims;
      out += done * p.n_levels * 2;
      n -= done;
      if (n == 0) return;
    }
  }
#endif
  dispatch_features(p.n_features, [&](auto ft) {
    constexpr int FT = decltype(ft)::value;
    if (p.dims == 2) forward_impl<2, FT, T>(x, table, out, n, p, n_threads);
    else forward_impl<3, FT, T>(x, table, out, n, p, n_threads);
  });
}

template <typename T>
void hash_encode_backward(const T* x, const T* table, const T* grad_out, T* grad_table, T* grad_x, int64_t n,
                          const HashGridParams& p, int n_threads) {
  if (n == 0) return;
  dispatch_features(p.n_features, [&](auto ft) {
    constexpr int FT = decltype(ft)::value;
    if (p.dims == 2) backward_impl<2, FT, T>(x, table, grad_out, grad_table, grad_x, n, p, n_threads);
    else backward_impl<3, FT, T>(x, table, grad_out, grad_table, grad_x, n, p, n_threads);
  });
}

template void hash_encode_forward<float>(const float*, const float*, float*, int64_t, const HashGridParams&, int);
template void hash_encode_forward<double>(const double*, const double*, double*, int64_t, const HashGridParams&, int);
template void hash_encode_backward<float>(const float*, const float*, const float*, float*, float*, int64_t,
                                          const HashGridParams&, int);
template void hash_encode_backward<double>(const double*, const double*, const double*, double*, double*, int64_t,
                                           const HashGridParams&, int);

}  // namespace cpu
}  // namespace nt
