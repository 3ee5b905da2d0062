// Point warp by scattered control points, one point per work item. Torch-free; shared by CPU and CUDA.
//
// Control points c_p (their moved positions) carry displacements d_p, p < P. A point x moves back by
//   D(x) = sum_p w_p d_p / (sum_p w_p + fade),   w_p = exp(-|S (x - c_p)|^2 / (2 sigma^2)),   S = diag(1, 1, 1/reach_z)
// (reach_z > 1: the kernel reaches further along z), and the output is x - D(x). `fade` > 0 makes D vanish far from
// every control point, with no edge.
//
// Two-sided (masks given: which points belong to the upper side, which to the lower; a point may belong to both):
// the two sides give two displacements D_1 and D_0, and x follows the upper one when it lies above (smaller y than)
// the midpoint of the two sides' points nearest to it in the (x, y) plane: D = u D_1 + (1 - u) D_0,
// u = sigmoid((y_mid - x_y) / switch_width). A closing gap (an eyelid) is then an edge, not a blend.
//
// Points outside `box` (lo[3], hi[3]), when given, are returned unchanged without looking at the control points.
#pragma once

#include "common.h"

namespace nt {

struct WarpParams {
  int64_t n_ctrl;          // P
  double inv_two_sigma2;   // 1 / (2 sigma^2)
  double inv_reach_z2;     // 1 / reach_z^2
  double fade;
  double switch_width;     // two-sided only
  int has_box;
  double box[6];           // lo x y z, hi x y z
};

// Weights below exp(kWeightCut) count as 0: next to the fade (>= 1e-3 in use) they change nothing at float or
// double precision, and the products of such weights with millimetre displacements were denormal floats, which
// x86 cores handle slowly (a chunk of samples far from the mouth took 3x as long as a nearer one).
constexpr float kWeightCut = -60.0f;

// exp(v) for v <= 0, 0 below kWeightCut. On the host in plain arithmetic that the compiler vectorises (libm's expf is
// a call per element): 2^(v log2 e) = 2^n 2^f, |f| <= 1/2, 2^f by its Taylor series to degree 7 (relative error
// < 1e-8, below float rounding), 2^n built in the exponent bits. On the device: expf. Double: exp.
NT_HD float exp_nonpositive(float v) {
  const float keep = v < kWeightCut ? 0.0f : 1.0f;
  v = v < kWeightCut ? kWeightCut : v;
#if defined(__CUDA_ARCH__)
  return keep * expf(v);
#else
  const float t = v * 1.44269504088896341f;
  const int32_t n = static_cast<int32_t>(t - 0.5f);  // rounds t (<= 0) to nearest
  const float f = (t - static_cast<float>(n)) * 0.693147180559945309f;
  float poly = 1.0f / 5040.0f;
  poly = poly * f + 1.0f / 720.0f;
  poly = poly * f + 1.0f / 120.0f;
  poly = poly * f + 1.0f / 24.0f;
  poly = poly * f + 1.0f / 6.0f;
  poly = poly * f + 0.5f;
  poly = poly * f + 1.0f;
  poly = poly * f + 1.0f;
  union {
    int32_t i;
    float f;
  } scale;
  scale.i = (n + 127) << 23;
  return keep * poly * scale.f;
#endif
}
NT_HD double exp_nonpositive(double v) { return v < double(kWeightCut) ? 0.0 : exp(v); }

// Weight sums and weighted displacements of one point (x0, x1, x2) over one control set; ctrl and disp [3][n_ctrl]
// (coordinate-major, so that the host loop vectorises over the control points). One-sided (masks null): sums[0..3]
// over all points. Two-sided (masks [2][n_ctrl]: 1 for the upper side's points, then the lower side's): sums[0..3]
// over the upper side and sums[4..7] over the lower side, from one exp per point.
template <typename T>
NT_HD void warp_sums(const T x0, const T x1, const T x2, const T* __restrict__ ctrl, const T* __restrict__ disp,
                     const T* __restrict__ masks, int64_t n_ctrl, T inv2s2, T invz2, T* sums) {
  const T *cx = ctrl, *cy = ctrl + n_ctrl, *cz = ctrl + 2 * n_ctrl;
  const T *dx_ = disp, *dy_ = disp + n_ctrl, *dz_ = disp + 2 * n_ctrl;
  T sw = T(0), s0 = T(0), s1 = T(0), s2 = T(0), tw = T(0), t0 = T(0), t1 = T(0), t2 = T(0);
  if (masks == nullptr) {
#if !defined(__CUDA_ARCH__)
#pragma omp simd reduction(+ : sw, s0, s1, s2)
#endif
    for (int64_t j = 0; j < n_ctrl; ++j) {
      const T dx = x0 - cx[j], dy = x1 - cy[j], dz = x2 - cz[j];
      const T w = exp_nonpositive(-(dx * dx + dy * dy + dz * dz * invz2) * inv2s2);
      sw += w;
      s0 += w * dx_[j];
      s1 += w * dy_[j];
      s2 += w * dz_[j];
    }
  } else {
    const T *up = masks, *lo = masks + n_ctrl;
#if !defined(__CUDA_ARCH__)
#pragma omp simd reduction(+ : sw, s0, s1, s2, tw, t0, t1, t2)
#endif
    for (int64_t j = 0; j < n_ctrl; ++j) {
      const T dx = x0 - cx[j], dy = x1 - cy[j], dz = x2 - cz[j];
      const T w = exp_nonpositive(-(dx * dx + dy * dy + dz * dz * invz2) * inv2s2);
      const T wu = w * up[j], wl = w * lo[j];
      sw += wu;
      s0 += wu * dx_[j];
      s1 += wu * dy_[j];
      s2 += wu * dz_[j];
      tw += wl;
      t0 += wl * dx_[j];
      t1 += wl * dy_[j];
      t2 += wl * dz_[j];
    }
  }
  sums[0] = sw;
  sums[1] = s0;
  sums[2] = s1;
  sums[3] = s2;
  if (masks != nullptr) {
    sums[4] = tw;
    sums[5] = t0;
    sums[6] = t1;
    sums[7] = t2;
  }
}

// One point: out = x - D(x). masks: null (one-sided) or [2][n_ctrl], the upper side's points then the lower side's.
template <typename T>
NT_HD void warp_point(const T* __restrict__ x, const T* __restrict__ ctrl, const T* __restrict__ disp,
                      const T* __restrict__ masks, const WarpParams& p, T* __restrict__ out) {
  const T x0 = x[0], x1 = x[1], x2 = x[2];
  out[0] = x0;
  out[1] = x1;
  out[2] = x2;
  if (p.has_box && (x0 < T(p.box[0]) || x1 < T(p.box[1]) || x2 < T(p.box[2]) || x0 > T(p.box[3]) ||
                    x1 > T(p.box[4]) || x2 > T(p.box[5]))) {
    return;
  }
  const int64_t n = p.n_ctrl;
  const T inv2s2 = T(p.inv_two_sigma2), invz2 = T(p.inv_reach_z2), fade = T(p.fade);
  T d[3];
  if (masks == nullptr) {
    T s[4];
    warp_sums(x0, x1, x2, ctrl, disp, masks, n, inv2s2, invz2, s);
    for (int c = 0; c < 3; ++c) d[c] = s[c + 1] / (s[0] + fade);
  } else {
    // Each side's point nearest in the (x, y) plane (the first one, as argmin) gives that side's height.
    T nearest[2] = {T(1e30), T(1e30)}, side_y[2] = {T(0), T(0)};
    for (int64_t j = 0; j < n; ++j) {
      const T dx = x0 - ctrl[j], dy = x1 - ctrl[n + j], plane = dx * dx + dy * dy;
      for (int k = 0; k < 2; ++k) {  // selects, not branches: which point is nearest is unpredictable
        const bool better = (masks[k * n + j] > T(0)) & (plane < nearest[k]);
        nearest[k] = better ? plane : nearest[k];
        side_y[k] = better ? ctrl[n + j] : side_y[k];
      }
    }
    T sums[8];
    warp_sums(x0, x1, x2, ctrl, disp, masks, n, inv2s2, invz2, sums);
    const T *up = sums, *lo = sums + 4;
    const T u = T(1) / (T(1) + exp_(-((side_y[0] + side_y[1]) * T(0.5) - x1) / T(p.switch_width)));
    for (int c = 0; c < 3; ++c) d[c] = u * (up[c + 1] / (up[0] + fade)) + (T(1) - u) * (lo[c + 1] / (lo[0] + fade));
  }
  out[0] = x0 - d[0];
  out[1] = x1 - d[1];
  out[2] = x2 - d[2];
}

}  // namespace nt
