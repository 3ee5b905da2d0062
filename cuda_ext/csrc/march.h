// Ray marching against an occupancy bitfield, and the bitfield's packing from a density grid. Torch-free.
//
// Samples of a ray lie on the lattice t_k = t_min + k * step (k = 0, 1, ...) while t_k < t_max, where
// [t_min, t_max] is [near, far] clipped to the aabb. Sample k spans [t_k, min(t_k + step, t_max)] and is kept when the
// cell holding its midpoint is occupied. Empty cells are skipped by jumping to their exit (DDA), keeping one step of
// margin, so the kept set is exactly that of testing every lattice point (what the torch reference does), while no
// work goes to empty space. Positions use non-contracted arithmetic so CPU, CUDA and torch agree bit for bit.
#pragma once

#include "common.h"

namespace nt {

struct MarchParams {
  float aabb[6];       // xmin, ymin, zmin, xmax, ymax, zmax
  int32_t res[3];      // occupancy grid resolution per axis; cell (i, j, k) has linear index (i * ry + j) * rz + k
  float scale[3];      // res / (max - min) per axis, in float32 (the cell of x is floor((x - min) * scale))
  float cell_size[3];  // (max - min) / res
  float step;          // > 0
  int64_t max_samples; // per ray
};

// Margin, in steps, kept when jumping over an empty cell (absorbs the rounding of the cell's exit distance).
constexpr float kSkipMargin = 0.05f;
// Empty cells are jumped over when the smallest cell spans at least this many steps, else stepped through.
constexpr float kJumpMinSteps = 3.0f;

NT_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// Clipped ray-box interval. Returns false when the ray misses the box, the interval is empty or d = 0.
NT_HD bool ray_interval(const MarchParams& p, const float* o, const float* d, float near, float far, float& t_min,
                        float& t_max, float* inv_d) {
  float tn = -INFINITY, tf = INFINITY;
  if (d[0] == 0.0f && d[1] == 0.0f && d[2] == 0.0f) return false;  // no direction: no samples
  NT_UNROLL
  for (int a = 0; a < 3; ++a) {
    const float inv = div_rn(1.0f, d[a]);
    inv_d[a] = inv;
    const float ta = mul_rn(p.aabb[a] - o[a], inv);
    const float tb = mul_rn(p.aabb[a + 3] - o[a], inv);
    tn = fmaxf(tn, fminf(ta, tb));
    tf = fminf(tf, fmaxf(ta, tb));
  }
  t_min = fmaxf(near, tn);
  t_max = fminf(far, tf);
  return t_min < t_max;  // false for NaN too
}

// Grid cell of a point (clamped into the grid: points come from inside the clipped interval).
NT_HD void point_cell(const MarchParams& p, const float* x, int32_t* g) {
  NT_UNROLL
  for (int a = 0; a < 3; ++a) {
    const int64_t gi = floor_to_int(mul_rn(x[a] - p.aabb[a], p.scale[a]));
    g[a] = static_cast<int32_t>(clamp_(gi, int64_t(0), static_cast<int64_t>(p.res[a] - 1)));
  }
}

NT_HD bool cell_occupied(const MarchParams& p, const uint8_t* bits, const int32_t* g) {
  const int64_t idx = (static_cast<int64_t>(g[0]) * p.res[1] + g[1]) * p.res[2] + g[2];
  return (bits[idx >> 3] >> (idx & 7)) & 1;
}

// Marches one ray. Returns its number of samples; writes them when `t_starts` is not null (and their ray index when
// `ray_indices` is not null).
NT_HD int64_t march_ray(const MarchParams& p, const uint8_t* __restrict__ bits, const float* o, const float* d,
                        float near, float far, int64_t ray_id, float* t_starts, float* t_ends, int64_t* ray_indices) {
  float t_min, t_max, inv_d[3];
  if (!ray_interval(p, o, d, near, far, t_min, t_max, inv_d)) return 0;
  const float step = p.step;
  const float inv_step = 1.0f / step;
  // Jumping over an empty cell costs a serial chain of arithmetic; it pays when a cell spans several steps.
  const bool jump = min_(min_(p.cell_size[0], p.cell_size[1]), p.cell_size[2]) >= kJumpMinSteps * step;
  int64_t count = 0;
  int64_t k = 0;
  while (count < p.max_samples) {
    const float ts = add_rn(t_min, mul_rn(static_cast<float>(k), step));
    if (!(ts < t_max)) break;
    const float te = min_(add_rn(ts, step), t_max);
    const float tm = mul_rn(add_rn(ts, te), 0.5f);
    float x[3];
    NT_UNROLL
    for (int a = 0; a < 3; ++a) x[a] = add_rn(o[a], mul_rn(tm, d[a]));
    int32_t g[3];
    point_cell(p, x, g);
    if (cell_occupied(p, bits, g)) {
      if (t_starts != nullptr) {
        t_starts[count] = ts;
        t_ends[count] = te;
        if (ray_indices != nullptr) ray_indices[count] = ray_id;
      }
      ++count;
      ++k;
    } else if (!jump) {
      ++k;
    } else {
      // Exit of the empty cell along the ray; every midpoint before it lies in this cell. Jump to the first
      // lattice index whose midpoint may lie past the exit, less a margin against rounding.
      float t_exit = INFINITY;
      NT_UNROLL
      for (int a = 0; a < 3; ++a) {
        if (d[a] == 0.0f) continue;
        const float bound = p.aabb[a] + static_cast<float>(g[a] + (d[a] > 0.0f ? 1 : 0)) * p.cell_size[a];
        t_exit = min_(t_exit, (bound - o[a]) * inv_d[a]);
      }
      if (!(t_exit < INFINITY)) break;
      const float a = (t_exit - t_min) * inv_step - 0.5f - kSkipMargin;
      if (!(a < 9.0e18f)) break;
      const int64_t k_next = max_(k + 1, ceil_to_int(a));
      k = k_next;
    }
  }
  return count;
}

// One byte of the bitfield: bit b of byte i is density[8 i + b] > threshold.
template <typename T>
NT_HD uint8_t pack_bitfield_byte(const T* density, int64_t n_cells, int64_t byte_index, T threshold) {
  uint8_t out = 0;
  for (int b = 0; b < 8; ++b) {
    const int64_t c = byte_index * 8 + b;
    if (c < n_cells && density[c] > threshold) out |= static_cast<uint8_t>(1u << b);
  }
  return out;
}

}  // namespace nt
