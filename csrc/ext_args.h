// The argument checks of the regularised cells' ops, fastrnn::{lstm,gru}_ext_{forward,backward} (schemas,
// argument meanings and workspace layouts: csrc/fastrnn.cpp), shared by the CPU drivers (cpu/*_ext_cpu.cpp) and
// the CUDA ones (cuda/*_ext_cuda.cpp): each driver makes its device's own checks (check_cuda, the dtypes its
// kernels take) and then calls one function here. Plain ATen, like sequence.h, whose checks (check_like,
// check_forward_args, check_backward_args) and layout (make_layout) these build on; every message names the
// offending argument.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "sequence.h"

namespace fastrnn {

// The sizes of `t` with the last one replaced by `last` (e.g. gates_x [T, B, 4H] -> output [T, B, P]).
inline std::vector<int64_t> lead_sizes(const at::Tensor& t, int64_t last) {
  std::vector<int64_t> s = t.sizes().vec();
  s.back() = last;
  return s;
}

// The LSTM workspace's columns (csrc/fastrnn.cpp): gates i, f, g, o [0, 4H); c [4H, 5H); tanh(u) [5H, 6H);
// with ln_hh the normalised W_hh h [6H, 10H) and its 1/sigma at 10H; with ln_c the normalised c~ [ln_c, ln_c + H)
// and its 1/sigma at ln_c + H.
struct LstmExtWorkspace {
  int64_t width, ln_hh, ln_c;  // ln_hh, ln_c: first column of each LN block, -1 when absent
  LstmExtWorkspace(int64_t H, bool has_ln_hh, bool has_ln_c) {
    int64_t w = 6 * H;
    ln_hh = has_ln_hh ? w : -1;
    if (has_ln_hh) w += 4 * H + 1;
    ln_c = has_ln_c ? w : -1;
    if (has_ln_c) w += H + 1;
    width = w;
  }
};

// The GRU workspace's columns of a row: r, z, n, the n-gate's recurrent term, then with ln_hh xhat [3H] and
// 1/sigma.
inline int64_t gru_ext_ws_width(int64_t H, bool ln) { return 4 * H + (ln ? 3 * H + 1 : 0); }

// What the checks derive from the arguments.
struct ExtShape {
  int64_t H = 0;  // hidden_size
  int64_t P = 0;  // the recurrent state's width: proj_size with an LSTM projection, else H
  SeqLayout L;    // the steps of the sequence (gates_x's for the forward, output's for the backward)
};

// fastrnn::lstm_ext_forward's arguments (`op` names the op in the messages).
ExtShape check_lstm_ext_forward_args(const char* op, const at::Tensor& gates_x,
                                     const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                                     const at::Tensor& cx, const at::Tensor& w_hh,
                                     const std::optional<at::Tensor>& w_hr,
                                     const std::optional<at::Tensor>& ln_hh_weight,
                                     const std::optional<at::Tensor>& ln_hh_bias,
                                     const std::optional<at::Tensor>& ln_c_weight,
                                     const std::optional<at::Tensor>& ln_c_bias,
                                     const std::optional<at::Tensor>& zoneout_h,
                                     const std::optional<at::Tensor>& zoneout_c,
                                     const std::optional<at::Tensor>& recurrent_mask);

// fastrnn::lstm_ext_backward's arguments, the workspace included.
ExtShape check_lstm_ext_backward_args(const char* op, const at::Tensor& grad_output, const at::Tensor& grad_hy,
                                      const at::Tensor& grad_cy, const std::optional<at::Tensor>& batch_sizes,
                                      const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_hh,
                                      const std::optional<at::Tensor>& w_hr,
                                      const std::optional<at::Tensor>& ln_hh_weight,
                                      const std::optional<at::Tensor>& ln_c_weight,
                                      const std::optional<at::Tensor>& zoneout_h,
                                      const std::optional<at::Tensor>& zoneout_c,
                                      const std::optional<at::Tensor>& recurrent_mask, const at::Tensor& output,
                                      const at::Tensor& workspace);

// fastrnn::gru_ext_forward's arguments.
ExtShape check_gru_ext_forward_args(const char* op, const at::Tensor& gates_x,
                                    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                                    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hh,
                                    const std::optional<at::Tensor>& ln_hh_weight,
                                    const std::optional<at::Tensor>& ln_hh_bias,
                                    const std::optional<at::Tensor>& zoneout_h,
                                    const std::optional<at::Tensor>& recurrent_mask);

// fastrnn::gru_ext_backward's arguments, the workspace included.
ExtShape check_gru_ext_backward_args(const char* op, const at::Tensor& grad_output, const at::Tensor& grad_hy,
                                     const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                                     const at::Tensor& w_hh, const std::optional<at::Tensor>& ln_hh_weight,
                                     const std::optional<at::Tensor>& zoneout_h,
                                     const std::optional<at::Tensor>& recurrent_mask, const at::Tensor& output,
                                     const at::Tensor& workspace);

}  // namespace fastrnn
