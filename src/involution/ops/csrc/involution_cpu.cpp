// CPU kernels of the involution op: forward, grad_input and grad_weight, in two families.
//
// * NCHW (forward_nchw, backward_input_nchw, backward_weight_nchw): the kernels of involution_nchw.h, shared with
//   the onnxruntime library, vectorised along output rows; they read the weight in its contiguous
//   (N, G, Kh, Kw, Ho, Wo) layout, and the input through its strides into zero-padded scratch rows (their one
//   copy of it). Wrapped below for ATen: at::parallel_for, and c10's 16-bit types cast to the header's.
// * NHWC (forward, backward_input, backward_weight), described here.
//
// Feature maps (input, output and their gradients) are read and written in NHWC (channels_last) order, which
// puts the C/G channels of a group next to each other: one generated kernel weight is broadcast into a vector
// register and multiplied with a vector of channels, and each pixel's accumulators stay in registers for all its
// Kh*Kw taps. Weights (N, G, Kh, Kw, Ho, Wo) are read through their strides, so a channels_last kernel generator's
// output is used in place. The Python side (backends/cpu.py) converts other layouts.
//
// Both families run float32, float64, bfloat16 and float16. The 16-bit types are read in place, widened to float32
// as they are loaded (Lanes below; the NCHW kernels widen while staging rows), summed in float32 (at::opmath_type)
// and rounded once, to nearest even, when a result is stored.
//
// Every kernel is a gather (each thread owns whole rows of what it writes), so results are deterministic and no
// atomics are needed. Compiled on first use by torch.utils.cpp_extension; only ATen and torch/library.h are
// included to keep that build short.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#include "involution_cpu_common.h"
#include "involution_nchw.h"

namespace {

using namespace involution_cpu;  // Lanes, Taps (involution_cpu_common.h)

struct Geometry {
  int64_t N, C, G, Cg, H, W, Kh, Kw, Ho, Wo;
  int64_t sh, sw, ph, pw, dh, dw;
};

// Strides of a 4-D feature map. The kernels need c == 1 (NHWC) except where noted.
struct FeatStrides {
  int64_t n, c, h, w;
  explicit FeatStrides(const at::Tensor& t) : n(t.stride(0)), c(t.stride(1)), h(t.stride(2)), w(t.stride(3)) {}
};

// The C channels of one pixel as a contiguous array: `p` itself in NHWC, else gathered into `buf`. The backward
// kernels read each grad_output pixel once and reuse it for every tap, so an NCHW grad_output needs no copy.
template <typename T>
inline const T* pixel_channels(const T* p, int64_t cs, int64_t C, T* buf) {
  if (cs == 1) return p;
  for (int64_t c = 0; c < C; ++c) buf[c] = p[c * cs];
  return buf;
}

struct WeightStrides {
  int64_t n, g, u, v, i, j;
  explicit WeightStrides(const at::Tensor& t)
      : n(t.stride(0)), g(t.stride(1)), u(t.stride(2)), v(t.stride(3)), i(t.stride(4)), j(t.stride(5)) {}
};

// A 2-D walk over taps: `rows` x `cols` steps; moving one row tap advances the weight pointer by w_row and the
// source pointer by s_row, one column tap by w_col and s_col.
struct Walk {
  int64_t rows, cols, w_row, s_row, w_col, s_col;
};

// dst[c] = sum over the walk of weight * src[c], for NV vectors of channels of each of GB groups (weights wg apart,
// channels cg apart), held in registers across all taps. With two vectors a group (C/G = 16 floats, RedNet's), one
// group's two chains of fmadds are bound by their latency: two groups at once run 10% faster (measured).
template <typename T, int NV, int GB = 1, typename W>
inline void accumulate_block(const W* w0, const T* s0, const Walk& walk, T* dst, int64_t wg = 0, int64_t cg = 0) {
  using L = Lanes<T>;
  using A = typename L::A;
  using Vec = typename L::Vec;
  Vec acc[GB][NV];
  for (int q = 0; q < GB; ++q)
    for (int k = 0; k < NV; ++k) acc[q][k] = Vec(A(0));
  for (int64_t a = 0; a < walk.rows; ++a) {
    const W* wp = w0 + a * walk.w_row;
    const T* sp = s0 + a * walk.s_row;
    for (int64_t b = 0; b < walk.cols; ++b) {
      const T* s = sp + b * walk.s_col;
#pragma GCC unroll 4
      for (int q = 0; q < GB; ++q) {
        const Vec wv(static_cast<A>(wp[b * walk.w_col + q * wg]));
#pragma GCC unroll 4
        for (int k = 0; k < NV; ++k) acc[q][k] = at::vec::fmadd(wv, L::load(s + q * cg + k * L::size()), acc[q][k]);
      }
    }
  }
  for (int q = 0; q < GB; ++q)
    for (int k = 0; k < NV; ++k) L::store(dst + q * cg + k * L::size(), acc[q][k]);
}

// One group's Cg channels; channels past the last full vector are summed as scalars. w0: the group's weights, T or
// already widened to A.
template <typename T, typename W>
inline void accumulate_group(int64_t Cg, const W* w0, const T* s0, const Walk& walk, T* dst) {
  using A = at::opmath_type<T>;
  constexpr int64_t VS = Lanes<T>::size();
  int64_t c0 = 0;
  for (; c0 + 4 * VS <= Cg; c0 += 4 * VS) accumulate_block<T, 4>(w0, s0 + c0, walk, dst + c0);
  const int64_t rest = (Cg - c0) / VS;
  if (rest == 3) accumulate_block<T, 3>(w0, s0 + c0, walk, dst + c0);
  if (rest == 2) accumulate_block<T, 2>(w0, s0 + c0, walk, dst + c0);
  if (rest == 1) accumulate_block<T, 1>(w0, s0 + c0, walk, dst + c0);
  for (int64_t c = c0 + rest * VS; c < Cg; ++c) {
    A acc = 0;
    for (int64_t a = 0; a < walk.rows; ++a)
      for (int64_t b = 0; b < walk.cols; ++b)
        acc += static_cast<A>(w0[a * walk.w_row + b * walk.w_col]) * static_cast<A>(s0[a * walk.s_row + b * walk.s_col + c]);
    dst[c] = static_cast<T>(acc);
  }
}

// P neighbouring output pixels of one group's NV vectors of channels, at stride 1 and dilation 1 along the row,
// with every column tap inside the image: pixel p's tap b reads input column (first + p + b), so each input vector
// loaded serves up to P pixels (P + Kw - 1 loads a kernel row instead of P * Kw). Pixel p's weights start at
// w0 + p * w_pix (taps w_row / w_col apart); its output at dst + p * d_pix.
template <typename T, int NV, int P, typename W>
inline void accumulate_run(const W* w0, int64_t w_pix, int64_t w_row, int64_t w_col, const T* s0, int64_t rows,
                           int64_t s_row, int64_t s_col, int64_t Kw, T* dst, int64_t d_pix) {
  using L = Lanes<T>;
  using A = typename L::A;
  using Vec = typename L::Vec;
  Vec acc[P][NV];
  for (int p = 0; p < P; ++p)
    for (int k = 0; k < NV; ++k) acc[p][k] = Vec(A(0));
  // Column t of the input row serves pixels p with 0 <= t - p < Kw: the first P - 1 and last P - 1 columns serve
  // some pixels, the middle ones all (Kw >= P - 1, checked by the caller), without branches.
  auto column = [&](const W* wa, const T* sa, int64_t t, auto all_pixels) {
    Vec xv[NV];
#pragma GCC unroll 4
    for (int k = 0; k < NV; ++k) xv[k] = L::load(sa + t * s_col + k * L::size());
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const int64_t b = t - p;
      if constexpr (!decltype(all_pixels)::value) {
        if (b < 0 || b >= Kw) continue;
      }
      const Vec wv(static_cast<A>(wa[p * w_pix + b * w_col]));
#pragma GCC unroll 4
      for (int k = 0; k < NV; ++k) acc[p][k] = at::vec::fmadd(wv, xv[k], acc[p][k]);
    }
  };
  for (int64_t a = 0; a < rows; ++a) {
    const W* wa = w0 + a * w_row;
    const T* sa = s0 + a * s_row;
    int64_t t = 0;
    for (; t < P - 1; ++t) column(wa, sa, t, std::false_type{});
    for (; t < Kw; ++t) column(wa, sa, t, std::true_type{});
    for (; t < Kw + P - 1; ++t) column(wa, sa, t, std::false_type{});
  }
  for (int p = 0; p < P; ++p)
    for (int k = 0; k < NV; ++k) L::store(dst + p * d_pix + k * L::size(), acc[p][k]);
}

