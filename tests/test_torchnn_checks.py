"""fastrnn's modules behave as torch.nn's where a user can tell them apart without running a kernel: the
repr, the class hierarchy (isinstance nn.RNNBase / nn.RNNCellBase), every argument check (same exception
class, a message containing torch.nn's own, the same check order, the same warnings), and what
torch.jit.script / torch.export do with them. torch.nn is the oracle: each case runs on the live torch.nn."""
import itertools

import pytest
import torch
from torch import nn

import fastrnn

MODULES = {"LSTM": (fastrnn.LSTM, nn.LSTM), "GRU": (fastrnn.GRU, nn.GRU), "RNN": (fastrnn.RNN, nn.RNN)}
CELLS = {"LSTMCell": (fastrnn.LSTMCell, nn.LSTMCell), "GRUCell": (fastrnn.GRUCell, nn.GRUCell),
         "RNNCell": (fastrnn.RNNCell, nn.RNNCell)}
ALL = {**MODULES, **CELLS}


# ------------------------------------------------------------------------------------------------ repr
def _module_configs(name):
    keys = dict(num_layers=[1, 3], bias=[True, False], batch_first=[False, True], dropout=[0.0, 0.25],
                bidirectional=[False, True])
    if name == "LSTM":
        keys["proj_size"] = [0, 2]
    if name == "RNN":
        keys["nonlinearity"] = ["tanh", "relu"]
    for values in itertools.product(*keys.values()):
        yield dict(zip(keys, values))


@pytest.mark.parametrize("name", list(MODULES))
def test_module_repr_matches_torch(name):
    fast_cls, ref_cls = MODULES[name]
    n = 0
    for cfg in _module_configs(name):
        if cfg["dropout"] and cfg["num_layers"] == 1:
            continue  # torch.nn warns; covered by the warning test below
        fast, ref = fast_cls(3, 5, **cfg), ref_cls(3, 5, **cfg)
        assert repr(fast) == repr(ref), cfg
        n += 1
    assert n >= 16
    # Positional arguments and a bias given as the default value spelled differently still print alike.
    assert repr(fast_cls(3, 5, 2)) == repr(ref_cls(3, 5, 2)) == f"{name}(3, 5, num_layers=2)"


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("bias", [True, False])
def test_cell_repr_matches_torch(name, bias):
    fast_cls, ref_cls = CELLS[name]
    kws = [{}] + ([{"nonlinearity": "relu"}, {"nonlinearity": "tanh"}] if name == "RNNCell" else [])
    for kw in kws:
        fast, ref = fast_cls(3, 5, bias=bias, **kw), ref_cls(3, 5, bias=bias, **kw)
        assert repr(fast) == repr(ref), kw


def test_repr_inside_a_model_matches_torch():
    def model(ns):
        return nn.Sequential(ns.LSTM(3, 4, batch_first=True), ns.RNN(4, 4, nonlinearity="relu"),
                             ns.RNNCell(4, 4, nonlinearity="relu"), ns.GRUCell(4, 2, bias=False))
    assert repr(model(fastrnn)) == repr(model(nn))


# ----------------------------------------------------------------------------------- class hierarchy
MODULE_KW = {"LSTM": dict(num_layers=2, bidirectional=True, proj_size=3), "GRU": dict(num_layers=2),
             "RNN": dict(nonlinearity="relu", bidirectional=True)}


def _pair(name, I=4, H=5, **kw):
    fast_cls, ref_cls = ALL[name]
    kw = {**MODULE_KW.get(name, {}), **kw}
    fast, ref = fast_cls(I, H, **kw), ref_cls(I, H, **kw)
    ref.load_state_dict(fast.state_dict(), strict=True)
    return fast, ref


