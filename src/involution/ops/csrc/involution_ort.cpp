// ONNX Runtime custom-operator library: involution::Involution2d on the CPU execution provider.
//
// The portable ONNX lowering (ops/onnx.py) spells involution as Kh*Kw standard Slice/Gather/Mul/Add nodes, each a
// full pass over memory. This library runs it as one kernel instead, so a deployed RedNet costs what its FLOPs say.
// It needs only onnxruntime's C/C++ API headers (no PyTorch at serving time) and is loaded into a session with
// SessionOptions.register_custom_ops_library(path); ops/onnxruntime_library.py builds it with g++.
//
//   Involution2d(X, W) -> Y                        domain "involution", version 1, float32
//     X: (N, C, H, W)         features, NCHW (ONNX's layout)
//     W: (N, G, Kh, Kw, Ho, Wo)  one Kh x Kw kernel per output pixel and group, shared by its C/G channels
//     Y: (N, C, Ho, Wo)       Y[n, c, i, j] = sum_{u,v} W[n, c / (C/G), u, v, i, j] * X[n, c, i*sh - ph + u*dh,
//                                                                                   j*sw - pw + v*dw]
//     attributes: strides, pads, dilations (2 ints each, (h, w)); zero padding.
//
// The kernel works in NCHW so that nothing is transposed: the input is zero-padded once into a scratch buffer
// (one copy of the input, so every tap reads in bounds and the inner loop has no branches), then each task, one
// output row of one group, keeps a block of CB channels x NJ pixels of accumulators in registers across all
// Kh*Kw taps; each tap loads NJ weights once and uses them for CB channels. Tasks run on onnxruntime's intra-op
// thread pool (KernelContext::ParallelFor), so intra_op_num_threads is respected.

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace {

constexpr const char* kDomain = "involution";

// Pixels per register block: 16 (two AVX2 vectors of float), or 8 for a last block of at most 8. A block keeps
// CB channels x NJ pixels of accumulators in registers; each tap's NJ weights are loaded once for CB channels
// (CB = 8 with NJ = 8 measured 2x slower than 4: the accumulators no longer fit beside the operands).
constexpr int CB = 4;

struct Geometry {
  int64_t N, C, G, Cg, H, W, Kh, Kw, Ho, Wo;
  int64_t sh, sw, ph, pw, dh, dw;
  // The padded copy: Hp rows of `row` floats per (n, c) plane. With a column stride sw > 1 each row is stored as
  // sw phases of Wq columns (padded column p at (p % sw) * Wq + p / sw), so every tap reads contiguous columns.
  int64_t Hp, Wq, row, plane;
};

// Floats of zeros after the padded copy: a last block may read up to one block past the end of its row.
constexpr int64_t kSlack = 16;

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t k = 0; k < s.size(); ++k) out += (k ? ", " : "") + std::to_string(s[k]);
  return out + ")";
}

[[noreturn]] void fail(const std::string& what) {
  throw Ort::Exception("involution::Involution2d: " + what, ORT_INVALID_ARGUMENT);
}

// y[c][j] = sum_t w[t * w_tap + j] * x[c][off[t] + j] for NC channels and the first nj of NJ pixels. Sizes are
// compile-time, so the accumulators stay in registers and the j loop is vectorised. Lanes past nj compute
// garbage from in-bounds memory (the weights are then a zero-filled copy) and are not stored.
template <int NJ, int NC>
inline void block(const float* __restrict w, int64_t w_tap, const int64_t* off, int64_t taps,
                  const float* const* x, float* const* y, int64_t nj) {
  float acc[NC][NJ] = {};
  for (int64_t t = 0; t < taps; ++t) {
    const float* __restrict wt = w + t * w_tap;
    const int64_t o = off[t];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      const float* __restrict xt = x[c] + o;
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) acc[c][j] += wt[j] * xt[j];
    }
  }
  for (int c = 0; c < NC; ++c) std::memcpy(y[c], acc[c], sizeof(float) * nj);
}

// block<NJ, nc> for a runtime nc <= NC.
template <int NJ, int NC>
inline void block_upto(int64_t nc, const float* w, int64_t w_tap, const int64_t* off, int64_t taps,
                       const float* const* x, float* const* y, int64_t nj) {
  if constexpr (NC > 1) {
    if (nc < NC) return block_upto<NJ, NC - 1>(nc, w, w_tap, off, taps, x, y, nj);
  }
  block<NJ, NC>(w, w_tap, off, taps, x, y, nj);
}

struct Task {
  const Geometry* g;
  const int64_t* off;  // per tap (u, v): its offset in the padded copy from the row's first read
  const float* xp;     // the padded copy (N, C, Hp, row)
  const float* w;      // (N, G, Kh, Kw, Ho, Wo)
  const float* w_end;  // one past its last element
  float* y;            // (N, C, Ho, Wo)
};

