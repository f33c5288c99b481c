// The single-step cells' training call with its autograd node in C++: fastrnn._C.cell_step, which
// fastrnn/modules.py (_CellBase._fast_step) calls for a decoder's step when a gradient is wanted.
//
// Why. A cell's step is one T = 1 call of the forward op, and the ops' autograd is an autograd.Function in
// Python (fastrnn/ops.py): entering it, saving its tensors and running its backward through the interpreter
// cost 36 us of a 70 us RNNCell step forward (B = 8, H = 128, one thread of a 2-core Zen 3), where torch.nn's
// RNNCell builds its three ATen nodes in C++. Here the node is a torch::autograd::Function whose forward calls
// the forward op below autograd and whose backward calls the registered backward op, the same kernels and the
// same numbers as the Python path, which every other call keeps (sequences, torch.func transforms,
// forward-mode AD, autocast, tracing and compiling: the module sends those there).
//
// Double backward (create_graph=True): recomputes the step from the saved inputs with ATen's differentiable
// cells (at::lstm_cell, at::gru_cell, at::rnn_tanh_cell / at::rnn_relu_cell: torch.nn's own equations) and
// differentiates that, as ops.py's _differentiable_backward does with fastrnn/composite.py.
//
// Only in the Python extension (setup.py); the CMake build (a plain C++ library) has no Python module.
#ifdef TORCH_EXTENSION_NAME
#include <torch/extension.h>

#include <optional>
#include <tuple>

namespace fastrnn {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<Tensor>;

enum CellKind : int64_t { kLstm = 0, kGru = 1, kRnnTanh = 2, kRnnRelu = 3 };

OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

// One step of the forward op on x [B, I]: {output [1, B, H], hy, cy (LSTM), workspace (LSTM, GRU; train)}.
std::vector<Tensor> forward_op(int64_t kind, const Tensor& x, const Tensor& h, const Tensor& c,
                               const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                               bool train) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // the op's Autograd kernel is the Python one
  const Tensor seq = x.unsqueeze(0);
  if (kind == kLstm) {
    static const auto f = op("fastrnn::lstm_forward").typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
        const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
        const OptTensor&, const OptTensor&, bool, bool)>();
    auto [out, hy, cy, ws] = f.call(seq, std::nullopt, h, c, w_ih, w_hh, b_ih, b_hh, std::nullopt, false, train);
    return {out, hy, cy, ws};
  }
  if (kind == kGru) {
    static const auto f = op("fastrnn::gru_forward").typed<std::tuple<Tensor, Tensor, Tensor>(
        const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
        const OptTensor&, bool, bool)>();
    auto [out, hy, ws] = f.call(seq, std::nullopt, h, w_ih, w_hh, b_ih, b_hh, false, train);
    return {out, hy, Tensor(), ws};
  }
  static const auto f = op("fastrnn::rnn_forward").typed<std::tuple<Tensor, Tensor>(
      const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
      const OptTensor&, bool, bool)>();
  auto [out, hy] = f.call(seq, std::nullopt, h, w_ih, w_hh, b_ih, b_hh, kind == kRnnRelu, false);
  return {out, hy, Tensor(), Tensor()};
}

// What a cell step returns of forward_op's results: {hy, cy} (LSTM) or {hy}.
variable_list states(int64_t kind, const std::vector<Tensor>& r) {
  if (kind == kLstm) return {r[1], r[2]};
  return {r[1]};
}

// The Python entry points' arguments: a known kind, and c for the LSTM alone.
void check_call(const char* fn, int64_t kind, const OptTensor& c) {
  TORCH_CHECK_VALUE(kind >= kLstm && kind <= kRnnRelu, "fastrnn._C.", fn, ": kind must be 0 to 3, got ", kind);
  TORCH_CHECK_VALUE(c.has_value() == (kind == kLstm), "fastrnn._C.", fn, ": c is given for the LSTM only");
}

using SixGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

}  // namespace

