"""The recurrent cells in plain PyTorch, written straight from their equations.

This is the oracle the tests compare fastrnn's fused kernels against, and the documentation of the math
they compute. It is deliberately slow and simple: one step at a time, no fusion, no torch.nn recurrent
modules, no _VF. Every function is differentiable with ordinary autograd.

Conventions (those of torch.nn):

    LSTM   i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)        gates stacked i, f, g, o in W_ih/W_hh/b_*
           f = sigmoid(W_if x + b_if + W_hf h + b_hf)
           g = tanh   (W_ig x + b_ig + W_hg h + b_hg)
           o = sigmoid(W_io x + b_io + W_ho h + b_ho)
           c' = f * c + i * g
           h' = o * tanh(c')             and with a projection (proj_size > 0): h' = W_hr (o * tanh(c'))
    GRU    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)        gates stacked r, z, n
           z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
           n = tanh   (W_in x + b_in + r * (W_hn h + b_hn))
           h' = (1 - z) * n + z * h
    RNN    h' = tanh(W_ih x + b_ih + W_hh h + b_hh)          (or relu)

Modes are named as torch.nn's RNNBase does: "LSTM", "GRU", "RNN_TANH", "RNN_RELU".
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


def _affine(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """x @ w^T + b."""
    y = x @ w.t()
    return y if b is None else y + b


# --------------------------------------------------------------------------------------------------- cells
def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
              b_hh: Optional[Tensor] = None, w_hr: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One LSTM step: returns (h', c')."""
    gates = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, c_new


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None) -> Tensor:
    """One GRU step: returns h'."""
    x_r, x_z, x_n = _affine(x, w_ih, b_ih).chunk(3, dim=-1)
    h_r, h_z, h_n = _affine(h, w_hh, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def rnn_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None, nonlinearity: str = "tanh") -> Tensor:
    """One Elman RNN step: returns h'."""
    pre = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)
    if nonlinearity == "tanh":
        return torch.tanh(pre)
    if nonlinearity == "relu":
        return torch.relu(pre)
    raise ValueError(f"unknown nonlinearity {nonlinearity!r}")


def cell(mode: str, x: Tensor, h: Tensor, c: Optional[Tensor], params: Sequence[Optional[Tensor]]):
    """One step of `mode`; params = (w_ih, w_hh, b_ih, b_hh[, w_hr]). Returns (h', c' or None)."""
    w_ih, w_hh, b_ih, b_hh = params[:4]
    if mode == "LSTM":
        w_hr = params[4] if len(params) > 4 else None
        return lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
    if mode == "GRU":
        return gru_cell(x, h, w_ih, w_hh, b_ih, b_hh), None
    if mode in ("RNN_TANH", "RNN_RELU"):
        return rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, "tanh" if mode == "RNN_TANH" else "relu"), None
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


# --------------------------------------------------------------------------------------------------- layer
def _lengths(lengths, T: int, B: int) -> Tensor:
    if lengths is None:
        return torch.full((B,), T, dtype=torch.long)
    lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
    if lengths.shape != (B,) or (lengths > T).any() or (lengths < 1).any():
        raise ValueError(f"lengths must be [B={B}] with values in 1..T={T}, got {lengths.tolist()}")
    return lengths


