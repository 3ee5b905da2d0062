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
// u = sigmoid((y_mid - x_y) / switch_width). A closing gap (an eyelid) is then an edge, not a blend. With `stretch`,
// u instead falls linearly from 1 at the upper point's height to 0 at the lower's: a parting gap (lips) stretches what
// lay between the sides at rest, and each side still follows only its own points. That ramp is at least switch_width
// high, and at least as high as x is far from the farther of the two points: beside the gap (a cheek beside a mouth
// corner, where both nearest points are the corner) the two sides blend over the distance instead of creasing.
//
// A side's points may also count for its displacement only, not for its height (mask value 2 instead of 1): the jaw
// moves with both lips but does not bound the gap between them.
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
  int stretch;             // two-sided only: 1 blends across the gap between the sides (lips), 0 switches at its middle
  int has_box;
  double box[6];           // lo x y z, hi x y z
};

// Weights below exp(kWeightCut) count as 0: next to the fade (>= 1e-3 in use) they change nothing at float or
// double precision, and the products of such weights with millimetre displacements were denormal floats, which
// x86 cores handle slowly (a chunk of samples far from the mouth took 3x as long as a nearer one).
constexpr float kWeightCut = -60.0f;

// exp(v) for v <= 0, 0 below kWeightCut. On the host in plain arithmetic that the compiler vectorises (common.h:
// exp2_fraction, exp2_integer; the degree-7 Taylor series it replaced took four more multiply-adds for nothing a float
// can hold). Not common.h's exp_vectorisable: its exact two-part range reduction made the warp's block 12 % slower
// (2.62 -> 2.94 ms, 65k points x 71 control points) for weights the fade makes insensitive to 1e-6 relative errors.
// On the device: expf. Double: exp.
NT_HD float exp_nonpositive(float v) {
  const float keep = v < kWeightCut ? 0.0f : 1.0f;
  v = v < kWeightCut ? kWeightCut : v;
#if defined(__CUDA_ARCH__)
  return keep * expf(v);
#else
  const float t = v * 1.44269504088896341f;
  const int32_t n = static_cast<int32_t>(t - 0.5f);  // rounds t (<= 0) to nearest
  return keep * exp2_fraction(t - static_cast<float>(n)) * exp2_integer(n);
#endif
}
NT_HD double exp_nonpositive(double v) { return v < double(kWeightCut) ? 0.0 : exp(v); }

// The Gaussian weight of control point (cx, cy, cz) at point (x0, x1, x2).
template <typename T>
NT_HD T warp_weight(T x0, T x1, T x2, T cx, T cy, T cz, T inv2s2, T invz2) {
  const T dx = x0 - cx, dy = x1 - cy, dz = x2 - cz;
  return exp_nonpositive(-fmadd(dx, dx, fmadd(dy, dy, dz * dz * invz2)) * inv2s2);
}

// Adds weight w of a control point with displacement (d0, d1, d2) to sums (weight, then weighted displacement).
template <typename T>
NT_HD void warp_accumulate(T w, T d0, T d1, T d2, T& sw, T& s0, T& s1, T& s2) {
  sw += w;
  s0 = fmadd(w, d0, s0);
  s1 = fmadd(w, d1, s1);
  s2 = fmadd(w, d2, s2);
}

// A side's mask value: 0 not a member, 1 a member that gives the side's height, 2 a member for the displacement only.
template <typename T>
NT_HD bool warp_guide(T mask) {
  return mask > T(0) && mask < T(1.5);
}
// Points outside the box (when given) are not moved.
template <typename T>
NT_HD bool warp_outside(T x0, T x1, T x2, const WarpParams& p) {
  return p.has_box && (x0 < T(p.box[0]) || x1 < T(p.box[1]) || x2 < T(p.box[2]) || x0 > T(p.box[3]) ||
                       x1 > T(p.box[4]) || x2 > T(p.box[5]));
}

