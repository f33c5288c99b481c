"""fastrnn::gru_ext_forward / gru_ext_backward (the GRU with layer_norm, zoneout and recurrent dropout) on the
CPU, called directly, against fastrnn.composite.gru_ext_forward (plain PyTorch) and its autograd gradients."""
import pytest
import torch

from common import CAPABILITY_HIDDEN, CPU_CAPABILITIES, TOL, assert_close, assert_close_scaled, use_cpu_capability
from fastrnn import composite

ops = torch.ops.fastrnn

T, B, H = 4, 3, 5
BATCH_SIZES = [3, 3, 2, 1]  # packed: N = 9 rows
# Option sets: (b_hh, ln_hh, zoneout: None | "mask" | "const", recurrent_mask)
CONFIGS = {
    "plain": (False, False, None, False),
    "bias": (True, False, None, False),
    "ln": (False, True, None, False),
    "ln_bias": (True, True, None, False),
    "zoneout_mask": (False, False, "mask", False),
    "zoneout_const": (True, False, "const", False),
    "recurrent_mask": (False, False, None, True),
    "all": (True, True, "mask", True),
    "all_const": (True, True, "const", True),
}


def acc_of(dtype):
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def make_args(dtype, packed, config, seed=0, hidden=H, batch_sizes=BATCH_SIZES):
    """The op's arguments (in dtype; masks and zoneout weights in the accumulation dtype). batch_sizes: the
    packed layout's; a dense sequence is [len(batch_sizes), batch_sizes[0]]."""
    T, B = len(batch_sizes), batch_sizes[0]
    bias, ln, zoneout, rec = CONFIGS[config]
    g = torch.Generator().manual_seed(seed)
    acc = acc_of(dtype)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)

    bs = torch.tensor(batch_sizes) if packed else None
    lead = (sum(batch_sizes),) if packed else (T, B)
    n_rows = sum(batch_sizes) if packed else T * B
    G = 3 * hidden
    args = dict(
        gates_x=rnd(*lead, G),
        batch_sizes=bs,
        hx=rnd(B, hidden),
        w_hh=rnd(G, hidden, scale=0.5),
        b_hh=rnd(G, scale=0.5) if bias else None,
        ln_hh_weight=rnd(G, scale=0.3, shift=1.0) if ln else None,
        ln_hh_bias=rnd(G, scale=0.3) if ln else None,
        zoneout_h=None,
        recurrent_mask=None,
    )
    if zoneout == "mask":
        k = torch.bernoulli(torch.full((n_rows, hidden), 0.3, dtype=torch.float64), generator=g).to(acc)
        args["zoneout_h"] = k if packed else k.view(T, B, hidden)
    elif zoneout == "const":
        args["zoneout_h"] = torch.tensor(0.3, dtype=acc)
    if rec:
        p = 0.25
        args["recurrent_mask"] = (torch.bernoulli(torch.full((B, hidden), 1 - p, dtype=torch.float64),
                                                  generator=g) / (1 - p)).to(acc)
    return args


def run_op(args, reverse, grad_output, grad_hy, train=True):
    a = args
    out, hy, ws = ops.gru_ext_forward(a["gates_x"], a["batch_sizes"], a["hx"], a["w_hh"], a["b_hh"],
                                      a["ln_hh_weight"], a["ln_hh_bias"], a["zoneout_h"], a["recurrent_mask"],
                                      reverse, train)
    if not train:
        return out, hy, ws, None
    grads = ops.gru_ext_backward(grad_output, grad_hy, a["batch_sizes"], a["hx"], a["w_hh"], a["ln_hh_weight"],
                                 a["zoneout_h"], a["recurrent_mask"], out, ws, reverse, a["b_hh"] is not None)
    return out, hy, ws, grads


GRAD_NAMES = ["gates_x", "hx", "w_hh", "b_hh", "ln_hh_weight", "ln_hh_bias"]


