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

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import ops  # noqa: F401  (registers autograd and fake kernels)

_ops = torch.ops.fastrnn
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _check_input_dtype(input: Tensor, weight: Tensor, module: str) -> None:
    # ValueError, as torch.nn's RNN modules raise for a non-float input or a dtype mismatch.
    if not input.is_floating_point():
        raise ValueError(f"{module}: input must be a floating-point tensor, got {input.dtype}")
    # Inside an autocast region torch.nn lets the dtypes differ (the kernels cast them), and so does fastrnn.
    if input.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
        raise ValueError(f"{module}: input dtype {input.dtype} does not match the parameters' dtype "
                        f"{weight.dtype}; convert one of them (e.g. module.to({input.dtype}))")
    if input.device != weight.device:
        raise RuntimeError(f"{module}: input is on {input.device} but the parameters are on {weight.device}")


def _check_hidden(name: str, h: Tensor, expected: Tuple[int, ...], input: Tensor, module: str) -> None:
    if not isinstance(h, Tensor):
        raise TypeError(f"{module}: {name} must be a Tensor, got {type(h).__name__}")
    if tuple(h.shape) != tuple(expected):
        raise RuntimeError(f"{module}: Expected hidden size {tuple(expected)} for {name}, got {tuple(h.shape)}")
    if h.dtype != input.dtype:
        raise TypeError(f"{module}: {name} dtype {h.dtype} does not match the input's {input.dtype}")
    if h.device != input.device:
        raise RuntimeError(f"{module}: {name} is on {h.device} but the input is on {input.device}")


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


def _saves_activations(params: List[Tensor], *tensors: Optional[Tensor]) -> bool:
    """The ops' `train` flag: save the activations the backward needs whenever a gradient may be asked for.
    Under torch.jit.trace it is always True: the flag becomes a constant of the traced graph, which must
    stay differentiable whatever the grad mode at trace time (torch.nn's traced modules can be trained), and
    trace's own check re-runs the module in another grad mode and requires the same graph."""
    if torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and (
        any(t is not None and t.requires_grad for t in tensors) or any(p.requires_grad for p in params))


def _cast(t: Optional[Tensor], dtype: Optional[torch.dtype]) -> Optional[Tensor]:
    return t if t is None or dtype is None else t.to(dtype)


class _RNNBase(nn.RNNBase):
    """The forward shared by LSTM, GRU and RNN. The constructor (argument checks, parameters, initialisation),
    extra_repr, all_weights and pickling are torch.nn.RNNBase's own."""

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
        return w_ih, w_hh, b_ih, b_hh, w_hr

    def _run_layer(self, x, batch_sizes, h0, c0, params, reverse, train):
        """One layer in one direction; returns (output, h_n, c_n or None)."""
        w_ih, w_hh, b_ih, b_hh, w_hr = params
        if self.mode == "LSTM":
            out, hy, cy, _ = _ops.lstm_forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, train)
            return out, hy, cy
        if self.mode == "GRU":
            out, hy, _ = _ops.gru_forward(x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reverse, train)
            return out, hy, None
        out, hy = _ops.rnn_forward(x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, self.mode == "RNN_RELU", reverse)
        return out, hy, None

    def _forward(self, input, hx):
        name = type(self).__name__
        is_lstm = self.mode == "LSTM"
        num_directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        w0 = self.weight_ih_l0
        is_packed = isinstance(input, PackedSequence)
        if is_packed:
            x, batch_sizes, sorted_indices, unsorted_indices = input
            if batch_sizes.dim() != 1 or batch_sizes.numel() == 0:
                raise ValueError(f"{name}: PackedSequence has no steps (batch_sizes {tuple(batch_sizes.shape)})")
            batch = int(batch_sizes[0])
            batched = True
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"{name}: input must be a Tensor or a PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor")
            batched = input.dim() == 3
            batch_sizes, sorted_indices, unsorted_indices = None, None, None
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            if x.shape[0] == 0:  # RuntimeError, like torch.nn
                raise RuntimeError(f"{name}: Expected sequence length to be larger than 0 in RNN, got input of "
                                 f"shape {tuple(input.shape)}")
            batch = x.shape[1]
        _check_input_dtype(x, w0, name)
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"{name}: input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {x.shape[-1]}")

        h_shape = (self.num_layers * num_directions, batch, real_hidden)
        c_shape = (self.num_layers * num_directions, batch, self.hidden_size)
        if hx is None:
            h0 = torch.zeros(h_shape, dtype=x.dtype, device=x.device)
            c0 = torch.zeros(c_shape, dtype=x.dtype, device=x.device) if is_lstm else None
        else:
            if is_lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError(f"{name}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
                h0, c0 = hx
            else:
                if not isinstance(hx, Tensor):
                    raise TypeError(f"{name}: hx must be a Tensor, got {type(hx).__name__}")
                h0, c0 = hx, None
            states = [("h_0" if is_lstm else "hx", h0)] + ([("c_0", c0)] if is_lstm else [])
            for sname, s in states:
                if not isinstance(s, Tensor):
                    raise TypeError(f"{name}: {sname} must be a Tensor, got {type(s).__name__}")
                if not batched and s.dim() != 2:
                    raise RuntimeError(f"{name}: For unbatched 2-D input, {sname} should also be 2-D but got "
                                       f"{s.dim()}-D tensor")
                if batched and s.dim() != 3:
                    raise RuntimeError(f"{name}: For batched 3-D input, {sname} should also be 3-D but got "
                                       f"{s.dim()}-D tensor")
            if not batched:
                h0 = h0.unsqueeze(1)
                c0 = c0.unsqueeze(1) if is_lstm else None
            if sorted_indices is not None:
                h0 = h0.index_select(1, sorted_indices)
                c0 = c0.index_select(1, sorted_indices) if is_lstm else None
            _check_hidden("h_0" if is_lstm else "hx", h0, h_shape, x, name)
            if is_lstm:
                _check_hidden("c_0", c0, c_shape, x, name)

        needs_grad = _saves_activations(self._flat_weights, x, h0, c0)
        h_n, c_n = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for direction in range(num_directions):
                idx = layer * num_directions + direction
                out, hy, cy = self._run_layer(layer_input, batch_sizes, h0[idx], c0[idx] if is_lstm else None,
                                              self._layer_params(layer, direction), direction == 1, needs_grad)
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
    """Drop-in torch.nn.LSTM: same constructor, parameters and outputs (output, (h_n, c_n))."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype)


class GRU(_RNNBase):
    """Drop-in torch.nn.GRU: same constructor, parameters and outputs (output, h_n)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype)


