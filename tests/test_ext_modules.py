"""fastrnn.LSTM/GRU's options beyond torch.nn (layer_norm, zoneout, weight_drop, recurrent_dropout): the modules
against the equations of fastrnn/reference.py, their masks, parameters, errors and the torch features they
keep (packed input, bidirectional, projection, torch.compile, autocast).

The module-level oracle below rebuilds a layer stack from the reference equations (reference.input_gates,
then composite.ext_sequence per layer and direction: reference.lstm_ext_cell / gru_ext_cell step by step),
fed with the very masks the module drew (recorded from its _draw_masks) so training mode is compared exactly.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import composite, reference

from common import assert_close, assert_close_scaled

OPTION_SETS = {
    "ln": dict(layer_norm=True),
    "zoneout": dict(zoneout=0.3),
    "recdrop": dict(recurrent_dropout=0.4),
    "ln+zoneout": dict(layer_norm=True, zoneout=0.25),
    "all": dict(layer_norm=True, zoneout=0.2, recurrent_dropout=0.3, weight_drop=0.25),
}
LSTM_ONLY_SETS = {
    "zoneout-pair": dict(zoneout=(0.1, 0.5)),
    "all+proj": dict(layer_norm=True, zoneout=0.2, recurrent_dropout=0.3, weight_drop=0.25, proj_size=3),
}


class Recorder:
    """Wraps a module's _draw_masks and keeps what it returned, in call order (layer, direction)."""

    def __init__(self, module):
        self.masks = []
        draw = module._draw_masks

        def wrapped(*args, **kwargs):
            out = draw(*args, **kwargs)
            self.masks.append(out)
            return out

        module._draw_masks = wrapped


def module_reference(m, x, batch_sizes, h0, c0, masks):
    """The module's forward from the reference equations, in the ops' layout (x [T, B, I] or packed [N, I])."""
    is_lstm = m.mode == "LSTM"
    dirs = 2 if m.bidirectional else 1
    inp, h_n, c_n = x, [], []
    for layer in range(m.num_layers):
        outs = []
        for d in range(dirs):
            idx = layer * dirs + d
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            p = lambda n: getattr(m, n + sfx, None)  # noqa: E731
            w_hh = p("weight_hh")
            ln = lambda part: (p(f"ln_{part}_weight"), p(f"ln_{part}_bias")) if m.layer_norm else None  # noqa
            gx = reference.input_gates(m.mode, inp, p("weight_ih"), p("bias_ih"), p("bias_hh"), ln("ih"))
            k_h, k_c, mask = masks[idx]
            out, h, c = composite.ext_sequence(
                m.mode, gx, batch_sizes, h0[idx], c0[idx] if is_lstm else None, w_hh, p("weight_hr"),
                None if is_lstm else p("bias_hh"), ln("hh"), ln("c") if is_lstm else None, k_h, k_c, mask, d == 1)
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        inp = torch.cat(outs, -1) if dirs == 2 else outs[0]
    return inp, torch.stack(h_n), (torch.stack(c_n) if is_lstm else None)


def make(mode, dtype=torch.float64, I=4, H=6, **kw):
    torch.manual_seed(0)
    cls = fastrnn.LSTM if mode == "LSTM" else fastrnn.GRU
    m = cls(I, H, **kw).to(dtype)
    with torch.no_grad():  # LayerNorm parameters away from 1 and 0, so a swapped gain/bias shows
        for name, prm in m.named_parameters():
            if name.startswith("ln_"):
                prm.add_(torch.randn_like(prm) * 0.3)
    return m


def cases():
    for mode in ("LSTM", "GRU"):
        sets = dict(OPTION_SETS, **(LSTM_ONLY_SETS if mode == "LSTM" else {}))
        for name, opts in sets.items():
            yield pytest.param(mode, opts, id=f"{mode}-{name}")


