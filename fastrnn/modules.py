"""Drop-in replacements for torch.nn.LSTM/GRU/RNN and their cells, running on fastrnn's fused kernels.

The modules hold exactly torch.nn's parameters (names, shapes, initialisation, order), so state_dicts move
between torch.nn and fastrnn with load_state_dict(strict=True) either way. Their forward takes and returns
what torch.nn's does.

LSTM, GRU and RNN derive from torch.nn.RNNBase and the cells from torch.nn.RNNCellBase, so
`isinstance(m, nn.RNNBase)` / `isinstance(m, nn.RNNCellBase)` hold as for torch.nn's modules, and the
constructors are torch.nn's own (same argument checks, warnings, parameters, initialisation). They do not
derive from nn.LSTM/nn.GRU/nn.RNN: TorchDynamo graph-breaks on instances of exactly those three classes
(torch/_dynamo/variables/builder.py, unless torch._dynamo.config.allow_rnn), not on RNNBase subclasses, so
torch.compile(fullgraph=True) traces fastrnn's modules whole (tests/test_torchnn_checks.py checks both).
"""
from __future__ import annotations

from typing import Callable, Iterable, List, Optional

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _C, ops, reference  # ops registers the autograd and fake kernels

_ops = torch.ops.fastrnn
_fwd = ops.fwd  # the forward ops, called below autograd when grad mode is off (ops._forward_call)
# The devices this build has kernels of the options' ext ops for (asked once: torch.compile cannot trace the
# dispatcher query), plus meta, where the fake kernels serve.
_EXT_DEVICES = frozenset(["meta"] + [
    device for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
    if all(torch._C._dispatch_has_kernel_for_dispatch_key(f"fastrnn::{op}", key)
           for op in ("lstm_ext_forward", "lstm_ext_backward", "gru_ext_forward", "gru_ext_backward"))])
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_CELL_KIND = {"LSTM": 0, "GRU": 1, "RNN_TANH": 2, "RNN_RELU": 3}  # csrc/cell_autograd.cpp's CellKind
_cell_step, _cell_forward = _C.cell_step, _C.cell_forward


# ------------------------------------------------------------------------------------- argument checks
# The modules run torch.nn's argument checks in torch.nn's order (its Python forward's, then its kernels'),
# raising torch.nn's exception class with a message that contains torch.nn's own text. Where torch.nn's class
# is an accident of its implementation (AttributeError from calling .dim() on a list, IndexError from a short
# tuple, RuntimeError from a matmul for a dtype mismatch its Python code does not check), fastrnn raises a
# clear message with one of the classes below: each is torch.nn's class and the natural one at once, so an
# except clause written for either catches it.
class InputTypeError(TypeError, AttributeError):
    """A non-tensor where a tensor is expected (torch.nn: AttributeError)."""


class HiddenStateError(TypeError, RuntimeError, IndexError):
    """An LSTM's hx that is not a pair (h_0, c_0) (torch.nn: TypeError, RuntimeError or IndexError, by case)."""


class DtypeMismatchError(ValueError, RuntimeError):
    """Input, hidden state and parameters of different dtypes (torch.nn: ValueError for the input of
    LSTM/GRU/RNN, RuntimeError from its kernels for the cells' input and for any hidden state)."""


