"""The two CUDA forward paths, forced with FASTRNN_CUDA_ALGO (csrc/cuda/persistent.h): the per-step kernels and the
persistent cooperative kernel give the same numbers as each other and as the CPU ops, for every cell, dtype,
direction and layout; a forced persistent path that cannot serve a call raises instead of silently stepping.
Needs a GPU (the kernels' device code is also executed without one by tests/test_cuda_emu_persistent.py)."""
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