def _run(m, x, lengths, training, seed=1):
    """Forward + backward of m with recorded masks; returns the tensors to compare and the module's grads."""
    m.train(training)
    rec = Recorder(m)
    T, B = x.shape[:2]
    D = m.proj_size or m.hidden_size
    dirs = 2 if m.bidirectional else 1
    h0 = torch.randn(m.num_layers * dirs, B, D, dtype=x.dtype, requires_grad=True)
    c0 = torch.randn(m.num_layers * dirs, B, m.hidden_size, dtype=x.dtype, requires_grad=True)
    xin = x.clone().requires_grad_(True)
    hx = (h0, c0) if m.mode == "LSTM" else h0
    torch.manual_seed(seed)
    inp = pack_padded_sequence(xin, lengths) if lengths is not None else xin
    out, state = m(inp, hx)
    out = out.data if lengths is not None else out
    hy, cy = state if m.mode == "LSTM" else (state, None)
    return rec, xin, h0, c0, out, hy, cy


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("mode,opts", list(cases()))
def test_module_matches_reference_float64(mode, opts, layout, training):
    opts = dict(opts)
    if training and opts.get("weight_drop"):
        opts["weight_drop"] = 0.0  # compared on its own below (its masks are drawn inside F.dropout)
    m = make(mode, num_layers=2, bidirectional=True, **opts)
    T, B = 5, 3
    x = torch.randn(T, B, 4, dtype=torch.float64)
    lengths = [5, 3, 2] if layout == "packed" else None
    rec, xin, h0, c0, out, hy, cy = _run(m, x, lengths, training)
    batch_sizes = None
    xr = xin
    if lengths is not None:
        packed = pack_padded_sequence(xin, lengths)
        xr, batch_sizes = packed.data, packed.batch_sizes
    ref_out, ref_h, ref_c = module_reference(m, xr, batch_sizes, h0, c0 if mode == "LSTM" else None, rec.masks)
    assert len(rec.masks) == 4
    assert_close(out, ref_out, torch.float64, "output")
    assert_close(hy, ref_h, torch.float64, "h_n")
    if mode == "LSTM":
        assert_close(cy, ref_c, torch.float64, "c_n")
    # gradients of everything against the reference's
    g_out, g_h = torch.randn_like(out), torch.randn_like(hy)
    loss = (out * g_out).sum() + (hy * g_h).sum() + ((cy * cy).sum() if cy is not None else 0)
    ref_loss = (ref_out * g_out).sum() + (ref_h * g_h).sum() + ((ref_c * ref_c).sum() if ref_c is not None else 0)
    wrt = [xin, h0] + ([c0] if mode == "LSTM" else []) + list(m.parameters())
    got = torch.autograd.grad(loss, wrt, allow_unused=True)
    want = torch.autograd.grad(ref_loss, wrt, allow_unused=True)
    names = ["x", "h0"] + (["c0"] if mode == "LSTM" else []) + [n for n, _ in m.named_parameters()]
    for name, g, w in zip(names, got, want):
        if w is None:
            assert g is None or g.abs().max() == 0, name
            continue
        assert_close_scaled(g, w, torch.float64, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_module_reduced_precision(mode, dtype):
    """float32 and bfloat16 modules against the float64 reference on the same (rounded) weights and masks."""
    opts = dict(layer_norm=True, zoneout=0.2, recurrent_dropout=0.3)
    m = make(mode, dtype=dtype, H=16, **opts)
    x = torch.randn(6, 4, 4).to(dtype)
    rec, xin, h0, c0, out, hy, cy = _run(m, x, None, training=True)
    m64 = make(mode, dtype=torch.float64, H=16, **opts)
    m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    masks = [tuple(None if t is None else t.double() for t in ms) for ms in rec.masks]
    ref_out, ref_h, _ = module_reference(m64, xin.detach().double(), None, h0.detach().double(),
                                         c0.detach().double(), masks)
    assert_close(out, ref_out, dtype, "output")
    assert_close(hy, ref_h, dtype, "h_n")
    # gradient of the input against the reference's
    g = torch.randn_like(ref_out)
    (gx,) = torch.autograd.grad(out, xin, g.to(dtype))
    x64 = xin.detach().double().requires_grad_(True)
    ref_out2, _, _ = module_reference(m64, x64, None, h0.detach().double(), c0.detach().double(), masks)
    (gx_ref,) = torch.autograd.grad(ref_out2, x64, g)
    assert_close_scaled(gx, gx_ref, dtype, "grad x")


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gradcheck_float64(mode):
    """torch.autograd.gradcheck through the fused backward ops, every option on (masks fixed by the seed)."""
    extra = dict(proj_size=3) if mode == "LSTM" else {}
    m = make(mode, H=5, layer_norm=True, zoneout=0.3, recurrent_dropout=0.3, **extra).train()
    x = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    params = list(m.parameters())

    def fn(x, *ps):
        with torch.random.fork_rng():
            torch.manual_seed(7)
            out = torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()], ps)), (x,))
        return out[0]

    # gradcheck compares against finite differences; functional_call under gradcheck runs the fused backward
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------ masks
def test_zoneout_masks_reproducible_and_rate():
    m = fastrnn.LSTM(8, 64, zoneout=0.3).train()
    rec = Recorder(m)
    x = torch.randn(50, 16, 8)
    torch.manual_seed(3)
    with torch.no_grad():
        y1 = m(x)[0]
    torch.manual_seed(3)
    with torch.no_grad():
        y2 = m(x)[0]
    torch.manual_seed(4)
    with torch.no_grad():
        y3 = m(x)[0]
    assert torch.equal(y1, y2), "the same seed must give the same masks"
    assert not torch.equal(y1, y3)
    k_h, k_c, mask = rec.masks[0]
    assert mask is None and k_h.shape == (50, 16, 64) and k_c.shape == (50, 16, 64)
    assert set(k_h.unique().tolist()) <= {0.0, 1.0}
    for k in (k_h, k_c):  # 51200 Bernoulli(0.3) draws: standard deviation 0.002
        assert abs(k.mean().item() - 0.3) < 0.01
    assert not torch.equal(k_h, k_c), "h and c draw their own masks"


