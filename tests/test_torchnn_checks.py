"""fastrnn's modules behave as torch.nn's where a user can tell them apart without running a kernel: the
repr, the class hierarchy (isinstance nn.RNNBase / nn.RNNCellBase), every argument check (same exception
class, a message containing torch.nn's own, the same check order, the same warnings), and what
torch.jit.script / torch.export do with them. torch.nn is the oracle: each case runs on the live torch.nn."""
import itertools
import warnings

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn.modules import DtypeMismatchError, HiddenStateError, InputTypeError

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


# ------------------------------------------------------------------------------------- argument checks
def _outcome(fn):
    """(exception or None, [warnings]) of calling fn."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the point is to compare whatever is raised
            return e, caught
    return None, caught


def assert_like_torch(ref_fn, fast_fn, fragment=None):
    """torch.nn raises; fastrnn raises an instance of the same class. With fragment=None fastrnn's message
    contains torch.nn's whole message; otherwise (torch.nn's message is an accident of its implementation,
    e.g. a matmul's dtype error) it contains `fragment`."""
    ref_exc, _ = _outcome(ref_fn)
    fast_exc, _ = _outcome(fast_fn)
    assert ref_exc is not None, "torch.nn accepts this: the case is wrong"
    assert fast_exc is not None, f"fastrnn accepts what torch.nn refuses with {ref_exc!r}"
    assert isinstance(fast_exc, type(ref_exc)), f"fastrnn raised {fast_exc!r}, torch.nn {ref_exc!r}"
    if fragment is None:
        assert str(ref_exc) in str(fast_exc), f"fastrnn: {fast_exc}\ntorch.nn: {ref_exc}"
    else:
        assert fragment in str(fast_exc), f"fastrnn: {fast_exc}"


# Constructor arguments torch.nn refuses: (modules it applies to, kwargs), all raised by torch.nn's code.
BAD_CTOR = {
    "bias_str": ("LSTM GRU RNN", dict(bias="yes")),
    "bias_int": ("LSTM GRU RNN", dict(bias=1)),
    "batch_first_str": ("LSTM GRU RNN", dict(batch_first="False")),
    "input_float": ("LSTM GRU RNN", dict(input_size=4.0)),
    "hidden_float": ("LSTM GRU RNN", dict(hidden_size=5.0)),
    "input_0": ("LSTM GRU RNN", dict(input_size=0)),
    "hidden_0": ("LSTM GRU RNN", dict(hidden_size=0)),
    "hidden_neg": ("LSTM GRU RNN", dict(hidden_size=-3)),
    "layers_0": ("LSTM GRU RNN", dict(num_layers=0)),
    "layers_float": ("LSTM GRU RNN", dict(num_layers=2.0)),
    "layers_str": ("LSTM GRU RNN", dict(num_layers="2")),
    "dropout_gt1": ("LSTM GRU RNN", dict(num_layers=2, dropout=1.5)),
    "dropout_neg": ("LSTM GRU RNN", dict(num_layers=2, dropout=-0.1)),
    "dropout_bool": ("LSTM GRU RNN", dict(num_layers=2, dropout=True)),
    "dropout_str": ("LSTM GRU RNN", dict(num_layers=2, dropout="0.1")),
    "proj_given": ("GRU RNN", dict(proj_size=2)),
    "proj_zero_given": ("GRU RNN", dict(proj_size=0)),
    "proj_and_bad_hidden": ("GRU RNN", dict(proj_size=2, hidden_size=5.0)),  # proj_size is checked first
    "proj_eq_hidden": ("LSTM", dict(proj_size=5)),
    "proj_gt_hidden": ("LSTM", dict(proj_size=7)),
    "proj_neg": ("LSTM", dict(proj_size=-1)),
    "proj_float": ("LSTM", dict(proj_size=1.5)),
    "nonlinearity": ("RNN", dict(nonlinearity="sigmoid")),
    "nonlinearity_lstm": ("LSTM GRU", dict(nonlinearity="relu")),
    "unknown_kwarg": ("LSTM GRU RNN", dict(foo=1)),
    "bias_str_and_dropout": ("LSTM GRU RNN", dict(bias="yes", dropout=2.0)),  # dropout is checked first
    "hidden_float_and_input_0": ("LSTM GRU RNN", dict(input_size=0, hidden_size=5.0)),  # input_size first
    "cell_hidden_neg": ("LSTMCell GRUCell RNNCell", dict(hidden_size=-1)),
    "cell_hidden_float": ("LSTMCell GRUCell RNNCell", dict(hidden_size=5.0)),
    "cell_unknown_kwarg": ("LSTMCell GRUCell RNNCell", dict(foo=1)),
}
BAD_CTOR_CASES = [(n, case) for case, (names, _) in BAD_CTOR.items() for n in names.split()]


