// Feathered box weight on CUDA: one thread per point.
#include "api_cuda.h"
#include "box.h"
#include "cuda_utils.cuh"

namespace nt {
namespace cuda {
namespace {

__global__ void box_kernel(const float* __restrict__ x, int64_t n, const float* __restrict__ box, float feather,
                           float* __restrict__ out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = box_weight(x + 3 * i, box_ramp(box, feather));
}

}  // namespace

cudaError_t box_weights(const float* x, int64_t n, const float* box, float feather, float* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  box_kernel<<<n_blocks(n), kThreads, 0, stream>>>(x, n, box, feather, out);
  return launch_status();
}

}  // namespace cuda
}  // namespace nt