def _tensor_arg(value, what: str, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise InputTypeError(f"{name}: {what} must be a Tensor, got {type(value).__name__}")
    return value


class _FastPathRefused(Exception):
    """A cell call outside the fast path's case (_CellBase.forward): it takes the checked path."""


_get_tracing_state, _is_compiling = torch._C._get_tracing_state, torch.compiler.is_compiling


def _tracing_or_compiling() -> bool:
    return _get_tracing_state() is not None or _is_compiling()


def _check_devices(x: Tensor, weight: Tensor, states, name: str) -> None:
    # torch.nn's kernel checks (RuntimeError), with their text
    if x.device != weight.device:
        raise RuntimeError(f"{name}: Input and parameter tensors are not at the same device, found input tensor "
                           f"at {x.device} and parameter tensor at {weight.device}")
    for h in states:
        if h.device != x.device:
            raise RuntimeError(f"{name}: Input and hidden tensors are not at the same device, found input tensor "
                               f"at {x.device} and hidden tensor at {h.device}")


def _check_state_dtypes(x: Tensor, states, name: str) -> None:
    # Inside an autocast region torch.nn lets the dtypes differ (its kernels cast them), and so does fastrnn.
    if torch._C._is_any_autocast_enabled():
        return
    for h in states:
        if h.dtype != x.dtype:
            raise DtypeMismatchError(f"{name}: hidden state dtype ({h.dtype}) does not match input dtype "
                                     f"({x.dtype}). Convert the hidden state: h.to({x.dtype})")


def _autocast_dtypes(mode: str, input: Tensor, packed: bool, proj: bool, cell: bool):
    """Output dtypes torch.nn returns under autocast, where they differ from the op's (the autocast dtype):
    (dtype for output and h, dtype for c), None meaning "as the op returned it".

    The fastrnn ops cast like torch.nn's recurrent kernels on autocast's lower-precision list (cuDNN's RNN and
    the cells on CUDA; oneDNN's LSTM and the RNN on the CPU). On the CPU torch.nn's GRU, LSTMCell, GRUCell
    and packed LSTM are not on that list: they return the input's dtype (their matmuls still run in the
    autocast dtype), and an LSTM with a projection returns c in the input's dtype. Measured on torch 2.14.1
    and asserted against the live torch.nn by tests/test_autocast.py."""
    if input.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return None, None
    if mode == "GRU" or (cell and mode == "LSTM") or (mode == "LSTM" and packed and not proj):
        return input.dtype, input.dtype
    if mode == "LSTM" and proj:
        return None, input.dtype
    return None, None


def _saves_activations(params: Callable[[], Iterable[Tensor]], *tensors: Optional[Tensor]) -> bool:
    """The ops' `train` flag: save the activations the backward needs whenever a gradient may be asked for.
    Under torch.jit.trace it is always True: the flag becomes a constant of the traced graph, which must
    stay differentiable whatever the grad mode at trace time (torch.nn's traced modules can be trained), and
    trace's own check re-runs the module in another grad mode and requires the same graph. `params` (the
    module's parameters method) is only walked when grad mode is on: under no_grad (decoding a token per
    call) walking them was a tenth of a T=1 call."""
    if torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and (
        any(t is not None and t.requires_grad for t in tensors) or any(p.requires_grad for p in params()))


def _cast(t: Optional[Tensor], dtype: Optional[torch.dtype]) -> Optional[Tensor]:
    return t if t is None or dtype is None else t.to(dtype)


def _refuse_scripting(module: nn.Module):
    """torch.jit.script calls __prepare_scriptable__ on every module it is about to compile, submodules too:
    fastrnn's modules answer with this error instead of TorchScript's about their Python forward."""
    name = next(c.__name__ for c in type(module).__mro__ if c.__module__ == __name__ and c.__name__[0] != "_")
    raise RuntimeError(
        f"fastrnn.{name} cannot be compiled by torch.jit.script: its forward calls fastrnn's custom ops "
        f"through Python (argument checks, autograd, autocast, PackedSequence handling) that TorchScript "
        f"cannot compile. Use torch.compile (fullgraph=True works), torch.export.export or torch.jit.trace "
        f"instead, or script a torch.nn.{name}, into which fastrnn's state_dict loads with strict=True.")


class _Options:
    """fastrnn's options beyond torch.nn, shared by the layer modules and the cells (mixed in before
    torch.nn's base class)."""

    # fastrnn's options beyond torch.nn (issue 10; equations in fastrnn/reference.py), all off by default: with
    # them off the module is exactly torch.nn's. Class attributes, so that RNN (which has none of them) and
    # modules pickled before they existed read them as off.
    layer_norm: bool = False
    weight_drop: float = 0.0
    recurrent_dropout: float = 0.0
    _zoneout_rates = (0.0, 0.0)  # (h, c)

    def _init_options(self, suffixes, layer_norm, zoneout, weight_drop, recurrent_dropout, factory_kwargs) -> None:
        """Checks the options and adds the LayerNorm parameters ln_{part}_{weight,bias}{suffix} for each suffix
        (after torch.nn's, so the first entries of the state_dict are torch.nn's own), gain 1 and bias 0."""
        name = type(self).__name__
        is_lstm = self.mode == "LSTM"
        if not isinstance(layer_norm, bool):
            raise TypeError(f"{name}: layer_norm must be a bool, got {type(layer_norm).__name__}")

        def rate(value, arg: str) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name}: {arg} must be a probability in [0, 1), got {value!r}")
            return float(value)

        if isinstance(zoneout, (tuple, list)):
            if not is_lstm or len(zoneout) != 2:
                raise ValueError(f"{name}: zoneout must be a probability" +
                                 (" or a pair (p_h, p_c)" if is_lstm else "") + f", got {zoneout!r}")
            rates = (rate(zoneout[0], "zoneout[0] (h)"), rate(zoneout[1], "zoneout[1] (c)"))
        else:
            p = rate(zoneout, "zoneout")
            rates = (p, p if is_lstm else 0.0)
        self._zoneout_rates = rates
        self.weight_drop = rate(weight_drop, "weight_drop")
        self.recurrent_dropout = rate(recurrent_dropout, "recurrent_dropout")
        self.layer_norm = layer_norm
        if layer_norm:
            gate_width = _GATES[self.mode] * self.hidden_size
            shapes = [("ih", gate_width), ("hh", gate_width)] + ([("c", self.hidden_size)] if is_lstm else [])
            for suffix in suffixes:
                for part, width in shapes:
                    for kind in ("weight", "bias"):
                        self.register_parameter(f"ln_{part}_{kind}{suffix}",
                                                nn.Parameter(torch.empty(width, **factory_kwargs)))
            self._reset_layer_norm()

    @property
    def zoneout(self):
        """The zoneout probability (LSTM with different rates for h and c: the pair (p_h, p_c))."""
        p_h, p_c = self._zoneout_rates
        return p_h if self.mode != "LSTM" or p_h == p_c else (p_h, p_c)

    @property
    def _zoneout_on(self) -> bool:
        return any(p > 0 for p in self._zoneout_rates)

    @property
    def _uses_ext_ops(self) -> bool:
        """Whether the layers run on the ext ops (weight_drop alone needs no more than torch.nn's cells)."""
        return self.layer_norm or self.recurrent_dropout > 0 or self._zoneout_on

    def _reset_layer_norm(self) -> None:
        with torch.no_grad():
            for pname, param in self.named_parameters(recurse=False):
                if pname.startswith("ln_"):
                    param.fill_(1.0 if "_weight" in pname else 0.0)

    def reset_parameters(self) -> None:
        """torch.nn's initialisation (uniform in +-1/sqrt(hidden_size)), then gain 1 and bias 0 for the
        LayerNorm parameters of layer_norm=True."""
        super().reset_parameters()
        self._reset_layer_norm()

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.layer_norm:
            s += ", layer_norm=True"
        if self._zoneout_on:
            s += f", zoneout={self.zoneout}"
        if self.weight_drop > 0:
            s += f", weight_drop={self.weight_drop}"
        if self.recurrent_dropout > 0:
            s += f", recurrent_dropout={self.recurrent_dropout}"
        return s

    def _ln_pairs(self, suffix: str):
        """(ln_ih, ln_hh, ln_c) as (weight, bias) pairs, ln_c None for the GRU; None without layer_norm."""
        if not self.layer_norm:
            return None
        pair = lambda n: (getattr(self, f"ln_{n}_weight{suffix}"), getattr(self, f"ln_{n}_bias{suffix}"))  # noqa
        return pair("ih"), pair("hh"), (pair("c") if self.mode == "LSTM" else None)

    def _draw_masks(self, rows_shape, batch: int, state_size: int, like: Tensor):
        """The random masks of one layer and direction, in this order (torch's generator: torch.manual_seed
        reproduces them): zoneout of h [*rows_shape, D] and, LSTM, of c [*rows_shape, H] (the weight of the
        previous state: Bernoulli(p) in training, the constant p in eval), then the recurrent-dropout mask
        [B, D] (0 or 1/(1-p), training only). None where an option is off. In the accumulation dtype."""
        opts = like.new_empty(()).to(ops.accumulation_dtype(like.dtype))

        def zoneout(p: float, size: int):
            if p == 0:
                return None
            if not self.training:
                return opts.new_full((), p)
            return torch.bernoulli(opts.new_full((*rows_shape, size), p))

        p_h, p_c = self._zoneout_rates
        k_h = zoneout(p_h, state_size)
        k_c = zoneout(p_c, self.hidden_size) if self.mode == "LSTM" else None
        mask = None
        if self.recurrent_dropout > 0 and self.training:
            mask = F.dropout(opts.new_ones((batch, state_size)), p=self.recurrent_dropout, training=True)
        return k_h, k_c, mask

    def _run_ext(self, x, batch_sizes, h0, c0, params, ln, reverse, train):
        """The recurrence with layer_norm, zoneout or recurrent_dropout over x in the ops' layout: the input side
        LN_ih(W_ih x) + biases for all steps at once (torch's linear and layer_norm), then fastrnn's ext op.
        params: (w_ih, w_hh, b_ih, b_hh, w_hr); ln: _ln_pairs(). Returns (output, h_n, c_n or None)."""
        w_ih, w_hh, b_ih, b_hh, w_hr = params
        is_lstm = self.mode == "LSTM"
        bias = b_ih
        if is_lstm and b_ih is not None:
            bias = b_ih + b_hh  # the LSTM adds both biases to the gates; the GRU's b_hn sits inside r * (...)
        if ln is None:
            gates_x = F.linear(x, w_ih, bias)
        else:
            gates_x = F.layer_norm(F.linear(x, w_ih), (w_ih.shape[0],), ln[0][0], ln[0][1], eps=reference.LN_EPS)
            if bias is not None:
                gates_x = gates_x + bias
        k_h, k_c, mask = self._draw_masks(x.shape[:-1], h0.shape[0], h0.shape[-1], x)
        ln_hh = ln[1] if ln is not None else (None, None)
        if is_lstm:
            ln_c = ln[2] if ln is not None else (None, None)
            out, hy, cy, _ = _fwd.lstm_ext_forward(gates_x, batch_sizes, h0, c0, w_hh, w_hr, *ln_hh, *ln_c, k_h, k_c,
                                                   mask, reverse, train)
            return out, hy, cy
        out, hy, _ = _fwd.gru_ext_forward(gates_x, batch_sizes, h0, w_hh, b_hh, *ln_hh, k_h, mask, reverse, train)
        return out, hy, None

    def _ext_option_names(self) -> str:
        """The options that need the ext ops, for error messages."""
        return ", ".join(o for o, on in (("layer_norm", self.layer_norm), ("zoneout", self._zoneout_on),
                                         ("recurrent_dropout", self.recurrent_dropout > 0)) if on)

    def _check_ext_device(self, x: Tensor, name: str) -> None:
        if x.device.type not in _EXT_DEVICES:
            raise NotImplementedError(
                f"{name}({self._ext_option_names()}): this build of fastrnn has no {x.device.type} kernel for these "
                f"options (the CPU has them; CUDA needs an extension built with CUDA). weight_drop alone works on "
                f"every device.")
        if torch.onnx.is_in_onnx_export():
            raise RuntimeError(f"{name}: ONNX export of a module with {self._ext_option_names()} is not supported: "
                               f"ONNX's LSTM/GRU operators have no such options")



