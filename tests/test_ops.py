"""The fastrnn:: operators called directly: against fastrnn.reference.layer (dense and packed, both
directions), torch.autograd.gradcheck, torch.library.opcheck, and the train=False (inference) contract."""
from types import SimpleNamespace

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from fastrnn import ops, reference
from common import MODES, assert_close, devices

# (mode, proj_size): every cell, and the LSTM with a projection.
VARIANTS = [(m, 0) for m in MODES] + [("LSTM", 3)]
VARIANT_IDS = [f"{m}{'_proj' if p else ''}" for m, p in VARIANTS]


def make_args(mode, proj=0, T=5, B=4, I=6, H=5, lengths=None, bias=True, dtype=torch.float64, device="cpu",
              seed=0, requires_grad=True):
    """Arguments of one forward op call. lengths (sorted, descending) => packed input."""
    g = torch.Generator().manual_seed(seed)
    gates = {"LSTM": 4, "GRU": 3}.get(mode, 1)
    P = proj or H

    def rnd(*shape, scale=1.0):
        t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
        return t.requires_grad_(requires_grad)

    a = SimpleNamespace(mode=mode, T=T, B=B, H=H, P=P, lengths=lengths)
    a.x_pad = rnd(T, B, I)
    if lengths is not None:
        packed = pack_padded_sequence(a.x_pad, torch.tensor(lengths), enforce_sorted=True)
        a.x, a.batch_sizes = packed.data, packed.batch_sizes
    else:
        a.x, a.batch_sizes = a.x_pad, None
    a.hx = rnd(B, P)
    a.cx = rnd(B, H) if mode == "LSTM" else None
    a.w_ih, a.w_hh = rnd(gates * H, I, scale=0.5), rnd(gates * H, P, scale=0.5)
    a.b_ih, a.b_hh = (rnd(gates * H, scale=0.5), rnd(gates * H, scale=0.5)) if bias else (None, None)
    a.w_hr = rnd(proj, H, scale=0.5) if proj else None
    return a


def op_args(a, x=None, reverse=False, train=True):
    """The positional arguments of a's forward op."""
    x = a.x if x is None else x
    if a.mode == "LSTM":
        return (x, a.batch_sizes, a.hx, a.cx, a.w_ih, a.w_hh, a.b_ih, a.b_hh, a.w_hr, reverse, train)
    if a.mode == "GRU":
        return (x, a.batch_sizes, a.hx, a.w_ih, a.w_hh, a.b_ih, a.b_hh, reverse, train)
    return (x, a.batch_sizes, a.hx, a.w_ih, a.w_hh, a.b_ih, a.b_hh, a.mode == "RNN_RELU", reverse)


def forward_op(mode):
    return {"LSTM": ops.lstm_forward, "GRU": ops.gru_forward}.get(mode, ops.rnn_forward)


def run_op(a, x=None, reverse=False, train=True):
    """(output, hy, cy or None, workspace or None) of a's forward op."""
    res = forward_op(a.mode)(*op_args(a, x, reverse, train))
    if a.mode == "LSTM":
        return res
    if a.mode == "GRU":
        return res[0], res[1], None, res[2]
    return res[0], res[1], None, None


def run_ref(a, reverse):
    out, hy, cy = reference.layer(a.mode, a.x_pad, a.lengths, a.hx, a.cx, (a.w_ih, a.w_hh, a.b_ih, a.b_hh, a.w_hr),
                                  reverse)
    if a.lengths is not None:
        out = pack_padded_sequence(out, torch.tensor(a.lengths)).data
    return out, hy, cy


def leaves(a):
    return {k: getattr(a, k) for k in ("x_pad", "hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
            if getattr(a, k) is not None}


def weighted_loss(outs, seed=5):
    g = torch.Generator().manual_seed(seed)
    return sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o)).sum() for o in outs
               if o is not None)


