// NCHW kernels of the involution op, shared by the PyTorch extension (involution_cpu.cpp) and the onnxruntime
// custom-op library (involution_ort.cpp). Plain C++17 with no framework headers: the caller brings the scalar type
// (float, double, or the 16-bit bfloat16 / float16 below, to which it casts its own 16-bit type's pointers) and a
// parallel-for callable, `parallel_for(count, body)`, that runs `body(begin, end)` over disjoint ranges covering
// [0, count) (at::parallel_for in the extension, KernelContext::ParallelFor in the onnxruntime library).
//
// bfloat16 and float16 are read in place and summed in float32 (acc_t): every copy these kernels make anyway (the
// padded input rows, the staged weights and grad_output rows) is made in float32, so the inner loops are the
// float32 ones, and each result is rounded once (to nearest even) when it is stored.
//
//   y[n, c, i, j] = sum_{u,v} w[n, g, u, v, i, j] * x[n, c, i*sh - ph + u*dh, j*sw - pw + v*dw],  g = c / (C/G)
//
// Nothing is transposed. The input is zero-padded into scratch rows (the one copy of it these kernels make: each
// task pads the rows it reads, just before reading them), so every tap reads in bounds and the inner loops have no
// branches (grad_input likewise gathers from zero-bordered scratch rows of grad_output). With a column stride
// sw > 1 each padded row is stored as sw phases (padded column p at (p % sw) * Wq + p / sw), so for any stride and
// dilation one tap's reads along an output row are contiguous: tap (u, v) of output row i starts at
// i*sh*row + off[u*Kw + v] and steps by one element per output column. The weight is read in its contiguous (N, G, Kh, Kw, Ho, Wo) layout,
// where one tap's weights along an output row are contiguous too. Every loop over output columns is therefore a
// unit-stride loop over compile-time block sizes, which gcc vectorises (-O3 -mavx2 -mfma) with the accumulators in
// registers.
//
// Every kernel is a gather: each task writes disjoint parts of its result, so results are deterministic and no
// atomics are needed.

#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace involution_nchw {

// ------------------------------------------------------------------------------------------ 16-bit floats
// The bit patterns of bfloat16 and IEEE float16 numbers. may_alias: callers cast pointers to their own 16-bit
// types (c10::BFloat16, Ort::BFloat16_t, ...) to these.
struct __attribute__((may_alias)) bfloat16 {
  uint16_t bits;
};
struct __attribute__((may_alias)) float16 {
  uint16_t bits;
};

// The type a kernel sums in: float for the 16-bit types, the type itself otherwise.
template <typename T>
struct Accumulator {
  using type = T;
};
template <>
struct Accumulator<bfloat16> {
  using type = float;
};
template <>
struct Accumulator<float16> {
  using type = float;
};
template <typename T>
using acc_t = typename Accumulator<T>::type;

inline float float_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// bfloat16 is the top half of a float: widening is exact, narrowing rounds to nearest even (NaN stays NaN), as
// c10::BFloat16 does. Both are plain integer code, which gcc vectorises.
inline float widen(bfloat16 v) { return float_from_bits(static_cast<uint32_t>(v.bits) << 16); }
inline bfloat16 narrow_bf16(float f) {
  if (f != f) return bfloat16{0x7FC0};
  const uint32_t u = bits_of(f);
  return bfloat16{static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
}

// float16: F16C's conversions where the build has them, else the portable bit manipulations of the FP16 library
// (as c10::Half uses); both round to nearest even.
inline float widen(float16 v) {
#if defined(__F16C__)
  return _cvtsh_ss(v.bits);
#else
  const uint32_t w = static_cast<uint32_t>(v.bits) << 16, sign = w & 0x80000000u, two_w = w + w;
  const float normalized = float_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = float_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  return float_from_bits(sign | (two_w < (1u << 27) ? bits_of(subnormal) : bits_of(normalized)));
#endif
}
inline float16 narrow_f16(float f) {
#if defined(__F16C__)
  return float16{static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))};
#else
  float base = (__builtin_fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = bits_of(f), shl1_w = w + w, sign = w & 0x80000000u;
  const uint32_t bias = std::max<uint32_t>(shl1_w & 0xFF000000u, 0x71000000u);
  base = float_from_bits((bias >> 1) + 0x07800000u) + base;
  const uint32_t b = bits_of(base), nonsign = ((b >> 13) & 0x00007C00u) + (b & 0x00000FFFu);
  return float16{static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign))};
#endif
}

// One value as D: widened from a 16-bit type, rounded to one, or as it is.
template <typename D, typename S>
inline D convert(S v) {
  if constexpr (std::is_same_v<D, S>) {
    return v;
  } else if constexpr (std::is_same_v<S, bfloat16> || std::is_same_v<S, float16>) {
    return static_cast<D>(widen(v));
  } else if constexpr (std::is_same_v<D, bfloat16>) {
    return narrow_bf16(static_cast<float>(v));
  } else if constexpr (std::is_same_v<D, float16>) {
    return narrow_f16(static_cast<float>(v));
  } else {
    return static_cast<D>(v);
  }
}

