// Hash-grid encoding on CUDA: one thread per (point, level), levels along blockIdx.y so that a block reads one table.
#include "api_cuda.h"
#include "cuda_utils.cuh"

namespace nt {
namespace cuda {
namespace {

template <int D, typename TT, int FT>
__global__ void forward_kernel(const float* __restrict__ x, const TT* __restrict__ table, float* __restrict__ out,
                               int64_t n, const HashGridParams p) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int level = blockIdx.y;
  if (i >= n) return;
  float xi[D];
  NT_UNROLL
  for (int d = 0; d < D; ++d) xi[d] = x[i * D + d];
  float acc[kMaxFeatures];
  hash_level_forward<D, float, TT, FT>(p, level, xi, table, acc);
  float* o = out + i * p.n_levels * p.n_features + level * p.n_features;
  const int F = FT > 0 ? FT : p.n_features;
  for (int f = 0; f < F; ++f) o[f] = acc[f];
}

template <int D, int FT>
__global__ void backward_table_kernel(const float* __restrict__ x, const float* __restrict__ grad_out,
                                      float* __restrict__ grad_table, int64_t n, const HashGridParams p) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int level = blockIdx.y;
  if (i >= n) return;
  float xi[D];
  NT_UNROLL
  for (int d = 0; d < D; ++d) xi[d] = x[i * D + d];
  hash_level_backward_table<D, true, float, float, FT>(p, level, xi, grad_out + i * p.n_levels * p.n_features +
                                                   level * p.n_features, grad_table);
}

template <int D, typename TT, int FT>
__global__ void backward_x_kernel(const float* __restrict__ x, const TT* __restrict__ table,
                                  const float* __restrict__ grad_out, float* __restrict__ grad_x, int64_t n,
                                  const HashGridParams p) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  float xi[D], g[D];
  NT_UNROLL
  for (int d = 0; d < D; ++d) {
    xi[d] = x[i * D + d];
    g[d] = 0.0f;
  }
  for (int level = 0; level < p.n_levels; ++level) {
    hash_level_backward_x<D, float, TT, FT>(p, level, xi, table, grad_out + i * p.n_levels * p.n_features +
                                        level * p.n_features, g);
  }
  NT_UNROLL
  for (int d = 0; d < D; ++d) grad_x[i * D + d] = (xi[d] < 0.0f || xi[d] > 1.0f) ? 0.0f : g[d];
}

}  // namespace

template <typename TT>
cudaError_t hash_encode_forward(const float* x, const TT* table, float* out, int64_t n, const HashGridParams& p,
                                cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const dim3 blocks(n_blocks(n), p.n_levels);
  dispatch_features(p.n_features, [&](auto ft) {
    constexpr int FT = decltype(ft)::value;
    if (p.dims == 2) forward_kernel<2, TT, FT><<<blocks, kThreads, 0, stream>>>(x, table, out, n, p);
    else forward_kernel<3, TT, FT><<<blocks, kThreads, 0, stream>>>(x, table, out, n, p);
  });
  return launch_status();
}

template <typename TT>
cudaError_t hash_encode_backward(const float* x, const TT* table, const float* grad_out, float* grad_table_f32,
                                 float* grad_x, int64_t n, const HashGridParams& p, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (grad_table_f32 != nullptr) {
    const dim3 blocks(n_blocks(n), p.n_levels);
    dispatch_features(p.n_features, [&](auto ft) {
      constexpr int FT = decltype(ft)::value;
      if (p.dims == 2) backward_table_kernel<2, FT><<<blocks, kThreads, 0, stream>>>(x, grad_out, grad_table_f32, n, p);
      else backward_table_kernel<3, FT><<<blocks, kThreads, 0, stream>>>(x, grad_out, grad_table_f32, n, p);
    });
    const cudaError_t err = launch_status();
    if (err != cudaSuccess) return err;
  }
  if (grad_x != nullptr) {
    dispatch_features(p.n_features, [&](auto ft) {
      constexpr int FT = decltype(ft)::value;
      if (p.dims == 2)
        backward_x_kernel<2, TT, FT><<<n_blocks(n), kThreads, 0, stream>>>(x, table, grad_out, grad_x, n, p);
      else
        backward_x_kernel<3, TT, FT><<<n_blocks(n), kThreads, 0, stream>>>(x, table, grad_out, grad_x, n, p);
    });
    return launch_status();
  }
  return cudaSuccess;
}

template cudaError_t hash_encode_forward<float>(const float*, const float*, float*, int64_t, const HashGridParams&,
                                                cudaStream_t);
template cudaError_t hash_encode_forward<__half>(const float*, const __half*, float*, int64_t, const HashGridParams&,
                                                 cudaStream_t);
template cudaError_t hash_encode_backward<float>(const float*, const float*, const float*, float*, float*, int64_t,
                                                 const HashGridParams&, cudaStream_t);
template cudaError_t hash_encode_backward<__half>(const float*, const __half*, const float*, float*, float*, int64_t,
                                                  const HashGridParams&, cudaStream_t);

}  // namespace cuda
}  // namespace nt
