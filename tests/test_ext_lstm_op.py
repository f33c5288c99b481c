"""fastrnn::lstm_ext_forward / lstm_ext_backward (the LSTM with layer_norm, zoneout and recurrent dropout) on
the CPU, called directly, against the plain-PyTorch oracle fastrnn.composite.lstm_ext_forward and its autograd
gradients: dense and packed, both directions, each option alone and all together, float64/float32, and
bfloat16 against float32 on the same rounded inputs; plus the argument checks."""
from __future__ import annotations

import pytest
import torch

import fastrnn  # noqa: F401  (loads the extension and the fake kernels)
from fastrnn import composite
from fastrnn.composite import accumulation_dtype
from common import CAPABILITY_HIDDEN, CPU_CAPABILITIES, assert_close, assert_close_scaled, use_cpu_capability

ops = torch.ops.fastrnn
T_DENSE, B_DENSE = 5, 3
PACKED_SIZES = [3, 3, 2, 1]
H, P_PROJ = 8, 5

# name -> options. zoneout: "mask" (Bernoulli 0/1 rows), "const" (the one-element eval constant) or None.
CONFIGS = {
    "plain": {},
    "proj": dict(proj=True),
    "ln_hh": dict(ln_hh=True),
    "ln_c": dict(ln_c=True),
    "zoneout_mask": dict(zo_h="mask", zo_c="mask"),
    "zoneout_const": dict(zo_h="const", zo_c="const"),
    "zoneout_h_only": dict(zo_h="mask"),
    "zoneout_c_only": dict(zo_c="const"),
    "rec_mask": dict(mask=True),
    "proj_zoneout_mask": dict(proj=True, zo_h="mask", mask=True),
    "all_masks": dict(proj=True, ln_hh=True, ln_c=True, zo_h="mask", zo_c="mask", mask=True),
    "all_const": dict(proj=True, ln_hh=True, ln_c=True, zo_h="const", zo_c="const", mask=True),
    "all_no_proj": dict(ln_hh=True, ln_c=True, zo_h="mask", zo_c="const", mask=True),
}
ARG_NAMES = ["gates_x", "batch_sizes", "hx", "cx", "w_hh", "w_hr", "ln_hh_weight", "ln_hh_bias", "ln_c_weight",
             "ln_c_bias", "zoneout_h", "zoneout_c", "recurrent_mask"]
# The differentiable arguments, with the index of their gradient among the backward op's results.
GRAD_OF = {"gates_x": 0, "hx": 1, "cx": 2, "w_hh": 3, "w_hr": 4, "ln_hh_weight": 5, "ln_hh_bias": 6,
           "ln_c_weight": 7, "ln_c_bias": 8}


def make_args(dtype, packed: bool, proj=False, ln_hh=False, ln_c=False, zo_h=None, zo_c=None, mask=False,
              seed=0, hidden=H, proj_size=P_PROJ, sizes=None, dense=(T_DENSE, B_DENSE)) -> dict:
    """The forward op's arguments (without reverse/train) as a dict, in `dtype` (masks: accumulation dtype).
    sizes: the packed batch sizes (default PACKED_SIZES); dense: (T, B) of the dense layout."""
    g = torch.Generator().manual_seed(seed)
    acc = accumulation_dtype(dtype)
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    H = hidden
    P = proj_size if proj else H
    if packed:
        sizes = PACKED_SIZES if sizes is None else sizes
        batch_sizes = torch.tensor(sizes, dtype=torch.int64)
        lead, B = [sum(sizes)], sizes[0]
    else:
        batch_sizes, lead, B = None, list(dense), dense[1]
    a = dict(gates_x=rnd(*lead, 4 * H), batch_sizes=batch_sizes, hx=rnd(B, P, scale=0.5), cx=rnd(B, H, scale=0.5),
             w_hh=rnd(4 * H, P, scale=0.4), w_hr=rnd(P, H, scale=0.5) if proj else None,
             ln_hh_weight=None, ln_hh_bias=None, ln_c_weight=None, ln_c_bias=None, zoneout_h=None, zoneout_c=None,
             recurrent_mask=None)
    if ln_hh:
        a["ln_hh_weight"], a["ln_hh_bias"] = 1 + rnd(4 * H, scale=0.2), rnd(4 * H, scale=0.2)
    if ln_c:
        a["ln_c_weight"], a["ln_c_bias"] = 1 + rnd(H, scale=0.2), rnd(H, scale=0.2)

    def zoneout(kind, d):
        if kind == "mask":
            return torch.bernoulli(torch.full((*lead, d), 0.3, dtype=torch.float64), generator=g).to(acc)
        if kind == "const":
            return torch.tensor(0.3, dtype=acc)
        return None

    a["zoneout_h"], a["zoneout_c"] = zoneout(zo_h, P), zoneout(zo_c, H)
    if mask:
        a["recurrent_mask"] = (torch.bernoulli(torch.full((B, P), 0.7, dtype=torch.float64), generator=g) / 0.7).to(acc)
    return a