// out = x - D(x) from the sums: one-sided (side null) sums[0..3]; two-sided sums[0..3] over the upper side,
// sums[4..7] over the lower side, side[0..1] the height of each side's point nearest in the (x, y) plane and
// side[2..3] its squared distance in that plane.
template <typename T>
NT_HD void warp_finish(T x0, T x1, T x2, const T* sums, const T* side, const WarpParams& p, T* out) {
  const T fade = T(p.fade);
  T d[3];
  if (side == nullptr) {
    for (int c = 0; c < 3; ++c) d[c] = sums[c + 1] / (sums[0] + fade);
  } else {
    const T *up = sums, *lo = sums + 4;
    const T mid = (side[0] + side[1]) * T(0.5), width = T(p.switch_width);
    T u;
    if (p.stretch) {
      const T gap = side[1] - side[0];  // the lower side's height minus the upper's (+y is down)
      const T ramp = max_(max_(gap, width), sqrt_(max_(side[2], side[3])));
      u = clamp_((mid - x1) / ramp + T(0.5), T(0), T(1));
    } else {
      u = T(1) / (T(1) + exp_(-(mid - x1) / width));
    }
    for (int c = 0; c < 3; ++c) d[c] = u * (up[c + 1] / (up[0] + fade)) + (T(1) - u) * (lo[c + 1] / (lo[0] + fade));
  }
  out[0] = x0 - d[0];
  out[1] = x1 - d[1];
  out[2] = x2 - d[2];
}

// One point: out = x - D(x), looping over the control points (one CUDA thread per point; the host loops over blocks
// of points instead, warp_cpu.cpp). ctrl and disp [3][n_ctrl] (coordinate-major); masks: null (one-sided) or
// [2][n_ctrl], the upper side's points then the lower side's (values as warp_guide).
template <typename T>
NT_HD void warp_point(const T* __restrict__ x, const T* __restrict__ ctrl, const T* __restrict__ disp,
                      const T* __restrict__ masks, const WarpParams& p, T* __restrict__ out) {
  const T x0 = x[0], x1 = x[1], x2 = x[2];
  out[0] = x0;
  out[1] = x1;
  out[2] = x2;
  if (warp_outside(x0, x1, x2, p)) return;
  const int64_t n = p.n_ctrl;
  const T inv2s2 = T(p.inv_two_sigma2), invz2 = T(p.inv_reach_z2);
  const T *cy = ctrl + n, *cz = ctrl + 2 * n, *dy = disp + n, *dz = disp + 2 * n;
  T sums[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
  if (masks == nullptr) {
    for (int64_t j = 0; j < n; ++j) {
      warp_accumulate(warp_weight(x0, x1, x2, ctrl[j], cy[j], cz[j], inv2s2, invz2), disp[j], dy[j], dz[j], sums[0],
                      sums[1], sums[2], sums[3]);
    }
    warp_finish(x0, x1, x2, sums, static_cast<const T*>(nullptr), p, out);
    return;
  }
  // Each side's point nearest in the (x, y) plane (the first one, as argmin) gives that side's height.
  T nearest[2] = {T(1e30), T(1e30)}, side_y[2] = {T(0), T(0)};
  for (int64_t j = 0; j < n; ++j) {
    const T dx = x0 - ctrl[j], dy_ = x1 - cy[j], plane = dx * dx + dy_ * dy_;
    const T w = warp_weight(x0, x1, x2, ctrl[j], cy[j], cz[j], inv2s2, invz2);
    for (int k = 0; k < 2; ++k) {  // selects, not branches: which point is nearest is unpredictable
      const bool member = masks[k * n + j] > T(0);
      const bool better = warp_guide(masks[k * n + j]) & (plane < nearest[k]);
      nearest[k] = better ? plane : nearest[k];
      side_y[k] = better ? cy[j] : side_y[k];
      // k = 0 is the upper side (sums[0..3]), k = 1 the lower (sums[4..7])
      warp_accumulate(member ? w : T(0), disp[j], dy[j], dz[j], sums[4 * k], sums[4 * k + 1], sums[4 * k + 2],
                      sums[4 * k + 3]);
    }
  }
  const T side[4] = {side_y[0], side_y[1], nearest[0], nearest[1]};
  warp_finish(x0, x1, x2, sums, side, p, out);
}

}  // namespace nt
