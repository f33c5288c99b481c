"""ONNX export of fastrnn's operators, with either of torch.onnx's exporters.

Each fastrnn op runs one layer in one direction; it becomes one ONNX ``LSTM``, ``GRU`` or ``RNN`` node with
``direction`` "forward" or "reverse", so a fastrnn module exports to the same operators torch.nn's does (under
export, the modules run a bidirectional layer as its two one-direction ops, not as the ``*_bidir_forward`` op
that runs both at once). The
translations reorder the gate blocks (torch's LSTM i,f,g,o -> ONNX i,o,f,c; GRU r,z,n -> ONNX z,r,h), join
``b_ih``/``b_hh`` into ONNX's ``B = [Wb, Rb]``, set ``linear_before_reset=1`` for the GRU (torch's equation) and
``activations=["Relu"]`` for the relu RNN.

Registration (``import fastrnn`` does it; nothing here imports onnx or onnxscript before an export does):

* TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): ``torch.onnx.register_custom_op_symbolic``
  for ``fastrnn::{lstm,gru,rnn}_forward``, from opset 9.
* dynamo exporter (``torch.onnx.export(..., dynamo=True)``, torch's default): torch builds its operator table
  from onnxscript's torch_lib registry on every export, and torch has no public global registry of its own.
  fastrnn adds its translations to that registry when onnxscript's registry module is imported (a one-shot
  import hook, or at once if it is already loaded), so a plain ``torch.onnx.export`` finds them. The same
  translations are in :data:`translation_table` for ``custom_translation_table=``, and :func:`export` passes
  it for you: use either should a future torch stop reading onnxscript's registry.

Not exportable (a clear error, as torch.nn also cannot export them): an LSTM with ``proj_size`` (ONNX's LSTM
has no projection; torch.nn's TorchScript export raises, its dynamo export writes a model that onnxruntime
rejects), and packed input (a ``PackedSequence``) with the dynamo exporter (torch.export cannot trace
``pack_padded_sequence`` for torch.nn either). Packed input exports with the TorchScript exporter, as a
padded tensor with ``sequence_lens``, the way torch.nn's does.

The ``train`` flag and the workspace output only serve fastrnn's backward: the exported graph is inference,
and the workspace it returns is empty.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any, Callable, Dict

import torch

__all__ = ["translation_table", "export", "PROJ_SIZE_ERROR", "PACKED_DYNAMO_ERROR"]

PROJ_SIZE_ERROR = (
    "fastrnn: ONNX export of an LSTM with proj_size > 0 is not supported: ONNX's LSTM operator has no "
    "projection (torch.nn.LSTM with proj_size cannot be exported either)")
PACKED_DYNAMO_ERROR = (
    "fastrnn: ONNX export of packed input (PackedSequence) works with the TorchScript exporter only: "
    "torch.onnx.export(..., dynamo=False), as for torch.nn's RNNs")

# Blocks of torch's gate rows in the order ONNX wants them: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h.
_GATE_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}
_TS_OPSET = 9  # the TorchScript symbolics serve this opset and every later one
_OPS = ("lstm_forward", "gru_forward", "rnn_forward")


def _translate(b, kind: str, x, seq_lens, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse: bool, relu: bool):
    """One layer, one direction, dense [T, B, I] input (padded, with seq_lens, for packed input): returns
    (Y [T, B, H], Y_h [B, H], Y_c [B, H] or None). ``b`` is a graph builder for one of the two exporters."""
    hidden = b.size(w_ih, 0) // len(_GATE_ORDER[kind])
    order = _GATE_ORDER[kind]
    W = b.unsqueeze0(b.reorder(w_ih, hidden, order))
    R = b.unsqueeze0(b.reorder(w_hh, hidden, order))
    B = None
    if not b.is_none(b_ih):
        B = b.unsqueeze0(b.concat([b.reorder(b_ih, hidden, order), b.reorder(b_hh, hidden, order)]))
    attrs: Dict[str, Any] = {"hidden_size": hidden, "direction": "reverse" if reverse else "forward"}
    if kind == "GRU":
        attrs["linear_before_reset"] = 1
    if kind == "RNN":
        attrs["activations"] = ["Relu" if relu else "Tanh"]
    inputs = [x, W, R, B, seq_lens, b.unsqueeze0(hx)]
    if kind == "LSTM":
        inputs.append(b.unsqueeze0(cx))
    outs = b.rnn(kind, inputs, 3 if kind == "LSTM" else 2, attrs)
    y = b.squeeze(outs[0], 1)  # [T, 1, B, H] -> [T, B, H]
    hy = b.squeeze(outs[1], 0)
    cy = b.squeeze(outs[2], 0) if kind == "LSTM" else None
    return y, hy, cy


# ----------------------------------------------------------------------------- TorchScript exporter
def _ts_is_none(v) -> bool:
    return v is None or v.node().mustBeNone()


class _TSBuilder:
    """Graph building for the TorchScript exporter (``g`` is its GraphContext), opset-aware."""

    def __init__(self, g):
        self.g = g

    def ints(self, values):
        return self.g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

    @staticmethod
    def size(v, dim: int) -> int:
        sizes = v.type().sizes()
        if sizes is None or sizes[dim] is None:
            raise RuntimeError("fastrnn: ONNX export needs the weights' shapes, which the traced graph lacks")
        return int(sizes[dim])

    is_none = staticmethod(_ts_is_none)

    def slice0(self, v, start: int, end: int):
        if self.g.opset >= 10:
            return self.g.op("Slice", v, self.ints([start]), self.ints([end]), self.ints([0]))
        return self.g.op("Slice", v, axes_i=[0], starts_i=[start], ends_i=[end])

    def reorder(self, w, hidden: int, order):
        if len(order) == 1:
            return w
        return self.concat([self.slice0(w, k * hidden, (k + 1) * hidden) for k in order])

    def concat(self, values):
        return self.g.op("Concat", *values, axis_i=0)

    def unsqueeze0(self, v):
        if self.g.opset >= 13:
            return self.g.op("Unsqueeze", v, self.ints([0]))
        return self.g.op("Unsqueeze", v, axes_i=[0])

    def squeeze(self, v, axis: int):
        if self.g.opset >= 13:
            return self.g.op("Squeeze", v, self.ints([axis]))
        return self.g.op("Squeeze", v, axes_i=[axis])

    def rnn(self, kind, inputs, n_out, attrs):
        def absent():
            n = self.g.op("prim::Constant")
            n.setType(torch._C.OptionalType.ofTensor())
            return n
        inputs = [absent() if v is None else v for v in inputs]
        suffix = {int: "_i", str: "_s", list: "_s"}
        kw = {k + suffix[type(v)]: v for k, v in attrs.items()}
        return self.g.op(kind, *inputs, outputs=n_out, **kw)

    def empty_workspace(self, like):
        return self.g.op("Constant", value_t=torch.empty((0, 0)))


def _ts_bool(v) -> bool:
    from torch.onnx import symbolic_helper
    return bool(symbolic_helper._parse_arg(v, "b"))


def _ts_packed(x, batch_sizes):
    """Packed input: the TorchScript exporter turns pack_padded_sequence into prim::PackPadded(padded,
    lengths), whose outputs stand for (data, batch_sizes). Returns the padded input and the int32 lengths,
    the ONNX op's X and sequence_lens."""
    node = batch_sizes.node()
    if node.kind() != "prim::PackPadded":
        raise RuntimeError(
            "fastrnn: ONNX export of packed input needs batch_sizes straight from pack_padded_sequence "
            f"(found {node.kind()}); build the PackedSequence with pack_padded_sequence inside the exported "
            "model")
    padded, lengths = list(node.inputs())
    if x.node() == node:  # the first layer reads PackPadded's data; later layers read fastrnn's padded outputs
        x = padded
    return x, lengths