def flip_each(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverses every sequence x[:, b] within its first lengths[b] steps; padding stays where it is."""
    T = x.shape[0]
    t = torch.arange(T).unsqueeze(1)  # [T, 1]
    idx = torch.where(t < lengths, lengths - 1 - t, t)  # [T, B]
    idx = idx.to(x.device).view(T, -1, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, idx)


def layer(mode: str, x: Tensor, lengths, h0: Tensor, c0: Optional[Tensor], params: Sequence[Optional[Tensor]],
          reverse: bool = False) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """One layer in one direction over a padded time-major batch x [T, B, I].

    Sequence b uses only its first lengths[b] steps (lengths None: all T). With reverse=True each sequence
    runs from its own last step lengths[b] - 1 back to step 0, starting from h0[b]. Returns
    (output [T, B, D] with zeros at padded positions, h_n [B, D], c_n [B, H] or None), where h_n/c_n are
    the states after each sequence's last processed step.
    """
    T, B = x.shape[0], x.shape[1]
    lengths = _lengths(lengths, T, B)
    if reverse:
        x = flip_each(x, lengths)
    h, c = h0, c0
    outputs = []
    for t in range(T):
        active = (t < lengths).to(x.device).unsqueeze(1)  # [B, 1]: does sequence b have a step t?
        h_new, c_new = cell(mode, x[t], h, c, params)
        outputs.append(torch.where(active, h_new, torch.zeros_like(h_new)))
        h = torch.where(active, h_new, h)
        if c is not None:
            c = torch.where(active, c_new, c)
    output = torch.stack(outputs)
    if reverse:
        output = flip_each(output, lengths)
    return output, h, c


# --------------------------------------------------------------------------------------------- full module
def layer_params(params: Dict[str, Tensor], layer_index: int, direction: int, bias: bool = True,
                 proj_size: int = 0) -> Tuple[Optional[Tensor], ...]:
    """(w_ih, w_hh, b_ih, b_hh, w_hr) of one layer/direction from a torch.nn-style state dict."""
    sfx = f"_l{layer_index}" + ("_reverse" if direction == 1 else "")
    get = lambda name: params.get(name + sfx)  # noqa: E731
    return (get("weight_ih"), get("weight_hh"), get("bias_ih") if bias else None, get("bias_hh") if bias else None,
            get("weight_hr") if proj_size > 0 else None)


def rnn(mode: str, x: Tensor, lengths, hx, params: Dict[str, Tensor], num_layers: int = 1,
        bidirectional: bool = False, proj_size: int = 0):
    """torch.nn.LSTM/GRU/RNN's forward (without dropout) on a padded time-major batch x [T, B, I].

    hx: None (zeros), h0 [L*D, B, H_out], or (h0, c0) for the LSTM. params: the module's state dict
    (bias is inferred from whether "bias_ih_l0" is present). Returns (output [T, B, D*H_out] zero at padded
    positions, h_n) for GRU/RNN and (output, (h_n, c_n)) for the LSTM, like torch.nn.
    """
    T, B = x.shape[0], x.shape[1]
    dirs = 2 if bidirectional else 1
    hidden = params["weight_hh_l0"].shape[1] if proj_size == 0 else params["weight_hr_l0"].shape[1]
    out_size = proj_size if proj_size > 0 else hidden
    bias = "bias_ih_l0" in params
    if hx is None:
        h0 = x.new_zeros(num_layers * dirs, B, out_size)
        c0 = x.new_zeros(num_layers * dirs, B, hidden) if mode == "LSTM" else None
    elif mode == "LSTM":
        h0, c0 = hx
    else:
        h0, c0 = hx, None
    h_n, c_n = [], []
    inp = x
    for li in range(num_layers):
        outs = []
        for d in range(dirs):
            k = li * dirs + d
            out, h, c = layer(mode, inp, lengths, h0[k], c0[k] if c0 is not None else None,
                              layer_params(params, li, d, bias, proj_size), reverse=d == 1)
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        inp = torch.cat(outs, dim=-1)
    h_n = torch.stack(h_n)
    if mode == "LSTM":
        return inp, (h_n, torch.stack(c_n))
    return inp, h_n


# ------------------------------------------------------------------------------ options beyond torch.nn
# fastrnn.LSTM/GRU's keyword options (all off by default; with them off the cells above are exactly the ones
# computed). With W x the input side and W h the recurrent side of the gates:
#
#   layer_norm (Ba et al. 2016, sec. 3.1; Haste's LayerNormLSTM/GRU): LN_ih(W_ih x) and LN_hh(W_hh h) are
#       normalised separately, each over all G*H gates of a row (eps 1e-5, biased variance, like
#       torch.nn.LayerNorm), each with its own gain and bias; the biases b_ih, b_hh are added after them.
#       LSTM:  gates = LN_ih(W_ih x) + b_ih + LN_hh(W_hh h) + b_hh;  h' = o * tanh(LN_c(c'))
#       GRU:   r, z = sigmoid(LN_ih(W_ih x)_{r,z} + b_i{r,z} + LN_hh(W_hh h)_{r,z} + b_h{r,z})
#              n    = tanh(LN_ih(W_ih x)_n + b_in + r * (LN_hh(W_hh h)_n + b_hn))
#   recurrent_dropout (Gal and Ghahramani 2016): h enters W_hh h as h * m, m one 0 or 1/(1-p) mask per
#       sequence, layer and direction, the same at every step; nothing else sees the mask (the GRU's z * h
#       and zoneout use h itself).
#   zoneout (Krueger et al. 2016): with k the weight of the previous state (a Bernoulli(p) draw per unit and
#       step in training, the constant p in eval), h' <- k * h + (1 - k) * h', and for the LSTM
#       c' <- k_c * c + (1 - k_c) * c' (h' itself is computed from the new c' before its zoneout).
#   weight_drop (DropConnect on W_hh, Merity et al. 2017): W_hh * M / (1 - p), one Bernoulli(1 - p) mask M
#       per forward call, layer and direction, in training only; the cells see the masked weight.
LN_EPS = 1e-5


def layer_norm(a: Tensor, weight: Tensor, bias: Tensor, eps: float = LN_EPS) -> Tensor:
    """LayerNorm over the last dimension, from its definition."""
    mean = a.mean(-1, keepdim=True)
    var = ((a - mean) ** 2).mean(-1, keepdim=True)
    return (a - mean) / torch.sqrt(var + eps) * weight + bias


def _mix(k: Optional[Tensor], prev: Tensor, new: Tensor) -> Tensor:
    return new if k is None else k * prev + (1 - k) * new


def lstm_ext_cell(gx: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, w_hr: Optional[Tensor] = None,
                  ln_hh: Optional[Tuple[Tensor, Tensor]] = None, ln_c: Optional[Tuple[Tensor, Tensor]] = None,
                  k_h: Optional[Tensor] = None, k_c: Optional[Tensor] = None,
                  m_rec: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One step of the LSTM with fastrnn's options, from its input-side gates gx = LN_ih(W_ih x) + b_ih + b_hh
    (what fastrnn::lstm_ext_forward takes): returns (h', c'). ln_*: (weight, bias); k_*: zoneout weights of the
    previous state; m_rec: the recurrent dropout mask."""
    a = (h if m_rec is None else h * m_rec) @ w_hh.t()
    if ln_hh is not None:
        a = layer_norm(a, *ln_hh)
    i, f, g, o = (gx + a).chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new if ln_c is None else layer_norm(c_new, *ln_c))
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return _mix(k_h, h, h_new), _mix(k_c, c, c_new)


