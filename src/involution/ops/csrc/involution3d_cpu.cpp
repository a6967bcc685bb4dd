// CPU kernels of the 3-D involution op: forward, grad_input and grad_weight, in two families, each for float32,
// float64, bfloat16 and float16 (16-bit values read in place, summed in float32, rounded once when stored).
//
//   out[n, c, z, i, j] = sum_{t, u, v} weight[n, c / Cg, t, u, v, z, i, j] * input[n, c, z sd - pd + t dd, ...]
//
// * NDHWC (forward3d, backward_input3d, backward_weight3d): feature maps with channel stride 1 (channels_last_3d).
//   A group's Cg channels are contiguous, so each kernel weight is broadcast into a vector and multiplied with a
//   vector of channels; a voxel's accumulators stay in registers over all its Kd*Kh*Kw taps (as the 2-D NHWC
//   kernels of involution_cpu.cpp do for Kh*Kw).
// * NCDHW (forward3d_ncdhw, ...): feature maps of any strides, vectorised along output rows. The forward is
//   involution_ncdhw.h's (the 2-D NCHW register blocks over all Kd*Kh*Kw taps); the gradients stage the rows they
//   read, zero-padded along the width and widened to the accumulator type, in small buffers of their own (so
//   borders need no branches), and sum whole rows.
//
// Both read the weight (N, G, Kd, Kh, Kw, Do, Ho, Wo) in place through its strides, contiguous or the view of a
// channels_last_3d generator output, and write their results through the result's strides. Every kernel is a
// gather (each task owns the rows of what it writes): deterministic, no atomics. The ops are registered in the
// `involution_cpu` library that involution_cpu.cpp defines; backends/cpu.py builds both files into one extension.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "involution_cpu_common.h"
#include "involution_ncdhw.h"

