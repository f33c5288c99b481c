"""fastrnn.LSTM/GRU/RNN and the cells against torch.nn (same weights) and against fastrnn.reference:
outputs, final states, and the gradients of the input, the initial states and every parameter."""
import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import reference
from common import (Case, assert_close, assert_close_scaled, compare, devices, half_pairs, make_inputs, make_pair,
                    mode_case_id, mode_cases, run_module, run_reference)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("mode,case", mode_cases(), ids=mode_case_id)
def test_parity_float32_vs_torch_nn(mode, case, device):
    dtype = torch.float32
    fast, ref = make_pair(mode, case.I, case.H, dtype, device, **case.module_kwargs)
    x, h0, c0 = make_inputs(mode, case, dtype, device)
    out_f, grad_f = run_module(mode, fast, case, x, h0, c0)
    out_r, grad_r = run_module(mode, ref, case, x, h0, c0)
    compare(out_f, out_r, dtype, "output")
    compare(grad_f, grad_r, dtype, "grad")


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("mode,case", mode_cases(), ids=mode_case_id)
def test_parity_float64_vs_reference(mode, case, device):
    dtype = torch.float64
    fast, _ = make_pair(mode, case.I, case.H, dtype, device, **case.module_kwargs)
    x, h0, c0 = make_inputs(mode, case, dtype, device)
    out_f, grad_f = run_module(mode, fast, case, x, h0, c0)
    out_r, grad_r = run_reference(mode, fast, case, x, h0, c0)
    compare(out_f, out_r, dtype, "output")
    compare(grad_f, grad_r, dtype, "grad")


@pytest.mark.parametrize("mode,case", mode_cases()[::3], ids=mode_case_id)
def test_reference_matches_torch_nn_float64(mode, case):
    """The oracle itself: fastrnn.reference.rnn agrees with torch.nn in float64."""
    dtype = torch.float64
    fast, ref = make_pair(mode, case.I, case.H, dtype, "cpu", **case.module_kwargs)
    x, h0, c0 = make_inputs(mode, case, dtype, "cpu")
    out_ref, grad_ref = run_reference(mode, ref, case, x, h0, c0)
    out_nn, grad_nn = run_module(mode, ref, case, x, h0, c0)
    compare(out_ref, out_nn, dtype, "output")
    compare(grad_ref, grad_nn, dtype, "grad")


@pytest.mark.parametrize("dtype,device", half_pairs, ids=str)
@pytest.mark.parametrize("mode,case", mode_cases(), ids=mode_case_id)
def test_parity_half_vs_float32(mode, case, dtype, device):
    """bfloat16 (and float16 on CUDA) against torch.nn in float32 on the same, already rounded, weights and
    inputs: only the rounding of the intermediate results differs."""
    fast, ref = make_pair(mode, case.I, case.H, dtype, device, **case.module_kwargs)
    ref = ref.float()
    ref.load_state_dict({k: v.float() for k, v in fast.state_dict().items()})
    x, h0, c0 = make_inputs(mode, case, dtype, device)
    out_f, grad_f = run_module(mode, fast, case, x, h0, c0)
    for t, name in ((out_f, "outputs"), (grad_f, "grads")):
        for k, v in t.items():
            assert v.dtype == dtype, f"{name} {k} has dtype {v.dtype}"
    x32, h32, c32 = (t.detach().float().requires_grad_() if t is not None else None for t in (x, h0, c0))
    out_r, grad_r = run_module(mode, ref, case, x32, h32, c32)
    compare(out_f, out_r, dtype, "output")
    if mode == "RNN_RELU":
        # A pre-activation near 0 rounds to the other side of the kink and switches a whole row of the
        # gradient on or off: torch.nn's own bfloat16 gradients miss float32's by up to 20% of their scale.
        return
    # Gradients are sums over steps and batch of rounded products: compare them relative to their scale.
    for k in grad_r:
        assert_close_scaled(grad_f[k], grad_r[k], dtype, f"grad {k}")


# --------------------------------------------------------------------------------------------- cells
CELLS = {
    "LSTMCell": (fastrnn.LSTMCell, nn.LSTMCell, {}),
    "GRUCell": (fastrnn.GRUCell, nn.GRUCell, {}),
    "RNNCell_tanh": (fastrnn.RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
    "RNNCell_relu": (fastrnn.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
}


def _cell_run(cell, x, hx, is_lstm):
    out = cell(x, hx)
    outs = list(out) if is_lstm else [out]
    leaves = [x] + ([] if hx is None else (list(hx) if is_lstm else [hx])) + list(cell.parameters())
    g = torch.Generator().manual_seed(3)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o)).sum() for o in outs)
    return outs, torch.autograd.grad(loss, leaves)


