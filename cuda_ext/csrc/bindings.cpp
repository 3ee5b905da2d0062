// Torch bindings, the only file that includes torch. Compiled twice by cuda_ext/_backend.py:
//   - the CPU extension (this file + *_cpu.cpp), tensors on the CPU, float32 or float64;
//   - with NT_WITH_CUDA, the CUDA extension (this file + *.cu), tensors on a CUDA device, float32 (tables also fp16).
// Each op checks shapes and dtypes at the boundary (printing what it got), allocates the outputs, returns early on
// empty input and calls the launcher; CUDA launches go to the current stream and their status is checked.
// Narrow includes instead of <torch/extension.h>: they keep the JIT build of this file fast.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <string>
#include <vector>

#if defined(NT_WITH_CUDA)
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "api_cuda.h"
#else
#include <ATen/Parallel.h>

#include "api_cpu.h"
#endif

namespace {

using at::Tensor;

std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

#define NT_CHECK_SHAPE(cond, name, t, expected) \
  TORCH_CHECK(cond, name, " must have shape ", expected, ", got ", shape_str(t))

#if defined(NT_WITH_CUDA)
#define NT_CHECK_DEVICE(t, name) \
  TORCH_CHECK((t).is_cuda(), name, " must be a CUDA tensor (this is the CUDA extension), got ", (t).device())
#define NT_CHECK_LAUNCH(err) TORCH_CHECK((err) == cudaSuccess, "CUDA kernel launch failed: ", cudaGetErrorString(err))
#else
#define NT_CHECK_DEVICE(t, name) \
  TORCH_CHECK((t).device().is_cpu(), name, " must be a CPU tensor (this is the CPU extension), got ", (t).device())
int n_threads() { return at::get_num_threads(); }
#endif

#define NT_CHECK_INPUT(t, name)                                                 \
  do {                                                                          \
    NT_CHECK_DEVICE(t, name);                                                   \
    TORCH_CHECK((t).is_contiguous(), name, " must be contiguous");               \
  } while (0)

#define NT_CHECK_DTYPE(t, name, dtype) \
  TORCH_CHECK((t).scalar_type() == (dtype), name, " must be ", dtype, ", got ", (t).scalar_type())

void check_float_dtype(const Tensor& t, const char* name) {
#if defined(NT_WITH_CUDA)
  NT_CHECK_DTYPE(t, name, at::kFloat);
#else
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
#endif
}

// ----------------------------------------------------------------------------------------------------------------
// Hash-grid encoding

nt::HashGridParams make_params(const Tensor& x, const Tensor& table, const std::vector<double>& scales,
                               const std::vector<int64_t>& resolutions, const std::vector<bool>& dense) {
  NT_CHECK_SHAPE(x.dim() == 2 && (x.size(1) == 2 || x.size(1) == 3), "x", x, "[N, 2] or [N, 3]");
  NT_CHECK_SHAPE(table.dim() == 3, "table", table, "[n_levels, table_size, n_features]");
  const int64_t L = table.size(0), T = table.size(1), F = table.size(2);
  TORCH_CHECK(L >= 1 && L <= nt::kMaxLevels, "n_levels must be in [1, ", nt::kMaxLevels, "], is ", L);
  TORCH_CHECK(F >= 1 && F <= nt::kMaxFeatures, "n_features must be in [1, ", nt::kMaxFeatures, "], is ", F);
  TORCH_CHECK(T >= 1 && T <= (int64_t(1) << 31) && (T & (T - 1)) == 0, "table_size must be a power of two <= 2^31, is ",
              T);
  TORCH_CHECK(static_cast<int64_t>(scales.size()) == L && static_cast<int64_t>(resolutions.size()) == L &&
                  static_cast<int64_t>(dense.size()) == L,
              "scales, resolutions and dense need one entry per level (", L, "), got ", scales.size(), ", ",
              resolutions.size(), ", ", dense.size());
  nt::HashGridParams p{};
  p.dims = static_cast<int32_t>(x.size(1));
  p.n_levels = static_cast<int32_t>(L);
  p.n_features = static_cast<int32_t>(F);
  p.table_size = static_cast<uint32_t>(T);
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK(scales[l] > 0, "scale of level ", l, " must be > 0, is ", scales[l]);
    p.scales[l] = scales[l];
    p.resolutions[l] = static_cast<uint32_t>(resolutions[l]);
    p.dense[l] = dense[l] ? 1 : 0;
  }
  return p;
}

Tensor hash_encode_forward(const Tensor& x, const Tensor& table, const std::vector<double>& scales,
                           const std::vector<int64_t>& resolutions, const std::vector<bool>& dense) {
  NT_CHECK_INPUT(x, "x");
  NT_CHECK_INPUT(table, "table");
  check_float_dtype(x, "x");
  const nt::HashGridParams p = make_params(x, table, scales, resolutions, dense);
  const int64_t n = x.size(0);
  Tensor out = at::empty({n, int64_t(p.n_levels) * p.n_features}, x.options());
  if (n == 0) return out;
#if defined(NT_WITH_CUDA)
  TORCH_CHECK(table.device() == x.device(), "table is on ", table.device(), " but x on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  cudaError_t err;
  if (table.scalar_type() == at::kHalf) {
    err = nt::cuda::hash_encode_forward<__half>(x.data_ptr<float>(),
                                                reinterpret_cast<const __half*>(table.data_ptr<at::Half>()),
                                                out.data_ptr<float>(), n, p, stream);
  } else {
    NT_CHECK_DTYPE(table, "table", at::kFloat);
    err = nt::cuda::hash_encode_forward<float>(x.data_ptr<float>(), table.data_ptr<float>(), out.data_ptr<float>(), n,
                                               p, stream);
  }
  NT_CHECK_LAUNCH(err);
#else
  NT_CHECK_DTYPE(table, "table", x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hash_encode_forward", [&] {
    nt::cpu::hash_encode_forward<scalar_t>(x.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(),
                                           out.data_ptr<scalar_t>(), n, p, n_threads());
  });
#endif
  return out;
}

