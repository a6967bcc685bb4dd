// NCDHW forward of the 3-D involution op on the register blocks of involution_nchw.h: plain C++17, no framework
// headers, the same scalar types and parallel_for convention as that header.
//
//   y[n, c, z, i, j] = sum_{t,u,v} w[n, g, t, u, v, z, i, j] * x[n, c, z*sd - pd + t*dd, i*sh - ph + u*dh, ...]
//
// A task is a block of output rows of one output slice z of one group of one image. It pads, in the accumulator
// type, the rows of the depth slices its taps read (only the slices inside the volume: taps outside it are left out
// of the tap list rather than summed as zeros), one padded plane section per (channel, slice), and stages each tap's
// weights along its rows, from the weight's strides. Every tap of every read slice is then one more entry in the
// 2-D kernels' tap list (an offset into the padded rows, an offset into the staged weights), so a block of CB
// channels x NJ pixels is summed over all Kd*Kh*Kw taps in registers by the same row_block as the 2-D forward.

#pragma once

#include "involution_nchw.h"

namespace involution_nchw {

// The 3-D geometry: the (H, W) part is a 2-D Geometry (whose finish() sizes the padded rows), plus depth.
struct Geometry3d {
  Geometry plane;  // N, C, G, H, W, Kh, Kw, Ho, Wo and their strides, paddings and dilations
  int64_t D, Kd, Do, sd, pd, dd;
};

// Output rows per task: a whole slice, halved while the task's padded rows would not fit in about 512 KiB (so
// they are read from L2) or while there are fewer than 16 tasks.
template <typename A>
inline int64_t rows_per_task3d(const Geometry3d& g3) {
  const Geometry& g = g3.plane;
  const auto bytes = [&](int64_t rows) {
    return g.Cg * g3.Kd * ((rows - 1) * g.sh + (g.Kh - 1) * g.dh + 1) * g.row * static_cast<int64_t>(sizeof(A));
  };
  int64_t rows = g.Ho;
  while (rows > 1 && (bytes(rows) > (512 << 10) || g.N * g.G * g3.Do * ((g.Ho + rows - 1) / rows) < 16))
    rows = (rows + 1) / 2;
  return rows;
}

// x: (N, C, D, H, W), strides xs[5], any; w: (N, G, Kd, Kh, Kw, Do, Ho, Wo), strides ws[8], any; y: (N, C, Do, Ho,
// Wo), strides ys[5] with ys[4] == 1 (each output row contiguous).
template <typename T, typename ParallelFor>
void forward3d(const Geometry3d& g3, const T* x, const int64_t* xs, const T* w, const int64_t* ws, T* y,
               const int64_t* ys, ParallelFor&& parallel_for) {
  using A = acc_t<T>;
  constexpr int NJ = kPixels<A>;
  const Geometry& g = g3.plane;
  const int64_t rows = rows_per_task3d<A>(g3), blocks = (g.Ho + rows - 1) / rows;
  const int64_t span = (rows - 1) * g.sh + (g.Kh - 1) * g.dh + 1;  // padded rows a task holds per slice
  const int64_t slice = span * g.row, cstride = g3.Kd * slice;      // elements per (channel, slice), per channel
  const int64_t R = std::max<int64_t>(1, 256 / g.Wo);               // output rows staged at once: ~1 KB per tap
  const int64_t wt = R * g.Wo + NJ;                                 // a tap's staged weights, with slack
  const int64_t taps_max = g3.Kd * g.taps();
  parallel_for(g.N * g.G * g3.Do * blocks, [&](int64_t begin, int64_t end) {
    std::vector<A> xbuf(static_cast<size_t>(g.Cg * cstride + kSlack<A>), A(0));
    std::vector<A> wst(static_cast<size_t>(taps_max * wt), A(0));
    std::vector<int64_t> soff(static_cast<size_t>(taps_max)), woff(static_cast<size_t>(taps_max));
    const A* src[CB];
    T* dst[CB];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task % blocks, z = task / blocks % g3.Do, grp = task / (blocks * g3.Do) % g.G;
      const int64_t n = task / (blocks * g3.Do * g.G);
      const int64_t i0 = blk * rows, i1 = std::min(g.Ho, i0 + rows);
      const int64_t p0 = i0 * g.sh, p1 = (i1 - 1) * g.sh + (g.Kh - 1) * g.dh + 1;
      // The depth taps t = t0, t0 + 1, ... (count of them) read slices d0, d0 + dd, ... inside the volume.
      int64_t t0 = 0, d0 = 0, count = 0;
      for (int64_t t = 0; t < g3.Kd; ++t) {
        const int64_t d = z * g3.sd - g3.pd + t * g3.dd;
        if (d < 0 || d >= g3.D) continue;
        if (count++ == 0) t0 = t, d0 = d;
      }
      if (count == 0) {  // every tap in the depth padding
        for (int64_t c = 0; c < g.Cg; ++c)
          for (int64_t i = i0; i < i1; ++i) {
            T* row = y + n * ys[0] + (grp * g.Cg + c) * ys[1] + z * ys[2] + i * ys[3];
            std::fill(row, row + g.Wo, convert<T>(A(0)));
          }
        continue;
      }
      for (int64_t c = 0; c < g.Cg; ++c)
        for (int64_t a = 0; a < count; ++a) {
          const T* plane = x + n * xs[0] + (grp * g.Cg + c) * xs[1] + (d0 + a * g3.dd) * xs[2];
          pad_rows(g, plane, xs[3], xs[4], xbuf.data() + c * cstride + a * slice, p0, p1);
        }
      const int64_t taps = count * g.taps();
      for (int64_t a = 0; a < count; ++a)
        for (int64_t u = 0; u < g.Kh; ++u)
          for (int64_t v = 0; v < g.Kw; ++v) {
            const int64_t k = (a * g.Kh + u) * g.Kw + v;
            soff[k] = a * slice + u * g.dh * g.row + g.column(v * g.dw);
            woff[k] = k * wt;
          }
      const T* wz = w + n * ws[0] + grp * ws[1] + t0 * ws[2] + z * ws[5];
      for (int64_t r0 = i0; r0 < i1; r0 += R) {
        const int64_t nr = std::min(R, i1 - r0);
        for (int64_t a = 0; a < count; ++a)  // stage the taps' weights of rows r0 .. r0 + nr
          for (int64_t u = 0; u < g.Kh; ++u)
            for (int64_t v = 0; v < g.Kw; ++v) {
              const T* ws0 = wz + a * ws[2] + u * ws[3] + v * ws[4] + r0 * ws[6];
              A* d = wst.data() + woff[(a * g.Kh + u) * g.Kw + v];
              for (int64_t r = 0; r < nr; ++r, d += g.Wo) {
                const T* s = ws0 + r * ws[6];
                if (ws[7] == 1) {
                  convert_n(d, s, g.Wo);
                } else {
                  for (int64_t j = 0; j < g.Wo; ++j) d[j] = convert<A>(s[j * ws[7]]);
                }
              }
            }
        for (int64_t i = r0; i < r0 + nr; ++i) {
          const A* wi = wst.data() + (i - r0) * g.Wo;
          const A* xi = xbuf.data() + (i * g.sh - p0) * g.row;
          T* yi = y + n * ys[0] + grp * g.Cg * ys[1] + z * ys[2] + i * ys[3];
          for (int64_t j0 = 0; j0 < g.Wo; j0 += NJ) {
            const int64_t nj = std::min<int64_t>(NJ, g.Wo - j0);
            for (int64_t c0 = 0; c0 < g.Cg; c0 += CB) {
              const int64_t nc = std::min<int64_t>(CB, g.Cg - c0);
              for (int64_t c = 0; c < nc; ++c) {
                src[c] = xi + (c0 + c) * cstride + j0;
                dst[c] = yi + (c0 + c) * ys[1] + j0;
              }
              if (nj > NJ / 2)
                row_block_upto<T, NJ, CB>(nc, wi + j0, woff.data(), soff.data(), taps, src, dst, nj);
              else
                row_block_upto<T, NJ / 2, CB>(nc, wi + j0, woff.data(), soff.data(), taps, src, dst, nj);
            }
          }
        }
      }
    }
  });
}