namespace {

using namespace involution_cpu;  // Lanes, Taps, forward_taps, backward_taps, nchw_data, AtenParallelFor

struct Geometry3d {
  int64_t N, C, G, Cg;
  int64_t size[3], kernel[3], out[3];  // (D, H, W), (Kd, Kh, Kw), (Do, Ho, Wo)
  int64_t stride[3], pad[3], dil[3];
};

// Strides of a 5-D feature map (N, C, D, H, W).
struct Feat5 {
  int64_t n, c, d[3];
  explicit Feat5(const at::Tensor& t) : n(t.stride(0)), c(t.stride(1)), d{t.stride(2), t.stride(3), t.stride(4)} {}
};

// Strides of an 8-D weight (N, G, Kd, Kh, Kw, Do, Ho, Wo): k the taps', o the output positions'.
struct Weight8 {
  int64_t n, g, k[3], o[3];
  explicit Weight8(const at::Tensor& t)
      : n(t.stride(0)), g(t.stride(1)), k{t.stride(2), t.stride(3), t.stride(4)}, o{t.stride(5), t.stride(6), t.stride(7)} {}
};

// The taps of each axis, for every output position (forward, grad_weight) or input position (grad_input).
struct AxisTaps {
  std::vector<Taps> axis[3];
  AxisTaps(const Geometry3d& g, bool backward) {
    for (int a = 0; a < 3; ++a)
      axis[a] = backward ? backward_taps(g.size[a], g.out[a], g.kernel[a], g.stride[a], g.pad[a], g.dil[a])
                         : forward_taps(g.size[a], g.out[a], g.kernel[a], g.stride[a], g.pad[a], g.dil[a]);
  }
};

// A 3-D walk over taps: count[a] steps along axis a (depth, height, width); one step moves the weight pointer by
// w[a] and the source pointer by s[a].
struct Walk3 {
  int64_t count[3], w[3], s[3];
};

// ------------------------------------------------------------------------------------------------ NDHWC family
// dst[c] = sum over the walk of weight * src[c] for NV vectors of channels, in registers across all taps.
template <typename T, int NV>
inline void accumulate_block3(const T* w0, const T* s0, const Walk3& walk, T* dst) {
  using L = Lanes<T>;
  using A = typename L::A;
  using Vec = typename L::Vec;
  Vec acc[NV];
  for (int k = 0; k < NV; ++k) acc[k] = Vec(A(0));
  for (int64_t a = 0; a < walk.count[0]; ++a)
    for (int64_t b = 0; b < walk.count[1]; ++b) {
      const T* wp = w0 + a * walk.w[0] + b * walk.w[1];
      const T* sp = s0 + a * walk.s[0] + b * walk.s[1];
      for (int64_t c = 0; c < walk.count[2]; ++c) {
        const Vec wv(static_cast<A>(wp[c * walk.w[2]]));
        const T* s = sp + c * walk.s[2];
#pragma GCC unroll 4
        for (int k = 0; k < NV; ++k) acc[k] = at::vec::fmadd(wv, L::load(s + k * L::size()), acc[k]);
      }
    }
  for (int k = 0; k < NV; ++k) L::store(dst + k * L::size(), acc[k]);
}

// One group's Cg channels (contiguous in src and dst): blocks of up to four vectors, then the rest as scalars.
template <typename T>
inline void accumulate_group3(int64_t Cg, const T* w0, const T* s0, const Walk3& walk, T* dst) {
  using A = at::opmath_type<T>;
  constexpr int64_t VS = Lanes<T>::size();
  int64_t c0 = 0;
  for (; c0 + 4 * VS <= Cg; c0 += 4 * VS) accumulate_block3<T, 4>(w0, s0 + c0, walk, dst + c0);
  const int64_t rest = (Cg - c0) / VS;
  if (rest == 3) accumulate_block3<T, 3>(w0, s0 + c0, walk, dst + c0);
  if (rest == 2) accumulate_block3<T, 2>(w0, s0 + c0, walk, dst + c0);
  if (rest == 1) accumulate_block3<T, 1>(w0, s0 + c0, walk, dst + c0);
  for (int64_t ch = c0 + rest * VS; ch < Cg; ++ch) {
    A acc = 0;
    for (int64_t a = 0; a < walk.count[0]; ++a)
      for (int64_t b = 0; b < walk.count[1]; ++b)
        for (int64_t c = 0; c < walk.count[2]; ++c) {
          const int64_t wo = a * walk.w[0] + b * walk.w[1] + c * walk.w[2];
          const int64_t so = a * walk.s[0] + b * walk.s[1] + c * walk.s[2];
          acc += static_cast<A>(w0[wo]) * static_cast<A>(s0[so + ch]);
        }
    dst[ch] = static_cast<T>(acc);
  }
}

// The dot product over n contiguous values of a and b, in A.
template <typename T>
inline at::opmath_type<T> dot(const T* a, const T* b, int64_t n) {
  using L = Lanes<T>;
  using A = typename L::A;
  using Vec = typename L::Vec;
  int64_t k = 0;
  A sum = 0;
  if (n >= L::size()) {
    Vec acc = L::load(a) * L::load(b);
    for (k = L::size(); k + L::size() <= n; k += L::size()) acc = at::vec::fmadd(L::load(a + k), L::load(b + k), acc);
    sum = at::vec::vec_reduce_all<A>([](Vec& p, Vec& q) { return p + q; }, acc);
  }
  for (; k < n; ++k) sum += static_cast<A>(a[k]) * static_cast<A>(b[k]);
  return sum;
}

// forward: each output row (n, z, i) is a task; out and input have channel stride 1.
template <typename T>
void forward_ndhwc(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& out, const Geometry3d& g) {
  const T* x = input.data_ptr<T>();
  const T* w = weight.data_ptr<T>();
  T* y = out.data_ptr<T>();
  const Feat5 xs(input), ys(out);
  const Weight8 ws(weight);
  const AxisTaps taps(g, /*backward=*/false);
  at::parallel_for(0, g.N * g.out[0] * g.out[1], 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / (g.out[0] * g.out[1]), z = idx / g.out[1] % g.out[0], i = idx % g.out[1];
      const Taps& td = taps.axis[0][z];
      const Taps& th = taps.axis[1][i];
      for (int64_t j = 0; j < g.out[2]; ++j) {
        const Taps& tw = taps.axis[2][j];
        const Walk3 walk{{td.count, th.count, tw.count},
                         {ws.k[0], ws.k[1], ws.k[2]},
                         {td.pstep * xs.d[0], th.pstep * xs.d[1], tw.pstep * xs.d[2]}};
        const T* w0 = w + n * ws.n + z * ws.o[0] + i * ws.o[1] + j * ws.o[2] + td.k0 * ws.k[0] + th.k0 * ws.k[1] +
                      tw.k0 * ws.k[2];
        const T* s0 = x + n * xs.n + td.p0 * xs.d[0] + th.p0 * xs.d[1] + tw.p0 * xs.d[2];
        T* d0 = y + n * ys.n + z * ys.d[0] + i * ys.d[1] + j * ys.d[2];
        for (int64_t gr = 0; gr < g.G; ++gr)
          accumulate_group3<T>(g.Cg, w0 + gr * ws.g, s0 + gr * g.Cg, walk, d0 + gr * g.Cg);
      }
    }
  });
}

