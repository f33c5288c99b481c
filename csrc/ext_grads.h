// The whole-sequence end of the regularised cells' backward ops, fastrnn::{lstm,gru}_ext_backward, shared by
// the CPU drivers (cpu/*_ext_cpu.cpp) and the CUDA ones (cuda/*_ext_cuda.cpp): once a driver's per-step pass has
// produced the gradients of every row, the weight gradients against the (masked) states each step started from,
// the LayerNorm weight/bias and b_hh column sums, and the op's returned tuple. Plain ATen on the tensors' own
// device, like ext_args.h and sequence.h, so the CPU and CUDA results are computed the same way.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "ext_args.h"

namespace fastrnn {

// fastrnn::lstm_ext_backward's results: grad_gates_x, grad_hx, grad_cx, grad_w_hh, grad_w_hr, and the gradients
// of ln_hh's weight and bias and of ln_c's (empty tensors where absent).
using LstmExtBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                         at::Tensor, at::Tensor, at::Tensor>;

// The LSTM's tuple from the per-step pass's results, all in the accumulation dtype except grad_gates_x (already
// in the input's dtype and shape): dh_state, dc_state [B, *]; da [N, 4H], the gradient of a = W_hh (h * m);
// dgates [N, 4H], that of LN_hh's output (= da without LN_hh); du [N, H], that of LN_c's output (undefined
// without LN_c); dht [N, P], that of r @ W_hr^T (undefined without a projection). ws: the contiguous workspace
// (layout wl), output and hx: the op's arguments, against whose rows grad_w_hh is computed.
LstmExtBackwardResult lstm_ext_backward_result(const at::Tensor& grad_gates_x, const at::Tensor& dh_state,
                                               const at::Tensor& dc_state, const at::Tensor& da,
                                               const at::Tensor& dgates, const at::Tensor& du,
                                               const at::Tensor& dht, const at::Tensor& output,
                                               const at::Tensor& hx, const at::Tensor& ws,
                                               const std::optional<at::Tensor>& recurrent_mask,
                                               const SeqLayout& L, const LstmExtWorkspace& wl, int64_t H, int64_t P,
                                               bool reverse);

// fastrnn::gru_ext_backward's results: grad_gates_x, grad_hx, grad_w_hh, grad_b_hh, and the gradients of
// ln_hh's weight and bias (empty tensors where absent).
using GruExtBackwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The GRU's tuple from the per-step pass's results: grad_gates_x (the input's dtype and shape), dh_state [B, H]
// and da, da_ln [N, 3H] in the accumulation dtype (da: the gradient of W_hh (h * m); da_ln: that of LN's output,
// = da without LN). workspace: the op's argument (its xhat columns feed LN's weight gradient).
GruExtBackwardResult gru_ext_backward_result(const at::Tensor& grad_gates_x, const at::Tensor& dh_state,
                                             const at::Tensor& da, const at::Tensor& da_ln, const at::Tensor& output,
                                             const at::Tensor& hx, const at::Tensor& workspace,
                                             const std::optional<at::Tensor>& recurrent_mask, const SeqLayout& L,
                                             int64_t H, bool packed, bool reverse, bool has_bias, bool ln);

}  // namespace fastrnn
