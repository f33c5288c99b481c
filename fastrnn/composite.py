"""The fastrnn:: forward ops written in plain, differentiable PyTorch (the equations of fastrnn/reference.py
in the ops' own sequence layout: dense [T, B, I] or packed [N, I] with batch_sizes, either direction).

The fused kernels compute first derivatives only. Whatever autograd needs beyond that runs through these
functions instead, so that it gets exact values rather than silently wrong ones:
  - double backward (`create_graph=True`: gradient penalties, Hessian-vector products, meta-learning):
    the registered backward recomputes the layer here and differentiates it under autograd;
  - torch.func transforms (grad, jvp, jacfwd/jacrev, hessian, vmap) and forward-mode AD
    (torch.autograd.forward_ad), which the C++ kernels do not implement: the op's autograd kernel sends
    such calls here (see fastrnn/ops.py).
These paths are slow (one small op per step and gate): correctness, not speed, is their job.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import reference


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype gates, cell states and saved activations are computed in (fp32 for half types)."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _steps(input: Tensor, batch_sizes: Optional[Tensor]) -> Tuple[List[int], List[int]]:
    """(rows per step, first row of each step) of the op's layout."""
    if batch_sizes is None:
        T, B = input.shape[0], input.shape[1]
        return [B] * T, [t * B for t in range(T)]
    sizes = [int(b) for b in batch_sizes.tolist()]
    offsets, acc = [], 0
    for b in sizes:
        offsets.append(acc)
        acc += b
    return sizes, offsets


def sequence(mode: str, input: Tensor, batch_sizes: Optional[Tensor], hx: Tensor, cx: Optional[Tensor],
             params: Sequence[Optional[Tensor]], reverse: bool) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """One layer in one direction over a whole sequence, as the forward op computes it: returns
    (output, h_n, c_n or None) in the input's dtype, computed in the accumulation dtype.

    Sequence b is active at step t while batch_sizes[t] > b (the first batch_sizes[t] rows of the state);
    the other rows keep their state, so in reverse every sequence starts from hx[b] at its own last step.
    """
    dtype, acc = input.dtype, accumulation_dtype(input.dtype)
    up = lambda t: None if t is None else t.to(acc)  # noqa: E731
    params = [up(p) for p in params]
    rows = input.reshape(-1, input.shape[-1]).to(acc)
    h, c = up(hx), up(cx)
    sizes, offsets = _steps(input, batch_sizes)
    outs: List[Optional[Tensor]] = [None] * len(sizes)
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    for t in order:
        n = sizes[t]
        x_t = rows[offsets[t]:offsets[t] + n]
        h_new, c_new = reference.cell(mode, x_t, h[:n], None if c is None else c[:n], params)
        outs[t] = h_new
        h = h_new if n == h.shape[0] else torch.cat([h_new, h[n:]])
        if c is not None:
            c = c_new if n == c.shape[0] else torch.cat([c_new, c[n:]])
    out = torch.cat(outs) if outs else rows.new_empty((0, h.shape[-1]))
    if batch_sizes is None:
        out = out.view(input.shape[0], input.shape[1], h.shape[-1])
    return out.to(dtype), h.to(dtype), None if c is None else c.to(dtype)


def lstm_forward(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    return sequence("LSTM", input, batch_sizes, hx, cx, (w_ih, w_hh, b_ih, b_hh, w_hr), reverse)


def gru_forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse):
    return sequence("GRU", input, batch_sizes, hx, None, (w_ih, w_hh, b_ih, b_hh), reverse)[:2]


def rnn_forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse):
    mode = "RNN_RELU" if relu else "RNN_TANH"
    return sequence(mode, input, batch_sizes, hx, None, (w_ih, w_hh, b_ih, b_hh), reverse)[:2]


