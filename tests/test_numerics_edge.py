"""Numerical edge cases of the C++ ops, each against torch.nn's own behaviour:

* the relu RNN's backward at NaN and where relu's output is 0 (torch: threshold_backward, `y <= 0 ? 0 : dh`);
* batch_sizes whose sum overflows int64 (a clear ValueError, never a wrap-around that passes the checks);
* the C++ ops called inside a torch.autocast region: their inner GEMMs must not be autocast (the kernels read
  their results through raw pointers as the input's dtype), so the ops return what they return outside it;
* zero sizes torch.nn's cells accept (hidden_size 0, input_size 0) and the raw ops with input, hidden or
  projection size 0: the same results and gradients as torch.nn / fastrnn.reference.
"""
import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import reference
from common import Case, assert_close, compare, devices, make_inputs, make_pair, run_module

CAPABILITIES = ["default", "avx2", "avx512"]
_ops = torch.ops.fastrnn


# --------------------------------------------------------------------------------- relu backward at NaN
RELU_CASES = [
    Case("base_hx", T=4, B=3, I=5, H=13, hx=True),
    Case("2layer_bidir_packed", T=4, B=3, I=5, H=13, num_layers=2, bidirectional=True, lengths=[4, 2, 3]),
]


@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", RELU_CASES, ids=repr)
def test_relu_backward_nan_input(case, dtype, capability, monkeypatch):
    """A NaN in the input: relu's gradient at a NaN output is the incoming gradient (torch), so NaN outputs
    still pass their gradient on. fastrnn's gradients must be NaN exactly where torch.nn's are, and equal
    elsewhere; before the fix, relu_grad(NaN) = 0 dropped those rows' gradients (bias grads differed)."""
    monkeypatch.setenv("FASTRNN_CPU_CAPABILITY", capability)
    fast, ref = make_pair("RNN_RELU", case.I, case.H, dtype, "cpu", **case.module_kwargs)
    x, h0, c0 = make_inputs("RNN_RELU", case, dtype, "cpu")
    with torch.no_grad():
        x[1, 0, 2] = float("nan")  # (t=1, b=0): the NaN reaches every later step of sequence 0
    out_f, grad_f = run_module("RNN_RELU", fast, case, x, h0, c0)
    out_r, grad_r = run_module("RNN_RELU", ref, case, x, h0, c0)
    # The NaN reaches the outputs, yet torch.nn's bias gradients stay finite: relu passes the (finite)
    # output gradient through a NaN output, which zeroing it (the old relu_grad(NaN) = 0) changed.
    assert out_r["output"].isnan().any() and grad_r["bias_ih_l0"].isfinite().all()
    compare(out_f, out_r, dtype, "output")
    compare(grad_f, grad_r, dtype, "grad")  # equal_nan: NaN exactly where torch.nn has NaN


@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_relu_backward_nonfinite_grad_where_output_is_zero(dtype, capability, monkeypatch):
    """A gradient of inf or NaN reaching an output element that relu clamped to 0 gives exactly 0 there in
    torch (a select, not dh * 0 = NaN); the other elements' gradients stay finite."""
    monkeypatch.setenv("FASTRNN_CPU_CAPABILITY", capability)
    case = Case("T1", T=1, B=4, I=5, H=13)
    fast, ref = make_pair("RNN_RELU", case.I, case.H, dtype, "cpu")
    x, _, _ = make_inputs("RNN_RELU", case, dtype, "cpu")
    results = []
    for m in (fast, ref):
        out, h = m(x)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
        zero = out.detach() <= 0
        assert zero.any() and (~zero).any()
        g[zero] = float("inf")
        g[zero & (torch.arange(case.H) % 2 == 0)] = float("nan")
        results.append(torch.autograd.grad(out, [x, *m.parameters()], g))
    for a, e, name in zip(*results, ["x", "w_ih", "w_hh", "b_ih", "b_hh"]):
        assert e.isfinite().all()
        assert_close(a, e, dtype, name)