def positional(a: dict):
    return tuple(a[n] for n in ARG_NAMES)


def oracle(a: dict, reverse: bool, grads):
    """The composite's outputs and the gradients of sum(out * grads) with respect to the differentiable
    arguments present (name -> gradient)."""
    a = {n: (t.detach().clone().requires_grad_(True) if n in GRAD_OF and t is not None else t)
         for n, t in a.items()}
    outs = composite.lstm_ext_forward(*positional(a), reverse)
    wrt = [n for n in GRAD_OF if a[n] is not None]
    gs = torch.autograd.grad(outs, [a[n] for n in wrt], grads)
    return [o.detach() for o in outs], dict(zip(wrt, gs))


def run_op(a: dict, reverse: bool, grads):
    out, hy, cy, ws = ops.lstm_ext_forward(*positional(a), reverse, True)
    res = ops.lstm_ext_backward(*grads, a["batch_sizes"], a["hx"], a["cx"], a["w_hh"], a["w_hr"],
                                a["ln_hh_weight"], a["ln_c_weight"], a["zoneout_h"], a["zoneout_c"],
                                a["recurrent_mask"], out, ws, reverse)
    return (out, hy, cy, ws), res


def random_grads(a: dict, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    P = a["hx"].shape[-1]
    lead = a["gates_x"].shape[:-1]
    return tuple(torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)
                 for s in [(*lead, P), a["hx"].shape, a["cx"].shape])


