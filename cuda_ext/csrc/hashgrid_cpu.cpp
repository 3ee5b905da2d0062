// Hash-grid encoding on the CPU: the per-(point, level) bodies of hashgrid.h in OpenMP loops.
#include <vector>

#include "api_cpu.h"

namespace nt {
namespace cpu {
namespace {

template <int D, int FT, typename T>
void forward_impl(const T* x, const T* table, T* out, int64_t n, const HashGridParams& p, int n_threads) {
  const int L = p.n_levels, F = p.n_features;
  // Level-major order: the threads sweep one level's table at a time, which keeps it in cache.
#pragma omp parallel for num_threads(n_threads) schedule(static) if (L * n >= kParallelMin)
  for (int64_t item = 0; item < L * n; ++item) {
    const int level = static_cast<int>(item / n);
    const int64_t i = item % n;
    T acc[kMaxFeatures];
    hash_level_forward<D, T, T, FT>(p, level, x + i * D, table, acc);
    T* o = out + i * L * F + level * F;
    for (int f = 0; f < F; ++f) o[f] = acc[f];
  }
}

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
