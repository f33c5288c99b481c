"""Bad and unusual input: the modules raise what torch.nn raises (or a clearer error of the same type), and
handle empty batches, strided tensors and non-finite values as torch.nn does; the ops raise a Python
exception naming the offending argument, never crash."""
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import ops
from common import MODES, assert_close, make_pair

MODULE_MODES = ["LSTM", "GRU", "RNN_TANH"]


def both(mode, **kw):
    """(fastrnn module, torch.nn module) with the same weights: input 4, hidden 5."""
    return make_pair(mode, 4, 5, **kw)


def hidden(mode, *shape, c_shape=None, dtype=torch.float32):
    h = torch.zeros(shape, dtype=dtype)
    return (h, torch.zeros(c_shape or shape, dtype=dtype)) if mode == "LSTM" else h


def raises_like_torch(fast, ref, exc, match, *args):
    """fastrnn raises exc with a message matching `match`, and torch.nn raises the same exception type."""
    with pytest.raises(exc, match=match):
        fast(*args)
    with pytest.raises(exc):
        ref(*args)


# ------------------------------------------------------------------------------------------- modules
@pytest.mark.parametrize("mode", MODULE_MODES)
@pytest.mark.parametrize("shape", [(4,), (2, 3, 4, 4)], ids=["1d", "4d"])
def test_wrong_rank(mode, shape):
    f, r = both(mode)
    raises_like_torch(f, r, ValueError, "Expected input to be 2D or 3D", torch.randn(shape))


@pytest.mark.parametrize("mode", MODULE_MODES)
@pytest.mark.parametrize("shape", [(3, 2, 3), (3, 6)], ids=["batched", "unbatched"])
def test_wrong_input_size(mode, shape):
    f, r = both(mode)
    raises_like_torch(f, r, RuntimeError, "input_size. Expected 4, got", torch.randn(shape))


@pytest.mark.parametrize("mode", MODULE_MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_input_weight_dtype_mismatch(mode, dtype):
    f, r = both(mode)
    raises_like_torch(f, r, ValueError, "dtype", torch.randn(3, 2, 4, dtype=dtype))


@pytest.mark.parametrize("mode", MODULE_MODES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool], ids=str)
def test_integer_input(mode, dtype):
    f, r = both(mode)
    raises_like_torch(f, r, ValueError, rf"RNN input dtype \({dtype}\) does not match weight dtype",
                      torch.ones(3, 2, 4, dtype=dtype))