def _ts_from_fastrnn(data, pack_node) -> bool:
    """Whether ``data`` (padded, or torch.nn's still-packed) comes from a fastrnn op of the packed sequence
    ``pack_node``: fastrnn's ONNX RNN nodes read ``pack_node``'s own lengths as sequence_lens, torch.nn's read
    its batch_sizes output until the exporter's peephole pass rewires them."""
    lengths = pack_node.inputsAt(1)
    todo, seen = [data.node()], set()
    while todo:
        node = todo.pop()
        if node in seen or node == pack_node:
            continue
        seen.add(node)
        if node.kind() in ("onnx::LSTM", "onnx::GRU", "onnx::RNN") and len(list(node.inputs())) > 4 and \
                node.inputsAt(4) == lengths:
            return True
        todo.extend(v.node() for v in node.inputs())
    return False


def _ts_pad_packed_sequence(g, data, batch_sizes, batch_first, padding_value, total_length):
    """aten::_pad_packed_sequence, extended for fastrnn. The TorchScript exporter removes a packed sequence
    by pairing prim::PackPadded with prim::PadPacked around one ONNX RNN node of torch.nn's; fastrnn's ops
    already return padded outputs (one direction per op, so a bidirectional layer is two ops and a Concat),
    so pad_packed_sequence of them is the data itself, with the pack's lengths. Anything else goes to
    torch's own symbolic."""
    node = batch_sizes.node()
    if node.kind() == "prim::PackPadded" and _ts_from_fastrnn(data, node):
        from torch.onnx import symbolic_helper
        if symbolic_helper._parse_arg(batch_first, "i"):
            data = g.op("Transpose", data, perm_i=[1, 0, 2])
        return data, node.inputsAt(1)
    from torch.onnx import symbolic_opset9
    return symbolic_opset9._pad_packed_sequence(g, data, batch_sizes, batch_first, padding_value, total_length)


