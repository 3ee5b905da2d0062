// Volume compositing on CUDA: one thread per ray.
#include "api_cuda.h"
#include "composite.h"
#include "cuda_utils.cuh"

namespace nt {
namespace cuda {
namespace {

__global__ void forward_kernel(const float* __restrict__ sigmas, const float* __restrict__ rgbs,
                               const float* __restrict__ t_starts, const float* __restrict__ t_ends,
                               const int64_t* __restrict__ packed_info, int64_t n_rays, float early_stop_eps,
                               float* __restrict__ rgb, float* __restrict__ depth, float* __restrict__ opacity) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= n_rays) return;
  composite_ray_forward(packed_info[2 * r], packed_info[2 * r + 1], sigmas, rgbs, t_starts, t_ends, early_stop_eps,
                        rgb + 3 * r, depth + r, opacity + r);
}

__global__ void backward_kernel(const float* __restrict__ sigmas, const float* __restrict__ rgbs,
                                const float* __restrict__ t_starts, const float* __restrict__ t_ends,
                                const int64_t* __restrict__ packed_info, int64_t n_rays, float early_stop_eps,
                                const float* __restrict__ rgb, const float* __restrict__ depth,
                                const float* __restrict__ opacity, const float* __restrict__ grad_rgb,
                                const float* __restrict__ grad_depth, const float* __restrict__ grad_opacity,
                                float* __restrict__ grad_sigmas, float* __restrict__ grad_rgbs) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= n_rays) return;
  composite_ray_backward(packed_info[2 * r], packed_info[2 * r + 1], sigmas, rgbs, t_starts, t_ends, early_stop_eps,
                         rgb + 3 * r, depth[r], opacity[r], grad_rgb + 3 * r, grad_depth[r], grad_opacity[r],
                         grad_sigmas, grad_rgbs);
}

__global__ void weights_kernel(const float* __restrict__ sigmas, const float* __restrict__ t_starts,
                               const float* __restrict__ t_ends, const int64_t* __restrict__ packed_info,
                               int64_t n_rays, float early_stop_eps, float skip_budget, float* __restrict__ weights,
                               float* __restrict__ opacity) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= n_rays) return;
  composite_ray_weights(packed_info[2 * r], packed_info[2 * r + 1], sigmas, t_starts, t_ends, early_stop_eps,
                        skip_budget, weights, opacity + r);
}

__global__ void colours_kernel(const float* __restrict__ weights, const float* __restrict__ rgbs,
                               const int64_t* __restrict__ packed_info, int64_t n_rays, float* __restrict__ rgb) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= n_rays) return;
  composite_ray_colour(packed_info[2 * r], packed_info[2 * r + 1], weights, rgbs, rgb + 3 * r);
}

}  // namespace

cudaError_t composite_forward(const float* sigmas, const float* rgbs, const float* t_starts, const float* t_ends,
                              const int64_t* packed_info, int64_t n_rays, float early_stop_eps, float* rgb,
                              float* depth, float* opacity, cudaStream_t stream) {
  if (n_rays == 0) return cudaSuccess;
  forward_kernel<<<n_blocks(n_rays), kThreads, 0, stream>>>(sigmas, rgbs, t_starts, t_ends, packed_info, n_rays,
                                                            early_stop_eps, rgb, depth, opacity);
  return launch_status();
}

cudaError_t composite_backward(const float* sigmas, const float* rgbs, const float* t_starts, const float* t_ends,
                               const int64_t* packed_info, int64_t n_rays, float early_stop_eps, const float* rgb,
                               const float* depth, const float* opacity, const float* grad_rgb,
                               const float* grad_depth, const float* grad_opacity, float* grad_sigmas,
                               float* grad_rgbs, cudaStream_t stream) {
  if (n_rays == 0) return cudaSuccess;
  backward_kernel<<<n_blocks(n_rays), kThreads, 0, stream>>>(sigmas, rgbs, t_starts, t_ends, packed_info, n_rays,
                                                             early_stop_eps, rgb, depth, opacity, grad_rgb,
                                                             grad_depth, grad_opacity, grad_sigmas, grad_rgbs);
  return launch_status();
}

cudaError_t composite_weights(const float* sigmas, const float* t_starts, const float* t_ends,
                              const int64_t* packed_info, int64_t n_rays, float early_stop_eps, float skip_budget,
                              float* weights, float* opacity, cudaStream_t stream) {
  if (n_rays == 0) return cudaSuccess;
  weights_kernel<<<n_blocks(n_rays), kThreads, 0, stream>>>(sigmas, t_starts, t_ends, packed_info, n_rays,
                                                            early_stop_eps, skip_budget, weights, opacity);
  return launch_status();
}

cudaError_t composite_colours(const float* weights, const float* rgbs, const int64_t* packed_info, int64_t n_rays,
                              float* rgb, cudaStream_t stream) {
  if (n_rays == 0) return cudaSuccess;
  colours_kernel<<<n_blocks(n_rays), kThreads, 0, stream>>>(weights, rgbs, packed_info, n_rays, rgb);
  return launch_status();
}

}  // namespace cuda
}  // namespace nt
