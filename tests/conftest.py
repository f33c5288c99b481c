import os
import sys

import pytest
import torch

# Import fastrnn (and tests/common.py) from this checkout, built in place, whatever directory pytest runs in.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (_HERE, _ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)


# Full float32 precision on CUDA: torch.nn's cuDNN RNNs would otherwise use TF32 and miss TOL[float32].
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state (module init, dropout)."""
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # torch.nn's own LSTM falls back from oneDNN for projections and says so; not about fastrnn.
    config.addinivalue_line("filterwarnings", "ignore:LSTM with projections is not supported with oneDNN")
