// OpenVINO extension: the involution::Involution2d and Involution3d nodes as OpenVINO operations on the CPU plugin.
//
// The standard-operator ONNX form of involution (ops/onnx.py) is a sum over Kh*Kw taps of Slice/Gather/Mul/Add,
// each a full pass over memory; OpenVINO runs it exactly but slowly. This library gives OpenVINO the op itself:
//
//   Involution2d(X, W) -> Y                       type "Involution2d", opset "involution"
//     X: (N, C, H, W)            features, NCHW
//     W: (N, G, Kh, Kw, Ho, Wo)  one Kh x Kw kernel per output pixel and group, shared by its C/G channels
//     Y: (N, C, Ho, Wo)          Y[n, c, i, j] = sum_{u,v} W[n, c / (C/G), u, v, i, j] * X[n, c, i*sh - ph + u*dh,
//                                                                                       j*sw - pw + v*dw]
//     attributes: strides, pads, dilations (2 ints each, (h, w)); zero padding. The same node, attributes and
//     names as the ONNX custom node that `export_model(..., onnx_ops="custom")` writes (domain "involution").
//
//   Involution3d(X, W) -> Y                       the same for volumes (clips), type "Involution3d"
//     X: (N, C, D, H, W); W: (N, G, Kd, Kh, Kw, Do, Ho, Wo); Y: (N, C, Do, Ho, Wo); 3 ints per attribute.
//
// It exports two extensions (OPENVINO_CREATE_EXTENSIONS, loaded with ov::Core::add_extension(path)):
//   * the op itself, so an IR (.xml) holding it can be read, and a model holding it saved;
//   * an ONNX frontend conversion, so core.read_model("model.onnx") maps every involution:: node to it.
//
// The op is a thin adapter: shape inference (validate_and_infer_types; the batch, height and width may be dynamic)
// and evaluate, which runs the NCHW forward kernel of involution_nchw.h (the NCDHW one of involution_ncdhw.h)
// shared with the PyTorch extension and the onnxruntime library. The CPU plugin calls evaluate of an op it does not know on one thread; the kernel's tasks
// are spread with tbb::parallel_for on the TBB that OpenVINO ships and runs its own graph on, so they run in the
// plugin's task arena and use the threads INFERENCE_NUM_THREADS gives it.
//
// Precision: f32, bf16 and f16 tensors are read and written in their own type by the header's kernels, the sums
// accumulated in float32 and each result rounded once. The CPU plugin runs an op it does not know in the element
// type the graph gives it: with INFERENCE_PRECISION_HINT bf16 alone that stays float32 (with conversions from and
// to the bf16 layers around it), so the project's OpenVINO path (tasks/deploy/openvino_file.py) marks the op's
// inputs and output bf16 in that mode.

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/frontend/onnx/extension/conversion.hpp>
#include <openvino/op/op.hpp>

#include "involution_ncdhw.h"

namespace involution_ov {

// The header's parallel_for(count, body): body(begin, end) over disjoint ranges of [0, count), on TBB.
struct TbbParallelFor {
  template <typename Body>
  void operator()(int64_t count, Body&& body) const {
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, count, 1),
                      [&body](const tbb::blocked_range<int64_t>& r) { body(r.begin(), r.end()); });
  }
};

std::string shape_str(const ov::Shape& s) {
  std::string out = "(";
  for (size_t k = 0; k < s.size(); ++k) out += (k ? ", " : "") + std::to_string(s[k]);
  return out + ")";
}

// Output size along one axis: (in + 2p - d (k - 1) - 1) / s + 1, or a negative number when the dilated kernel
// does not fit in the padded input.
int64_t out_length(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  const int64_t span = in + 2 * p - d * (k - 1) - 1;
  return span < 0 ? -1 : span / s + 1;
}

// What the 2-D and 3-D ops share, Dims their spatial axes: attributes, shape inference and evaluation. Derived
// (the final class, which declares its OPENVINO_OP type) is what clone_with_new_inputs makes.
template <typename Derived, int Dims>
class InvolutionOp : public ov::op::Op {
 public:
  InvolutionOp() = default;
  InvolutionOp(const ov::Output<ov::Node>& input, const ov::Output<ov::Node>& weight, std::vector<int64_t> strides,
               std::vector<int64_t> pads, std::vector<int64_t> dilations)
      : Op({input, weight}), m_strides(std::move(strides)), m_pads(std::move(pads)),
        m_dilations(std::move(dilations)) {}