def _cell_inputs(batched, with_hx, is_lstm, I, H, dtype, device):
    g = torch.Generator().manual_seed(2)
    B = (4,) if batched else ()
    mk = lambda *s: torch.randn(*B, *s, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()  # noqa
    x = mk(I)
    hx = None
    if with_hx:
        hx = (mk(H), mk(H)) if is_lstm else mk(H)
    return x, hx


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched,with_hx", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_parity(name, batched, with_hx, bias, dtype, device):
    fast_cls, ref_cls, kw = CELLS[name]
    is_lstm = name == "LSTMCell"
    I, H = 7, 13
    fast = fast_cls(I, H, bias=bias, **kw).to(device, dtype)
    ref = ref_cls(I, H, bias=bias, **kw).to(device, dtype)
    ref.load_state_dict(fast.state_dict(), strict=True)
    x, hx = _cell_inputs(batched, with_hx, is_lstm, I, H, dtype, device)
    outs_f, grads_f = _cell_run(fast, x, hx, is_lstm)
    outs_r, grads_r = _cell_run(ref, x, hx, is_lstm)
    assert len(outs_f) == len(outs_r)
    for a, b in zip(outs_f, outs_r):
        assert_close(a, b, dtype, "cell output")
    for a, b in zip(grads_f, grads_r):
        assert_close(a, b, dtype, "cell grad")
    if dtype == torch.float64:  # and the reference cells
        p = [fast.weight_ih, fast.weight_hh, fast.bias_ih, fast.bias_hh]
        h = hx if hx is not None else ((torch.zeros_like(outs_f[0]),) * 2 if is_lstm else torch.zeros_like(outs_f[0]))
        if is_lstm:
            expect = reference.lstm_cell(x, h[0], h[1], *p)
        elif name == "GRUCell":
            expect = (reference.gru_cell(x, h, *p),)
        else:
            expect = (reference.rnn_cell(x, h, *p, nonlinearity=kw["nonlinearity"]),)
        for a, b in zip(outs_f, expect):
            assert_close(a, b, dtype, "cell vs reference")


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_fast_path(name, device, monkeypatch):
    """A decoder's call (2-D input, a state given, no options) goes straight to the op (fastrnn/modules.py,
    _CellBase.forward) and equals torch.nn, gradients too; the calls it must not take (no state, a 1-D input,
    an option, autocast, a bad call) take the checked path, _step."""
    fast_cls, ref_cls, kw = CELLS[name]
    is_lstm = name == "LSTMCell"
    I, H = 7, 13
    fast = fast_cls(I, H, **kw).to(device)
    ref = ref_cls(I, H, **kw).to(device)
    ref.load_state_dict(fast.state_dict(), strict=True)
    checked = []
    step = fastrnn.modules._CellBase._step

    def spy(self, input, hx):
        checked.append(True)
        return step(self, input, hx)

    monkeypatch.setattr(fastrnn.modules._CellBase, "_step", spy)
    x, hx = _cell_inputs(True, True, is_lstm, I, H, torch.float32, device)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            if grad:
                (outs_f, grads_f), (outs_r, grads_r) = _cell_run(fast, x, hx, is_lstm), _cell_run(ref, x, hx, is_lstm)
                # training: the autograd node in C++ (csrc/cell_autograd.cpp), not the ops' Python one
                assert all("fastrnn::CellStep" in o.grad_fn.name() for o in outs_f), outs_f[0].grad_fn.name()
            else:
                (outs_f, outs_r), grads_f, grads_r = ([list(o) if is_lstm else [o] for o in (fast(x, hx), ref(x, hx))],
                                                      (), ())
        for a, b in zip(outs_f, outs_r):
            assert_close(a, b, torch.float32, "cell output")
        for a, b in zip(grads_f, grads_r):
            assert_close(a, b, torch.float32, "cell grad")
    assert not checked
    # create_graph through that node: a gradient penalty on the input, then backward into the parameters
    got, want = [], []
    for module, grads in ((fast, got), (ref, want)):
        module.zero_grad()
        xg = x.detach().requires_grad_()
        out = module(xg, hx)
        g, = torch.autograd.grad((out[0] if is_lstm else out).pow(2).sum(), xg, create_graph=True)
        g.pow(2).sum().backward()
        grads.extend(p.grad for p in module.parameters())
    for a, b in zip(got, want):
        assert_close_scaled(a, b, torch.float32, "second order")
    x1, hx1 = _cell_inputs(False, True, is_lstm, I, H, torch.float32, device)
    bad_hx = (hx[0].double(), hx[1]) if is_lstm else hx.double()
    for call in (lambda: fast(x), lambda: fast(x1, hx1), lambda: fast(x, bad_hx)):
        checked.clear()
        try:
            call()
        except (RuntimeError, ValueError):
            pass
        assert checked
    with torch.autocast(device, dtype=torch.bfloat16):
        checked.clear()
        fast(x, hx)
        assert checked
    if name != "RNNCell_relu":
        opt = fast_cls(I, H, layer_norm=True).to(device) if name != "RNNCell_tanh" else fast_cls(I, H, "relu")
        if name == "RNNCell_tanh":
            opt.nonlinearity = "gelu"  # refused by the fast path, raised by _step as torch.nn raises it
        checked.clear()
        try:
            opt(x, hx)
        except RuntimeError as e:
            assert "Unknown nonlinearity" in str(e)
        assert checked


@pytest.mark.parametrize("dtype,device", half_pairs, ids=str)
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_fast_path_half_vs_float32(name, dtype, device):
    """The fast path's C++ calls (csrc/cell_autograd.cpp) in bfloat16 (float16 on CUDA), training and decoding,
    against torch.nn in float32 on the same rounded weights and inputs (as test_parity_half_vs_float32)."""
    fast_cls, ref_cls, kw = CELLS[name]
    is_lstm = name == "LSTMCell"
    I, H = 7, 13
    fast = fast_cls(I, H, **kw).to(device, dtype)
    ref = ref_cls(I, H, **kw).to(device)
    ref.load_state_dict({k: v.float() for k, v in fast.state_dict().items()}, strict=True)
    x, hx = _cell_inputs(True, True, is_lstm, I, H, dtype, device)
    as32 = lambda t: t.detach().float().requires_grad_()  # noqa: E731
    x32, hx32 = as32(x), (tuple(as32(t) for t in hx) if is_lstm else as32(hx))
    outs_f, grads_f = _cell_run(fast, x, hx, is_lstm)
    outs_r, grads_r = _cell_run(ref, x32, hx32, is_lstm)
    assert all("fastrnn::CellStep" in o.grad_fn.name() for o in outs_f)
    for a, b in zip(outs_f, outs_r):
        assert a.dtype == dtype
        assert_close(a, b, dtype, "cell output")
    if name != "RNNCell_relu":  # (the kink: see test_parity_half_vs_float32)
        for a, b in zip(grads_f, grads_r):
            assert a.dtype == dtype
            assert_close_scaled(a, b, dtype, "cell grad")
    with torch.no_grad():
        decoded = fast(x, hx)
    for a, b in zip(list(decoded) if is_lstm else [decoded], outs_r):
        assert a.grad_fn is None
        assert_close(a, b, dtype, "decoding output")


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_parity_rows_split_across_threads(mode):
    """Batches large enough for the CPU kernels to split a step's rows over threads (a step runs in
    parallel above 16384 elements: 300 rows x 4*128 gates for the LSTM, x 128 for the RNN), packed so that
    the batch size changes from step to step."""
    lengths = [3] * 150 + [2] * 100 + [1] * 50
    case = Case("parallel", T=3, B=300, I=8, H=128, bidirectional=True, lengths=lengths, hx=True)
    dtype = torch.float32
    fast, ref = make_pair(mode, case.I, case.H, dtype, "cpu", **case.module_kwargs)
    x, h0, c0 = make_inputs(mode, case, dtype, "cpu")
    out_f, grad_f = run_module(mode, fast, case, x, h0, c0)
    out_r, grad_r = run_module(mode, ref, case, x, h0, c0)
    compare(out_f, out_r, dtype, "output")
    # Parameter gradients here are sums over ~900 rows with magnitudes up to ~100: float32 rounding alone
    # puts fastrnn and torch.nn alike up to 6e-5 away from a float64 computation; compare relative to scale.
    for k in grad_r:
        assert_close_scaled(grad_f[k], grad_r[k], dtype, f"grad {k}")
