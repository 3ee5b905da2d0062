// Shared by the CPU (C++/OpenMP) and CUDA builds. Torch-free: raw pointers and plain structs only.
//
// Every kernel body lives in a header as an NT_HD (host + device) function that handles one work item (a point at one
// level, a ray, a cell...). cpu/*.cpp loop over work items with OpenMP; the .cu files launch one thread per item.
#pragma once

#include <cstdint>
#include <cmath>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define NT_HD __host__ __device__ __forceinline__
#define NT_UNROLL _Pragma("unroll")
#else
#define NT_HD inline
// Unrolled on the host too: the hash grid's per-corner and per-axis loops must unroll for its point loop to vectorise
// (hashgrid_cpu.cpp: 16 -> 12.5 ns per point and level).
#if defined(__clang__)
#define NT_UNROLL _Pragma("unroll")
#else
#define NT_UNROLL _Pragma("GCC unroll 16")
#endif
#endif

namespace nt {

// Accumulation type: double for double inputs, float for float and half.
template <typename T> struct acc_type { using type = float; };
template <> struct acc_type<double> { using type = double; };
template <typename T> using acc_t = typename acc_type<T>::type;

// Loads and stores that understand __half on the device.
template <typename A, typename T> NT_HD A load_as(const T& v) { return static_cast<A>(v); }
#if defined(__CUDACC__)
template <> NT_HD float load_as<float, __half>(const __half& v) { return __half2float(v); }
#endif

// Atomic add: atomicAdd on the device, an OpenMP atomic on the host (only used where threads may collide).
template <typename T> NT_HD void atomic_add(T* addr, T val) {
#if defined(__CUDA_ARCH__)
  atomicAdd(addr, val);
#else
#pragma omp atomic
  *addr += val;
#endif
}

// Multiply and add without contraction into an FMA, so that the CPU, the CUDA build and the torch reference compute
// sample positions bit for bit alike (ray marching decides occupancy from them).
NT_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
NT_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
NT_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
NT_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// a * b + c, fused where the hardware has it (one rounding; never a libm call). For the warp's weights only: sample
// positions stay unfused (mul_rn, add_rn above).
NT_HD float fmadd(float a, float b, float c) {
#if defined(__CUDA_ARCH__) || defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  return fmaf(a, b, c);
#else
  return a * b + c;
#endif
}
NT_HD double fmadd(double a, double b, double c) {
#if defined(__CUDA_ARCH__) || defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  return fma(a, b, c);
#else
  return a * b + c;
#endif
}

// 2^u for u in [-1/2, 1/2], in plain arithmetic the host compiler vectorises: a degree-5 polynomial (a Chebyshev fit,
// relative error 2.5e-7 in float arithmetic: float rounding's size).
NT_HD float exp2_fraction(float u) {
  float poly = 1.34004420e-3f;
  poly = fmadd(poly, u, 9.67604667e-3f);
  poly = fmadd(poly, u, 5.55032715e-2f);
  poly = fmadd(poly, u, 2.40221068e-1f);
  poly = fmadd(poly, u, 6.93147182e-1f);
  return fmadd(poly, u, 1.00000012f);
}

// 2^n for an integer n in [-126, 127], built in the exponent bits.
NT_HD float exp2_integer(int32_t n) {
  union {
    int32_t i;
    float f;
  } scale;
  scale.i = (n + 127) << 23;
  return scale.f;
}

// exp(v) for v in [-87, 88] that the host compiler vectorises (libm's expf is a call per element): 2^(v log2 e) as
// 2^n 2^u. On the device: expf.
NT_HD float exp_vectorisable(float v) {
#if defined(__CUDA_ARCH__)
  return expf(v);
#else
  const float n = std::floor(v * 1.44269504088896341f + 0.5f);
  // u = v log2(e) - n with log2(e) in two parts (a float and its remainder): at |v| ~ 15 the product's rounding alone
  // was 1e-6 of the result.
  const float u = fmadd(v, 1.44269504088896341f, -n) + v * 1.925963033500011e-8f;
  return exp2_fraction(u) * exp2_integer(static_cast<int32_t>(n));
#endif
}

// Float and double overloads that never promote a float to double on the host.
NT_HD float exp_(float v) { return expf(v); }
NT_HD double exp_(double v) { return exp(v); }
NT_HD float sqrt_(float v) { return sqrtf(v); }
NT_HD double sqrt_(double v) { return sqrt(v); }
NT_HD float floor_(float v) { return floorf(v); }
NT_HD double floor_(double v) { return floor(v); }

// floor/ceil to int for finite values in int range, without a libm call (floorf is one on baseline x86-64).
NT_HD int64_t floor_to_int(float v) {
  const int64_t i = static_cast<int64_t>(v);
  return i - (v < static_cast<float>(i) ? 1 : 0);
}
NT_HD int64_t ceil_to_int(float v) {
  const int64_t i = static_cast<int64_t>(v);
  return i + (v > static_cast<float>(i) ? 1 : 0);
}
NT_HD double floor_fast(double v) {
  const double i = static_cast<double>(static_cast<int64_t>(v));
  return i - (v < i ? 1.0 : 0.0);
}
NT_HD float floor_fast(float v) {
  const float i = static_cast<float>(static_cast<int64_t>(v));
  return i - (v < i ? 1.0f : 0.0f);
}

template <typename T> NT_HD T min_(T a, T b) { return a < b ? a : b; }
template <typename T> NT_HD T max_(T a, T b) { return a > b ? a : b; }
template <typename T> NT_HD T clamp_(T v, T lo, T hi) { return v < lo ? lo : (v > hi ? hi : v); }

}  // namespace nt