def gru_ext_cell(gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Optional[Tensor] = None,
                 ln_hh: Optional[Tuple[Tensor, Tensor]] = None, k_h: Optional[Tensor] = None,
                 m_rec: Optional[Tensor] = None) -> Tensor:
    """One step of the GRU with fastrnn's options, from gx = LN_ih(W_ih x) + b_ih (what fastrnn::gru_ext_forward
    takes): returns h'."""
    a = (h if m_rec is None else h * m_rec) @ w_hh.t()
    if ln_hh is not None:
        a = layer_norm(a, *ln_hh)
    if b_hh is not None:
        a = a + b_hh
    x_r, x_z, x_n = gx.chunk(3, dim=-1)
    h_r, h_z, h_n = a.chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return _mix(k_h, h, (1 - z) * n + z * h)


def input_gates(mode: str, x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                ln_ih: Optional[Tuple[Tensor, Tensor]]) -> Tensor:
    """The input side gx of lstm_ext_cell / gru_ext_cell: LN_ih(W_ih x) + b_ih (+ b_hh for the LSTM)."""
    a = x @ w_ih.t()
    if ln_ih is not None:
        a = layer_norm(a, *ln_ih)
    if b_ih is not None:
        a = a + b_ih
    if mode == "LSTM" and b_hh is not None:
        a = a + b_hh
    return a