@pytest.mark.parametrize("name,case", BAD_CTOR_CASES, ids=[f"{n}-{c}" for n, c in BAD_CTOR_CASES])
def test_bad_constructor_raises_like_torch(name, case):
    fast_cls, ref_cls = ALL[name]
    kw = {"input_size": 4, "hidden_size": 5, **BAD_CTOR[case][1]}
    assert_like_torch(lambda: ref_cls(**kw), lambda: fast_cls(**kw))


# What torch.nn accepts, fastrnn accepts: the same parameters and repr.
GOOD_CTOR = [
    ("LSTM", dict(proj_size=0)), ("LSTM", dict(bidirectional=1)), ("GRU", dict(bidirectional="yes")),
    ("RNN", dict(input_size=True)), ("LSTM", dict(num_layers=2, dropout=1)), ("GRU", dict(dropout=0)),
    ("RNN", dict(nonlinearity="relu")), ("LSTM", dict(num_layers=True)),
    ("LSTMCell", dict(hidden_size=0)), ("GRUCell", dict(hidden_size=0)), ("RNNCell", dict(hidden_size=0)),
    ("LSTMCell", dict(input_size=0)), ("GRUCell", dict(input_size=0)), ("RNNCell", dict(input_size=0)),
    ("LSTMCell", dict(bias=0)), ("GRUCell", dict(bias="yes")), ("RNNCell", dict(nonlinearity="gelu")),
]