// The G*Kh*Kw taps of one pixel's weights (strides ws) widened into dst, contiguous in (g, u, v) order.
template <typename T, typename A = at::opmath_type<T>>
inline void widen_taps(const T* w, const WeightStrides& ws, const Geometry& g, A* dst) {
  using L = Lanes<T>;
  const int64_t n = g.G * g.Kh * g.Kw;
  const bool dense = (g.Kw == 1 || ws.v == 1) && (g.Kh == 1 || ws.u == g.Kw) && (g.G == 1 || ws.g == g.Kh * g.Kw);
  if (dense) {  // pixel-major, as a channels_last generator gives it
    int64_t k = 0;
    for (; k + L::size() <= n; k += L::size()) L::load(w + k).store(dst + k);
    for (; k < n; ++k) dst[k] = static_cast<A>(w[k]);
    return;
  }
  for (int64_t gr = 0; gr < g.G; ++gr)
    for (int64_t u = 0; u < g.Kh; ++u)
      for (int64_t v = 0; v < g.Kw; ++v) *dst++ = static_cast<A>(w[gr * ws.g + u * ws.u + v * ws.v]);
}

// forward: each output row (n, i) is a task. An output that is not NHWC is computed into a row buffer (in cache)
// and transposed out, which beats a whole-tensor copy afterwards. 16-bit weights are widened once per pixel (not
// once per vector of channels that uses them).
template <typename T>
void forward_impl(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& out, const Geometry& g) {
  using A = at::opmath_type<T>;
  constexpr bool widened = !std::is_same_v<T, A>;
  const T* x = input.data_ptr<T>();
  const T* w = weight.data_ptr<T>();
  T* y = out.data_ptr<T>();
  const FeatStrides xs(input);
  const WeightStrides ws(weight);
  const bool stage_out = out.stride(1) != 1 && g.C > 1;
  const int64_t os[4] = {out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  const int64_t C = g.C, Wo = g.Wo;
  const auto row_taps = forward_taps(g.H, g.Ho, g.Kh, g.sh, g.ph, g.dh);
  const auto col_taps = forward_taps(g.W, g.Wo, g.Kw, g.sw, g.pw, g.dw);
  // 16-bit input: neighbouring pixels share input vectors (each widened once for kRun pixels, accumulate_run) at
  // stride 1 and dilation 1 along the row, where each group's channels are whole pairs of vectors (RedNet's 16 a
  // group). Measured 5-25% faster than pixel by pixel for bf16 at RedNet-50's stage shapes; for float32, where
  // the loads cost no conversion, not faster (pixel by pixel, two groups at once, is kept).
  constexpr int kRun = 4;
  constexpr int64_t VS = Lanes<T>::size();
  const bool runs = widened && g.sw == 1 && g.dw == 1 && g.Cg % (2 * VS) == 0 && g.Wo >= kRun && g.Kw >= kRun - 1;
  const int64_t taps = g.G * g.Kh * g.Kw;
  at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> obuf(stage_out ? g.Wo * g.C : 0);
    std::vector<A> wpix(widened ? kRun * taps : 0);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / g.Ho, i = idx % g.Ho;
      const T* wrow = w + n * ws.n + i * ws.i;
      T* orow = stage_out ? obuf.data() : y + n * os[0] + i * os[2];
      const int64_t oj = stage_out ? g.C : os[3];

      const Taps& r = row_taps[i];
      // One pixel, its weights at wp with strides (wg, wu, wv).
      auto pixel = [&](int64_t j, const auto* wp, int64_t wg, int64_t wu, int64_t wv) {
        const Taps& c = col_taps[j];
        const Walk walk{r.count, c.count, wu, r.pstep * xs.h, wv, c.pstep * xs.w};
        const auto* w0 = wp + r.k0 * wu + c.k0 * wv;
        const T* s0 = x + n * xs.n + r.p0 * xs.h + c.p0 * xs.w;
        T* d0 = orow + j * oj;
        int64_t gr = 0;
        if (g.Cg == 2 * Lanes<T>::size())  // two groups at once: four accumulator chains
          for (; gr + 2 <= g.G; gr += 2)
            accumulate_block<T, 2, 2>(w0 + gr * wg, s0 + gr * g.Cg, walk, d0 + gr * g.Cg, wg, g.Cg);
        for (; gr < g.G; ++gr)
          accumulate_group<T>(g.Cg, w0 + gr * wg, s0 + gr * g.Cg, walk, d0 + gr * g.Cg);
      };
      auto single = [&](int64_t j) {
        if constexpr (widened) {
          widen_taps<T>(wrow + j * ws.j, ws, g, wpix.data());
          pixel(j, wpix.data(), g.Kh * g.Kw, g.Kw, 1);
        } else {
          pixel(j, wrow + j * ws.j, ws.g, ws.u, ws.v);
        }
      };
      int64_t j = 0;
      if (runs) {
        // Runs of kRun pixels whose column taps are all inside the image, the rest one pixel at a time.
        while (j < g.Wo) {
          if (j + kRun > g.Wo || col_taps[j].count != g.Kw || col_taps[j + kRun - 1].count != g.Kw) {
            single(j++);
            continue;
          }
          const T* s0 = x + n * xs.n + r.p0 * xs.h + col_taps[j].p0 * xs.w;
          T* d0 = orow + j * oj;
          // The run's weights at wp: pixel p's at wp + p * w_pix, group gr's at + gr * wg, taps wu / wv apart.
          auto run = [&](const auto* wp, int64_t w_pix, int64_t wg, int64_t wu, int64_t wv) {
            for (int64_t gr = 0; gr < g.G; ++gr)
              for (int64_t c0 = 0; c0 < g.Cg; c0 += 2 * VS)
                accumulate_run<T, 2, kRun>(wp + gr * wg + r.k0 * wu, w_pix, wu, wv, s0 + gr * g.Cg + c0, r.count,
                                           r.pstep * xs.h, xs.w, g.Kw, d0 + gr * g.Cg + c0, oj);
          };
          if constexpr (widened) {
            for (int p = 0; p < kRun; ++p) widen_taps<T>(wrow + (j + p) * ws.j, ws, g, wpix.data() + p * taps);
            run(wpix.data(), taps, g.Kh * g.Kw, g.Kw, 1);
          } else {
            run(wrow + j * ws.j, ws.j, ws.g, ws.u, ws.v);
          }
          j += kRun;
        }
      }
      for (; j < g.Wo; ++j) single(j);

      if (stage_out) {
        T* yrow = y + n * os[0] + i * os[2];
        const T* src = obuf.data();
        for (int64_t j = 0; j < Wo; ++j, src += C)
          for (int64_t ch = 0; ch < C; ++ch) yrow[ch * os[1] + j * os[3]] = src[ch];
      }
    }
  });
}