def run_composite(args, reverse, grad_output, grad_hy, dtype):
    """The composite's outputs and its autograd gradients of <output, grad_output> + <hy, grad_hy>, with
    every floating argument converted to dtype (masks and zoneout weights too, when dtype is wider)."""
    conv = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in args.items()}
    leaves = {k: conv[k].detach().requires_grad_() for k in GRAD_NAMES if conv[k] is not None}
    conv.update(leaves)
    out, hy = composite.gru_ext_forward(conv["gates_x"], conv["batch_sizes"], conv["hx"], conv["w_hh"],
                                        conv["b_hh"], conv["ln_hh_weight"], conv["ln_hh_bias"], conv["zoneout_h"],
                                        conv["recurrent_mask"], reverse)
    loss = (out * grad_output.to(dtype)).sum() + (hy * grad_hy.to(dtype)).sum()
    gs = torch.autograd.grad(loss, list(leaves.values()))
    return out, hy, dict(zip(leaves, gs))


def grads_of_op(grads):
    return dict(zip(GRAD_NAMES, grads))


def check_against_composite(dtype, packed, reverse, config, seed=0, hidden=H, batch_sizes=BATCH_SIZES):
    args = make_args(dtype, packed, config, seed, hidden, batch_sizes)
    B = batch_sizes[0]
    g = torch.Generator().manual_seed(seed + 100)
    out_shape = args["gates_x"].shape[:-1] + (hidden,)
    grad_output = torch.randn(out_shape, generator=g, dtype=torch.float64).to(dtype)
    grad_hy = torch.randn(B, hidden, generator=g, dtype=torch.float64).to(dtype)
    out, hy, ws, grads = run_op(args, reverse, grad_output, grad_hy)
    ref_dtype = acc_of(dtype)
    r_out, r_hy, r_grads = run_composite(args, reverse, grad_output, grad_hy, ref_dtype)

    ln = args["ln_hh_weight"] is not None
    N = out.reshape(-1, hidden).shape[0]
    assert ws.shape == (N, 4 * hidden + (3 * hidden + 1 if ln else 0)) and ws.dtype == ref_dtype
    assert out.dtype == dtype and hy.dtype == dtype
    assert_close(out, r_out, dtype, "output")
    assert_close(hy, r_hy, dtype, "hy")
    got = grads_of_op(grads)
    for name in GRAD_NAMES:
        if args[name] is None:
            assert got[name].numel() == 0, f"grad_{name} of an absent argument must be empty"
            continue
        assert got[name].dtype == dtype, name
        if name in ("gates_x", "hx"):
            assert_close(got[name], r_grads[name], dtype, f"grad_{name}")
        else:
            assert_close_scaled(got[name], r_grads[name], dtype, f"grad_{name}")


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_against_composite(dtype, packed, reverse, config):
    check_against_composite(dtype, packed, reverse, config)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_wider_hidden_float64(reverse):
    """A hidden size over the vector widths, all options on, several seeds."""
    for seed in range(3):
        check_against_composite(torch.float64, True, reverse, "all", seed, hidden=16)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_larger_batch(packed, reverse, dtype):
    """Batches of 4+ rows (float32: MKL's packed-weight GEMM for the full steps, at::mm for the shorter ones),
    all options on."""
    check_against_composite(dtype, packed, reverse, "all", seed=3, hidden=12, batch_sizes=[7, 6, 4, 4, 2, 1])


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_parallel_rows(reverse):
    """Steps wide enough for the row-parallel pointwise passes to split across threads."""
    check_against_composite(torch.float32, True, reverse, "all", seed=4, hidden=16, batch_sizes=[400, 350, 20])


