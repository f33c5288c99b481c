"""The benchmark's peers for fastrnn's options beyond torch.nn (issue 10): what a user writes today without
fastrnn, a Python loop over the time steps in plain PyTorch.

torch.nn has no layer-normalised LSTM or GRU and no zoneout (PyTorch issue #6760); the usual workaround is the
one of PyTorch's own benchmarks (benchmarks/fastrnns/custom_lstms.py, LayerNormLSTMCell) and of Haste's
LayerNormLSTM: the input side's GEMM of all steps at once, then per step the recurrent GEMM, layer norm of
W_ih x and of W_hh h separately (each over all the gates of a row, with its own gain and bias), the gate
nonlinearities, layer norm of c inside h = o * tanh(LN(c)) (Haste's form, where the carried c is not
normalised), and zoneout (Krueger et al. 2016) as a mix of the previous and the new state. These modules
compute exactly the equations of fastrnn/reference.py's "options beyond torch.nn" section, so that
`load_from(fastrnn_module)` makes both sides compute the same function and the benchmark can check parity
before it times anything.

    peer = HandwrittenLSTM(256, 256, layer_norm=True, zoneout=0.1)
    peer.load_from(fastrnn.LSTM(256, 256, layer_norm=True, zoneout=0.1))
    out, (h_n, c_n) = peer(x)          # x: [T, B, I]; h_n, c_n: [1, B, H]

Single layer, unidirectional, batch_first=False, with biases: what the benchmark's cases need.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-5  # torch.nn.LayerNorm's default, and fastrnn.reference.LN_EPS

# What load_from copies (those the module has), in this order unless the source module orders them otherwise.
PARAM_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "ln_ih_weight_l0", "ln_ih_bias_l0",
               "ln_hh_weight_l0", "ln_hh_bias_l0", "ln_c_weight_l0", "ln_c_bias_l0")


def _at(k, t: int):
    """Step t's zoneout weights: a row of the drawn masks, or the constant (eval) or None as it is."""
    return k[t] if torch.is_tensor(k) else k


