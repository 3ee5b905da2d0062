// Multiresolution hash-grid encoding (instant-ngp), per (point, level) work item. Torch-free; shared by CPU and CUDA.
//
// Table layout: [n_levels, table_size, n_features] contiguous. Output layout: [n_points, n_levels * n_features].
// Level l has scale s_l and resolution r_l (computed once in Python, see cuda_ext/hashgrid.py):
//   pos = clamp(x, 0, 1) * s_l + 0.5,  cell = floor(pos),  frac = pos - cell
// A corner c (cell + {0,1}^D) indexes the table densely (c0 + r*c1 + r^2*c2) when r_l^D <= table_size, else by
// the spatial hash (c0 * 1) ^ (c1 * 2654435761) ^ (c2 * 805459861) mod table_size (uint32 arithmetic).
// Corners are combined with multilinear weights, corner bit d taking frac_d (bit 1) or 1 - frac_d (bit 0).
#pragma once

#include <type_traits>

#include "common.h"

namespace nt {

constexpr int kMaxLevels = 32;
constexpr int kMaxFeatures = 8;

struct HashGridParams {
  int32_t dims;        // 2 or 3
  int32_t n_levels;    // <= kMaxLevels
  int32_t n_features;  // per level, <= kMaxFeatures
  uint32_t table_size; // power of two
  double scales[kMaxLevels];
  uint32_t resolutions[kMaxLevels];
  uint8_t dense[kMaxLevels];  // 1 where resolution^dims <= table_size
};

template <int D>
NT_HD uint32_t hash_grid_index(const uint32_t* corner, uint32_t resolution, uint32_t table_size, bool dense) {
  uint32_t index = 0;
  if (dense) {
    uint32_t stride = 1;
    NT_UNROLL
    for (int d = 0; d < D; ++d) {
      index += corner[d] * stride;
      stride *= resolution;
    }
  } else {
    constexpr uint32_t primes[3] = {1u, 2654435761u, 805459861u};
    NT_UNROLL
    for (int d = 0; d < D; ++d) index ^= corner[d] * primes[d];
  }
  return index & (table_size - 1);
}

// Position of one point at a level of scale `scale`: grid cell and fractional offset per axis.
template <int D, typename A>
NT_HD void cell_position(A scale, const A* x, uint32_t* cell, A* frac) {
  NT_UNROLL
  for (int d = 0; d < D; ++d) {
    const A xd = clamp_(x[d], A(0), A(1));
    const A pos = xd * scale + A(0.5);
    const A fl = floor_(pos);
    cell[d] = static_cast<uint32_t>(fl);
    frac[d] = pos - fl;
  }
}

template <int D, typename A>
NT_HD void hash_level_position(const HashGridParams& p, int level, const A* x, uint32_t* cell, A* frac) {
  cell_position<D, A>(static_cast<A>(p.scales[level]), x, cell, frac);
}

// FT: the number of features when known at compile time (1, 2, 4, 8: loops unroll, arrays stay in registers), or 0
// to read it from p.n_features. dispatch_features() picks it.

// One level's lookup with its constants resolved (scale, resolution, dense known to the caller: a loop over many
// points at one level then has no branch left, and the C++ build vectorises it). tl: the level's table; n_features
// is read only when FT is 0.
template <int D, typename A, typename TT, int FT, bool DENSE>
NT_HD void hash_level_lookup(A scale, uint32_t res, uint32_t table_size, int n_features, const A* x,
                             const TT* __restrict__ tl, A* out) {
  const int F = FT > 0 ? FT : n_features;
  uint32_t cell[D];
  A frac[D];
  cell_position<D, A>(scale, x, cell, frac);
  NT_UNROLL
  for (int f = 0; f < F; ++f) out[f] = A(0);
  NT_UNROLL
  for (int corner = 0; corner < (1 << D); ++corner) {
    A w = A(1);
    uint32_t c[D];
    NT_UNROLL
    for (int d = 0; d < D; ++d) {
      const int bit = (corner >> d) & 1;
      w *= bit ? frac[d] : A(1) - frac[d];
      c[d] = cell[d] + bit;
    }
    const TT* v = tl + static_cast<int64_t>(hash_grid_index<D>(c, res, table_size, DENSE)) * F;
    NT_UNROLL
    for (int f = 0; f < F; ++f) out[f] += w * load_as<A>(v[f]);
  }
}

// out[f] = sum over corners of weight * table[level, index(corner), f], f < n_features.
template <int D, typename A, typename TT, int FT = 0>
NT_HD void hash_level_forward(const HashGridParams& p, int level, const A* x, const TT* __restrict__ table, A* out) {
  const int F = FT > 0 ? FT : p.n_features;
  const TT* tl = table + static_cast<int64_t>(level) * p.table_size * F;
  const A scale = static_cast<A>(p.scales[level]);
  const uint32_t res = p.resolutions[level];
  if (p.dense[level] != 0) hash_level_lookup<D, A, TT, FT, true>(scale, res, p.table_size, F, x, tl, out);
  else hash_level_lookup<D, A, TT, FT, false>(scale, res, p.table_size, F, x, tl, out);
}

// grad_table[level, index(corner), f] += weight * grad_out[f]. ATOMIC where other threads write the same level.
template <int D, bool ATOMIC, typename A, typename G, int FT = 0>
NT_HD void hash_level_backward_table(const HashGridParams& p, int level, const A* x, const A* grad_out, G* grad_table) {
  uint32_t cell[D];
  A frac[D];
  hash_level_position<D, A>(p, level, x, cell, frac);
  const int F = FT > 0 ? FT : p.n_features;
  G* gl = grad_table + static_cast<int64_t>(level) * p.table_size * F;
  const uint32_t res = p.resolutions[level];
  const bool dense = p.dense[level] != 0;
  NT_UNROLL
  for (int corner = 0; corner < (1 << D); ++corner) {
    A w = A(1);
    uint32_t c[D];
    NT_UNROLL
    for (int d = 0; d < D; ++d) {
      const int bit = (corner >> d) & 1;
      w *= bit ? frac[d] : A(1) - frac[d];
      c[d] = cell[d] + bit;
    }
    G* g = gl + static_cast<int64_t>(hash_grid_index<D>(c, res, p.table_size, dense)) * F;
    for (int f = 0; f < F; ++f) {
      if (ATOMIC) {
        atomic_add(g + f, static_cast<G>(w * grad_out[f]));
      } else {
        g[f] += static_cast<G>(w * grad_out[f]);
      }
    }
  }
}

// grad_x[d] += d(out . grad_out)/dx_d for one level. The clamp passes no gradient where x_d lies outside [0, 1]:
// the caller zeroes those axes once after summing the levels.
template <int D, typename A, typename TT, int FT = 0>
NT_HD void hash_level_backward_x(const HashGridParams& p, int level, const A* x, const TT* __restrict__ table,
                                 const A* grad_out, A* grad_x) {
  uint32_t cell[D];
  A frac[D];
  hash_level_position<D, A>(p, level, x, cell, frac);
  const int F = FT > 0 ? FT : p.n_features;
  const TT* tl = table + static_cast<int64_t>(level) * p.table_size * F;
  const uint32_t res = p.resolutions[level];
  const bool dense = p.dense[level] != 0;
  const A scale = static_cast<A>(p.scales[level]);
  NT_UNROLL
  for (int corner = 0; corner < (1 << D); ++corner) {
    uint32_t c[D];
    A wd[D];  // weight factor per axis
    NT_UNROLL
    for (int d = 0; d < D; ++d) {
      const int bit = (corner >> d) & 1;
      wd[d] = bit ? frac[d] : A(1) - frac[d];
      c[d] = cell[d] + bit;
    }
    const TT* v = tl + static_cast<int64_t>(hash_grid_index<D>(c, res, p.table_size, dense)) * F;
    A dot = A(0);
    for (int f = 0; f < F; ++f) dot += grad_out[f] * load_as<A>(v[f]);
    NT_UNROLL
    for (int d = 0; d < D; ++d) {
      A dw = ((corner >> d) & 1) ? A(1) : A(-1);
      NT_UNROLL
      for (int e = 0; e < D; ++e)
        if (e != d) dw *= wd[e];
      grad_x[d] += scale * dw * dot;
    }
  }
}

// Calls fn(std::integral_constant<int, FT>) with FT = n_features for the common sizes, else FT = 0 (runtime).
template <typename Fn>
void dispatch_features(int n_features, Fn&& fn) {
  switch (n_features) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 8: fn(std::integral_constant<int, 8>{}); break;
    default: fn(std::integral_constant<int, 0>{}); break;
  }
}

}  // namespace nt
