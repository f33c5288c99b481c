"""The bidirectional ops (fastrnn::{lstm,gru,rnn}_bidir_{forward,backward}): both directions of a layer in one
call, on two threads at once on the CPU (csrc/cpu/bidir_cpu.cpp). They must return exactly what the two
one-direction ops return; the modules' bidirectional parity against torch.nn (test_modules_parity.py and the
rest of the suite) runs through them."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastrnn
from common import assert_close, devices, make_pair

ops = torch.ops.fastrnn

CELLS = ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"]


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_directions_run_on_two_threads(two_threads, monkeypatch):
    """At once below 16 batch rows (where a one-direction call would meet at a barrier every step), in turn
    from 16 (a one-direction call splits the rows without barriers), as the switch says when set."""
    monkeypatch.delenv("FASTRNN_CPU_BIDIR", raising=False)
    assert [ops._cpu_bidir_threads_used(rows) for rows in (1, 15, 16, 128)] == [2, 2, 1, 1]
    monkeypatch.setenv("FASTRNN_CPU_BIDIR", "auto")
    assert [ops._cpu_bidir_threads_used(rows) for rows in (1, 15, 16, 128)] == [2, 2, 1, 1]
    monkeypatch.setenv("FASTRNN_CPU_BIDIR", "sequential")
    assert [ops._cpu_bidir_threads_used(rows) for rows in (1, 128)] == [1, 1]
    monkeypatch.setenv("FASTRNN_CPU_BIDIR", "concurrent")
    assert [ops._cpu_bidir_threads_used(rows) for rows in (1, 128)] == [2, 2]
    torch.set_num_threads(1)
    assert ops._cpu_bidir_threads_used(1) == 1


def test_bad_switch_is_a_value_error(monkeypatch):
    monkeypatch.setenv("FASTRNN_CPU_BIDIR", "both")
    with pytest.raises(ValueError, match="FASTRNN_CPU_BIDIR must be auto, concurrent or sequential, got 'both'"):
        ops._cpu_bidir_threads_used(1)
    m = fastrnn.GRU(4, 5, bidirectional=True)
    with pytest.raises(ValueError, match="FASTRNN_CPU_BIDIR"):
        m(torch.randn(3, 2, 4))


def _direction_args(cell, H, I, B, dtype, device, gen):
    """The per-direction arguments of the forward op after (input, batch_sizes), and P (the state size)."""
    r = lambda *s: (torch.randn(*s, generator=gen, dtype=torch.float64) * 0.3).to(device, dtype)  # noqa: E731
    G = {"lstm": 4, "lstm_proj": 4, "gru": 3}.get(cell, 1)
    P = 3 if cell == "lstm_proj" else H
    w_ih, w_hh, b_ih, b_hh = r(G * H, I), r(G * H, P), r(G * H), r(G * H)
    if cell.startswith("lstm"):
        w_hr = r(P, H) if cell == "lstm_proj" else None
        return (r(B, P), r(B, H), w_ih, w_hh, b_ih, b_hh, w_hr), P
    return (r(B, H), w_ih, w_hh, b_ih, b_hh), P


def _one_direction(cell, input, batch_sizes, args, reverse, flag):
    if cell.startswith("lstm"):
        return ops.lstm_forward(input, batch_sizes, *args, reverse, flag)
    if cell == "gru":
        return ops.gru_forward(input, batch_sizes, *args, reverse, flag)
    return ops.rnn_forward(input, batch_sizes, *args, cell == "rnn_relu", reverse)


def _bidir(cell, input, batch_sizes, args, args_r, flag):
    op = {"lstm": ops.lstm_bidir_forward, "lstm_proj": ops.lstm_bidir_forward, "gru": ops.gru_bidir_forward,
          "rnn_tanh": ops.rnn_bidir_forward, "rnn_relu": ops.rnn_bidir_forward}[cell]
    return op(input, batch_sizes, *args, *args_r, cell == "rnn_relu" if cell.startswith("rnn") else flag)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("switch", ["concurrent", "sequential", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("B", [1, 5, 17])
@pytest.mark.parametrize("cell", CELLS)
def test_bidir_ops_equal_two_one_direction_calls(cell, B, packed, dtype, switch, device, two_threads,
                                                 monkeypatch):
    """Forward and backward (through autograd, into the bidir backward op) against the two one-direction
    ops on the same arguments: the same kernels on fewer threads, so the same numbers (tolerance TOL[dtype]
    covers an x-projection GEMM that splits its sums differently on one thread). In turn (sequential; auto at
    B=17) the reverse direction's input gradient is added into the forward direction's by its GEMM."""
    monkeypatch.setenv("FASTRNN_CPU_BIDIR", switch)
    gen = torch.Generator().manual_seed(B * 7 + len(cell))
    T, I, H = 6, 7, 9
    args, P = _direction_args(cell, H, I, B, dtype, device, gen)
    args_r, _ = _direction_args(cell, H, I, B, dtype, device, gen)
    if packed:
        lengths = torch.tensor([T - (b * 5) % T for b in range(B)]).sort(descending=True).values
        batch_sizes = torch.tensor([(lengths > t).sum().item() for t in range(T)], dtype=torch.int64)
        input = torch.randn(int(lengths.sum()), I, generator=gen).to(device, dtype)
    else:
        batch_sizes = None
        input = torch.randn(T, B, I, generator=gen).to(device, dtype)

    def leaves():
        return [t.detach().clone().requires_grad_(t.is_floating_point()) if t is not None else None
                for t in (input, *args, *args_r)]

    got_in = leaves()
    got = _bidir(cell, got_in[0], batch_sizes, got_in[1:1 + len(args)], got_in[1 + len(args):], True)
    want_in = leaves()
    want = (*_one_direction(cell, want_in[0], batch_sizes, want_in[1:1 + len(args)], False, True),
            *_one_direction(cell, want_in[0], batch_sizes, want_in[1 + len(args):], True, True))
    assert len(got) == len(want)
    n = len(got) // 2
    diff = [0, 1, 2] if cell.startswith("lstm") else [0, 1]  # outputs that carry gradients
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, dtype, f"{cell} result {i}")
    weights = [torch.randn(want[i].shape, generator=gen).to(device, dtype) for d in (0, 1) for i in
               [d * n + j for j in diff]]
    outs = lambda res: [res[d * n + j] for d in (0, 1) for j in diff]  # noqa: E731
    g_got = torch.autograd.grad(sum((o.float() * w).sum() for o, w in zip(outs(got), weights)),
                                [t for t in got_in if t is not None])
    g_want = torch.autograd.grad(sum((o.float() * w).sum() for o, w in zip(outs(want), weights)),
                                 [t for t in want_in if t is not None])
    for i, (g, w) in enumerate(zip(g_got, g_want)):
        assert_close(g, w, dtype, f"{cell} gradient {i}")


class _OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_bidirectional_modules_run_each_layer_as_one_bidir_op(mode, packed):
    fast, _ = make_pair(mode, 4, 5, num_layers=2, bidirectional=True)
    cell = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn"}[mode]
    for B in (15, 16):
        x = torch.randn(3, B, 4, requires_grad=True)
        inp = torch.nn.utils.rnn.pack_padded_sequence(x, [3] * (B - 1) + [1]) if packed else x
        with _OpNames() as rec:
            out = fast(inp)[0]
            (out.data if packed else out).sum().backward()
        assert rec.names.count(f"fastrnn::{cell}_bidir_forward") == 2, rec.names
        assert rec.names.count(f"fastrnn::{cell}_bidir_backward") == 2, rec.names
        assert f"fastrnn::{cell}_forward" not in rec.names and f"fastrnn::{cell}_backward" not in rec.names


@pytest.mark.parametrize("B", [3, 20])
def test_sequential_switch_gives_the_same_numbers(B, monkeypatch, two_threads):
    fast, ref = make_pair("LSTM", 16, 24, bidirectional=True)
    x = torch.randn(12, B, 16)
    with torch.no_grad():
        monkeypatch.setenv("FASTRNN_CPU_BIDIR", "sequential")
        a = fast(x)
        monkeypatch.setenv("FASTRNN_CPU_BIDIR", "concurrent")
        b = fast(x)
        want = ref(x)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert_close(b[0], want[0], torch.float32, "output vs torch.nn")


def test_error_in_one_direction_is_raised(two_threads):
    """An error inside the reverse direction's kernel (here: a weight of the wrong shape) reaches the caller
    as the one-direction op's error, with the other thread finished."""
    gen = torch.Generator().manual_seed(0)
    args, _ = _direction_args("gru", 5, 4, 2, torch.float32, "cpu", gen)
    args_r, _ = _direction_args("gru", 5, 4, 2, torch.float32, "cpu", gen)
    bad = list(args_r)
    bad[2] = torch.randn(15, 6)  # w_hh_r [3H, H+1]
    with pytest.raises(ValueError, match=r"expected w_hh of shape \[15, 5\], got \[15, 6\]"):
        ops.gru_bidir_forward(torch.randn(3, 2, 4), None, *args, *bad, False)