class _HandwrittenRNN(nn.Module):
    GATES = 0
    HAS_CELL = False

    def __init__(self, input_size: int, hidden_size: int, *, layer_norm: bool = False, zoneout: float = 0.0,
                 weight_drop: float = 0.0, recurrent_dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        for name, p in (("zoneout", zoneout), ("weight_drop", weight_drop),
                        ("recurrent_dropout", recurrent_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.layer_norm, self.zoneout = bool(layer_norm), float(zoneout)
        self.weight_drop, self.recurrent_dropout = float(weight_drop), float(recurrent_dropout)
        G, H = self.GATES * hidden_size, hidden_size
        kw = dict(device=device, dtype=dtype)
        self.weight_ih_l0 = nn.Parameter(torch.empty(G, input_size, **kw))
        self.weight_hh_l0 = nn.Parameter(torch.empty(G, H, **kw))
        self.bias_ih_l0 = nn.Parameter(torch.empty(G, **kw))
        self.bias_hh_l0 = nn.Parameter(torch.empty(G, **kw))
        if self.layer_norm:
            self.ln_ih_weight_l0 = nn.Parameter(torch.ones(G, **kw))
            self.ln_ih_bias_l0 = nn.Parameter(torch.zeros(G, **kw))
            self.ln_hh_weight_l0 = nn.Parameter(torch.ones(G, **kw))
            self.ln_hh_bias_l0 = nn.Parameter(torch.zeros(G, **kw))
            if self.HAS_CELL:
                self.ln_c_weight_l0 = nn.Parameter(torch.ones(H, **kw))
                self.ln_c_bias_l0 = nn.Parameter(torch.zeros(H, **kw))
        bound = 1.0 / math.sqrt(hidden_size)  # torch.nn's initialisation of the weights and biases
        for p in (self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0):
            nn.init.uniform_(p, -bound, bound)

    @property
    def random_in_training(self) -> bool:
        """Whether a training-mode call draws random masks (the benchmark checks parity in eval mode then)."""
        return self.zoneout > 0 or self.weight_drop > 0 or self.recurrent_dropout > 0

    @property
    def rounding_amplified(self) -> bool:
        """Layer norm makes the recurrence non-contractive, so float32 rounding grows along the sequence on
        both sides: the benchmark judges parity against float64 then (measure.check_parity)."""
        return self.layer_norm

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name in ("layer_norm", "zoneout", "weight_drop", "recurrent_dropout"):
            if getattr(self, name):
                s += f", {name}={getattr(self, name)}"
        return s

    @torch.no_grad()
    def load_from(self, module: nn.Module) -> "_HandwrittenRNN":
        """Copies the parameters of a fastrnn (or torch.nn) module of the same kind and sizes, single layer:
        weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0 and, with layer_norm, ln_ih_*_l0, ln_hh_*_l0 (and
        the LSTM's ln_c_*_l0). Also takes the source's parameter order, so that both modules list their
        parameters (and the benchmark their gradients) in the same order. Returns self."""
        src = dict(module.named_parameters())
        mine = dict(self.named_parameters())
        missing = [n for n in mine if n not in src]
        if missing:
            raise ValueError(f"load_from: {type(module).__name__} has no parameter(s) {', '.join(missing)} "
                             f"(layer_norm={self.layer_norm}); build it with the same options")
        for n, p in mine.items():
            if src[n].shape != p.shape:
                raise ValueError(f"load_from: {n} has shape {tuple(src[n].shape)}, expected {tuple(p.shape)}")
            p.copy_(src[n])
        order = [n for n in src if n in mine] + [n for n in mine if n not in src]
        self._parameters = type(self._parameters)((n, self._parameters[n]) for n in order)
        return self

    def _ln(self, a: Tensor, which: str) -> Tensor:
        return F.layer_norm(a, (a.shape[-1],), getattr(self, f"ln_{which}_weight_l0"),
                            getattr(self, f"ln_{which}_bias_l0"), LN_EPS)

    def _masks(self, T: int, h: Tensor, n: int):
        """Zoneout weights of the previous state: n tensors [T, B, H] of Bernoulli(p) draws in training (drawn
        up front, one RNG call each), the constant p in eval; None without zoneout."""
        if not self.zoneout:
            return [None] * n
        if self.training:
            return [torch.empty((T,) + tuple(h.shape), dtype=h.dtype, device=h.device).bernoulli_(self.zoneout)
                    for _ in range(n)]
        return [self.zoneout] * n

    def _recurrent_inputs(self, h: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """(W_hh, recurrent dropout mask or None): DropConnect on W_hh once per call, a variational mask on the
        h entering W_hh h; both in training only."""
        w_hh = self.weight_hh_l0
        if self.training and self.weight_drop:
            w_hh = F.dropout(w_hh, self.weight_drop, training=True)
        m = None
        if self.training and self.recurrent_dropout:
            m = F.dropout(torch.ones_like(h), self.recurrent_dropout, training=True)
        return w_hh, m

    @staticmethod
    def _mix(k, prev: Tensor, new: Tensor) -> Tensor:
        return new if k is None else k * prev + (1 - k) * new

    def _input_gates(self, x: Tensor) -> Tensor:
        """LN_ih(W_ih x) + b_ih of every step at once: one GEMM of T*B rows, as a careful user writes it."""
        a = F.linear(x, self.weight_ih_l0)
        if self.layer_norm:
            a = self._ln(a, "ih")
        return a + self.bias_ih_l0

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"expected input [T, B, {self.input_size}], got {tuple(x.shape)}")

    def _zero_state(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[1], self.hidden_size, dtype=x.dtype, device=x.device)


class HandwrittenLSTM(_HandwrittenRNN):
    """LayerNorm LSTM with zoneout in a Python loop (PyTorch's custom_lstms.LayerNormLSTMCell, Haste's
    LayerNormLSTM), per step:

        gates = LN_ih(W_ih x) + b_ih + LN_hh(W_hh h) + b_hh          (i, f, g, o)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(LN_c(c'))
        h <- k_h * h + (1 - k_h) * h',  c <- k_c * c + (1 - k_c) * c'   (zoneout; k ~ Bernoulli(p), p in eval)

    forward(x [T, B, I], hx=None or (h0, c0) [1, B, H]) -> (output [T, B, H], (h_n, c_n) [1, B, H])."""
    GATES = 4
    HAS_CELL = True

    def forward(self, x: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None):
        self._check_input(x)
        T = x.shape[0]
        if hx is None:
            h = c = self._zero_state(x)
        else:
            h, c = hx[0].squeeze(0), hx[1].squeeze(0)
        gx = self._input_gates(x) + self.bias_hh_l0
        k_h, k_c = self._masks(T, h, 2)
        w_hh, m = self._recurrent_inputs(h)
        outputs = []
        for t in range(T):
            a = F.linear(h if m is None else h * m, w_hh)
            if self.layer_norm:
                a = self._ln(a, "hh")
            i, f, g, o = (gx[t] + a).chunk(4, dim=-1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(self._ln(c_new, "c") if self.layer_norm else c_new)
            h = self._mix(_at(k_h, t), h, h_new)
            c = self._mix(_at(k_c, t), c, c_new)
            outputs.append(h)
        return torch.stack(outputs), (h.unsqueeze(0), c.unsqueeze(0))


class HandwrittenGRU(_HandwrittenRNN):
    """LayerNorm GRU with zoneout in a Python loop (Haste's LayerNormGRU form, torch.nn's gate order), per step:

        r = sigmoid(LN_ih(W_ih x)_r + b_ir + LN_hh(W_hh h)_r + b_hr),  z likewise
        n = tanh(LN_ih(W_ih x)_n + b_in + r * (LN_hh(W_hh h)_n + b_hn))
        h' = (1 - z) * n + z * h;   h <- k * h + (1 - k) * h'   (zoneout)

    forward(x [T, B, I], hx=None or h0 [1, B, H]) -> (output [T, B, H], h_n [1, B, H])."""
    GATES = 3

    def forward(self, x: Tensor, hx: Optional[Tensor] = None):
        self._check_input(x)
        T = x.shape[0]
        h = self._zero_state(x) if hx is None else hx.squeeze(0)
        gx = self._input_gates(x)
        (k_h,) = self._masks(T, h, 1)
        w_hh, m = self._recurrent_inputs(h)
        outputs = []
        for t in range(T):
            a = F.linear(h if m is None else h * m, w_hh)
            if self.layer_norm:
                a = self._ln(a, "hh")
            a = a + self.bias_hh_l0
            x_r, x_z, x_n = gx[t].chunk(3, dim=-1)
            h_r, h_z, h_n = a.chunk(3, dim=-1)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * h_n)
            h_new = (1 - z) * n + z * h
            h = self._mix(_at(k_h, t), h, h_new)
            outputs.append(h)
        return torch.stack(outputs), h.unsqueeze(0)


PEERS = {"lstm": HandwrittenLSTM, "gru": HandwrittenGRU}


# ------------------------------------------------------------------------------------------- benchmark
def build_pair(case, device: str, dtype: torch.dtype, seed: int = 0):
    """measure.build_pair for a case with fastrnn options (case.options): (hand-written peer, fastrnn module
    with the options, input, upstream grad). The fastrnn module is built first (torch.nn's initialisation),
    its layer-norm gains and biases are moved off 1 and 0 (so that parity sees them), and the peer loads
    its parameters with load_from."""
    import fastrnn

    if case.layers != 1 or case.bidirectional or case.packed:
        raise ValueError(f"{case.name}: the hand-written peers are single-layer, unidirectional, unpacked")
    opts: Dict[str, object] = dict(case.options)
    shape = case.shape(device)
    T, B, I, H = shape["T"], shape["B"], shape["I"], shape["H"]
    fast_cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[case.kind]
    torch.manual_seed(seed)
    fast = fast_cls(I, H, **opts).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in fast.named_parameters():
            if n.startswith("ln_"):
                p.add_((0.1 * torch.randn(p.shape, generator=gen)).to(device=device, dtype=dtype))
    peer = PEERS[case.kind](I, H, **opts).to(device=device, dtype=dtype)
    peer.load_from(fast)
    x = torch.randn(T, B, I, generator=gen).to(device=device, dtype=dtype)
    grad = torch.randn(T, B, H, generator=gen).to(device=device, dtype=dtype)
    return peer, fast, x, grad