def test_eval_is_deterministic_expectation():
    m = make("LSTM", layer_norm=True, zoneout=0.3, recurrent_dropout=0.5, weight_drop=0.5).eval()
    rec = Recorder(m)
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    with torch.no_grad():
        a, b = m(x)[0], m(x)[0]
    assert torch.equal(a, b)
    k_h, k_c, mask = rec.masks[0]
    assert mask is None and k_h.numel() == 1 and k_h.item() == pytest.approx(0.3)


def test_recurrent_dropout_mask_rate_and_scale():
    m = fastrnn.GRU(4, 200, recurrent_dropout=0.25).train()
    rec = Recorder(m)
    with torch.no_grad():
        m(torch.randn(3, 100, 4))
    _, _, mask = rec.masks[0]
    assert mask.shape == (100, 200)  # one mask per sequence, reused at every step
    values = set(mask.unique().tolist())
    assert values <= {0.0, torch.tensor(1 / 0.75).item()} and len(values) == 2  # in float32
    assert abs((mask == 0).double().mean().item() - 0.25) < 0.015  # 20000 draws: sd 0.003


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_weight_drop_is_dropconnect(mode):
    """weight_drop=p in training equals the plain module with W_hh * Bernoulli(1-p) / (1-p) of the same draw;
    in eval it is the plain module."""
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True)
    m = (fastrnn.LSTM if mode == "LSTM" else fastrnn.GRU)(4, 6, weight_drop=0.4, **kw).double()
    plain = (fastrnn.LSTM if mode == "LSTM" else fastrnn.GRU)(4, 6, **kw).double()
    plain.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.manual_seed(11)
    out = m.train()(x)[0]
    torch.manual_seed(11)  # the module draws each layer/direction's mask in this order
    with torch.no_grad():
        for layer in range(2):
            for sfx in ("", "_reverse"):
                w = getattr(plain, f"weight_hh_l{layer}{sfx}")
                w.copy_(F.dropout(w, p=0.4, training=True))
    # torch.nn on the dropped weights: the same numbers
    ref = (nn.LSTM if mode == "LSTM" else nn.GRU)(4, 6, **kw).double()
    ref.load_state_dict(plain.state_dict())
    assert_close(out, ref(x)[0], torch.float64, "weight_drop train")
    ref.load_state_dict(m.state_dict())
    assert_close(m.eval()(x)[0], ref(x)[0], torch.float64, "weight_drop eval")
    # and the gradient reaches the undropped weight through the mask
    m.train()
    m(x)[0].sum().backward()
    assert m.weight_hh_l0.grad is not None and (m.weight_hh_l0.grad == 0).any()


