// OpenVINO extension: the involution::Involution2d node as one OpenVINO operation on the CPU plugin.
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
// It exports two extensions (OPENVINO_CREATE_EXTENSIONS, loaded with ov::Core::add_extension(path)):
//   * the op itself, so an IR (.xml) holding it can be read, and a model holding it saved;
//   * an ONNX frontend conversion, so core.read_model("model.onnx") maps every involution::Involution2d node to it.
//
// The op is a thin adapter: shape inference (validate_and_infer_types; the batch, height and width may be dynamic)
// and evaluate, which runs the NCHW forward kernel of involution_nchw.h shared with the PyTorch extension and the
// onnxruntime library. The CPU plugin calls evaluate of an op it does not know on one thread; the kernel's tasks
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

#include "involution_nchw.h"

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

class Involution2d : public ov::op::Op {
 public:
  OPENVINO_OP("Involution2d", "involution");

  Involution2d() = default;
  Involution2d(const ov::Output<ov::Node>& input, const ov::Output<ov::Node>& weight, std::vector<int64_t> strides,
               std::vector<int64_t> pads, std::vector<int64_t> dilations)
      : Op({input, weight}), m_strides(std::move(strides)), m_pads(std::move(pads)),
        m_dilations(std::move(dilations)) {
    constructor_validate_and_infer_types();
  }

  void validate_and_infer_types() override;
  std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override;
  bool visit_attributes(ov::AttributeVisitor& visitor) override;
  bool has_evaluate() const override;
  bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;

 private:
  // (Ho or Wo) of one spatial axis (0: height, 1: width): the weight's, merged with the one the input's size and
  // the kernel's give when both are static.
  ov::Dimension out_dim(int axis, const ov::PartialShape& x, const ov::PartialShape& w) const;
  // The kernel geometry of static input and weight shapes; throws naming the mismatch.
  involution_nchw::Geometry geometry(const ov::Shape& xs, const ov::Shape& ws) const;

  std::vector<int64_t> m_strides{1, 1}, m_pads{0, 0}, m_dilations{1, 1};
};

ov::Dimension Involution2d::out_dim(int axis, const ov::PartialShape& x, const ov::PartialShape& w) const {
  ov::Dimension out = w[4 + axis];
  const ov::Dimension& in = x[2 + axis];
  const ov::Dimension& k = w[2 + axis];
  if (in.is_static() && k.is_static()) {
    const int64_t n = out_length(in.get_length(), k.get_length(), m_strides[axis], m_pads[axis], m_dilations[axis]);
    NODE_VALIDATION_CHECK(this, n >= 1, "the dilated kernel (", k.get_length(), " taps, dilation ",
                          m_dilations[axis], ") is larger than the padded input (", in.get_length(), " + 2 x ",
                          m_pads[axis], ") along ", axis ? "the width" : "the height");
    const bool ok = ov::Dimension::merge(out, out, ov::Dimension(n));
    NODE_VALIDATION_CHECK(this, ok, "the weight's ", axis ? "Wo " : "Ho ", w[4 + axis], " does not match the input ",
                          x, ": expected ", n);
  }
  return out;
}

