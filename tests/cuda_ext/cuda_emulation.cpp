// Runs the hash-grid CUDA kernels of cuda_ext/csrc/hashgrid.cu on the host, for a machine without a GPU: every block
// in turn, its threads as std::threads that meet at __syncthreads() on a barrier, shared memory as one array.
// The test (test_cuda_ext_emulated.py) pastes the kernels (the anonymous namespace of hashgrid.cu) where KERNELS is
// and compares what they compute with the CPU extension.
//
//   cuda_emulation IN_DIR OUT_DIR THREADS   (IN_DIR: params.txt, x.f32, table.f32, grad_out.f32)
#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "hashgrid.h"

struct Index3 {
  unsigned int x = 0, y = 0, z = 0;
};
static thread_local Index3 threadIdx;
static Index3 blockIdx, blockDim;
static std::barrier<>* block_barrier = nullptr;
static void __syncthreads() { block_barrier->arrive_and_wait(); }

#define __global__
#define __shared__

namespace nt {
namespace cuda {
namespace {
alignas(16) float tile[1 << 16];  // the block's dynamic shared memory
}  // namespace
// KERNELS
}  // namespace cuda
}  // namespace nt

// Runs `kernel` over `blocks` blocks of `threads` threads, one block at a time.
static void launch(unsigned int blocks, unsigned int threads, const std::function<void()>& kernel) {
  blockDim = {threads, 1, 1};
  for (unsigned int b = 0; b < blocks; ++b) {
    blockIdx = {b, 0, 0};
    std::barrier<> barrier(threads);
    block_barrier = &barrier;
    std::vector<std::thread> pool;
    for (unsigned int t = 0; t < threads; ++t)
      pool.emplace_back([t, &kernel] {
        threadIdx = {t, 0, 0};
        kernel();
      });
    for (auto& th : pool) th.join();
  }
}

template <typename T>
static std::vector<T> read(const std::string& path, size_t n) {
  std::vector<T> v(n);
  std::ifstream(path, std::ios::binary).read(reinterpret_cast<char*>(v.data()), n * sizeof(T));
  return v;
}

template <typename T>
static void write(const std::string& path, const std::vector<T>& v) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  const std::string in = argv[1], out = argv[2];
  const unsigned int threads = static_cast<unsigned int>(std::stoi(argv[3]));
  std::ifstream params(in + "/params.txt");
  nt::HashGridParams p{};
  int64_t n = 0;
  params >> p.dims >> p.n_levels >> p.n_features >> p.table_size >> n;
  for (int l = 0; l < p.n_levels; ++l) {
    int dense = 0;
    params >> p.scales[l] >> p.resolutions[l] >> dense;
    p.dense[l] = static_cast<uint8_t>(dense);
  }
  const int row = p.n_levels * p.n_features;
  const auto x = read<float>(in + "/x.f32", n * p.dims);
  const auto table = read<float>(in + "/table.f32", size_t(p.n_levels) * p.table_size * p.n_features);
  const auto grad_out = read<float>(in + "/grad_out.f32", n * row);
  std::vector<float> enc(n * row), grad_table(table.size(), 0.0f), grad_x(n * p.dims);
  const nt::cuda::Tile t = nt::cuda::make_tile(p);
  if (t.bytes() > sizeof(nt::cuda::tile)) return 3;
  const unsigned int tiles = static_cast<unsigned int>((n + t.points - 1) / t.points);
  const unsigned int blocks = static_cast<unsigned int>((n + threads - 1) / threads);
  nt::dispatch_features(p.n_features, [&](auto ft) {
    constexpr int FT = decltype(ft)::value;
    if (p.dims == 2) {
      launch(tiles, threads, [&] { nt::cuda::forward_kernel<2, float, FT>(x.data(), table.data(), enc.data(), n, p, t); });
      launch(tiles, threads, [&] { nt::cuda::backward_table_kernel<2, FT>(x.data(), grad_out.data(), grad_table.data(), n, p, t); });
      launch(blocks, threads, [&] { nt::cuda::backward_x_kernel<2, float, FT>(x.data(), table.data(), grad_out.data(), grad_x.data(), n, p); });
    } else {
      launch(tiles, threads, [&] { nt::cuda::forward_kernel<3, float, FT>(x.data(), table.data(), enc.data(), n, p, t); });
      launch(tiles, threads, [&] { nt::cuda::backward_table_kernel<3, FT>(x.data(), grad_out.data(), grad_table.data(), n, p, t); });
      launch(blocks, threads, [&] { nt::cuda::backward_x_kernel<3, float, FT>(x.data(), table.data(), grad_out.data(), grad_x.data(), n, p); });
    }
  });
  write(out + "/out.f32", enc);
  write(out + "/grad_table.f32", grad_table);
  write(out + "/grad_x.f32", grad_x);
  return 0;
}