// Pixels j0 .. j0 + nj of one output row of one group, all its channels, in blocks of NJ pixels x CB channels.
template <int NJ>
void pixel_block(const Task& task, int64_t n, int64_t grp, int64_t i, int64_t j0, int64_t nj,
                 std::vector<float>& wbuf) {
  const Geometry& g = *task.g;
  const int64_t taps = g.Kh * g.Kw, w_tap = g.Ho * g.Wo;
  const float* w = task.w + (n * g.G + grp) * taps * w_tap + i * g.Wo + j0;
  int64_t stride = w_tap;
  // A partial last block reads its weights NJ wide too: past the row's end lies the next row of the same tensor,
  // except at the very end of the tensor, where the block's weights are first copied, zero-filled, to wbuf.
  if (nj < NJ && w + (taps - 1) * w_tap + NJ > task.w_end) {
    wbuf.assign(static_cast<size_t>(taps * NJ), 0.f);
    for (int64_t t = 0; t < taps; ++t) std::memcpy(&wbuf[t * NJ], w + t * w_tap, sizeof(float) * nj);
    w = wbuf.data(), stride = NJ;
  }
  const float* x[CB];
  float* y[CB];
  for (int64_t c0 = 0; c0 < g.Cg; c0 += CB) {
    const int64_t nc = std::min<int64_t>(CB, g.Cg - c0);
    for (int64_t c = 0; c < nc; ++c) {
      const int64_t ch = n * g.C + grp * g.Cg + c0 + c;
      x[c] = task.xp + ch * g.plane + i * g.sh * g.row + j0;
      y[c] = task.y + (ch * g.Ho + i) * g.Wo + j0;
    }
    block_upto<NJ, CB>(nc, w, stride, task.off, taps, x, y, nj);
  }
}

// Task index t = (n * G + group) * Ho + i: one output row of one group.
void run_row(void* data, size_t t) {
  const Task& task = *static_cast<const Task*>(data);
  const Geometry& g = *task.g;
  const int64_t i = static_cast<int64_t>(t) % g.Ho, ng = static_cast<int64_t>(t) / g.Ho;
  thread_local std::vector<float> wbuf;
  int64_t j0 = 0;
  for (; j0 + 16 <= g.Wo; j0 += 16) pixel_block<16>(task, ng / g.G, ng % g.G, i, j0, 16, wbuf);
  const int64_t rest = g.Wo - j0;
  if (rest > 8)
    pixel_block<16>(task, ng / g.G, ng % g.G, i, j0, rest, wbuf);
  else if (rest > 0)
    pixel_block<8>(task, ng / g.G, ng % g.G, i, j0, rest, wbuf);
}

struct PadTask {
  const Geometry* g;
  const float* x;
  float* xp;
};

// One (n, c) plane of the zero-padded copy, its columns split into sw phases.
void pad_plane(void* data, size_t plane) {
  const PadTask& task = *static_cast<const PadTask*>(data);
  const Geometry& g = *task.g;
  const float* src = task.x + static_cast<int64_t>(plane) * g.H * g.W;
  float* dst = task.xp + static_cast<int64_t>(plane) * g.plane;
  std::fill(dst, dst + g.plane, 0.f);
  const int64_t rows = std::min(g.H, g.Hp - g.ph);  // input rows no tap reads are left out
  for (int64_t h = 0; h < rows; ++h) {
    const float* in = src + h * g.W;
    float* out = dst + (g.ph + h) * g.row;
    if (g.sw == 1) {
      std::memcpy(out + g.pw, in, sizeof(float) * std::min(g.W, g.row - g.pw));
    } else {
      for (int64_t r = 0; r < g.sw; ++r) {  // phase r holds padded columns r, r + sw, ...: k from the first inside
        const int64_t k0 = g.pw > r ? (g.pw - r + g.sw - 1) / g.sw : 0;
        const int64_t k1 = std::min(g.Wq, (g.pw + g.W - r + g.sw - 1) / g.sw);
        float* phase = out + r * g.Wq;
        for (int64_t k = k0; k < k1; ++k) phase[k] = in[r + k * g.sw - g.pw];
      }
    }
  }
}

std::vector<int64_t> pair_attribute(const Ort::ConstKernelInfo& info, const char* name, int64_t fallback) {
  std::vector<int64_t> values;
  try {
    values = info.GetAttributes<int64_t>(name);
  } catch (const Ort::Exception&) {
    return {fallback, fallback};
  }
  if (values.size() != 2) fail(std::string("attribute ") + name + " needs 2 values (h, w), got " +
                               std::to_string(values.size()));
  return values;
}

// Errors become an OrtStatus (the V2 entry points), which onnxruntime raises as a normal error in the caller.
OrtStatusPtr to_status(const std::exception& exc) {
  const auto* ort = dynamic_cast<const Ort::Exception*>(&exc);
  return Ort::GetApi().CreateStatus(ort ? ort->GetOrtErrorCode() : ORT_FAIL, exc.what());
}

struct InvolutionKernel {
  int64_t sh, sw, ph, pw, dh, dw;

  explicit InvolutionKernel(const OrtKernelInfo* raw_info) {
    Ort::ConstKernelInfo info(raw_info);
    const auto s = pair_attribute(info, "strides", 1), p = pair_attribute(info, "pads", 0),
               d = pair_attribute(info, "dilations", 1);
    sh = s[0], sw = s[1], ph = p[0], pw = p[1], dh = d[0], dw = d[1];
    if (sh < 1 || sw < 1 || dh < 1 || dw < 1 || ph < 0 || pw < 0)
      fail("strides and dilations must be >= 1 and pads >= 0");
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) noexcept {
    try {
      Compute(raw_context);
    } catch (const std::exception& exc) {
      return to_status(exc);
    }
    return nullptr;
  }

