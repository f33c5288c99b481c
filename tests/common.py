"""What the fastrnn tests share: devices, dtypes, the tolerances (stated once, here), and helpers that run a
recurrent module (or the reference) on one configuration and collect outputs and gradients."""
from __future__ import annotations

import itertools
from typing import Dict, List

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import reference

devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Dtypes compared directly against torch.nn / the reference, and the reduced-precision ones compared against
# a float32 computation.
dtypes = [torch.float32, torch.float64]
half_dtypes = [torch.bfloat16]
# (dtype, device) pairs for the reduced-precision tests: float16 runs on CUDA only.
half_pairs = [(torch.bfloat16, d) for d in devices] + [(torch.float16, d) for d in devices if d == "cuda"]

# Tolerances, once per dtype. Largest errors measured on CPU over the parity grid (tests/common.py CASES):
#   float64 vs fastrnn.reference: outputs 4e-16 abs, gradients 9e-15 abs (on values up to ~16)
#   float32 vs torch.nn:          outputs 5e-7 abs,  gradients 2.4e-6 abs (on values up to ~6)
#   bfloat16 vs torch.nn float32 on the same rounded weights/inputs: outputs 8e-3 abs, gradients 1.1e-2 of
#     their largest magnitude (torch.nn's own bfloat16 path is off by about as much: 1.3e-2 / 1.8e-2)
TOL: Dict[torch.dtype, Dict[str, float]] = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=5e-3, atol=5e-3),
}

MODES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]

# The CPU pointwise kernels' instruction-set variants, chosen per call by FASTRNN_CPU_CAPABILITY (a variant the
# processor lacks falls back to the best it has) with FASTRNN_CPU_FAST_MATH, and hidden sizes around their widths.
CPU_CAPABILITIES = ["default", "avx2", "avx512"]
CAPABILITY_HIDDEN = (3, 8, 13)


def use_cpu_capability(monkeypatch, capability: str, fast_math: str) -> None:
    monkeypatch.setenv("FASTRNN_CPU_CAPABILITY", capability)
    monkeypatch.setenv("FASTRNN_CPU_FAST_MATH", fast_math)


def assert_close(actual, expected, dtype: torch.dtype, msg: str = "") -> None:
    """Compares with TOL[dtype]; expected may be of a wider dtype (it is compared in that dtype)."""
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.to(expected.dtype), expected, **TOL[dtype], equal_nan=True,
                               msg=lambda m: f"{msg}: {m}")


def assert_close_scaled(actual, expected, dtype: torch.dtype, msg: str = "") -> None:
    """assert_close relative to the largest magnitude of expected (at least 1): for gradients that are sums
    over many rows (weights, biases), whose rounding error grows with that magnitude and the row count."""
    scale = expected.abs().max().clamp_min(1.0) if expected.numel() else 1.0
    assert_close(actual.to(expected.dtype) / scale, expected / scale, dtype, msg)


def module_classes(mode: str):
    """(fastrnn class, torch.nn class, extra constructor kwargs) for a mode name."""
    return {
        "LSTM": (fastrnn.LSTM, nn.LSTM, {}),
        "GRU": (fastrnn.GRU, nn.GRU, {}),
        "RNN_TANH": (fastrnn.RNN, nn.RNN, {"nonlinearity": "tanh"}),
        "RNN_RELU": (fastrnn.RNN, nn.RNN, {"nonlinearity": "relu"}),
    }[mode]


def make_pair(mode: str, input_size: int, hidden_size: int, dtype=torch.float32, device="cpu", **kw):
    """A fastrnn module and a torch.nn module of the same configuration holding the same weights."""
    fast_cls, ref_cls, extra = module_classes(mode)
    kw = {**extra, **kw}
    fast = fast_cls(input_size, hidden_size, **kw).to(device=device, dtype=dtype)
    ref = ref_cls(input_size, hidden_size, **kw).to(device=device, dtype=dtype)
    ref.load_state_dict(fast.state_dict(), strict=True)
    return fast, ref


# ------------------------------------------------------------------------------------- configurations
class Case:
    """One module configuration and input shape. lengths (list) => packed input with those lengths."""

    def __init__(self, name, T=5, B=3, I=7, H=13, num_layers=1, bidirectional=False, proj_size=0,
                 batch_first=False, bias=True, lengths=None, batched=True, hx=False):
        self.name, self.T, self.B, self.I, self.H = name, T, B, I, H
        self.num_layers, self.bidirectional, self.proj_size = num_layers, bidirectional, proj_size
        self.batch_first, self.bias, self.lengths, self.batched, self.hx = batch_first, bias, lengths, batched, hx
        if lengths is not None:
            assert len(lengths) == B and max(lengths) == T
        if not batched:
            assert B == 1 and lengths is None

    def __repr__(self):
        return self.name

    @property
    def module_kwargs(self):
        kw = dict(num_layers=self.num_layers, bidirectional=self.bidirectional, batch_first=self.batch_first,
                  bias=self.bias)
        if self.proj_size:
            kw["proj_size"] = self.proj_size
        return kw