// (Outside the anonymous namespace: its grad_fn reads CppNode<fastrnn::CellStep>.)
struct CellStep : public torch::autograd::Function<CellStep> {
  // Inputs after ctx: kind, x [B, I], h [B, H], c (LSTM, else none), w_ih, w_hh, b_ih, b_hh (or none).
  // (The optional ones as std::optional: the C++ Function API takes no undefined tensor as an input.)
  static variable_list forward(AutogradContext* ctx, int64_t kind, const Tensor& x, const Tensor& h,
                               const OptTensor& c, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh) {
    const Tensor c_ = c.value_or(Tensor());
    const std::vector<Tensor> r = forward_op(kind, x, h, c_, w_ih, w_hh, b_ih, b_hh, /*train=*/true);
    ctx->saved_data["kind"] = kind;
    ctx->save_for_backward({x, h, c_, w_ih, w_hh, b_ih.value_or(Tensor()), b_hh.value_or(Tensor()), r[0], r[3]});
    ctx->set_materialize_grads(false);  // an output left out of the loss: zeros made below only if needed
    return states(kind, r);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t kind = ctx->saved_data["kind"].toInt();
    const variable_list s = ctx->get_saved_variables();
    const Tensor &x = s[0], &h = s[1], &c = s[2], &w_ih = s[3], &w_hh = s[4], &b_ih = s[5];  // s[6]: b_hh
    const Tensor &out = s[7], &ws = s[8];
    const bool lstm = kind == kLstm;
    Tensor g_h = grads[0], g_c = lstm ? grads[1] : Tensor();
    variable_list result(8);  // kind, x, h, c, w_ih, w_hh, b_ih, b_hh
    if (!g_h.defined() && !g_c.defined()) return result;
    if (at::GradMode::is_enabled()) return differentiable_backward(kind, s, g_h, g_c);
    if (!g_h.defined()) g_h = at::zeros_like(h);
    if (lstm && !g_c.defined()) g_c = at::zeros_like(c);
    const Tensor seq = x.unsqueeze(0), g_out = at::zeros_like(out);
    const bool has_bias = b_ih.defined();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Tensor gi, ghx, gw_ih, gw_hh, gb_ih, gb_hh;
    if (lstm) {
      static const auto f = op("fastrnn::lstm_backward").typed<
          std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
              const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
              const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&, bool,
              bool)>();
      Tensor gcx, gw_hr;
      std::tie(gi, ghx, gcx, gw_ih, gw_hh, gb_ih, gb_hh, gw_hr) =
          f.call(g_out, g_h, g_c, seq, std::nullopt, h, c, w_ih, w_hh, std::nullopt, out, ws, false, has_bias);
      result[3] = gcx;
    } else if (kind == kGru) {
      static const auto f = op("fastrnn::gru_backward").typed<SixGrads(
          const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
          const Tensor&, const Tensor&, const Tensor&, bool, bool)>();
      std::tie(gi, ghx, gw_ih, gw_hh, gb_ih, gb_hh) =
          f.call(g_out, g_h, seq, std::nullopt, h, w_ih, w_hh, out, ws, false, has_bias);
    } else {
      static const auto f = op("fastrnn::rnn_backward").typed<SixGrads(
          const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
          const Tensor&, const Tensor&, bool, bool, bool)>();
      std::tie(gi, ghx, gw_ih, gw_hh, gb_ih, gb_hh) =
          f.call(g_out, g_h, seq, std::nullopt, h, w_ih, w_hh, out, kind == kRnnRelu, false, has_bias);
    }
    result[1] = gi.view(x.sizes());
    result[2] = ghx;
    result[4] = gw_ih;
    result[5] = gw_hh;
    if (has_bias) {
      result[6] = gb_ih;
      result[7] = gb_hh;
    }
    return result;
  }

  // create_graph=True: ATen's differentiable cell from the saved inputs (which keep their autograd history),
  // differentiated with a graph, so the gradients are differentiable in turn.
  static variable_list differentiable_backward(int64_t kind, const variable_list& s, const Tensor& g_h,
                                               const Tensor& g_c) {
    const Tensor &x = s[0], &h = s[1], &c = s[2], &w_ih = s[3], &w_hh = s[4], &b_ih = s[5], &b_hh = s[6];
    variable_list outs;
    if (kind == kLstm) {
      auto [hy, cy] = at::lstm_cell(x, {h, c}, w_ih, w_hh, opt(b_ih), opt(b_hh));
      outs = {hy, cy};
    } else if (kind == kGru) {
      outs = {at::gru_cell(x, h, w_ih, w_hh, opt(b_ih), opt(b_hh))};
    } else if (kind == kRnnTanh) {
      outs = {at::rnn_tanh_cell(x, h, w_ih, w_hh, opt(b_ih), opt(b_hh))};
    } else {
      outs = {at::rnn_relu_cell(x, h, w_ih, w_hh, opt(b_ih), opt(b_hh))};
    }
    const Tensor given[2] = {g_h, g_c};
    variable_list out_sel, grad_sel, in_sel;
    for (size_t i = 0; i < outs.size(); ++i)
      if (given[i].defined() && outs[i].requires_grad()) {
        out_sel.push_back(outs[i]);
        grad_sel.push_back(given[i]);
      }
    std::vector<size_t> at_index;
    for (size_t i = 0; i < 7; ++i)
      if (s[i].defined() && s[i].requires_grad()) {
        in_sel.push_back(s[i]);
        at_index.push_back(i + 1);  // result slot: after kind
      }
    variable_list result(8);
    if (out_sel.empty() || in_sel.empty()) return result;
    const variable_list got = torch::autograd::grad(out_sel, in_sel, grad_sel, /*retain_graph=*/true,
                                                    /*create_graph=*/true, /*allow_unused=*/true);
    for (size_t k = 0; k < got.size(); ++k) result[at_index[k]] = got[k];
    return result;
  }
};

namespace {

std::vector<Tensor> cell_step(int64_t kind, const Tensor& x, const Tensor& h, const OptTensor& c,
                              const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                              const OptTensor& b_hh) {
  check_call("cell_step", kind, c);
  return CellStep::apply(kind, x, h, c, w_ih, w_hh, b_ih, b_hh);
}

// The same step without a gradient (inference, decoding): the forward op below autograd, train=False, from
// C++ rather than through torch.ops' boxed call and the Python wrapper: an RNNCell step at B=1 H=1 fell from
// 21 to 12 us (torch.nn: 19), at B=8 H=128 from 49 to 33 us (torch.nn: 37; one thread of a 2-core Zen 3).
std::vector<Tensor> cell_forward(int64_t kind, const Tensor& x, const Tensor& h, const OptTensor& c,
                                 const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                 const OptTensor& b_hh) {
  check_call("cell_forward", kind, c);
  return states(kind, forward_op(kind, x, h, c.value_or(Tensor()), w_ih, w_hh, b_ih, b_hh, /*train=*/false));
}

}  // namespace

void add_cell_step(PyObject* module) {
  auto m = pybind11::reinterpret_borrow<pybind11::module_>(module);
  m.def("cell_step", &cell_step, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "One training step of a cell (kind 0 LSTM, 1 GRU, 2 RNN tanh, 3 RNN relu) with its autograd node in "
        "C++: [hy, cy] (LSTM) or [hy].");
  m.def("cell_forward", &cell_forward, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "One step of a cell without a gradient (kind as cell_step's): [hy, cy] (LSTM) or [hy].");
}

}  // namespace fastrnn
#endif  // TORCH_EXTENSION_NAME