  void validate_and_infer_types() override;
  std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
    check_new_args_count(this, args);
    return std::make_shared<Derived>(args.at(0), args.at(1), m_strides, m_pads, m_dilations);
  }
  bool visit_attributes(ov::AttributeVisitor& visitor) override {
    visitor.on_attribute("strides", m_strides);
    visitor.on_attribute("pads", m_pads);
    visitor.on_attribute("dilations", m_dilations);
    return true;
  }
  bool has_evaluate() const override {
    const auto type = get_input_element_type(0);
    return type == ov::element::f32 || type == ov::element::bf16 || type == ov::element::f16;
  }
  bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;

 private:
  static const char* axis_name(int axis) {  // of spatial axis `axis`, and its output size's
    constexpr const char* names[3] = {"depth", "height", "width"};
    return names[3 - Dims + axis];
  }
  static const char* out_name(int axis) {
    constexpr const char* names[3] = {"Do", "Ho", "Wo"};
    return names[3 - Dims + axis];
  }
  // The output size along spatial axis `axis`: the weight's, merged with the one the input's size and the
  // kernel's give when both are static.
  ov::Dimension out_dim(int axis, const ov::PartialShape& x, const ov::PartialShape& w) const;
  // The output shape of static input and weight shapes; throws naming the mismatch.
  ov::Shape output_shape(const ov::Shape& xs, const ov::Shape& ws) const;

  std::vector<int64_t> m_strides = std::vector<int64_t>(Dims, 1), m_pads = std::vector<int64_t>(Dims, 0),
                       m_dilations = std::vector<int64_t>(Dims, 1);
};

template <typename Derived, int Dims>
ov::Dimension InvolutionOp<Derived, Dims>::out_dim(int axis, const ov::PartialShape& x,
                                                   const ov::PartialShape& w) const {
  ov::Dimension out = w[2 + Dims + axis];
  const ov::Dimension& in = x[2 + axis];
  const ov::Dimension& k = w[2 + axis];
  if (in.is_static() && k.is_static()) {
    const int64_t n = out_length(in.get_length(), k.get_length(), m_strides[axis], m_pads[axis], m_dilations[axis]);
    NODE_VALIDATION_CHECK(this, n >= 1, "the dilated kernel (", k.get_length(), " taps, dilation ",
                          m_dilations[axis], ") is larger than the padded input (", in.get_length(), " + 2 x ",
                          m_pads[axis], ") along the ", axis_name(axis));
    const bool ok = ov::Dimension::merge(out, out, ov::Dimension(n));
    NODE_VALIDATION_CHECK(this, ok, "the weight's ", out_name(axis), " ", w[2 + Dims + axis],
                          " does not match the input ", x, ": expected ", n);
  }
  return out;
}

template <typename Derived, int Dims>
void InvolutionOp<Derived, Dims>::validate_and_infer_types() {
  const char* axes = Dims == 2 ? "(h, w)" : "(d, h, w)";
  for (const auto* attr : {&m_strides, &m_pads, &m_dilations})
    NODE_VALIDATION_CHECK(this, attr->size() == Dims, "strides, pads and dilations need ", Dims, " values ", axes,
                          " each");
  for (int a = 0; a < Dims; ++a)
    NODE_VALIDATION_CHECK(this, m_strides[a] >= 1 && m_dilations[a] >= 1 && m_pads[a] >= 0,
                          "strides and dilations must be >= 1 and pads >= 0");
  ov::element::Type type;
  NODE_VALIDATION_CHECK(this, ov::element::Type::merge(type, get_input_element_type(0), get_input_element_type(1)),
                        "input and weight must have one element type, got ", get_input_element_type(0), " and ",
                        get_input_element_type(1));
  NODE_VALIDATION_CHECK(this, type.is_dynamic() || type == ov::element::f32 || type == ov::element::bf16 ||
                                  type == ov::element::f16,
                        "element type must be f32, bf16 or f16, got ", type);
  const auto& xs = get_input_partial_shape(0);
  const auto& ws = get_input_partial_shape(1);
  NODE_VALIDATION_CHECK(this, xs.rank().compatible(2 + Dims), "input must be ",
                        Dims == 2 ? "(N, C, H, W)" : "(N, C, D, H, W)", ", got ", xs);
  NODE_VALIDATION_CHECK(this, ws.rank().compatible(2 + 2 * Dims), "weight must be ",
                        Dims == 2 ? "(N, G, Kh, Kw, Ho, Wo)" : "(N, G, Kd, Kh, Kw, Do, Ho, Wo)", ", got ", ws);
  const ov::PartialShape x = xs.rank().is_static() ? xs : ov::PartialShape::dynamic(2 + Dims);
  const ov::PartialShape w = ws.rank().is_static() ? ws : ov::PartialShape::dynamic(2 + 2 * Dims);
  ov::Dimension batch;
  NODE_VALIDATION_CHECK(this, ov::Dimension::merge(batch, x[0], w[0]), "input batch ", x[0],
                        " != weight batch ", w[0]);
  if (x[1].is_static() && w[1].is_static())
    NODE_VALIDATION_CHECK(this, w[1].get_length() >= 1 && x[1].get_length() % w[1].get_length() == 0,
                          "channels C=", x[1], " are not a multiple of groups G=", w[1]);
  ov::PartialShape out{batch, x[1]};
  for (int a = 0; a < Dims; ++a) out.push_back(out_dim(a, x, w));
  set_output_type(0, type, out);
}