def _ts_symbolic(kind: str):
    def symbolic(g, input, batch_sizes, hx, *rest):
        b = _TSBuilder(g)
        if kind == "LSTM":
            cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, train = rest
            if not _ts_is_none(w_hr):
                raise RuntimeError(PROJ_SIZE_ERROR)
            relu = False
        elif kind == "GRU":
            w_ih, w_hh, b_ih, b_hh, reverse, train = rest
            cx, relu = None, False
        else:
            w_ih, w_hh, b_ih, b_hh, relu, reverse = rest
            cx, relu = None, _ts_bool(relu)
        seq_lens = None
        if not _ts_is_none(batch_sizes):
            input, seq_lens = _ts_packed(input, batch_sizes)
        y, hy, cy = _translate(b, kind, input, seq_lens, hx, cx, w_ih, w_hh, b_ih, b_hh, _ts_bool(reverse), relu)
        if kind == "LSTM":
            return y, hy, cy, b.empty_workspace(input)
        if kind == "GRU":
            return y, hy, b.empty_workspace(input)
        return y, hy
    symbolic.__name__ = f"fastrnn_{kind.lower()}_forward_symbolic"
    return symbolic


def _register_torchscript() -> None:
    for name, kind in zip(_OPS, ("LSTM", "GRU", "RNN")):
        torch.onnx.register_custom_op_symbolic(f"fastrnn::{name}", _ts_symbolic(kind), _TS_OPSET)
    torch.onnx.register_custom_op_symbolic("aten::_pad_packed_sequence", _ts_pad_packed_sequence, _TS_OPSET)


# --------------------------------------------------------------------------------- dynamo exporter
class _ScriptBuilder:
    """Graph building for the dynamo exporter: onnxscript's opset 18, traced."""

    def __init__(self):
        import onnxscript
        self.op = onnxscript.opset18

    @staticmethod
    def size(v, dim: int) -> int:
        s = v.shape[dim] if v.shape is not None else None
        if not isinstance(s, int):
            raise RuntimeError("fastrnn: ONNX export needs the weights' static shapes")
        return s

    @staticmethod
    def is_none(v) -> bool:
        return v is None

    def reorder(self, w, hidden: int, order):
        if len(order) == 1:
            return w
        # Slices rather than one Split: the exporter's optimizer folds them into the weight initializers.
        return self.op.Concat(*[self.op.Slice(w, [k * hidden], [(k + 1) * hidden], [0]) for k in order], axis=0)

    def concat(self, values):
        return self.op.Concat(*values, axis=0)

    def unsqueeze0(self, v):
        return self.op.Unsqueeze(v, [0])

    def squeeze(self, v, axis: int):
        return self.op.Squeeze(v, [axis])

    def rnn(self, kind, inputs, n_out, attrs):
        while inputs and inputs[-1] is None:
            inputs = inputs[:-1]
        return getattr(self.op, kind)(*inputs, **attrs)

    def empty_workspace(self, like):
        return self.op.CastLike(self.op.ConstantOfShape([0, 0]), like)


