// Ray marching and bitfield packing on the CPU: the per-ray bodies of march.h in OpenMP loops.
#include "api_cpu.h"

namespace nt {
namespace cpu {

void march_count(const MarchParams& p, const uint8_t* bits, const float* rays_o, const float* rays_d,
                 const float* near, const float* far, int64_t n_rays, int64_t* counts, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 256)
  for (int64_t r = 0; r < n_rays; ++r) {
    counts[r] = march_ray(p, bits, rays_o + 3 * r, rays_d + 3 * r, near[r], far[r], r, nullptr, nullptr, nullptr);
  }
}

void march_write(const MarchParams& p, const uint8_t* bits, const float* rays_o, const float* rays_d,
                 const float* near, const float* far, int64_t n_rays, const int64_t* offsets, float* t_starts,
                 float* t_ends, int64_t* ray_indices, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 256)
  for (int64_t r = 0; r < n_rays; ++r) {
    const int64_t o = offsets[r];
    march_ray(p, bits, rays_o + 3 * r, rays_d + 3 * r, near[r], far[r], r, t_starts + o, t_ends + o,
              ray_indices + o);
  }
}

template <typename T>
void pack_bitfield(const T* density, int64_t n_cells, T threshold, uint8_t* bits, int n_threads) {
  const int64_t n_bytes = (n_cells + 7) / 8;
#pragma omp parallel for num_threads(n_threads) schedule(static)
  for (int64_t i = 0; i < n_bytes; ++i) bits[i] = pack_bitfield_byte(density, n_cells, i, threshold);
}

template void pack_bitfield<float>(const float*, int64_t, float, uint8_t*, int);
template void pack_bitfield<double>(const double*, int64_t, double, uint8_t*, int);

}  // namespace cpu
}  // namespace nt
