"""What autograd asks beyond first derivatives: double backward (create_graph=True), forward-mode AD
(torch.func.jvp, jacfwd, hessian, torch.autograd.forward_ad), and torch.func.grad over
torch.func.functional_call (the MAML pattern). The fused kernels compute first derivatives; everything else
runs through fastrnn/composite.py. Oracles: torch.autograd.gradgradcheck (float64, numerical), torch.nn in
float64 and float32 with the same weights, and fastrnn.reference where torch.nn itself refuses (its LSTM
under forward-mode AD)."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from common import MODES, assert_close, assert_close_scaled, make_pair

CELLS = {"LSTM": (fastrnn.LSTMCell, nn.LSTMCell, {}), "GRU": (fastrnn.GRUCell, nn.GRUCell, {}),
         "RNN_TANH": (fastrnn.RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
         "RNN_RELU": (fastrnn.RNNCell, nn.RNNCell, {"nonlinearity": "relu"})}
# Module configurations for the second-order checks: (name, constructor kwargs, packed lengths or None).
CONFIGS = [("plain", {}, None), ("bidir2", {"num_layers": 2, "bidirectional": True}, None),
           ("packed_rev", {"bidirectional": True}, [3, 1, 2]), ("batch_first_nobias", {"batch_first": True,
                                                                                      "bias": False}, None)]


def cell_pair(mode, I, H, dtype=torch.float64):
    fast_cls, ref_cls, kw = CELLS[mode]
    fast = fast_cls(I, H, **kw).to(dtype)
    ref = ref_cls(I, H, **kw).to(dtype)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def flat_outputs(out):
    """The floating-point tensors of a module's output (PackedSequence data included), as a tuple."""
    leaves = torch.utils._pytree.tree_leaves(out)
    return tuple(t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point())


def module_fn(module, packed_lengths):
    """f(x, h0, *params) -> outputs, running `module` with the given parameters (functional_call)."""
    names = [n for n, _ in module.named_parameters()]

    def f(x, h0, *params):
        inp = x if packed_lengths is None else pack_padded_sequence(x, torch.tensor(packed_lengths),
                                                                     enforce_sorted=False)
        hx = (h0, h0.new_full((*h0.shape[:-1], module.hidden_size), 0.1)) if module.mode == "LSTM" else h0
        return flat_outputs(torch.func.functional_call(module, dict(zip(names, params)), (inp, hx)))

    return f


