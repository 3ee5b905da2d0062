// Feathered box weight on the CPU: the per-point body of box.h in an OpenMP loop.
#include "api_cpu.h"
#include "box.h"

namespace nt {
namespace cpu {

template <typename T>
void box_weights(const T* x, int64_t n, const T* box, T feather, T* out, int n_threads) {
  const BoxRamp<T> b = box_ramp(box, feather);
#pragma omp parallel for simd num_threads(n_threads) schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = box_weight(x + 3 * i, b);
}

template void box_weights<float>(const float*, int64_t, const float*, float, float*, int);
template void box_weights<double>(const double*, int64_t, const double*, double, double*, int);

}  // namespace cpu
}  // namespace nt