// Returns (grad_table or None, grad_x or None). grad_table has the table's dtype on the CPU; on CUDA it is float32
// for fp16 tables too (accumulated in float32: casting it to fp16 would round small gradients away).
std::vector<Tensor> hash_encode_backward(const Tensor& grad_out, const Tensor& x, const Tensor& table,
                                         const std::vector<double>& scales, const std::vector<int64_t>& resolutions,
                                         const std::vector<bool>& dense, bool need_table, bool need_x) {
  NT_CHECK_INPUT(grad_out, "grad_out");
  NT_CHECK_INPUT(x, "x");
  NT_CHECK_INPUT(table, "table");
  check_float_dtype(x, "x");
  NT_CHECK_DTYPE(grad_out, "grad_out", x.scalar_type());
  const nt::HashGridParams p = make_params(x, table, scales, resolutions, dense);
  const int64_t n = x.size(0);
  NT_CHECK_SHAPE(grad_out.dim() == 2 && grad_out.size(0) == n && grad_out.size(1) == int64_t(p.n_levels) * p.n_features,
                 "grad_out", grad_out, "[N, n_levels * n_features]");
  Tensor grad_table, grad_x;
#if defined(NT_WITH_CUDA)
  const c10::cuda::CUDAGuard guard(x.device());
  if (need_table) grad_table = at::zeros(table.sizes(), table.options().dtype(at::kFloat));
  if (need_x) grad_x = at::empty_like(x);
  if (n > 0 && (need_table || need_x)) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    float* gt = need_table ? grad_table.data_ptr<float>() : nullptr;
    float* gx = need_x ? grad_x.data_ptr<float>() : nullptr;
    cudaError_t err;
    if (table.scalar_type() == at::kHalf) {
      err = nt::cuda::hash_encode_backward<__half>(x.data_ptr<float>(),
                                                   reinterpret_cast<const __half*>(table.data_ptr<at::Half>()),
                                                   grad_out.data_ptr<float>(), gt, gx, n, p, stream);
    } else {
      NT_CHECK_DTYPE(table, "table", at::kFloat);
      err = nt::cuda::hash_encode_backward<float>(x.data_ptr<float>(), table.data_ptr<float>(),
                                                  grad_out.data_ptr<float>(), gt, gx, n, p, stream);
    }
    NT_CHECK_LAUNCH(err);
  }
#else
  NT_CHECK_DTYPE(table, "table", x.scalar_type());
  if (need_table) grad_table = at::zeros_like(table);
  if (need_x) grad_x = at::empty_like(x);
  if (n > 0 && (need_table || need_x)) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hash_encode_backward", [&] {
      nt::cpu::hash_encode_backward<scalar_t>(x.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(),
                                              grad_out.data_ptr<scalar_t>(),
                                              need_table ? grad_table.data_ptr<scalar_t>() : nullptr,
                                              need_x ? grad_x.data_ptr<scalar_t>() : nullptr, n, p, n_threads());
    });
  }
#endif
  return {grad_table, grad_x};
}

// ----------------------------------------------------------------------------------------------------------------
// Occupancy bitfield and ray marching

Tensor pack_bitfield(const Tensor& density, double threshold) {
  NT_CHECK_INPUT(density, "density");
  check_float_dtype(density, "density");
  const int64_t n_cells = density.numel();
  Tensor bits = at::empty({(n_cells + 7) / 8}, density.options().dtype(at::kByte));
  if (n_cells == 0) return bits;
#if defined(NT_WITH_CUDA)
  const c10::cuda::CUDAGuard guard(density.device());
  NT_CHECK_LAUNCH(nt::cuda::pack_bitfield(density.data_ptr<float>(), n_cells, static_cast<float>(threshold),
                                          bits.data_ptr<uint8_t>(), c10::cuda::getCurrentCUDAStream().stream()));
#else
  AT_DISPATCH_FLOATING_TYPES(density.scalar_type(), "pack_bitfield", [&] {
    nt::cpu::pack_bitfield<scalar_t>(density.data_ptr<scalar_t>(), n_cells, static_cast<scalar_t>(threshold),
                                     bits.data_ptr<uint8_t>(), n_threads());
  });
#endif
  return bits;
}