def module_inputs(module, T=3, B=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    dirs = 2 if module.bidirectional else 1
    H_out = module.proj_size or module.hidden_size
    shape = (B, T, module.input_size) if module.batch_first else (T, B, module.input_size)
    x = torch.randn(shape, generator=g, dtype=dtype).requires_grad_()
    h0 = (0.5 * torch.randn(module.num_layers * dirs, B, H_out, generator=g, dtype=dtype)).requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    return x, h0, params


# --------------------------------------------------------------------------------------- gradgradcheck
@pytest.mark.parametrize("config", CONFIGS, ids=[c[0] for c in CONFIGS])
@pytest.mark.parametrize("mode", MODES + ["LSTM_proj"])
def test_gradgradcheck_modules(mode, config):
    name, kw, lengths = config
    kw = dict(kw, proj_size=2) if mode == "LSTM_proj" else kw
    torch.manual_seed(0)
    fast, _ = make_pair(mode.replace("_proj", ""), 2, 3, dtype=torch.float64, **kw)
    x, h0, params = module_inputs(fast)
    if lengths is not None and fast.batch_first:
        pytest.skip("packed input has no batch_first layout")
    assert torch.autograd.gradgradcheck(module_fn(fast, lengths), (x, h0, *params), eps=1e-6, atol=1e-6,
                                        rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_gradgradcheck_cells(mode):
    torch.manual_seed(0)
    fast, _ = cell_pair(mode, 3, 4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in fast.parameters()]
    names = [n for n, _ in fast.named_parameters()]

    def f(x, h, c, *ps):
        hx = (h, c) if mode == "LSTM" else h
        return flat_outputs(torch.func.functional_call(fast, dict(zip(names, ps)), (x, hx)))

    assert torch.autograd.gradgradcheck(f, (x, h, c, *params), eps=1e-6, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------- double backward against torch.nn
def gradient_penalty_grads(module, x):
    """The issue's pattern: a gradient penalty, then backward into the parameters."""
    out = flat_outputs(module(x))[0]
    g, = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    g.pow(2).sum().backward()
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mode", MODES)
def test_double_backward_matches_torch_nn(mode, dtype):
    torch.manual_seed(0)
    fast, ref = make_pair(mode, 3, 4, dtype=dtype, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=dtype)
    got = gradient_penalty_grads(fast, x.clone().requires_grad_())
    want = gradient_penalty_grads(ref, x.clone().requires_grad_())
    for (n, _), a, b in zip(fast.named_parameters(), got, want):
        assert a is not None, f"{n}: no gradient"
        assert_close_scaled(a, b, dtype, f"{mode} {n}")


@pytest.mark.parametrize("mode", MODES)
def test_double_backward_cells_match_torch_nn(mode):
    torch.manual_seed(0)
    fast, ref = cell_pair(mode, 3, 4)
    x = torch.randn(2, 3, dtype=torch.float64)
    got = gradient_penalty_grads(fast, x.clone().requires_grad_())
    want = gradient_penalty_grads(ref, x.clone().requires_grad_())
    for a, b in zip(got, want):
        assert_close(a, b, torch.float64, mode)


def test_double_backward_bfloat16_matches_float32():
    """Half types: second-order values from the float32 computation, rounded; never None or zero."""
    torch.manual_seed(0)
    fast, _ = make_pair("GRU", 3, 4)
    x = torch.randn(5, 2, 3)
    want = gradient_penalty_grads(fast, x.clone().requires_grad_())
    fast.zero_grad()
    fast16 = fast.to(torch.bfloat16)
    got = gradient_penalty_grads(fast16, x.to(torch.bfloat16).requires_grad_())
    for a, b in zip(got, want):
        assert a.abs().max() > 0
        assert_close_scaled(a, b, torch.bfloat16, "bf16 second order")


def test_first_order_create_graph_equals_fused():
    """create_graph=True switches the backward to the composite equations: same first derivatives."""
    torch.manual_seed(0)
    fast, _ = make_pair("LSTM", 3, 4, num_layers=2, bidirectional=True, proj_size=2)
    x = torch.randn(5, 2, 3, requires_grad=True)
    loss = lambda: fast(x)[0].pow(2).sum()  # noqa: E731
    fused = torch.autograd.grad(loss(), [x, *fast.parameters()])
    graph = torch.autograd.grad(loss(), [x, *fast.parameters()], create_graph=True)
    for a, b in zip(graph, fused):
        assert_close(a, b, torch.float32, "create_graph")


# --------------------------------------------------------------------------------------- forward mode
def jvp_of(module, x, t):
    return torch.func.jvp(lambda x: flat_outputs(module(x)), (x,), (t,))[1]


@pytest.mark.parametrize("mode", MODES)
def test_jvp_modules(mode):
    torch.manual_seed(0)
    fast, ref = make_pair(mode, 3, 4, dtype=torch.float64, bidirectional=True)
    x, t = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)
    got = jvp_of(fast, x, t)
    assert all(g.abs().max() > 0 for g in got)
    if mode == "LSTM":  # torch.nn's LSTM raises under forward AD: the oracle is the double-precision VJP
        want = torch.autograd.functional.jvp(lambda x: flat_outputs(ref(x)), x, t)[1]
    else:
        want = jvp_of(ref, x, t)
    for a, b in zip(got, want):
        assert_close(a, b, torch.float64, f"{mode} jvp")


@pytest.mark.parametrize("grad_mode", ["enabled", "no_grad"])
@pytest.mark.parametrize("mode", MODES)
def test_forward_ad_dual_tensors_cells(mode, grad_mode):
    """Tangents propagate whatever the grad mode, as torch.nn's do: under no_grad the modules call the forward op
    below autograd (fastrnn/ops.py _forward_call) except under forward AD, where the tangent would be lost."""
    torch.manual_seed(0)
    fast, ref = cell_pair(mode, 3, 4)
    x, t = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    with fwAD.dual_level(), torch.set_grad_enabled(grad_mode == "enabled"):
        out = flat_outputs(fast(fwAD.make_dual(x, t)))
        got = [fwAD.unpack_dual(o).tangent for o in out]
    want = torch.autograd.functional.jvp(lambda x: flat_outputs(ref(x)), x, t)[1]
    for a, b in zip(got, want):
        assert a is not None
        assert_close(a, b, torch.float64, f"{mode} forward AD")


def test_jacfwd_and_hessian_gru():
    torch.manual_seed(0)
    fast, ref = make_pair("GRU", 2, 3, dtype=torch.float64)
    x = torch.randn(3, 1, 2, dtype=torch.float64)
    f = lambda m: (lambda x: m(x)[0].pow(2).sum())  # noqa: E731
    assert_close(torch.func.jacfwd(lambda x: fast(x)[0])(x), torch.func.jacfwd(lambda x: ref(x)[0])(x),
                 torch.float64, "jacfwd")
    assert_close(torch.func.hessian(f(fast))(x), torch.func.hessian(f(ref))(x), torch.float64, "hessian")


def test_vmap_over_batch_of_sequences():
    torch.manual_seed(0)
    fast, ref = make_pair("LSTM", 3, 4, dtype=torch.float64)
    xs = torch.randn(4, 5, 2, 3, dtype=torch.float64)
    got = torch.func.vmap(lambda x: fast(x)[0])(xs)
    assert_close(got, torch.stack([ref(x)[0] for x in xs]), torch.float64, "vmap")


# ------------------------------------------------------------------------------ torch.func over modules
def maml_step(module, x, y):
    """One inner SGD step with torch.func.grad, then the outer gradient through it (second order)."""
    params = {n: p.detach().clone() for n, p in module.named_parameters()}
    loss = lambda p, x: (torch.func.functional_call(module, p, (x,))[0] - y).pow(2).mean()  # noqa: E731

    def outer(p):
        g = torch.func.grad(loss)(p, x)
        adapted = {n: p[n] - 0.1 * g[n] for n in p}
        return loss(adapted, x)

    return torch.func.grad(outer)(params)


@pytest.mark.parametrize("mode", MODES)
def test_func_grad_functional_call_maml(mode):
    torch.manual_seed(0)
    fast, ref = make_pair(mode, 3, 4, dtype=torch.float64)
    x, y = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(5, 2, 4, dtype=torch.float64)
    first = torch.func.grad(lambda p: torch.func.functional_call(fast, p, (x,))[0].sum())(
        dict(fast.named_parameters()))
    first_ref = torch.func.grad(lambda p: torch.func.functional_call(ref, p, (x,))[0].sum())(
        dict(ref.named_parameters()))
    for n in first:
        assert_close(first[n], first_ref[n], torch.float64, f"{mode} grad {n}")
    got, want = maml_step(fast, x, y), maml_step(ref, x, y)
    for n in got:
        assert_close(got[n], want[n], torch.float64, f"{mode} maml {n}")
