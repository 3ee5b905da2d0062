// Volume compositing over packed samples, one ray per work item. Torch-free; shared by CPU and CUDA.
//
// For the samples i of a ray (contiguous, in marching order), with delta_i = t_end - t_start:
//   alpha_i = 1 - exp(-sigma_i delta_i),  w_i = T_i alpha_i,  T_0 = 1,  T_{i+1} = T_i (1 - alpha_i)
//   rgb = sum w_i c_i,  depth = sum w_i (t_start + t_end) / 2,  opacity = sum w_i
// Early termination: the ray stops after the first sample that leaves T_{i+1} < early_stop_eps (0 disables it).
//
// Backward (no per-sample state kept): with g_i = dL/drgb . c_i + dL/ddepth m_i + dL/dopacity, L = sum w_i g_i and
//   dL/dc_i     = w_i dL/drgb
//   dL/dsigma_i = delta_i (T_{i+1} g_i - sum_{j>i} w_j g_j),
// the suffix sum being the total (from the forward outputs) minus the running prefix.
//
// Inference (composite_ray_weights): the weights alone, from the densities, so that colour is evaluated only where
// it shows. The same T_i, alpha_i, w_i and early termination as the forward; opacity = sum w_i is exact. A sample
// gets weight 0 (its colour is not needed) in front of the surface, while the ray's opacity so far (this sample's
// weight included) is <= skip_budget / 2, and behind it, once T_i <= skip_budget / 2 (all later weights sum to at
// most T_i); colours lie in [0, 1], so the ray's colour moves by at most skip_budget. Samples after the termination
// get 0 too: `weight > 0` marks exactly the samples whose colour matters.
#pragma once

#include "common.h"

namespace nt {

template <typename T>
NT_HD void composite_ray_forward(int64_t start, int64_t count, const T* __restrict__ sigmas,
                                 const T* __restrict__ rgbs, const T* __restrict__ t_starts,
                                 const T* __restrict__ t_ends, T early_stop_eps, T* rgb, T* depth, T* opacity) {
  T trans = T(1), r = T(0), g = T(0), b = T(0), dep = T(0), op = T(0);
  for (int64_t i = start; i < start + count; ++i) {
    const T delta = t_ends[i] - t_starts[i];
    const T alpha = T(1) - exp_(-sigmas[i] * delta);
    const T w = trans * alpha;
    r += w * rgbs[3 * i + 0];
    g += w * rgbs[3 * i + 1];
    b += w * rgbs[3 * i + 2];
    dep += w * (t_starts[i] + t_ends[i]) * T(0.5);
    op += w;
    trans *= T(1) - alpha;
    if (trans < early_stop_eps) break;
  }
  rgb[0] = r;
  rgb[1] = g;
  rgb[2] = b;
  *depth = dep;
  *opacity = op;
}

template <typename T>
NT_HD void composite_ray_backward(int64_t start, int64_t count, const T* __restrict__ sigmas,
                                  const T* __restrict__ rgbs, const T* __restrict__ t_starts,
                                  const T* __restrict__ t_ends, T early_stop_eps, const T* rgb, T depth, T opacity,
                                  const T* grad_rgb, T grad_depth, T grad_opacity, T* grad_sigmas, T* grad_rgbs) {
  const T total = grad_rgb[0] * rgb[0] + grad_rgb[1] * rgb[1] + grad_rgb[2] * rgb[2] + grad_depth * depth +
                  grad_opacity * opacity;
  T trans = T(1), prefix = T(0);
  int64_t i = start;
  for (; i < start + count; ++i) {
    const T delta = t_ends[i] - t_starts[i];
    const T alpha = T(1) - exp_(-sigmas[i] * delta);
    const T w = trans * alpha;
    const T* c = rgbs + 3 * i;
    const T gi = grad_rgb[0] * c[0] + grad_rgb[1] * c[1] + grad_rgb[2] * c[2] +
                 grad_depth * (t_starts[i] + t_ends[i]) * T(0.5) + grad_opacity;
    grad_rgbs[3 * i + 0] = w * grad_rgb[0];
    grad_rgbs[3 * i + 1] = w * grad_rgb[1];
    grad_rgbs[3 * i + 2] = w * grad_rgb[2];
    prefix += w * gi;
    trans *= T(1) - alpha;
    grad_sigmas[i] = delta * (trans * gi - (total - prefix));
    if (trans < early_stop_eps) {
      ++i;
      break;
    }
  }
  // Samples after the termination contributed nothing.
  for (; i < start + count; ++i) {
    grad_sigmas[i] = T(0);
    grad_rgbs[3 * i + 0] = T(0);
    grad_rgbs[3 * i + 1] = T(0);
    grad_rgbs[3 * i + 2] = T(0);
  }
}

template <typename T>
NT_HD void composite_ray_weights(int64_t start, int64_t count, const T* __restrict__ sigmas,
                                 const T* __restrict__ t_starts, const T* __restrict__ t_ends, T early_stop_eps,
                                 T skip_budget, T* __restrict__ weights, T* opacity) {
  const T half = skip_budget * T(0.5);
  T trans = T(1), op = T(0);
  int64_t i = start;
  for (; i < start + count; ++i) {
    const T alpha = T(1) - exp_(-sigmas[i] * (t_ends[i] - t_starts[i]));
    const T w = trans * alpha;
    op += w;
    weights[i] = (op <= half || trans <= half) ? T(0) : w;
    trans *= T(1) - alpha;
    if (trans < early_stop_eps) {
      ++i;
      break;
    }
  }
  for (; i < start + count; ++i) weights[i] = T(0);
  *opacity = op;
}

// A ray's colour from its weights and its samples' colours: sum_i w_i c_i, in sample order (as torch's index_add of
// the products sums them, bit for bit).
template <typename T>
NT_HD void composite_ray_colour(int64_t start, int64_t count, const T* __restrict__ weights,
                                const T* __restrict__ rgbs, T* __restrict__ rgb) {
  T acc[3] = {T(0), T(0), T(0)};
  for (int64_t i = start; i < start + count; ++i) {
    const T w = weights[i];
    NT_UNROLL
    for (int c = 0; c < 3; ++c) acc[c] = add_rn(acc[c], mul_rn(w, rgbs[3 * i + c]));
  }
  NT_UNROLL
  for (int c = 0; c < 3; ++c) rgb[c] = acc[c];
}

}  // namespace nt