# ------------------------------------------------------------------------------- batch_sizes overflow
OVERFLOW = {
    # 8 * 2^61 = 2^64: the int64 sum wraps to 0, matching an empty packed input.
    "sum_wraps_to_zero": ([2**61] * 8, 0),
    # 4 * 2^62 + 3 wraps to 3: matches a packed input of 3 rows.
    "sum_wraps_to_N": ([2**62] * 4 + [3], 3),
    # the largest int64 entries: the second addition overflows.
    "int64_max": ([2**63 - 1, 2**63 - 1, 2], 0),
}


@pytest.mark.parametrize("name", list(OVERFLOW))
@pytest.mark.parametrize("op", ["rnn_forward", "gru_forward", "lstm_forward", "rnn_backward", "gru_backward",
                                "lstm_backward"])
def test_batch_sizes_overflow(op, name):
    sizes, N = OVERFLOW[name]
    bs = torch.tensor(sizes, dtype=torch.int64)
    H, I = 3, 2
    G = {"rnn": 1, "gru": 3, "lstm": 4}[op.split("_")[0]]
    x, hx, cx = torch.randn(N, I), torch.zeros(2, H), torch.zeros(2, H)
    w_ih, w_hh = torch.randn(G * H, I), torch.randn(G * H, H)
    out = torch.zeros(N, H)
    with pytest.raises(ValueError, match="batch_sizes sum to more than the packed input.s"):
        if op == "rnn_forward":
            _ops.rnn_forward(x, bs, hx, w_ih, w_hh, None, None, False, False)
        elif op == "gru_forward":
            _ops.gru_forward(x, bs, hx, w_ih, w_hh, None, None, False, True)
        elif op == "lstm_forward":
            _ops.lstm_forward(x, bs, hx, cx, w_ih, w_hh, None, None, None, False, True)
        elif op == "rnn_backward":
            _ops.rnn_backward(out, hx, x, bs, hx, w_ih, w_hh, out, False, False, False)
        elif op == "gru_backward":
            _ops.gru_backward(out, hx, x, bs, hx, w_ih, w_hh, out, torch.zeros(N, 4 * H), False, False)
        else:
            _ops.lstm_backward(out, hx, cx, x, bs, hx, cx, w_ih, w_hh, None, out, torch.zeros(N, 5 * H), False,
                               False)


def test_batch_sizes_sum_mismatch_still_reported():
    """The per-entry check keeps the plain sum check's message for a sum below the row count."""
    with pytest.raises(ValueError, match="batch_sizes sum to 3 but the packed input has 5 rows"):
        _ops.rnn_forward(torch.randn(5, 2), torch.tensor([2, 1]), torch.zeros(2, 3), torch.randn(3, 2),
                         torch.randn(3, 3), None, None, False, False)
    with pytest.raises(ValueError, match="sum to more than the packed input's 2 rows"):
        _ops.rnn_forward(torch.randn(2, 2), torch.tensor([2, 1]), torch.zeros(2, 3), torch.randn(3, 2),
                         torch.randn(3, 3), None, None, False, False)


# ------------------------------------------------------------------------------- the ops under autocast
def _autocast_calls(cell, device, packed, proj):
    """(forward op, forward args, backward op, backward args) of one layer, float32, on device. The backward's
    arguments come from the forward run outside autocast."""
    g = torch.Generator().manual_seed(5)
    T, B, I, H, P = 4, 3, 5, 6, 4
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    S = P if proj else H

    def r(*shape):
        return torch.randn(shape, generator=g).to(device)

    if packed:
        bs = torch.tensor([3, 3, 2, 1])
        x, bs_arg = r(int(bs.sum()), I), bs
    else:
        x, bs_arg = r(T, B, I), None
    hx, cx, w_ih, w_hh, b_ih, b_hh = r(B, S), r(B, H), r(G * H, I), r(G * H, S), r(G * H), r(G * H)
    w_hr = r(P, H) if proj else None
    ops = torch.ops.fastrnn
    if cell == "lstm":
        fwd_args = (x, bs_arg, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, True, True)
        out, hy, cy, ws = ops.lstm_forward(*fwd_args)
        bwd_args = (r(*out.shape), r(*hy.shape), r(*cy.shape), x, bs_arg, hx, cx, w_ih, w_hh, w_hr, out, ws, True,
                    True)
    elif cell == "gru":
        fwd_args = (x, bs_arg, hx, w_ih, w_hh, b_ih, b_hh, False, True)
        out, hy, ws = ops.gru_forward(*fwd_args)
        bwd_args = (r(*out.shape), r(*hy.shape), x, bs_arg, hx, w_ih, w_hh, out, ws, False, True)
    else:
        fwd_args = (x, bs_arg, hx, w_ih, w_hh, b_ih, b_hh, True, False)
        out, hy = ops.rnn_forward(*fwd_args)
        bwd_args = (r(*out.shape), r(*hy.shape), x, bs_arg, hx, w_ih, w_hh, out, True, False, True)
    return (getattr(ops, f"{cell}_forward").default, fwd_args, getattr(ops, f"{cell}_backward").default,
            bwd_args)