// Strides of a contiguous tensor of `shape` (sizes of any integer type).
template <typename Shape>
std::vector<int64_t> contiguous_strides(const Shape& shape) {
  std::vector<int64_t> st(shape.size(), 1);
  for (size_t k = shape.size(); k-- > 1;) st[k - 1] = st[k] * static_cast<int64_t>(shape[k]);
  return st;
}

// The forward on contiguous tensors with Dims (2 or 3) spatial axes: x (N, C, *size), w (N, G, *kernel, *out) and
// y (N, C, *out) of shapes xs, ws, ys (already checked against each other), stride / pad / dil one per axis; the
// 2-D kernel of involution_nchw.h or the 3-D one above. What the runtime adapters (onnxruntime, OpenVINO) run.
template <int Dims, typename T, typename Shape, typename Ints, typename ParallelFor>
void forward_contiguous(const Shape& xs, const Shape& ws, const Shape& ys, const Ints& stride, const Ints& pad,
                        const Ints& dil, const T* x, const T* w, T* y, ParallelFor&& parallel_for) {
  static_assert(Dims == 2 || Dims == 3, "2-D or 3-D involution");
  const auto at = [](const auto& v, int k) { return static_cast<int64_t>(v[static_cast<size_t>(k)]); };
  Geometry g{};  // the (H, W) part: the last two spatial axes
  g.N = at(xs, 0), g.C = at(xs, 1), g.G = at(ws, 1), g.H = at(xs, Dims), g.W = at(xs, Dims + 1);
  g.Kh = at(ws, Dims), g.Kw = at(ws, Dims + 1), g.Ho = at(ys, Dims), g.Wo = at(ys, Dims + 1);
  g.sh = at(stride, Dims - 2), g.sw = at(stride, Dims - 1), g.ph = at(pad, Dims - 2), g.pw = at(pad, Dims - 1);
  g.dh = at(dil, Dims - 2), g.dw = at(dil, Dims - 1);
  g.finish();
  const std::vector<int64_t> x_strides = contiguous_strides(xs);
  if constexpr (Dims == 2) {
    forward<T>(g, x, x_strides.data(), w, y, parallel_for);
  } else {
    const Geometry3d g3{g, at(xs, 2), at(ws, 2), at(ys, 2), at(stride, 0), at(pad, 0), at(dil, 0)};
    forward3d<T>(g3, x, x_strides.data(), w, contiguous_strides(ws).data(), y, contiguous_strides(ys).data(),
                 parallel_for);
  }
}

}  // namespace involution_nchw