// Whether convert_8 converts 8 values at once: bfloat16 <-> float with AVX2, float16 <-> float with F16C. (gcc
// vectorises the scalar conversions in long loops, not in the short runs of a register block's store.)
template <typename D, typename S>
constexpr bool kConvert8 =
#if defined(__AVX2__)
    (std::is_same_v<S, bfloat16> && std::is_same_v<D, float>) || (std::is_same_v<S, float> && std::is_same_v<D, bfloat16>) ||
#endif
#if defined(__F16C__)
    (std::is_same_v<S, float16> && std::is_same_v<D, float>) || (std::is_same_v<S, float> && std::is_same_v<D, float16>) ||
#endif
    false;

template <typename D, typename S>
inline void convert_8(D* dst, const S* src) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<S, bfloat16>) {
    const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    _mm256_storeu_ps(dst, _mm256_castsi256_ps(_mm256_slli_epi32(u, 16)));
    return;
  }
  if constexpr (std::is_same_v<D, bfloat16>) {  // as narrow_bf16, 8 at once
    const __m256 f = _mm256_loadu_ps(src);
    const __m256i u = _mm256_castps_si256(f);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);  // 8 x 16 bits, low half
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(packed));
    return;
  }
#endif
#if defined(__F16C__)
  if constexpr (std::is_same_v<S, float16>) {
    _mm256_storeu_ps(dst, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
  } else if constexpr (std::is_same_v<D, float16>) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), h);
  }
#endif
}

// dst[j] = convert(src[j]) for j < N (compile-time): short runs between registers and memory.
template <int N, typename D, typename S>
inline void convert_block(D* __restrict dst, const S* __restrict src) {
  if constexpr (kConvert8<D, S> && N % 8 == 0) {
#pragma GCC unroll 4
    for (int j = 0; j < N; j += 8) convert_8(dst + j, src + j);
  } else {
#pragma GCC unroll 16
    for (int j = 0; j < N; ++j) dst[j] = convert<D>(src[j]);
  }
}

// Pixels per register block of the forward and grad_input kernels: 16 floats or 8 doubles (two AVX2 vectors) of
// the accumulator type T. A block keeps CB channels x NJ pixels of accumulators in registers; each tap's NJ weights
// are loaded once for CB channels (CB = 8 with NJ = 8 measured 2x slower than 4: the accumulators no longer fit
// beside the operands).
template <typename T>
constexpr int kPixels = 64 / static_cast<int>(sizeof(T));
constexpr int CB = 4;
// grad_weight: one vector of pixels (8 floats, 4 doubles) times up to kTaps taps of accumulators, sharing each
// grad_output load.
template <typename T>
constexpr int kPixelsGw = 32 / static_cast<int>(sizeof(T));
constexpr int kTaps = 8;

struct Geometry {
  int64_t N, C, G, Cg, H, W, Kh, Kw, Ho, Wo;
  int64_t sh, sw, ph, pw, dh, dw;
  // The padded copy: Hp rows of `row` elements per (n, c) plane, holding only the rows and columns some tap reads
  // (with stride > 1 that can be fewer than the input's). Filled in by finish().
  int64_t Hp, Wp, Wq, row, plane;

  void finish() {
    Cg = C / G;
    Hp = (Ho - 1) * sh + dh * (Kh - 1) + 1;
    Wp = (Wo - 1) * sw + dw * (Kw - 1) + 1;
    Wq = (Wp + sw - 1) / sw;
    row = sw * Wq;
    plane = Hp * row;
  }
  int64_t taps() const { return Kh * Kw; }
  // Position of padded column p in a padded row.
  int64_t column(int64_t p) const { return sw == 1 ? p : (p % sw) * Wq + p / sw; }
};

// Elements of zeros after a padded buffer: a last block may read (and grad_input's scratch write) up to one block
// past the end of its row.
template <typename T>
constexpr int64_t kSlack = kPixels<T>;

// dst[k] = src[k] for k < n: the row copies of the kernels (a few dozen to a few hundred elements), inline.
template <typename T>
__attribute__((optimize("no-tree-loop-distribute-patterns"))) inline void copy_n(T* __restrict dst,
                                                                                 const T* __restrict src, int64_t n) {
  constexpr int V = 32 / static_cast<int>(sizeof(T));
  int64_t k = 0;
  for (; k + V <= n; k += V) {
#pragma GCC unroll 8
    for (int e = 0; e < V; ++e) dst[k + e] = src[k + e];
  }
  for (; k < n; ++k) dst[k] = src[k];
}