// rays_o, rays_d [R, 3] float32; ray_indices [S] int64 (in [0, R): the caller checks), t_starts, t_ends [S] float32.
// Returns the samples' midpoints [S, 3] (march.h: sample_midpoint).
Tensor sample_positions(const Tensor& rays_o, const Tensor& rays_d, const Tensor& ray_indices, const Tensor& t_starts,
                        const Tensor& t_ends) {
  NT_CHECK_INPUT(rays_o, "rays_o");
  NT_CHECK_INPUT(rays_d, "rays_d");
  NT_CHECK_INPUT(ray_indices, "ray_indices");
  NT_CHECK_INPUT(t_starts, "t_starts");
  NT_CHECK_INPUT(t_ends, "t_ends");
  NT_CHECK_DTYPE(rays_o, "rays_o", at::kFloat);
  NT_CHECK_DTYPE(rays_d, "rays_d", at::kFloat);
  NT_CHECK_DTYPE(ray_indices, "ray_indices", at::kLong);
  NT_CHECK_DTYPE(t_starts, "t_starts", at::kFloat);
  NT_CHECK_DTYPE(t_ends, "t_ends", at::kFloat);
  NT_CHECK_SHAPE(rays_o.dim() == 2 && rays_o.size(1) == 3, "rays_o", rays_o, "[R, 3]");
  NT_CHECK_SHAPE(rays_d.sizes() == rays_o.sizes(), "rays_d", rays_d, "[R, 3]");
  const int64_t n = ray_indices.numel();
  NT_CHECK_SHAPE(ray_indices.dim() == 1, "ray_indices", ray_indices, "[S]");
  NT_CHECK_SHAPE(t_starts.dim() == 1 && t_starts.size(0) == n, "t_starts", t_starts, "[S]");
  NT_CHECK_SHAPE(t_ends.dim() == 1 && t_ends.size(0) == n, "t_ends", t_ends, "[S]");
  Tensor out = at::empty({n, 3}, rays_o.options());
  if (n == 0) return out;
#if defined(NT_WITH_CUDA)
  const c10::cuda::CUDAGuard guard(rays_o.device());
  NT_CHECK_LAUNCH(nt::cuda::sample_positions(rays_o.data_ptr<float>(), rays_d.data_ptr<float>(),
                                             ray_indices.data_ptr<int64_t>(), t_starts.data_ptr<float>(),
                                             t_ends.data_ptr<float>(), n, out.data_ptr<float>(),
                                             c10::cuda::getCurrentCUDAStream().stream()));
#else
  nt::cpu::sample_positions(rays_o.data_ptr<float>(), rays_d.data_ptr<float>(), ray_indices.data_ptr<int64_t>(),
                            t_starts.data_ptr<float>(), t_ends.data_ptr<float>(), n, out.data_ptr<float>(),
                            n_threads());
#endif
  return out;
}