class _RNNBase(_Options, nn.RNNBase):
    """The forward shared by LSTM, GRU and RNN. The constructor (argument checks, parameters, initialisation),
    extra_repr, all_weights and pickling are torch.nn.RNNBase's own."""

    def __prepare_scriptable__(self):
        _refuse_scripting(self)

    def _layer_suffixes(self):
        return [f"_l{layer}{sfx}" for layer in range(self.num_layers)
                for sfx in ("", "_reverse")[:2 if self.bidirectional else 1]]

    def flatten_parameters(self) -> None:
        """Kept for drop-in compatibility. fastrnn's kernels read each parameter where it lives, so there is
        nothing to compact (torch.nn's version packs the weights into one buffer for cuDNN)."""

    # torch.nn.RNNBase keeps a list of the parameters, updated by its __setattr__ and re-synchronised by its
    # forward; torch.func.functional_call swaps parameters behind __setattr__'s back. fastrnn reads them by
    # name instead, always current; RNNBase's assignments to the list are dropped.
    @property
    def _flat_weights(self) -> List[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    @_flat_weights.setter
    def _flat_weights(self, value) -> None:
        pass

    # ----------------------------------------------------------------------------------------- forward
    def _layer_params(self, layer: int, direction: int):
        suffix = "_reverse" if direction == 1 else ""
        get = lambda base: getattr(self, f"{base}_l{layer}{suffix}")  # noqa: E731
        w_ih, w_hh = get("weight_ih"), get("weight_hh")
        b_ih, b_hh = (get("bias_ih"), get("bias_hh")) if self.bias else (None, None)
        w_hr = get("weight_hr") if self.proj_size > 0 else None
        if self.weight_drop > 0 and self.training:  # DropConnect: one mask per forward call, layer and direction
            w_hh = F.dropout(w_hh, p=self.weight_drop, training=True)
        return w_ih, w_hh, b_ih, b_hh, w_hr

    def _run_layer(self, x, batch_sizes, h0, c0, params, reverse, train, layer=0, direction=0):
        """One layer in one direction; returns (output, h_n, c_n or None)."""
        w_ih, w_hh, b_ih, b_hh, w_hr = params
        if self._uses_ext_ops:
            suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
            return self._run_ext(x, batch_sizes, h0, c0, params, self._ln_pairs(suffix), reverse, train)
        if self.mode == "LSTM":
            out, hy, cy, _ = _fwd.lstm_forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, train)
            return out, hy, cy
        if self.mode == "GRU":
            out, hy, _ = _fwd.gru_forward(x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reverse, train)
            return out, hy, None
        out, hy = _fwd.rnn_forward(x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, self.mode == "RNN_RELU", reverse)
        return out, hy, None

    def _run_bidir_layer(self, x, batch_sizes, h0, c0, params, params_r, train):
        """Both directions of one layer; returns ([output, output_r], [h_n, h_n_r], [c_n, c_n_r] or Nones).
        h0/c0: the layer's two initial states [2, B, *]."""
        if self.mode == "LSTM":
            out, hy, cy, _, out_r, hy_r, cy_r, _ = _fwd.lstm_bidir_forward(
                x, batch_sizes, h0[0], c0[0], *params, h0[1], c0[1], *params_r, train)
            return [out, out_r], [hy, hy_r], [cy, cy_r]
        w_ih, w_hh, b_ih, b_hh, _ = params
        w_ih_r, w_hh_r, b_ih_r, b_hh_r, _ = params_r
        if self.mode == "GRU":
            out, hy, _, out_r, hy_r, _ = _fwd.gru_bidir_forward(x, batch_sizes, h0[0], w_ih, w_hh, b_ih, b_hh,
                                                                h0[1], w_ih_r, w_hh_r, b_ih_r, b_hh_r, train)
        else:
            out, hy, out_r, hy_r = _fwd.rnn_bidir_forward(x, batch_sizes, h0[0], w_ih, w_hh, b_ih, b_hh, h0[1],
                                                          w_ih_r, w_hh_r, b_ih_r, b_hh_r, self.mode == "RNN_RELU")
        return [out, out_r], [hy, hy_r], [None, None]

    def _forward(self, input, hx):
        name = type(self).__name__
        is_lstm = self.mode == "LSTM"
        num_directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        w0 = self.weight_ih_l0
        is_packed = isinstance(input, PackedSequence)
        # torch.nn's checks, in its order (see "argument checks" above): its forward's, RNNBase.check_input's
        # and check_hidden_size's, then its kernels' (state count, devices, sequence length, state dtypes).
        if is_packed:
            x, batch_sizes, sorted_indices, unsorted_indices = input
            if batch_sizes.dim() != 1 or batch_sizes.numel() == 0:
                raise ValueError(f"{name}: PackedSequence has no steps (batch_sizes {tuple(batch_sizes.shape)})")
            batch = int(batch_sizes[0])
            batched = True
        else:
            if not isinstance(input, Tensor):
                raise InputTypeError(f"{name}: input must be a Tensor or a PackedSequence, got "
                                     f"{type(input).__name__}")
            if input.dim() not in (2, 3):
                torch_name, tensor = {"LSTM": ("LSTM", ""), "GRU": ("GRU", "")}.get(self.mode, ("RNN", " tensor"))
                raise ValueError(f"{torch_name}: Expected input to be 2D or 3D, got {input.dim()}D{tensor} instead")
            batched = input.dim() == 3
            batch_sizes, sorted_indices, unsorted_indices = None, None, None
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            batch = x.shape[1]
        h0, c0 = None, None
        if hx is not None:
            if is_lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) < 2:
                    got = f"a {type(hx).__name__} of {len(hx)}" if isinstance(hx, (tuple, list)) else type(hx).__name__
                    raise HiddenStateError(f"{name}: hx must be a tuple (h_0, c_0), got {got}")
                h0, c0 = _tensor_arg(hx[0], "hx[0]", name), _tensor_arg(hx[1], "hx[1]", name)
            else:
                h0 = _tensor_arg(hx, "hx", name)
            if not is_packed:
                want, dims = (3 if batched else 2), ((h0.dim(), c0.dim()) if is_lstm else (h0.dim(),))
                if any(d != want for d in dims):
                    kind = "batched 3-D" if batched else "unbatched 2-D"
                    if is_lstm:
                        raise RuntimeError(f"{name}: For {kind} input, hx and cx should also be {want}-D but got "
                                           f"({dims[0]}-D, {dims[1]}-D) tensors")
                    raise RuntimeError(f"{name}: For {kind} input, hx should also be {want}-D but got {dims[0]}-D "
                                       f"tensor")
                if not batched:
                    h0 = h0.unsqueeze(1)
                    c0 = c0.unsqueeze(1) if is_lstm else None
            elif sorted_indices is not None:  # torch.nn permutes a packed input's hx before checking it
                h0 = h0.index_select(1, sorted_indices)
                c0 = c0.index_select(1, sorted_indices) if is_lstm else None
        if x.dtype != w0.dtype and not torch._C._is_any_autocast_enabled():  # not under autocast, as torch.nn
            raise DtypeMismatchError(f"{name}: RNN input dtype ({x.dtype}) does not match weight dtype ({w0.dtype}). "
                                     f"Convert input: input.to({w0.dtype}), or convert model: model.to({x.dtype})")
        if x.dim() != (2 if is_packed else 3):
            raise RuntimeError(f"{name}: input must have {2 if is_packed else 3} dimensions, got {x.dim()}")
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"{name}: input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {x.shape[-1]}")
        h_shape = (self.num_layers * num_directions, batch, real_hidden)
        c_shape = (self.num_layers * num_directions, batch, self.hidden_size)
        if hx is not None:
            if tuple(h0.shape) != h_shape:
                raise RuntimeError(f"{name}: Expected hidden{'[0]' if is_lstm else ''} size {h_shape}, got "
                                   f"{list(h0.shape)}")
            if is_lstm and tuple(c0.shape) != c_shape:
                raise RuntimeError(f"{name}: Expected hidden[1] size {c_shape}, got {list(c0.shape)}")
            if is_lstm and len(hx) != 2:
                raise HiddenStateError(f"{name}: lstm expects two hidden states (h_0, c_0), got {len(hx)}")
        states = [h for h in (h0, c0) if h is not None]
        _check_devices(x, w0, states, name)
        if x.shape[0] == 0:
            raise RuntimeError(f"{name}: Expected sequence length to be larger than 0 in RNN")
        _check_state_dtypes(x, states, name)
        if hx is None:
            h0 = torch.zeros(h_shape, dtype=x.dtype, device=x.device)
            c0 = torch.zeros(c_shape, dtype=x.dtype, device=x.device) if is_lstm else None

        needs_grad = _saves_activations(self.parameters, x, h0, c0)
        if self._uses_ext_ops:
            self._check_ext_device(x, name)
        h_n, c_n = [], []
        layer_input = x
        # Both directions of a layer in one op (the CPU runs them at once where that pays,
        # csrc/cpu/bidir_cpu.cpp), except for the regularised cells (their own ops) and under ONNX export
        # (fastrnn/onnx.py translates the one-direction ops).
        both_at_once = num_directions == 2 and not self._uses_ext_ops and not torch.onnx.is_in_onnx_export()
        for layer in range(self.num_layers):
            outs = []
            if both_at_once:
                idx = 2 * layer
                out, hy, cy = self._run_bidir_layer(layer_input, batch_sizes, h0[idx:idx + 2],
                                                    c0[idx:idx + 2] if is_lstm else None,
                                                    self._layer_params(layer, 0), self._layer_params(layer, 1),
                                                    needs_grad)
                outs, h_n, c_n = out, h_n + hy, c_n + cy
            else:
                for direction in range(num_directions):
                    idx = layer * num_directions + direction
                    out, hy, cy = self._run_layer(layer_input, batch_sizes, h0[idx], c0[idx] if is_lstm else None,
                                                  self._layer_params(layer, direction), direction == 1, needs_grad,
                                                  layer, direction)
                    outs.append(out)
                    h_n.append(hy)
                    c_n.append(cy)
            layer_input = outs[0] if num_directions == 1 else torch.cat(outs, dim=-1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, p=self.dropout, training=True)
        out_dtype, c_dtype = _autocast_dtypes(self.mode, x, is_packed, self.proj_size > 0, cell=False)
        output = _cast(layer_input, out_dtype)
        hy = _cast(torch.stack(h_n, 0), out_dtype)
        cy = _cast(torch.stack(c_n, 0), c_dtype) if is_lstm else None

        if is_packed:
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                hy = hy.index_select(1, unsorted_indices)
                cy = cy.index_select(1, unsorted_indices) if is_lstm else None
        else:
            if not batched:
                output = output.squeeze(1)
                hy = hy.squeeze(1)
                cy = cy.squeeze(1) if is_lstm else None
            elif self.batch_first:
                output = output.transpose(0, 1)
        return output, ((hy, cy) if is_lstm else hy)

    def forward(self, input, hx=None):
        return self._forward(input, hx)