// grad_input: each input row (n, z, h) is a task, gathering from the outputs whose windows cover it: a tap step
// moves the weight by kstep taps and pstep output positions, grad_output by pstep positions.
template <typename T>
void backward_input_ndhwc(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& grad_in,
                          const Geometry3d& g) {
  const T* gy = grad_out.data_ptr<T>();
  const T* w = weight.data_ptr<T>();
  T* gx = grad_in.data_ptr<T>();
  const Feat5 gys(grad_out), gxs(grad_in);
  const Weight8 ws(weight);
  const AxisTaps taps(g, /*backward=*/true);
  at::parallel_for(0, g.N * g.size[0] * g.size[1], 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / (g.size[0] * g.size[1]), z = idx / g.size[1] % g.size[0], h = idx % g.size[1];
      const Taps* t3[3] = {&taps.axis[0][z], &taps.axis[1][h], nullptr};
      for (int64_t x = 0; x < g.size[2]; ++x) {
        t3[2] = &taps.axis[2][x];
        Walk3 walk;
        const T* w0 = w + n * ws.n;
        const T* s0 = gy + n * gys.n;
        for (int a = 0; a < 3; ++a) {
          walk.count[a] = t3[a]->count;
          walk.w[a] = t3[a]->kstep * ws.k[a] + t3[a]->pstep * ws.o[a];
          walk.s[a] = t3[a]->pstep * gys.d[a];
          w0 += t3[a]->k0 * ws.k[a] + t3[a]->p0 * ws.o[a];
          s0 += t3[a]->p0 * gys.d[a];
        }
        T* d0 = gx + n * gxs.n + z * gxs.d[0] + h * gxs.d[1] + x * gxs.d[2];
        for (int64_t gr = 0; gr < g.G; ++gr)
          accumulate_group3<T>(g.Cg, w0 + gr * ws.g, s0 + gr * g.Cg, walk, d0 + gr * g.Cg);
      }
    }
  });
}