// Returns (packed_info [R, 2] int64, t_starts [S], t_ends [S], ray_indices [S] int64).
std::vector<Tensor> march_rays(const Tensor& rays_o, const Tensor& rays_d, const Tensor& near, const Tensor& far,
                               const Tensor& bits, const std::vector<double>& aabb, const std::vector<int64_t>& res,
                               double step, int64_t max_samples) {
  NT_CHECK_INPUT(rays_o, "rays_o");
  NT_CHECK_INPUT(rays_d, "rays_d");
  NT_CHECK_INPUT(near, "near");
  NT_CHECK_INPUT(far, "far");
  NT_CHECK_INPUT(bits, "bits");
  NT_CHECK_DTYPE(rays_o, "rays_o", at::kFloat);
  NT_CHECK_DTYPE(rays_d, "rays_d", at::kFloat);
  NT_CHECK_DTYPE(near, "near", at::kFloat);
  NT_CHECK_DTYPE(far, "far", at::kFloat);
  NT_CHECK_DTYPE(bits, "bits", at::kByte);
  NT_CHECK_SHAPE(rays_o.dim() == 2 && rays_o.size(1) == 3, "rays_o", rays_o, "[R, 3]");
  const int64_t R = rays_o.size(0);
  NT_CHECK_SHAPE(rays_d.dim() == 2 && rays_d.size(0) == R && rays_d.size(1) == 3, "rays_d", rays_d, "[R, 3]");
  NT_CHECK_SHAPE(near.dim() == 1 && near.size(0) == R, "near", near, "[R]");
  NT_CHECK_SHAPE(far.dim() == 1 && far.size(0) == R, "far", far, "[R]");
  TORCH_CHECK(aabb.size() == 6, "aabb needs 6 values, got ", aabb.size());
  TORCH_CHECK(res.size() == 3, "res needs 3 values, got ", res.size());
  TORCH_CHECK(step > 0, "step_size must be > 0, is ", step);
  TORCH_CHECK(max_samples >= 0, "max_samples must be >= 0, is ", max_samples);
  nt::MarchParams p{};
  int64_t n_cells = 1;
  for (int a = 0; a < 3; ++a) {
    TORCH_CHECK(aabb[a + 3] > aabb[a], "aabb max must exceed min on axis ", a, ", got [", aabb[a], ", ", aabb[a + 3],
                "]");
    TORCH_CHECK(res[a] >= 1, "grid resolution must be >= 1, is ", res[a]);
    p.aabb[a] = static_cast<float>(aabb[a]);
    p.aabb[a + 3] = static_cast<float>(aabb[a + 3]);
    p.res[a] = static_cast<int32_t>(res[a]);
    const float extent = p.aabb[a + 3] - p.aabb[a];
    p.scale[a] = static_cast<float>(res[a]) / extent;  // float32, as the reference computes it
    p.cell_size[a] = extent / static_cast<float>(res[a]);
    n_cells *= res[a];
  }
  NT_CHECK_SHAPE(bits.dim() == 1 && bits.size(0) == (n_cells + 7) / 8, "bits", bits, "[ceil(rx * ry * rz / 8)]");
  p.step = static_cast<float>(step);
  p.max_samples = max_samples;

  auto idx_opts = rays_o.options().dtype(at::kLong);
  Tensor counts = at::zeros({R}, idx_opts);
  Tensor t_starts, t_ends, ray_indices;
  auto allocate = [&](int64_t total) {
    t_starts = at::empty({total}, rays_o.options());
    t_ends = at::empty({total}, rays_o.options());
    ray_indices = at::empty({total}, idx_opts);
  };
#if defined(NT_WITH_CUDA)
  const c10::cuda::CUDAGuard guard(rays_o.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  if (R > 0) {
    NT_CHECK_LAUNCH(nt::cuda::march_count(p, bits.data_ptr<uint8_t>(), rays_o.data_ptr<float>(),
                                          rays_d.data_ptr<float>(), near.data_ptr<float>(), far.data_ptr<float>(), R,
                                          counts.data_ptr<int64_t>(), stream));
  }
  const Tensor inclusive = counts.cumsum(0);
  const Tensor offsets = inclusive.sub(counts);
  const int64_t total = R > 0 ? inclusive[R - 1].item<int64_t>() : 0;
  allocate(total);
  if (total > 0) {
    NT_CHECK_LAUNCH(nt::cuda::march_write(p, bits.data_ptr<uint8_t>(), rays_o.data_ptr<float>(),
                                          rays_d.data_ptr<float>(), near.data_ptr<float>(), far.data_ptr<float>(), R,
                                          counts.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
                                          t_starts.data_ptr<float>(), t_ends.data_ptr<float>(),
                                          ray_indices.data_ptr<int64_t>(), stream));
  }
#else
  allocate(0);
  if (R > 0) {
    nt::cpu::march(p, bits.data_ptr<uint8_t>(), rays_o.data_ptr<float>(), rays_d.data_ptr<float>(),
                   near.data_ptr<float>(), far.data_ptr<float>(), R, counts.data_ptr<int64_t>(),
                   [&](int64_t total, float** ts, float** te, int64_t** ri) {
                     allocate(total);
                     *ts = t_starts.data_ptr<float>();
                     *te = t_ends.data_ptr<float>();
                     *ri = ray_indices.data_ptr<int64_t>();
                   },
                   n_threads());
  }
  const Tensor offsets = counts.cumsum(0).sub(counts);
#endif
  const Tensor packed_info = at::stack({offsets, counts}, 1).contiguous();
  return {packed_info, t_starts, t_ends, ray_indices};
}

// ----------------------------------------------------------------------------------------------------------------
// Volume compositing

void check_composite_inputs(const Tensor& sigmas, const Tensor& rgbs, const Tensor& t_starts, const Tensor& t_ends,
                            const Tensor& packed_info) {
  NT_CHECK_INPUT(sigmas, "sigmas");
  NT_CHECK_INPUT(rgbs, "rgbs");
  NT_CHECK_INPUT(t_starts, "t_starts");
  NT_CHECK_INPUT(t_ends, "t_ends");
  NT_CHECK_INPUT(packed_info, "packed_info");
  check_float_dtype(sigmas, "sigmas");
  NT_CHECK_DTYPE(rgbs, "rgbs", sigmas.scalar_type());
  NT_CHECK_DTYPE(t_starts, "t_starts", sigmas.scalar_type());
  NT_CHECK_DTYPE(t_ends, "t_ends", sigmas.scalar_type());
  NT_CHECK_DTYPE(packed_info, "packed_info", at::kLong);
  const int64_t S = sigmas.size(0);
  NT_CHECK_SHAPE(sigmas.dim() == 1, "sigmas", sigmas, "[S]");
  NT_CHECK_SHAPE(rgbs.dim() == 2 && rgbs.size(0) == S && rgbs.size(1) == 3, "rgbs", rgbs, "[S, 3]");
  NT_CHECK_SHAPE(t_starts.dim() == 1 && t_starts.size(0) == S, "t_starts", t_starts, "[S]");
  NT_CHECK_SHAPE(t_ends.dim() == 1 && t_ends.size(0) == S, "t_ends", t_ends, "[S]");
  NT_CHECK_SHAPE(packed_info.dim() == 2 && packed_info.size(1) == 2, "packed_info", packed_info, "[R, 2]");
}

std::vector<Tensor> composite_forward(const Tensor& sigmas, const Tensor& rgbs, const Tensor& t_starts,
                                      const Tensor& t_ends, const Tensor& packed_info, double early_stop_eps) {
  check_composite_inputs(sigmas, rgbs, t_starts, t_ends, packed_info);
  const int64_t R = packed_info.size(0);
  Tensor rgb = at::empty({R, 3}, sigmas.options());
  Tensor depth = at::empty({R}, sigmas.options());
  Tensor opacity = at::empty({R}, sigmas.options());
  if (R == 0) return {rgb, depth, opacity};
#if defined(NT_WITH_CUDA)
  const c10::cuda::CUDAGuard guard(sigmas.device());
  NT_CHECK_LAUNCH(nt::cuda::composite_forward(sigmas.data_ptr<float>(), rgbs.data_ptr<float>(),
                                              t_starts.data_ptr<float>(), t_ends.data_ptr<float>(),
                                              packed_info.data_ptr<int64_t>(), R, static_cast<float>(early_stop_eps),
                                              rgb.data_ptr<float>(), depth.data_ptr<float>(),
                                              opacity.data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream()));
#else
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "composite_forward", [&] {
    nt::cpu::composite_forward<scalar_t>(sigmas.data_ptr<scalar_t>(), rgbs.data_ptr<scalar_t>(),
                                         t_starts.data_ptr<scalar_t>(), t_ends.data_ptr<scalar_t>(),
                                         packed_info.data_ptr<int64_t>(), R, static_cast<scalar_t>(early_stop_eps),
                                         rgb.data_ptr<scalar_t>(), depth.data_ptr<scalar_t>(),
                                         opacity.data_ptr<scalar_t>(), n_threads());
  });
#endif
  return {rgb, depth, opacity};
}