class LSTM(_RNNBase):
    """Drop-in torch.nn.LSTM: same constructor, parameters and outputs (output, (h_n, c_n)).

    Keyword-only options beyond torch.nn (all off by default; equations in fastrnn/reference.py):
      layer_norm=True      LayerNorm of W_ih x, of W_hh h (each over the 4H gates) and of c before its tanh;
                           adds ln_{ih,hh,c}_{weight,bias}_l{k}[_reverse] (gain 1, bias 0)
      zoneout=p            each unit of h and c keeps its previous value with probability p in training, the
                           expectation p * prev + (1 - p) * new in eval; a pair (p_h, p_c) sets them apart
      weight_drop=p        DropConnect on W_hh: one mask per forward call in training (AWD-LSTM)
      recurrent_dropout=p  variational dropout of h where it enters W_hh h, one mask per sequence
    layer_norm, zoneout and recurrent_dropout need fastrnn's ext kernels for the device (see README)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, layer_norm: bool = False, zoneout=0.0,
                 weight_drop: float = 0.0, recurrent_dropout: float = 0.0, **kwargs) -> None:
        # kwargs: none; passed on so that an unknown one raises torch.nn.RNNBase's TypeError, as torch.nn's does
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, **kwargs)
        self._init_options(self._layer_suffixes(), layer_norm, zoneout, weight_drop, recurrent_dropout,
                           {"device": device, "dtype": dtype})


class GRU(_RNNBase):
    """Drop-in torch.nn.GRU: same constructor, parameters and outputs (output, h_n).

    Keyword-only options beyond torch.nn as for fastrnn.LSTM (layer_norm normalises W_ih x and W_hh h over the
    3H gates, b_hn stays inside r * (...); zoneout is on h only): layer_norm, zoneout, weight_drop,
    recurrent_dropout."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, layer_norm: bool = False, zoneout: float = 0.0,
                 weight_drop: float = 0.0, recurrent_dropout: float = 0.0, **kwargs) -> None:
        if "proj_size" in kwargs:  # first, as torch.nn.GRU checks it; other kwargs: RNNBase's TypeError
            raise ValueError("GRU: proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, **kwargs)
        self._init_options(self._layer_suffixes(), layer_norm, zoneout, weight_drop, recurrent_dropout,
                           {"device": device, "dtype": dtype})


class RNN(_RNNBase):
    """Drop-in torch.nn.RNN (nonlinearity 'tanh' or 'relu'): same constructor, parameters and outputs."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, **kwargs) -> None:
        if "proj_size" in kwargs:  # first, as torch.nn.RNN checks it; other kwargs: RNNBase's TypeError
            raise ValueError("RNN: proj_size argument is only supported for LSTM, not RNN or GRU")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype, **kwargs)


# ------------------------------------------------------------------------------------------------ cells
class _CellBase(_Options, nn.RNNCellBase):
    """The forward shared by the single-step cells: one step of the sequence op (T=1). Parameters,
    initialisation and extra_repr are torch.nn.RNNCellBase's own."""

    mode: str  # "LSTM", "GRU", "RNN_TANH" or "RNN_RELU": a class attribute, RNNCell's follows its nonlinearity

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool, device, dtype) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=_GATES[mode], device=device, dtype=dtype)

    def _step(self, input: Tensor, hx):
        # A decoder calls this once per token, so the Python here is a cost paid per step: each attribute is read
        # once (the mode is a property on RNNCell, the weights go through nn.Module.__getattr__) and the
        # checks stay in torch.nn's order without repeated work.
        name = type(self).__name__
        mode = self.mode
        is_lstm = mode == "LSTM"
        # torch.nn's checks, in its order (see "argument checks" above): its forward's (ranks, nonlinearity),
        # then its kernels' (state count, input size, each state's batch and hidden size: shapes before dtypes).
        if not isinstance(input, Tensor):
            raise InputTypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        in_dim = input.dim()
        if in_dim != 1 and in_dim != 2:
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {in_dim}D instead")
        states: List[Tensor] = []
        if hx is not None:
            if is_lstm:
                if not isinstance(hx, (tuple, list)):
                    raise HiddenStateError(f"{name}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
                for idx, value in enumerate(hx):
                    if _tensor_arg(value, f"hx[{idx}]", name).dim() not in (1, 2):
                        raise ValueError(f"{name}: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
                if len(hx) != 2:
                    raise HiddenStateError(f"{name}: lstm_cell expects two hidden states (h_0, c_0), got {len(hx)}")
                states = [hx[0], hx[1]]
            else:
                if _tensor_arg(hx, "hx", name).dim() not in (1, 2):
                    raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
                states = [hx]
        if mode[0] == "R" and self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"{name}: Unknown nonlinearity: {self.nonlinearity}")
        batched = in_dim == 2
        x = input if batched else input.unsqueeze(0)
        if not batched:
            states = [s.unsqueeze(0) for s in states]
        w_ih, w_hh, b_ih, b_hh = self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        batch, in_size = x.shape
        if in_size != w_ih.shape[1]:
            raise RuntimeError(f"{name}: input has inconsistent input_size: got {in_size} expected "
                               f"{w_ih.shape[1]}")
        hidden_size = w_hh.shape[1]
        for label, s in enumerate(states):
            if s.shape[0] != batch:
                raise RuntimeError(f"{name}: Input batch size {batch} doesn't match hidden{label} batch size "
                                   f"{s.shape[0]}")
            if s.size(1) != hidden_size:  # a 1-D state here raises torch.nn's IndexError
                raise RuntimeError(f"{name}: hidden{label} has inconsistent hidden_size: got {s.size(1)}, "
                                   f"expected {hidden_size}")
            if s.dim() != 2:  # a 2-D state for a 1-D input, of a shape torch.nn's kernel would broadcast
                raise RuntimeError(f"{name}: hidden{label} must be 1-D for a 1-D input, got {s.dim() - 1}-D")
        _check_devices(x, w_ih, states, name)
        autocast = torch._C._is_any_autocast_enabled()
        if not autocast:  # inside an autocast region torch.nn lets the dtypes differ (its kernels cast them)
            if x.dtype != w_ih.dtype:
                raise DtypeMismatchError(f"{name}: input dtype ({x.dtype}) does not match weight dtype "
                                         f"({w_ih.dtype}). Convert input: input.to({w_ih.dtype}), "
                                         f"or convert model: model.to({x.dtype})")
            _check_state_dtypes(x, states, name)
        if hx is None:
            h0 = torch.zeros(batch, self.hidden_size, dtype=x.dtype, device=x.device)
            c0 = torch.zeros_like(h0) if is_lstm else None
        else:
            h0, c0 = states[0], (states[1] if is_lstm else None)
        seq = x.unsqueeze(0)  # one step: [1, B, I]
        args = (w_ih, w_hh, b_ih, b_hh)
        if self._uses_ext_ops:
            needs_grad = _saves_activations(self.parameters, x, h0, c0)
            self._check_ext_device(x, name)
            _, hy, cy = self._run_ext(seq, None, h0, c0, (*args, None), self._ln_pairs(""), False, needs_grad)
            if is_lstm:
                return (hy, cy) if batched else (hy.squeeze(0), cy.squeeze(0))
            return hy if batched else hy.squeeze(0)
        # The op's own tensors are all a gradient can reach, so only they are asked (not self.parameters()).
        needs_grad = _saves_activations(lambda: args, x, h0, c0)
        out_dtype, c_dtype = (_autocast_dtypes(mode, x, packed=False, proj=False, cell=True) if autocast
                              else (None, None))
        if is_lstm:
            _, hy, cy, _ = _fwd.lstm_forward(seq, None, h0, c0, *args, None, False, needs_grad)
            hy, cy = _cast(hy, out_dtype), _cast(cy, c_dtype)
            return (hy, cy) if batched else (hy.squeeze(0), cy.squeeze(0))
        if mode == "GRU":
            _, hy, _ = _fwd.gru_forward(seq, None, h0, *args, False, needs_grad)
        else:
            _, hy = _fwd.rnn_forward(seq, None, h0, *args, mode == "RNN_RELU", False)
        hy = _cast(hy, out_dtype)
        return hy if batched else hy.squeeze(0)

    def forward(self, input: Tensor, hx=None):
        # The call a decoder makes once per token (2-D tensors of the module's dtype, a state given, none of
        # fastrnn's options, no autocast, tracing or compiling) goes straight to the op: _step's checks, in
        # torch.nn's order and with its messages, cost 20 to 30 us a call (2-core Zen 3), as much as the op.
        # The op checks shapes, dtypes and devices itself; where it refuses, _step runs the call again and
        # raises torch.nn's error (the forward ops change nothing before their checks pass).
        mode = self.mode
        if (type(input) is Tensor and input.dim() == 2 and hx is not None and not self.layer_norm
                and self._zoneout_rates == (0.0, 0.0) and not torch._C._is_any_autocast_enabled()
                and not _tracing_or_compiling()):
            try:
                return self._fast_step(mode, input, hx)
            except _FastPathRefused:
                pass
            except (RuntimeError, ValueError, TypeError, IndexError):
                pass  # _step raises torch.nn's error for it (or this one again)
        return self._step(input, hx)

    def _fast_step(self, mode: str, x: Tensor, hx):
        if mode == "LSTM":
            if type(hx) is not tuple or len(hx) != 2:
                raise _FastPathRefused
            h0, c0 = hx
            if type(h0) is not Tensor or type(c0) is not Tensor or h0.dim() != 2 or c0.dim() != 2:
                raise _FastPathRefused
        else:
            if type(hx) is not Tensor or hx.dim() != 2:
                raise _FastPathRefused
            h0, c0 = hx, None
            if mode[0] == "R" and self.nonlinearity not in ("tanh", "relu"):
                raise _FastPathRefused
        # Straight from the parameter dict: nn.Module.__getattr__ took 6 us for the four. A weight that is not
        # there (parametrized, or replaced by a hook such as weight_norm's) sends the call to _step.
        params = self._parameters
        if "weight_ih" not in params or "weight_hh" not in params or "bias_ih" not in params or \
                "bias_hh" not in params:
            raise _FastPathRefused
        w_ih, w_hh, b_ih, b_hh = params["weight_ih"], params["weight_hh"], params["bias_ih"], params["bias_hh"]
        train = torch.is_grad_enabled() and torch._C._any_requires_grad(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        if fwAD._current_level < 0 and not torch._C._are_functorch_transforms_active():
            # The ops called from C++ (csrc/cell_autograd.cpp): training with their autograd node in C++, not the
            # Python autograd.Function, whose overhead was half an RNNCell step's forward; decoding below
            # autograd with train=False, without torch.ops' boxed call.
            out = (_cell_step if train else _cell_forward)(_CELL_KIND[mode], x, h0, c0, w_ih, w_hh, b_ih, b_hh)
            return tuple(out) if mode == "LSTM" else out[0]
        # torch.func transforms, forward-mode AD: the ops' Python autograd (ops.py), which serves both.
        seq = x.unsqueeze(0)  # one step: [1, B, I]
        if mode == "LSTM":
            _, hy, cy, _ = _fwd.lstm_forward(seq, None, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False, train)
            return hy, cy
        if mode == "GRU":
            return _fwd.gru_forward(seq, None, h0, w_ih, w_hh, b_ih, b_hh, False, train)[1]
        return _fwd.rnn_forward(seq, None, h0, w_ih, w_hh, b_ih, b_hh, mode == "RNN_RELU", False)[1]

    def __prepare_scriptable__(self):
        _refuse_scripting(self)


class LSTMCell(_CellBase):
    """Drop-in torch.nn.LSTMCell: returns (h_1, c_1). Options beyond torch.nn, as fastrnn.LSTM's: layer_norm
    (parameters ln_{ih,hh,c}_{weight,bias}) and zoneout (each call draws its masks); the sequence-level
    weight_drop and recurrent_dropout need the whole sequence in one call: use fastrnn.LSTM."""

    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 layer_norm: bool = False, zoneout=0.0) -> None:
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype)
        self._init_options([""], layer_norm, zoneout, 0.0, 0.0, {"device": device, "dtype": dtype})


class GRUCell(_CellBase):
    """Drop-in torch.nn.GRUCell: returns h_1. Options beyond torch.nn: layer_norm and zoneout, as
    fastrnn.LSTMCell's."""

    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 layer_norm: bool = False, zoneout: float = 0.0) -> None:
        super().__init__("GRU", input_size, hidden_size, bias, device, dtype)
        self._init_options([""], layer_norm, zoneout, 0.0, 0.0, {"device": device, "dtype": dtype})


class RNNCell(_CellBase):
    """Drop-in torch.nn.RNNCell (nonlinearity 'tanh' or 'relu'): returns h_1."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None) -> None:
        super().__init__("RNN_TANH", input_size, hidden_size, bias, device, dtype)
        # Checked when the cell is called, as torch.nn.RNNCell does (RuntimeError "Unknown nonlinearity").
        self.nonlinearity = nonlinearity

    @property
    def mode(self) -> str:  # read at every call, as torch.nn.RNNCell reads its nonlinearity
        return "RNN_RELU" if self.nonlinearity == "relu" else "RNN_TANH"
