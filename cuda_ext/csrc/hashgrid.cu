// Hash-grid encoding on CUDA: forward and backward to the table per (point, level) item, in tiles of points staged in
// shared memory (see Tile); backward to x one thread per point.
#include <algorithm>

#include "api_cuda.h"
#include "cuda_utils.cuh"

namespace nt {
namespace cuda {
namespace {

// The output and grad_out rows are [L * F] per point. A thread handles one (point, level) and so touches F values of a
// row; a warp of consecutive points at one level would touch 32 rows L * F apart, moving a 32-byte sector for every
// F * 4 bytes (4x the traffic at 16 levels x 2 features). So a block owns a tile of points at every level: it stages
// the tile's rows in shared memory and moves them to or from global memory as one contiguous, coalesced range. The
// items of a block run level after level (consecutive threads: consecutive points, one level), so a warp still
// reads one level's table.
struct Tile {
  int row;     // L * F values per point
  int stride;  // padded row in shared memory: odd, so that consecutive points' rows start in different banks
  int points;  // points per block
  size_t bytes() const { return static_cast<size_t>(points) * stride * sizeof(float); }
};

inline Tile make_tile(const HashGridParams& p) {
  Tile t;
  t.row = p.n_levels * p.n_features;
  t.stride = t.row | 1;
  // 128 points (8 items per thread at 16 levels), fewer when the rows are long: the tile stays within 48 KiB
  t.points = static_cast<int>(std::max(1, std::min(128, (48 * 1024 / 4) / t.stride)));
  return t;
}

template <int D, typename TT, int FT>
__global__ void forward_kernel(const float* __restrict__ x, const TT* __restrict__ table, float* __restrict__ out,
                               int64_t n, const HashGridParams p, const Tile t) {
  extern __shared__ float tile[];
  const int F = FT > 0 ? FT : p.n_features;
  const int64_t first = blockIdx.x * static_cast<int64_t>(t.points);
  const int count = static_cast<int>(min_(static_cast<int64_t>(t.points), n - first));
  for (int item = threadIdx.x; item < count * p.n_levels; item += blockDim.x) {
    const int j = item % count, level = item / count;
    float xi[D];
    NT_UNROLL
    for (int d = 0; d < D; ++d) xi[d] = x[(first + j) * D + d];
    float acc[kMaxFeatures];
    hash_level_forward<D, float, TT, FT>(p, level, xi, table, acc);
    float* row = tile + j * t.stride + level * F;
    for (int f = 0; f < F; ++f) row[f] = acc[f];
  }
  __syncthreads();
  float* o = out + first * t.row;
  for (int k = threadIdx.x; k < count * t.row; k += blockDim.x) o[k] = tile[(k / t.row) * t.stride + k % t.row];
}

template <int D, int FT>
__global__ void backward_table_kernel(const float* __restrict__ x, const float* __restrict__ grad_out,
                                      float* __restrict__ grad_table, int64_t n, const HashGridParams p,
                                      const Tile t) {
  extern __shared__ float tile[];
  const int F = FT > 0 ? FT : p.n_features;
  const int64_t first = blockIdx.x * static_cast<int64_t>(t.points);
  const int count = static_cast<int>(min_(static_cast<int64_t>(t.points), n - first));
  const float* g = grad_out + first * t.row;
  for (int k = threadIdx.x; k < count * t.row; k += blockDim.x) tile[(k / t.row) * t.stride + k % t.row] = g[k];
  __syncthreads();
  for (int item = threadIdx.x; item < count * p.n_levels; item += blockDim.x) {
    const int j = item % count, level = item / count;
    float xi[D];
    NT_UNROLL
    for (int d = 0; d < D; ++d) xi[d] = x[(first + j) * D + d];
    hash_level_backward_table<D, true, float, float, FT>(p, level, xi, tile + j * t.stride + level * F, grad_table);
  }
}

// One thread per point, over every level: a thread reads its whole grad_out row, whose sectors L1 keeps across the
// levels, so this kernel needs no tile.
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
  const Tile t = make_tile(p);
  const unsigned int blocks = n_blocks(n, t.points);
  dispatch_features(p.n_features, [&](auto ft) {
    constexpr int FT = decltype(ft)::value;
    if (p.dims == 2) forward_kernel<2, TT, FT><<<blocks, kThreads, t.bytes(), stream>>>(x, table, out, n, p, t);
    else forward_kernel<3, TT, FT><<<blocks, kThreads, t.bytes(), stream>>>(x, table, out, n, p, t);
  });
  return launch_status();
}

template <typename TT>
cudaError_t hash_encode_backward(const float* x, const TT* table, const float* grad_out, float* grad_table_f32,
                                 float* grad_x, int64_t n, const HashGridParams& p, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (grad_table_f32 != nullptr) {
    const Tile t = make_tile(p);
    const unsigned int blocks = n_blocks(n, t.points);
    dispatch_features(p.n_features, [&](auto ft) {
      constexpr int FT = decltype(ft)::value;
      if (p.dims == 2)
        backward_table_kernel<2, FT><<<blocks, kThreads, t.bytes(), stream>>>(x, grad_out, grad_table_f32, n, p, t);
      else
        backward_table_kernel<3, FT><<<blocks, kThreads, t.bytes(), stream>>>(x, grad_out, grad_table_f32, n, p, t);
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
