"""ONNX export (fastrnn/onnx.py): every module and cell exported with both of torch.onnx's exporters (the
TorchScript one, dynamo=False, and the dynamo one, torch's default) and run in onnxruntime, against torch.nn
eager on the same weights; torch.nn's own export of the same module is run alongside as the oracle's check.
Packed input exports with the TorchScript exporter, as torch.nn's does. What torch.nn cannot export
(LSTM proj_size; packed input with dynamo) is shown to fail for torch.nn too, and fastrnn's error is clear.

onnx, onnxscript and onnxruntime are optional dependencies (scripts/setup_env.sh installs them for CI).
The dynamo exporter takes about a second per export, so its grid combines the options in fewer cases."""
import io
import logging
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import fastrnn  # noqa: E402
import fastrnn.onnx  # noqa: E402
from common import MODES, assert_close, make_pair  # noqa: E402

DT = torch.float32  # onnxruntime's RNN kernels: float32 (compared with TOL[float32])
T, B, I, H = 5, 3, 4, 6

# name -> (module kwargs, pass h0/c0, unbatched input)
CASES = {
    "1layer": ({}, False, False),
    "2layer": ({"num_layers": 2}, False, False),
    "bidir": ({"bidirectional": True}, False, False),
    "batch_first": ({"batch_first": True}, False, False),
    "hx": ({}, True, False),
    "nobias": ({"bias": False}, False, False),
    "unbatched_bidir_hx": ({"bidirectional": True}, True, True),
    "2layer_bidir_batchfirst_nobias_hx": (
        {"num_layers": 2, "bidirectional": True, "batch_first": True, "bias": False}, True, False),
}
# Every option in at least one case, for the slower dynamo exporter.
DYNAMO_CASES = ["1layer", "2layer_bidir_batchfirst_nobias_hx", "unbatched_bidir_hx"]


@pytest.fixture(autouse=True)
def _quiet():
    """The exporters warn and log at length (TracerWarnings, the RNN batch-size advice, progress lines)."""
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def _export(model, args, dynamo: bool, **kw) -> bytes:
    model.eval()
    if dynamo:
        return torch.onnx.export(model, args, dynamo=True, verbose=False, **kw).model_proto.SerializeToString()
    f = io.BytesIO()
    torch.onnx.export(model, args, f, dynamo=False, **kw)
    return f.getvalue()


def _flat(obj):
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _flat(o)]
    return [obj]


def _run_ort(model_bytes: bytes, args):
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    feeds = [t.detach().numpy() for t in _flat(args)]
    names = [i.name for i in sess.get_inputs()]
    assert len(names) == len(feeds), f"the model takes {names}, given {len(feeds)} inputs"
    return [torch.from_numpy(o) for o in sess.run(None, dict(zip(names, feeds)))]


def _op_types(model_bytes: bytes):
    import onnx
    m = onnx.load_from_string(model_bytes)
    assert not m.functions and all(n.domain in ("", "ai.onnx") for n in m.graph.node), \
        "the exported graph must hold standard ONNX operators only"
    return {n.op_type for n in m.graph.node}


def _onnx_op(mode: str) -> str:
    return "RNN" if mode.startswith("RNN") else mode


def _inputs(mode, kw, hx, unbatched):
    g = torch.Generator().manual_seed(0)
    dirs = 2 if kw.get("bidirectional") else 1
    layers = kw.get("num_layers", 1)
    x = torch.randn((T, I) if unbatched else (B, T, I) if kw.get("batch_first") else (T, B, I), generator=g)
    hshape = (layers * dirs, H) if unbatched else (layers * dirs, B, H)
    if not hx:
        return (x,)
    h0 = torch.randn(hshape, generator=g)
    return (x, (h0, torch.randn(hshape, generator=g)) if mode == "LSTM" else h0)


