// Feathered box weight, one point per work item. Torch-free; shared by CPU and CUDA.
//
// w(x) = prod_d clamp(min(x_d - lo_d, hi_d - x_d) / ramp_d, 0, 1),  ramp_d = feather * max(hi_d - lo_d, 1e-6)
// (computed as a product with 1 / ramp_d): 1 in the box's core, falling linearly to 0 at its faces, 0 outside. The
// head field gates its motion and eye codes with it (nerf_talk/fields/head.py). As six torch ops over the 156k
// samples of a 128 px demo frame it took 8.7 of ~90 ms; as this kernel ~1.2 ms (docs/BENCHMARKS.md, fifth session).
#pragma once

#include "common.h"

namespace nt {

// The box's per-axis constants: lo, hi and 1 / ramp.
template <typename T>
struct BoxRamp {
  T lo[3], hi[3], inv_ramp[3];
};

template <typename T>
NT_HD BoxRamp<T> box_ramp(const T* __restrict__ box, T feather) {
  BoxRamp<T> b;
  for (int d = 0; d < 3; ++d) {
    const T size = box[d + 3] - box[d];
    b.lo[d] = box[d];
    b.hi[d] = box[d + 3];
    b.inv_ramp[d] = T(1) / (feather * (size > T(1e-6) ? size : T(1e-6)));
  }
  return b;
}

template <typename T>
NT_HD T box_weight(const T* __restrict__ x, const BoxRamp<T>& b) {
  T w = T(1);
  NT_UNROLL
  for (int d = 0; d < 3; ++d) {
    const T below = x[d] - b.lo[d], above = b.hi[d] - x[d];
    const T inner = (below < above ? below : above) * b.inv_ramp[d];
    w *= inner < T(0) ? T(0) : (inner > T(1) ? T(1) : inner);
  }
  return w;
}

}  // namespace nt