// grad_input by scatter: each output pixel's grad_output channels stay in registers while its kernel taps add
// into grad_input. The weights are then read pixel by pixel (contiguous for a channels_last generator), which a
// gather cannot do. Threads own bands of output rows; bands whose writes could overlap run in different phases.
// The sums are kept in A (float32 for a 16-bit T: a float32 NHWC tensor then rounded into grad_input once).
template <typename T, int NV, typename A = at::opmath_type<T>>
inline void scatter_block(const T* w0, const T* src, const Walk& walk, A* d0) {
  using L = Lanes<T>;
  using Vec = typename L::Vec;
  Vec gy[NV];
  for (int k = 0; k < NV; ++k) gy[k] = L::load(src + k * L::size());
  for (int64_t a = 0; a < walk.rows; ++a) {
    const T* wp = w0 + a * walk.w_row;
    A* dp = d0 + a * walk.s_row;
    for (int64_t b = 0; b < walk.cols; ++b) {
      const Vec wv(static_cast<A>(wp[b * walk.w_col]));
      A* d = dp + b * walk.s_col;
#pragma GCC unroll 4
      for (int k = 0; k < NV; ++k) at::vec::fmadd(wv, gy[k], Vec::loadu(d + k * Vec::size())).store(d + k * Vec::size());
    }
  }
}