template <typename Derived, int Dims>
ov::Shape InvolutionOp<Derived, Dims>::output_shape(const ov::Shape& xs, const ov::Shape& ws) const {
  const auto fail = [&](const std::string& what) {
    OPENVINO_THROW("involution::", Derived::get_type_info_static().name, ": ", what, " (input ", shape_str(xs),
                   ", weight ", shape_str(ws), ")");
  };
  if (xs.size() != 2 + Dims || ws.size() != 2 + 2 * Dims) fail("input and weight have the wrong ranks");
  if (ws[0] != xs[0]) fail("input and weight batches differ");
  if (ws[1] < 1 || xs[1] % ws[1] != 0) fail("channels C are not a multiple of groups G");
  ov::Shape ys{xs[0], xs[1]};
  for (int a = 0; a < Dims; ++a) {
    const int64_t o = out_length(xs[2 + a], ws[2 + a], m_strides[a], m_pads[a], m_dilations[a]);
    if (o != static_cast<int64_t>(ws[2 + Dims + a])) fail("the weight's output size does not match the input's");
    ys.push_back(static_cast<size_t>(o));
  }
  return ys;
}

template <typename Derived, int Dims>
bool InvolutionOp<Derived, Dims>::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
  const ov::Tensor& x = inputs.at(0);
  const ov::Tensor& w = inputs.at(1);
  const ov::Shape ys = output_shape(x.get_shape(), w.get_shape());
  ov::Tensor& y = outputs.at(0);
  y.set_shape(ys);
  if (!x.is_continuous() || !w.is_continuous() || !y.is_continuous())
    OPENVINO_THROW("involution::", Derived::get_type_info_static().name,
                   ": input, weight and output must be contiguous tensors");
  if (y.get_size() == 0) return true;
  const auto type = x.get_element_type();
  // 16-bit types (the header's bfloat16, float16) read and written in their own type, the sums accumulated in
  // float32 and each result rounded once.
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    involution_nchw::forward_contiguous<Dims>(x.get_shape(), w.get_shape(), ys, m_strides, m_pads, m_dilations,
                                              static_cast<const T*>(x.data()), static_cast<const T*>(w.data()),
                                              static_cast<T*>(y.data()), TbbParallelFor{});
  };
  if (type == ov::element::f32) {
    run(float{});
  } else if (type == ov::element::bf16) {
    run(involution_nchw::bfloat16{});
  } else if (type == ov::element::f16) {
    run(involution_nchw::float16{});
  } else {
    return false;
  }
  return true;
}

class Involution2d : public InvolutionOp<Involution2d, 2> {
 public:
  OPENVINO_OP("Involution2d", "involution");
  Involution2d() = default;
  Involution2d(const ov::Output<ov::Node>& input, const ov::Output<ov::Node>& weight, std::vector<int64_t> strides,
               std::vector<int64_t> pads, std::vector<int64_t> dilations)
      : InvolutionOp(input, weight, std::move(strides), std::move(pads), std::move(dilations)) {
    constructor_validate_and_infer_types();
  }
};

class Involution3d : public InvolutionOp<Involution3d, 3> {
 public:
  OPENVINO_OP("Involution3d", "involution");
  Involution3d() = default;
  Involution3d(const ov::Output<ov::Node>& input, const ov::Output<ov::Node>& weight, std::vector<int64_t> strides,
               std::vector<int64_t> pads, std::vector<int64_t> dilations)
      : InvolutionOp(input, weight, std::move(strides), std::move(pads), std::move(dilations)) {
    constructor_validate_and_infer_types();
  }
};

// An involution:: node of an ONNX file -> Op, with the ONNX node's attributes (defaults: stride 1, no padding,
// dilation 1, as in ops/csrc/involution_ort.cpp).
template <typename Op, int Dims>
ov::OutputVector convert_onnx_node(const ov::frontend::NodeContext& node) {
  const auto ints = [&node](const char* name, int64_t fallback) {
    return node.get_attribute<std::vector<int64_t>>(name, std::vector<int64_t>(Dims, fallback));
  };
  auto op = std::make_shared<Op>(node.get_input(0), node.get_input(1), ints("strides", 1), ints("pads", 0),
                                 ints("dilations", 1));
  return op->outputs();
}

}  // namespace involution_ov

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<involution_ov::Involution2d>>(),
    std::make_shared<ov::OpExtension<involution_ov::Involution3d>>(),
    std::make_shared<ov::frontend::onnx::ConversionExtension>(
        "Involution2d", "involution", involution_ov::convert_onnx_node<involution_ov::Involution2d, 2>),
    std::make_shared<ov::frontend::onnx::ConversionExtension>(
        "Involution3d", "involution", involution_ov::convert_onnx_node<involution_ov::Involution3d, 3>),
}));