class RNN(_RNNBase):
    """Drop-in torch.nn.RNN (nonlinearity 'tanh' or 'relu'): same constructor, parameters and outputs."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype)


# ------------------------------------------------------------------------------------------------ cells
class _CellBase(nn.RNNCellBase):
    """The forward shared by the single-step cells: one step of the sequence op (T=1). Parameters,
    initialisation and extra_repr are torch.nn.RNNCellBase's own."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool, device, dtype) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=_GATES[mode], device=device, dtype=dtype)
        self.mode = mode

    def _step(self, input: Tensor, hx):
        name = type(self).__name__
        is_lstm = self.mode == "LSTM"
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        _check_input_dtype(input, self.weight_ih, name)
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"{name}: input has inconsistent input_size: got {input.shape[-1]} expected "
                               f"{self.input_size}")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        batch = x.shape[0]
        if hx is None:
            h0 = torch.zeros(batch, self.hidden_size, dtype=x.dtype, device=x.device)
            c0 = torch.zeros_like(h0) if is_lstm else None
        else:
            if is_lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError(f"{name}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
                h0, c0 = hx
            else:
                h0, c0 = hx, None
            for sname, s in [("h_0" if is_lstm else "hx", h0)] + ([("c_0", c0)] if is_lstm else []):
                if not isinstance(s, Tensor):
                    raise TypeError(f"{name}: {sname} must be a Tensor, got {type(s).__name__}")
                if s.dim() != input.dim():
                    raise RuntimeError(f"{name}: Expected {sname} to be {input.dim()}D like the input, got "
                                       f"{s.dim()}D")
            if not batched:
                h0 = h0.unsqueeze(0)
                c0 = c0.unsqueeze(0) if is_lstm else None
            _check_hidden("h_0" if is_lstm else "hx", h0, (batch, self.hidden_size), x, name)
            if is_lstm:
                _check_hidden("c_0", c0, (batch, self.hidden_size), x, name)
        needs_grad = _saves_activations(list(self.parameters()), x, h0, c0)
        seq = x.unsqueeze(0)  # one step: [1, B, I]
        args = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        out_dtype, c_dtype = _autocast_dtypes(self.mode, x, packed=False, proj=False, cell=True)
        if is_lstm:
            _, hy, cy, _ = _ops.lstm_forward(seq, None, h0, c0, *args, None, False, needs_grad)
            hy, cy = _cast(hy, out_dtype), _cast(cy, c_dtype)
            return (hy, cy) if batched else (hy.squeeze(0), cy.squeeze(0))
        if self.mode == "GRU":
            _, hy, _ = _ops.gru_forward(seq, None, h0, *args, False, needs_grad)
        else:
            _, hy = _ops.rnn_forward(seq, None, h0, *args, self.mode == "RNN_RELU", False)
        hy = _cast(hy, out_dtype)
        return hy if batched else hy.squeeze(0)

    def forward(self, input: Tensor, hx=None):
        return self._step(input, hx)


class LSTMCell(_CellBase):
    """Drop-in torch.nn.LSTMCell: returns (h_1, c_1)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype)


class GRUCell(_CellBase):
    """Drop-in torch.nn.GRUCell: returns h_1."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__("GRU", input_size, hidden_size, bias, device, dtype)


class RNNCell(_CellBase):
    """Drop-in torch.nn.RNNCell (nonlinearity 'tanh' or 'relu'): returns h_1."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: Unknown nonlinearity: {nonlinearity}")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size, bias,
                         device, dtype)
