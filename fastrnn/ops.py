"""Python side of the fastrnn:: operators: fake (meta) kernels for torch.compile, autograd, autocast.

The C++ library defines the schemas (csrc/fastrnn.cpp) and the CPU/CUDA kernels. Here
  - every op gets `register_fake` (shapes only, so torch.compile traces it without running it);
  - every forward op gets an autograd kernel: first derivatives come from the op's registered backward op
    (what `torch.library.register_autograd` builds); what the fused kernels cannot differentiate runs
    through fastrnn/composite.py's plain-PyTorch equations instead: the backward under `create_graph=True`
    (double backward), and calls under torch.func transforms or with forward-mode tangents;
  - every op gets an autocast kernel for CPU and CUDA with torch.nn's policy for its recurrent layers.
Nothing here calls into the extension other than through torch.ops.fastrnn.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from . import composite
from .composite import accumulation_dtype  # noqa: F401  (re-exported: the dtype of workspaces and states)

_ops = torch.ops.fastrnn
# The registrations of this file (autograd and autocast kernels); kept alive as long as the module is.
_lib = torch.library.Library("fastrnn", "IMPL")


def _rows(input: Tensor, batch_sizes: Optional[Tensor]) -> int:
    return input.shape[0] if batch_sizes is not None else input.shape[0] * input.shape[1]


def _workspace(input, batch_sizes, width: int, train: bool) -> Tensor:
    shape = (_rows(input, batch_sizes), width) if train else (0, 0)
    return input.new_empty(shape, dtype=accumulation_dtype(input.dtype))


def _output(input: Tensor, features: int) -> Tensor:
    return input.new_empty((*input.shape[:-1], features))


def _like(t: Tensor) -> Tensor:
    """A new contiguous tensor of t's shape, dtype and device: what the real kernels return (not
    torch.empty_like, which would copy a transposed or expanded argument's strides)."""
    return t.new_empty(t.shape)


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
    return (_output(input, hx.shape[-1]), _like(hx), _like(cx),
            _workspace(input, batch_sizes, 5 * hidden, train))


@torch.library.register_fake("fastrnn::lstm_backward")
def _lstm_backward_fake(grad_output, grad_hy, grad_cy, input, batch_sizes, hx, cx, w_ih, w_hh, w_hr, output,
                        workspace, reverse, has_bias):
    _check_devices("lstm_backward", input, batch_sizes, grad_output=grad_output, grad_hy=grad_hy, grad_cy=grad_cy,
                   hx=hx, cx=cx, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, output=output, workspace=workspace)
    return (_like(input), _like(hx), _like(cx), _like(w_ih),
            _like(w_hh), _bias_grad(w_ih, has_bias), _bias_grad(w_ih, has_bias),
            _like(w_hr) if w_hr is not None else w_ih.new_empty((0,)))