@pytest.mark.parametrize("fast_math", ["1", "0"])
@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
def test_capabilities(capability, fast_math, monkeypatch):
    """The vectorised gate activations of every instruction-set variant (common.use_cpu_capability), all
    options on in float32 and with the LN bias in bfloat16."""
    use_cpu_capability(monkeypatch, capability, fast_math)
    for hidden in CAPABILITY_HIDDEN:
        check_against_composite(torch.float32, True, False, "all", seed=5, hidden=hidden)
        check_against_composite(torch.bfloat16, False, True, "ln_bias", seed=5, hidden=hidden)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_opcheck(packed, train):
    """The ops against their schemas and their fake (meta) implementations in fastrnn/ops.py."""
    a = make_args(torch.float32, packed, "all")
    args = (a["gates_x"], a["batch_sizes"], a["hx"], a["w_hh"], a["b_hh"], a["ln_hh_weight"], a["ln_hh_bias"],
            a["zoneout_h"], a["recurrent_mask"], False, train)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.gru_ext_forward.default, args, test_utils=utils)
    if train:
        out, hy, ws = ops.gru_ext_forward(*args)
        bargs = (torch.randn_like(out), torch.randn_like(hy), a["batch_sizes"], a["hx"], a["w_hh"],
                 a["ln_hh_weight"], a["zoneout_h"], a["recurrent_mask"], out, ws, False, True)
        torch.library.opcheck(ops.gru_ext_backward.default, bargs, test_utils=utils)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_eval_forward(packed):
    """train=False: an empty workspace and the same outputs as train=True."""
    args = make_args(torch.float32, packed, "all")
    a = args
    call = lambda train: ops.gru_ext_forward(a["gates_x"], a["batch_sizes"], a["hx"], a["w_hh"], a["b_hh"],  # noqa
                                             a["ln_hh_weight"], a["ln_hh_bias"], a["zoneout_h"],
                                             a["recurrent_mask"], False, train)
    out_t, hy_t, ws_t = call(True)
    out_e, hy_e, ws_e = call(False)
    assert ws_e.numel() == 0 and ws_t.numel() > 0
    torch.testing.assert_close(out_e, out_t, rtol=0, atol=0)
    torch.testing.assert_close(hy_e, hy_t, rtol=0, atol=0)