def check_against_oracle(a: dict, reverse: bool, dtype, ref_dtype):
    grads = random_grads(a, dtype)
    (out, hy, cy, ws), res = run_op(a, reverse, grads)
    up = {n: (t.to(ref_dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t) for n, t in a.items()}
    (r_out, r_hy, r_cy), r_grads = oracle(up, reverse, tuple(g.to(ref_dtype) for g in grads))
    for name, got, want in [("output", out, r_out), ("hy", hy, r_hy), ("cy", cy, r_cy)]:
        assert got.dtype == dtype, name
        assert_close(got, want, dtype, name)
    assert ws.dtype == accumulation_dtype(dtype)
    H_ = a["cx"].shape[-1]
    assert ws.shape == (out.numel() // out.shape[-1], fastrnn.ops.lstm_ext_workspace_width(
        H_, a["ln_hh_weight"] is not None, a["ln_c_weight"] is not None))
    for name, i in GRAD_OF.items():
        if a[name] is None:
            assert res[i].shape == (0,), f"grad of absent {name}"
            continue
        assert res[i].dtype == dtype and res[i].shape == a[name].shape, name
        # Weight gradients are sums over rows; in bfloat16 all of them are (every rounded step adds), as in
        # tests/test_modules_parity.py: compared relative to their scale.
        elementwise = name in ("gates_x", "hx", "cx") and dtype != torch.bfloat16
        check = assert_close if elementwise else assert_close_scaled
        check(res[i], r_grads[name], dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_composite(config, packed, reverse, dtype):
    # float32 against the composite in float64 on the same inputs: the float32 composite's own rounding error
    # (its hx gradients, summed over the steps through LayerNorm's 1/sigma, are off by ~2e-5 relative) is
    # larger than the kernels'.
    a = make_args(dtype, packed, **CONFIGS[config])
    check_against_oracle(a, reverse, dtype, torch.float64)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("config", ["plain", "proj", "all_masks", "all_const", "all_no_proj"])
def test_bfloat16_against_float32(config, packed, reverse):
    a = make_args(torch.bfloat16, packed, **CONFIGS[config])
    check_against_oracle(a, reverse, torch.bfloat16, torch.float32)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("config", ["plain", "all_masks", "all_const"])
def test_inference_returns_empty_workspace(config, packed):
    a = make_args(torch.float32, packed, **CONFIGS[config])
    trained = ops.lstm_ext_forward(*positional(a), True, True)
    out, hy, cy, ws = ops.lstm_ext_forward(*positional(a), True, False)
    assert ws.shape == (0, 0) and ws.dtype == torch.float32
    for got, want in zip((out, hy, cy), trained[:3]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_workspace_layout():
    """The columns csrc/fastrnn.cpp states: i, f, g, o; c after zoneout; tanh(u); [LN_hh xhat, 1/sigma];
    [LN_c xhat, 1/sigma]."""
    a = make_args(torch.float64, False, ln_hh=True, ln_c=True, zo_c="mask")
    out, hy, cy, ws = ops.lstm_ext_forward(*positional(a), False, True)
    N = T_DENSE * B_DENSE
    assert ws.shape == (N, 6 * H + 4 * H + 1 + H + 1)
    i, f, g, o = ws[:, :4 * H].chunk(4, dim=1)
    assert ((i > 0) & (i < 1) & (f > 0) & (f < 1) & (o > 0) & (o < 1)).all() and (g.abs() < 1).all()
    torch.testing.assert_close(ws[-B_DENSE:, 4 * H:5 * H], cy)  # c of the last step = c_n
    torch.testing.assert_close(o * ws[:, 5 * H:6 * H], out.reshape(N, H))  # h = o * tanh(u)
    xa, ra = ws[:, 6 * H:10 * H], ws[:, 10 * H]
    torch.testing.assert_close(xa.mean(1), torch.zeros(N, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (ra > 0).all()
    xc = ws[:, 10 * H + 1:11 * H + 1]
    torch.testing.assert_close(xc.mean(1), torch.zeros(N, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.tanh(xc * a["ln_c_weight"] + a["ln_c_bias"]), ws[:, 5 * H:6 * H])


def test_backward_reads_strided_grad_output():
    """grad_output as a batch_first module hands it over (a transposed view) gives the same gradients."""
    a = make_args(torch.float64, False, **CONFIGS["all_masks"])
    grads = random_grads(a, torch.float64)
    _, res = run_op(a, False, grads)
    go_t = grads[0].transpose(0, 1).contiguous().transpose(0, 1)
    assert not go_t.is_contiguous()
    _, res2 = run_op(a, False, (go_t, grads[1], grads[2]))
    for x, y in zip(res, res2):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_float16_is_rejected():
    a = make_args(torch.float16, False)
    with pytest.raises(TypeError, match="float16 is not supported on the CPU"):
        ops.lstm_ext_forward(*positional(a), False, True)


ERRORS = (RuntimeError, ValueError, TypeError)


def _bad(change: dict, name: str):
    a = make_args(torch.float32, False, proj=True, ln_hh=True, ln_c=True, zo_h="mask", zo_c="mask", mask=True)
    a.update(change(a) if callable(change) else change)
    with pytest.raises(ERRORS, match=name):
        ops.lstm_ext_forward(*positional(a), False, True)


BAD_FORWARD = {
    "mask_shape": (lambda a: {"recurrent_mask": a["recurrent_mask"][:, :-1]}, "recurrent_mask"),
    "mask_dtype": (lambda a: {"recurrent_mask": a["recurrent_mask"].double()}, "recurrent_mask"),
    "zoneout_h_shape": (lambda a: {"zoneout_h": a["zoneout_h"][:, :, :-1]}, "zoneout_h"),
    "zoneout_h_dtype": (lambda a: {"zoneout_h": a["zoneout_h"].bfloat16()}, "zoneout_h"),
    "zoneout_c_shape": (lambda a: {"zoneout_c": a["zoneout_c"][:-1]}, "zoneout_c"),
    "zoneout_c_const_dtype": (lambda a: {"zoneout_c": torch.tensor(0.1, dtype=torch.float64)}, "zoneout_c"),
    "ln_hh_only_weight": ({"ln_hh_bias": None}, "ln_hh_bias"),
    "ln_hh_only_bias": ({"ln_hh_weight": None}, "ln_hh_weight"),
    "ln_c_only_weight": ({"ln_c_bias": None}, "ln_c_bias"),
    "ln_c_only_bias": ({"ln_c_weight": None}, "ln_c_weight"),
    "ln_hh_weight_size": (lambda a: {"ln_hh_weight": a["ln_hh_weight"][:-1]}, "ln_hh_weight"),
    "ln_c_bias_dtype": (lambda a: {"ln_c_bias": a["ln_c_bias"].double()}, "ln_c_bias"),
    "w_hh_shape": (lambda a: {"w_hh": a["w_hh"][:, :-1]}, "w_hh"),
    "w_hr_shape": (lambda a: {"w_hr": a["w_hr"][:, :-1]}, "w_hr"),
    "hx_shape": (lambda a: {"hx": a["hx"][:-1]}, "hx"),
    "cx_dtype": (lambda a: {"cx": a["cx"].double()}, "cx"),
    "gates_x_width": (lambda a: {"gates_x": a["gates_x"][..., :-1]}, "gates_x"),
}


@pytest.mark.parametrize("case", list(BAD_FORWARD))
def test_bad_forward_args(case):
    _bad(*BAD_FORWARD[case])


def test_bad_backward_args():
    a = make_args(torch.float32, True, ln_hh=True, zo_h="mask", mask=True)
    grads = random_grads(a, torch.float32)
    out, hy, cy, ws = ops.lstm_ext_forward(*positional(a), False, False)

    def bwd(**kw):
        b = dict(a, output=out, workspace=ws, grads=grads)
        b.update(kw)
        return ops.lstm_ext_backward(*b["grads"], b["batch_sizes"], b["hx"], b["cx"], b["w_hh"], b["w_hr"],
                                     b["ln_hh_weight"], b["ln_c_weight"], b["zoneout_h"], b["zoneout_c"],
                                     b["recurrent_mask"], b["output"], b["workspace"], False)

    with pytest.raises(ERRORS, match="workspace"):  # the inference forward's empty workspace
        bwd()
    ws = ops.lstm_ext_forward(*positional(a), False, True)[3]
    with pytest.raises(ERRORS, match="workspace"):  # the workspace of other LN options
        bwd(workspace=ws, ln_hh_weight=None)
    with pytest.raises(ERRORS, match="recurrent_mask"):
        bwd(workspace=ws, recurrent_mask=a["recurrent_mask"].double())
    with pytest.raises(ERRORS, match="zoneout_h"):
        bwd(workspace=ws, zoneout_h=a["zoneout_h"][:-1])
    with pytest.raises(ERRORS, match="grad_cy"):
        bwd(workspace=ws, grads=(grads[0], grads[1], grads[2][:-1]))
    bwd(workspace=ws)  # and the right arguments pass


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("config", ["all_masks", "all_const", "all_no_proj"])
def test_bfloat16_against_state_rounding(config, packed, reverse, seed, monkeypatch):
    """bfloat16 keeps the h state in bfloat16 (the only rounding of its forward: the GEMMs, LayerNorms and the
    backward run in float32). Against the float32 composite whose h state is rounded the same way after every
    step the kernels agree far more closely than against the plain float32 composite, whose gradients can
    differ by ~10% of their scale on these LayerNorm configurations from that rounding alone."""
    from fastrnn import reference
    cell = reference.lstm_ext_cell

    def rounded_cell(*args, **kw):
        h, c = cell(*args, **kw)
        return h.to(torch.bfloat16).float(), c

    a = make_args(torch.bfloat16, packed, seed=seed, **CONFIGS[config])
    monkeypatch.setattr(reference, "lstm_ext_cell", rounded_cell)
    check_against_oracle(a, reverse, torch.bfloat16, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_larger_batches(packed, reverse, dtype):
    """Batches of 4+ rows (float32 GEMMs on MKL's packed weights for the full steps, at::mm for the shorter
    ones), all options on."""
    a = make_args(dtype, packed, seed=3, hidden=12, proj_size=7, sizes=[7, 6, 4, 4, 2, 1], dense=(4, 6),
                  **CONFIGS["all_masks"])
    check_against_oracle(a, reverse, dtype, torch.float64 if dtype == torch.float32 else torch.float32)


@pytest.mark.parametrize("config", ["all_masks", "all_no_proj"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_parallel_rows(reverse, config):
    """Steps wide enough for the row-parallel pointwise passes to split across threads."""
    a = make_args(torch.float32, True, seed=4, hidden=16, proj_size=9, sizes=[400, 350, 20], **CONFIGS[config])
    check_against_oracle(a, reverse, torch.float32, torch.float64)


@pytest.mark.parametrize("fast_math", ["1", "0"])
@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
def test_capabilities(capability, fast_math, monkeypatch):
    """The vectorised gate activations of every instruction-set variant (common.use_cpu_capability), with a
    projection and all masks in float32, without one in bfloat16."""
    use_cpu_capability(monkeypatch, capability, fast_math)
    for hidden in CAPABILITY_HIDDEN:
        a = make_args(torch.float32, True, seed=5, hidden=hidden, proj_size=2, **CONFIGS["all_masks"])
        check_against_oracle(a, False, torch.float32, torch.float64)
        a = make_args(torch.bfloat16, False, seed=5, hidden=hidden, **CONFIGS["all_no_proj"])
        check_against_oracle(a, True, torch.bfloat16, torch.float32)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_opcheck(packed, train):
    """The ops against their schemas and their fake (meta) implementations in fastrnn/ops.py."""
    a = make_args(torch.float32, packed, **CONFIGS["all_masks"])
    args = (*positional(a), False, train)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.lstm_ext_forward.default, args, test_utils=utils)
    if train:
        out, hy, cy, ws = ops.lstm_ext_forward(*args)
        bargs = (torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy), a["batch_sizes"], a["hx"],
                 a["cx"], a["w_hh"], a["w_hr"], a["ln_hh_weight"], a["ln_c_weight"], a["zoneout_h"],
                 a["zoneout_c"], a["recurrent_mask"], out, ws, False)
        torch.library.opcheck(ops.lstm_ext_backward.default, bargs, test_utils=utils)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_empty_sequence(reverse):
    """T = 0: the states pass through, the gradients of the initial states are those of the final ones."""
    a = make_args(torch.float64, False, dense=(0, 3), **CONFIGS["all_masks"])
    out, hy, cy, ws = ops.lstm_ext_forward(*positional(a), reverse, True)
    assert out.shape == (0, 3, P_PROJ) and ws.shape[0] == 0
    torch.testing.assert_close(hy, a["hx"])
    torch.testing.assert_close(cy, a["cx"])
    grads = random_grads(a, torch.float64)
    _, res = run_op(a, reverse, grads)
    assert res[0].shape == (0, 3, 4 * H)
    torch.testing.assert_close(res[1], grads[1])
    torch.testing.assert_close(res[2], grads[2])
    for i in range(3, 9):
        assert (res[i] == 0).all()


def test_strided_arguments():
    """Transposed (batch_first) gates_x, a non-contiguous hx and an expanded zoneout weight read like their
    contiguous copies."""
    a = make_args(torch.float64, False, **CONFIGS["all_masks"])
    grads = random_grads(a, torch.float64)
    (out, hy, cy, ws), res = run_op(a, True, grads)
    b = dict(a)
    b["gates_x"] = a["gates_x"].transpose(0, 1).contiguous().transpose(0, 1)
    b["hx"] = a["hx"].t().contiguous().t()
    b["zoneout_c"] = torch.tensor([[[1.0]]], dtype=torch.float64).expand(*a["gates_x"].shape[:-1], H)
    a2 = dict(a, zoneout_c=b["zoneout_c"].contiguous())
    assert not b["gates_x"].is_contiguous() and not b["hx"].is_contiguous()
    for x, y in zip(run_op(b, True, grads), run_op(a2, True, grads)):
        for u, v in zip(x, y):
            torch.testing.assert_close(u, v, rtol=0, atol=0)
    assert (out != run_op(a2, True, grads)[0][0]).any()  # the zoneout weight did change the result