LAYOUTS = {"dense": None, "packed": [5, 4, 2, 1], "packed_equal": [5, 5, 5, 5]}


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mode,proj", VARIANTS, ids=VARIANT_IDS)
def test_op_vs_reference(mode, proj, layout, reverse, bias, dtype, device):
    a = make_args(mode, proj, lengths=LAYOUTS[layout], bias=bias, dtype=dtype, device=device)
    out, hy, cy, ws = run_op(a, reverse=reverse)
    e_out, e_hy, e_cy = run_ref(a, reverse)
    assert out.shape == (*a.x.shape[:-1], a.P) and out.dtype == dtype
    assert_close(out, e_out, dtype, "output")
    assert_close(hy, e_hy, dtype, "hy")
    if mode == "LSTM":
        assert_close(cy, e_cy, dtype, "cy")
    if ws is not None:
        width = {"LSTM": 5, "GRU": 4}[mode] * a.H
        assert ws.shape == (a.x.shape[0] * (a.B if a.batch_sizes is None else 1), width)
    # and the backward op through autograd
    L = leaves(a)
    got = torch.autograd.grad(weighted_loss([out, hy, cy]), list(L.values()))
    exp = torch.autograd.grad(weighted_loss([e_out, e_hy, e_cy]), list(L.values()))
    for name, g1, g2 in zip(L, got, exp):
        assert_close(g1, g2, dtype, f"grad {name}")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode,proj", VARIANTS, ids=VARIANT_IDS)
def test_only_some_outputs_used(mode, proj, reverse):
    """Outputs left out of the loss reach the backward as None (zeros): only hy, or only output."""
    a = make_args(mode, proj, lengths=[5, 3, 3, 1])
    out, hy, cy, _ = run_op(a, reverse=reverse)
    e_out, e_hy, e_cy = run_ref(a, reverse)
    L = list(leaves(a).values())
    for pick in (lambda o, h, c: [h], lambda o, h, c: [o]):
        got = torch.autograd.grad(weighted_loss(pick(out, hy, cy)), L, retain_graph=True, allow_unused=True)
        exp = torch.autograd.grad(weighted_loss(pick(e_out, e_hy, e_cy)), L, retain_graph=True, allow_unused=True)
        for g1, g2 in zip(got, exp):
            g2 = torch.zeros_like(g1) if g2 is None else g2
            assert_close(g1, g2, torch.float64, "grad")


# ------------------------------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("mode,proj", VARIANTS, ids=VARIANT_IDS)
def test_gradcheck(mode, proj, layout, reverse):
    lengths = None if layout == "dense" else [3, 2, 1]
    a = make_args(mode, proj, T=3, B=3, I=3, H=2, lengths=lengths)
    a.x = a.x.detach().requires_grad_()  # packed data as the leaf
    inputs = [a.x, a.hx] + ([a.cx] if mode == "LSTM" else []) + [a.w_ih, a.w_hh, a.b_ih, a.b_hh] + (
        [a.w_hr] if proj else [])

    def fn(*ts):
        b = SimpleNamespace(**vars(a))
        it = iter(ts)
        b.x, b.hx = next(it), next(it)
        if mode == "LSTM":
            b.cx = next(it)
        b.w_ih, b.w_hh, b.b_ih, b.b_hh = next(it), next(it), next(it), next(it)
        if proj:
            b.w_hr = next(it)
        out, hy, cy, _ = run_op(b, reverse=reverse)  # the workspace is not differentiable
        return (out, hy) if cy is None else (out, hy, cy)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# -------------------------------------------------------------------------------------------- opcheck
@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("mode,proj", VARIANTS, ids=VARIANT_IDS)
def test_opcheck_forward(mode, proj, layout):
    lengths = None if layout == "dense" else [3, 2, 2]
    a = make_args(mode, proj, T=3, B=3, I=4, H=3, lengths=lengths, dtype=torch.float32)
    a.x = a.x.detach().requires_grad_()
    torch.library.opcheck(forward_op(mode), op_args(a, reverse=layout == "packed"))


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_opcheck_forward_inference(mode):
    a = make_args(mode, T=3, B=2, I=4, H=3, dtype=torch.float32, requires_grad=False)
    torch.library.opcheck(forward_op(mode), op_args(a, train=False))


@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("mode,proj", VARIANTS, ids=VARIANT_IDS)
def test_opcheck_backward(mode, proj, layout):
    lengths = None if layout == "dense" else [3, 2, 2]
    reverse = layout == "packed"
    a = make_args(mode, proj, T=3, B=3, I=4, H=3, lengths=lengths, dtype=torch.float32, requires_grad=False)
    out, hy, cy, ws = run_op(a, reverse=reverse)
    go, ghy = torch.randn_like(out), torch.randn_like(hy)
    common = (a.x, a.batch_sizes, a.hx)
    if mode == "LSTM":
        args = (go, ghy, torch.randn_like(cy), *common, a.cx, a.w_ih, a.w_hh, a.w_hr, out, ws, reverse, True)
        op = ops.lstm_backward
    elif mode == "GRU":
        args = (go, ghy, *common, a.w_ih, a.w_hh, out, ws, reverse, True)
        op = ops.gru_backward
    else:
        args = (go, ghy, *common, a.w_ih, a.w_hh, out, mode == "RNN_RELU", reverse, True)
        op = ops.rnn_backward
    torch.library.opcheck(op, args)


