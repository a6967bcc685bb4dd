// What the 2-D (involution_cpu.cpp) and 3-D (involution3d_cpu.cpp) ATen kernels share: vectors of a type's
// accumulator read from and written to its memory, the taps of one output position along one axis, and the bridge
// to the framework-free kernels of involution_nchw.h (their scalar types and parallel_for).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <numeric>
#include <type_traits>
#include <vector>

#include "involution_nchw.h"

namespace involution_cpu {

using at::vec::Vectorized;

// Vectors of T's accumulator type A (float32 for bfloat16/float16, T otherwise) read from and written to T memory:
// 16-bit values are widened when loaded and rounded to nearest even when stored; float32/float64 pass as they are.
template <typename T>
struct Lanes {
  using A = at::opmath_type<T>;
  using Vec = Vectorized<A>;
  static constexpr int64_t size() { return Vec::size(); }

  static Vec load(const T* p) {
    if constexpr (std::is_same_v<T, A>) {
      return Vec::loadu(p);
    } else {
      Vec v;
      at::vec::load_to_float(p, v);
      return v;
    }
  }

  static void store(T* p, const Vec& v) {
    if constexpr (std::is_same_v<T, A>) {
      v.store(p);
    } else {
#if defined(CPU_CAPABILITY_AVX2)
      const __m128i h = std::is_same_v<T, at::BFloat16> ? at::vec::cvtfp32_bf16(__m256(v)) : at::vec::cvtfp32_fp16(__m256(v));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
#else
      at::vec::convert_from_float<T>(v, v).store(p, size());
#endif
    }
  }
};

// The taps of one output position along one axis that read inside the input, as an arithmetic progression:
// kernel offsets k0, k0 + kstep, ... and the positions they pair with, p0, p0 + pstep, ... (count of them).
// Forward: for output o, positions read are o * stride - pad + k * dil (kstep 1, pstep dil).
// Backward (input gradient): for input position h, the outputs o with o * stride - pad + k * dil == h; the k that
// solve this are spaced by stride / gcd(stride, dil), the matching o by -dil / gcd(stride, dil).
struct Taps {
  int64_t k0 = 0, kstep = 1, p0 = 0, pstep = 0, count = 0;
};

inline std::vector<Taps> forward_taps(int64_t size_in, int64_t size_out, int64_t K, int64_t stride, int64_t pad,
                               int64_t dil) {
  std::vector<Taps> taps(size_out);
  for (int64_t o = 0; o < size_out; ++o) {
    Taps t;
    t.kstep = 1;
    t.pstep = dil;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t p = o * stride - pad + k * dil;
      if (p < 0 || p >= size_in) continue;
      if (t.count == 0) {
        t.k0 = k;
        t.p0 = p;
      }
      ++t.count;  // valid taps are contiguous in k: p grows with k
    }
    taps[o] = t;
  }
  return taps;
}

inline std::vector<Taps> backward_taps(int64_t size_in, int64_t size_out, int64_t K, int64_t stride, int64_t pad,
                                int64_t dil) {
  std::vector<Taps> taps(size_in);
  const int64_t gcd = std::gcd(stride, dil);
  for (int64_t h = 0; h < size_in; ++h) {
    Taps t;
    t.kstep = stride / gcd;
    t.pstep = -dil / gcd;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t num = h + pad - k * dil;
      if (num < 0 || num % stride != 0 || num / stride >= size_out) continue;
      if (t.count == 0) {
        t.k0 = k;
        t.p0 = num / stride;
      }
      ++t.count;  // solutions are exactly every kstep-th k, until o leaves [0, size_out)
    }
    taps[h] = t;
  }
  return taps;
}

// The NCHW header's parallel_for(count, body) on ATen's thread pool.
struct AtenParallelFor {
  template <typename Body>
  void operator()(int64_t count, Body&& body) const {
    at::parallel_for(0, count, 1, body);
  }
};

// The NCHW header's scalar type for an ATen one: its own 16-bit types for c10's (the same bits), others as they are.
template <typename T>
struct NchwScalar {
  using type = T;
};
template <>
struct NchwScalar<at::BFloat16> {
  using type = involution_nchw::bfloat16;
};
template <>
struct NchwScalar<at::Half> {
  using type = involution_nchw::float16;
};
static_assert(sizeof(at::BFloat16) == sizeof(involution_nchw::bfloat16) && sizeof(at::Half) == sizeof(involution_nchw::float16),
              "16-bit types differ in size");

template <typename T>
typename NchwScalar<T>::type* nchw_data(const at::Tensor& t) {
  return reinterpret_cast<typename NchwScalar<T>::type*>(t.data_ptr<T>());
}

}  // namespace involution_cpu

