"""torch.compile(fullgraph=True) of small models built on fastrnn: the ops trace whole (no graph break) and
the compiled model matches eager, forward and backward. Compiles are slow on small machines, so there are
few of them: one with the default inductor backend, the gradient checks with aot_eager."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from common import assert_close


class Tagger(nn.Module):
    """Embedding-free sequence model: a bidirectional 2-layer LSTM (with projection) then a GRU and a head."""

    def __init__(self):
        super().__init__()
        self.lstm = fastrnn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=4, batch_first=True)
        self.gru = fastrnn.GRU(8, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x, h0, c0):
        y, (h, c) = self.lstm(x, (h0, c0))
        z, hz = self.gru(y)
        return self.head(z), h, c, hz


def _inputs(requires_grad=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 5, generator=g)
    h0, c0 = torch.randn(4, 3, 4, generator=g), torch.randn(4, 3, 8, generator=g)
    return [t.requires_grad_(requires_grad) for t in (x, h0, c0)]


def _grads(model, outs, leaves):
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)
    params = list(model.parameters())
    return torch.autograd.grad(loss, list(leaves) + params)


class LstmGru(nn.Module):
    """As small as it gets: every generated kernel costs inductor seconds of C++ compilation."""

    def __init__(self):
        super().__init__()
        self.lstm = fastrnn.LSTM(5, 8)
        self.gru = fastrnn.GRU(8, 6)

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        z, hz = self.gru(y)
        return z, h, c, hz


def test_compile_inductor_forward():
    """The default backend (inductor), inference: ~40 s cold on 2 cores."""
    torch._dynamo.reset()
    model = LstmGru().eval()
    x = torch.randn(6, 3, 5)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        expect = model(x)
        got = compiled(x)
    for a, b in zip(got, expect):
        assert_close(a, b, torch.float32, "inductor forward")


@pytest.mark.parametrize("backend", ["aot_eager"])
def test_compile_backward_matches_eager(backend):
    torch._dynamo.reset()
    model = Tagger().train()  # dropout is 0: training mode only switches the ops to train=True
    x, h0, c0 = _inputs(requires_grad=True)
    expect = model(x, h0, c0)
    expect_grads = _grads(model, expect, (x, h0, c0))
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    got = compiled(x, h0, c0)
    got_grads = _grads(model, got, (x, h0, c0))
    for a, b in zip(got, expect):
        assert_close(a, b, torch.float32, f"{backend} forward")
    names = ["x", "h0", "c0"] + [n for n, _ in model.named_parameters()]
    for n, a, b in zip(names, got_grads, expect_grads):
        assert_close(a, b, torch.float32, f"{backend} grad {n}")


def test_compile_packed_rnn_cells_aot_eager():
    """Packed input (unsorted lengths) through an RNN, and a GRUCell loop, compiled without graph breaks."""
    torch._dynamo.reset()
    rnn = fastrnn.RNN(4, 5, nonlinearity="relu", bidirectional=True)
    cell = fastrnn.GRUCell(4, 5)

    def f(packed, x, h):  # (dynamo cannot trace pack_padded_sequence itself, so the packing happens outside)
        out, hn = rnn(packed)
        for t in range(x.shape[0]):
            h = cell(x[t], h)
        return out.data, hn, h

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 4, generator=g, requires_grad=True)
    pack = lambda: pack_padded_sequence(x, torch.tensor([2, 4, 1]), enforce_sorted=False)  # noqa: E731
    h = torch.randn(3, 5, generator=g, requires_grad=True)
    expect = f(pack(), x, h)
    eg = torch.autograd.grad(sum(o.sum() for o in expect), [x, h, *rnn.parameters(), *cell.parameters()])
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(pack(), x, h)
    gg = torch.autograd.grad(sum(o.sum() for o in got), [x, h, *rnn.parameters(), *cell.parameters()])
    for a, b in zip(got, expect):
        assert_close(a, b, torch.float32, "packed forward")
    for a, b in zip(gg, eg):
        assert_close(a, b, torch.float32, "packed grad")


class BatchFirstTrainer(nn.Module):
    """batch_first LSTM fed non-contiguous h0/c0 (views of a transposed buffer), then a batch_first GRU."""

    def __init__(self):
        super().__init__()
        self.lstm = fastrnn.LSTM(5, 4, batch_first=True)
        self.gru = fastrnn.GRU(4, 3, batch_first=True)

    def forward(self, x, h0c0):
        h0, c0 = h0c0.transpose(0, 1).unbind(0)  # each [1, B, 4], strided
        y, (h, c) = self.lstm(x, (h0, c0))
        z, hz = self.gru(y)
        return z, h, c, hz


def test_compile_inductor_training_batch_first_strided_state():
    """Training under the default backend: the fake kernels must give the real kernels' (contiguous)
    strides, or AOT autograd's check fails ("incorrect fake kernel ... stride")."""
    torch._dynamo.reset()
    model = BatchFirstTrainer().train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 5, generator=g, requires_grad=True)
    h0c0 = torch.randn(1, 2, 3, 4, generator=g).requires_grad_()  # [1, 2, B, H]: transposed to [2, 1, B, H]
    expect = model(x, h0c0)
    expect_grads = _grads(model, expect, (x, h0c0))
    compiled = torch.compile(model, fullgraph=True)
    got = compiled(x, h0c0)
    got_grads = _grads(model, got, (x, h0c0))
    for a, b in zip(got, expect):
        assert_close(a, b, torch.float32, "inductor training forward")
    names = ["x", "h0c0"] + [n for n, _ in model.named_parameters()]
    for n, a, b in zip(names, got_grads, expect_grads):
        assert_close(a, b, torch.float32, f"inductor training grad {n}")


def test_jit_trace_matches_eager_and_trains():
    """torch.jit.trace passes its own check (same graph in either grad mode), matches eager, and the traced
    module can be trained like a traced torch.nn module."""
    torch.manual_seed(0)
    for model in (fastrnn.LSTM(5, 4, num_layers=2, batch_first=True), fastrnn.GRU(5, 4),
                  fastrnn.RNN(5, 4, nonlinearity="relu"), fastrnn.LSTMCell(5, 4)):
        x = torch.randn(3, 2, 5) if not isinstance(model, fastrnn.LSTMCell) else torch.randn(2, 5)
        traced = torch.jit.trace(model, x)
        for a, b in zip(torch.utils._pytree.tree_leaves(traced(x)), torch.utils._pytree.tree_leaves(model(x))):
            assert_close(a, b, torch.float32, f"traced {type(model).__name__}")
        out = torch.utils._pytree.tree_leaves(traced(x))[0]
        grads = torch.autograd.grad(out.sum(), list(model.parameters()))
        expect = torch.autograd.grad(torch.utils._pytree.tree_leaves(model(x))[0].sum(), list(model.parameters()))
        for a, b in zip(grads, expect):
            assert_close(a, b, torch.float32, f"traced {type(model).__name__} grad")
