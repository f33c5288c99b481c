"""fastrnn: fused LSTM/GRU/RNN kernels for PyTorch, as drop-in replacements for torch.nn's recurrent layers."""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  registers the fastrnn:: operators
from . import ops  # noqa: F401  registers fake kernels and autograd
from . import onnx  # noqa: F401  ONNX translations (imports neither onnx nor onnxscript)
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]
__version__ = "0.1.0"