// copy_n converting from S to D: where a 16-bit input is widened (once) or a result rounded (once).
template <typename D, typename S>
inline void convert_n(D* __restrict dst, const S* __restrict src, int64_t n) {
  if constexpr (std::is_same_v<D, S>) {
    copy_n(dst, src, n);
  } else {
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) convert_block<8>(dst + k, src + k);
    for (; k < n; ++k) dst[k] = convert<D>(src[k]);
  }
}

// dst[j] = acc[j] for j < n (n <= NJ), rounded to T. Full vectors are stored as such; a partial one goes through a
// buffer, so the accumulators stay in registers (a memcpy from them, or a store loop of runtime length, puts them
// in memory).
template <typename T, int NJ>
inline void store_first(T* dst, const acc_t<T>* acc, int64_t n) {
  if (n == NJ) {
    convert_block<NJ>(dst, acc);
  } else {
    alignas(64) T tmp[NJ];
    convert_block<NJ>(tmp, acc);
    std::memcpy(dst, tmp, sizeof(T) * static_cast<size_t>(n));
  }
}

// Per tap (u, v): its offset in a padded plane from the first element output row 0 reads.
inline std::vector<int64_t> tap_offsets(const Geometry& g) {
  std::vector<int64_t> off(static_cast<size_t>(g.taps()));
  for (int64_t u = 0; u < g.Kh; ++u)
    for (int64_t v = 0; v < g.Kw; ++v) off[u * g.Kw + v] = u * g.dh * g.row + g.column(v * g.dw);
  return off;
}


// Prefetch `count` rows of `len` elements, `stride` apart, into L2: the next task's weights (49 rows of one
// output row each for a 7x7 kernel, too many streams for the hardware prefetchers) and padded input rows. A task is
// several microseconds of work, enough to hide the memory latency.
template <typename T>
inline void prefetch_rows(const T* base, int64_t count, int64_t stride, int64_t len, bool write = false) {
  constexpr int64_t line = 64 / static_cast<int64_t>(sizeof(T));
  for (int64_t r = 0; r < count; ++r) {
    const T* p = base + r * stride;
    for (int64_t k = 0; k < len; k += line) {
      if (write)
        __builtin_prefetch(p + k, 1, 2);
      else
        __builtin_prefetch(p + k, 0, 2);
    }
    if (len % line != 0 || len == 0) {
      if (write)
        __builtin_prefetch(p + len - 1, 1, 2);
      else
        __builtin_prefetch(p + len - 1, 0, 2);
    }
  }
}

// Padded rows [p0, p1) of one (n, c) plane of the zero-padded, phase-split input, from a plane of the input with
// row stride hs and column stride ws (any strides: this copy is where other layouts are read), into dst (row
// elements per padded row, in the accumulator type A: where a 16-bit input is widened).
template <typename A, typename T>
void pad_rows(const Geometry& g, const T* src, int64_t hs, int64_t ws, A* dst, int64_t p0, int64_t p1) {
  std::fill(dst, dst + (p1 - p0) * g.row, A(0));
  const int64_t h_lo = std::max<int64_t>(0, p0 - g.ph), h_hi = std::min(g.H, p1 - g.ph);
  for (int64_t h = h_lo; h < h_hi; ++h) {
    const T* in = src + h * hs;
    A* out = dst + (g.ph + h - p0) * g.row;
    if (g.sw == 1) {
      const int64_t n = std::min(g.W, g.row - g.pw);
      if (ws == 1) {
        convert_n(out + g.pw, in, n);
      } else {
        for (int64_t k = 0; k < n; ++k) out[g.pw + k] = convert<A>(in[k * ws]);
      }
    } else {
      for (int64_t r = 0; r < g.sw; ++r) {  // phase r holds padded columns r, r + sw, ...: k from the first inside
        const int64_t k0 = g.pw > r ? (g.pw - r + g.sw - 1) / g.sw : 0;
        const int64_t k1 = std::min(g.Wq, (g.pw + g.W - r + g.sw - 1) / g.sw);
        A* phase = out + r * g.Wq;
        for (int64_t k = k0; k < k1; ++k) phase[k] = convert<A>(in[(r + k * g.sw - g.pw) * ws]);
      }
    }
  }
}

// The padded input rows that output rows [i0, i1) of one group read, for its Cg channels: a task's own copy, made
// just before it is read (so it is read from cache, and no copy of the whole input is written and read back). In
// the accumulator type A.
template <typename A>
struct GroupRows {
  std::vector<A> data;
  int64_t p0 = 0, cstride = 0;  // the first padded row held; elements per channel