# ---------------------------------------------------------------------------- the ops of fastrnn's options
def _rows_of(t: Optional[Tensor], n_rows: int) -> Optional[Tensor]:
    """A zoneout weight as [N, D] rows (a one-element tensor, the eval constant, stays as it is)."""
    if t is None or t.numel() == 1:
        return t
    return t.reshape(n_rows, t.shape[-1])


def ext_sequence(mode: str, gates_x: Tensor, batch_sizes: Optional[Tensor], hx: Tensor, cx: Optional[Tensor],
                 w_hh: Tensor, w_hr: Optional[Tensor], b_hh: Optional[Tensor], ln_hh, ln_c,
                 zoneout_h: Optional[Tensor], zoneout_c: Optional[Tensor], recurrent_mask: Optional[Tensor],
                 reverse: bool) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """fastrnn::lstm_ext_forward / gru_ext_forward in plain PyTorch (reference.lstm_ext_cell / gru_ext_cell per
    step, in the ops' layout): returns (output, h_n, c_n or None) in the input's dtype, computed in the
    accumulation dtype. ln_hh, ln_c: (weight, bias) or None."""
    dtype, acc = gates_x.dtype, accumulation_dtype(gates_x.dtype)
    up = lambda t: None if t is None else t.to(acc)  # noqa: E731
    up2 = lambda p: None if p is None else (up(p[0]), up(p[1]))  # noqa: E731
    w_hh, w_hr, b_hh, ln_hh, ln_c = up(w_hh), up(w_hr), up(b_hh), up2(ln_hh), up2(ln_c)
    rows = gates_x.reshape(-1, gates_x.shape[-1]).to(acc)
    n_rows = rows.shape[0]
    k_h, k_c, m = up(_rows_of(zoneout_h, n_rows)), up(_rows_of(zoneout_c, n_rows)), up(recurrent_mask)
    h, c = up(hx), up(cx)
    sizes, offsets = _steps(gates_x, batch_sizes)
    outs: List[Optional[Tensor]] = [None] * len(sizes)
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    for t in order:
        n, o = sizes[t], offsets[t]
        sl = lambda k: None if k is None else (k if k.numel() == 1 else k[o:o + n])  # noqa: E731
        m_t = None if m is None else m[:n]
        if mode == "LSTM":
            h_new, c_new = reference.lstm_ext_cell(rows[o:o + n], h[:n], c[:n], w_hh, w_hr, ln_hh, ln_c, sl(k_h),
                                                   sl(k_c), m_t)
        else:
            h_new, c_new = reference.gru_ext_cell(rows[o:o + n], h[:n], w_hh, b_hh, ln_hh, sl(k_h), m_t), None
        outs[t] = h_new
        h = h_new if n == h.shape[0] else torch.cat([h_new, h[n:]])
        if c is not None:
            c = c_new if n == c.shape[0] else torch.cat([c_new, c[n:]])
    out = torch.cat(outs)
    if batch_sizes is None:
        out = out.view(*gates_x.shape[:2], h.shape[-1])
    return out.to(dtype), h.to(dtype), None if c is None else c.to(dtype)


def _pair(w: Optional[Tensor], b: Optional[Tensor]):
    return None if w is None else (w, b)


def lstm_ext_forward(gates_x, batch_sizes, hx, cx, w_hh, w_hr, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias,
                     zoneout_h, zoneout_c, recurrent_mask, reverse):
    return ext_sequence("LSTM", gates_x, batch_sizes, hx, cx, w_hh, w_hr, None, _pair(ln_hh_weight, ln_hh_bias),
                        _pair(ln_c_weight, ln_c_bias), zoneout_h, zoneout_c, recurrent_mask, reverse)


def gru_ext_forward(gates_x, batch_sizes, hx, w_hh, b_hh, ln_hh_weight, ln_hh_bias, zoneout_h, recurrent_mask,
                    reverse):
    return ext_sequence("GRU", gates_x, batch_sizes, hx, None, w_hh, None, b_hh, _pair(ln_hh_weight, ln_hh_bias),
                        None, zoneout_h, None, recurrent_mask, reverse)[:2]