  void Compute(OrtKernelContext* raw_context) {
    Ort::KernelContext context(raw_context);
    const auto x = context.GetInput(0);
    const auto w = context.GetInput(1);
    const auto xs = x.GetTensorTypeAndShapeInfo().GetShape();
    const auto ws = w.GetTensorTypeAndShapeInfo().GetShape();
    if (xs.size() != 4) fail("input must be (N, C, H, W), got shape " + shape_str(xs));
    if (ws.size() != 6) fail("weight must be (N, G, Kh, Kw, Ho, Wo), got shape " + shape_str(ws));
    Geometry g{};
    g.N = xs[0], g.C = xs[1], g.H = xs[2], g.W = xs[3];
    g.G = ws[1], g.Kh = ws[2], g.Kw = ws[3], g.Ho = ws[4], g.Wo = ws[5];
    g.sh = sh, g.sw = sw, g.ph = ph, g.pw = pw, g.dh = dh, g.dw = dw;
    if (ws[0] != g.N) fail("input batch " + std::to_string(g.N) + " != weight batch " + std::to_string(ws[0]));
    if (g.G < 1 || g.C % g.G != 0)
      fail("channels C=" + std::to_string(g.C) + " are not a multiple of groups G=" + std::to_string(g.G));
    const int64_t ho = (g.H + 2 * ph - dh * (g.Kh - 1) - 1) / sh + 1;
    const int64_t wo = (g.W + 2 * pw - dw * (g.Kw - 1) - 1) / sw + 1;
    if (g.Ho != ho || g.Wo != wo)
      fail("weight shape " + shape_str(ws) + " does not match input " + shape_str(xs) + ": expected (Ho, Wo) = (" +
           std::to_string(ho) + ", " + std::to_string(wo) + ")");
    g.Cg = g.C / g.G;
    // Only the rows and columns some tap reads (with stride > 1 that can be fewer than the input's).
    g.Hp = (g.Ho - 1) * sh + dh * (g.Kh - 1) + 1;
    const int64_t wp = (g.Wo - 1) * sw + dw * (g.Kw - 1) + 1;
    g.Wq = (wp + sw - 1) / sw;
    g.row = sw * g.Wq;
    g.plane = g.Hp * g.row;
    std::vector<int64_t> offsets(static_cast<size_t>(g.Kh * g.Kw));
    for (int64_t u = 0; u < g.Kh; ++u)
      for (int64_t v = 0; v < g.Kw; ++v) {
        const int64_t q = v * dw;  // the tap's first padded column; it then steps by sw
        offsets[u * g.Kw + v] = u * dh * g.row + (q % sw) * g.Wq + q / sw;
      }

    auto y = context.GetOutput(0, {g.N, g.C, g.Ho, g.Wo});
    if (g.N * g.C * g.Ho * g.Wo == 0) return;
    const float* xd = x.GetTensorData<float>();
    const float* wd = w.GetTensorData<float>();
    float* yd = y.GetTensorMutableData<float>();

    // Per call (sessions may run concurrently), uninitialised: pad_plane writes every element.
    const int64_t size = g.N * g.C * g.plane;
    std::unique_ptr<float[]> padded(new float[static_cast<size_t>(size + kSlack)]);
    std::fill(padded.get() + size, padded.get() + size + kSlack, 0.f);
    PadTask pad{&g, xd, padded.get()};
    context.ParallelFor(pad_plane, static_cast<size_t>(g.N * g.C), 0, &pad);
    Task task{&g, offsets.data(), padded.get(), wd, wd + g.N * g.G * g.Kh * g.Kw * g.Ho * g.Wo, yd};
    context.ParallelFor(run_row, static_cast<size_t>(g.N * g.G * g.Ho), 0, &task);
  }
};

struct InvolutionOp : Ort::CustomOpBase<InvolutionOp, InvolutionKernel, /*WithStatus=*/true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const noexcept {
    try {
      *kernel = new InvolutionKernel(info);
    } catch (const std::exception& exc) {
      return to_status(exc);
    }
    return nullptr;
  }
  const char* GetName() const { return "Involution2d"; }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace

// The entry point onnxruntime looks up after dlopen. The op and its domain must outlive every session that uses
// them, so they are created once and kept for the life of the process. The library is built with hidden
// visibility; this is its one exported symbol.
extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api) {
  Ort::InitApi(api->GetApi(ORT_API_VERSION));
  static InvolutionOp op;
  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain> domains;
  try {
    std::lock_guard<std::mutex> lock(mutex);
    if (domains.empty()) {
      domains.emplace_back(kDomain);
      domains.back().Add(&op);
    }
    Ort::UnownedSessionOptions(options).Add(domains.back());
  } catch (const std::exception& exc) {
    return to_status(exc);
  }
  return nullptr;
}
