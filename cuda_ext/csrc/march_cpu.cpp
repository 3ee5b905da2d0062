// Ray marching and bitfield packing on the CPU: the per-ray bodies of march.h in OpenMP loops.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "api_cpu.h"

namespace nt {
namespace cpu {

namespace {

// A growable array without value-initialisation (the samples are written right after growing).
template <typename T>
struct Buffer {
  std::unique_ptr<T[]> data;
  int64_t size = 0, capacity = 0;
  T* reserve_tail(int64_t n) {
    if (size + n > capacity) {
      const int64_t cap = std::max<int64_t>(size + n, 2 * capacity);
      std::unique_ptr<T[]> bigger(new T[cap]);
      if (size) std::memcpy(bigger.get(), data.get(), size * sizeof(T));
      data = std::move(bigger);
      capacity = cap;
    }
    return data.get() + size;
  }
};

}  // namespace

void march(const MarchParams& p, const uint8_t* bits, const float* rays_o, const float* rays_d, const float* near,
           const float* far, int64_t n_rays, int64_t* counts, const MarchAlloc& alloc, int n_threads) {
  // Chunks of consecutive rays, several per thread for balance; a chunk's samples are contiguous in the output.
  const int64_t n_chunks = std::min<int64_t>(n_rays, std::max(1, n_threads) * 16);
  const int64_t chunk = n_chunks > 0 ? (n_rays + n_chunks - 1) / n_chunks : 0;
  std::vector<Buffer<float>> starts(n_chunks), ends(n_chunks);
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1) if (n_rays >= kParallelMin / 64)
  for (int64_t c = 0; c < n_chunks; ++c) {
    for (int64_t r = c * chunk; r < std::min(n_rays, (c + 1) * chunk); ++r) {
      const float* o = rays_o + 3 * r;
      const float* d = rays_d + 3 * r;
      float t_min, t_max, inv_d[3];
      int64_t bound = 0;
      if (ray_interval(p, o, d, near[r], far[r], t_min, t_max, inv_d)) {
        const double n_steps = std::ceil((static_cast<double>(t_max) - t_min) / p.step) + 2.0;
        bound = static_cast<int64_t>(std::min<double>(static_cast<double>(p.max_samples), n_steps));
      }
      float* ts = starts[c].reserve_tail(bound);
      float* te = ends[c].reserve_tail(bound);
      const int64_t n = bound > 0 ? march_ray(p, bits, o, d, near[r], far[r], p.max_samples, r, ts, te, nullptr) : 0;
      starts[c].size += n;
      ends[c].size += n;
      counts[r] = n;
    }
  }
  std::vector<int64_t> chunk_offset(n_chunks + 1, 0);
  for (int64_t c = 0; c < n_chunks; ++c) chunk_offset[c + 1] = chunk_offset[c] + starts[c].size;
  float *t_starts = nullptr, *t_ends = nullptr;
  int64_t* ray_indices = nullptr;
  alloc(chunk_offset[n_chunks], &t_starts, &t_ends, &ray_indices);
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1) if (n_rays >= kParallelMin / 64)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t off = chunk_offset[c];
    if (starts[c].size) {
      std::memcpy(t_starts + off, starts[c].data.get(), starts[c].size * sizeof(float));
      std::memcpy(t_ends + off, ends[c].data.get(), ends[c].size * sizeof(float));
    }
    int64_t i = off;
    for (int64_t r = c * chunk; r < std::min(n_rays, (c + 1) * chunk); ++r)
      for (int64_t j = 0; j < counts[r]; ++j) ray_indices[i++] = r;
  }
}

void sample_positions(const float* rays_o, const float* rays_d, const int64_t* ray_indices, const float* t_starts,
                      const float* t_ends, int64_t n, float* out, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = ray_indices[i];
    sample_midpoint(rays_o + 3 * r, rays_d + 3 * r, t_starts[i], t_ends[i], out + 3 * i);
  }
}

template <typename T>
void pack_bitfield(const T* density, int64_t n_cells, T threshold, uint8_t* bits, int n_threads) {
  const int64_t n_bytes = (n_cells + 7) / 8;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_bytes >= kParallelMin)
  for (int64_t i = 0; i < n_bytes; ++i) bits[i] = pack_bitfield_byte(density, n_cells, i, threshold);
}

template void pack_bitfield<float>(const float*, int64_t, float, uint8_t*, int);
template void pack_bitfield<double>(const double*, int64_t, double, uint8_t*, int);

}  // namespace cpu
}  // namespace nt
