"""Parameters and state dicts: names, shapes and order identical to torch.nn; strict round trips both
ways; torch.nn's default initialisation; flatten_parameters(); dtype conversion."""
import math

import pytest
import torch
from torch import nn

import fastrnn
from common import assert_close, module_classes

CONFIGS = [
    dict(),
    dict(num_layers=3),
    dict(bidirectional=True),
    dict(num_layers=2, bidirectional=True, bias=False),
    dict(num_layers=2, bidirectional=True, batch_first=True, dropout=0.25),
]
LSTM_CONFIGS = [dict(proj_size=3), dict(proj_size=2, num_layers=2, bidirectional=True),
                dict(proj_size=4, num_layers=3, bias=False)]
MODULE_CASES = [(m, c) for m in ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"] for c in CONFIGS] + [
    ("LSTM", c) for c in LSTM_CONFIGS]
CASE_IDS = [f"{m}-{'_'.join(f'{k}{v}' for k, v in c.items()) or 'default'}" for m, c in MODULE_CASES]

CELLS = [(fastrnn.LSTMCell, nn.LSTMCell, {}), (fastrnn.GRUCell, nn.GRUCell, {}),
         (fastrnn.RNNCell, nn.RNNCell, {"nonlinearity": "relu"})]


def build(mode, cfg, I=6, H=7):
    fast_cls, ref_cls, extra = module_classes(mode)
    return fast_cls(I, H, **extra, **cfg), ref_cls(I, H, **extra, **cfg)


@pytest.mark.parametrize("mode,cfg", MODULE_CASES, ids=CASE_IDS)
def test_parameters_identical_to_torch_nn(mode, cfg):
    fast, ref = build(mode, cfg)
    f_params = [(n, tuple(p.shape)) for n, p in fast.named_parameters()]
    r_params = [(n, tuple(p.shape)) for n, p in ref.named_parameters()]
    assert f_params == r_params
    assert list(fast.state_dict()) == list(ref.state_dict())
    assert fast._flat_weights_names == ref._flat_weights_names
    assert [[tuple(p.shape) for p in ws] for ws in fast.all_weights] == \
        [[tuple(p.shape) for p in ws] for ws in ref.all_weights]
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                 "proj_size", "mode"):
        assert getattr(fast, attr) == getattr(ref, attr), attr
    assert getattr(fast, "nonlinearity", None) == getattr(ref, "nonlinearity", None)
    assert repr(fast) == repr(ref)  # torch.nn.RNN's repr omits the nonlinearity, and so does fastrnn's


@pytest.mark.parametrize("mode,cfg", MODULE_CASES, ids=CASE_IDS)
def test_state_dict_round_trip(mode, cfg):
    fast, ref = build(mode, cfg)
    # torch.nn -> fastrnn
    fast.load_state_dict(ref.state_dict(), strict=True)
    for (n, a), (_, b) in zip(fast.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), n
    # fastrnn -> torch.nn, after changing fastrnn's weights
    with torch.no_grad():
        for p in fast.parameters():
            p.uniform_(-1, 1)
    ref.load_state_dict(fast.state_dict(), strict=True)
    for (n, a), (_, b) in zip(fast.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), n
    # and the loaded modules compute the same
    fast.eval(), ref.eval()
    x = torch.randn(4, 2, 6) if not cfg.get("batch_first") else torch.randn(2, 4, 6)
    assert_close(fast(x)[0], ref(x)[0], torch.float32, "output after load")


def test_strict_load_rejects_mismatch():
    fast = fastrnn.LSTM(6, 7, num_layers=2)
    with pytest.raises(RuntimeError, match="Missing key"):
        fast.load_state_dict(nn.LSTM(6, 7, num_layers=1).state_dict(), strict=True)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fastrnn.LSTM(6, 7).load_state_dict(nn.LSTM(6, 7, proj_size=3).state_dict(), strict=True)
    with pytest.raises(RuntimeError, match="size mismatch"):
        fast.load_state_dict(nn.LSTM(6, 8, num_layers=2).state_dict(), strict=True)