def test_inputs_unchanged():
    args = make_args(torch.float32, False, "all")
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor)}
    go = torch.randn(T, B, H)
    ghy = torch.randn(B, H)
    go0, ghy0 = go.clone(), ghy.clone()
    run_op(args, False, go, ghy)
    for k, v in before.items():
        assert torch.equal(args[k], v), k
    assert torch.equal(go, go0) and torch.equal(ghy, ghy0)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_strided_grad_output(packed):
    """grad_output given as a slice of a wider tensor (a bidirectional module's) reads the same."""
    args = make_args(torch.float64, packed, "all")
    lead = args["gates_x"].shape[:-1]
    wide = torch.randn(*lead, 2 * H, dtype=torch.float64)
    go = wide[..., H:]
    ghy = torch.randn(B, H, dtype=torch.float64)
    *_, g1 = run_op(args, True, go, ghy)
    *_, g2 = run_op(args, True, go.contiguous(), ghy)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dense_zoneout_as_rows():
    """A dense sequence's zoneout weights may also be given as [N, H] rows."""
    args = make_args(torch.float64, False, "all")
    go = torch.randn(T, B, H, dtype=torch.float64)
    ghy = torch.randn(B, H, dtype=torch.float64)
    r1 = run_op(args, False, go, ghy)
    args["zoneout_h"] = args["zoneout_h"].reshape(T * B, H)
    r2 = run_op(args, False, go, ghy)
    for a, b in zip(r1[:2] + tuple(r1[3]), r2[:2] + tuple(r2[3])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_empty_sequence():
    args = make_args(torch.float32, False, "all")
    args["gates_x"] = args["gates_x"][:0]
    args["zoneout_h"] = args["zoneout_h"][:0]
    go = torch.zeros(0, B, H)
    ghy = torch.randn(B, H)
    out, hy, ws, grads = run_op(args, False, go, ghy)
    assert out.shape == (0, B, H)
    torch.testing.assert_close(hy, args["hx"])
    g = grads_of_op(grads)
    torch.testing.assert_close(g["hx"], ghy)
    assert g["gates_x"].shape == (0, B, 3 * H)
    assert torch.count_nonzero(g["w_hh"]) == 0


# ---------------------------------------------------------------------------------------- bad input
def fwd(a, reverse=False, train=True):
    return ops.gru_ext_forward(a["gates_x"], a["batch_sizes"], a["hx"], a["w_hh"], a["b_hh"], a["ln_hh_weight"],
                               a["ln_hh_bias"], a["zoneout_h"], a["recurrent_mask"], reverse, train)


ERRORS = (RuntimeError, ValueError, TypeError)


@pytest.mark.parametrize("change, name", [
    (lambda a: a.update(recurrent_mask=torch.ones(B, H + 1)), "recurrent_mask"),
    (lambda a: a.update(recurrent_mask=torch.ones(B + 1, H)), "recurrent_mask"),
    (lambda a: a.update(recurrent_mask=torch.ones(B, H, dtype=torch.float64)), "recurrent_mask"),
    (lambda a: a.update(zoneout_h=torch.ones(T, B, H + 1)), "zoneout_h"),
    (lambda a: a.update(zoneout_h=torch.ones(T * B - 1, H)), "zoneout_h"),
    (lambda a: a.update(zoneout_h=torch.ones(T, B, H, dtype=torch.float64)), "zoneout_h"),
    (lambda a: a.update(zoneout_h=torch.tensor(0.3, dtype=torch.float64)), "zoneout_h"),
    (lambda a: a.update(ln_hh_bias=None), "ln_hh_bias"),
    (lambda a: a.update(ln_hh_weight=None), "ln_hh_weight"),
    (lambda a: a.update(ln_hh_weight=torch.ones(3 * H + 1)), "ln_hh_weight"),
    (lambda a: a.update(ln_hh_bias=torch.ones(3 * H, dtype=torch.float64)), "ln_hh_bias"),
    (lambda a: a.update(b_hh=torch.ones(3 * H - 1)), "b_hh"),
    (lambda a: a.update(hx=torch.ones(B + 1, H)), "hx"),
    (lambda a: a.update(w_hh=torch.ones(3 * H, H + 1)), "w_hh"),
    (lambda a: a.update(gates_x=torch.ones(T, B, 3 * H + 3)), "gates_x"),
    (lambda a: a.update(gates_x=torch.ones(T * B, 3 * H)), "gates_x"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_forward_args(change, name):
    args = make_args(torch.float32, False, "all")
    change(args)
    with pytest.raises(ERRORS, match=name):
        fwd(args)


def test_bad_batch_sizes():
    args = make_args(torch.float32, True, "plain")
    args["batch_sizes"] = torch.tensor([3, 3, 2, 2])
    with pytest.raises(ValueError, match="batch_sizes"):
        fwd(args)
    args["batch_sizes"] = torch.tensor([2, 3, 3, 1])
    with pytest.raises(ValueError, match="batch_sizes"):
        fwd(args)


def test_float16_rejected():
    args = make_args(torch.float16, False, "plain")
    with pytest.raises(ERRORS, match="float16"):
        fwd(args)


def test_bad_backward_args():
    args = make_args(torch.float32, False, "all")
    out, hy, ws = fwd(args)
    go, ghy = torch.randn_like(out), torch.randn_like(hy)
    a = args

    def bwd(**kw):
        p = dict(grad_output=go, grad_hy=ghy, ln_hh_weight=a["ln_hh_weight"], zoneout_h=a["zoneout_h"],
                 recurrent_mask=a["recurrent_mask"], output=out, workspace=ws)
        p.update(kw)
        return ops.gru_ext_backward(p["grad_output"], p["grad_hy"], None, a["hx"], a["w_hh"], p["ln_hh_weight"],
                                    p["zoneout_h"], p["recurrent_mask"], p["output"], p["workspace"], False, True)

    bwd()  # the good call
    _, _, ws_eval = fwd(args, train=False)
    with pytest.raises(ERRORS, match="workspace"):
        bwd(workspace=ws_eval)
    with pytest.raises(ERRORS, match="workspace"):  # ln_hh_weight missing: a workspace of the wrong width
        bwd(ln_hh_weight=None)
    with pytest.raises(ERRORS, match="recurrent_mask"):
        bwd(recurrent_mask=torch.ones(B, H + 1))
    with pytest.raises(ERRORS, match="zoneout_h"):
        bwd(zoneout_h=torch.ones(T, B, H, dtype=torch.float64))
    with pytest.raises(ERRORS, match="grad_output"):
        bwd(grad_output=torch.randn(T, B, H + 1))
    with pytest.raises(ERRORS, match="grad_hy"):
        bwd(grad_hy=torch.randn(B, H, dtype=torch.float64))
