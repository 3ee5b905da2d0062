// Point warp on CUDA: one thread per point.
#include "api_cuda.h"
#include "cuda_utils.cuh"
#include "warp.h"

namespace nt {
namespace cuda {
namespace {

__global__ void warp_kernel(const float* __restrict__ x, const float* __restrict__ ctrl,
                            const float* __restrict__ disp, const int64_t* __restrict__ rows,
                            const float* __restrict__ masks, int64_t n, WarpParams p, float* __restrict__ out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t set = rows == nullptr ? 0 : rows[i];
  warp_point(x + 3 * i, ctrl + set * 3 * p.n_ctrl, disp + set * 3 * p.n_ctrl, masks, p, out + 3 * i);
}

}  // namespace

cudaError_t warp_points(const float* x, const float* ctrl, const float* disp, const int64_t* rows,
                        const float* masks, int64_t n, const WarpParams& p, float* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  warp_kernel<<<n_blocks(n), kThreads, 0, stream>>>(x, ctrl, disp, rows, masks, n, p, out);
  return launch_status();
}

}  // namespace cuda
}  // namespace nt
