"""Python side of the fastrnn:: operators: fake (meta) kernels for torch.compile and autograd formulas.

The C++ library defines the schemas (csrc/fastrnn.cpp) and the CPU/CUDA kernels. Here each forward op gets
`register_fake` (shapes only, so torch.compile traces it without running it) and `register_autograd`,
whose backward calls the op's registered backward op; each backward op gets `register_fake` too.
Nothing here calls into the extension other than through torch.ops.fastrnn.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_ops = torch.ops.fastrnn


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype gates, cell states and saved activations are computed in (fp32 for half types)."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _rows(input: Tensor, batch_sizes: Optional[Tensor]) -> int:
    return input.shape[0] if batch_sizes is not None else input.shape[0] * input.shape[1]


def _workspace(input, batch_sizes, width: int, train: bool) -> Tensor:
    shape = (_rows(input, batch_sizes), width) if train else (0, 0)
    return input.new_empty(shape, dtype=accumulation_dtype(input.dtype))


def _output(input: Tensor, features: int) -> Tensor:
    return input.new_empty((*input.shape[:-1], features))


def _bias_grad(w: Tensor, has_bias: bool) -> Tensor:
    return w.new_empty((w.shape[0],) if has_bias else (0,))


def _check_devices(op: str, input: Tensor, batch_sizes: Optional[Tensor], **tensors: Optional[Tensor]) -> None:
    """The device checks of the real kernels. A fake kernel also runs when a single argument is on the meta
    device and the others are not (the dispatcher picks Meta for the whole call); without these checks such a
    call would return uninitialised tensors instead of an error."""
    for name, t in tensors.items():
        if t is not None and t.device != input.device:
            raise RuntimeError(f"fastrnn::{op}: expected {name} on {input.device} (the input's device), got {t.device}")
    if batch_sizes is not None and batch_sizes.device.type != "cpu" and not (
            batch_sizes.device.type == "meta" and input.device.type == "meta"):
        raise ValueError(f"fastrnn::{op}: batch_sizes must be a 1-D int64 CPU tensor (PackedSequence.batch_sizes), "
                         f"got one on {batch_sizes.device}")


# ------------------------------------------------------------------------------------------ fake kernels
@torch.library.register_fake("fastrnn::lstm_forward")
def _lstm_forward_fake(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, train):
    _check_devices("lstm_forward", input, batch_sizes, hx=hx, cx=cx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                   w_hr=w_hr)
    hidden = w_ih.shape[0] // 4
    return (_output(input, hx.shape[-1]), torch.empty_like(hx), torch.empty_like(cx),
            _workspace(input, batch_sizes, 5 * hidden, train))


@torch.library.register_fake("fastrnn::lstm_backward")
def _lstm_backward_fake(grad_output, grad_hy, grad_cy, input, batch_sizes, hx, cx, w_ih, w_hh, w_hr, output,
                        workspace, reverse, has_bias):
    _check_devices("lstm_backward", input, batch_sizes, grad_output=grad_output, grad_hy=grad_hy, grad_cy=grad_cy,
                   hx=hx, cx=cx, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, output=output, workspace=workspace)
    return (torch.empty_like(input), torch.empty_like(hx), torch.empty_like(cx), torch.empty_like(w_ih),
            torch.empty_like(w_hh), _bias_grad(w_ih, has_bias), _bias_grad(w_ih, has_bias),
            torch.empty_like(w_hr) if w_hr is not None else w_ih.new_empty((0,)))


@torch.library.register_fake("fastrnn::gru_forward")
def _gru_forward_fake(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, train):
    _check_devices("gru_forward", input, batch_sizes, hx=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    hidden = w_ih.shape[0] // 3
    return _output(input, hidden), torch.empty_like(hx), _workspace(input, batch_sizes, 4 * hidden, train)


@torch.library.register_fake("fastrnn::gru_backward")
def _gru_backward_fake(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, output, workspace, reverse,
                       has_bias):
    _check_devices("gru_backward", input, batch_sizes, grad_output=grad_output, grad_hy=grad_hy, hx=hx, w_ih=w_ih,
                   w_hh=w_hh, output=output, workspace=workspace)
    return (torch.empty_like(input), torch.empty_like(hx), torch.empty_like(w_ih), torch.empty_like(w_hh),
            _bias_grad(w_ih, has_bias), _bias_grad(w_ih, has_bias))


@torch.library.register_fake("fastrnn::rnn_forward")
def _rnn_forward_fake(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse):
    _check_devices("rnn_forward", input, batch_sizes, hx=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    return _output(input, w_ih.shape[0]), torch.empty_like(hx)


@torch.library.register_fake("fastrnn::rnn_backward")
def _rnn_backward_fake(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, output, relu, reverse, has_bias):
    _check_devices("rnn_backward", input, batch_sizes, grad_output=grad_output, grad_hy=grad_hy, hx=hx, w_ih=w_ih,
                   w_hh=w_hh, output=output)
    return (torch.empty_like(input), torch.empty_like(hx), torch.empty_like(w_ih), torch.empty_like(w_hh),
            _bias_grad(w_ih, has_bias), _bias_grad(w_ih, has_bias))


# -------------------------------------------------------------------------------------------- autograd
def _grad(g: Optional[Tensor], like: Tensor) -> Tensor:
    """Outputs that took no part in the loss arrive as None; the backward ops want zeros."""
    return torch.zeros_like(like) if g is None else g


def _require_train(ctx, op: str) -> None:
    if not ctx.train:
        raise RuntimeError(
            f"fastrnn::{op} ran with train=False, which saves no activations, so it cannot be differentiated; "
            "call it with train=True when gradients are needed")


def _lstm_setup(ctx, inputs, output):
    input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, train = inputs
    out, _, _, workspace = output
    ctx.save_for_backward(input, batch_sizes, hx, cx, w_ih, w_hh, w_hr, out, workspace)
    ctx.reverse, ctx.train, ctx.has_bias = reverse, train, b_ih is not None


def _lstm_backward(ctx, grad_out, grad_hy, grad_cy, _grad_workspace):
    _require_train(ctx, "lstm_forward")
    input, batch_sizes, hx, cx, w_ih, w_hh, w_hr, out, workspace = ctx.saved_tensors
    gi, ghx, gcx, gw_ih, gw_hh, gb_ih, gb_hh, gw_hr = _ops.lstm_backward(
        _grad(grad_out, out), _grad(grad_hy, hx), _grad(grad_cy, cx), input, batch_sizes, hx, cx, w_ih, w_hh,
        w_hr, out, workspace, ctx.reverse, ctx.has_bias)
    bias = ctx.has_bias
    return (gi, None, ghx, gcx, gw_ih, gw_hh, gb_ih if bias else None, gb_hh if bias else None,
            gw_hr if w_hr is not None else None, None, None)


def _gru_setup(ctx, inputs, output):
    input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, train = inputs
    out, _, workspace = output
    ctx.save_for_backward(input, batch_sizes, hx, w_ih, w_hh, out, workspace)
    ctx.reverse, ctx.train, ctx.has_bias = reverse, train, b_ih is not None


def _gru_backward(ctx, grad_out, grad_hy, _grad_workspace):
    _require_train(ctx, "gru_forward")
    input, batch_sizes, hx, w_ih, w_hh, out, workspace = ctx.saved_tensors
    gi, ghx, gw_ih, gw_hh, gb_ih, gb_hh = _ops.gru_backward(
        _grad(grad_out, out), _grad(grad_hy, hx), input, batch_sizes, hx, w_ih, w_hh, out, workspace,
        ctx.reverse, ctx.has_bias)
    bias = ctx.has_bias
    return gi, None, ghx, gw_ih, gw_hh, gb_ih if bias else None, gb_hh if bias else None, None, None


def _rnn_setup(ctx, inputs, output):
    input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse = inputs
    out, _ = output
    ctx.save_for_backward(input, batch_sizes, hx, w_ih, w_hh, out)
    ctx.relu, ctx.reverse, ctx.has_bias = relu, reverse, b_ih is not None


def _rnn_backward(ctx, grad_out, grad_hy):
    input, batch_sizes, hx, w_ih, w_hh, out = ctx.saved_tensors
    gi, ghx, gw_ih, gw_hh, gb_ih, gb_hh = _ops.rnn_backward(
        _grad(grad_out, out), _grad(grad_hy, hx), input, batch_sizes, hx, w_ih, w_hh, out, ctx.relu,
        ctx.reverse, ctx.has_bias)
    bias = ctx.has_bias
    return gi, None, ghx, gw_ih, gw_hh, gb_ih if bias else None, gb_hh if bias else None, None, None


torch.library.register_autograd("fastrnn::lstm_forward", _lstm_backward, setup_context=_lstm_setup)
torch.library.register_autograd("fastrnn::gru_forward", _gru_backward, setup_context=_gru_setup)
torch.library.register_autograd("fastrnn::rnn_forward", _rnn_backward, setup_context=_rnn_setup)

# The public op handles, for users who drive single layers themselves.
lstm_forward = _ops.lstm_forward
lstm_backward = _ops.lstm_backward
gru_forward = _ops.gru_forward
gru_backward = _ops.gru_backward
rnn_forward = _ops.rnn_forward
rnn_backward = _ops.rnn_backward
