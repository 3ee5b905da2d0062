// CUDA launchers, torch-free: raw device pointers, sizes and the stream to launch on. Implemented in *.cu, called by
// bindings.cpp when built with NT_WITH_CUDA. Each returns the launch status (cudaSuccess, or the error to report).
// Float32 data; hash tables may be float or __half (gradients to the table are accumulated in float32).
#pragma once

#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "hashgrid.h"
#include "march.h"
#include "warp.h"

namespace nt {
namespace cuda {

template <typename TT>
cudaError_t hash_encode_forward(const float* x, const TT* table, float* out, int64_t n, const HashGridParams& p,
                                cudaStream_t stream);

// grad_table_f32 (zeroed, or null) [levels, table_size, features]; grad_x (or null) [n, dims].
template <typename TT>
cudaError_t hash_encode_backward(const float* x, const TT* table, const float* grad_out, float* grad_table_f32,
                                 float* grad_x, int64_t n, const HashGridParams& p, cudaStream_t stream);

cudaError_t march_count(const MarchParams& p, const uint8_t* bits, const float* rays_o, const float* rays_d,
                        const float* near, const float* far, int64_t n_rays, int64_t* counts, cudaStream_t stream);

// Writes each ray's samples at offsets[r], at most counts[r] of them (the count pass's result).
cudaError_t march_write(const MarchParams& p, const uint8_t* bits, const float* rays_o, const float* rays_d,
                        const float* near, const float* far, int64_t n_rays, const int64_t* counts,
                        const int64_t* offsets, float* t_starts, float* t_ends, int64_t* ray_indices,
                        cudaStream_t stream);

// out [n, 3]: the midpoint of sample i, as the CPU launcher.
cudaError_t sample_positions(const float* rays_o, const float* rays_d, const int64_t* ray_indices,
                             const float* t_starts, const float* t_ends, int64_t n, float* out, cudaStream_t stream);

cudaError_t pack_bitfield(const float* density, int64_t n_cells, float threshold, uint8_t* bits, cudaStream_t stream);

cudaError_t composite_forward(const float* sigmas, const float* rgbs, const float* t_starts, const float* t_ends,
                              const int64_t* packed_info, int64_t n_rays, float early_stop_eps, float* rgb,
                              float* depth, float* opacity, cudaStream_t stream);

cudaError_t composite_backward(const float* sigmas, const float* rgbs, const float* t_starts, const float* t_ends,
                               const int64_t* packed_info, int64_t n_rays, float early_stop_eps, const float* rgb,
                               const float* depth, const float* opacity, const float* grad_rgb,
                               const float* grad_depth, const float* grad_opacity, float* grad_sigmas,
                               float* grad_rgbs, cudaStream_t stream);

// Inference: weights [S] (0 where the colour is not needed, see composite_ray_weights) and opacity [n_rays].
cudaError_t composite_weights(const float* sigmas, const float* t_starts, const float* t_ends,
                              const int64_t* packed_info, int64_t n_rays, float early_stop_eps, float skip_budget,
                              float* weights, float* opacity, cudaStream_t stream);

// Inference: rgb [n_rays, 3], as the CPU launcher.
cudaError_t composite_colours(const float* weights, const float* rgbs, const int64_t* packed_info, int64_t n_rays,
                              float* rgb, cudaStream_t stream);

// Point warp (warp.h), as the CPU launcher.
cudaError_t warp_points(const float* x, const float* ctrl, const float* disp, const int64_t* rows,
                        const float* masks, int64_t n, const WarpParams& p, float* out, cudaStream_t stream);

// Feathered box weight (box.h), as the CPU launcher; box [6] in device memory.
cudaError_t box_weights(const float* x, int64_t n, const float* box, float feather, float* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace nt