  // x: the input, strides xs (n, c, h, w).
  template <typename T>
  void fill(const Geometry& g, const T* x, const int64_t* xs, int64_t n, int64_t grp, int64_t i0, int64_t i1) {
    p0 = i0 * g.sh;
    const int64_t p1 = (i1 - 1) * g.sh + (g.Kh - 1) * g.dh + 1;
    cstride = (p1 - p0) * g.row;
    const auto size = static_cast<size_t>(g.Cg * cstride + kSlack<A>);
    if (data.size() < size) data.resize(size);
    std::fill(data.begin() + g.Cg * cstride, data.begin() + static_cast<int64_t>(size), A(0));
    for (int64_t c = 0; c < g.Cg; ++c)
      pad_rows(g, x + n * xs[0] + (grp * g.Cg + c) * xs[1], xs[2], xs[3], data.data() + c * cstride, p0, p1);
  }
  // Channel 0 of the group at the first padded row output row i reads.
  const A* row(const Geometry& g, int64_t i) const { return data.data() + (i * g.sh - p0) * g.row; }
};

// Rows per task of the forward and grad_weight: a whole image's group, unless that leaves fewer than 16 tasks
// (then halved until it does not, so one image alone keeps every thread busy).
inline int64_t rows_per_task(const Geometry& g) {
  int64_t rows = g.Ho;
  while (rows > 1 && g.N * g.G * ((g.Ho + rows - 1) / rows) < 16) rows = (rows + 1) / 2;
  return rows;
}

// dst[c][k] = sum_t w[woff[t] + k] * src[c][soff[t] + k] for NC channels and the first nk of NJ positions: the
// register block of the forward (src = padded input rows) and of grad_input (src = staged grad_output rows), summed
// in A = acc_t<T> and rounded to T when stored. Sizes are compile-time, so the accumulators stay in registers and
// the k loop is vectorised. Lanes past nk compute garbage from in-bounds memory and are not stored.
// Not inlined: inlined into a large caller, gcc 13 scalarised it (measured 3-6x slower). tap_block, on the
// contrary, is 2-3x slower when not inlined.
template <typename T, int NJ, int NC, typename A = acc_t<T>>
__attribute__((noinline)) void row_block(const A* __restrict w, const int64_t* woff, const int64_t* soff,
                                         int64_t taps, const A* const* src, T* const* dst, int64_t nk) {
  A acc[NC][NJ] = {};
  for (int64_t t = 0; t < taps; ++t) {
    const A* __restrict wt = w + woff[t];
    const int64_t o = soff[t];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      const A* __restrict st = src[c] + o;
#pragma GCC unroll 16
      for (int k = 0; k < NJ; ++k) acc[c][k] += wt[k] * st[k];
    }
  }
  for (int c = 0; c < NC; ++c) store_first<T, NJ>(dst[c], acc[c], nk);
}

// row_block<NJ, nc> for a runtime nc <= NC.
template <typename T, int NJ, int NC, typename A = acc_t<T>>
inline void row_block_upto(int64_t nc, const A* w, const int64_t* woff, const int64_t* soff, int64_t taps,
                           const A* const* src, T* const* dst, int64_t nk) {
  if constexpr (NC > 1) {
    if (nc < NC) return row_block_upto<T, NJ, NC - 1>(nc, w, woff, soff, taps, src, dst, nk);
  }
  row_block<T, NJ, NC>(w, woff, soff, taps, src, dst, nk);
}

// ------------------------------------------------------------------------------------------------- forward
// Pixels j0 .. j0 + nj of output row i of group grp, all its channels, in blocks of NJ pixels x CB channels. `x`
// is the group's channel 0 at the row's first padded row, channels x_c apart; `w` the row's staged weights: tap t's
// at w[woff[t] + j]; both in A = acc_t<T>.
template <typename T, int NJ, typename A = acc_t<T>>
void forward_pixels(const Geometry& g, const int64_t* off, const A* x0, int64_t x_c, const A* w,
                    const int64_t* woff, T* y_all, int64_t n, int64_t grp, int64_t i, int64_t j0, int64_t nj) {
  const A* x[CB];
  T* y[CB];
  for (int64_t c0 = 0; c0 < g.Cg; c0 += CB) {
    const int64_t nc = std::min<int64_t>(CB, g.Cg - c0);
    for (int64_t c = 0; c < nc; ++c) {
      x[c] = x0 + (c0 + c) * x_c + j0;
      y[c] = y_all + ((n * g.C + grp * g.Cg + c0 + c) * g.Ho + i) * g.Wo + j0;
    }
    row_block_upto<T, NJ, CB>(nc, w + j0, woff, off, g.taps(), x, y, nj);
  }
}

