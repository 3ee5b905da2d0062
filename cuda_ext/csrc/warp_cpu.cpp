// Point warp on the CPU, in blocks of points: the points of a block that share a control set and lie in the box are
// gathered, and the loop over the control points runs outside the loop over the block's points, which vectorises
// (one point per vector lane, each control point broadcast). Looping over the control points inside, per point (the
// CUDA thread's order, warp.h's warp_point), needed a horizontal sum per point and took 3.3x as long: 8.7 against
// 2.6 ms for 65k points x 71 control points on one core of the 2-core Xeon. The same terms (warp.h: warp_weight,
// warp_accumulate, warp_finish) in both.
#include <algorithm>

#include "api_cpu.h"
#include "warp.h"

namespace nt {
namespace cpu {
namespace {

// Points per block: a vector register's worth or two (16 floats: two AVX2 registers) keeps the block's sums in
// registers; 8, 16 and 32 timed alike.
constexpr int kBlock = 16;
// Points per task of the thread team.
constexpr int64_t kTask = 1024;

// The warp of up to kBlock points (coordinates px, py, pz; m of them) that share one control set.
template <typename T>
void warp_block(const T* px, const T* py, const T* pz, int m, const T* __restrict__ ctrl, const T* __restrict__ disp,
                const T* __restrict__ masks, const WarpParams& p, T (*out)[3]) {
  const int64_t n = p.n_ctrl;
  const T inv2s2 = T(p.inv_two_sigma2), invz2 = T(p.inv_reach_z2);
  const T *cy = ctrl + n, *cz = ctrl + 2 * n, *dy = disp + n, *dz = disp + 2 * n;
  // sums[k][i]: k = weight and weighted displacement (0..3), and for two-sided the lower side's (4..7)
  T sums[8][kBlock] = {};
  if (masks == nullptr) {
    for (int64_t j = 0; j < n; ++j) {
      const T cx_j = ctrl[j], cy_j = cy[j], cz_j = cz[j], d0 = disp[j], d1 = dy[j], d2 = dz[j];
#pragma omp simd
      for (int i = 0; i < kBlock; ++i) {
        warp_accumulate(warp_weight(px[i], py[i], pz[i], cx_j, cy_j, cz_j, inv2s2, invz2), d0, d1, d2, sums[0][i],
                        sums[1][i], sums[2][i], sums[3][i]);
      }
    }
  } else {
    T nearest[2][kBlock], side_y[2][kBlock] = {};
    std::fill(&nearest[0][0], &nearest[0][0] + 2 * kBlock, T(1e30));
    for (int64_t j = 0; j < n; ++j) {
      const T cx_j = ctrl[j], cy_j = cy[j], cz_j = cz[j], d0 = disp[j], d1 = dy[j], d2 = dz[j];
      const bool up = masks[j] > T(0), lo = masks[n + j] > T(0);
      const bool up_guide = warp_guide(masks[j]), lo_guide = warp_guide(masks[n + j]);
#pragma omp simd
      for (int i = 0; i < kBlock; ++i) {
        const T dx = px[i] - cx_j, dyy = py[i] - cy_j, plane = dx * dx + dyy * dyy;
        const T w = warp_weight(px[i], py[i], pz[i], cx_j, cy_j, cz_j, inv2s2, invz2);
        const bool better_up = up_guide & (plane < nearest[0][i]), better_lo = lo_guide & (plane < nearest[1][i]);
        nearest[0][i] = better_up ? plane : nearest[0][i];
        side_y[0][i] = better_up ? cy_j : side_y[0][i];
        nearest[1][i] = better_lo ? plane : nearest[1][i];
        side_y[1][i] = better_lo ? cy_j : side_y[1][i];
        warp_accumulate(up ? w : T(0), d0, d1, d2, sums[0][i], sums[1][i], sums[2][i], sums[3][i]);
        warp_accumulate(lo ? w : T(0), d0, d1, d2, sums[4][i], sums[5][i], sums[6][i], sums[7][i]);
      }
    }
    for (int i = 0; i < m; ++i) {
      const T s[8] = {sums[0][i], sums[1][i], sums[2][i], sums[3][i], sums[4][i], sums[5][i], sums[6][i], sums[7][i]};
      const T y[4] = {side_y[0][i], side_y[1][i], nearest[0][i], nearest[1][i]};
      warp_finish(px[i], py[i], pz[i], s, y, p, out[i]);
    }
    return;
  }
  for (int i = 0; i < m; ++i) {
    const T s[4] = {sums[0][i], sums[1][i], sums[2][i], sums[3][i]};
    warp_finish(px[i], py[i], pz[i], s, static_cast<const T*>(nullptr), p, out[i]);
  }
}

}  // namespace

template <typename T>
void warp_points(const T* x, const T* ctrl, const T* disp, const int64_t* rows, const T* masks, int64_t n,
                 const WarpParams& p, T* out, int n_threads) {
  const int64_t stride = 3 * p.n_ctrl;
  const int64_t n_tasks = (n + kTask - 1) / kTask;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n * p.n_ctrl >= kParallelMin)
  for (int64_t task = 0; task < n_tasks; ++task) {
    // Gather the task's points that lie in the box, block by block, a block holding one control set; the others
    // are copied unchanged. Unused lanes of a block hold a copy of its first point (computed, not written).
    T px[kBlock], py[kBlock], pz[kBlock], res[kBlock][3];
    int64_t at[kBlock];
    int m = 0;
    int64_t set = -1;
    auto flush = [&]() {
      if (m == 0) return;
      for (int i = m; i < kBlock; ++i) px[i] = px[0], py[i] = py[0], pz[i] = pz[0];
      warp_block(px, py, pz, m, ctrl + set * stride, disp + set * stride, masks, p, res);
      for (int i = 0; i < m; ++i) std::copy(res[i], res[i] + 3, out + 3 * at[i]);
      m = 0;
    };
    const int64_t end = std::min(n, (task + 1) * kTask);
    for (int64_t i = task * kTask; i < end; ++i) {
      const T* xi = x + 3 * i;
      std::copy(xi, xi + 3, out + 3 * i);
      if (warp_outside(xi[0], xi[1], xi[2], p)) continue;
      const int64_t s = rows == nullptr ? 0 : rows[i];
      if (s != set || m == kBlock) {
        flush();
        set = s;
      }
      px[m] = xi[0], py[m] = xi[1], pz[m] = xi[2], at[m] = i;
      ++m;
    }
    flush();
  }
}

template void warp_points<float>(const float*, const float*, const float*, const int64_t*, const float*, int64_t,
                                 const WarpParams&, float*, int);
template void warp_points<double>(const double*, const double*, const double*, const int64_t*, const double*,
                                  int64_t, const WarpParams&, double*, int);

}  // namespace cpu
}  // namespace nt
