"""The two CUDA paths, forward and backward, forced with FASTRNN_CUDA_ALGO (csrc/cuda/persistent.h): the per-step
kernels and the persistent cooperative kernels give the same numbers as each other and as the CPU ops, for every
cell, dtype, direction and layout; a forced persistent path that cannot serve a call raises instead of silently
stepping.
Needs a GPU (the kernels' device code is also executed without one by tests/test_cuda_emu_persistent.py)."""
import contextlib

import pytest
import torch

import fastrnn  # noqa: F401
from common import TOL

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def run(cell, dtype, reverse, packed, monkeypatch, algo, H=40, I=7, seed=0):
    monkeypatch.setenv("FASTRNN_CUDA_ALGO", algo)
    g = torch.Generator().manual_seed(seed)
    G = GATES[cell]
    lengths = [6, 5, 5, 2]
    B = len(lengths)
    rnd = lambda *s: (torch.rand(*s, generator=g, dtype=torch.float64) * 2 - 1).to("cuda", dtype)  # noqa: E731
    x = rnd(sum(lengths), I) if packed else rnd(6, B, I)
    bsz = torch.tensor([4, 4, 3, 3, 3, 1]) if packed else None
    hx, cx = rnd(B, H), rnd(B, H)
    w_ih, w_hh, b_ih, b_hh = rnd(G * H, I), rnd(G * H, H) * 0.3, rnd(G * H), rnd(G * H)
    ops = torch.ops.fastrnn
    if cell == "lstm":
        return ops.lstm_forward(x, bsz, hx, cx, w_ih, w_hh, b_ih, b_hh, None, reverse, True)
    if cell == "gru":
        return ops.gru_forward(x, bsz, hx, w_ih, w_hh, b_ih, b_hh, reverse, True)
    return ops.rnn_forward(x, bsz, hx, w_ih, w_hh, b_ih, b_hh, cell == "rnn_relu", reverse)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cell", list(GATES))
def test_persistent_equals_step(cell, dtype, reverse, packed, monkeypatch):
    torch.backends.cuda.matmul.allow_tf32 = False
    step = run(cell, dtype, reverse, packed, monkeypatch, "step")
    pers = run(cell, dtype, reverse, packed, monkeypatch, "persistent")
    for a, b in zip(pers, step):
        torch.testing.assert_close(a.float(), b.float(), **TOL[dtype])


def run_backward(cell, dtype, reverse, packed, monkeypatch, algo, H=40, I=7, seed=0):
    """The forward on the step kernels, then the backward with `algo`: every gradient the op returns. grad_output of
    the dense layout is a transposed view (read in place with its strides)."""
    monkeypatch.setenv("FASTRNN_CUDA_ALGO", "step")
    g = torch.Generator().manual_seed(seed)
    G = GATES[cell]
    lengths = [6, 5, 5, 2]
    B = len(lengths)
    rnd = lambda *s: (torch.rand(*s, generator=g, dtype=torch.float64) * 2 - 1).to("cuda", dtype)  # noqa: E731
    x = rnd(sum(lengths), I) if packed else rnd(6, B, I)
    bsz = torch.tensor([4, 4, 3, 3, 3, 1]) if packed else None
    hx, cx = rnd(B, H), rnd(B, H)
    w_ih, w_hh, b_ih, b_hh = rnd(G * H, I), rnd(G * H, H) * 0.3, rnd(G * H), rnd(G * H)
    go = rnd(sum(lengths), H) if packed else rnd(B, 6, H).transpose(0, 1)
    ghy, gcy = rnd(B, H), rnd(B, H)
    ops = torch.ops.fastrnn
    if cell == "lstm":
        out, _, _, ws = ops.lstm_forward(x, bsz, hx, cx, w_ih, w_hh, b_ih, b_hh, None, reverse, True)
        monkeypatch.setenv("FASTRNN_CUDA_ALGO", algo)
        return ops.lstm_backward(go, ghy, gcy, x, bsz, hx, cx, w_ih, w_hh, None, out, ws, reverse, True)[:7]
    if cell == "gru":
        out, _, ws = ops.gru_forward(x, bsz, hx, w_ih, w_hh, b_ih, b_hh, reverse, True)
        monkeypatch.setenv("FASTRNN_CUDA_ALGO", algo)
        return ops.gru_backward(go, ghy, x, bsz, hx, w_ih, w_hh, out, ws, reverse, True)
    relu = cell == "rnn_relu"
    out, _ = ops.rnn_forward(x, bsz, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse)
    monkeypatch.setenv("FASTRNN_CUDA_ALGO", algo)
    return ops.rnn_backward(go, ghy, x, bsz, hx, w_ih, w_hh, out, relu, reverse, True)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cell", list(GATES))
