// Ray marching (count pass, then write pass at the prefix-sum offsets) and bitfield packing on CUDA.
#include "api_cuda.h"
#include "cuda_utils.cuh"

namespace nt {
namespace cuda {
namespace {

// Count pass: counts[r] = the number of samples of ray r (at most p.max_samples).
__global__ void march_count_kernel(const MarchParams p, const uint8_t* __restrict__ bits,
                                   const float* __restrict__ rays_o, const float* __restrict__ rays_d,
                                   const float* __restrict__ near, const float* __restrict__ far, int64_t n_rays,
                                   int64_t* __restrict__ counts) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= n_rays) return;
  const float o[3] = {rays_o[3 * r], rays_o[3 * r + 1], rays_o[3 * r + 2]};
  const float d[3] = {rays_d[3 * r], rays_d[3 * r + 1], rays_d[3 * r + 2]};
  counts[r] = march_ray(p, bits, o, d, near[r], far[r], p.max_samples, r, nullptr, nullptr, nullptr);
}

// Write pass: ray r's samples at offsets[r]. It stops at the count pass's count, so it never writes past the space
// the prefix sum gave the ray.
__global__ void march_write_kernel(const MarchParams p, const uint8_t* __restrict__ bits,
                                   const float* __restrict__ rays_o, const float* __restrict__ rays_d,
                                   const float* __restrict__ near, const float* __restrict__ far, int64_t n_rays,
                                   const int64_t* __restrict__ counts, const int64_t* __restrict__ offsets,
                                   float* __restrict__ t_starts, float* __restrict__ t_ends,
                                   int64_t* __restrict__ ray_indices) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= n_rays || counts[r] == 0) return;
  const float o[3] = {rays_o[3 * r], rays_o[3 * r + 1], rays_o[3 * r + 2]};
  const float d[3] = {rays_d[3 * r], rays_d[3 * r + 1], rays_d[3 * r + 2]};
  const int64_t off = offsets[r];
  march_ray(p, bits, o, d, near[r], far[r], counts[r], r, t_starts + off, t_ends + off, ray_indices + off);
}

__global__ void sample_positions_kernel(const float* __restrict__ rays_o, const float* __restrict__ rays_d,
                                        const int64_t* __restrict__ ray_indices, const float* __restrict__ t_starts,
                                        const float* __restrict__ t_ends, int64_t n, float* __restrict__ out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t r = ray_indices[i];
  sample_midpoint(rays_o + 3 * r, rays_d + 3 * r, t_starts[i], t_ends[i], out + 3 * i);
}

__global__ void pack_bitfield_kernel(const float* __restrict__ density, int64_t n_cells, float threshold,
                                     uint8_t* __restrict__ bits) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= (n_cells + 7) / 8) return;
  bits[i] = pack_bitfield_byte(density, n_cells, i, threshold);
}

}  // namespace

cudaError_t march_count(const MarchParams& p, const uint8_t* bits, const float* rays_o, const float* rays_d,
                        const float* near, const float* far, int64_t n_rays, int64_t* counts, cudaStream_t stream) {
  if (n_rays == 0) return cudaSuccess;
  march_count_kernel<<<n_blocks(n_rays), kThreads, 0, stream>>>(p, bits, rays_o, rays_d, near, far, n_rays, counts);
  return launch_status();
}

cudaError_t march_write(const MarchParams& p, const uint8_t* bits, const float* rays_o, const float* rays_d,
                        const float* near, const float* far, int64_t n_rays, const int64_t* counts,
                        const int64_t* offsets, float* t_starts, float* t_ends, int64_t* ray_indices,
                        cudaStream_t stream) {
  if (n_rays == 0) return cudaSuccess;
  march_write_kernel<<<n_blocks(n_rays), kThreads, 0, stream>>>(p, bits, rays_o, rays_d, near, far, n_rays, counts,
                                                                offsets, t_starts, t_ends, ray_indices);
  return launch_status();
}

cudaError_t sample_positions(const float* rays_o, const float* rays_d, const int64_t* ray_indices,
                             const float* t_starts, const float* t_ends, int64_t n, float* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  sample_positions_kernel<<<n_blocks(n), kThreads, 0, stream>>>(rays_o, rays_d, ray_indices, t_starts, t_ends, n,
                                                                 out);
  return launch_status();
}

cudaError_t pack_bitfield(const float* density, int64_t n_cells, float threshold, uint8_t* bits,
                          cudaStream_t stream) {
  if (n_cells == 0) return cudaSuccess;
  pack_bitfield_kernel<<<n_blocks((n_cells + 7) / 8), kThreads, 0, stream>>>(density, n_cells, threshold, bits);
  return launch_status();
}

}  // namespace cuda
}  // namespace nt