# ------------------------------------------------------------------------------------ parameters, errors
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_parameters_names_init_and_state_dict(mode):
    cls, tcls = (fastrnn.LSTM, nn.LSTM) if mode == "LSTM" else (fastrnn.GRU, nn.GRU)
    m = cls(4, 6, num_layers=2, bidirectional=True, layer_norm=True)
    t = tcls(4, 6, num_layers=2, bidirectional=True)
    G = 4 if mode == "LSTM" else 3
    ln_keys = [k for k in m.state_dict() if k.startswith("ln_")]
    parts = ["ih", "hh"] + (["c"] if mode == "LSTM" else [])
    expected = {f"ln_{p}_{kind}_l{l}{s}" for p in parts for kind in ("weight", "bias") for l in (0, 1)
                for s in ("", "_reverse")}
    assert set(ln_keys) == expected
    assert list(m.state_dict())[:len(t.state_dict())] == list(t.state_dict()), "torch.nn's entries come first"
    for k in ln_keys:
        v = m.state_dict()[k]
        width = 6 if k.startswith("ln_c") else G * 6
        assert v.shape == (width,)
        assert torch.equal(v, torch.ones_like(v) if "_weight_" in k else torch.zeros_like(v)), k
    m.reset_parameters()
    assert torch.equal(m.ln_hh_weight_l0, torch.ones(G * 6))
    # torch.nn's weights load with strict=False, missing exactly the LayerNorm entries; back with strict=True
    missing = m.load_state_dict(t.state_dict(), strict=False).missing_keys
    assert set(missing) == expected
    t.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("ln_")}, strict=True)
    # options off: exactly torch.nn's parameters
    assert list(cls(4, 6, zoneout=0.1, weight_drop=0.2, recurrent_dropout=0.1).state_dict()) == \
        list(tcls(4, 6).state_dict())


@pytest.mark.parametrize("kwargs,exc,text", [
    (dict(zoneout=1.0), ValueError, "zoneout"),
    (dict(zoneout=-0.1), ValueError, "zoneout"),
    (dict(weight_drop=1.5), ValueError, "weight_drop"),
    (dict(recurrent_dropout="0.1"), ValueError, "recurrent_dropout"),
    (dict(layer_norm=1), TypeError, "layer_norm"),
    (dict(zoneout=(0.1, 0.2, 0.3)), ValueError, "zoneout"),
])
def test_bad_options(kwargs, exc, text):
    with pytest.raises(exc, match=text):
        fastrnn.LSTM(4, 6, **kwargs)


def test_gru_zoneout_pair_and_rnn_options_refused():
    with pytest.raises(ValueError, match="zoneout"):
        fastrnn.GRU(4, 6, zoneout=(0.1, 0.2))
    with pytest.raises(TypeError):
        fastrnn.RNN(4, 6, layer_norm=True)