@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_callers_on_several_python_threads(mode, dtype, monkeypatch, two_threads):
    """Bidirectional layers trained from three Python threads at once (each call opening its own two-thread
    region: more threads than cores) give every thread the numbers it gets alone: no state of one call leaks
    into another's (the widened-bf16 slots, brgemm's kernel caches, the thread-local state carried to the
    second thread)."""
    import threading

    monkeypatch.setenv("FASTRNN_CPU_BIDIR", "concurrent")
    jobs = []
    for seed in range(3):
        torch.manual_seed(seed)
        fast, _ = make_pair(mode, 12, 20 + 4 * seed, dtype, bidirectional=True, num_layers=2)
        x = torch.randn(7 + seed, 2 + seed, 12, dtype=dtype)
        jobs.append((fast, x))

    def run(fast, x):
        xg = x.clone().requires_grad_()
        out, _ = fast(xg)
        out.float().square().sum().backward()
        return out.detach(), xg.grad

    alone = [run(fast, x) for fast, x in jobs]
    got = [[] for _ in jobs]
    errors = []

    def worker(i):
        try:
            for _ in range(10):
                got[i].append(run(*jobs[i]))
        except Exception as e:  # noqa: BLE001  (reported below, on the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, runs in enumerate(got):
        assert len(runs) == 10
        for out, grad in runs:
            torch.testing.assert_close(out, alone[i][0], rtol=0, atol=0)
            torch.testing.assert_close(grad, alone[i][1], rtol=0, atol=0)