def test_persistent_backward_equals_step(cell, dtype, reverse, packed, monkeypatch):
    torch.backends.cuda.matmul.allow_tf32 = False
    step = run_backward(cell, dtype, reverse, packed, monkeypatch, "step")
    pers = run_backward(cell, dtype, reverse, packed, monkeypatch, "persistent")
    for a, b in zip(pers, step):
        torch.testing.assert_close(a.float(), b.float(), **TOL[dtype])


def test_forced_persistent_backward_with_projection_raises(monkeypatch):
    monkeypatch.setenv("FASTRNN_CUDA_ALGO", "persistent")
    d = dict(device="cuda")
    T, B, I, H, P = 3, 2, 4, 5, 3
    x, hx, cx = torch.randn(T, B, I, **d), torch.randn(B, P, **d), torch.randn(B, H, **d)
    w_ih, w_hh, w_hr = torch.randn(4 * H, I, **d), torch.randn(4 * H, P, **d), torch.randn(P, H, **d)
    with pytest.raises(ValueError, match="projection"):
        torch.ops.fastrnn.lstm_backward(torch.randn(T, B, P, **d), torch.randn(B, P, **d), torch.randn(B, H, **d), x,
                                        None, hx, cx, w_ih, w_hh, w_hr, torch.randn(T, B, P, **d),
                                        torch.randn(T * B, 5 * H, **d), False, False)


def test_forced_persistent_with_projection_raises(monkeypatch):
    monkeypatch.setenv("FASTRNN_CUDA_ALGO", "persistent")
    d = dict(device="cuda")
    x, hx, cx = torch.randn(3, 2, 4, **d), torch.randn(2, 3, **d), torch.randn(2, 5, **d)
    with pytest.raises(ValueError, match="projection"):
        torch.ops.fastrnn.lstm_forward(x, None, hx, cx, torch.randn(20, 4, **d), torch.randn(20, 3, **d), None,
                                       None, torch.randn(3, 5, **d), False, False)


def test_bad_algo_value_raises(monkeypatch):
    monkeypatch.setenv("FASTRNN_CUDA_ALGO", "fastest")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_ALGO"):
        run("gru", torch.float32, False, False, monkeypatch, "fastest")


# TF32 tolerance against torch.nn: each side rounds W_hh and h to TF32 (unit roundoff u = 2^-11) in its own way, so
# per step a pre-activation of either may move by at most 2u * sum_k |w_jk h_k| <= 2u * sqrt(H) (torch.nn's init:
# |w| <= 1/sqrt(H); |h| <= 1), the two sides by twice that.
U_TF32 = 2.0 ** -11


def _tf32_tol(H):
    return dict(rtol=4 * U_TF32 * H ** 0.5, atol=4 * U_TF32 * H ** 0.5)


def _tf32_layers(cell, monkeypatch, H=256, I=64):
    """torch.nn's layer and fastrnn's with the same weights, fastrnn forced onto the persistent kernels."""
    monkeypatch.setenv("FASTRNN_CUDA_ALGO", "persistent")
    ref = getattr(torch.nn, cell)(I, H, device="cuda")
    mod = getattr(fastrnn, cell)(I, H, device="cuda")
    mod.load_state_dict(ref.state_dict())
    return ref, mod


