// Feathered box weight on the CPU: the per-point body of box.h in an OpenMP loop; and the density activation inside
// the unit box (CPU only: on a GPU torch's elementwise ops serve).
#include "api_cpu.h"
#include "box.h"

namespace nt {
namespace cpu {
namespace {

// exp of a clamped density logit (|v| <= 88): vectorised for float (common.h), libm for double.
inline float exp_density(float v) { return exp_vectorisable(v); }
inline double exp_density(double v) { return std::exp(v); }

}  // namespace

template <typename T>
void box_weights(const T* x, int64_t n, const T* box, T feather, T* out, int n_threads) {
  const BoxRamp<T> b = box_ramp(box, feather);
#pragma omp parallel for simd num_threads(n_threads) schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = box_weight(x + 3 * i, b);
}

template <typename T>
void unit_box_density(const T* raw, int64_t raw_stride, const T* x, int64_t n, T bias, T limit, T* out,
                      int n_threads) {
#pragma omp parallel for simd num_threads(n_threads) schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + 3 * i;
    const bool inside = (xi[0] >= T(0)) & (xi[0] <= T(1)) & (xi[1] >= T(0)) & (xi[1] <= T(1)) & (xi[2] >= T(0)) &
                        (xi[2] <= T(1));
    T v = raw[i * raw_stride] + bias;
    v = v < -limit ? -limit : (v > limit ? limit : v);
    out[i] = inside ? exp_density(v) : T(0);
  }
}

template void unit_box_density<float>(const float*, int64_t, const float*, int64_t, float, float, float*, int);
template void unit_box_density<double>(const double*, int64_t, const double*, int64_t, double, double, double*,
                                       int);
template void box_weights<float>(const float*, int64_t, const float*, float, float*, int);
template void box_weights<double>(const double*, int64_t, const double*, double, double*, int);

}  // namespace cpu
}  // namespace nt