template <typename T, typename A = at::opmath_type<T>>
inline void scatter_group(int64_t Cg, const T* w0, const T* src, const Walk& walk, A* d0) {
  constexpr int64_t VS = Lanes<T>::size();
  int64_t c0 = 0;
  for (; c0 + 4 * VS <= Cg; c0 += 4 * VS) scatter_block<T, 4>(w0, src + c0, walk, d0 + c0);
  const int64_t rest = (Cg - c0) / VS;
  if (rest == 3) scatter_block<T, 3>(w0, src + c0, walk, d0 + c0);
  if (rest == 2) scatter_block<T, 2>(w0, src + c0, walk, d0 + c0);
  if (rest == 1) scatter_block<T, 1>(w0, src + c0, walk, d0 + c0);
  for (int64_t c = c0 + rest * VS; c < Cg; ++c)
    for (int64_t a = 0; a < walk.rows; ++a)
      for (int64_t b = 0; b < walk.cols; ++b)
        d0[a * walk.s_row + b * walk.s_col + c] +=
            static_cast<A>(w0[a * walk.w_row + b * walk.w_col]) * static_cast<A>(src[c]);
}

// dst = src rounded to T, both (N, C, H, W) with channel stride 1: the float32 sums of a 16-bit grad_input.
template <typename T, typename A>
void round_into(const at::Tensor& src, const at::Tensor& dst) {
  using L = Lanes<T>;
  const FeatStrides ss(src), ds(dst);
  const int64_t C = src.size(1), H = src.size(2), W = src.size(3);
  const A* s = src.data_ptr<A>();
  T* d = dst.data_ptr<T>();
  at::parallel_for(0, src.size(0) * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, h = row % H;
      for (int64_t w = 0; w < W; ++w) {
        const A* sp = s + n * ss.n + h * ss.h + w * ss.w;
        T* dp = d + n * ds.n + h * ds.h + w * ds.w;
        int64_t c = 0;
        for (; c + L::size() <= C; c += L::size()) L::store(dp + c, L::Vec::loadu(sp + c));
        for (; c < C; ++c) dp[c] = static_cast<T>(sp[c]);
      }
    }
  });
}

template <typename T>
void backward_input_impl(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& grad_in,
                         const Geometry& g) {
  using A = at::opmath_type<T>;
  constexpr bool widened = !std::is_same_v<T, A>;
  // Where the taps are summed: grad_input itself, or a float32 NHWC tensor rounded into it at the end.
  const at::Tensor sums =
      widened ? at::empty(grad_in.sizes(), grad_in.options()
                                                .dtype(c10::CppTypeToScalarType<A>::value)
                                                .memory_format(at::MemoryFormat::ChannelsLast))
              : grad_in;
  const T* gy = grad_out.data_ptr<T>();
  const T* w = weight.data_ptr<T>();
  A* gx = sums.data_ptr<A>();
  const FeatStrides gys(grad_out), gxs(sums);
  const WeightStrides ws(weight);
  const auto row_taps = forward_taps(g.H, g.Ho, g.Kh, g.sh, g.ph, g.dh);
  const auto col_taps = forward_taps(g.W, g.Wo, g.Kw, g.sw, g.pw, g.dw);
  sums.zero_();
  // Output rows [i0, i0 + band) write input rows up to (i0 + band - 1) * s - p + (Kh - 1) * d; the band after the
  // next starts writing at (i0 + 2 * band) * s - p. They are disjoint when (band + 1) * s > (Kh - 1) * d.
  const int64_t reach = (g.Kh - 1) * g.dh;
  const int64_t band = std::max<int64_t>(std::max<int64_t>(1, reach / g.sh), 4);
  const int64_t nbands = (g.Ho + band - 1) / band;
  for (int64_t phase = 0; phase < 2; ++phase) {
    const int64_t per_image = (nbands - phase + 1) / 2;  // bands phase, phase + 2, ...
    if (per_image <= 0) continue;
    at::parallel_for(0, g.N * per_image, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> pix(gys.c == 1 ? 0 : g.C);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / per_image, b = phase + 2 * (task % per_image);
        const int64_t i_end = std::min(g.Ho, (b + 1) * band);
        for (int64_t i = b * band; i < i_end; ++i) {
          const Taps& r = row_taps[i];
          for (int64_t j = 0; j < g.Wo; ++j) {
            const Taps& c = col_taps[j];
            const Walk walk{r.count, c.count, ws.u, r.pstep * gxs.h, ws.v, c.pstep * gxs.w};
            const T* w0 = w + n * ws.n + i * ws.i + j * ws.j + r.k0 * ws.u + c.k0 * ws.v;
            const T* src = pixel_channels(gy + n * gys.n + i * gys.h + j * gys.w, gys.c, g.C, pix.data());
            A* d0 = gx + n * gxs.n + r.p0 * gxs.h + c.p0 * gxs.w;
            for (int64_t gr = 0; gr < g.G; ++gr)
              scatter_group<T>(g.Cg, w0 + gr * ws.g, src + gr * g.Cg, walk, d0 + gr * g.Cg);
          }
        }
      }
    });
  }
  if constexpr (widened) round_into<T, A>(sums, grad_in);
}