@contextlib.contextmanager
def _tf32_flags(tf32):
    """Both TF32 flags set alike (fastrnn's input GEMM is a cuBLAS matmul: the matmul flag; cuDNN follows the cuDNN
    flag), restored afterwards."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_tf32_on_and_off_against_torch_nn(cell, monkeypatch):
    """float32 on the persistent kernel against torch.nn (cuDNN). allow_tf32 False: exact fp32 on both sides, the
    float32 tolerance. allow_tf32 True (torch's default; cuDNN then uses TF32 too): the TF32 tolerance, and fastrnn's
    output differs from its exact one by more than the float32 tolerance (the flag reaches the kernel)."""
    H, I, T, B = 256, 64, 20, 8
    ref, mod = _tf32_layers(cell, monkeypatch, H, I)
    x = torch.randn(T, B, I, device="cuda")
    outs = {}
    for tf32 in (False, True):
        with _tf32_flags(tf32), torch.no_grad():
            outs[tf32] = (mod(x)[0], ref(x)[0])
    torch.testing.assert_close(outs[False][0], outs[False][1], **TOL[torch.float32])
    torch.testing.assert_close(outs[True][0], outs[True][1], **_tf32_tol(H))
    torch.testing.assert_close(outs[True][0], outs[False][1], **_tf32_tol(H))
    assert (outs[True][0] - outs[False][0]).abs().max() > TOL[torch.float32]["atol"], "TF32 mode left no trace"


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_tf32_backward_on_and_off_against_torch_nn(cell, monkeypatch):
    """float32 gradients through the persistent backward (the tensor-core kernel with allow_tf32, the FMA kernel
    without it) against torch.nn's (cuDNN's backward follows the same flag). allow_tf32 False: the float32 tolerance.
    True: each backward step's dh moves by at most 2u * sqrt(G) * max|dG| per side (test_cuda_emu_persistent.py's
    bound) on top of the forward's movement, so the gradients are held to twice the forward's TF32 tolerance; and
    fastrnn's TF32 gradients differ from its exact ones (the flag reaches the backward)."""
    H, I, T, B = 256, 64, 20, 8
    ref, mod = _tf32_layers(cell, monkeypatch, H, I)
    x = torch.randn(T, B, I, device="cuda")
    go = torch.randn(T, B, H, device="cuda")
    grads = {}
    for tf32 in (False, True):
        with _tf32_flags(tf32):
            for name, m in (("fast", mod), ("ref", ref)):
                xr = x.clone().requires_grad_()
                (m(xr)[0] * go).sum().backward()
                grads[tf32, name] = (xr.grad, m.weight_hh_l0.grad.clone())
                m.zero_grad()
    tol = {k: 2 * v for k, v in _tf32_tol(H).items()}
    for a, b in zip(grads[False, "fast"], grads[False, "ref"]):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    for a, b in zip(grads[True, "fast"], grads[True, "ref"]):
        torch.testing.assert_close(a, b, **tol)
    assert (grads[True, "fast"][0] - grads[False, "fast"][0]).abs().max() > TOL[torch.float32]["atol"], \
        "TF32 mode left no trace in the input gradient"


# ---------------------------------------------------------------- both directions of a layer in one launch
def _bidir_run(cell, dtype, packed, monkeypatch, mode):
    """A two-layer bidirectional module's outputs and gradients with FASTRNN_CUDA_BIDIR=mode, on the persistent
    kernels (the same weights and inputs for every mode)."""
    monkeypatch.setenv("FASTRNN_CUDA_ALGO", "persistent")
    monkeypatch.setenv("FASTRNN_CUDA_BIDIR", mode)
    torch.manual_seed(0)
    m = getattr(fastrnn, cell)(7, 40, num_layers=2, bidirectional=True).to("cuda", dtype)
    x = torch.randn(6, 4, 7, device="cuda", dtype=dtype, requires_grad=True)
    inp = torch.nn.utils.rnn.pack_padded_sequence(x, [6, 5, 5, 2]) if packed else x
    out, state = m(inp)
    out = out.data if packed else out
    h = state[0] if cell == "LSTM" else state
    (out.float().square().sum() + h.float().sum()).backward()
    return [out, h, x.grad] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_both_directions_in_one_launch_equal_in_turn(cell, dtype, packed, monkeypatch):
    """FASTRNN_CUDA_BIDIR=concurrent (both directions' recurrences in one persistent launch, forward and backward)
    against sequential (one launch per direction): the same numbers within the dtype's tolerance (the joint plan may
    take more units per block: another accumulation order). float32 exact (TF32 off)."""
    with _tf32_flags(False):
        joint = _bidir_run(cell, dtype, packed, monkeypatch, "concurrent")
        turn = _bidir_run(cell, dtype, packed, monkeypatch, "sequential")
    for a, b in zip(joint, turn):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_bad_bidir_value_raises(monkeypatch):
    monkeypatch.setenv("FASTRNN_CUDA_BIDIR", "parallel")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_BIDIR"):
        _bidir_run("GRU", torch.float32, False, monkeypatch, "parallel")