@pytest.mark.parametrize("mode", MODULE_MODES)
def test_device_mismatch_meta(mode):
    f, r = both(mode)
    raises_like_torch(f, r, RuntimeError, "meta", torch.randn(3, 2, 4, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", MODULE_MODES)
def test_device_mismatch_cuda(mode):
    f, r = both(mode)
    raises_like_torch(f, r, RuntimeError, "cuda", torch.randn(3, 2, 4, device="cuda"))
    f_cuda = f.cuda()
    hx = hidden(mode, 1, 2, 5)
    hx = (hx[0].cpu(), hx[1].cuda()) if mode == "LSTM" else hx.cpu()  # h0 on the CPU, the rest on CUDA
    with pytest.raises(RuntimeError, match="found input tensor at cuda:0 and hidden tensor at cpu"):
        f_cuda(torch.randn(3, 2, 4, device="cuda"), hx)


def test_module_on_meta_device_runs_shapes_only():
    """A module built on the meta device runs on meta input (the fake kernels), as torch.nn does."""
    f = fastrnn.LSTM(4, 5, num_layers=2, bidirectional=True, proj_size=3, device="meta")
    out, (h, c) = f(torch.randn(6, 2, 4, device="meta"))
    assert out.device.type == "meta" and out.shape == (6, 2, 6) and h.shape == (4, 2, 3) and c.shape == (4, 2, 5)


@pytest.mark.parametrize("mode", MODULE_MODES)
@pytest.mark.parametrize("which", ["batch", "layers", "features"])
def test_wrong_h0_shape(mode, which):
    f, r = both(mode, num_layers=2)
    shape = {"batch": (2, 3, 5), "layers": (1, 2, 5), "features": (2, 2, 6)}[which]
    hx = hidden(mode, *shape, c_shape=(2, 2, 5))
    raises_like_torch(f, r, RuntimeError, r"Expected hidden(\[0\])? size \(2, 2, 5\), got \[", torch.randn(3, 2, 4),
                      hx)


def test_wrong_c0_shape():
    f, r = both("LSTM")
    raises_like_torch(f, r, RuntimeError, r"Expected hidden\[1\] size \(1, 2, 5\), got \[1, 2, 4\]",
                      torch.randn(3, 2, 4), (torch.zeros(1, 2, 5), torch.zeros(1, 2, 4)))


def test_wrong_proj_h0_shape():
    f, r = both("LSTM", proj_size=3)
    # h0 must have proj_size features, c0 hidden_size
    raises_like_torch(f, r, RuntimeError, r"Expected hidden\[0\] size \(1, 2, 3\), got \[1, 2, 5\]",
                      torch.randn(3, 2, 4), (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5)))


@pytest.mark.parametrize("mode", MODULE_MODES)
def test_h0_rank_mismatch(mode):
    f, r = both(mode)
    raises_like_torch(f, r, RuntimeError, "should also be 3-D", torch.randn(3, 2, 4), hidden(mode, 2, 5))
    raises_like_torch(f, r, RuntimeError, "should also be 2-D", torch.randn(3, 4), hidden(mode, 1, 1, 5))


@pytest.mark.parametrize("hx,match", [
    (torch.zeros(1, 2, 5), "tuple"), ([torch.zeros(1, 2, 5)], "tuple"), (3, "tuple"),
    ((torch.zeros(1, 2, 5), 0.0), r"hx\[1\] must be a Tensor")], ids=["tensor", "list1", "int", "c0_float"])
def test_lstm_hx_wrong_type(hx, match):
    f = fastrnn.LSTM(4, 5)
    with pytest.raises(TypeError, match=match):
        f(torch.randn(3, 2, 4), hx)


@pytest.mark.parametrize("mode", ["GRU", "RNN_TANH"])
@pytest.mark.parametrize("hx", [(torch.zeros(1, 2, 5),), [torch.zeros(1, 2, 5)], 3, None.__class__],
                         ids=["tuple", "list", "int", "type"])
def test_gru_rnn_hx_wrong_type(mode, hx):
    f, _ = both(mode)
    with pytest.raises(TypeError, match="hx must be a Tensor"):
        f(torch.randn(3, 2, 4), hx)


@pytest.mark.parametrize("mode", MODULE_MODES)
def test_h0_dtype_mismatch(mode):
    f, r = both(mode)
    raises_like_torch(f, r, RuntimeError, r"hidden state dtype \(torch.float64\) does not match input dtype",
                      torch.randn(3, 2, 4), hidden(mode, 1, 2, 5, dtype=torch.float64))


@pytest.mark.parametrize("mode", MODULE_MODES)
@pytest.mark.parametrize("shape", [(0, 2, 4), (0, 4)], ids=["batched", "unbatched"])
def test_empty_sequence(mode, shape):
    f, r = both(mode)
    raises_like_torch(f, r, RuntimeError, "Expected sequence length to be larger than 0", torch.randn(shape))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_empty_batch_matches_torch(mode, batch_first):
    f, r = both(mode, num_layers=2, bidirectional=True, batch_first=batch_first)
    results = []
    for m in (f, r):
        x = torch.randn((0, 3, 4) if batch_first else (3, 0, 4), requires_grad=True)
        out, hx = m(x)
        states = list(hx) if mode == "LSTM" else [hx]
        (out.sum() + sum(s.sum() for s in states)).backward()
        results.append([out.shape, *[s.shape for s in states], x.grad.shape, m.weight_ih_l0.grad])
    assert results[0][:-1] == results[1][:-1]
    assert torch.equal(results[0][-1], results[1][-1]) and not results[0][-1].any()


@pytest.mark.parametrize("mode", MODES)
def test_strided_input_and_state(mode):
    """Non-contiguous input (every other step, batch entry and feature) and h0: the same answer as torch.nn."""
    f, r = both(mode, num_layers=2, bidirectional=True)
    x = torch.randn(10, 6, 8)[::2, ::2, ::2]
    h = torch.randn(4, 3, 10)[:, :, ::2]
    hx = (h, torch.randn(4, 3, 10)[:, :, 1::2]) if mode == "LSTM" else h
    assert not x.is_contiguous() and not h.is_contiguous()
    for a, b in zip(f(x, hx), r(x, hx)):
        for ta, tb in (zip(a, b) if isinstance(a, tuple) else [(a, b)]):
            assert_close(ta, tb, torch.float32, "strided")
    xt = torch.randn(3, 5, 4).transpose(0, 1)  # batch-major memory, time-major view
    assert_close(f(xt)[0], r(xt)[0], torch.float32, "transposed")


@pytest.mark.parametrize("mode", MODES)
def test_nan_inf_propagate_like_torch(mode):
    f, r = both(mode, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 4)
    x[1, 0, 2] = float("nan")
    x[3, 2, 1] = float("inf")
    x[0, 1, 0] = -float("inf")
    (of, hf), (orr, hr) = f(x), r(x)
    pairs = [(of, orr)] + (list(zip(hf, hr)) if mode == "LSTM" else [(hf, hr)])
    for a, b in pairs:
        assert torch.equal(a.isnan(), b.isnan()), "NaN positions differ from torch.nn"
        assert b.isnan().any()  # the test does exercise NaN propagation
        assert_close(a.nan_to_num(0), b.nan_to_num(0), torch.float32, "finite part")


# --------------------------------------------------------------------------------------- constructors
@pytest.mark.parametrize("ctor,match", [
    (lambda: fastrnn.LSTM(4, 5, proj_size=5), "proj_size"),
    (lambda: fastrnn.LSTM(4, 5, proj_size=7), "proj_size"),
    (lambda: fastrnn.LSTM(4, 5, proj_size=-1), "proj_size"),
    (lambda: fastrnn.LSTM(4, 5, dropout=1.5), "dropout"),
    (lambda: fastrnn.GRU(4, 5, dropout=-0.1), "dropout"),
    (lambda: fastrnn.RNN(4, 5, dropout=True), "dropout"),
    (lambda: fastrnn.RNN(4, 5, nonlinearity="sigmoid"), "nonlinearity"),
    (lambda: fastrnn.LSTM(4, 0), "hidden_size"),
    (lambda: fastrnn.GRU(0, 5), "input_size"),
    (lambda: fastrnn.RNN(4, 5, num_layers=0), "num_layers"),
], ids=["proj_eq_hidden", "proj_gt_hidden", "proj_negative", "dropout_gt1", "dropout_negative", "dropout_bool",
        "nonlinearity", "hidden0", "input0", "layers0"])
def test_bad_constructor_args(ctor, match):
    with pytest.raises(ValueError, match=match):
        ctor()


@pytest.mark.parametrize("cls", [fastrnn.GRU, fastrnn.RNN])
def test_gru_rnn_reject_proj_size(cls):
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM, not RNN or GRU"):
        cls(4, 5, proj_size=2)


def test_rnncell_unknown_nonlinearity_raises_when_called():
    cell = fastrnn.RNNCell(4, 5, nonlinearity="gelu")  # accepted, as torch.nn.RNNCell accepts it
    with pytest.raises(RuntimeError, match="Unknown nonlinearity: gelu"):
        cell(torch.randn(2, 4))


# ----------------------------------------------------------------------------------------------- cells
CELL_CLASSES = {"LSTMCell": fastrnn.LSTMCell, "GRUCell": fastrnn.GRUCell, "RNNCell": fastrnn.RNNCell}


@pytest.mark.parametrize("name", list(CELL_CLASSES))
def test_cell_bad_input(name):
    cell = CELL_CLASSES[name](4, 5)
    ref = getattr(nn, name)(4, 5)
    raises_like_torch(cell, ref, ValueError, "Expected input to be 1D or 2D", torch.randn(2, 3, 4))
    raises_like_torch(cell, ref, RuntimeError, "input_size", torch.randn(2, 3))
    h = torch.zeros(3, 5)
    raises_like_torch(cell, ref, RuntimeError, "Input batch size 2 doesn't match hidden0 batch size 3",
                      torch.randn(2, 4), (h, h) if name == "LSTMCell" else h)
    with pytest.raises(ValueError, match="dtype"):
        cell(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="hx|h_0"):
        cell(torch.randn(2, 4), torch.zeros(2, 5) if name == "LSTMCell" else (torch.zeros(2, 5),))


@pytest.mark.parametrize("name", list(CELL_CLASSES))
def test_cell_empty_batch_matches_torch(name):
    cell = CELL_CLASSES[name](4, 5)
    ref = getattr(nn, name)(4, 5)
    a, b = cell(torch.randn(0, 4)), ref(torch.randn(0, 4))
    a, b = (a, b) if name == "LSTMCell" else ((a,), (b,))
    assert [t.shape for t in a] == [t.shape for t in b] == [(0, 5)] * len(a)


# ------------------------------------------------------------------------------------------ direct ops
T, B, I, H = 3, 2, 4, 5


def lstm_args(**over):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(s, generator=g)  # noqa: E731
    a = dict(input=r(T, B, I), batch_sizes=None, hx=r(B, H), cx=r(B, H), w_ih=r(4 * H, I), w_hh=r(4 * H, H),
             b_ih=r(4 * H), b_hh=r(4 * H), w_hr=None, reverse=False, train=True)
    a.update(over)
    return a


def packed_lstm_args(**over):
    return lstm_args(**{"input": torch.randn(6, I), "batch_sizes": torch.tensor([2, 2, 2]), **over})


BAD_LSTM_FORWARD = {
    "w_hh_shape": (lambda: lstm_args(w_hh=torch.randn(4 * H, H + 1)), ValueError, "w_hh"),
    "w_ih_rows": (lambda: lstm_args(w_ih=torch.randn(4 * H + 1, I)), ValueError, "w_ih"),
    "w_ih_1d": (lambda: lstm_args(w_ih=torch.randn(4 * H)), ValueError, "w_ih"),
    "b_ih_shape": (lambda: lstm_args(b_ih=torch.randn(3)), ValueError, "b_ih"),
    "b_hh_missing": (lambda: lstm_args(b_hh=None), ValueError, "b_ih and b_hh"),
    "hx_shape": (lambda: lstm_args(hx=torch.randn(B + 1, H)), ValueError, "hx"),
    "cx_shape": (lambda: lstm_args(cx=torch.randn(B, H + 1)), ValueError, "cx"),
    "dense_input_2d": (lambda: lstm_args(input=torch.randn(B, I)), ValueError, "input"),
    "input_features": (lambda: lstm_args(input=torch.randn(T, B, I + 1)), ValueError, "input_size"),
    "w_hr_shape": (lambda: lstm_args(hx=torch.randn(B, 2), w_hh=torch.randn(4 * H, 2), w_hr=torch.randn(2, H + 1)),
                   ValueError, "w_hr"),
    "w_hr_state_mismatch": (lambda: lstm_args(w_hh=torch.randn(4 * H, 2), w_hr=torch.randn(2, H)), ValueError, "hx"),
    "w_ih_dtype": (lambda: lstm_args(w_ih=torch.randn(4 * H, I, dtype=torch.float64)), TypeError, "w_ih"),
    "hx_dtype": (lambda: lstm_args(hx=torch.randn(B, H, dtype=torch.float64)), TypeError, "hx"),
    "w_ih_meta": (lambda: lstm_args(w_ih=torch.randn(4 * H, I, device="meta")), RuntimeError, "w_ih"),
    "integer": (lambda: {k: (v.long() if isinstance(v, torch.Tensor) else v) for k, v in lstm_args().items()},
                TypeError, "input must be float"),
    "float16_cpu": (lambda: {k: (v.half() if isinstance(v, torch.Tensor) else v) for k, v in lstm_args().items()},
                    TypeError, "float16"),
    "bs_increasing": (lambda: packed_lstm_args(batch_sizes=torch.tensor([1, 2, 3]), hx=torch.randn(1, H),
                                               cx=torch.randn(1, H)), ValueError, "batch_sizes"),
    "bs_zero": (lambda: packed_lstm_args(batch_sizes=torch.tensor([2, 2, 2, 0])), ValueError, "batch_sizes"),
    "bs_negative": (lambda: packed_lstm_args(batch_sizes=torch.tensor([4, 3, -1])), ValueError, "batch_sizes"),
    "bs_wrong_sum": (lambda: packed_lstm_args(batch_sizes=torch.tensor([2, 2, 1])), ValueError, "batch_sizes sum"),
    "bs_int32": (lambda: packed_lstm_args(batch_sizes=torch.tensor([2, 2, 2], dtype=torch.int32)), ValueError,
                 "batch_sizes"),
    "bs_float": (lambda: packed_lstm_args(batch_sizes=torch.tensor([2.0, 2.0, 2.0])), ValueError, "batch_sizes"),
    "bs_2d": (lambda: packed_lstm_args(batch_sizes=torch.tensor([[2, 2, 2]])), ValueError, "batch_sizes"),
    "bs_meta": (lambda: packed_lstm_args(batch_sizes=torch.tensor([2, 2, 2], device="meta")), ValueError,
                "batch_sizes"),
    "packed_input_3d": (lambda: packed_lstm_args(input=torch.randn(3, 2, I)), ValueError, "packed input"),
    "packed_hx_batch": (lambda: packed_lstm_args(hx=torch.randn(3, H), cx=torch.randn(3, H)), ValueError, "hx"),
}


@pytest.mark.parametrize("case", list(BAD_LSTM_FORWARD))
def test_lstm_forward_bad_args(case):
    make, exc, match = BAD_LSTM_FORWARD[case]
    with pytest.raises(exc, match=match):
        ops.lstm_forward(**make())


@pytest.mark.parametrize("mode", ["GRU", "RNN_TANH"])
def test_gru_rnn_forward_bad_args(mode):
    gates = 3 if mode == "GRU" else 1
    x, hx = torch.randn(T, B, I), torch.randn(B, H)
    w_ih, w_hh, b = torch.randn(gates * H, I), torch.randn(gates * H, H), torch.randn(gates * H)

    def call(**over):
        a = dict(input=x, batch_sizes=None, hx=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b, b_hh=b, reverse=False)
        a.update(over)
        if mode == "GRU":
            return ops.gru_forward(train=True, **a)
        return ops.rnn_forward(relu=False, **a)

    call()  # the unmodified call is fine
    with pytest.raises(ValueError, match="w_hh"):
        call(w_hh=torch.randn(gates * H, H - 1))
    with pytest.raises(ValueError, match="b_hh"):
        call(b_hh=torch.randn(gates * H + 1))
    with pytest.raises(ValueError, match="hx"):
        call(hx=torch.randn(B, H, 1))
    with pytest.raises(ValueError, match="batch_sizes"):
        call(input=torch.randn(6, I), batch_sizes=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="batch_sizes"):
        call(input=torch.randn(6, I), batch_sizes=torch.tensor([2, 2, 2], dtype=torch.int32))


def _lstm_backward_args(**over):
    a = lstm_args()
    out, hy, cy, ws = ops.lstm_forward(**a)
    b = dict(grad_output=torch.ones_like(out), grad_hy=torch.ones_like(hy), grad_cy=torch.ones_like(cy),
             input=a["input"], batch_sizes=None, hx=a["hx"], cx=a["cx"], w_ih=a["w_ih"], w_hh=a["w_hh"], w_hr=None,
             output=out, workspace=ws, reverse=False, has_bias=True)
    b.update(over)
    return b


BAD_LSTM_BACKWARD = {
    "workspace_shape": (dict(workspace=torch.zeros(T * B, 3)), ValueError, "workspace"),
    "workspace_empty": (dict(workspace=torch.zeros(0, 0)), ValueError, "workspace.*train=False"),
    "workspace_dtype": (dict(workspace=torch.zeros(T * B, 5 * H, dtype=torch.float64)), ValueError, "workspace"),
    "grad_output_shape": (dict(grad_output=torch.ones(T - 1, B, H)), ValueError, "grad_output"),
    "grad_output_dtype": (dict(grad_output=torch.ones(T, B, H, dtype=torch.float64)), TypeError, "grad_output"),
    "grad_hy_shape": (dict(grad_hy=torch.ones(1, H)), ValueError, "grad_hy"),
    "grad_cy_shape": (dict(grad_cy=torch.ones(1, H)), ValueError, "grad_cy"),
    "w_hh_shape": (dict(w_hh=torch.randn(4 * H, H + 2)), ValueError, "w_hh"),
    "bs_wrong_sum": (dict(batch_sizes=torch.tensor([3, 3])), ValueError, "batch_sizes"),
}


@pytest.mark.parametrize("case", list(BAD_LSTM_BACKWARD))
def test_lstm_backward_bad_args(case):
    over, exc, match = BAD_LSTM_BACKWARD[case]
    args = _lstm_backward_args()
    ops.lstm_backward(**args)  # the unmodified call is fine
    args.update(over)
    with pytest.raises(exc, match=match):
        ops.lstm_backward(**args)


def test_gru_rnn_backward_bad_args():
    x, hx = torch.randn(T, B, I), torch.randn(B, H)
    w_ih, w_hh = torch.randn(3 * H, I), torch.randn(3 * H, H)
    out, hy, ws = ops.gru_forward(x, None, hx, w_ih, w_hh, None, None, False, True)
    go, gh = torch.ones_like(out), torch.ones_like(hy)
    with pytest.raises(ValueError, match="workspace"):
        ops.gru_backward(go, gh, x, None, hx, w_ih, w_hh, out, ws[1:], False, False)
    with pytest.raises(ValueError, match="grad_hy"):
        ops.gru_backward(go, gh[:1], x, None, hx, w_ih, w_hh, out, ws, False, False)
    rw_ih, rw_hh = torch.randn(H, I), torch.randn(H, H)
    rout, rhy = ops.rnn_forward(x, None, hx, rw_ih, rw_hh, None, None, False, False)
    with pytest.raises(ValueError, match="grad_output"):
        ops.rnn_backward(go[:, :1], torch.ones_like(rhy), x, None, hx, rw_ih, rw_hh, rout, False, False, False)
    with pytest.raises(TypeError, match="grad_output"):
        ops.rnn_backward(go.double(), torch.ones_like(rhy), x, None, hx, rw_ih, rw_hh, rout, False, False, False)


_OUTPUT_SHAPE_SCRIPT = """
import torch, fastrnn
from fastrnn import ops
T, B, I, H = {T}, 4, 3, 8
x, hx = torch.randn(T, B, I), torch.zeros(B, H)
w_ih, w_hh = torch.randn({G} * H, I), torch.randn({G} * H, H)
out = torch.randn(1, B, H)  # output (and grad_output) of 1 step, the input has T
try:
    if "{mode}" == "RNN":
        ops.rnn_backward(out, hx, x, None, hx, w_ih, w_hh, out, False, False, False)
    else:
        ws = torch.zeros(T * B, 4 * H)
        ops.gru_backward(out, hx, x, None, hx, w_ih, w_hh, out, ws, False, False)
except ValueError as e:
    print("ValueError:", e)
"""


@pytest.mark.parametrize("mode,G", [("RNN", 1), ("GRU", 3)])
def test_backward_output_of_wrong_length_raises(mode, G):
    """Run in a subprocess: the unchecked call reads out of bounds and can take the interpreter down."""
    code = textwrap.dedent(_OUTPUT_SHAPE_SCRIPT.format(T=50, G=G, mode=mode))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": _pythonpath()})
    assert res.returncode == 0, f"crashed or raised something else (rc {res.returncode}): {res.stderr[-500:]}"
    assert "ValueError:" in res.stdout and "output" in res.stdout, res.stdout


def _pythonpath():
    import os
    import fastrnn as f
    return os.pathsep.join([os.path.dirname(os.path.dirname(f.__file__)), os.environ.get("PYTHONPATH", "")])


def test_zero_hidden_size_op_gives_empty_output():
    # hidden_size 0 is accepted, as by torch.nn's cells (values: tests/test_numerics_edge.py, zero sizes).
    out, hy = ops.rnn_forward(torch.randn(T, B, I), None, torch.randn(B, 0), torch.randn(0, I), torch.randn(0, 0),
                              None, None, False, False)
    assert out.shape == (T, B, 0) and hy.shape == (B, 0)