def test_options_off_is_torch_nn():
    """With the options at their defaults nothing changes: same numbers as torch.nn (the plain ops run)."""
    m = fastrnn.LSTM(4, 6, zoneout=0.0, layer_norm=False).double()
    assert not m._uses_ext_ops
    t = nn.LSTM(4, 6).double()
    t.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    assert_close(m(x)[0], t(x)[0], torch.float64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_cuda_matches_cpu_or_is_refused_clearly(mode):
    """On a GPU: the CUDA kernels of the options against the CPU ones (eval: no random draws to line up),
    or, in a build without them, NotImplementedError naming the option."""
    m = make(mode, dtype=torch.float64, layer_norm=True, zoneout=0.2).eval()
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    op = f"fastrnn::{mode.lower()}_ext_forward"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"):
        with pytest.raises(NotImplementedError, match="layer_norm"):
            m.cuda()(x.cuda())
        return
    want = m(x)[0]
    assert_close(m.cuda()(x.cuda())[0].cpu(), want, torch.float64, "cuda vs cpu")


# -------------------------------------------------------------------------------- what the modules keep
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_torch_compile_fullgraph(mode):
    m = make(mode, dtype=torch.float32, layer_norm=True, zoneout=0.2, recurrent_dropout=0.2)
    x = torch.randn(5, 3, 4)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    m.eval()
    assert_close(compiled(x)[0], m(x)[0], torch.float32, "compiled eval")
    m.train()
    torch.manual_seed(5)
    y = compiled(x)[0]
    y.sum().backward()
    assert m.ln_hh_weight_l0.grad is not None


def test_autocast_cpu_bfloat16():
    m = make("LSTM", dtype=torch.float32, layer_norm=True, zoneout=0.2)
    x = torch.randn(5, 3, 4)
    m.eval()
    ref = m(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)[0]
    assert_close(out.float(), ref, torch.bfloat16, "autocast")


def test_onnx_export_refused():
    pytest.importorskip("onnx")
    import io
    m = fastrnn.LSTM(4, 6, layer_norm=True).eval()
    with pytest.raises(Exception, match="layer_norm"):
        torch.onnx.export(m, (torch.randn(3, 2, 4),), io.BytesIO(), dynamo=False)


def test_batch_first_unbatched_and_inter_layer_dropout():
    m = make("GRU", dtype=torch.float64, num_layers=2, dropout=0.5, batch_first=True, layer_norm=True, zoneout=0.1)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    m.eval()
    y_b = m(x)[0]
    y_u = m(x[0])[0]  # unbatched [T, I] with batch_first: the one sequence
    assert_close(y_u, y_b[0], torch.float64, "unbatched")
    m.train()
    torch.manual_seed(0)
    a = m(x)[0]
    torch.manual_seed(0)
    assert torch.equal(a, m(x)[0])


# ------------------------------------------------------------------------------------------------ cells
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_cells_match_reference(mode, training):
    """LSTMCell/GRUCell with layer_norm and zoneout: one step of the reference cell, values and gradients."""
    torch.manual_seed(0)
    cls = fastrnn.LSTMCell if mode == "LSTM" else fastrnn.GRUCell
    cell = cls(4, 6, layer_norm=True, zoneout=0.3).double().train(training)
    with torch.no_grad():
        for name, prm in cell.named_parameters():
            if name.startswith("ln_"):
                prm.add_(torch.randn_like(prm) * 0.3)
    rec = Recorder(cell)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    out = cell(x, (h, c)) if mode == "LSTM" else (cell(x, h), None)
    k_h, k_c, mask = rec.masks[0]
    assert mask is None
    if training:
        assert k_h.shape == (1, 3, 6)
        k_h, k_c = k_h[0], (k_c[0] if k_c is not None else None)
    ln = lambda p: (getattr(cell, f"ln_{p}_weight"), getattr(cell, f"ln_{p}_bias"))  # noqa: E731
    gx = reference.input_gates(mode, x, cell.weight_ih, cell.bias_ih, cell.bias_hh, ln("ih"))
    if mode == "LSTM":
        ref = reference.lstm_ext_cell(gx, h, c, cell.weight_hh, None, ln("hh"), ln("c"), k_h, k_c)
    else:
        ref = (reference.gru_ext_cell(gx, h, cell.weight_hh, cell.bias_hh, ln("hh"), k_h), None)
    for got, want, what in zip(out, ref, ("h", "c")):
        if want is not None:
            assert_close(got, want, torch.float64, what)
    wrt = [x, h] + ([c] if mode == "LSTM" else []) + list(cell.parameters())
    loss = lambda o: sum((t * (i + 1.5)).sum() for i, t in enumerate(o) if t is not None)  # noqa: E731
    for g, w in zip(torch.autograd.grad(loss(out), wrt), torch.autograd.grad(loss(ref), wrt)):
        assert_close_scaled(g, w, torch.float64, "cell grad")


def test_cells_have_no_sequence_options():
    with pytest.raises(TypeError):
        fastrnn.LSTMCell(4, 6, weight_drop=0.1)
    with pytest.raises(TypeError):
        fastrnn.GRUCell(4, 6, recurrent_dropout=0.1)
    assert list(fastrnn.GRUCell(4, 6, zoneout=0.2).state_dict()) == list(nn.GRUCell(4, 6).state_dict())


# ---------------------------------------------------------------------------------------------- opcheck
def _ext_args(mode, layout, train=True, proj=False):
    """Arguments of fastrnn::{lstm,gru}_ext_forward with every option on (float32)."""
    torch.manual_seed(0)
    H, B, T = 4, 3, 3
    G = 4 if mode == "LSTM" else 3
    D = 2 if proj else H
    batch_sizes = torch.tensor([3, 2, 2]) if layout == "packed" else None
    rows = (7,) if layout == "packed" else (T, B)
    rnd = lambda *s: torch.randn(*s, requires_grad=train)  # noqa: E731
    gx, hx, w_hh = rnd(*rows, G * H), rnd(B, D), rnd(G * H, D)
    lnw, lnb = rnd(G * H), rnd(G * H)
    k_h = torch.bernoulli(torch.full((*rows, D), 0.3))
    mask = torch.bernoulli(torch.full((B, D), 0.7)) / 0.7
    if mode == "LSTM":
        k_c = torch.bernoulli(torch.full((*rows, H), 0.3))
        w_hr = rnd(D, H) if proj else None
        return (gx, batch_sizes, hx, rnd(B, H), w_hh, w_hr, lnw, lnb, rnd(H), rnd(H), k_h, k_c, mask,
                layout == "packed", train)
    return gx, batch_sizes, hx, w_hh, rnd(G * H), lnw, lnb, k_h, mask, layout == "packed", train


@pytest.mark.parametrize("train", [True, False], ids=["train", "inference"])
@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("mode,proj", [("LSTM", False), ("LSTM", True), ("GRU", False)],
                         ids=["LSTM", "LSTM-proj", "GRU"])
def test_opcheck_ext_forward(mode, proj, layout, train):
    """Fake kernels (shapes, dtypes, the workspace width) and autograd registration agree with the kernels."""
    op = torch.ops.fastrnn.lstm_ext_forward if mode == "LSTM" else torch.ops.fastrnn.gru_ext_forward
    torch.library.opcheck(op, _ext_args(mode, layout, train, proj))


@pytest.mark.parametrize("mode,proj", [("LSTM", False), ("LSTM", True), ("GRU", False)],
                         ids=["LSTM", "LSTM-proj", "GRU"])
def test_opcheck_ext_backward(mode, proj):
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in _ext_args(mode, "packed", True, proj)]
    if mode == "LSTM":
        gx, bs, hx, cx, w_hh, w_hr, lnw, _, lncw, _, k_h, k_c, mask, reverse, _ = args
        out, hy, cy, ws = torch.ops.fastrnn.lstm_ext_forward(*args)
        bwd = (torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy), bs, hx, cx, w_hh, w_hr, lnw, lncw,
               k_h, k_c, mask, out, ws, reverse)
        torch.library.opcheck(torch.ops.fastrnn.lstm_ext_backward, bwd)
    else:
        gx, bs, hx, w_hh, b_hh, lnw, _, k_h, mask, reverse, _ = args
        out, hy, ws = torch.ops.fastrnn.gru_ext_forward(*args)
        bwd = (torch.randn_like(out), torch.randn_like(hy), bs, hx, w_hh, lnw, k_h, mask, out, ws, reverse, True)
        torch.library.opcheck(torch.ops.fastrnn.gru_ext_backward, bwd)


# ---------------------------------------------------------------------------- beyond first derivatives
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_double_backward_and_torch_func(mode):
    """create_graph=True (gradgradcheck) and torch.func run through the plain-PyTorch equations of the ext ops
    (composite.ext_sequence), and agree with the fused first derivatives."""
    m = make(mode, H=4, layer_norm=True, zoneout=0.3, recurrent_dropout=0.2).train()
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)

    def fn(x, *ps):
        with torch.random.fork_rng():
            torch.manual_seed(3)
            return torch.func.functional_call(m, dict(zip(names, ps)), (x,))[0]

    params = [p.detach().requires_grad_(True) for p in m.parameters()]
    assert torch.autograd.gradgradcheck(lambda x: fn(x, *params), (x,), eps=1e-6, atol=1e-5)
    # torch.func.grad of a scalar loss equals the fused backward's gradient
    fused = torch.autograd.grad(fn(x, *params).sum(), x)[0]
    functorch = torch.func.grad(lambda x: fn(x, *params).sum())(x)
    assert_close(functorch, fused, torch.float64, "torch.func.grad vs fused backward")