// grad_weight: each output row (n, z, i) is a task; every tap's gradient is the dot product over the group's
// channels of grad_output and the input voxel the tap reads (zero for taps outside the volume).
template <typename T>
void backward_weight_ndhwc(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& grad_w,
                           const Geometry3d& g) {
  const T* gy = grad_out.data_ptr<T>();
  const T* x = input.data_ptr<T>();
  T* gw = grad_w.data_ptr<T>();
  const Feat5 gys(grad_out), xs(input);
  const Weight8 ws(grad_w);
  const AxisTaps taps(g, /*backward=*/false);
  const int64_t Kd = g.kernel[0], Kh = g.kernel[1], Kw = g.kernel[2];
  at::parallel_for(0, g.N * g.out[0] * g.out[1], 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / (g.out[0] * g.out[1]), z = idx / g.out[1] % g.out[0], i = idx % g.out[1];
      const Taps& td = taps.axis[0][z];
      const Taps& th = taps.axis[1][i];
      for (int64_t j = 0; j < g.out[2]; ++j) {
        const Taps& tw = taps.axis[2][j];
        const bool partial = td.count != Kd || th.count != Kh || tw.count != Kw;
        for (int64_t gr = 0; gr < g.G; ++gr) {
          T* wp = gw + n * ws.n + gr * ws.g + z * ws.o[0] + i * ws.o[1] + j * ws.o[2];
          const T* gp = gy + n * gys.n + z * gys.d[0] + i * gys.d[1] + j * gys.d[2] + gr * g.Cg;
          if (partial)
            for (int64_t t = 0; t < Kd; ++t)
              for (int64_t u = 0; u < Kh; ++u)
                for (int64_t v = 0; v < Kw; ++v) wp[t * ws.k[0] + u * ws.k[1] + v * ws.k[2]] = T{};
          const T* x0 = x + n * xs.n + gr * g.Cg;
          for (int64_t a = 0; a < td.count; ++a)
            for (int64_t b = 0; b < th.count; ++b)
              for (int64_t c = 0; c < tw.count; ++c) {
                const T* xp = x0 + (td.p0 + a * td.pstep) * xs.d[0] + (th.p0 + b * th.pstep) * xs.d[1] +
                              (tw.p0 + c * tw.pstep) * xs.d[2];
                wp[(td.k0 + a) * ws.k[0] + (th.k0 + b) * ws.k[1] + (tw.k0 + c) * ws.k[2]] =
                    static_cast<T>(dot(gp, xp, g.Cg));
              }
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------ NCDHW family
// Row (d, h) of channel c of sample n (strides fs) widened into dst[pad .. pad + W), zeros on both sides: the
// width-padded row of length W + 2 pad that the row kernels index without bounds checks.
template <typename T, typename A>
inline void stage_row(const T* f, const Feat5& fs, int64_t n, int64_t c, int64_t d, int64_t h, int64_t W,
                      int64_t pad, A* dst) {
  const T* src = f + n * fs.n + c * fs.c + d * fs.d[0] + h * fs.d[1];
  std::fill(dst, dst + pad, A(0));
  for (int64_t x = 0; x < W; ++x) dst[pad + x] = static_cast<A>(src[x * fs.d[2]]);
  std::fill(dst + pad + W, dst + 2 * pad + W, A(0));
}

// Row (z, i) of grad_output / output channel c, unpadded, widened into dst[0 .. Wo).
template <typename T, typename A>
inline void stage_out_row(const T* f, const Feat5& fs, int64_t n, int64_t c, int64_t z, int64_t i, int64_t Wo,
                          A* dst) {
  const T* src = f + n * fs.n + c * fs.c + z * fs.d[0] + i * fs.d[1];
  for (int64_t j = 0; j < Wo; ++j) dst[j] = static_cast<A>(src[j * fs.d[2]]);
}

// The Kw x Wo kernel weights of taps (t, u) at output row (z, i), group gr, widened into dst[v * Wo + j].
template <typename T, typename A>
inline void stage_weights(const T* w, const Weight8& ws, int64_t n, int64_t gr, int64_t t, int64_t u, int64_t z,
                          int64_t i, int64_t Kw, int64_t Wo, A* dst) {
  const T* src = w + n * ws.n + gr * ws.g + t * ws.k[0] + u * ws.k[1] + z * ws.o[0] + i * ws.o[1];
  for (int64_t v = 0; v < Kw; ++v)
    for (int64_t j = 0; j < Wo; ++j) dst[v * Wo + j] = static_cast<A>(src[v * ws.k[2] + j * ws.o[2]]);
}

// acc[j] += wv[j] * xp[j * s] for j < Wo (s == 1: contiguous, vectorised by the compiler).
template <typename A>
inline void row_fma(A* __restrict acc, const A* __restrict wv, const A* __restrict xp, int64_t s, int64_t Wo) {
  if (s == 1) {
    for (int64_t j = 0; j < Wo; ++j) acc[j] += wv[j] * xp[j];
  } else {
    for (int64_t j = 0; j < Wo; ++j) acc[j] += wv[j] * xp[j * s];
  }
}

// forward: the register-blocked kernel of involution_ncdhw.h (each output row contiguous: `out` is written through a
// contiguous buffer when it is not).
template <typename T>
void forward_ncdhw(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& out, const Geometry3d& g) {
  involution_nchw::Geometry3d n3{};
  involution_nchw::Geometry& p = n3.plane;
  p.N = g.N, p.C = g.C, p.G = g.G, p.H = g.size[1], p.W = g.size[2], p.Kh = g.kernel[1], p.Kw = g.kernel[2];
  p.Ho = g.out[1], p.Wo = g.out[2], p.sh = g.stride[1], p.sw = g.stride[2], p.ph = g.pad[1], p.pw = g.pad[2];
  p.dh = g.dil[1], p.dw = g.dil[2];
  p.finish();
  n3.D = g.size[0], n3.Kd = g.kernel[0], n3.Do = g.out[0], n3.sd = g.stride[0], n3.pd = g.pad[0], n3.dd = g.dil[0];
  const at::Tensor y = out.stride(4) == 1 || g.out[2] == 1 ? out : at::empty_like(out, at::MemoryFormat::Contiguous);
  const int64_t xs[5] = {input.stride(0), input.stride(1), input.stride(2), input.stride(3), input.stride(4)};
  const int64_t ys[5] = {y.stride(0), y.stride(1), y.stride(2), y.stride(3), 1};
  int64_t ws[8];
  for (int k = 0; k < 8; ++k) ws[k] = weight.stride(k);
  involution_nchw::forward3d(n3, nchw_data<T>(input), xs, nchw_data<T>(weight), ws, nchw_data<T>(y), ys,
                             AtenParallelFor{});
  if (!y.is_same(out)) out.copy_(y);
}

// grad_input: each task is an input row (n, g, z, h) of every channel of group g, gathering the output rows
// (z', i) whose windows cover it; along the width each output row scatters into the task's own width-padded sums
// (output j, tap v adds to position j sw + v dw), so the task still writes only its own rows.
template <typename T>
void backward_input_ncdhw(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& grad_in,
                          const Geometry3d& g) {
  using A = at::opmath_type<T>;
  const T* gy = grad_out.data_ptr<T>();
  const T* w = weight.data_ptr<T>();
  T* gx = grad_in.data_ptr<T>();
  const Feat5 gys(grad_out), gxs(grad_in);
  const Weight8 ws(weight);
  const AxisTaps taps(g, /*backward=*/true);
  const int64_t Kw = g.kernel[2], Wo = g.out[2], W = g.size[2], Wp = W + 2 * g.pad[2];
  const int64_t sw = g.stride[2], dw = g.dil[2];
  at::parallel_for(0, g.N * g.G * g.size[0] * g.size[1], 1, [&](int64_t begin, int64_t end) {
    std::vector<A> wbuf(Kw * Wo), acc(g.Cg * Wp), row(Wo);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t h = idx % g.size[1], z = idx / g.size[1] % g.size[0];
      const int64_t gr = idx / (g.size[0] * g.size[1]) % g.G, n = idx / (g.size[0] * g.size[1] * g.G);
      const Taps& td = taps.axis[0][z];
      const Taps& th = taps.axis[1][h];
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t a = 0; a < td.count; ++a)
        for (int64_t b = 0; b < th.count; ++b) {
          const int64_t t = td.k0 + a * td.kstep, zo = td.p0 + a * td.pstep;
          const int64_t u = th.k0 + b * th.kstep, io = th.p0 + b * th.pstep;
          stage_weights(w, ws, n, gr, t, u, zo, io, Kw, Wo, wbuf.data());
          for (int64_t cg = 0; cg < g.Cg; ++cg) {
            stage_out_row(gy, gys, n, gr * g.Cg + cg, zo, io, Wo, row.data());
            A* ac = acc.data() + cg * Wp;
            for (int64_t v = 0; v < Kw; ++v) {
              const A* wv = wbuf.data() + v * Wo;
              A* dst = ac + v * dw;
              if (sw == 1) {
                for (int64_t j = 0; j < Wo; ++j) dst[j] += wv[j] * row[j];
              } else {
                for (int64_t j = 0; j < Wo; ++j) dst[j * sw] += wv[j] * row[j];
              }
            }
          }
        }
      for (int64_t cg = 0; cg < g.Cg; ++cg) {
        T* dst = gx + n * gxs.n + (gr * g.Cg + cg) * gxs.c + z * gxs.d[0] + h * gxs.d[1];
        const A* src = acc.data() + cg * Wp + g.pad[2];
        for (int64_t x = 0; x < W; ++x) dst[x * gxs.d[2]] = static_cast<T>(src[x]);
      }
    }
  });
}

// grad_weight: each task is an output row (n, g, z, i); its Kd*Kh*Kw x Wo gradients are summed over the group's
// channels in a buffer, then written through grad_weight's strides (zeros for taps outside the volume).
template <typename T>
void backward_weight_ncdhw(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& grad_w,
                           const Geometry3d& g) {
  using A = at::opmath_type<T>;
  const T* gy = grad_out.data_ptr<T>();
  const T* x = input.data_ptr<T>();
  T* gw = grad_w.data_ptr<T>();
  const Feat5 gys(grad_out), xs(input);
  const Weight8 ws(grad_w);
  const AxisTaps taps(g, /*backward=*/false);
  const int64_t Kd = g.kernel[0], Kh = g.kernel[1], Kw = g.kernel[2], Wo = g.out[2];
  const int64_t Wp = g.size[2] + 2 * g.pad[2], sw = g.stride[2], dw = g.dil[2];
  at::parallel_for(0, g.N * g.G * g.out[0] * g.out[1], 1, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(Kd * Kh * Kw * Wo), gyrow(Wo), row(Wp);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t i = idx % g.out[1], z = idx / g.out[1] % g.out[0];
      const int64_t gr = idx / (g.out[0] * g.out[1]) % g.G, n = idx / (g.out[0] * g.out[1] * g.G);
      const Taps& td = taps.axis[0][z];
      const Taps& th = taps.axis[1][i];
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t cg = 0; cg < g.Cg; ++cg) {
        const int64_t c = gr * g.Cg + cg;
        stage_out_row(gy, gys, n, c, z, i, Wo, gyrow.data());
        for (int64_t a = 0; a < td.count; ++a)
          for (int64_t b = 0; b < th.count; ++b) {
            stage_row(x, xs, n, c, td.p0 + a * td.pstep, th.p0 + b * th.pstep, g.size[2], g.pad[2], row.data());
            A* ar = acc.data() + ((td.k0 + a) * Kh + th.k0 + b) * Kw * Wo;
            for (int64_t v = 0; v < Kw; ++v) row_fma(ar + v * Wo, gyrow.data(), row.data() + v * dw, sw, Wo);
          }
      }
      T* dst = gw + n * ws.n + gr * ws.g + z * ws.o[0] + i * ws.o[1];
      for (int64_t t = 0; t < Kd; ++t)
        for (int64_t u = 0; u < Kh; ++u)
          for (int64_t v = 0; v < Kw; ++v) {
            const A* src = acc.data() + ((t * Kh + u) * Kw + v) * Wo;
            T* d = dst + t * ws.k[0] + u * ws.k[1] + v * ws.k[2];
            for (int64_t j = 0; j < Wo; ++j) d[j * ws.o[2]] = static_cast<T>(src[j]);
          }
    }
  });
}

