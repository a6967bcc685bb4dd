// ONNX Runtime custom-operator library: involution::Involution2d and Involution3d on the CPU execution provider.
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
//   Involution3d(X, W) -> Y                        the same for volumes (clips), float32
//     X: (N, C, D, H, W); W: (N, G, Kd, Kh, Kw, Do, Ho, Wo); Y: (N, C, Do, Ho, Wo)
//     attributes: strides, pads, dilations (3 ints each, (d, h, w)).
//
// The kernel is the NCHW forward of involution_nchw.h, shared with the PyTorch extension: each task, a block of
// output rows of one group, zero-pads the input rows it reads into scratch rows (so every tap reads in bounds and
// the inner loop has no branches), then keeps a block of CB channels x NJ pixels of accumulators in registers
// across all Kh*Kw taps; each tap loads NJ weights once and uses them for CB channels. Tasks run on onnxruntime's
// intra-op thread pool (KernelContext::ParallelFor), so intra_op_num_threads is respected. The 3-D node runs the
// NCDHW forward of involution_ncdhw.h, the same register blocks over all Kd*Kh*Kw taps.

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "involution_ncdhw.h"

namespace {

constexpr const char* kDomain = "involution";

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t k = 0; k < s.size(); ++k) out += (k ? ", " : "") + std::to_string(s[k]);
  return out + ")";
}

[[noreturn]] void fail(const char* op, const std::string& what) {
  throw Ort::Exception(std::string("involution::") + op + ": " + what, ORT_INVALID_ARGUMENT);
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

// Attribute `name` of `dims` ints, `fallback` each when absent.
std::vector<int64_t> int_attribute(const char* op, const Ort::ConstKernelInfo& info, const char* name, int dims,
                                   int64_t fallback) {
  std::vector<int64_t> values;
  try {
    values = info.GetAttributes<int64_t>(name);
  } catch (const Ort::Exception&) {
    return std::vector<int64_t>(static_cast<size_t>(dims), fallback);
  }
  if (values.size() != static_cast<size_t>(dims))
    fail(op, std::string("attribute ") + name + " needs " + std::to_string(dims) + " values (" +
                 (dims == 2 ? "h, w" : "d, h, w") + "), got " + std::to_string(values.size()));
  return values;
}

// Errors become an OrtStatus (the V2 entry points), which onnxruntime raises as a normal error in the caller.
OrtStatusPtr to_status(const std::exception& exc) {
  const auto* ort = dynamic_cast<const Ort::Exception*>(&exc);
  return Ort::GetApi().CreateStatus(ort ? ort->GetOrtErrorCode() : ORT_FAIL, exc.what());
}

// The kernel of the node with Dims = 2 (Involution2d) or 3 (Involution3d) spatial axes.
template <int Dims>
struct InvolutionKernel {
  static constexpr const char* kName = Dims == 2 ? "Involution2d" : "Involution3d";
  std::vector<int64_t> stride, pad, dil;  // one per spatial axis

  explicit InvolutionKernel(const OrtKernelInfo* raw_info) {
    Ort::ConstKernelInfo info(raw_info);
    stride = int_attribute(kName, info, "strides", Dims, 1);
    pad = int_attribute(kName, info, "pads", Dims, 0);
    dil = int_attribute(kName, info, "dilations", Dims, 1);
    for (int a = 0; a < Dims; ++a)
      if (stride[a] < 1 || dil[a] < 1 || pad[a] < 0) fail(kName, "strides and dilations must be >= 1 and pads >= 0");
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
    if (xs.size() != 2 + Dims)
      fail(kName, std::string("input must be ") + (Dims == 2 ? "(N, C, H, W)" : "(N, C, D, H, W)") + ", got shape " +
                      shape_str(xs));
    if (ws.size() != 2 + 2 * Dims)
      fail(kName, std::string("weight must be ") +
                      (Dims == 2 ? "(N, G, Kh, Kw, Ho, Wo)" : "(N, G, Kd, Kh, Kw, Do, Ho, Wo)") + ", got shape " +
                      shape_str(ws));
    const int64_t N = xs[0], C = xs[1], G = ws[1];
    if (ws[0] != N) fail(kName, "input batch " + std::to_string(N) + " != weight batch " + std::to_string(ws[0]));
    if (G < 1 || C % G != 0)
      fail(kName, "channels C=" + std::to_string(C) + " are not a multiple of groups G=" + std::to_string(G));
    std::vector<int64_t> out_shape{N, C}, expected;
    for (int a = 0; a < Dims; ++a)
      expected.push_back((xs[2 + a] + 2 * pad[a] - dil[a] * (ws[2 + a] - 1) - 1) / stride[a] + 1);
    if (!std::equal(expected.begin(), expected.end(), ws.begin() + 2 + Dims))
      fail(kName, "weight shape " + shape_str(ws) + " does not match input " + shape_str(xs) + ": expected " +
                      (Dims == 2 ? "(Ho, Wo)" : "(Do, Ho, Wo)") + " = " + shape_str(expected));
    out_shape.insert(out_shape.end(), expected.begin(), expected.end());
    auto y = context.GetOutput(0, out_shape);
    int64_t count = 1;
    for (int64_t d : out_shape) count *= d;
    if (count == 0) return;
    const float* xd = x.GetTensorData<float>();
    const float* wd = w.GetTensorData<float>();
    float* yd = y.GetTensorMutableData<float>();

    involution_nchw::forward_contiguous<Dims>(xs, ws, out_shape, stride, pad, dil, xd, wd, yd,
                                              OrtParallelFor{context});
  }
};

template <int Dims>
struct InvolutionOp : Ort::CustomOpBase<InvolutionOp<Dims>, InvolutionKernel<Dims>, /*WithStatus=*/true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const noexcept {
    try {
      *kernel = new InvolutionKernel<Dims>(info);
    } catch (const std::exception& exc) {
      return to_status(exc);
    }
    return nullptr;
  }
  const char* GetName() const { return InvolutionKernel<Dims>::kName; }
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
  static InvolutionOp<2> op2d;
  static InvolutionOp<3> op3d;
  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain> domains;
  try {
    std::lock_guard<std::mutex> lock(mutex);
    if (domains.empty()) {
      domains.emplace_back(kDomain);
      domains.back().Add(&op2d);
      domains.back().Add(&op3d);
    }
    Ort::UnownedSessionOptions(options).Add(domains.back());
  } catch (const std::exception& exc) {
    return to_status(exc);
  }
  return nullptr;
}
