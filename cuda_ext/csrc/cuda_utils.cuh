// Launch helpers shared by the .cu files (torch-free).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace nt {
namespace cuda {

constexpr int kThreads = 256;

inline unsigned int n_blocks(int64_t n, int threads = kThreads) {
  return static_cast<unsigned int>((n + threads - 1) / threads);
}

// Status of the last launch (cudaSuccess when it went out).
inline cudaError_t launch_status() { return cudaGetLastError(); }

}  // namespace cuda
}  // namespace nt
