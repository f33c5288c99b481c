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
