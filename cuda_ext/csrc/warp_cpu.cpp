// Point warp on the CPU: the per-point body of warp.h in an OpenMP loop.
#include "api_cpu.h"
#include "warp.h"

namespace nt {
namespace cpu {

template <typename T>
void warp_points(const T* x, const T* ctrl, const T* disp, const int64_t* rows, const T* masks, int64_t n,
                 const WarpParams& p, T* out, int n_threads) {
  const int64_t stride = 3 * p.n_ctrl;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n * p.n_ctrl >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t set = rows == nullptr ? 0 : rows[i];
    warp_point(x + 3 * i, ctrl + set * stride, disp + set * stride, masks, p, out + 3 * i);
  }
}

template void warp_points<float>(const float*, const float*, const float*, const int64_t*, const float*, int64_t,
                                 const WarpParams&, float*, int);
template void warp_points<double>(const double*, const double*, const double*, const int64_t*, const double*,
                                  int64_t, const WarpParams&, double*, int);

}  // namespace cpu
}  // namespace nt