// ---------------------------------------------------------------------------------------------- entry points
void check_features5(const at::Tensor& t, const char* name, at::ScalarType dtype, bool ndhwc) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 5, name, " must be a 5-D CPU tensor (N, C, D, H, W)");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(!ndhwc || t.stride(1) == 1 || t.size(1) == 1, name,
              " must have channel stride 1 (channels_last_3d), got strides ", t.strides());
}

// `features` is the forward op's (N, C, D, H, W) input (or grad_input); `weight` the (N, G, Kd, Kh, Kw, Do, Ho, Wo)
// weight or its gradient; `result` the tensor the kernel writes, `other` the other tensor it reads.
Geometry3d make_geometry3d(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& output_like,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(weight.dim() == 8 && weight.device().is_cpu(), "weight must be an 8-D CPU tensor (N, G, Kd, Kh, Kw, Do, Ho, Wo)");
  TORCH_CHECK(weight.scalar_type() == features.scalar_type(), "weight must be ", features.scalar_type());
  TORCH_CHECK(stride.size() == 3 && padding.size() == 3 && dilation.size() == 3,
              "stride, padding and dilation must have three entries");
  Geometry3d g;
  g.N = features.size(0);
  g.C = features.size(1);
  g.G = weight.size(1);
  TORCH_CHECK(g.G > 0 && g.C % g.G == 0, "C must be divisible by G");
  TORCH_CHECK(weight.size(0) == g.N, "batch size mismatch");
  g.Cg = g.C / g.G;
  for (int a = 0; a < 3; ++a) {
    g.size[a] = features.size(2 + a);
    g.kernel[a] = weight.size(2 + a);
    g.out[a] = weight.size(5 + a);
    g.stride[a] = stride[a];
    g.pad[a] = padding[a];
    g.dil[a] = dilation[a];
    TORCH_CHECK(g.stride[a] > 0 && g.dil[a] > 0 && g.pad[a] >= 0, "stride and dilation must be positive, padding >= 0");
    TORCH_CHECK(g.out[a] == (g.size[a] + 2 * g.pad[a] - g.dil[a] * (g.kernel[a] - 1) - 1) / g.stride[a] + 1,
                "the weight's (Do, Ho, Wo) do not match the input size, stride, padding and dilation");
  }
  TORCH_CHECK(output_like.dim() == 5 && output_like.size(0) == g.N && output_like.size(1) == g.C &&
                  output_like.size(2) == g.out[0] && output_like.size(3) == g.out[1] && output_like.size(4) == g.out[2],
              "the output (or grad_output) must be (N, C, Do, Ho, Wo), got ", output_like.sizes());
  return g;
}