# A pairwise-style grid: every option appears with several others, not the full cartesian product.
CASES = [
    Case("base"),
    Case("T1_B1", T=1, B=1),
    Case("T1_B1_unbatched", T=1, B=1, batched=False),
    Case("2layer_bidir_batchfirst", num_layers=2, bidirectional=True, batch_first=True),
    Case("3layer_bidir_packed_hx", T=6, B=4, num_layers=3, bidirectional=True, lengths=[3, 6, 1, 4], hx=True),
    Case("2layer_nobias_packed_batchfirst", T=4, B=3, num_layers=2, bias=False, batch_first=True,
         lengths=[2, 1, 4]),
    Case("unbatched_bidir_hx", T=4, B=1, bidirectional=True, batched=False, hx=True),
    Case("unbatched_2layer_batchfirst", T=3, B=1, num_layers=2, batched=False, batch_first=True),
    Case("bidir_packed_all_len1", T=1, B=3, bidirectional=True, lengths=[1, 1, 1], hx=True),
    Case("packed_B1", T=5, B=1, num_layers=2, lengths=[5]),
    Case("odd_sizes_nobias_hx", T=9, B=5, I=3, H=17, bias=False, hx=True),
]
LSTM_CASES = [
    Case("proj_base", proj_size=5),
    Case("proj_2layer_bidir_packed_hx", T=5, B=4, num_layers=2, bidirectional=True, proj_size=4,
         lengths=[5, 2, 1, 3], hx=True),
    Case("proj_unbatched_bidir_hx", T=3, B=1, bidirectional=True, proj_size=6, batched=False, hx=True),
    Case("proj_nobias_batchfirst_3layer", T=4, B=2, num_layers=3, proj_size=3, bias=False, batch_first=True),
]


def mode_cases():
    """(mode, case) pairs: every case for every mode, plus the projection cases for the LSTM."""
    return [(m, c) for m, c in itertools.product(MODES, CASES)] + [("LSTM", c) for c in LSTM_CASES]


def mode_case_id(p):
    return repr(p) if isinstance(p, Case) else str(p)


# ------------------------------------------------------------------------------------------ running
def make_inputs(mode: str, case: Case, dtype, device, seed=0):
    """Leaf tensors for one case: x in the module's input layout, and h0/c0 (or None)."""
    g = torch.Generator().manual_seed(seed)
    shape = (case.T, case.B, case.I) if not case.batch_first else (case.B, case.T, case.I)
    if not case.batched:
        shape = (case.T, case.I)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()
    h0 = c0 = None
    if case.hx:
        dirs = 2 if case.bidirectional else 1
        out = case.proj_size or case.H
        hs = (case.num_layers * dirs, case.B, out)
        cs = (case.num_layers * dirs, case.B, case.H)
        if not case.batched:
            hs, cs = (hs[0], hs[2]), (cs[0], cs[2])
        h0 = torch.randn(hs, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()
        if mode == "LSTM":
            c0 = torch.randn(cs, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()
    return x, h0, c0


def module_input(case: Case, x):
    if case.lengths is None:
        return x
    return pack_padded_sequence(x, torch.tensor(case.lengths), batch_first=case.batch_first, enforce_sorted=False)


def module_hx(mode, h0, c0):
    if h0 is None:
        return None
    return (h0, c0) if mode == "LSTM" else h0


def flatten_outputs(mode, result) -> List[torch.Tensor]:
    """[output (packed data if packed), h_n(, c_n)] of a module's return value."""
    out, hx = result
    out = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    return [out, *hx] if mode == "LSTM" else [out, hx]


def loss_of(outputs: List[torch.Tensor], seed=1) -> torch.Tensor:
    """A scalar touching every element of every output with a random (seeded, shape-determined) weight."""
    g = torch.Generator().manual_seed(seed)
    total = 0
    for o in outputs:
        w = torch.randn(o.shape, generator=g, dtype=torch.float64).to(device=o.device, dtype=o.dtype)
        total = total + (o * w).sum()
    return total


def run_module(mode, module, case: Case, x, h0, c0, grads=True):
    """Runs module on the case's input; returns (named outputs, named gradients) as float tensors."""
    outputs = flatten_outputs(mode, module(module_input(case, x), module_hx(mode, h0, c0)))
    names = ["output", "h_n", "c_n"][: len(outputs)]
    res = dict(zip(names, outputs))
    if not grads:
        return res, {}
    leaves = {"x": x}
    if h0 is not None:
        leaves["h0"] = h0
    if c0 is not None:
        leaves["c0"] = c0
    leaves.update(dict(module.named_parameters()))
    gs = torch.autograd.grad(loss_of(outputs), list(leaves.values()))
    return res, dict(zip(leaves, gs))


def run_reference(mode, module, case: Case, x, h0, c0):
    """The reference forward (fastrnn.reference.rnn) on the case's input, with module's parameters; returns
    outputs and gradients in the same layout run_module does."""
    xt = x
    if not case.batched:
        xt = x.unsqueeze(1)
    elif case.batch_first:
        xt = x.transpose(0, 1)
    ht = h0.unsqueeze(1) if (h0 is not None and not case.batched) else h0
    ct = c0.unsqueeze(1) if (c0 is not None and not case.batched) else c0
    params = dict(module.named_parameters())
    out, hx = reference.rnn(mode, xt, case.lengths, module_hx(mode, ht, ct), params, case.num_layers,
                            case.bidirectional, case.proj_size)
    states = list(hx) if mode == "LSTM" else [hx]
    if case.lengths is not None:
        out = pack_padded_sequence(out, torch.tensor(case.lengths), enforce_sorted=False).data
    elif not case.batched:
        out = out.squeeze(1)
    elif case.batch_first:
        out = out.transpose(0, 1)
    if not case.batched:
        states = [s.squeeze(1) for s in states]
    outputs = [out, *states]
    res = dict(zip(["output", "h_n", "c_n"], outputs))
    leaves = {"x": x}
    if h0 is not None:
        leaves["h0"] = h0
    if c0 is not None:
        leaves["c0"] = c0
    leaves.update(params)
    gs = torch.autograd.grad(loss_of(outputs), list(leaves.values()))
    return res, dict(zip(leaves, gs))


def compare(actual: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor], dtype, what=""):
    assert actual.keys() == expected.keys(), f"{what}: {sorted(actual)} != {sorted(expected)}"
    for k in expected:
        assert_close(actual[k], expected[k], dtype, f"{what} {k}")
