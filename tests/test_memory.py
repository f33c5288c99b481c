"""Peak memory of a training step (forward + backward) against torch.nn's, on the CPU.

Measured as fastrnn.bench measures memory (fastrnn.bench.measure.cpu_peak_bytes: the CPU allocator's
allocations during one call, from torch.profiler's memory records, counting only blocks allocated during the
call, so frees of blocks from earlier calls cannot shift the peak down).

The shape is small enough to run in seconds and large enough for the per-sequence buffers ([N, *] with
N = T * B rows) to dominate the peak, as they do in real training. Measured on it (fastrnn / torch.nn):
LSTM 0.52, GRU 0.99, RNN 0.79; batch_first GRU 0.98; bidirectional GRU 0.90, RNN 0.98 (each layer one bidir op,
whose saved activations of both directions live until its backward ends; 0.86 and 0.84 as two one-direction ops). (At the issue's
T=20, B=256, I=H=512: LSTM 0.53, GRU 0.98, RNN 0.95; before: 0.84, 1.70, 1.62.)
"""
import pytest
import torch

from common import make_pair
from fastrnn.bench.measure import cpu_peak_bytes as peak_bytes

BOUND = 1.05  # fastrnn's peak may exceed torch.nn's by at most this factor
T, B, I, H = 16, 128, 256, 256


def training_step(module, x, grad):
    params = list(module.parameters())

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        out, _ = module(x)
        torch.autograd.backward([out], [grad])
    return step


CONFIGS = [("LSTM", {}), ("GRU", {}), ("RNN_TANH", {}), ("RNN_RELU", {}),
           ("GRU", {"batch_first": True}), ("RNN_TANH", {"batch_first": True}),
           ("GRU", {"bidirectional": True}), ("RNN_RELU", {"bidirectional": True}),
           ("LSTM", {"bidirectional": True, "batch_first": True})]


@pytest.mark.parametrize("mode,kw", CONFIGS,
                         ids=[m + "".join(f"-{k}" for k in kw) for m, kw in CONFIGS])
def test_training_step_peak_memory(mode, kw):
    torch.manual_seed(0)
    fast, ref = make_pair(mode, I, H, **kw)
    dirs = 2 if kw.get("bidirectional") else 1
    shape = (B, T) if kw.get("batch_first") else (T, B)
    x = torch.randn(*shape, I).requires_grad_()
    grad = torch.randn(*shape, dirs * H)
    torch_peak = peak_bytes(training_step(ref, x, grad))
    fast_peak = peak_bytes(training_step(fast, x, grad))
    assert torch_peak > 2 * T * B * H * 4  # the measurement sees the step's [N, H] buffers
    ratio = fast_peak / torch_peak
    assert ratio <= BOUND, (f"{mode} {kw}: fastrnn's training step peaks at {fast_peak / 2**20:.1f} MiB, "
                            f"torch.nn's at {torch_peak / 2**20:.1f} MiB ({ratio:.2f}x)")