@pytest.mark.parametrize("fast_cls,ref_cls,kw", CELLS, ids=lambda c: getattr(c, "__name__", ""))
@pytest.mark.parametrize("bias", [True, False])
def test_cell_state_dict(fast_cls, ref_cls, kw, bias):
    fast, ref = fast_cls(6, 7, bias=bias, **kw), ref_cls(6, 7, bias=bias, **kw)
    assert [(n, p.shape) for n, p in fast.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert list(fast.state_dict()) == list(ref.state_dict())
    fast.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(fast.state_dict(), strict=True)
    assert (fast.bias_ih is None) == (ref.bias_ih is None) == (not bias)
    assert repr(fast).split("(", 1)[1] == repr(ref).split("(", 1)[1]


@pytest.mark.parametrize("mode,cfg", [MODULE_CASES[i] for i in (0, 8, 13, len(MODULE_CASES) - 2)],
                         ids=[CASE_IDS[i] for i in (0, 8, 13, len(MODULE_CASES) - 2)])
def test_default_init_distribution(mode, cfg):
    """torch.nn's init: every parameter U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
    H = 25
    fast, _ = build(mode, cfg, I=30, H=H)
    bound = 1 / math.sqrt(H)
    allp = torch.cat([p.detach().flatten() for p in fast.parameters()])
    for n, p in fast.named_parameters():
        assert p.abs().max() <= bound, n
    # a uniform sample over the whole interval: reaches both ends, mean ~0, variance bound^2 / 3
    assert allp.min() < -0.95 * bound and allp.max() > 0.95 * bound
    assert abs(allp.mean().item()) < 0.05 * bound
    assert abs(allp.var().item() - bound ** 2 / 3) < 0.1 * bound ** 2 / 3
    # reset_parameters re-draws
    before = [p.clone() for p in fast.parameters()]
    fast.reset_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(before, fast.parameters()))


@pytest.mark.parametrize("fast_cls,ref_cls,kw", CELLS, ids=lambda c: getattr(c, "__name__", ""))
def test_cell_default_init(fast_cls, ref_cls, kw):
    cell = fast_cls(30, 25, **kw)
    bound = 1 / math.sqrt(25)
    allp = torch.cat([p.detach().flatten() for p in cell.parameters()])
    assert allp.abs().max() <= bound and allp.min() < -0.95 * bound and allp.max() > 0.95 * bound


def test_flatten_parameters_is_harmless():
    fast, ref = build("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3))
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(5, 2, 6)
    before = fast(x)[0]
    params_before = [p.data_ptr() for p in fast.parameters()]
    assert fast.flatten_parameters() is None
    assert [p.data_ptr() for p in fast.parameters()] == params_before
    assert torch.equal(fast(x)[0], before)
    assert_close(before, ref(x)[0], torch.float32, "after flatten_parameters")


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_dtype_conversion(mode):
    fast, ref = build(mode, dict(num_layers=2, bidirectional=True))
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    fast_d = fast.double()
    assert all(p.dtype == torch.float64 for p in fast_d.parameters())
    out, _ = fast_d(x)
    assert out.dtype == torch.float64
    assert_close(out, ref.double()(x)[0], torch.float64, ".double()")
    fast_b = fast.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in fast_b.parameters())
    out_b, h_b = fast_b(x.bfloat16())
    assert out_b.dtype == torch.bfloat16 and (h_b[0] if mode == "LSTM" else h_b).dtype == torch.bfloat16
    fast_f = fast.to(dtype=torch.float32)  # back from bfloat16: the weights stay rounded to bfloat16
    ref = ref.float()
    ref.load_state_dict(fast_f.state_dict())
    assert fast_f(x.float())[0].dtype == torch.float32
    assert_close(fast_f(x.float())[0], ref(x.float())[0], torch.float32, ".to(float32)")


def test_cell_dtype_conversion():
    cell = fastrnn.GRUCell(6, 7).double()
    ref = nn.GRUCell(6, 7).double()
    ref.load_state_dict(cell.state_dict())
    x = torch.randn(3, 6, dtype=torch.float64)
    assert_close(cell(x), ref(x), torch.float64, "cell .double()")


def test_constructor_dtype_device_kwargs():
    m = fastrnn.LSTM(6, 7, proj_size=3, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in m.parameters())
    c = fastrnn.LSTMCell(6, 7, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in c.parameters())