// out[t] = horizontal sum of v[t] for t < n (n <= 8).
template <typename T>
inline void reduce_lanes(const Vectorized<T>* v, int n, T* out) {
  using Vec = Vectorized<T>;
  for (int t = 0; t < n; ++t) out[t] = at::vec::vec_reduce_all<T>([](Vec& p, Vec& q) { return p + q; }, v[t]);
}

#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__)
// Eight horizontal sums at once: three rounds of pairwise adds instead of eight separate reductions. Lane t holds
// the sum of v[t] (t < n; 0 beyond).
inline __m256 lane_sums(const Vectorized<float>* v, int n) {
  __m256 x[8];
  for (int t = 0; t < 8; ++t) x[t] = t < n ? static_cast<__m256>(v[t]) : _mm256_setzero_ps();
  const __m256 a0 = _mm256_hadd_ps(x[0], x[1]), a1 = _mm256_hadd_ps(x[2], x[3]);
  const __m256 a2 = _mm256_hadd_ps(x[4], x[5]), a3 = _mm256_hadd_ps(x[6], x[7]);
  const __m256 b0 = _mm256_hadd_ps(a0, a1), b1 = _mm256_hadd_ps(a2, a3);
  return _mm256_add_ps(_mm256_permute2f128_ps(b0, b1, 0x20), _mm256_permute2f128_ps(b0, b1, 0x31));
}

template <>
inline void reduce_lanes<float>(const Vectorized<float>* v, int n, float* out) {
  alignas(32) float buf[8];
  _mm256_store_ps(buf, lane_sums(v, n));
  for (int t = 0; t < n; ++t) out[t] = buf[t];
}

// In registers: rounding the sums straight from lane_sums (storing them as scalars and loading them back as one
// vector would stall on store forwarding).
template <typename T, typename Put>
inline void put_rounded(const Vectorized<float>* v, int n, Put&& put) {
  T rounded[8];
  Lanes<T>::store(rounded, Vectorized<float>(lane_sums(v, n)));
  for (int t = 0; t < n; ++t) put(t, rounded[t]);
}
#else
// The first n (<= 8) sums of a reduce_lanes, rounded to a 16-bit T, handed to put(t, value).
template <typename T, typename Put>
inline void put_rounded(const Vectorized<float>* v, int n, Put&& put) {
  alignas(64) float sums[8] = {};
  reduce_lanes<float>(v, n, sums);
  for (int t = 0; t < n; ++t) put(t, static_cast<T>(sums[t]));
}
#endif

// grad_weight of one pixel and group: for every tap of the walk, the dot product over the group's channels of
// grad_output (NV vectors held in registers, plus a scalar tail of `tail` channels) and the input pixel the tap
// reads (x0: T, or already widened to A). Dot products are reduced eight at a time, in A = opmath_type<T>.
template <typename T, int NV, typename X>
inline void tap_dots(const T* gp, const X* x0, const Walk& walk, int64_t tail, T* w0) {
  using L = Lanes<T>;
  using A = typename L::A;
  using Vec = typename L::Vec;
  constexpr int kBatch = 8;
  constexpr int64_t done = NV * L::size();
  Vec a[NV > 0 ? NV : 1];
  for (int k = 0; k < NV; ++k) a[k] = L::load(gp + k * L::size());
  Vec acc[kBatch];
  T* dst[kBatch];
  const X* src[kBatch];
  int nb = 0;
  auto flush = [&]() {
    if constexpr (NV > 0 && !std::is_same_v<T, A>) {
      if (tail == 0) {
        put_rounded<T>(acc, nb, [&](int t, T v) { *dst[t] = v; });
        nb = 0;
        return;
      }
    }
    alignas(64) A sums[kBatch] = {};
    if constexpr (NV > 0) reduce_lanes<A>(acc, nb, sums);
    for (int t = 0; t < nb; ++t) {
      for (int64_t ch = 0; ch < tail; ++ch) sums[t] += static_cast<A>(gp[done + ch]) * static_cast<A>(src[t][done + ch]);
      *dst[t] = static_cast<T>(sums[t]);
    }
    nb = 0;
  };
  for (int64_t r = 0; r < walk.rows; ++r) {
    for (int64_t c = 0; c < walk.cols; ++c) {
      const X* xs = x0 + r * walk.s_row + c * walk.s_col;
      if constexpr (NV > 0) {
        Vec v = a[0] * Lanes<X>::load(xs);
        for (int k = 1; k < NV; ++k) v = at::vec::fmadd(a[k], Lanes<X>::load(xs + k * L::size()), v);
        acc[nb] = v;
      }
      src[nb] = xs;
      dst[nb] = w0 + r * walk.w_row + c * walk.w_col;
      if (++nb == kBatch) flush();
    }
  }
  if (nb > 0) flush();
}