def _check_module(mode, fast, ref, args, dynamo):
    with torch.no_grad():
        expected = _flat(ref(*args))
    fast_bytes = _export(fast, args, dynamo)
    assert _onnx_op(mode) in _op_types(fast_bytes)
    for name, got in (("fastrnn", _run_ort(fast_bytes, args)), ("torch.nn", _run_ort(_export(ref, args, dynamo), args))):
        assert len(got) == len(expected), f"{name}: {len(got)} outputs, expected {len(expected)}"
        for i, (a, e) in enumerate(zip(got, expected)):
            assert_close(a, e, DT, f"{name} exported, onnxruntime output {i}")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", MODES)
def test_module_torchscript_exporter(mode, case):
    kw, hx, unbatched = CASES[case]
    fast, ref = make_pair(mode, I, H, DT, **kw)
    _check_module(mode, fast, ref, _inputs(mode, kw, hx, unbatched), dynamo=False)


@pytest.mark.parametrize("case", DYNAMO_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_module_dynamo_exporter(mode, case):
    kw, hx, unbatched = CASES[case]
    fast, ref = make_pair(mode, I, H, DT, **kw)
    _check_module(mode, fast, ref, _inputs(mode, kw, hx, unbatched), dynamo=True)


@pytest.mark.parametrize("opset", [9, 11, 13])
def test_torchscript_exporter_older_opsets(opset):
    """Slice/Squeeze/Unsqueeze changed form at opsets 10 and 13; the symbolics serve opset 9 onwards."""
    for mode in MODES:
        kw, hx, unbatched = CASES["2layer_bidir_batchfirst_nobias_hx"]
        fast, ref = make_pair(mode, I, H, DT, **{**kw, "bias": True})
        args = _inputs(mode, kw, hx, unbatched)
        with torch.no_grad():
            expected = _flat(ref(*args))
        for a, e in zip(_run_ort(_export(fast, args, False, opset_version=opset), args), expected):
            assert_close(a, e, DT, f"{mode} opset {opset}")


CELLS = {"LSTM": (fastrnn.LSTMCell, nn.LSTMCell, {}), "GRU": (fastrnn.GRUCell, nn.GRUCell, {}),
         "RNN_TANH": (fastrnn.RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
         "RNN_RELU": (fastrnn.RNNCell, nn.RNNCell, {"nonlinearity": "relu"})}


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("mode", MODES)
def test_cell(mode, dynamo):
    fast_cls, ref_cls, extra = CELLS[mode]
    fast = fast_cls(I, H, **extra)
    ref = ref_cls(I, H, **extra)
    ref.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(0)
    h = torch.randn(B, H, generator=g)
    args = (torch.randn(B, I, generator=g), (h, torch.randn(B, H, generator=g)) if mode == "LSTM" else h)
    _check_module(mode, fast, ref, args, dynamo)


class Packed(nn.Module):
    """A padded batch in, packed (unsorted lengths) through the RNN, padded out: the pattern the
    TorchScript exporter turns into ONNX's sequence_lens."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=self.rnn.batch_first, enforce_sorted=False)
        y, h = self.rnn(packed)
        y, _ = pad_packed_sequence(y, batch_first=self.rnn.batch_first)
        return y, h


PACKED_CASES = {"1layer": {}, "2layer_bidir": {"num_layers": 2, "bidirectional": True},
                "batch_first_nobias": {"batch_first": True, "bias": False}}


@pytest.mark.parametrize("case", list(PACKED_CASES))
@pytest.mark.parametrize("mode", MODES)
def test_packed_torchscript_exporter(mode, case):
    kw = PACKED_CASES[case]
    fast, ref = make_pair(mode, I, H, DT, **kw)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((B, T, I) if kw.get("batch_first") else (T, B, I), generator=g)
    lengths = torch.tensor([3, T, 1])
    _check_module(mode, Packed(fast), Packed(ref), (x, lengths), dynamo=False)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_packed_dynamo_exporter_fails_for_torch_nn_too(mode):
    """torch.export cannot trace pack_padded_sequence for torch.nn either (a data-dependent shape)."""
    fast, ref = make_pair(mode, I, H, DT)
    args = (torch.randn(T, B, I), torch.tensor([3, T, 1]))
    for model in (Packed(ref), Packed(fast)):
        with pytest.raises(Exception):
            _export(model, args, dynamo=True)


class RawPackedGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.w_ih, self.w_hh = nn.Parameter(torch.randn(3 * H, I)), nn.Parameter(torch.randn(3 * H, H))

    def forward(self, data, batch_sizes, h0):
        return torch.ops.fastrnn.gru_forward(data, batch_sizes, h0, self.w_ih, self.w_hh, None, None, False, False)[:2]


def test_packed_op_dynamo_exporter_clear_error():
    """An op given batch_sizes directly reaches the translation, which says what to do instead."""
    args = (torch.randn(6, I), torch.tensor([3, 2, 1]), torch.zeros(3, H))
    with pytest.raises(Exception) as info:
        _export(RawPackedGRU(), args, dynamo=True)
    assert fastrnn.onnx.PACKED_DYNAMO_ERROR in _chain(info.value)


def _chain(e: BaseException) -> str:
    """The messages of an exception and its causes (the dynamo exporter wraps the translation's error)."""
    parts = []
    while e is not None:
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def test_proj_size_clear_error_and_torch_nn_fails_too():
    fast, ref = make_pair("LSTM", I, H, DT, proj_size=2)
    args = (torch.randn(T, B, I),)
    for dynamo in (False, True):
        with pytest.raises(Exception) as info:
            _export(fast, args, dynamo)
        assert fastrnn.onnx.PROJ_SIZE_ERROR in _chain(info.value)
    with pytest.raises(Exception, match="LSTMs with projections"):
        _export(ref, args, dynamo=False)
    # torch.nn's dynamo export writes a model that ignores weight_hr; onnxruntime rejects it.
    with pytest.raises(Exception, match="initial_c"):
        _run_ort(_export(ref, args, dynamo=True), args)


def test_explicit_translation_table_and_export_helper():
    """fastrnn.onnx.translation_table / fastrnn.onnx.export: the explicit route, should a torch version stop
    reading onnxscript's registry."""
    fast, ref = make_pair("GRU", I, H, DT, bidirectional=True)
    args = (torch.randn(T, B, I),)
    with torch.no_grad():
        expected = _flat(ref(*args))
    prog = fastrnn.onnx.export(fast.eval(), args, dynamo=True, verbose=False)
    for a, e in zip(_run_ort(prog.model_proto.SerializeToString(), args), expected):
        assert_close(a, e, DT, "fastrnn.onnx.export")
    assert set(fastrnn.onnx.translation_table) == {
        torch.ops.fastrnn.lstm_forward.default, torch.ops.fastrnn.gru_forward.default,
        torch.ops.fastrnn.rnn_forward.default}


def test_import_fastrnn_does_not_import_onnx_and_plain_export_works():
    """onnx/onnxscript are optional: import fastrnn neither needs nor loads them, and a plain
    torch.onnx.export(dynamo=True) afterwards finds fastrnn's translations (registered with onnxscript's
    torch_lib registry when the exporter imports it)."""
    import subprocess
    import sys
    code = (
        "import sys, warnings, logging, io, torch, fastrnn\n"
        "bad = [m for m in ('onnx', 'onnxscript', 'onnxruntime') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "warnings.simplefilter('ignore'); logging.disable(logging.WARNING)\n"
        "prog = torch.onnx.export(fastrnn.LSTM(4, 6).eval(), (torch.randn(5, 3, 4),), dynamo=True, verbose=False)\n"
        "assert 'LSTM' in {n.op_type for n in prog.model_proto.graph.node}\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=fastrnn.__path__[0] + "/..")