def strided(t, how):
    """A non-contiguous tensor equal to t: "transposed" (a transposed copy viewed back), "expanded" (a
    broadcast of one row where every row is the same: the values then differ from t), "sliced" (every
    other element of a twice-as-wide buffer)."""
    if t is None or t.dim() == 0:
        return t
    if how == "transposed" and t.dim() >= 2:
        return t.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(t.requires_grad)
    if how == "expanded" and t.dim() >= 2:
        return t.detach()[:1].expand(t.shape).requires_grad_(t.requires_grad)
    if how == "sliced":
        wide = torch.stack([t.detach(), t.detach()], dim=-1)
        return wide[..., 0].requires_grad_(t.requires_grad)
    return t


STRIDES = ["transposed", "expanded", "sliced"]


@pytest.mark.parametrize("how", STRIDES)
@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("mode,proj", VARIANTS, ids=VARIANT_IDS)
def test_opcheck_strided_arguments(mode, proj, layout, how):
    """opcheck (fake kernel strides, autograd registration, AOT dispatch) with every tensor argument of the
    forward op and then of the backward op non-contiguous: the fake kernels must return what the real ones
    return (contiguous tensors), whatever the arguments' strides."""
    lengths = None if layout == "dense" else [3, 2, 2]
    reverse = layout == "packed"
    a = make_args(mode, proj, T=3, B=3, I=4, H=3, lengths=lengths, dtype=torch.float32)
    for k in ("x", "hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"):
        setattr(a, k, strided(getattr(a, k), how))
    args = op_args(a, reverse=reverse)
    torch.library.opcheck(forward_op(mode), args)
    # The backward op with strided grads (and the forward's strided arguments).
    with torch.no_grad():
        out, hy, cy, ws = run_op(a, reverse=reverse)
    go, ghy = strided(torch.randn_like(out), how), strided(torch.randn_like(hy), how)
    common = (a.x.detach(), a.batch_sizes, a.hx.detach())
    w = (a.w_ih.detach(), a.w_hh.detach())
    if mode == "LSTM":
        w_hr = a.w_hr.detach() if a.w_hr is not None else None
        bargs = (go, ghy, strided(torch.randn_like(cy), how), *common, a.cx.detach(), *w, w_hr, out, ws, reverse,
                 True)
        op = ops.lstm_backward
    elif mode == "GRU":
        bargs = (go, ghy, *common, *w, out, ws, reverse, True)
        op = ops.gru_backward
    else:
        bargs = (go, ghy, *common, *w, out, mode == "RNN_RELU", reverse, True)
        op = ops.rnn_backward
    torch.library.opcheck(op, bargs)


# --------------------------------------------------------------------------------------- train=False
@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("mode,proj", [v for v in VARIANTS if v[0] in ("LSTM", "GRU")],
                         ids=[i for v, i in zip(VARIANTS, VARIANT_IDS) if v[0] in ("LSTM", "GRU")])
def test_inference_empty_workspace_same_outputs(mode, proj, layout):
    lengths = None if layout == "dense" else [5, 4, 2, 1]
    a = make_args(mode, proj, lengths=lengths, dtype=torch.float32)
    with torch.no_grad():
        train = run_op(a, train=True)
        infer = run_op(a, train=False)
    assert infer[3].numel() == 0 and infer[3].shape == (0, 0)
    assert train[3].numel() > 0
    for t, i in zip(train[:3], infer[:3]):
        if t is not None:
            torch.testing.assert_close(i, t, rtol=0, atol=0)  # the same arithmetic either way


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_backward_after_inference_raises(mode):
    a = make_args(mode, T=3, B=2, I=4, H=3)
    out, hy, _, _ = run_op(a, train=False)
    assert out.requires_grad  # autograd still records the op ...
    with pytest.raises(RuntimeError, match=r"train=False.*train=True"):
        (out.sum() + hy.sum()).backward()  # ... but refuses to differentiate it


def test_backward_op_rejects_inference_workspace():
    a = make_args("LSTM", T=3, B=2, I=4, H=3, requires_grad=False)
    out, hy, cy, ws = run_op(a, train=False)
    with pytest.raises(ValueError, match="workspace"):
        ops.lstm_backward(torch.ones_like(out), torch.ones_like(hy), torch.ones_like(cy), a.x, None, a.hx, a.cx,
                          a.w_ih, a.w_hh, None, out, ws, False, True)