std::vector<Tensor> composite_backward(const Tensor& grad_rgb, const Tensor& grad_depth, const Tensor& grad_opacity,
                                       const Tensor& sigmas, const Tensor& rgbs, const Tensor& t_starts,
                                       const Tensor& t_ends, const Tensor& packed_info, const Tensor& rgb,
                                       const Tensor& depth, const Tensor& opacity, double early_stop_eps) {
  check_composite_inputs(sigmas, rgbs, t_starts, t_ends, packed_info);
  const int64_t R = packed_info.size(0);
  auto check_per_ray = [&](const Tensor& t, const char* name, bool rgb_like) {
    NT_CHECK_INPUT(t, name);
    NT_CHECK_DTYPE(t, name, sigmas.scalar_type());
    if (rgb_like) {
      NT_CHECK_SHAPE(t.dim() == 2 && t.size(0) == R && t.size(1) == 3, name, t, "[R, 3]");
    } else {
      NT_CHECK_SHAPE(t.dim() == 1 && t.size(0) == R, name, t, "[R]");
    }
  };
  check_per_ray(grad_rgb, "grad_rgb", true);
  check_per_ray(rgb, "rgb", true);
  check_per_ray(grad_depth, "grad_depth", false);
  check_per_ray(grad_opacity, "grad_opacity", false);
  check_per_ray(depth, "depth", false);
  check_per_ray(opacity, "opacity", false);
  // Samples outside every ray's range get no gradient: start from zeros.
  Tensor grad_sigmas = at::zeros_like(sigmas);
  Tensor grad_rgbs = at::zeros_like(rgbs);
  if (R == 0 || sigmas.size(0) == 0) return {grad_sigmas, grad_rgbs};
#if defined(NT_WITH_CUDA)
  const c10::cuda::CUDAGuard guard(sigmas.device());
  NT_CHECK_LAUNCH(nt::cuda::composite_backward(
      sigmas.data_ptr<float>(), rgbs.data_ptr<float>(), t_starts.data_ptr<float>(), t_ends.data_ptr<float>(),
      packed_info.data_ptr<int64_t>(), R, static_cast<float>(early_stop_eps), rgb.data_ptr<float>(),
      depth.data_ptr<float>(), opacity.data_ptr<float>(), grad_rgb.data_ptr<float>(), grad_depth.data_ptr<float>(),
      grad_opacity.data_ptr<float>(), grad_sigmas.data_ptr<float>(), grad_rgbs.data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream().stream()));
#else
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "composite_backward", [&] {
    nt::cpu::composite_backward<scalar_t>(
        sigmas.data_ptr<scalar_t>(), rgbs.data_ptr<scalar_t>(), t_starts.data_ptr<scalar_t>(),
        t_ends.data_ptr<scalar_t>(), packed_info.data_ptr<int64_t>(), R, static_cast<scalar_t>(early_stop_eps),
        rgb.data_ptr<scalar_t>(), depth.data_ptr<scalar_t>(), opacity.data_ptr<scalar_t>(),
        grad_rgb.data_ptr<scalar_t>(), grad_depth.data_ptr<scalar_t>(), grad_opacity.data_ptr<scalar_t>(),
        grad_sigmas.data_ptr<scalar_t>(), grad_rgbs.data_ptr<scalar_t>(), n_threads());
  });
#endif
  return {grad_sigmas, grad_rgbs};
}