// The fast path of tap_dots for a full row of COLS taps (COLS <= 8) and NV whole vectors of channels: the COLS
// accumulators stay in registers and are reduced together.
template <typename T, int NV, int COLS, typename X>
inline void row_dots(const T* gp, const X* x0, const Walk& walk, T* w0) {
  using L = Lanes<T>;
  using A = typename L::A;
  using Vec = typename L::Vec;
  static_assert(COLS <= 8, "one reduction handles at most 8 taps");
  Vec a[NV];
  for (int k = 0; k < NV; ++k) a[k] = L::load(gp + k * L::size());
  for (int64_t r = 0; r < walk.rows; ++r) {
    const X* xr = x0 + r * walk.s_row;
    Vec acc[COLS];
#pragma GCC unroll 8
    for (int c = 0; c < COLS; ++c) {
      const X* xs = xr + c * walk.s_col;
      Vec v = a[0] * Lanes<X>::load(xs);
#pragma GCC unroll 4
      for (int k = 1; k < NV; ++k) v = at::vec::fmadd(a[k], Lanes<X>::load(xs + k * L::size()), v);
      acc[c] = v;
    }
    T* wr = w0 + r * walk.w_row;
    if constexpr (std::is_same_v<T, A>) {
      alignas(64) A sums[8];
      reduce_lanes<A>(acc, COLS, sums);
#pragma GCC unroll 8
      for (int c = 0; c < COLS; ++c) wr[c * walk.w_col] = sums[c];
    } else {
      put_rounded<T>(acc, COLS, [&](int c, T v) { wr[c * walk.w_col] = v; });
    }
  }
}

// Picks a row_dots instantiation (1 or 2 vectors of channels, rows of up to 8 taps), or returns false.
template <typename T, typename X>
inline bool try_row_dots(int64_t nvec, int64_t tail, const T* gp, const X* x0, const Walk& walk, T* w0) {
  if (tail != 0) return false;
#define INVOLUTION_ROW_DOTS(NV, COLS) \
  if (nvec == NV && walk.cols == COLS) { row_dots<T, NV, COLS>(gp, x0, walk, w0); return true; }
  // Every width up to 8: at the image border a 7-wide kernel has 4, 5 or 6 taps inside per row.
  INVOLUTION_ROW_DOTS(1, 1) INVOLUTION_ROW_DOTS(1, 2) INVOLUTION_ROW_DOTS(1, 3) INVOLUTION_ROW_DOTS(1, 4)
  INVOLUTION_ROW_DOTS(1, 5) INVOLUTION_ROW_DOTS(1, 6) INVOLUTION_ROW_DOTS(1, 7) INVOLUTION_ROW_DOTS(1, 8)
  INVOLUTION_ROW_DOTS(2, 1) INVOLUTION_ROW_DOTS(2, 2) INVOLUTION_ROW_DOTS(2, 3) INVOLUTION_ROW_DOTS(2, 4)
  INVOLUTION_ROW_DOTS(2, 5) INVOLUTION_ROW_DOTS(2, 6) INVOLUTION_ROW_DOTS(2, 7) INVOLUTION_ROW_DOTS(2, 8)
#undef INVOLUTION_ROW_DOTS
  return false;
}

// Row h of image n of an NHWC feature map (strides fs, channel stride 1), all its W x C values, widened into dst.
template <typename T, typename A = at::opmath_type<T>>
inline void widen_row(const T* f, const FeatStrides& fs, int64_t n, int64_t h, int64_t W, int64_t C, A* dst) {
  using L = Lanes<T>;
  const T* src = f + n * fs.n + h * fs.h;
  const bool dense = W == 1 || fs.w == C;
  for (int64_t w = 0; w < (dense ? 1 : W); ++w, src += fs.w, dst += C) {
    const int64_t len = dense ? W * C : C;
    int64_t k = 0;
    for (; k + L::size() <= len; k += L::size()) L::load(src + k).store(dst + k);
    for (; k < len; ++k) dst[k] = static_cast<A>(src[k]);
  }
}