// y (N, C, Ho, Wo) contiguous from the input x (any strides xs: n, c, h, w) and the contiguous weight w. Tasks: a
// block of output rows of one group of one image (rows_per_task), which first pads the input rows it reads
// (GroupRows). The weights of R consecutive output rows are first copied per tap, R*Wo contiguous elements each,
// into a buffer: long sequential runs, which the hardware prefetchers follow, where reading each row's Kh*Kw
// short runs (Wo elements, Ho*Wo apart) inside the register-blocked loop stalled on memory at N=8 (2-3x the time
// of N=1 per image). The buffer's slack also gives the last block in-bounds lanes to read past Wo. Both copies are
// in A = acc_t<T>.
template <typename T, typename ParallelFor>
void forward(const Geometry& g, const T* x, const int64_t* xs, const T* w, T* y, ParallelFor&& parallel_for) {
  using A = acc_t<T>;
  constexpr int NJ = kPixels<A>;
  const std::vector<int64_t> off = tap_offsets(g);
  const int64_t taps = g.taps(), w_tap = g.Ho * g.Wo;
  const int64_t rows = rows_per_task(g), blocks = (g.Ho + rows - 1) / rows;
  const int64_t R = std::max<int64_t>(1, 256 / g.Wo);  // output rows staged at once: about 1 KB per tap
  const int64_t wt = R * g.Wo + NJ;                      // a tap's staged weights, with slack
  std::vector<int64_t> woff(static_cast<size_t>(taps));
  for (int64_t k = 0; k < taps; ++k) woff[k] = k * wt;
  parallel_for(g.N * g.G * blocks, [&](int64_t begin, int64_t end) {
    std::vector<A> wst(static_cast<size_t>(taps * wt), A(0));
    GroupRows<A> xr;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ng = t / blocks, n = ng / g.G, grp = ng % g.G;
      const int64_t i0 = (t % blocks) * rows, i1 = std::min(g.Ho, i0 + rows);
      xr.fill(g, x, xs, n, grp, i0, i1);
      for (int64_t r0 = i0; r0 < i1; r0 += R) {
        const int64_t nr = std::min(R, i1 - r0);
        const T* wsrc = w + ng * taps * w_tap + r0 * g.Wo;
        for (int64_t k = 0; k < taps; ++k) convert_n(wst.data() + k * wt, wsrc + k * w_tap, nr * g.Wo);
        for (int64_t i = r0; i < r0 + nr; ++i) {
          const A* wi = wst.data() + (i - r0) * g.Wo;
          const A* x0 = xr.row(g, i);
          int64_t j0 = 0;
          for (; j0 + NJ <= g.Wo; j0 += NJ)
            forward_pixels<T, NJ>(g, off.data(), x0, xr.cstride, wi, woff.data(), y, n, grp, i, j0, NJ);
          const int64_t rest = g.Wo - j0;
          if (rest > NJ / 2)
            forward_pixels<T, NJ>(g, off.data(), x0, xr.cstride, wi, woff.data(), y, n, grp, i, j0, rest);
          else if (rest > 0)
            forward_pixels<T, NJ / 2>(g, off.data(), x0, xr.cstride, wi, woff.data(), y, n, grp, i, j0, rest);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------- grad_input
// The forward's adjoint, as a gather: padded row hp of grad_input receives, from every (kernel row u, output row i)
// with i*sh + u*dh == hp,
//   sum_v w[u, v, i, j] * gy[c, i, j]   at padded column j*sw + v*dw.
// In phase r of that row (columns r, r + sw, ...; position k) the taps v with v*dw % sw == r contribute, with
// j = k - m_v, m_v = v*dw / sw: contiguous reads again. Each output row's weights and grad_output are staged once
// in zero-bordered rows (M zeros before, zeros after; a ring of the last R output rows), so the shifted reads need
// no bounds checks; a block of NC channels x NJ positions is then summed over all the row's taps in registers and
// stored once. (A scatter of each tap into memory instead stalls on loads that overlap the previous tap's stores.)


// Staged rows and tap tables of one grad_input task, in the accumulator type A.
template <typename A>
struct GatherScratch {
  int64_t M, L, R, nch;
  std::unique_ptr<A[]> wst, gst, rows;  // R x taps x L weights, R x nch x L grad_output, nch x row (+ NJ) results
  std::vector<int64_t> woff, goff;
  std::vector<int64_t> phase, shift;  // per kernel column v: v*dw % sw and m_v = v*dw / sw
  // The weights of chunk_rows output rows from chunk_lo, one contiguous run per tap: read from the weight tensor
  // in long runs (which the hardware prefetchers follow), then staged row by row from here.
  std::unique_ptr<A[]> chunk;
  int64_t chunk_lo = 0, chunk_rows = 0;
};

// Channels [c_lo, c_hi) of group grp in image n: every input row of grad_input (contiguous NCHW).
template <typename T, int NJ, typename A = acc_t<T>>
void grad_input_channels(const Geometry& g, const T* gy_all, const T* w_all, T* gx_all, int64_t n, int64_t grp,
                         int64_t c_lo, int64_t c_hi, GatherScratch<A>& s) {
  const int64_t taps = g.taps(), w_tap = g.Ho * g.Wo, nch = c_hi - c_lo, M = s.M, L = s.L, R = s.R;
  const int64_t rlen = g.row + NJ;
  std::fill(s.wst.get(), s.wst.get() + R * taps * L, A(0));
  std::fill(s.gst.get(), s.gst.get() + R * s.nch * L, A(0));
  const T* w_group = w_all + (n * g.G + grp) * taps * w_tap;
  const T* gy_group = gy_all + (n * g.C + grp * g.Cg + c_lo) * w_tap;
  T* gx_group = gx_all + (n * g.C + grp * g.Cg + c_lo) * g.H * g.W;
  const int64_t inside = std::max<int64_t>(0, std::min(g.W, g.Wp - g.pw));  // columns some tap reads
  const A* gy[CB];
  A* dst[CB];
  int64_t next = 0;  // the next output row to stage
  s.chunk_lo = -s.chunk_rows;  // none held
  for (int64_t h = 0; h < g.H; ++h) {
    const int64_t hp = g.ph + h;
    if (hp >= g.Hp) {  // no tap reads this row
      for (int64_t c = 0; c < nch; ++c) {
        T* orow = gx_group + (c * g.H + h) * g.W;
        std::fill(orow, orow + g.W, T{});
      }
      continue;
    }
    // Output rows i with i*sh + u*dh == hp for some u: within [i_lo, i_hi].
    const int64_t reach = hp - (g.Kh - 1) * g.dh;
    const int64_t i_lo = reach <= 0 ? 0 : (reach + g.sh - 1) / g.sh;
    const int64_t i_hi = std::min(g.Ho - 1, hp / g.sh);
    next = std::max(next, i_lo);
    for (; next <= i_hi; ++next) {
      const int64_t slot = next % R;
      if (next < s.chunk_lo || next >= s.chunk_lo + s.chunk_rows) {  // the weights of the next chunk of rows
        s.chunk_lo = next;
        const int64_t nr = std::min(s.chunk_rows, g.Ho - next);
        for (int64_t t = 0; t < taps; ++t)
          convert_n(s.chunk.get() + t * s.chunk_rows * g.Wo, w_group + t * w_tap + next * g.Wo, nr * g.Wo);
      }
      const A* wsrc = s.chunk.get() + (next - s.chunk_lo) * g.Wo;
      for (int64_t t = 0; t < taps; ++t)
        copy_n(s.wst.get() + (slot * taps + t) * L + M, wsrc + t * s.chunk_rows * g.Wo, g.Wo);
      for (int64_t c = 0; c < nch; ++c)
        convert_n(s.gst.get() + (slot * s.nch + c) * L + M, gy_group + c * w_tap + next * g.Wo, g.Wo);
    }
    for (int64_t r = 0; r < g.sw; ++r) {
      s.woff.clear();
      s.goff.clear();
      for (int64_t u = 0; u < g.Kh; ++u) {
        const int64_t num = hp - u * g.dh;
        if (num < 0) break;
        if (num % g.sh != 0 || num / g.sh >= g.Ho) continue;
        const int64_t slot = (num / g.sh) % R;
        for (int64_t v = 0; v < g.Kw; ++v) {
          if (s.phase[v] != r) continue;
          s.woff.push_back((slot * taps + u * g.Kw + v) * L - s.shift[v]);
          s.goff.push_back(slot * s.nch * L - s.shift[v]);
        }
      }
      const int64_t ntaps = static_cast<int64_t>(s.woff.size());
      // Only the positions of the phase that are input columns: r + sw * k - pw in [0, W).
      const int64_t k_lo = g.pw > r ? (g.pw - r + g.sw - 1) / g.sw : 0;
      const int64_t k_hi = std::min(g.Wq, (g.pw + g.W - r + g.sw - 1) / g.sw);
      auto block = [&](auto nj_tag, int64_t k0, int64_t nk) {
        constexpr int B = decltype(nj_tag)::value;
        for (int64_t c0 = 0; c0 < nch; c0 += CB) {
          const int64_t nc = std::min<int64_t>(CB, nch - c0);
          for (int64_t c = 0; c < nc; ++c) {
            gy[c] = s.gst.get() + (c0 + c) * L + M + k0;
            dst[c] = s.rows.get() + (c0 + c) * rlen + r * g.Wq + k0;
          }
          row_block_upto<A, B, CB>(nc, s.wst.get() + M + k0, s.woff.data(), s.goff.data(), ntaps, gy, dst, nk);
        }
      };
      int64_t k0 = k_lo;
      for (; k0 + NJ <= k_hi; k0 += NJ) block(std::integral_constant<int, NJ>{}, k0, NJ);
      const int64_t rest = k_hi - k0;
      if (rest > NJ / 2)
        block(std::integral_constant<int, NJ>{}, k0, rest);
      else if (rest > 0)
        block(std::integral_constant<int, NJ / 2>{}, k0, rest);
    }
    // The row's interior: input column w is padded column pw + w; columns no tap reads get zero.
    for (int64_t c = 0; c < nch; ++c) {
      const A* prow = s.rows.get() + c * rlen;
      T* orow = gx_group + (c * g.H + h) * g.W;
      if constexpr (std::is_same_v<T, A>) {
        if (g.sw == 1) std::memcpy(orow, prow + g.pw, sizeof(T) * static_cast<size_t>(inside));
      } else {
        if (g.sw == 1) convert_n(orow, prow + g.pw, inside);  // rounded once, here
      }
      if (g.sw != 1) {
        for (int64_t w = 0; w < inside; ++w) orow[w] = convert<T>(prow[g.column(g.pw + w)]);
      }
      std::fill(orow + inside, orow + g.W, T{});
    }
  }
}

// gx (N, C, H, W) contiguous from gy (N, C, Ho, Wo) contiguous and the contiguous weight w. Tasks: the channels of
// one group of one image, split into chunks of CB-multiples when there are too few (n, group) pairs to keep every
// thread busy; tasks write disjoint channels. Staged and summed in A = acc_t<T>.
template <typename T, typename ParallelFor>
void grad_input(const Geometry& g, const T* gy, const T* w, T* gx, ParallelFor&& parallel_for) {
  using A = acc_t<T>;
  constexpr int NJ = kPixels<A>;
  int64_t per_task = g.Cg;  // channels per task, CB-aligned within the group
  while (g.N * g.G * ((g.Cg + per_task - 1) / per_task) < 16 && per_task > CB)
    per_task = (per_task / 2 + CB - 1) / CB * CB;
  const int64_t chunks = (g.Cg + per_task - 1) / per_task;
  parallel_for(g.N * g.G * chunks, [&](int64_t begin, int64_t end) {
    GatherScratch<A> s;
    s.M = (g.Kw - 1) * g.dw / g.sw;             // the largest shift m_v
    s.L = s.M + g.Wq + NJ;                      // a staged row: reads reach L - 1 at most
    s.R = (g.Kh - 1) * g.dh / g.sh + 1;         // output rows one padded row reads from, at most
    s.nch = per_task;
    s.wst.reset(new A[static_cast<size_t>(s.R * g.taps() * s.L)]);
    s.gst.reset(new A[static_cast<size_t>(s.R * per_task * s.L)]);
    s.rows.reset(new A[static_cast<size_t>(per_task * (g.row + NJ))]);
    s.chunk_rows = std::max<int64_t>(1, 256 / g.Wo);
    for (int64_t v = 0; v < g.Kw; ++v) {
      s.phase.push_back(v * g.dw % g.sw);
      s.shift.push_back(v * g.dw / g.sw);
    }
    s.chunk.reset(new A[static_cast<size_t>(g.taps() * s.chunk_rows * g.Wo)]);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t k = t % chunks, ng = t / chunks, n = ng / g.G, grp = ng % g.G;
      const int64_t c_lo = k * per_task, c_hi = std::min(g.Cg, c_lo + per_task);
      grad_input_channels<T, NJ>(g, gy, w, gx, n, grp, c_lo, c_hi, s);
    }
  });
}

// --------------------------------------------------------------------------------------------- grad_weight
// gw[t][j] = sum_c gy[c][j] * x[c][off[t] + j] for TB taps and NJ pixels (the first nj stored): each channel's
// grad_output vector is loaded once for all TB taps, whose accumulators stay in registers. Lanes past nj compute
// garbage from in-bounds memory and are not stored.
template <typename T, int NJ, int TB>
inline void tap_block(int64_t channels, const T* gy, int64_t gy_c, const T* x, int64_t x_c, const int64_t* off,
                      T* gw, int64_t gw_tap, int64_t nj) {
  T acc[TB][NJ] = {};
  for (int64_t c = 0; c < channels; ++c) {
    const T* __restrict gc = gy + c * gy_c;
    const T* xc = x + c * x_c;
    T gv[NJ];
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) gv[j] = gc[j];
#pragma GCC unroll 8
    for (int t = 0; t < TB; ++t) {
      const T* __restrict xt = xc + off[t];
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) acc[t][j] += gv[j] * xt[j];
    }
  }
  for (int t = 0; t < TB; ++t) store_first<T, NJ>(gw + t * gw_tap, acc[t], nj);
}

template <typename T, int NJ, int TB>
inline void tap_block_upto(int64_t tb, int64_t channels, const T* gy, int64_t gy_c, const T* x, int64_t x_c,
                           const int64_t* off, T* gw, int64_t gw_tap, int64_t nj) {
  if constexpr (TB > 1) {
    if (tb < TB) return tap_block_upto<T, NJ, TB - 1>(tb, channels, gy, gy_c, x, x_c, off, gw, gw_tap, nj);
  }
  tap_block<T, NJ, TB>(channels, gy, gy_c, x, x_c, off, gw, gw_tap, nj);
}

// gw (N, G, Kh, Kw, Ho, Wo) contiguous from gy (N, C, Ho, Wo) contiguous and the input x (any strides xs: n, c,
// h, w). Tasks as in the forward: a block of output rows of one group of one image, which first pads the input rows
// it reads; the gradient of R output rows is computed into a buffer, then written out as one run per tap. The taps
// are taken in even chunks of at most kTaps (49 = 7 x 7). Summed and staged in A = acc_t<T>; a 16-bit grad_output
// is first widened, R output rows of the group's channels at a time (a float32 grad_output is read in place).
template <typename T, typename ParallelFor>
void grad_weight(const Geometry& g, const T* gy, const T* x, const int64_t* xs, T* gw, ParallelFor&& parallel_for) {
  using A = acc_t<T>;
  constexpr int NJ = kPixelsGw<A>;
  const std::vector<int64_t> off = tap_offsets(g);
  const int64_t taps = g.taps(), w_tap = g.Ho * g.Wo;
  const int64_t nchunks = (taps + kTaps - 1) / kTaps, chunk = (taps + nchunks - 1) / nchunks;
  const T* gy_end = gy + g.N * g.C * g.Ho * g.Wo;
  const int64_t rows = rows_per_task(g), blocks = (g.Ho + rows - 1) / rows;
  const int64_t R = std::max<int64_t>(1, 256 / g.Wo);  // output rows whose gradient is staged at once
  const int64_t wt = R * g.Wo + NJ;                      // a tap's staged gradient, with slack
  parallel_for(g.N * g.G * blocks, [&](int64_t begin, int64_t end) {
    std::vector<T> gbuf;
    std::vector<A> gst(static_cast<size_t>(taps * wt));
    std::vector<A> gyst(std::is_same_v<T, A> ? 0 : static_cast<size_t>(g.Cg * wt), A(0));  // widened grad_output
    GroupRows<A> xr;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t ng = task / blocks, n = ng / g.G, grp = ng % g.G;
      const int64_t i0 = (task % blocks) * rows, i1 = std::min(g.Ho, i0 + rows);
      const int64_t ch0 = n * g.C + grp * g.Cg;
      xr.fill(g, x, xs, n, grp, i0, i1);
      for (int64_t r0 = i0; r0 < i1; r0 += R) {
        const int64_t nr = std::min(R, i1 - r0);
        if constexpr (!std::is_same_v<T, A>) {
          for (int64_t c = 0; c < g.Cg; ++c)
            convert_n(gyst.data() + c * wt, gy + ((ch0 + c) * g.Ho + r0) * g.Wo, nr * g.Wo);
        }
        for (int64_t i = r0; i < r0 + nr; ++i) {
          for (int64_t j0 = 0; j0 < g.Wo; j0 += NJ) {
            const int64_t nj = std::min<int64_t>(NJ, g.Wo - j0);
            const A* gyp;
            int64_t gy_c;
            if constexpr (std::is_same_v<T, A>) {
              gyp = gy + (ch0 * g.Ho + i) * g.Wo + j0;
              gy_c = w_tap;
              // A partial block reads NJ grad_output values per channel: in bounds except at the tensor's very
              // end, where the group's values are first copied to gbuf.
              if (gyp + (g.Cg - 1) * gy_c + NJ > gy_end) {
                gbuf.assign(static_cast<size_t>(g.Cg * NJ), T{});
                for (int64_t c = 0; c < g.Cg; ++c) copy_n(&gbuf[c * NJ], gyp + c * gy_c, nj);
                gyp = gbuf.data(), gy_c = NJ;
              }
            } else {  // the staged rows have slack past each channel's last row
              gyp = gyst.data() + (i - r0) * g.Wo + j0;
              gy_c = wt;
            }
            const A* x0 = xr.row(g, i) + j0;
            A* gwp = gst.data() + (i - r0) * g.Wo + j0;
            for (int64_t t0 = 0; t0 < taps; t0 += chunk) {
              const int64_t tb = std::min(chunk, taps - t0);
              tap_block_upto<A, NJ, kTaps>(tb, g.Cg, gyp, gy_c, x0, xr.cstride, off.data() + t0, gwp + t0 * wt, wt,
                                           nj);
            }
          }
        }
        // The R rows' gradient of each tap: one contiguous run in gw.
        T* gwdst = gw + ng * taps * w_tap + r0 * g.Wo;
        for (int64_t k = 0; k < taps; ++k) convert_n(gwdst + k * w_tap, gst.data() + k * wt, nr * g.Wo);
      }
    }
  });
}

}  // namespace involution_nchw