AUTOCAST_CASES = [("lstm", False, False), ("lstm", True, False), ("lstm", False, True), ("lstm", True, True),
                  ("gru", False, False), ("gru", True, False), ("rnn", False, False), ("rnn", True, False)]


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("cell,packed,proj", AUTOCAST_CASES,
                         ids=[f"{c}{'_packed' if p else ''}{'_proj' if q else ''}" for c, p, q in AUTOCAST_CASES])
def test_op_implementation_under_autocast(cell, packed, proj, device):
    """Each op's backend implementation (reached with a redispatch to the CPU/CUDA key, past any autocast
    kernel registered in Python) inside an autocast region, on float32 tensors: same dtypes and values as
    outside the region. Before the fix, the forward raised "expected scalar type Float but found BFloat16" on
    the CPU (and on CUDA read a half-precision GEMM result as float32), and the backward silently returned
    bfloat16 gradients."""
    key = torch._C.DispatchKey.CPU if device == "cpu" else torch._C.DispatchKey.CUDA
    keyset = torch._C.DispatchKeySet(key)
    low = torch.bfloat16 if device == "cpu" else torch.float16
    fwd, fwd_args, bwd, bwd_args = _autocast_calls(cell, device, packed, proj)
    for op, args in ((fwd, fwd_args), (bwd, bwd_args)):
        expected = op(*args)
        with torch.autocast(device, dtype=low):
            ones = torch.ones(2, 2, device=device)
            assert torch.mm(ones, ones).dtype == low  # the region does autocast GEMMs
            actual = op.redispatch(keyset, *args)
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert a.dtype == e.dtype, f"{op} result {i}: {a.dtype} != {e.dtype}"
            assert_close(a, e, torch.float32, f"{op} result {i}")


# ------------------------------------------------------------------------------------------- zero sizes
CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {"nonlinearity": "tanh"}), ("RNNCell", {"nonlinearity": "relu"})]


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("sizes", [(10, 0), (0, 5), (0, 0)], ids=["hidden0", "input0", "both0"])
@pytest.mark.parametrize("cell,kw", CELLS, ids=["LSTMCell", "GRUCell", "RNNCell_tanh", "RNNCell_relu"])
def test_cell_zero_sizes(cell, kw, sizes, bias, batched, device):
    """torch.nn's cells take input_size 0 and hidden_size 0 (a (B, 0) output); fastrnn's give the same
    outputs and gradients (x, hx, every parameter)."""
    I, H = sizes
    dtype = torch.float64
    fast = getattr(fastrnn, cell)(I, H, bias=bias, **kw).to(device, dtype)
    ref = getattr(nn, cell)(I, H, bias=bias, **kw).to(device, dtype)
    ref.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(0)
    shape = (3,) if batched else ()
    x = torch.randn(*shape, I, generator=g, dtype=dtype).to(device).requires_grad_()
    h = torch.randn(*shape, H, generator=g, dtype=dtype).to(device).requires_grad_()
    c = torch.randn(*shape, H, generator=g, dtype=dtype).to(device).requires_grad_()
    results = []
    for m in (fast, ref):
        out = m(x, (h, c)) if cell == "LSTMCell" else m(x, h)
        outs = list(out) if isinstance(out, tuple) else [out]
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=dtype, device=device).view(o.shape)).sum()
                   for o in outs)
        leaves = ([x, h, c] if cell == "LSTMCell" else [x, h]) + list(m.parameters())
        results.append((outs, torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)))
    (outs_f, grads_f), (outs_r, grads_r) = results
    assert len(outs_f) == len(outs_r) and len(grads_f) == len(grads_r)
    for a, e in zip(outs_f, outs_r):
        assert_close(a, e, dtype, "output")
    for i, (a, e) in enumerate(zip(grads_f, grads_r)):
        assert_close(a, e, dtype, f"grad {i}")


