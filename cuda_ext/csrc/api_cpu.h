// CPU launchers (C++ with OpenMP), torch-free: raw pointers, sizes, thread count. Implemented in *_cpu.cpp,
// called by bindings.cpp. Inputs are contiguous; outputs are allocated (and zeroed where noted) by the caller.
#pragma once

#include <cstdint>
#include <functional>

#include "hashgrid.h"
#include "march.h"
#include "warp.h"

namespace nt {
namespace cpu {

// Loops with fewer work items than this run on the calling thread (a thread team costs more than they do).
constexpr int64_t kParallelMin = 1 << 14;

// x [n, dims], table [levels, table_size, features] -> out [n, levels * features]. T = float or double.
template <typename T>
void hash_encode_forward(const T* x, const T* table, T* out, int64_t n, const HashGridParams& p, int n_threads);

// grad_table (zeroed, or null) [levels, table_size, features]; grad_x (or null) [n, dims].
template <typename T>
void hash_encode_backward(const T* x, const T* table, const T* grad_out, T* grad_table, T* grad_x, int64_t n,
                          const HashGridParams& p, int n_threads);

// Gives the output arrays for `total` samples (the caller allocates them once the count is known).
using MarchAlloc = std::function<void(int64_t total, float** t_starts, float** t_ends, int64_t** ray_indices)>;

// Marches every ray once into per-chunk buffers, fills counts [n_rays], asks `alloc` for the outputs and copies the
// samples there, ray after ray (the CUDA build marches twice instead: count, then write at the offsets).
void march(const MarchParams& p, const uint8_t* bits, const float* rays_o, const float* rays_d, const float* near,
           const float* far, int64_t n_rays, int64_t* counts, const MarchAlloc& alloc, int n_threads);

// out [n, 3]: the midpoint of sample i, on ray ray_indices[i] of rays_o, rays_d [R, 3] (march.h: sample_midpoint).
void sample_positions(const float* rays_o, const float* rays_d, const int64_t* ray_indices, const float* t_starts,
                      const float* t_ends, int64_t n, float* out, int n_threads);

// bits [ceil(n_cells / 8)] from density [n_cells] > threshold.
template <typename T>
void pack_bitfield(const T* density, int64_t n_cells, T threshold, uint8_t* bits, int n_threads);

// packed_info [n_rays, 2] = (first sample, sample count); outputs rgb [n_rays, 3], depth, opacity [n_rays].
template <typename T>
void composite_forward(const T* sigmas, const T* rgbs, const T* t_starts, const T* t_ends, const int64_t* packed_info,
                       int64_t n_rays, T early_stop_eps, T* rgb, T* depth, T* opacity, int n_threads);

template <typename T>
void composite_backward(const T* sigmas, const T* rgbs, const T* t_starts, const T* t_ends, const int64_t* packed_info,
                        int64_t n_rays, T early_stop_eps, const T* rgb, const T* depth, const T* opacity,
                        const T* grad_rgb, const T* grad_depth, const T* grad_opacity, T* grad_sigmas, T* grad_rgbs,
                        int n_threads);

// Inference: weights [S] (0 where the colour is not needed, see composite_ray_weights) and opacity [n_rays].
template <typename T>
void composite_weights(const T* sigmas, const T* t_starts, const T* t_ends, const int64_t* packed_info,
                       int64_t n_rays, T early_stop_eps, T skip_budget, T* weights, T* opacity, int n_threads);

// Inference: rgb [n_rays, 3] = sum over each ray's samples of weights [S] times rgbs [S, 3].
template <typename T>
void composite_colours(const T* weights, const T* rgbs, const int64_t* packed_info, int64_t n_rays, T* rgb,
                       int n_threads);

// Point warp (warp.h): out [n, 3] from x [n, 3]; point i uses control set rows[i] (or set 0 when rows is null) of
// ctrl and disp [sets, 3, n_ctrl] (coordinate-major); masks [2, n_ctrl] (upper, lower side) or null: one-sided.
template <typename T>
void warp_points(const T* x, const T* ctrl, const T* disp, const int64_t* rows, const T* masks, int64_t n,
                 const WarpParams& p, T* out, int n_threads);

// Feathered box weight (box.h): out [n] from x [n, 3] and box [6] (lo, hi).
template <typename T>
void box_weights(const T* x, int64_t n, const T* box, T feather, T* out, int n_threads);

// Density activation (box_cpu.cpp; CPU only): out[i] = exp(clamp(raw[i * raw_stride] + bias, -limit, limit)) where
// x[i] [3] lies in [0, 1]^3, else 0.
template <typename T>
void unit_box_density(const T* raw, int64_t raw_stride, const T* x, int64_t n, T bias, T limit, T* out,
                      int n_threads);

// A small MLP (mlp_cpu.cpp; CPU only: on a GPU, torch's matmuls serve). Layer l maps dims[l] -> dims[l + 1] with
// weights[l] [dims[l + 1], dims[l]] (row-major, as torch.nn.Linear) and biases[l]; ReLU between layers; the output
// through a sigmoid when sigmoid_output. Widths up to kMlpMaxWidth.
constexpr int kMlpMaxLayers = 8;
constexpr int kMlpMaxWidth = 128;
struct MlpParams {
  int n_layers;
  int dims[kMlpMaxLayers + 1];
  const float* weights[kMlpMaxLayers];
  const float* biases[kMlpMaxLayers];
  int sigmoid_output;
};

// x [n, dims[0]] with row stride ld_x -> out [n, dims[n_layers]]. add_rows [n_add] (sorted, repeats allowed) and
// add_values [n_add, dims[1]]: added to those rows' first-layer pre-activations (codes that act on a few rows).
void mlp_forward(const float* x, int64_t ld_x, int64_t n, const MlpParams& p, const int64_t* add_rows,
                 const float* add_values, int64_t n_add, float* out, int n_threads);

}  // namespace cpu
}  // namespace nt