// grad_weight: each output row (n, i) is a task. A 16-bit input's rows that the task reads are first widened (each
// input value is then converted Kh times in all, instead of once for each of the Kh*Kw taps that read it).
template <typename T>
void backward_weight_impl(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& grad_w,
                          const Geometry& g) {
  using A = at::opmath_type<T>;
  constexpr bool widened = !std::is_same_v<T, A>;
  constexpr int64_t VS = Lanes<T>::size();
  const T* gy = grad_out.data_ptr<T>();
  const T* x = input.data_ptr<T>();
  T* gw = grad_w.data_ptr<T>();
  const FeatStrides gys(grad_out), xs(input);
  const WeightStrides ws(grad_w);
  const auto row_taps = forward_taps(g.H, g.Ho, g.Kh, g.sh, g.ph, g.dh);
  const auto col_taps = forward_taps(g.W, g.Wo, g.Kw, g.sw, g.pw, g.dw);
  const int64_t nvec = std::min<int64_t>(g.Cg / VS, 4), tail = g.Cg - nvec * VS;
  at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> pix(gys.c == 1 ? 0 : g.C);
    std::vector<A> rows(widened ? g.Kh * g.W * g.C : 0);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / g.Ho, i = idx % g.Ho;
      const Taps& r = row_taps[i];
      // x0: the first input row the taps read, column 0; row_step: from one tap row's input row to the next's; col:
      // the column stride.
      auto dots = [&](const auto* x0, int64_t row_step, int64_t col) {
        for (int64_t j = 0; j < g.Wo; ++j) {
          const Taps& c = col_taps[j];
          const Walk walk{r.count, c.count, ws.u, row_step, ws.v, c.pstep * col};
          const T* gpix = pixel_channels(gy + n * gys.n + i * gys.h + j * gys.w, gys.c, g.C, pix.data());
          for (int64_t gr = 0; gr < g.G; ++gr) {
            T* wp = gw + n * ws.n + gr * ws.g + i * ws.i + j * ws.j;
            const T* gp = gpix + gr * g.Cg;
            const auto* xp = x0 + c.p0 * col + gr * g.Cg;
            if (r.count != g.Kh || c.count != g.Kw) {  // taps outside the image get a zero gradient
              for (int64_t u = 0; u < g.Kh; ++u)
                for (int64_t v = 0; v < g.Kw; ++v) wp[u * ws.u + v * ws.v] = T{};
            }
            T* w0 = wp + r.k0 * ws.u + c.k0 * ws.v;
            if (try_row_dots<T>(nvec, tail, gp, xp, walk, w0)) continue;
            switch (nvec) {
              case 0: tap_dots<T, 0>(gp, xp, walk, tail, w0); break;
              case 1: tap_dots<T, 1>(gp, xp, walk, tail, w0); break;
              case 2: tap_dots<T, 2>(gp, xp, walk, tail, w0); break;
              case 3: tap_dots<T, 3>(gp, xp, walk, tail, w0); break;
              default: tap_dots<T, 4>(gp, xp, walk, tail, w0); break;
            }
          }
        }
      };
      if constexpr (widened) {  // rows[a] = input row p0 + a * pstep, (W, C) contiguous
        for (int64_t a = 0; a < r.count; ++a)
          widen_row(x, xs, n, r.p0 + a * r.pstep, g.W, g.C, rows.data() + a * g.W * g.C);
        dots(rows.data(), g.W * g.C, g.C);
      } else {
        dots(x + n * xs.n + r.p0 * xs.h, r.pstep * xs.h, xs.w);
      }
    }
  });
}

void check_features(const at::Tensor& t, const char* name, bool any_layout = false) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 4, name, " must be a 4-D CPU tensor");
  TORCH_CHECK(any_layout || t.stride(1) == 1 || t.size(1) == 1, name,
              " must be channels_last (channel stride 1), got strides ", t.strides());
}

Geometry make_geometry(const at::Tensor& features, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(weight.dim() == 6, "weight must be 6-D (N, G, Kh, Kw, Ho, Wo)");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "stride, padding and dilation must have two entries");
  Geometry g;
  g.N = features.size(0);
  g.C = features.size(1);
  g.H = features.size(2);
  g.W = features.size(3);
  g.G = weight.size(1);
  g.Kh = weight.size(2);
  g.Kw = weight.size(3);
  g.Ho = weight.size(4);
  g.Wo = weight.size(5);
  TORCH_CHECK(g.G > 0 && g.C % g.G == 0, "C must be divisible by G");
  TORCH_CHECK(weight.size(0) == g.N, "batch size mismatch");
  g.Cg = g.C / g.G;
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  return g;
}

// `input` is the (N, C, H, W) input of the forward op in every function, so the geometry is always built from it.
void forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& out, at::IntArrayRef stride,
             at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_features(input, "input");
  TORCH_CHECK(out.device().is_cpu() && out.dim() == 4, "out must be a 4-D CPU tensor");
  const Geometry g = make_geometry(input, weight, stride, padding, dilation);
  TORCH_CHECK(out.size(2) == g.Ho && out.size(3) == g.Wo, "out has the wrong spatial size");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "involution_forward",
                             [&] { forward_impl<scalar_t>(input, weight, out, g); });
}

void backward_input(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& grad_in,
                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_features(grad_out, "grad_output", /*any_layout=*/true);
  check_features(grad_in, "grad_input");
  const Geometry g = make_geometry(grad_in, weight, stride, padding, dilation);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_out.scalar_type(), "involution_backward_input",
                             [&] { backward_input_impl<scalar_t>(grad_out, weight, grad_in, g); });
}

void backward_weight(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& grad_w,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_features(grad_out, "grad_output", /*any_layout=*/true);
  check_features(input, "input");
  const Geometry g = make_geometry(input, grad_w, stride, padding, dilation);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "involution_backward_weight",
                             [&] { backward_weight_impl<scalar_t>(grad_out, input, grad_w, g); });
}