def _flat(out):
    """All tensors of a forward's result, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _run(m, name, x, hx=None):
    return _flat(m(x, hx))


@pytest.mark.parametrize("name", list(ALL))
def test_isinstance_torch_base_classes(name):
    fast, ref = _pair(name)
    base = nn.RNNBase if name in MODULES else nn.RNNCellBase
    assert isinstance(ref, base) and isinstance(fast, base)
    # ... but not of torch.nn's concrete class, which TorchDynamo refuses to trace (see the compile test)
    assert not isinstance(fast, type(ref))
    assert type(fast).__name__ == type(ref).__name__


def test_isinstance_based_library_code_reaches_fastrnn():
    """The pattern the issue names: initialisation code that finds recurrent layers by isinstance. Run on a
    torch.nn model and on the same model built from fastrnn, it leaves both with the same parameters."""
    def model(ns):
        return nn.Sequential(ns.LSTM(4, 5, proj_size=2), ns.GRU(2, 5), ns.RNNCell(5, 5), ns.LSTMCell(5, 5))

    def init(m, seed):
        torch.manual_seed(seed)
        count = 0
        for mod in m.modules():
            if isinstance(mod, (nn.RNNBase, nn.RNNCellBase)):
                count += 1
                for pname, p in mod.named_parameters():
                    (nn.init.orthogonal_ if "weight" in pname else nn.init.zeros_)(p)
        return count

    fast, ref = model(fastrnn), model(nn)
    assert init(fast, 1) == init(ref, 1) == 4
    fs, rs = fast.state_dict(), ref.state_dict()
    assert list(fs) == list(rs)
    for k in rs:
        torch.testing.assert_close(fs[k], rs[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("name", list(ALL))
def test_state_dict_both_ways_and_conversions_keep_working(name):
    import copy
    import io
    fast, ref = _pair(name)
    assert list(fast.state_dict()) == list(ref.state_dict())
    fast.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(fast.state_dict(), strict=True)
    batched = (3, 2, 4) if name in MODULES else (2, 4)
    x = torch.randn(batched)
    expect = _run(ref, name, x)
    for a, b in zip(_run(fast, name, x), expect):
        torch.testing.assert_close(a, b)
    # dtype conversion: every parameter and the forward follow (RNNBase._apply re-reads the parameters)
    fast.double()
    ref.double()
    assert all(p.dtype == torch.float64 for p in fast.parameters())
    for a, b in zip(_run(fast, name, x.double()), _run(ref, name, x.double())):
        torch.testing.assert_close(a, b)
    fast.to(torch.float32)
    ref.float()
    # a deep copy and a whole-module pickle (RNNBase's __getstate__/__setstate__) give the same module
    buf = io.BytesIO()
    torch.save(fast, buf)
    buf.seek(0)
    for clone in (copy.deepcopy(fast), torch.load(buf, weights_only=False)):
        assert type(clone) is type(fast) and repr(clone) == repr(fast)
        for a, b in zip(_run(clone, name, x), expect):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", list(MODULES))
def test_parameters_swapped_in_are_the_ones_used(name):
    """RNNBase keeps a cached list of the parameters; fastrnn reads them by name, so an assigned parameter and
    torch.func.functional_call's swapped tensors (which bypass __setattr__) are what the forward uses."""
    fast, ref = _pair(name)
    x = torch.randn(3, 2, 4)
    new = {k: torch.randn_like(v) for k, v in ref.state_dict().items()}
    expect = _flat(torch.func.functional_call(ref, new, (x,)))
    for a, b in zip(_flat(torch.func.functional_call(fast, new, (x,))), expect):
        torch.testing.assert_close(a, b)
    for k, v in new.items():
        setattr(fast, k, nn.Parameter(v.clone()))
    assert all(a is getattr(fast, n) for a, n in zip(fast._flat_weights, fast._flat_weights_names))
    for a, b in zip(_run(fast, name, x), expect):
        torch.testing.assert_close(a, b)


def test_dynamo_refuses_torch_nn_but_traces_fastrnn_whole():
    """Why fastrnn derives from nn.RNNBase and not nn.LSTM: Dynamo graph-breaks on nn.LSTM instances only."""
    torch._dynamo.reset()
    ref = nn.LSTM(4, 5)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
        torch.compile(lambda x: ref(x)[0], fullgraph=True, backend="eager")(torch.randn(3, 2, 4))


@pytest.mark.parametrize("name", list(ALL))
def test_compile_fullgraph_forward_backward(name):
    """torch.compile(fullgraph=True) (aot_eager: the backward graph too) of each RNNBase / RNNCellBase
    subclass: no graph break, and the same outputs and gradients as eager."""
    torch._dynamo.reset()
    fast, ref = _pair(name)
    fast.train()
    x = torch.randn((3, 2, 4) if name in MODULES else (2, 4), requires_grad=True)
    weights = torch.randn(100)

    def loss(m, x):
        return sum((t * weights[:t.numel()].view(t.shape)).sum() for t in _flat(m(x)))

    leaves = [x, *fast.parameters()]
    expect_loss = loss(ref, x)
    expect = torch.autograd.grad(expect_loss, [x, *ref.parameters()])
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got_loss = compiled(fast, x)
    got = torch.autograd.grad(got_loss, leaves)
    torch.testing.assert_close(got_loss, expect_loss)
    for a, b in zip(got, expect):
        torch.testing.assert_close(a, b)