@pytest.mark.parametrize("name,kw", GOOD_CTOR, ids=[f"{n}-{'_'.join(map(str, k.items()))}" for n, k in GOOD_CTOR])
def test_constructor_accepts_what_torch_accepts(name, kw):
    fast_cls, ref_cls = ALL[name]
    kw = {"input_size": 4, "hidden_size": 5, **kw}
    ref_exc, ref_warn = _outcome(lambda: ref_cls(**kw))
    fast_exc, fast_warn = _outcome(lambda: fast_cls(**kw))
    assert ref_exc is None and fast_exc is None, (ref_exc, fast_exc)
    fast, ref = fast_cls(**kw), ref_cls(**kw)
    assert repr(fast) == repr(ref)
    assert [(n, p.shape) for n, p in fast.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert [str(w.message) for w in fast_warn] == [str(w.message) for w in ref_warn]


@pytest.mark.parametrize("name", list(MODULES))
def test_dropout_with_one_layer_warns_like_torch(name):
    fast_cls, ref_cls = MODULES[name]
    _, ref_warn = _outcome(lambda: ref_cls(4, 5, dropout=0.5))
    _, fast_warn = _outcome(lambda: fast_cls(4, 5, dropout=0.5))
    assert len(ref_warn) == 1 and ref_warn[0].category is UserWarning
    assert [(w.category, str(w.message)) for w in fast_warn] == [(w.category, str(w.message)) for w in ref_warn]
    assert "non-zero dropout expects num_layers greater than 1" in str(fast_warn[0].message)


def _r(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, dtype=dtype, device=device)


def _hx(name, *shape, c=None, dtype=torch.float32, device="cpu"):
    h = _r(*shape, dtype=dtype, device=device)
    return (h, _r(*(c or shape), dtype=dtype)) if name.startswith("LSTM") else h


def _packed(*lengths, I=4, dtype=torch.float32, sort=True):
    from torch.nn.utils.rnn import pack_sequence
    return pack_sequence([_r(n, I, dtype=dtype) for n in lengths], enforce_sorted=sort)


F64 = torch.float64
# Forward arguments torch.nn refuses, for LSTM/GRU/RNN (4 -> 5, 2 layers): (call, fragment). fragment None:
# torch.nn's check, whose message fastrnn's contains; a string: torch.nn fails by accident of its
# implementation (AttributeError on a list, a matmul's dtype error), fastrnn raises the same class with a
# clear message containing the fragment. Several cases combine two errors to pin the order of the checks.
BAD_MODULE_CALLS = {
    "input_1d": (lambda n, m: m(_r(4)), None),
    "input_4d": (lambda n, m: m(_r(1, 3, 2, 4)), None),
    "input_size": (lambda n, m: m(_r(3, 2, 3)), None),
    "input_size_unbatched": (lambda n, m: m(_r(3, 3)), None),
    "input_size_batch_first": (lambda n, m: m(_r(2, 3, 3)), None),
    "input_f64": (lambda n, m: m(_r(3, 2, 4, dtype=F64)), None),
    "input_int": (lambda n, m: m(torch.ones(3, 2, 4, dtype=torch.long)), None),
    "input_f64_and_size": (lambda n, m: m(_r(3, 2, 3, dtype=F64)), None),  # dtype first
    "empty_sequence": (lambda n, m: m(_r(0, 2, 4)), None),
    "empty_sequence_unbatched": (lambda n, m: m(_r(0, 4)), None),
    "empty_sequence_f64_hx": (lambda n, m: m(_r(0, 2, 4), _hx(n, 2, 2, 5, dtype=F64)), None),  # length first
    "hx_2d_for_batched": (lambda n, m: m(_r(3, 2, 4), _hx(n, 2, 5)), None),
    "hx_3d_for_unbatched": (lambda n, m: m(_r(3, 4), _hx(n, 2, 1, 5)), None),
    "hx_batch": (lambda n, m: m(_r(3, 2, 4), _hx(n, 2, 3, 5)), None),
    "hx_layers": (lambda n, m: m(_r(3, 2, 4), _hx(n, 1, 2, 5)), None),
    "hx_features": (lambda n, m: m(_r(3, 2, 4), _hx(n, 2, 2, 6, c=(2, 2, 5))), None),
    "hx_features_unbatched": (lambda n, m: m(_r(3, 4), _hx(n, 2, 6, c=(2, 5))), None),
    "hx_batch_batch_first": (lambda n, m: m(_r(2, 3, 4), _hx(n, 2, 3, 5)), None),
    "input_f64_and_hx_batch": (lambda n, m: m(_r(3, 2, 4, dtype=F64), _hx(n, 2, 3, 5)), None),  # dtype first
    "input_size_and_hx_dims": (lambda n, m: m(_r(3, 2, 3), _hx(n, 2, 5)), None),  # hx rank first
    "hx_f64_and_batch": (lambda n, m: m(_r(3, 2, 4), _hx(n, 2, 3, 5, dtype=F64)), None),  # shape first
    "input_meta": (lambda n, m: m(_r(3, 2, 4, device="meta")), None),
    "hx_meta": (lambda n, m: m(_r(3, 2, 4), _hx(n, 2, 2, 5, device="meta")), None),
    "hx_meta_f64": (lambda n, m: m(_r(3, 2, 4), _hx(n, 2, 2, 5, device="meta", dtype=F64)), None),
    "hx_f64": (lambda n, m: m(_r(3, 2, 4), _hx(n, 2, 2, 5, dtype=F64)), "hidden state dtype (torch.float64)"),
    "hx_f64_unbatched": (lambda n, m: m(_r(3, 4), _hx(n, 2, 5, dtype=F64)), "does not match input dtype"),
    "input_list": (lambda n, m: m([[1.0] * 4]), "input must be a Tensor"),
    "packed_input_f64": (lambda n, m: m(_packed(3, 2, dtype=F64)), None),
    "packed_hx_batch": (lambda n, m: m(_packed(3, 2), _hx(n, 2, 3, 5)), None),
    "packed_hx_features": (lambda n, m: m(_packed(3, 2), _hx(n, 2, 2, 6, c=(2, 2, 5))), None),
    "packed_hx_2d": (lambda n, m: m(_packed(3, 2), _hx(n, 2, 5)), None),
    "packed_input_size": (lambda n, m: m(_packed(3, 2, I=3)), None),
    "packed_hx_f64": (lambda n, m: m(_packed(3, 2), _hx(n, 2, 2, 5, dtype=F64)), "does not match input dtype"),
}
LSTM_ONLY = {
    "c0_features": (lambda n, m: m(_r(3, 2, 4), _hx(n, 2, 2, 5, c=(2, 2, 6))), None),
    "c0_2d_for_batched": (lambda n, m: m(_r(3, 2, 4), (_r(2, 2, 5), _r(2, 5))), None),
    "hx_three_states": (lambda n, m: m(_r(3, 2, 4), (_r(2, 2, 5),) * 3), None),
    "hx_tensor": (lambda n, m: m(_r(3, 2, 4), _r(2, 2, 5)), "hx must be a tuple (h_0, c_0)"),
    "hx_one_state": (lambda n, m: m(_r(3, 2, 4), (_r(2, 2, 5),)), "hx must be a tuple (h_0, c_0)"),
    "c0_float": (lambda n, m: m(_r(3, 2, 4), (_r(2, 2, 5), 0.0)), "hx[1] must be a Tensor"),
    # torch.nn's LSTM runs none of its Python checks on packed input; its kernels fail instead
    "packed_lstm_input_f64": (lambda n, m: m(_packed(3, 2, dtype=F64)), "RNN input dtype (torch.float64)"),
    "packed_lstm_hx_batch": (lambda n, m: m(_packed(3, 2), _hx(n, 2, 3, 5)), "Expected hidden[0] size"),
    "packed_lstm_hx_features": (lambda n, m: m(_packed(3, 2), _hx(n, 2, 2, 6, c=(2, 2, 5))), "hidden[0] size"),
    "packed_lstm_input_size": (lambda n, m: m(_packed(3, 2, I=3)), "must be equal to input_size"),
    "proj_h0_features": (lambda n, m: m(_r(3, 2, 4), (_r(2, 2, 5), _r(2, 2, 5))), None),  # h0 wants proj_size
}
GRU_RNN_ONLY = {
    "hx_tuple": (lambda n, m: m(_r(3, 2, 4), (_r(2, 2, 5),)), "hx must be a Tensor"),
}
# The torch.nn LSTM cases above that torch.nn checks for GRU/RNN but not for a packed LSTM (see LSTM_ONLY)
NOT_FOR_LSTM = {"packed_input_f64", "packed_hx_batch", "packed_hx_features", "packed_hx_2d", "packed_input_size"}


def _module_cases():
    for name in MODULES:
        table = dict(BAD_MODULE_CALLS)
        table.update(LSTM_ONLY if name == "LSTM" else GRU_RNN_ONLY)
        for case, (call, fragment) in table.items():
            if name == "LSTM" and case in NOT_FOR_LSTM:
                continue
            kw = dict(num_layers=2)
            if case == "proj_h0_features":
                kw["proj_size"] = 3
            if "batch_first" in case:
                kw["batch_first"] = True
            yield pytest.param(name, kw, call, fragment, id=f"{name}-{case}")


@pytest.mark.parametrize("name,kw,call,fragment", list(_module_cases()))
def test_bad_module_call_raises_like_torch(name, kw, call, fragment):
    fast_cls, ref_cls = MODULES[name]
    fast, ref = fast_cls(4, 5, **kw), ref_cls(4, 5, **kw)
    assert_like_torch(lambda: call(name, ref), lambda: call(name, fast), fragment)


BAD_CELL_CALLS = {
    "input_3d": (lambda n, m: m(_r(2, 3, 4)), None),
    "input_0d": (lambda n, m: m(torch.tensor(1.0)), None),
    "hx_3d": (lambda n, m: m(_r(2, 4), _hx(n, 1, 2, 5)), None),
    "hx_0d": (lambda n, m: m(_r(2, 4), _hx(n)), None),
    "input_size": (lambda n, m: m(_r(2, 3)), None),
    "input_size_unbatched": (lambda n, m: m(_r(3)), None),
    "hx_batch": (lambda n, m: m(_r(2, 4), _hx(n, 3, 5)), None),
    "hx_features": (lambda n, m: m(_r(2, 4), _hx(n, 2, 6, c=(2, 5))), None),
    "hx_features_unbatched": (lambda n, m: m(_r(4), _hx(n, 6, c=(5,))), None),
    "hx_batched_for_unbatched": (lambda n, m: m(_r(4), _hx(n, 2, 5)), None),
    "hx_unbatched_for_batched": (lambda n, m: m(_r(2, 4), _hx(n, 5)), None),
    "hx_1d_same_batch": (lambda n, m: m(_r(5, 4), _hx(n, 5)), None),  # torch.nn: IndexError on hx.size(1)
    # shapes before dtypes
    "input_f64_and_size": (lambda n, m: m(_r(2, 3, dtype=F64)), None),
    "input_f64_and_hx_batch": (lambda n, m: m(_r(2, 4, dtype=F64), _hx(n, 3, 5)), None),
    "hx_f64_and_batch": (lambda n, m: m(_r(2, 4), _hx(n, 3, 5, dtype=F64)), None),
    "input_f64": (lambda n, m: m(_r(2, 4, dtype=F64)), "input dtype (torch.float64) does not match weight dtype"),
    "input_int": (lambda n, m: m(torch.ones(2, 4, dtype=torch.long)), "input dtype (torch.int64)"),
    "hx_f64": (lambda n, m: m(_r(2, 4), _hx(n, 2, 5, dtype=F64)), "hidden state dtype (torch.float64)"),
    "input_meta": (lambda n, m: m(_r(2, 4, device="meta")), "not at the same device"),
    "input_list": (lambda n, m: m([[1.0] * 4]), "input must be a Tensor"),
}
LSTMCELL_ONLY = {
    "c0_features": (lambda n, m: m(_r(2, 4), _hx(n, 2, 5, c=(2, 6))), None),
    "c0_batch": (lambda n, m: m(_r(2, 4), _hx(n, 2, 5, c=(3, 5))), None),
    "c0_3d": (lambda n, m: m(_r(2, 4), (_r(2, 5), _r(1, 2, 5))), None),
    "hx_one_state": (lambda n, m: m(_r(2, 4), (_r(2, 5),)), None),
    "hx_three_states": (lambda n, m: m(_r(2, 4), (_r(2, 5),) * 3), None),
    "hx_three_states_bad_rank": (lambda n, m: m(_r(2, 4), (_r(2, 5), _r(2, 5), _r(1, 1, 2, 5))), None),
    "hx_tensor": (lambda n, m: m(_r(2, 4), _r(2, 5)), "hx must be a tuple (h_0, c_0)"),
    "c0_float": (lambda n, m: m(_r(2, 4), (_r(2, 5), 1.0)), "hx[1] must be a Tensor"),
}
GRU_RNN_CELL_ONLY = {
    "hx_tuple": (lambda n, m: m(_r(2, 4), (_r(2, 5),)), "hx must be a Tensor"),
}


def _cell_cases():
    for name in CELLS:
        table = dict(BAD_CELL_CALLS)
        table.update(LSTMCELL_ONLY if name == "LSTMCell" else GRU_RNN_CELL_ONLY)
        for case, (call, fragment) in table.items():
            yield pytest.param(name, {}, call, fragment, id=f"{name}-{case}")
    for case, call in {"unknown_nonlinearity": lambda n, m: m(_r(2, 4)),
                       "unknown_nonlinearity_after_rank": lambda n, m: m(_r(1, 2, 4)),
                       "unknown_nonlinearity_before_size": lambda n, m: m(_r(2, 3))}.items():
        yield pytest.param("RNNCell", {"nonlinearity": "gelu"}, call, None, id=f"RNNCell-{case}")


@pytest.mark.parametrize("name,kw,call,fragment", list(_cell_cases()))
def test_bad_cell_call_raises_like_torch(name, kw, call, fragment):
    fast_cls, ref_cls = CELLS[name]
    fast, ref = fast_cls(4, 5, **kw), ref_cls(4, 5, **kw)
    assert_like_torch(lambda: call(name, ref), lambda: call(name, fast), fragment)


@pytest.mark.parametrize("name", list(ALL))
def test_autocast_skips_the_dtype_checks_like_torch(name):
    """Inside torch.autocast torch.nn skips its input-vs-weight dtype check (its kernels cast); so does
    fastrnn: a bfloat16 input, and a float32 input with a float32 state, run on float32 parameters."""
    fast, ref = _pair(name)
    cell = name in CELLS
    x = _r(*((2, 4) if cell else (3, 2, 4)), dtype=torch.bfloat16)
    hx = _hx(name, *((2, 5) if cell else (MODULE_KW[name].get("num_layers", 1) * (
        2 if MODULE_KW[name].get("bidirectional") else 1), 2, MODULE_KW[name].get("proj_size") or 5)),
        c=None if cell or name != "LSTM" else (4, 2, 5))
    for args in [(x,), (x.float(), hx)]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expect = _flat(ref(*args))
            got = _flat(fast(*args))
        assert [t.shape for t in got] == [t.shape for t in expect]
    with pytest.raises(DtypeMismatchError):
        fast(x)  # outside autocast the check is back


@pytest.mark.parametrize("name,I,H", [(n, i, h) for n in CELLS for i, h in [(4, 0), (0, 5)]])
def test_cells_with_zero_sizes_are_not_refused(name, I, H):
    """torch.nn's cells take hidden_size 0 and input_size 0 (returning (B, 0) / ignoring the input); the
    Python side of fastrnn's cells refuses neither (the constructor is torch.nn's; no check of the forward
    fires). Whether the ops compute it is issue 7 item 8 (zero sizes in the C++ ops)."""
    fast, ref = _pair(name, I=I, H=H)
    x = _r(3, I)
    expect = _flat(ref(x))
    try:
        got = _flat(fast(x))
    except (ValueError, RuntimeError) as e:
        # Only the ops may still refuse (item 8): not one of the module's own checks.
        assert "fastrnn::" in str(e) or "reshape" in str(e), f"a module check refused a zero size: {e}"
        pytest.xfail(f"zero sizes in the ops (issue 7 item 8): {e}")
    for a, b in zip(got, expect):
        torch.testing.assert_close(a, b)


def test_rnncell_nonlinearity_is_read_when_called():
    """torch.nn.RNNCell reads its nonlinearity at every call (and only then refuses an unknown one)."""
    fast, ref = _pair("RNNCell")
    x = _r(6, 4) * 3
    outs = {}
    for nl in ["relu", "tanh", "relu"]:
        fast.nonlinearity = ref.nonlinearity = nl
        outs[nl] = fast(x)
        torch.testing.assert_close(outs[nl], ref(x))
    assert (outs["relu"] >= 0).all() and (outs["tanh"] < 0).any()


# Where fastrnn deliberately differs from torch.nn: each case asserts both behaviours, so that a change on
# either side shows up here.
def test_documented_divergences():
    # 1. A packed LSTM with a 2-D hx: torch.nn's LSTM runs no Python check for packed input and its kernel
    #    raises IndexError; fastrnn runs torch.nn's GRU/RNN check (RuntimeError "Expected hidden[0] size").
    ref_exc, _ = _outcome(lambda: nn.LSTM(4, 5)(_packed(3, 2), (_r(1, 5), _r(1, 5))))
    fast_exc, _ = _outcome(lambda: fastrnn.LSTM(4, 5)(_packed(3, 2), (_r(1, 5), _r(1, 5))))
    assert type(ref_exc) is IndexError
    assert isinstance(fast_exc, RuntimeError) and "Expected hidden[0] size (1, 2, 5), got [1, 5]" in str(fast_exc)
    # 2. An unbatched LSTMCell call with three states: torch.nn silently drops the third; fastrnn refuses.
    assert _outcome(lambda: nn.LSTMCell(4, 5)(_r(4), (_r(5),) * 3))[0] is None
    with pytest.raises(RuntimeError, match="lstm_cell expects two hidden states"):
        fastrnn.LSTMCell(4, 5)(_r(4), (_r(5),) * 3)
    # 3. An LSTMCell c_0 of another dtype: torch.nn's CPU kernel promotes (c_1 comes out in float64);
    #    fastrnn refuses, as it does every state dtype that differs from the input's.
    h, c = nn.LSTMCell(4, 5)(_r(2, 4), (_r(2, 5), _r(2, 5, dtype=F64)))
    assert c.dtype == F64
    with pytest.raises(DtypeMismatchError, match="hidden state dtype"):
        fastrnn.LSTMCell(4, 5)(_r(2, 4), (_r(2, 5), _r(2, 5, dtype=F64)))
    # 4. A non-tensor input or state: torch.nn raises AttributeError ('list' object has no attribute 'dim');
    #    fastrnn's InputTypeError is an AttributeError and a TypeError.
    assert issubclass(InputTypeError, TypeError) and issubclass(InputTypeError, AttributeError)
    assert issubclass(HiddenStateError, (TypeError, RuntimeError, IndexError))
    assert issubclass(DtypeMismatchError, ValueError) and issubclass(DtypeMismatchError, RuntimeError)


# ------------------------------------------------------------------------ torch.jit.script / torch.export
class _Call(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor):
        return self.inner(x)


@pytest.mark.parametrize("name", list(ALL))
def test_jit_script_raises_a_clear_error_naming_the_alternatives(name):
    """fastrnn's forward is Python around custom ops (checks, autograd, autocast): TorchScript cannot compile
    it. torch.jit.script raises one clear error, for the module itself and inside a model, and the
    alternatives it names work (torch.export below, torch.compile above, torch.jit.trace in test_compile.py),
    as does its last suggestion: scripting torch.nn's module loaded with fastrnn's state_dict."""
    fast, ref = _pair(name)
    for target in (fast, nn.Sequential(nn.Identity(), fast)):
        with pytest.raises(RuntimeError) as info:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
                torch.jit.script(target)
        msg = str(info.value)
        assert f"fastrnn.{name} cannot be compiled by torch.jit.script" in msg
        for alternative in ("torch.compile", "torch.export.export", "torch.jit.trace", f"torch.nn.{name}"):
            assert alternative in msg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(_Call(ref))  # (torch.nn.LSTM/GRU/RNN script inside a model only)
    x = _r(*((2, 4) if name in CELLS else (3, 2, 4)))
    for a, b in zip(_flat(scripted(x)), _flat(fast(x))):
        torch.testing.assert_close(a, b)


def test_jit_script_error_names_a_subclass_by_its_fastrnn_base():
    class Encoder(fastrnn.GRU):
        pass

    with pytest.raises(RuntimeError, match=r"fastrnn\.GRU cannot be compiled .* script a torch\.nn\.GRU"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(Encoder(4, 5))


EXPORT_CASES = {
    "LSTM": dict(num_layers=2, bidirectional=True, proj_size=3, batch_first=True),
    "GRU": dict(num_layers=2, bias=False),
    "RNN": dict(nonlinearity="relu", bidirectional=True),
    "LSTMCell": {}, "GRUCell": {}, "RNNCell": dict(nonlinearity="relu"),
}


class _WithState(nn.Module):
    """Calls the wrapped module with an explicit hidden state (torch.export takes tensors, not tuples)."""

    def __init__(self, inner, lstm):
        super().__init__()
        self.inner, self.lstm = inner, lstm

    def forward(self, x, h, c):
        return self.inner(x, (h, c) if self.lstm else h)


@pytest.mark.parametrize("name", list(EXPORT_CASES))
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "given_state"])
def test_torch_export_matches_eager(name, with_state):
    """torch.export.export of every module and cell, with dynamic batch (and length) dimensions: the
    exported program holds fastrnn's ops and gives eager's numbers at the traced shape and at another one."""
    from torch.export import Dim
    fast, _ = _pair(name, **EXPORT_CASES[name])
    cell = name in CELLS
    lstm = name.startswith("LSTM")
    batch, length = Dim("batch", min=2, max=32), Dim("length", min=2, max=32)
    bf = EXPORT_CASES[name].get("batch_first", False)

    def inputs(B, T):
        x = _r(B, 4) if cell else (_r(B, T, 4) if bf else _r(T, B, 4))
        if not with_state:
            return (x,)
        if cell:
            return x, _r(B, 5), _r(B, 5)
        layers = fast.num_layers * (2 if fast.bidirectional else 1)
        return x, _r(layers, B, fast.proj_size or 5), _r(layers, B, 5)

    x_dims = {0: batch} if cell else ({0: batch, 1: length} if bf else {0: length, 1: batch})
    state_dims = {0: batch} if cell else {1: batch}
    if with_state:
        model, dyn = _WithState(fast, lstm), (x_dims, state_dims, state_dims)
    else:
        model, dyn = fast, (x_dims,)
    ep = torch.export.export(model, inputs(3, 5), dynamic_shapes=dyn)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("fastrnn.") for t in targets), targets
    for B, T in [(3, 5), (6, 2)]:
        args = inputs(B, T)
        got, expect = _flat(ep.module()(*args)), _flat(model(*args))
        assert len(got) == len(expect)
        for a, b in zip(got, expect):
            torch.testing.assert_close(a, b)
