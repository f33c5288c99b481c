"""torch.autocast: fastrnn's modules and cells return what torch.nn's return inside an autocast region (the
same output dtypes, compared with the live torch.nn), with values and gradients within the autocast dtype's
rounding of torch.nn's, forward and backward; the raw ops cast like torch.nn's recurrent kernels and never
read a tensor of one dtype as another."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import ops
from common import MODES, assert_close_scaled, devices, make_pair

CELLS = {"LSTM": (fastrnn.LSTMCell, nn.LSTMCell, {}), "GRU": (fastrnn.GRUCell, nn.GRUCell, {}),
         "RNN_TANH": (fastrnn.RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
         "RNN_RELU": (fastrnn.RNNCell, nn.RNNCell, {"nonlinearity": "relu"})}
# The autocast dtype of each device type (CPU autocast defaults to bfloat16, CUDA to float16).
AUTOCAST = {"cpu": torch.bfloat16, "cuda": torch.float16}
VARIANTS = [("plain", {}, False), ("proj", {"proj_size": 3}, False), ("bidir2", {"num_layers": 2,
                                                                               "bidirectional": True}, False),
            ("packed", {}, True), ("proj_packed", {"proj_size": 3}, True)]


def tensors(out):
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def run(module, inp, device):
    """Forward and backward inside an autocast region: (outputs, grads of input and parameters)."""
    x = inp.data if hasattr(inp, "batch_sizes") else inp
    with torch.autocast(device, dtype=AUTOCAST[device]):
        try:
            outs = tensors(module(inp))
        except RuntimeError as e:
            if device != "cpu" or "primitive descriptor" not in str(e) or type(module).__module__ != nn.LSTM.__module__:
                raise
            outs = tensors(_cast_like_cpu_autocast(module, inp))
        loss = sum((o.float() * (i + 1) / o.numel()).sum() for i, o in enumerate(outs))
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return outs, grads


def _cast_like_cpu_autocast(module, inp):
    """torch.nn's recurrent module as CPU autocast runs it (input and weights cast to bfloat16, the bfloat16
    kernel), for processors where oneDNN has no bfloat16 RNN primitive (AVX2 without AVX-512: inside autocast
    torch.nn raises 'could not create a primitive descriptor'); outside oneDNN, torch.nn's own bfloat16 kernel."""
    bf = torch.bfloat16
    with torch.autocast("cpu", enabled=False), torch.backends.mkldnn.flags(enabled=False):
        params = {k: v.to(bf) for k, v in module.named_parameters()}
        arg = inp._replace(data=inp.data.to(bf)) if hasattr(inp, "batch_sizes") else inp.to(bf)
        return torch.func.functional_call(module, params, (arg,))


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device", devices)
def test_modules_under_autocast_match_torch_nn(device, mode, variant):
    name, kw, packed = variant
    if "proj_size" in kw and mode != "LSTM":
        pytest.skip("proj_size is LSTM-only")
    torch.manual_seed(0)
    fast, ref = make_pair(mode, 6, 8, device=device, **kw)
    x = torch.randn(7, 4, 6, device=device)

    def inp():
        xi = x.clone().requires_grad_()
        return pack_padded_sequence(xi, torch.tensor([7, 5, 5, 2]), enforce_sorted=False) if packed else xi

    got, got_g = run(fast, inp(), device)
    want, want_g = run(ref, inp(), device)
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for a, b in zip(got, want):
        assert_close_scaled(a.float(), b.float(), AUTOCAST[device], f"{mode} {name} output")
    for a, b in zip(got_g, want_g):
        assert a.dtype == b.dtype
        assert_close_scaled(a, b, AUTOCAST[device], f"{mode} {name} grad")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device", devices)
def test_cells_under_autocast_match_torch_nn(device, mode):
    fast_cls, ref_cls, kw = CELLS[mode]
    torch.manual_seed(0)
    fast = fast_cls(6, 8, **kw).to(device)
    ref = ref_cls(6, 8, **kw).to(device)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(4, 6, device=device)
    got, got_g = run(fast, x.clone().requires_grad_(), device)
    want, want_g = run(ref, x.clone().requires_grad_(), device)
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for a, b in zip(got + list(got_g), want + list(want_g)):
        assert_close_scaled(a.float(), b.float(), AUTOCAST[device], f"{mode} cell")


@pytest.mark.parametrize("device", devices)
def test_input_in_autocast_dtype_with_float32_weights(device):
    """Inside autocast torch.nn accepts an input already in the autocast dtype with float32 weights."""
    torch.manual_seed(0)
    fast, ref = make_pair("LSTM", 6, 8, device=device)
    x = torch.randn(5, 2, 6, device=device, dtype=AUTOCAST[device])
    with torch.autocast(device, dtype=AUTOCAST[device]):
        got, want = tensors(fast(x)), tensors(ref(x))
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for a, b in zip(got, want):
        assert_close_scaled(a.float(), b.float(), AUTOCAST[device], "autocast-dtype input")


def test_float64_module_is_not_cast():
    """Autocast leaves float64 alone, as it does for torch.nn."""
    fast, ref = make_pair("GRU", 6, 8, dtype=torch.float64)
    x = torch.randn(5, 2, 6, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = fast(x), ref(x)
    assert got[0].dtype == want[0].dtype == torch.float64
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", devices)
def test_raw_op_under_autocast_casts_its_inputs(device):
    """The forward op casts float32 arguments to the autocast dtype (as torch.nn's kernels do) and its result
    equals the op run outside autocast on the cast arguments."""
    g = torch.Generator().manual_seed(0)
    x, h, c = (torch.randn(s, generator=g).to(device) for s in ((4, 3, 5), (3, 6), (3, 6)))
    w_ih, w_hh, b = (torch.randn(s, generator=g).to(device) for s in ((24, 5), (24, 6), (24,)))
    args = (x, None, h, c, w_ih, w_hh, b, b, None, False, True)
    with torch.autocast(device, dtype=AUTOCAST[device]):
        got = ops.lstm_forward(*args)
    cast = tuple(a.to(AUTOCAST[device]) if isinstance(a, torch.Tensor) else a for a in args)
    want = ops.lstm_forward(*cast)
    for a, b in zip(got[:3], want[:3]):
        assert a.dtype == AUTOCAST[device]
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("make", [lambda: (fastrnn.LSTM(3, 4), nn.LSTM(3, 4), (5, 2, 3)),
                                  lambda: (fastrnn.GRUCell(3, 4), nn.GRUCell(3, 4), (2, 3))], ids=["LSTM", "GRUCell"])
def test_float64_input_into_float32_module_raises_like_torch_nn(make):
    """float64 is not cast, the float32 weights are: torch.nn fails in its matmul with RuntimeError; fastrnn
    raises RuntimeError too, saying why."""
    fast, ref, shape = make()
    x = torch.randn(shape, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError):
            ref(x)
        with pytest.raises(RuntimeError, match="leaves float64"):
            fast(x)