void Involution2d::validate_and_infer_types() {
  for (const auto* attr : {&m_strides, &m_pads, &m_dilations})
    NODE_VALIDATION_CHECK(this, attr->size() == 2, "strides, pads and dilations need 2 values (h, w) each");
  NODE_VALIDATION_CHECK(this, m_strides[0] >= 1 && m_strides[1] >= 1 && m_dilations[0] >= 1 &&
                                  m_dilations[1] >= 1 && m_pads[0] >= 0 && m_pads[1] >= 0,
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
  NODE_VALIDATION_CHECK(this, xs.rank().compatible(4), "input must be (N, C, H, W), got ", xs);
  NODE_VALIDATION_CHECK(this, ws.rank().compatible(6), "weight must be (N, G, Kh, Kw, Ho, Wo), got ", ws);
  const ov::PartialShape x = xs.rank().is_static() ? xs : ov::PartialShape::dynamic(4);
  const ov::PartialShape w = ws.rank().is_static() ? ws : ov::PartialShape::dynamic(6);
  ov::Dimension batch;
  NODE_VALIDATION_CHECK(this, ov::Dimension::merge(batch, x[0], w[0]), "input batch ", x[0],
                        " != weight batch ", w[0]);
  if (x[1].is_static() && w[1].is_static())
    NODE_VALIDATION_CHECK(this, w[1].get_length() >= 1 && x[1].get_length() % w[1].get_length() == 0,
                          "channels C=", x[1], " are not a multiple of groups G=", w[1]);
  set_output_type(0, type, ov::PartialShape{batch, x[1], out_dim(0, x, w), out_dim(1, x, w)});
}

std::shared_ptr<ov::Node> Involution2d::clone_with_new_inputs(const ov::OutputVector& args) const {
  check_new_args_count(this, args);
  return std::make_shared<Involution2d>(args.at(0), args.at(1), m_strides, m_pads, m_dilations);
}

bool Involution2d::visit_attributes(ov::AttributeVisitor& visitor) {
  visitor.on_attribute("strides", m_strides);
  visitor.on_attribute("pads", m_pads);
  visitor.on_attribute("dilations", m_dilations);
  return true;
}

bool Involution2d::has_evaluate() const {
  const auto type = get_input_element_type(0);
  return type == ov::element::f32 || type == ov::element::bf16 || type == ov::element::f16;
}

involution_nchw::Geometry Involution2d::geometry(const ov::Shape& xs, const ov::Shape& ws) const {
  const auto fail = [&](const std::string& what) {
    OPENVINO_THROW("involution::Involution2d: ", what, " (input ", shape_str(xs), ", weight ", shape_str(ws), ")");
  };
  if (xs.size() != 4 || ws.size() != 6) fail("input must be (N, C, H, W) and weight (N, G, Kh, Kw, Ho, Wo)");
  involution_nchw::Geometry g{};
  g.N = xs[0], g.C = xs[1], g.H = xs[2], g.W = xs[3];
  g.G = ws[1], g.Kh = ws[2], g.Kw = ws[3], g.Ho = ws[4], g.Wo = ws[5];
  g.sh = m_strides[0], g.sw = m_strides[1], g.ph = m_pads[0], g.pw = m_pads[1];
  g.dh = m_dilations[0], g.dw = m_dilations[1];
  if (static_cast<int64_t>(ws[0]) != g.N) fail("input and weight batches differ");
  if (g.G < 1 || g.C % g.G != 0) fail("channels C are not a multiple of groups G");
  if (g.Ho != out_length(g.H, g.Kh, g.sh, g.ph, g.dh) || g.Wo != out_length(g.W, g.Kw, g.sw, g.pw, g.dw))
    fail("the weight's (Ho, Wo) do not match the input's size");
  g.finish();
  return g;
}

// y = involution(x, w) in float32, all tensors contiguous NCHW / (N, G, Kh, Kw, Ho, Wo).
void forward_f32(const involution_nchw::Geometry& g, const float* x, const float* w, float* y) {
  const int64_t x_strides[4] = {g.C * g.H * g.W, g.H * g.W, g.W, 1};
  involution_nchw::forward<float>(g, x, x_strides, w, y, TbbParallelFor{});
}

// y = involution(x, w) for 16-bit x, w and y (T: the header's bfloat16 or float16): read and written in their
// own type, the sums accumulated in float32 and each result rounded once.
template <typename T>
void forward_16bit(const involution_nchw::Geometry& g, const ov::Tensor& x, const ov::Tensor& w, ov::Tensor& y) {
  const int64_t x_strides[4] = {g.C * g.H * g.W, g.H * g.W, g.W, 1};
  involution_nchw::forward<T>(g, static_cast<const T*>(x.data()), x_strides, static_cast<const T*>(w.data()),
                              static_cast<T*>(y.data()), TbbParallelFor{});
}

bool Involution2d::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
  const ov::Tensor& x = inputs.at(0);
  const ov::Tensor& w = inputs.at(1);
  const involution_nchw::Geometry g = geometry(x.get_shape(), w.get_shape());
  ov::Tensor& y = outputs.at(0);
  y.set_shape(ov::Shape{static_cast<size_t>(g.N), static_cast<size_t>(g.C), static_cast<size_t>(g.Ho),
                        static_cast<size_t>(g.Wo)});
  if (!x.is_continuous() || !w.is_continuous() || !y.is_continuous())
    OPENVINO_THROW("involution::Involution2d: input, weight and output must be contiguous tensors");
  if (y.get_size() == 0) return true;
  const auto type = x.get_element_type();
  if (type == ov::element::f32) {
    forward_f32(g, x.data<const float>(), w.data<const float>(), y.data<float>());
  } else if (type == ov::element::bf16) {
    forward_16bit<involution_nchw::bfloat16>(g, x, w, y);
  } else if (type == ov::element::f16) {
    forward_16bit<involution_nchw::float16>(g, x, w, y);
  } else {
    return false;
  }
  return true;
}

// involution::Involution2d of an ONNX file -> the op, with the ONNX node's attributes (defaults: stride 1, no
// padding, dilation 1, as in ops/csrc/involution_ort.cpp).
ov::OutputVector convert_onnx_node(const ov::frontend::NodeContext& node) {
  const auto pair = [&node](const char* name, int64_t fallback) {
    return node.get_attribute<std::vector<int64_t>>(name, std::vector<int64_t>{fallback, fallback});
  };
  auto op = std::make_shared<Involution2d>(node.get_input(0), node.get_input(1), pair("strides", 1),
                                           pair("pads", 0), pair("dilations", 1));
  return op->outputs();
}

}  // namespace involution_ov

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<involution_ov::Involution2d>>(),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("Involution2d", "involution",
                                                              involution_ov::convert_onnx_node),
}));