@torch.library.register_fake("fastrnn::gru_forward")
def _gru_forward_fake(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, train):
    _check_devices("gru_forward", input, batch_sizes, hx=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    hidden = w_ih.shape[0] // 3
    return _output(input, hidden), _like(hx), _workspace(input, batch_sizes, 4 * hidden, train)


@torch.library.register_fake("fastrnn::gru_backward")
def _gru_backward_fake(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, output, workspace, reverse,
                       has_bias):
    _check_devices("gru_backward", input, batch_sizes, grad_output=grad_output, grad_hy=grad_hy, hx=hx, w_ih=w_ih,
                   w_hh=w_hh, output=output, workspace=workspace)
    return (_like(input), _like(hx), _like(w_ih), _like(w_hh),
            _bias_grad(w_ih, has_bias), _bias_grad(w_ih, has_bias))


@torch.library.register_fake("fastrnn::rnn_forward")
def _rnn_forward_fake(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse):
    _check_devices("rnn_forward", input, batch_sizes, hx=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    return _output(input, w_ih.shape[0]), _like(hx)


@torch.library.register_fake("fastrnn::rnn_backward")
def _rnn_backward_fake(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, output, relu, reverse, has_bias):
    _check_devices("rnn_backward", input, batch_sizes, grad_output=grad_output, grad_hy=grad_hy, hx=hx, w_ih=w_ih,
                   w_hh=w_hh, output=output)
    return (_like(input), _like(hx), _like(w_ih), _like(w_hh),
            _bias_grad(w_ih, has_bias), _bias_grad(w_ih, has_bias))



# The ops of fastrnn's options (layer_norm, zoneout, recurrent_dropout): csrc/fastrnn.cpp states their layout.
def lstm_ext_workspace_width(hidden: int, ln_hh: bool, ln_c: bool) -> int:
    return 6 * hidden + (4 * hidden + 1 if ln_hh else 0) + (hidden + 1 if ln_c else 0)


def gru_ext_workspace_width(hidden: int, ln_hh: bool) -> int:
    return 4 * hidden + (3 * hidden + 1 if ln_hh else 0)


def _empty_or_like(t: Optional[Tensor], like: Tensor) -> Tensor:
    return _like(t) if t is not None else like.new_empty((0,))


@torch.library.register_fake("fastrnn::lstm_ext_forward")
def _lstm_ext_forward_fake(gates_x, batch_sizes, hx, cx, w_hh, w_hr, ln_hh_weight, ln_hh_bias, ln_c_weight,
                           ln_c_bias, zoneout_h, zoneout_c, recurrent_mask, reverse, train):
    _check_devices("lstm_ext_forward", gates_x, batch_sizes, hx=hx, cx=cx, w_hh=w_hh, w_hr=w_hr,
                   ln_hh_weight=ln_hh_weight, ln_hh_bias=ln_hh_bias, ln_c_weight=ln_c_weight, ln_c_bias=ln_c_bias,
                   zoneout_h=zoneout_h, zoneout_c=zoneout_c, recurrent_mask=recurrent_mask)
    width = lstm_ext_workspace_width(w_hh.shape[0] // 4, ln_hh_weight is not None, ln_c_weight is not None)
    return _output(gates_x, hx.shape[-1]), _like(hx), _like(cx), _workspace(gates_x, batch_sizes, width, train)


@torch.library.register_fake("fastrnn::lstm_ext_backward")
def _lstm_ext_backward_fake(grad_output, grad_hy, grad_cy, batch_sizes, hx, cx, w_hh, w_hr, ln_hh_weight,
                            ln_c_weight, zoneout_h, zoneout_c, recurrent_mask, output, workspace, reverse):
    _check_devices("lstm_ext_backward", output, batch_sizes, grad_output=grad_output, grad_hy=grad_hy,
                   grad_cy=grad_cy, hx=hx, cx=cx, w_hh=w_hh, w_hr=w_hr, ln_hh_weight=ln_hh_weight,
                   ln_c_weight=ln_c_weight, workspace=workspace)
    return (_output(output, w_hh.shape[0]), _like(hx), _like(cx), _like(w_hh), _empty_or_like(w_hr, w_hh),
            _empty_or_like(ln_hh_weight, w_hh), _empty_or_like(ln_hh_weight, w_hh),
            _empty_or_like(ln_c_weight, w_hh), _empty_or_like(ln_c_weight, w_hh))


@torch.library.register_fake("fastrnn::gru_ext_forward")
def _gru_ext_forward_fake(gates_x, batch_sizes, hx, w_hh, b_hh, ln_hh_weight, ln_hh_bias, zoneout_h,
                          recurrent_mask, reverse, train):
    _check_devices("gru_ext_forward", gates_x, batch_sizes, hx=hx, w_hh=w_hh, b_hh=b_hh, ln_hh_weight=ln_hh_weight,
                   ln_hh_bias=ln_hh_bias, zoneout_h=zoneout_h, recurrent_mask=recurrent_mask)
    width = gru_ext_workspace_width(w_hh.shape[0] // 3, ln_hh_weight is not None)
    return _output(gates_x, hx.shape[-1]), _like(hx), _workspace(gates_x, batch_sizes, width, train)


@torch.library.register_fake("fastrnn::gru_ext_backward")
def _gru_ext_backward_fake(grad_output, grad_hy, batch_sizes, hx, w_hh, ln_hh_weight, zoneout_h, recurrent_mask,
                           output, workspace, reverse, has_bias):
    _check_devices("gru_ext_backward", output, batch_sizes, grad_output=grad_output, grad_hy=grad_hy, hx=hx,
                   w_hh=w_hh, ln_hh_weight=ln_hh_weight, workspace=workspace)
    return (_output(output, w_hh.shape[0]), _like(hx), _like(w_hh), _bias_grad(w_hh, has_bias),
            _empty_or_like(ln_hh_weight, w_hh), _empty_or_like(ln_hh_weight, w_hh))


# -------------------------------------------------------------------------------------------- autograd
def _grad(g: Optional[Tensor], like: Tensor) -> Tensor:
    """Outputs that took no part in the loss arrive as None; the backward ops want zeros."""
    return torch.zeros_like(like) if g is None else g


def _require_train(ctx, op: str) -> None:
    if not ctx.train:
        raise RuntimeError(
            f"fastrnn::{op} ran with train=False, which saves no activations, so it cannot be differentiated; "
            "call it with train=True when gradients are needed")


def _differentiable_backward(ctx, forward, args, grads):
    """The backward under create_graph=True: recompute the layer with fastrnn/composite.py's equations from
    the saved inputs (which still carry their autograd history) and differentiate that with autograd, so the
    gradients are themselves differentiable (with respect to the inputs, the weights and the incoming
    gradients). `forward(*args)` returns the op's differentiable outputs; `args` are the op's inputs."""
    wanted = [i for i, a in enumerate(args) if isinstance(a, Tensor) and ctx.needs_input_grad[i]]
    result = [None] * len(ctx.needs_input_grad)
    if not wanted:
        return tuple(result)
    with torch.enable_grad():
        outs = forward(*args)
    pairs = [(o, g) for o, g in zip(outs, grads) if o is not None and g is not None and o.requires_grad]
    if not pairs:
        return tuple(result)
    got = torch.autograd.grad([o for o, _ in pairs], [args[i] for i in wanted], [g for _, g in pairs],
                              create_graph=True, allow_unused=True)
    for i, g in zip(wanted, got):
        result[i] = g
    return tuple(result)


def _no_zero_grads(ctx) -> None:
    """Outputs left out of the loss reach the backward as None instead of zero tensors autograd would allocate
    first: the workspace ([N, 5H] / [N, 4H] in fp32) is never part of a loss, and a zero gradient for it would
    add its whole size to a training step's peak memory. `_grad` makes the zeros the backward ops need."""
    ctx.set_materialize_grads(False)


def _lstm_setup(ctx, inputs, output):
    input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, train = inputs
    out, _, _, workspace = output
    _no_zero_grads(ctx)
    ctx.save_for_backward(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, out, workspace)
    ctx.reverse, ctx.train, ctx.has_bias = reverse, train, b_ih is not None


def _lstm_backward(ctx, grad_out, grad_hy, grad_cy, _grad_workspace):
    _require_train(ctx, "lstm_forward")
    input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, out, workspace = ctx.saved_tensors
    if torch.is_grad_enabled():
        args = (input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, ctx.reverse, ctx.train)
        return _differentiable_backward(ctx, lambda *a: composite.lstm_forward(*a[:-1]), args,
                                        (grad_out, grad_hy, grad_cy))
    gi, ghx, gcx, gw_ih, gw_hh, gb_ih, gb_hh, gw_hr = _ops.lstm_backward(
        _grad(grad_out, out), _grad(grad_hy, hx), _grad(grad_cy, cx), input, batch_sizes, hx, cx, w_ih, w_hh,
        w_hr, out, workspace, ctx.reverse, ctx.has_bias)
    bias = ctx.has_bias
    return (gi, None, ghx, gcx, gw_ih, gw_hh, gb_ih if bias else None, gb_hh if bias else None,
            gw_hr if w_hr is not None else None, None, None)


def _gru_setup(ctx, inputs, output):
    input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, train = inputs
    out, _, workspace = output
    _no_zero_grads(ctx)
    ctx.save_for_backward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, out, workspace)
    ctx.reverse, ctx.train, ctx.has_bias = reverse, train, b_ih is not None


def _gru_backward(ctx, grad_out, grad_hy, _grad_workspace):
    _require_train(ctx, "gru_forward")
    input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, out, workspace = ctx.saved_tensors
    if torch.is_grad_enabled():
        args = (input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, ctx.reverse, ctx.train)
        return _differentiable_backward(ctx, lambda *a: composite.gru_forward(*a[:-1]), args, (grad_out, grad_hy))
    gi, ghx, gw_ih, gw_hh, gb_ih, gb_hh = _ops.gru_backward(
        _grad(grad_out, out), _grad(grad_hy, hx), input, batch_sizes, hx, w_ih, w_hh, out, workspace,
        ctx.reverse, ctx.has_bias)
    bias = ctx.has_bias
    return gi, None, ghx, gw_ih, gw_hh, gb_ih if bias else None, gb_hh if bias else None, None, None


def _rnn_setup(ctx, inputs, output):
    input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse = inputs
    out, _ = output
    _no_zero_grads(ctx)
    ctx.save_for_backward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, out)
    ctx.relu, ctx.reverse, ctx.has_bias = relu, reverse, b_ih is not None


def _rnn_backward(ctx, grad_out, grad_hy):
    input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, out = ctx.saved_tensors
    if torch.is_grad_enabled():
        args = (input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, ctx.relu, ctx.reverse)
        return _differentiable_backward(ctx, composite.rnn_forward, args, (grad_out, grad_hy))
    gi, ghx, gw_ih, gw_hh, gb_ih, gb_hh = _ops.rnn_backward(
        _grad(grad_out, out), _grad(grad_hy, hx), input, batch_sizes, hx, w_ih, w_hh, out, ctx.relu,
        ctx.reverse, ctx.has_bias)
    bias = ctx.has_bias
    return gi, None, ghx, gw_ih, gw_hh, gb_ih if bias else None, gb_hh if bias else None, None, None



def _lstm_ext_setup(ctx, inputs, output):
    (gates_x, batch_sizes, hx, cx, w_hh, w_hr, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, zoneout_h, zoneout_c, mask,
     reverse, train) = inputs
    out, _, _, workspace = output
    _no_zero_grads(ctx)
    # gates_x and the LayerNorm biases only for the differentiable (create_graph) backward, which recomputes
    ctx.save_for_backward(gates_x, batch_sizes, hx, cx, w_hh, w_hr, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, zoneout_h,
                          zoneout_c, mask, out, workspace)
    ctx.reverse, ctx.train = reverse, train


def _lstm_ext_backward(ctx, grad_out, grad_hy, grad_cy, _grad_workspace):
    _require_train(ctx, "lstm_ext_forward")
    (gates_x, batch_sizes, hx, cx, w_hh, w_hr, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, zoneout_h, zoneout_c, mask, out,
     workspace) = ctx.saved_tensors
    if torch.is_grad_enabled():
        args = (gates_x, batch_sizes, hx, cx, w_hh, w_hr, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, zoneout_h, zoneout_c,
                mask, ctx.reverse, ctx.train)
        return _differentiable_backward(ctx, lambda *a: composite.lstm_ext_forward(*a[:-1]), args,
                                        (grad_out, grad_hy, grad_cy))
    ggx, ghx, gcx, gw_hh, gw_hr, g_lnhw, g_lnhb, g_lncw, g_lncb = _ops.lstm_ext_backward(
        _grad(grad_out, out), _grad(grad_hy, hx), _grad(grad_cy, cx), batch_sizes, hx, cx, w_hh, w_hr, ln_hh_w,
        ln_c_w, zoneout_h, zoneout_c, mask, out, workspace, ctx.reverse)
    some = lambda g, t: g if t is not None else None  # noqa: E731
    return (ggx, None, ghx, gcx, gw_hh, some(gw_hr, w_hr), some(g_lnhw, ln_hh_w), some(g_lnhb, ln_hh_b),
            some(g_lncw, ln_c_w), some(g_lncb, ln_c_b), None, None, None, None, None)


def _gru_ext_setup(ctx, inputs, output):
    gates_x, batch_sizes, hx, w_hh, b_hh, ln_hh_w, ln_hh_b, zoneout_h, mask, reverse, train = inputs
    out, _, workspace = output
    _no_zero_grads(ctx)
    ctx.save_for_backward(gates_x, batch_sizes, hx, w_hh, b_hh, ln_hh_w, ln_hh_b, zoneout_h, mask, out, workspace)
    ctx.reverse, ctx.train, ctx.has_bias = reverse, train, b_hh is not None


def _gru_ext_backward(ctx, grad_out, grad_hy, _grad_workspace):
    _require_train(ctx, "gru_ext_forward")
    gates_x, batch_sizes, hx, w_hh, b_hh, ln_hh_w, ln_hh_b, zoneout_h, mask, out, workspace = ctx.saved_tensors
    if torch.is_grad_enabled():
        args = (gates_x, batch_sizes, hx, w_hh, b_hh, ln_hh_w, ln_hh_b, zoneout_h, mask, ctx.reverse, ctx.train)
        return _differentiable_backward(ctx, lambda *a: composite.gru_ext_forward(*a[:-1]), args,
                                        (grad_out, grad_hy))
    ggx, ghx, gw_hh, gb_hh, g_lnw, g_lnb = _ops.gru_ext_backward(
        _grad(grad_out, out), _grad(grad_hy, hx), batch_sizes, hx, w_hh, ln_hh_w, zoneout_h, mask, out, workspace,
        ctx.reverse, ctx.has_bias)
    some = lambda g, t: g if t is not None else None  # noqa: E731
    return (ggx, None, ghx, gw_hh, some(gb_hh, b_hh), some(g_lnw, ln_hh_w), some(g_lnb, ln_hh_b), None, None, None,
            None)


# The composite forwards under torch.func transforms / forward-mode AD, returning what the op returns (the
# workspace, which nothing can consume there, as zeros of its contracted shape).
def _lstm_composite(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, train):
    out, hy, cy = composite.lstm_forward(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    return out, hy, cy, _workspace(input, batch_sizes, 5 * (w_ih.shape[0] // 4), train).zero_()


def _gru_composite(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, train):
    out, hy = composite.gru_forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse)
    return out, hy, _workspace(input, batch_sizes, 4 * (w_ih.shape[0] // 3), train).zero_()


def _lstm_ext_composite(gates_x, batch_sizes, hx, cx, w_hh, w_hr, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, zoneout_h,
                        zoneout_c, mask, reverse, train):
    out, hy, cy = composite.lstm_ext_forward(gates_x, batch_sizes, hx, cx, w_hh, w_hr, ln_hh_w, ln_hh_b, ln_c_w,
                                             ln_c_b, zoneout_h, zoneout_c, mask, reverse)
    width = lstm_ext_workspace_width(w_hh.shape[0] // 4, ln_hh_w is not None, ln_c_w is not None)
    return out, hy, cy, _workspace(gates_x, batch_sizes, width, train).zero_()


def _gru_ext_composite(gates_x, batch_sizes, hx, w_hh, b_hh, ln_hh_w, ln_hh_b, zoneout_h, mask, reverse, train):
    out, hy = composite.gru_ext_forward(gates_x, batch_sizes, hx, w_hh, b_hh, ln_hh_w, ln_hh_b, zoneout_h, mask,
                                        reverse)
    width = gru_ext_workspace_width(w_hh.shape[0] // 3, ln_hh_w is not None)
    return out, hy, _workspace(gates_x, batch_sizes, width, train).zero_()


def _has_tangent(args) -> bool:
    """Whether forward-mode AD (torch.autograd.forward_ad) is active and some argument carries a tangent."""
    if fwAD._current_level < 0:
        return False
    return any(isinstance(a, Tensor) and fwAD.unpack_dual(a).tangent is not None for a in args)


def _register_autograd(name, backward, setup_context, composite_forward):
    """The op's Autograd kernel: an autograd.Function whose forward runs the op below autograd and whose backward
    is `backward` (which calls the registered backward op), what torch.library.register_autograd builds, except
    under torch.func transforms (grad, jvp, vmap, jacrev/jacfwd, hessian, functional_call inside them) and for
    forward-mode tangents, where the op runs as composite_forward: ordinary differentiable PyTorch ops that
    every transform supports. (register_autograd's generated autograd.Function has no setup_context/jvp, so
    functorch would refuse it and forward AD would see no derivative.)

    Written out rather than taken from torch's make_autograd_impl, whose generic path (re-filling the schema's
    defaults argument by argument through pybind, a metadata object per call, return-count checks) cost as much
    as the op itself on a decoding step: a T=1 B=8 H=256 Elman RNN op took 106 us under inference_mode and 209
    to 286 us with gradients on, on a 2-core Zen 3. fastrnn's forward ops have no default arguments to fill."""
    op = getattr(_ops, name).default
    after_autograd = torch._C._after_autograd_keyset

    def below_autograd(keyset, args):
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & after_autograd, *args)

    def forward(ctx, *args):  # args: the op's arguments, then the dispatch key set
        result = below_autograd(args[-1], args[:-1])
        setup_context(ctx, args[:-1], result)
        return result

    def backward_with_keyset(ctx, *grads):
        needs = ctx.needs_input_grad
        ctx.needs_input_grad = needs[:-1]  # the backward functions index the op's arguments only
        try:
            grads_in = backward(ctx, *grads)
        finally:
            ctx.needs_input_grad = needs
        return (*grads_in, None)

    fused = type(f"FastrnnBackward_{name}", (torch.autograd.Function,),
                 {"forward": staticmethod(forward), "backward": staticmethod(backward_with_keyset)})

    def kernel(keyset, *args):
        # (_forward_call below skips this kernel only where it would reach the last line: keep the two in step)
        if torch._C._are_functorch_transforms_active() or _has_tangent(args):
            return composite_forward(*args)
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            return fused.apply(*args, keyset)
        return below_autograd(keyset, args)

    _lib.impl(name, kernel, "Autograd", with_keyset=True)


_register_autograd("lstm_forward", _lstm_backward, _lstm_setup, _lstm_composite)
_register_autograd("gru_forward", _gru_backward, _gru_setup, _gru_composite)
_register_autograd("rnn_forward", _rnn_backward, _rnn_setup, composite.rnn_forward)
_register_autograd("lstm_ext_forward", _lstm_ext_backward, _lstm_ext_setup, _lstm_ext_composite)
_register_autograd("gru_ext_forward", _gru_ext_backward, _gru_ext_setup, _gru_ext_composite)


def _forward_call(name):
    """The forward op `name` as the modules call it. With grad mode off its Autograd kernel (kernel() above)
    only redispatches below autograd, but reaching that Python kernel and coming back (arguments converted
    both ways, the key set, the guard) took 21 us of a 38 us Elman RNN step under no_grad (B=1 H=16, 2-core
    Zen 3), so the call steps below autograd itself. Every other case takes the dispatcher's way, where the
    kernel picks its path: grad mode on, forward-mode AD (tangents are propagated whatever the grad mode),
    torch.func transforms, and tracing or compiling (the guard is not traceable; the traced graph keeps the
    op whole)."""
    op = getattr(_ops, name).default
    below_autograd = torch._C._AutoDispatchBelowAutograd
    grad_enabled, transforms = torch.is_grad_enabled, torch._C._are_functorch_transforms_active
    is_compiling, is_tracing = torch.compiler.is_compiling, torch._C._get_tracing_state

    def call(*args):
        if grad_enabled() or fwAD._current_level >= 0 or transforms() or is_compiling() or is_tracing():
            return op(*args)
        with below_autograd():
            return op(*args)

    call.__name__ = name
    return call


# -------------------------------------------------------------------------------------------- autocast
# torch.nn's recurrent layers are on autocast's lower-precision list (cuDNN's RNN on CUDA, the RNN ops on the
# CPU): inside an autocast region their floating-point inputs, except float64 ones, are cast to the region's
# dtype and the outputs come back in it. The fastrnn forward ops do the same. The backward ops keep the
# dtypes autograd hands them (those of the forward's cast inputs). Either way the op then runs with autocast
# off, so the ATen calls inside the kernels (the x-projection GEMM) are not re-cast under the kernels' feet.
def _check_autocast_dtypes(name: str, args, dtype: torch.dtype) -> None:
    """After the cast, float64 tensors (which autocast leaves alone) next to cast ones cannot be multiplied:
    RuntimeError, the class torch.nn raises there (from its matmul), with a message that says why."""
    found = {a.dtype for a in args if isinstance(a, Tensor) and a.is_floating_point()}
    if len(found) > 1:
        raise RuntimeError(
            f"fastrnn::{name} under autocast: autocast casts floating-point tensors to {dtype} but leaves float64 "
            f"ones alone, so the arguments now mix {sorted(str(d) for d in found)}; make the input and the module "
            "the same dtype (e.g. module.double() for float64 input) or leave float64 out of the autocast region")


def _register_autocast(name: str, cast: bool, keep: Tuple[int, ...] = ()) -> None:
    """keep: positions of arguments left as they are (the options' masks, which stay in the accumulation
    dtype)."""
    op = getattr(_ops, name).default
    for device_type in ("cpu", "cuda"):
        key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        exclude = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key_name))

        def kernel(keyset, *args, _device_type=device_type, _exclude=exclude):
            if cast:
                dtype = torch.get_autocast_dtype(_device_type)
                args = tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() and i not in keep
                             and a.dtype != torch.float64 and a.device.type == _device_type else a
                             for i, a in enumerate(args))
                _check_autocast_dtypes(name, [a for i, a in enumerate(args) if i not in keep], dtype)
            with torch._C._ExcludeDispatchKeyGuard(_exclude):
                return op(*args)

        _lib.impl(name, kernel, key_name, with_keyset=True)


for _cell in ("lstm", "gru", "rnn"):
    _register_autocast(f"{_cell}_forward", cast=True)
    _register_autocast(f"{_cell}_backward", cast=False)
# positions of zoneout_h, zoneout_c, recurrent_mask / zoneout_h, recurrent_mask in the ext forwards
_register_autocast("lstm_ext_forward", cast=True, keep=(10, 11, 12))
_register_autocast("gru_ext_forward", cast=True, keep=(7, 8))
_register_autocast("lstm_ext_backward", cast=False)
_register_autocast("gru_ext_backward", cast=False)


# ------------------------------------------------------------------------------ bidirectional layers
# fastrnn::{lstm,gru,rnn}_bidir_{forward,backward} are two calls of the one-direction op (forward direction,
# then reverse) in one, so that the CPU kernel can run them at once (csrc/cpu/bidir_cpu.cpp) and the CUDA kernel
# their recurrences in one persistent launch (csrc/cuda/persistent.h); the backward
# returns the input's whole gradient (both directions' parts summed) in place of two. Their arguments: the
# shared ones (input, batch_sizes; the backward's gradients of each direction first), the forward direction's,
# the reverse direction's, then the flags (csrc/fastrnn.cpp). Everything here (fakes, the kernel of devices
# without their own, autograd, the composite forward, autocast) is the one-direction op's, applied to each half.
class _Bidir:
    """How a bidirectional op's arguments and results split into its two one-direction calls.

    dir_args: how many per-direction forward arguments follow (input, batch_sizes); saved_args: the positions
    among them of those the backward op takes, and saved_outs: of the forward results it takes after them;
    n_diff: the differentiable results of a direction (output, hy[, cy]), whose gradients the backward takes;
    before_reverse: how many of the flags precede `reverse` in the one-direction schemas (the RNN's relu)."""

    def __init__(self, cell, dir_args, saved_args, saved_outs, n_diff, before_reverse, fake_fwd, fake_bwd,
                 composite_fwd):
        self.cell, self.k = cell, dir_args
        self.saved_args, self.saved_outs, self.n_diff = saved_args, saved_outs, n_diff
        self.before = before_reverse
        self.single_fwd = getattr(_ops, f"{cell}_forward")
        self.single_bwd = getattr(_ops, f"{cell}_backward")
        self.fake_fwd, self.fake_bwd, self.composite_fwd = fake_fwd, fake_bwd, composite_fwd
        self.n_out = {"lstm": 4, "gru": 3, "rnn": 2}[cell]
        self.bias_at = 4 if cell == "lstm" else 3  # b_ih among dir_args
        self.bidir_bwd = getattr(_ops, f"{cell}_bidir_backward")

    def _with_reverse(self, head, flags, reverse):
        return (*head, *flags[:self.before], reverse, *flags[self.before:])

    def forward_args(self, args):
        """The two one-direction forward calls' arguments."""
        k = self.k
        input, batch_sizes, flags = args[0], args[1], args[2 + 2 * k:]
        return tuple(self._with_reverse((input, batch_sizes, *args[2 + d * k:2 + (d + 1) * k]), flags, d == 1)
                     for d in (0, 1))

    def backward_args(self, args):
        """The two one-direction backward calls' arguments."""
        g, s = self.n_diff, len(self.saved_args) + len(self.saved_outs)
        input, batch_sizes = args[2 * g], args[2 * g + 1]
        rest, flags = args[2 * g + 2:2 * g + 2 + 2 * s], args[2 * g + 2 + 2 * s:]
        return tuple(self._with_reverse((*args[d * g:(d + 1) * g], input, batch_sizes, *rest[d * s:(d + 1) * s]),
                                        flags, d == 1) for d in (0, 1))

    def register(self):
        fwd, bwd = f"{self.cell}_bidir_forward", f"{self.cell}_bidir_backward"
        torch.library.register_fake(f"fastrnn::{fwd}", lambda *a: sum(
            (tuple(self.fake_fwd(*d)) for d in self.forward_args(a)), ()), lib=_lib)
        torch.library.register_fake(f"fastrnn::{bwd}", lambda *a: self._join_grads(
            *(self.fake_bwd(*d) for d in self.backward_args(a)), add=False), lib=_lib)
        # Devices without a kernel of their own (CPU and CUDA have theirs): the two directions in turn.
        _lib.impl(fwd, lambda *a: sum((tuple(self.single_fwd(*d)) for d in self.forward_args(a)), ()),
                  "CompositeExplicitAutograd")
        _lib.impl(bwd, lambda *a: self._join_grads(*(self.single_bwd(*d) for d in self.backward_args(a))),
                  "CompositeExplicitAutograd")
        _register_autograd(fwd, self._backward, self._setup, self._composite)
        _register_autocast(fwd, cast=True)
        _register_autocast(bwd, cast=False)

    @staticmethod
    def _join_grads(fwd, rev, add=True):
        """The bidir backward's results from the two one-direction backwards': the input's whole gradient,
        then the rest of each direction's."""
        return ((fwd[0].add_(rev[0]) if add else fwd[0]), *fwd[1:], *rev[1:])

    def _composite(self, *args):
        return sum((tuple(self.composite_fwd(*d)) for d in self.forward_args(args)), ())

    def _setup(self, ctx, inputs, output):
        k = self.k
        _no_zero_grads(ctx)
        outs = [output[d * self.n_out + i] for d in (0, 1) for i in self.saved_outs]
        ctx.save_for_backward(*inputs[:2 + 2 * k], *outs)
        ctx.flags = tuple(inputs[2 + 2 * k:])
        ctx.train = self.cell == "rnn" or ctx.flags[0]  # the RNN's backward needs no workspace
        ctx.has_bias = inputs[2 + self.bias_at] is not None

    def _backward(self, ctx, *grads):
        k, n, m = self.k, self.n_out, len(self.saved_outs)
        _require_train(ctx, f"{self.cell}_bidir_forward")
        saved = ctx.saved_tensors
        args, outs = saved[:2 + 2 * k], saved[2 + 2 * k:]
        dirs = [args[2 + d * k:2 + (d + 1) * k] for d in (0, 1)]
        diff_grads = [grads[d * n + i] for d in (0, 1) for i in range(self.n_diff)]
        if torch.is_grad_enabled():  # create_graph: differentiate the composite equations (see _lstm_backward)
            def diff_forward(*a):
                res = self._composite(*a)
                return [res[d * n + i] for d in (0, 1) for i in range(self.n_diff)]
            return _differentiable_backward(ctx, diff_forward, (*args, *ctx.flags), diff_grads)
        bwd_args = []
        for d in (0, 1):
            # the zeros for outputs left out of the loss: the output's shape, then the states' (hx, cx)
            likes = (outs[d * m], *dirs[d][:self.n_diff - 1])
            bwd_args += [_grad(g, like) for g, like in zip(diff_grads[d * self.n_diff:(d + 1) * self.n_diff], likes)]
        bwd_args += [args[0], args[1]]
        for d in (0, 1):
            bwd_args += [dirs[d][i] for i in self.saved_args] + list(outs[d * m:(d + 1) * m])
        # the backward's flags: the forward's before `reverse` (the RNN's relu), then has_bias
        res = self.bidir_bwd(*bwd_args, *ctx.flags[:self.before], ctx.has_bias)
        # the input's whole gradient, then each direction's gradients of its arguments; None where the
        # argument is absent (no bias, no w_hr)
        dir_grads = [[g if a is not None else None for g, a in zip(res[1 + d * k:1 + (d + 1) * k], dirs[d])]
                     for d in (0, 1)]
        return (res[0], None, *dir_grads[0], *dir_grads[1], *[None] * len(ctx.flags))


_BIDIR = {
    "lstm": _Bidir("lstm", 7, (0, 1, 2, 3, 6), (0, 3), 3, 0, _lstm_forward_fake, _lstm_backward_fake,
                   _lstm_composite),
    "gru": _Bidir("gru", 5, (0, 1, 2), (0, 2), 2, 0, _gru_forward_fake, _gru_backward_fake, _gru_composite),
    "rnn": _Bidir("rnn", 5, (0, 1, 2), (0,), 2, 1, _rnn_forward_fake, _rnn_backward_fake, composite.rnn_forward),
}
for _b in _BIDIR.values():
    _b.register()

# What fastrnn/modules.py calls: fwd.lstm_forward(...) etc. (_forward_call above)
fwd = SimpleNamespace(**{n: _forward_call(n) for n in (
    "lstm_forward", "gru_forward", "rnn_forward", "lstm_ext_forward", "gru_ext_forward", "lstm_bidir_forward",
    "gru_bidir_forward", "rnn_bidir_forward")})

# The public op handles, for users who drive single layers themselves.
lstm_forward = _ops.lstm_forward
lstm_backward = _ops.lstm_backward
gru_forward = _ops.gru_forward
gru_backward = _ops.gru_backward
rnn_forward = _ops.rnn_forward
rnn_backward = _ops.rnn_backward
lstm_ext_forward = _ops.lstm_ext_forward
lstm_ext_backward = _ops.lstm_ext_backward
gru_ext_forward = _ops.gru_ext_forward
gru_ext_backward = _ops.gru_ext_backward
lstm_bidir_forward = _ops.lstm_bidir_forward
lstm_bidir_backward = _ops.lstm_bidir_backward
gru_bidir_forward = _ops.gru_bidir_forward
gru_bidir_backward = _ops.gru_bidir_backward
rnn_bidir_forward = _ops.rnn_bidir_forward
rnn_bidir_backward = _ops.rnn_bidir_backward
