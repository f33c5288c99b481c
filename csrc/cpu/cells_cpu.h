// The CPU kernels of the one-direction ops (lstm_cpu.cpp, gru_cpu.cpp, rnn_cpu.cpp), declared for the
// bidirectional ops (bidir_cpu.cpp), which run two of them. Arguments and results: fastrnn.cpp's schemas of
// fastrnn::{lstm,gru,rnn}_{forward,backward}; the backwards take one more, accumulate_grad_input: undefined,
// or the other direction's input gradient, to which they add theirs and which they return as grad_input
// (sequence.h, GateGradBuffer).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace fastrnn::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr, bool reverse, bool train);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_backward(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy,
              const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
              const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
              const std::optional<at::Tensor>& w_hr, const at::Tensor& output, const at::Tensor& workspace,
              bool reverse, bool has_bias, const at::Tensor& accumulate_grad_input);

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, bool reverse, bool train);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& output, const at::Tensor& workspace, bool reverse, bool has_bias,
    const at::Tensor& accumulate_grad_input);

std::tuple<at::Tensor, at::Tensor> rnn_forward(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                                               const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                               const std::optional<at::Tensor>& b_ih,
                                               const std::optional<at::Tensor>& b_hh, bool relu, bool reverse);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& output, bool relu, bool reverse, bool has_bias,
    const at::Tensor& accumulate_grad_input);

}  // namespace fastrnn::cpu