// Inference compositing: per-sample weights (0 where the colour is not needed) and per-ray opacity.
std::vector<Tensor> composite_weights(const Tensor& sigmas, const Tensor& t_starts, const Tensor& t_ends,
                                      const Tensor& packed_info, double early_stop_eps, double skip_budget) {
  NT_CHECK_INPUT(sigmas, "sigmas");
  NT_CHECK_INPUT(t_starts, "t_starts");
  NT_CHECK_INPUT(t_ends, "t_ends");
  NT_CHECK_INPUT(packed_info, "packed_info");
  check_float_dtype(sigmas, "sigmas");
  NT_CHECK_DTYPE(t_starts, "t_starts", sigmas.scalar_type());
  NT_CHECK_DTYPE(t_ends, "t_ends", sigmas.scalar_type());
  NT_CHECK_DTYPE(packed_info, "packed_info", at::kLong);
  const int64_t S = sigmas.size(0);
  NT_CHECK_SHAPE(sigmas.dim() == 1, "sigmas", sigmas, "[S]");
  NT_CHECK_SHAPE(t_starts.dim() == 1 && t_starts.size(0) == S, "t_starts", t_starts, "[S]");
  NT_CHECK_SHAPE(t_ends.dim() == 1 && t_ends.size(0) == S, "t_ends", t_ends, "[S]");
  NT_CHECK_SHAPE(packed_info.dim() == 2 && packed_info.size(1) == 2, "packed_info", packed_info, "[R, 2]");
  const int64_t R = packed_info.size(0);
  // Zeros: samples outside every ray's range are not written by the kernel.
  Tensor weights = at::zeros_like(sigmas);
  Tensor opacity = at::empty({R}, sigmas.options());
  if (R == 0) return {weights, opacity};
#if defined(NT_WITH_CUDA)
  const c10::cuda::CUDAGuard guard(sigmas.device());
  NT_CHECK_LAUNCH(nt::cuda::composite_weights(sigmas.data_ptr<float>(), t_starts.data_ptr<float>(),
                                              t_ends.data_ptr<float>(), packed_info.data_ptr<int64_t>(), R,
                                              static_cast<float>(early_stop_eps), static_cast<float>(skip_budget),
                                              weights.data_ptr<float>(), opacity.data_ptr<float>(),
                                              c10::cuda::getCurrentCUDAStream().stream()));
#else
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "composite_weights", [&] {
    nt::cpu::composite_weights<scalar_t>(sigmas.data_ptr<scalar_t>(), t_starts.data_ptr<scalar_t>(),
                                         t_ends.data_ptr<scalar_t>(), packed_info.data_ptr<int64_t>(), R,
                                         static_cast<scalar_t>(early_stop_eps), static_cast<scalar_t>(skip_budget),
                                         weights.data_ptr<scalar_t>(), opacity.data_ptr<scalar_t>(), n_threads());
  });
#endif
  return {weights, opacity};
}

// Inference compositing's colour: rgb [R, 3] = sum over each ray's samples of weights [S] x rgbs [S, 3].
Tensor composite_colours(const Tensor& weights, const Tensor& rgbs, const Tensor& packed_info) {
  NT_CHECK_INPUT(weights, "weights");
  NT_CHECK_INPUT(rgbs, "rgbs");
  NT_CHECK_INPUT(packed_info, "packed_info");
  check_float_dtype(weights, "weights");
  NT_CHECK_DTYPE(rgbs, "rgbs", weights.scalar_type());
  NT_CHECK_DTYPE(packed_info, "packed_info", at::kLong);
  const int64_t S = weights.size(0);
  NT_CHECK_SHAPE(weights.dim() == 1, "weights", weights, "[S]");
  NT_CHECK_SHAPE(rgbs.dim() == 2 && rgbs.size(0) == S && rgbs.size(1) == 3, "rgbs", rgbs, "[S, 3]");
  NT_CHECK_SHAPE(packed_info.dim() == 2 && packed_info.size(1) == 2, "packed_info", packed_info, "[R, 2]");
  const int64_t R = packed_info.size(0);
  Tensor rgb = at::empty({R, 3}, weights.options());
  if (R == 0) return rgb;
#if defined(NT_WITH_CUDA)
  const c10::cuda::CUDAGuard guard(weights.device());
  NT_CHECK_LAUNCH(nt::cuda::composite_colours(weights.data_ptr<float>(), rgbs.data_ptr<float>(),
                                              packed_info.data_ptr<int64_t>(), R, rgb.data_ptr<float>(),
                                              c10::cuda::getCurrentCUDAStream().stream()));
#else
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "composite_colours", [&] {
    nt::cpu::composite_colours<scalar_t>(weights.data_ptr<scalar_t>(), rgbs.data_ptr<scalar_t>(),
                                         packed_info.data_ptr<int64_t>(), R, rgb.data_ptr<scalar_t>(), n_threads());
  });
#endif
  return rgb;
}

// ----------------------------------------------------------------------------------------------------------------
// Point warp by control points (warp.h)