// ------------------------------------------------------------------------------------------------ NCHW family
involution_nchw::Geometry nchw_geometry(const Geometry& g) {
  involution_nchw::Geometry n{};
  n.N = g.N, n.C = g.C, n.G = g.G, n.H = g.H, n.W = g.W, n.Kh = g.Kh, n.Kw = g.Kw, n.Ho = g.Ho, n.Wo = g.Wo;
  n.sh = g.sh, n.sw = g.sw, n.ph = g.ph, n.pw = g.pw, n.dh = g.dh, n.dw = g.dw;
  TORCH_CHECK(g.Ho == (g.H + 2 * g.ph - g.dh * (g.Kh - 1) - 1) / g.sh + 1 &&
                  g.Wo == (g.W + 2 * g.pw - g.dw * (g.Kw - 1) - 1) / g.sw + 1,
              "the weight's (Ho, Wo) do not match the input size, stride, padding and dilation");
  n.finish();
  return n;
}

void check_contiguous(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), name, " must be a contiguous CPU tensor, got strides ",
              t.strides());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

// An output-shaped tensor (the output, grad_output) must be (N, C, Ho, Wo) of the geometry.
void check_output_shape(const at::Tensor& t, const char* name, const involution_nchw::Geometry& g) {
  TORCH_CHECK(t.dim() == 4 && t.size(0) == g.N && t.size(1) == g.C && t.size(2) == g.Ho && t.size(3) == g.Wo, name,
              " has the wrong shape");
}

// input: any strides; weight and out contiguous, all of one dtype.
void forward_nchw(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& out, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_features(input, "input", /*any_layout=*/true);
  check_contiguous(weight, "weight", input.scalar_type());
  check_contiguous(out, "out", input.scalar_type());
  const auto g = nchw_geometry(make_geometry(input, weight, stride, padding, dilation));
  check_output_shape(out, "out", g);
  if (out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "involution_forward_nchw", [&] {
    const int64_t xs[4] = {input.stride(0), input.stride(1), input.stride(2), input.stride(3)};
    involution_nchw::forward(g, nchw_data<scalar_t>(input), xs, nchw_data<scalar_t>(weight), nchw_data<scalar_t>(out),
                             AtenParallelFor{});
  });
}

// grad_output, weight and grad_input contiguous, all of one dtype.
void backward_input_nchw(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& grad_in,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_features(grad_in, "grad_input", /*any_layout=*/true);
  check_contiguous(grad_in, "grad_input", grad_in.scalar_type());
  check_contiguous(grad_out, "grad_output", grad_in.scalar_type());
  check_contiguous(weight, "weight", grad_in.scalar_type());
  const auto g = nchw_geometry(make_geometry(grad_in, weight, stride, padding, dilation));
  check_output_shape(grad_out, "grad_output", g);
  if (grad_in.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_in.scalar_type(), "involution_backward_input_nchw", [&] {
    involution_nchw::grad_input(g, nchw_data<scalar_t>(grad_out), nchw_data<scalar_t>(weight),
                                nchw_data<scalar_t>(grad_in), AtenParallelFor{});
  });
}

// input: any strides; grad_output and grad_weight contiguous, all of one dtype.
void backward_weight_nchw(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& grad_w,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_features(input, "input", /*any_layout=*/true);
  check_contiguous(grad_out, "grad_output", input.scalar_type());
  check_contiguous(grad_w, "grad_weight", input.scalar_type());
  const auto g = nchw_geometry(make_geometry(input, grad_w, stride, padding, dilation));
  check_output_shape(grad_out, "grad_output", g);
  if (grad_w.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "involution_backward_weight_nchw", [&] {
    const int64_t xs[4] = {input.stride(0), input.stride(1), input.stride(2), input.stride(3)};
    involution_nchw::grad_weight(g, nchw_data<scalar_t>(grad_out), nchw_data<scalar_t>(input), xs,
                                 nchw_data<scalar_t>(grad_w), AtenParallelFor{});
  });
}

}  // namespace

TORCH_LIBRARY(involution_cpu, m) {
  m.def("forward(Tensor input, Tensor weight, Tensor(a!) out, int[] stride, int[] padding, int[] dilation) -> ()");
  m.def(
      "backward_input(Tensor grad_output, Tensor weight, Tensor(a!) grad_input, int[] stride, int[] padding, "
      "int[] dilation) -> ()");
  m.def(
      "backward_weight(Tensor grad_output, Tensor input, Tensor(a!) grad_weight, int[] stride, int[] padding, "
      "int[] dilation) -> ()");
  m.def(
      "forward_nchw(Tensor input, Tensor weight, Tensor(a!) out, int[] stride, int[] padding, int[] dilation) -> ()");
  m.def(
      "backward_input_nchw(Tensor grad_output, Tensor weight, Tensor(a!) grad_input, int[] stride, int[] padding, "
      "int[] dilation) -> ()");
  m.def(
      "backward_weight_nchw(Tensor grad_output, Tensor input, Tensor(a!) grad_weight, int[] stride, int[] padding, "
      "int[] dilation) -> ()");
}

TORCH_LIBRARY_IMPL(involution_cpu, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward_input", &backward_input);
  m.impl("backward_weight", &backward_weight);
  m.impl("forward_nchw", &forward_nchw);
  m.impl("backward_input_nchw", &backward_input_nchw);
  m.impl("backward_weight_nchw", &backward_weight_nchw);
}
