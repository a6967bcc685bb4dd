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
// The kernel is the NCHW forward of involution_nchw.h, shared with the PyTorch extension: each task, a block of
// output rows of one group, zero-pads the input rows it reads into scratch rows (so every tap reads in bounds and
// the inner loop has no branches), then keeps a block of CB channels x NJ pixels of accumulators in registers
// across all Kh*Kw taps; each tap loads NJ weights once and uses them for CB channels. Tasks run on onnxruntime's
// intra-op thread pool (KernelContext::ParallelFor), so intra_op_num_threads is respected.

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "involution_nchw.h"

namespace {

constexpr const char* kDomain = "involution";

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t k = 0; k < s.size(); ++k) out += (k ? ", " : "") + std::to_string(s[k]);
  return out + ")";
}

[[noreturn]] void fail(const std::string& what) {
  throw Ort::Exception("involution::Involution2d: " + what, ORT_INVALID_ARGUMENT);
}

// The header's parallel_for(count, body) on onnxruntime's intra-op thread pool: one call of body per index.
struct OrtParallelFor {
  const Ort::KernelContext& context;

  template <typename Body>
  void operator()(int64_t count, Body&& body) const {
    using B = std::remove_reference_t<Body>;
    auto run = [](void* data, size_t k) {
      (*static_cast<B*>(data))(static_cast<int64_t>(k), static_cast<int64_t>(k) + 1);
    };
    context.ParallelFor(run, static_cast<size_t>(count), 0, const_cast<void*>(static_cast<const void*>(&body)));
  }
};

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
    involution_nchw::Geometry g{};
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
    g.finish();

    auto y = context.GetOutput(0, {g.N, g.C, g.Ho, g.Wo});
    if (g.N * g.C * g.Ho * g.Wo == 0) return;
    const float* xd = x.GetTensorData<float>();
    const float* wd = w.GetTensorData<float>();
    float* yd = y.GetTensorMutableData<float>();

    const int64_t x_strides[4] = {g.C * g.H * g.W, g.H * g.W, g.W, 1};
    involution_nchw::forward<float>(g, xd, x_strides, wd, yd, OrtParallelFor{context});
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