// x [N, 3]; ctrl, disp [U, 3, P] (coordinate-major); rows [N] int64 in [0, U) or empty (every point uses set 0);
// masks [2, P] (where a point belongs to the upper, then the lower side: 1, or 2 for its displacement only and not
// the side's height) or empty (one-sided); stretch: the two-sided blend across the gap (warp.h); box: 6 numbers (lo,
// hi) or none. Returns x - D(x) [N, 3]. The caller checks that rows lie in [0, U) (cuda_ext/warp.py).
Tensor warp_points(const Tensor& x, const Tensor& ctrl, const Tensor& disp, const Tensor& rows, const Tensor& masks,
                   double sigma, double reach_z, double fade, double switch_width, bool stretch,
                   const std::vector<double>& box) {
  NT_CHECK_INPUT(x, "x");
  NT_CHECK_INPUT(ctrl, "ctrl");
  NT_CHECK_INPUT(disp, "disp");
  check_float_dtype(x, "x");
  NT_CHECK_DTYPE(ctrl, "ctrl", x.scalar_type());
  NT_CHECK_DTYPE(disp, "disp", x.scalar_type());
  NT_CHECK_SHAPE(x.dim() == 2 && x.size(1) == 3, "x", x, "[N, 3]");
  NT_CHECK_SHAPE(ctrl.dim() == 3 && ctrl.size(1) == 3 && ctrl.size(0) >= 1, "ctrl", ctrl, "[U >= 1, 3, P]");
  NT_CHECK_SHAPE(disp.sizes() == ctrl.sizes(), "disp", disp, shape_str(ctrl));
  const int64_t n = x.size(0), U = ctrl.size(0), P = ctrl.size(2);
  if (rows.numel() > 0) {
    NT_CHECK_INPUT(rows, "rows");
    NT_CHECK_DTYPE(rows, "rows", at::kLong);
    NT_CHECK_SHAPE(rows.dim() == 1 && rows.size(0) == n, "rows", rows, "[N]");
  } else {
    TORCH_CHECK(U == 1 || n == 0, "rows are needed to choose among ", U, " control sets");
  }
  if (masks.numel() > 0) {
    NT_CHECK_INPUT(masks, "masks");
    NT_CHECK_DTYPE(masks, "masks", x.scalar_type());
    NT_CHECK_SHAPE(masks.dim() == 2 && masks.size(0) == 2 && masks.size(1) == P, "masks", masks, "[2, P]");
  }
  TORCH_CHECK(sigma > 0 && reach_z > 0 && fade >= 0, "sigma and reach_z must be > 0 and fade >= 0, are ", sigma, ", ",
              reach_z, ", ", fade);
  TORCH_CHECK(masks.numel() == 0 || switch_width > 0, "switch_width must be > 0, is ", switch_width);
  TORCH_CHECK(box.empty() || box.size() == 6, "box must hold 6 numbers (lo, hi) or none, got ", box.size());
  nt::WarpParams p{};
  p.n_ctrl = P;
  p.inv_two_sigma2 = 1.0 / (2.0 * sigma * sigma);
  p.inv_reach_z2 = 1.0 / (reach_z * reach_z);
  p.fade = fade;
  p.switch_width = switch_width;
  p.stretch = stretch ? 1 : 0;
  p.has_box = box.empty() ? 0 : 1;
  for (size_t k = 0; k < box.size(); ++k) p.box[k] = box[k];
  Tensor out = at::empty_like(x);
  if (n == 0) return out;
  const int64_t* rows_ptr = rows.numel() > 0 ? rows.data_ptr<int64_t>() : nullptr;
#if defined(NT_WITH_CUDA)
  const c10::cuda::CUDAGuard guard(x.device());
  NT_CHECK_LAUNCH(nt::cuda::warp_points(x.data_ptr<float>(), ctrl.data_ptr<float>(), disp.data_ptr<float>(),
                                        rows_ptr, masks.numel() > 0 ? masks.data_ptr<float>() : nullptr, n, p,
                                        out.data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream()));
#else
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "warp_points", [&] {
    nt::cpu::warp_points<scalar_t>(x.data_ptr<scalar_t>(), ctrl.data_ptr<scalar_t>(), disp.data_ptr<scalar_t>(),
                                   rows_ptr, masks.numel() > 0 ? masks.data_ptr<scalar_t>() : nullptr, n, p,
                                   out.data_ptr<scalar_t>(), n_threads());
  });
#endif
  return out;
}


// ----------------------------------------------------------------------------------------------------------------
// Feathered box weight (box.h)

// x [N, 3], box [6] (lo, hi), same dtype and device. Returns [N].
Tensor box_weights(const Tensor& x, const Tensor& box, double feather) {
  NT_CHECK_INPUT(x, "x");
  NT_CHECK_INPUT(box, "box");
  check_float_dtype(x, "x");
  NT_CHECK_DTYPE(box, "box", x.scalar_type());
  NT_CHECK_SHAPE(x.dim() == 2 && x.size(1) == 3, "x", x, "[N, 3]");
  NT_CHECK_SHAPE(box.dim() == 1 && box.size(0) == 6, "box", box, "[6]");
  TORCH_CHECK(feather > 0, "feather must be > 0, is ", feather);
  const int64_t n = x.size(0);
  Tensor out = at::empty({n}, x.options());
  if (n == 0) return out;
#if defined(NT_WITH_CUDA)
  const c10::cuda::CUDAGuard guard(x.device());
  NT_CHECK_LAUNCH(nt::cuda::box_weights(x.data_ptr<float>(), n, box.data_ptr<float>(), static_cast<float>(feather),
                                        out.data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream()));
#else
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "box_weights", [&] {
    nt::cpu::box_weights<scalar_t>(x.data_ptr<scalar_t>(), n, box.data_ptr<scalar_t>(),
                                   static_cast<scalar_t>(feather), out.data_ptr<scalar_t>(), n_threads());
  });
#endif
  return out;
}

#if !defined(NT_WITH_CUDA)
// ----------------------------------------------------------------------------------------------------------------
// Density activation inside the unit box (box_cpu.cpp; CPU only)

// raw [N] (any stride), x [N, 3] contiguous, same dtype. Returns [N].
Tensor unit_box_density(const Tensor& raw, const Tensor& x, double bias, double limit) {
  NT_CHECK_DEVICE(raw, "raw");
  NT_CHECK_INPUT(x, "x");
  check_float_dtype(x, "x");
  NT_CHECK_DTYPE(raw, "raw", x.scalar_type());
  NT_CHECK_SHAPE(x.dim() == 2 && x.size(1) == 3, "x", x, "[N, 3]");
  NT_CHECK_SHAPE(raw.dim() == 1 && raw.size(0) == x.size(0), "raw", raw, "[" + std::to_string(x.size(0)) + "]");
  TORCH_CHECK(limit > 0 && limit <= 80, "limit must lie in (0, 80], is ", limit);
  const int64_t n = x.size(0);
  Tensor out = at::empty({n}, x.options());
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "unit_box_density", [&] {
    nt::cpu::unit_box_density<scalar_t>(raw.data_ptr<scalar_t>(), raw.stride(0), x.data_ptr<scalar_t>(), n,
                                        static_cast<scalar_t>(bias), static_cast<scalar_t>(limit),
                                        out.data_ptr<scalar_t>(), n_threads());
  });
  return out;
}