def _dynamo_common(kind, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse, relu):
    if batch_sizes is not None:
        raise RuntimeError(PACKED_DYNAMO_ERROR)
    b = _ScriptBuilder()
    y, hy, cy = _translate(b, kind, input, None, hx, cx, w_ih, w_hh, b_ih, b_hh, bool(reverse), bool(relu))
    return b, y, hy, cy


def fastrnn_lstm_forward(input, batch_sizes=None, hx=None, cx=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None,
                         w_hr=None, reverse: bool = False, train: bool = False):
    """fastrnn::lstm_forward as ONNX (dynamo exporter)."""
    if w_hr is not None:
        raise RuntimeError(PROJ_SIZE_ERROR)
    b, y, hy, cy = _dynamo_common("LSTM", input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse, False)
    return y, hy, cy, b.empty_workspace(input)


def fastrnn_gru_forward(input, batch_sizes=None, hx=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None,
                        reverse: bool = False, train: bool = False):
    """fastrnn::gru_forward as ONNX (dynamo exporter)."""
    b, y, hy, _ = _dynamo_common("GRU", input, batch_sizes, hx, None, w_ih, w_hh, b_ih, b_hh, reverse, False)
    return y, hy, b.empty_workspace(input)


def fastrnn_rnn_forward(input, batch_sizes=None, hx=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None,
                        relu: bool = False, reverse: bool = False):
    """fastrnn::rnn_forward as ONNX (dynamo exporter)."""
    _, y, hy, _ = _dynamo_common("RNN", input, batch_sizes, hx, None, w_ih, w_hh, b_ih, b_hh, reverse, relu)
    return y, hy


_DYNAMO_FUNCTIONS = (fastrnn_lstm_forward, fastrnn_gru_forward, fastrnn_rnn_forward)

#: The dynamo exporter's translations, for ``torch.onnx.export(..., custom_translation_table=...)``.
translation_table: Dict[Callable, Callable] = {
    getattr(torch.ops.fastrnn, name).default: fn for name, fn in zip(_OPS, _DYNAMO_FUNCTIONS)}


def export(model, args=(), f=None, **kwargs):
    """``torch.onnx.export`` with fastrnn's translations passed explicitly (for the dynamo exporter; the
    TorchScript one finds them anyway). Any ``custom_translation_table`` given is merged over fastrnn's."""
    if kwargs.get("dynamo", True):
        kwargs["custom_translation_table"] = {**translation_table, **(kwargs.get("custom_translation_table") or {})}
    return torch.onnx.export(model, args, f, **kwargs)


_TORCH_LIB_REGISTRY = "onnxscript.function_libs.torch_lib.registration"


def _register_dynamo() -> None:
    """Adds the translations to onnxscript's torch_lib registry, from which torch.onnx's dynamo exporter
    builds its operator table on every export."""
    try:
        from onnxscript.function_libs.torch_lib import registration
        for name, fn in zip(_OPS, _DYNAMO_FUNCTIONS):
            if f"fastrnn::{name}" not in registration.default_registry:
                registration.torch_op(f"fastrnn::{name}", trace_only=True)(fn)
    except Exception as e:  # never break onnxscript's import; the explicit table still works
        warnings.warn(f"fastrnn: could not register the ONNX translations with onnxscript ({e!r}); pass "
                      "custom_translation_table=fastrnn.onnx.translation_table to torch.onnx.export, or use "
                      "fastrnn.onnx.export", RuntimeWarning, stacklevel=2)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback right after one module is first imported (one shot), so that fastrnn does not import
    onnxscript (an optional, slow-to-import dependency) itself."""

    def __init__(self, name: str, callback: Callable[[], None]):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module, callback = loader.exec_module, self.callback

        def exec_then_register(module):
            exec_module(module)
            callback()

        loader.exec_module = exec_then_register
        return spec


def _register_dynamo_when_imported() -> None:
    if _TORCH_LIB_REGISTRY in sys.modules:
        _register_dynamo()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(_TORCH_LIB_REGISTRY, _register_dynamo))


_register_torchscript()
_register_dynamo_when_imported()
