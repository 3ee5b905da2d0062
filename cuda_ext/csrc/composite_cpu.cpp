// Volume compositing on the CPU: the per-ray bodies of composite.h in OpenMP loops.
#include "api_cpu.h"
#include "composite.h"

namespace nt {
namespace cpu {

template <typename T>
void composite_forward(const T* sigmas, const T* rgbs, const T* t_starts, const T* t_ends, const int64_t* packed_info,
                       int64_t n_rays, T early_stop_eps, T* rgb, T* depth, T* opacity, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 256) if (n_rays >= kParallelMin / 16)
  for (int64_t r = 0; r < n_rays; ++r) {
    composite_ray_forward(packed_info[2 * r], packed_info[2 * r + 1], sigmas, rgbs, t_starts, t_ends, early_stop_eps,
                          rgb + 3 * r, depth + r, opacity + r);
  }
}

template <typename T>
void composite_backward(const T* sigmas, const T* rgbs, const T* t_starts, const T* t_ends, const int64_t* packed_info,
                        int64_t n_rays, T early_stop_eps, const T* rgb, const T* depth, const T* opacity,
                        const T* grad_rgb, const T* grad_depth, const T* grad_opacity, T* grad_sigmas, T* grad_rgbs,
                        int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 256) if (n_rays >= kParallelMin / 16)
  for (int64_t r = 0; r < n_rays; ++r) {
    composite_ray_backward(packed_info[2 * r], packed_info[2 * r + 1], sigmas, rgbs, t_starts, t_ends, early_stop_eps,
                           rgb + 3 * r, depth[r], opacity[r], grad_rgb + 3 * r, grad_depth[r], grad_opacity[r],
                           grad_sigmas, grad_rgbs);
  }
}

template <typename T>
void composite_weights(const T* sigmas, const T* t_starts, const T* t_ends, const int64_t* packed_info,
                       int64_t n_rays, T early_stop_eps, T skip_budget, T* weights, T* opacity, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 256) if (n_rays >= kParallelMin / 16)
  for (int64_t r = 0; r < n_rays; ++r) {
    composite_ray_weights(packed_info[2 * r], packed_info[2 * r + 1], sigmas, t_starts, t_ends, early_stop_eps,
                          skip_budget, weights, opacity + r);
  }
}

template <typename T>
void composite_colours(const T* weights, const T* rgbs, const int64_t* packed_info, int64_t n_rays, T* rgb,
                       int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 256) if (n_rays >= kParallelMin / 16)
  for (int64_t r = 0; r < n_rays; ++r) {
    composite_ray_colour(packed_info[2 * r], packed_info[2 * r + 1], weights, rgbs, rgb + 3 * r);
  }
}

#define NT_INSTANTIATE(T)                                                                                           \
  template void composite_forward<T>(const T*, const T*, const T*, const T*, const int64_t*, int64_t, T, T*, T*, T*, \
                                     int);                                                                          \
  template void composite_backward<T>(const T*, const T*, const T*, const T*, const int64_t*, int64_t, T, const T*,  \
                                      const T*, const T*, const T*, const T*, const T*, T*, T*, int);          \
  template void composite_weights<T>(const T*, const T*, const T*, const int64_t*, int64_t, T, T, T*, T*, int); \
  template void composite_colours<T>(const T*, const T*, const int64_t*, int64_t, T*, int);
NT_INSTANTIATE(float)
NT_INSTANTIATE(double)
#undef NT_INSTANTIATE

}  // namespace cpu
}  // namespace nt