template <bool NDHWC>
void forward3d(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& out, at::IntArrayRef stride,
               at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_features5(input, "input", input.scalar_type(), NDHWC);
  check_features5(out, "out", input.scalar_type(), NDHWC);
  const Geometry3d g = make_geometry3d(input, weight, out, stride, padding, dilation);
  if (out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "involution3d_forward", [&] {
    if constexpr (NDHWC) forward_ndhwc<scalar_t>(input, weight, out, g);
    else forward_ncdhw<scalar_t>(input, weight, out, g);
  });
}

template <bool NDHWC>
void backward_input3d(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& grad_in,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_features5(grad_in, "grad_input", grad_in.scalar_type(), NDHWC);
  check_features5(grad_out, "grad_output", grad_in.scalar_type(), NDHWC);
  const Geometry3d g = make_geometry3d(grad_in, weight, grad_out, stride, padding, dilation);
  if (grad_in.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_in.scalar_type(), "involution3d_backward_input", [&] {
    if constexpr (NDHWC) backward_input_ndhwc<scalar_t>(grad_out, weight, grad_in, g);
    else backward_input_ncdhw<scalar_t>(grad_out, weight, grad_in, g);
  });
}

template <bool NDHWC>
void backward_weight3d(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& grad_w,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_features5(input, "input", input.scalar_type(), NDHWC);
  check_features5(grad_out, "grad_output", input.scalar_type(), NDHWC);
  const Geometry3d g = make_geometry3d(input, grad_w, grad_out, stride, padding, dilation);
  if (grad_w.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "involution3d_backward_weight", [&] {
    if constexpr (NDHWC) backward_weight_ndhwc<scalar_t>(grad_out, input, grad_w, g);
    else backward_weight_ncdhw<scalar_t>(grad_out, input, grad_w, g);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(involution_cpu, m) {
  m.def("forward3d(Tensor input, Tensor weight, Tensor(a!) out, int[] stride, int[] padding, int[] dilation) -> ()");
  m.def(
      "backward_input3d(Tensor grad_output, Tensor weight, Tensor(a!) grad_input, int[] stride, "
      "int[] padding, int[] dilation) -> ()");
  m.def(
      "backward_weight3d(Tensor grad_output, Tensor input, Tensor(a!) grad_weight, int[] stride, "
      "int[] padding, int[] dilation) -> ()");
  m.def("forward3d_ncdhw(Tensor input, Tensor weight, Tensor(a!) out, int[] stride, int[] padding, int[] dilation) -> ()");
  m.def(
      "backward_input3d_ncdhw(Tensor grad_output, Tensor weight, Tensor(a!) grad_input, int[] stride, "
      "int[] padding, int[] dilation) -> ()");
  m.def(
      "backward_weight3d_ncdhw(Tensor grad_output, Tensor input, Tensor(a!) grad_weight, int[] stride, "
      "int[] padding, int[] dilation) -> ()");
}

TORCH_LIBRARY_IMPL(involution_cpu, CPU, m) {
  m.impl("forward3d", &forward3d<true>);
  m.impl("backward_input3d", &backward_input3d<true>);
  m.impl("backward_weight3d", &backward_weight3d<true>);
  m.impl("forward3d_ncdhw", &forward3d<false>);
  m.impl("backward_input3d_ncdhw", &backward_input3d<false>);
  m.impl("backward_weight3d_ncdhw", &backward_weight3d<false>);
}
