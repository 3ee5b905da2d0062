// Ray marching against an occupancy bitfield, and the bitfield's packing from a density grid. Torch-free.
//
// Samples of a ray lie on the lattice t_k = t_min + k * step (k = 0, 1, ...) while t_k < t_max, where
// [t_min, t_max] is [near, far] clipped to the aabb. Sample k spans [t_k, min(t_k + step, t_max)] and is kept when the
// cell holding its midpoint is occupied. Empty cells are skipped by jumping to their exit (DDA), checked against the
// stepping arithmetic, so the kept set is exactly that of testing every lattice point (what the torch reference does),
// while no work goes to empty space. Positions use non-contracted arithmetic so CPU, CUDA and torch agree bit for bit.
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

// Margin, in steps, kept short of an empty cell's exit: the rounded exit then rarely overshoots, and the check of the
// jump (skip_empty_cell) rarely has to bisect.
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

// The midpoint of the sample [ts, te] on ray (o, d), rounded as `o + d * ((ts + te) * 0.5)` rounds in torch: where
// the fields are asked for the sample (sample_positions), and the point whose cell decides occupancy (below).
NT_HD void sample_midpoint(const float* o, const float* d, float ts, float te, float* x) {
  const float tm = mul_rn(add_rn(ts, te), 0.5f);
  NT_UNROLL
  for (int a = 0; a < 3; ++a) x[a] = add_rn(o[a], mul_rn(tm, d[a]));
}

// Lattice sample k of a ray: its span [ts, te] and the (clamped) cell of its midpoint. Every operation rounds
// monotonically, so each axis of the cell is monotone in k: if samples k and m lie in the same cell, so do all between.
NT_HD void lattice_sample(const MarchParams& p, const float* o, const float* d, float t_min, float t_max, int64_t k,
                          float& ts, float& te, int32_t* g) {
  ts = add_rn(t_min, mul_rn(static_cast<float>(k), p.step));
  te = min_(add_rn(ts, p.step), t_max);
  float x[3];
  sample_midpoint(o, d, ts, te, x);
  point_cell(p, x, g);
}

NT_HD bool lattice_sample_in(const MarchParams& p, const float* o, const float* d, float t_min, float t_max, int64_t k,
                             const int32_t* g) {
  float ts, te;
  int32_t h[3];
  lattice_sample(p, o, d, t_min, t_max, k, ts, te, h);
  return h[0] == g[0] && h[1] == g[1] && h[2] == g[2];
}

// First lattice index after k (whose midpoint lies in the empty cell g) whose midpoint may lie outside g. The exit
// distance of g along the ray, rounded, gives a candidate; it can overshoot by many steps when the ray is almost
// parallel to a face (the rounding error of the face's position is divided by the tiny direction component), so the
// candidate's predecessor is checked with the loop's own arithmetic and, if it left g, the last index in g is found by
// bisection (exact by the monotonicity above). Returns -1 when the exit is not finite (the ray ends in g).
NT_HD int64_t skip_empty_cell(const MarchParams& p, const float* o, const float* d, const float* inv_d, float t_min,
                              float t_max, int64_t k, const int32_t* g) {
  float t_exit = INFINITY;
  NT_UNROLL
  for (int a = 0; a < 3; ++a) {
    if (d[a] == 0.0f) continue;
    const float bound = p.aabb[a] + static_cast<float>(g[a] + (d[a] > 0.0f ? 1 : 0)) * p.cell_size[a];
    t_exit = min_(t_exit, (bound - o[a]) * inv_d[a]);
  }
  if (!(t_exit < INFINITY)) return -1;
  const float a = (t_exit - t_min) / p.step - 0.5f - kSkipMargin;
  if (!(a < 9.0e18f)) return -1;
  int64_t next = max_(k + 1, ceil_to_int(a));
  if (next > k + 1 && !lattice_sample_in(p, o, d, t_min, t_max, next - 1, g)) {
    int64_t in = k, out = next - 1;  // sample `in` lies in g, sample `out` does not
    while (out - in > 1) {
      const int64_t mid = in + (out - in) / 2;
      if (lattice_sample_in(p, o, d, t_min, t_max, mid, g)) in = mid;
      else out = mid;
    }
    next = out;
  }
  return next;
}

// Marches one ray. Returns its number of samples, at most `limit`; writes them when `t_starts` is not null (and their
// ray index when `ray_indices` is not null). The samples are exactly those of testing every lattice index in turn.
NT_HD int64_t march_ray(const MarchParams& p, const uint8_t* __restrict__ bits, const float* o, const float* d,
                        float near, float far, int64_t limit, int64_t ray_id, float* t_starts, float* t_ends,
                        int64_t* ray_indices) {
  float t_min, t_max, inv_d[3];
  if (!ray_interval(p, o, d, near, far, t_min, t_max, inv_d)) return 0;
  // Jumping over an empty cell costs a serial chain of arithmetic; it pays when a cell spans several steps.
  const bool jump = min_(min_(p.cell_size[0], p.cell_size[1]), p.cell_size[2]) >= kJumpMinSteps * p.step;
  int64_t count = 0;
  int64_t k = 0;
  while (count < limit) {
    float ts, te;
    int32_t g[3];
    lattice_sample(p, o, d, t_min, t_max, k, ts, te, g);
    if (!(ts < t_max)) break;
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
      k = skip_empty_cell(p, o, d, inv_d, t_min, t_max, k, g);
      if (k < 0) break;
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