ZERO_OPS = [  # (mode, I, H, P): P = None is no projection, P = 0 a projection to size 0
    ("LSTM", 0, 5, None), ("LSTM", 4, 0, None), ("LSTM", 0, 0, None), ("LSTM", 4, 5, 0), ("LSTM", 0, 5, 0),
    ("GRU", 0, 5, None), ("GRU", 4, 0, None), ("GRU", 0, 0, None),
    ("RNN_TANH", 0, 5, None), ("RNN_TANH", 4, 0, None), ("RNN_RELU", 0, 5, None), ("RNN_RELU", 0, 0, None),
]


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode,I,H,P", ZERO_OPS, ids=[f"{m}_I{i}_H{h}_P{p}" for m, i, h, p in ZERO_OPS])
def test_op_zero_sizes(mode, I, H, P, reverse, device):
    """The raw forward ops (and, through autograd, the backward ops) with input, hidden or projection size 0,
    against fastrnn.reference's equations: outputs, final states and every gradient."""
    dtype = torch.float64
    g = torch.Generator().manual_seed(1)
    T, B = 4, 3
    G = {"LSTM": 4, "GRU": 3}.get(mode, 1)
    S = H if P is None else P

    def leaf(*shape):
        return torch.randn(shape, generator=g, dtype=dtype).to(device).requires_grad_()

    x, h0, c0 = leaf(T, B, I), leaf(B, S), leaf(B, H)
    w_ih, w_hh, b_ih, b_hh = leaf(G * H, I), leaf(G * H, S), leaf(G * H), leaf(G * H)
    w_hr = leaf(P, H) if P is not None else None
    ops = torch.ops.fastrnn
    if mode == "LSTM":
        out, hy, cy, _ = ops.lstm_forward(x, None, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, True)
        fast = [out, hy, cy]
        leaves = [x, h0, c0, w_ih, w_hh, b_ih, b_hh] + ([w_hr] if w_hr is not None else [])
    elif mode == "GRU":
        out, hy, _ = ops.gru_forward(x, None, h0, w_ih, w_hh, b_ih, b_hh, reverse, True)
        fast, leaves = [out, hy], [x, h0, w_ih, w_hh, b_ih, b_hh]
    else:
        out, hy = ops.rnn_forward(x, None, h0, w_ih, w_hh, b_ih, b_hh, mode == "RNN_RELU", reverse)
        fast, leaves = [out, hy], [x, h0, w_ih, w_hh, b_ih, b_hh]
    params = (w_ih, w_hh, b_ih, b_hh) + ((w_hr,) if w_hr is not None else ())
    r_out, r_h, r_c = reference.layer(mode, x, None, h0, c0 if mode == "LSTM" else None, params, reverse)
    expected = [r_out, r_h] + ([r_c] if mode == "LSTM" else [])
    for i, (a, e) in enumerate(zip(fast, expected)):
        assert_close(a, e, dtype, f"result {i}")

    def grads(outputs):
        gg = torch.Generator().manual_seed(2)
        loss = sum((o * torch.randn(o.shape, generator=gg, dtype=dtype).to(device)).sum() for o in outputs)
        return torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)

    for i, (a, e) in enumerate(zip(grads(fast), grads(expected))):
        assert_close(a, e, dtype, f"grad {i}")