// ----------------------------------------------------------------------------------------------------------------
// Small fused MLP (mlp_cpu.cpp; CPU only)

// x [N, D0] float32 (rows may be strided, columns contiguous); weights[l] [D(l+1), Dl], biases[l] [D(l+1)];
// add_rows [M] int64 sorted, add_values [M, D1] (or both empty). Returns [N, D_last].
Tensor mlp_forward(const Tensor& x, const std::vector<Tensor>& weights, const std::vector<Tensor>& biases,
                   const Tensor& add_rows, const Tensor& add_values, bool sigmoid_output) {
  NT_CHECK_DEVICE(x, "x");
  NT_CHECK_DTYPE(x, "x", at::kFloat);
  NT_CHECK_SHAPE(x.dim() == 2 && (x.stride(1) == 1 || x.size(1) <= 1) && x.stride(0) >= x.size(1), "x", x,
                 "[N, D] with contiguous columns");
  const int L = static_cast<int>(weights.size());
  TORCH_CHECK(L >= 1 && L <= nt::cpu::kMlpMaxLayers && biases.size() == weights.size(), "an MLP needs 1 to ",
              nt::cpu::kMlpMaxLayers, " layers with one bias each, got ", weights.size(), " weights and ",
              biases.size(), " biases");
  nt::cpu::MlpParams p{};
  p.n_layers = L;
  p.dims[0] = static_cast<int>(x.size(1));
  p.sigmoid_output = sigmoid_output ? 1 : 0;
  for (int l = 0; l < L; ++l) {
    const Tensor& w = weights[l];
    const Tensor& b = biases[l];
    NT_CHECK_INPUT(w, "weight");
    NT_CHECK_INPUT(b, "bias");
    NT_CHECK_DTYPE(w, "weight", at::kFloat);
    NT_CHECK_DTYPE(b, "bias", at::kFloat);
    NT_CHECK_SHAPE(w.dim() == 2 && w.size(1) == p.dims[l], "weight " + std::to_string(l), w,
                   "[out, " + std::to_string(p.dims[l]) + "]");
    NT_CHECK_SHAPE(b.dim() == 1 && b.size(0) == w.size(0), "bias " + std::to_string(l), b,
                   "[" + std::to_string(w.size(0)) + "]");
    TORCH_CHECK(w.size(0) >= 1 && w.size(0) <= nt::cpu::kMlpMaxWidth, "layer widths must lie in [1, ",
                nt::cpu::kMlpMaxWidth, "], layer ", l, " has ", w.size(0));
    p.dims[l + 1] = static_cast<int>(w.size(0));
    p.weights[l] = w.data_ptr<float>();
    p.biases[l] = b.data_ptr<float>();
  }
  const int64_t n = x.size(0), m = add_rows.numel();
  if (m > 0) {
    NT_CHECK_INPUT(add_rows, "add_rows");
    NT_CHECK_INPUT(add_values, "add_values");
    NT_CHECK_DTYPE(add_rows, "add_rows", at::kLong);
    NT_CHECK_DTYPE(add_values, "add_values", at::kFloat);
    NT_CHECK_SHAPE(add_rows.dim() == 1, "add_rows", add_rows, "[M]");
    NT_CHECK_SHAPE(add_values.dim() == 2 && add_values.size(0) == m && add_values.size(1) == p.dims[1],
                   "add_values", add_values, "[" + std::to_string(m) + ", " + std::to_string(p.dims[1]) + "]");
  }
  Tensor out = at::empty({n, p.dims[L]}, x.options());
  if (n == 0) return out;
  nt::cpu::mlp_forward(x.data_ptr<float>(), x.stride(0), n, p, m > 0 ? add_rows.data_ptr<int64_t>() : nullptr,
                       m > 0 ? add_values.data_ptr<float>() : nullptr, m, out.data_ptr<float>(), n_threads());
  return out;
}
#endif

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "nerf_talk cuda_ext kernels (see cuda_ext/__init__.py for the public API)";
#if defined(NT_WITH_CUDA)
  m.attr("device") = "cuda";
#else
  m.attr("device") = "cpu";
#endif
  m.def("hash_encode_forward", &hash_encode_forward);
  m.def("hash_encode_backward", &hash_encode_backward);
  m.def("pack_bitfield", &pack_bitfield);
  m.def("march_rays", &march_rays);
  m.def("sample_positions", &sample_positions);
  m.def("composite_forward", &composite_forward);
  m.def("composite_backward", &composite_backward);
  m.def("composite_weights", &composite_weights);
  m.def("composite_colours", &composite_colours);
  m.def("warp_points", &warp_points);
  m.def("box_weights", &box_weights);
#if !defined(NT_WITH_CUDA)
  m.def("mlp_forward", &mlp_forward);
  m.def("unit_box_density", &unit_box_density);
#endif
}
