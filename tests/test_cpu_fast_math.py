"""Accuracy of the CPU kernels' float32 gate activations (csrc/cpu/fast_math.h: a polynomial exp behind
sigmoid and tanh on AVX2/AVX-512; Sleef's where FASTRNN_CPU_FAST_MATH=0 or on the default build), over a
dense grid and the special values, against torch's float64 functions; and that the step kernels compute
exactly these functions."""
import math

import pytest
import torch

import fastrnn  # noqa: F401
import fastrnn._testing_ops  # noqa: F401  fakes of the test-only ops

_ops = torch.ops.fastrnn
# The bound fast_math.h states (measured on this grid: 8.9e-8 sigmoid, 1.8e-7 tanh).
MAX_ABS_ERR = 1e-6
CAPABILITIES = ["default", "avx2", "avx512"]


def _grid():
    dense = torch.linspace(-100.0, 100.0, 2_000_001, dtype=torch.float32)  # step 1e-4
    fine = torch.linspace(-1.0, 1.0, 200_001, dtype=torch.float32)  # step 1e-5 near 0
    special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 87.3, -87.3, 88.3, -88.3, 88.8, -88.8,
                            89.0, -104.0, 1e4, -1e4, 1e30, -1e30, 3.4e38, -3.4e38,
                            math.inf, -math.inf, math.nan], dtype=torch.float32)
    return torch.cat([dense, fine, special])


@pytest.mark.parametrize("fast", ["1", "0"])
@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("fn", ["sigmoid", "tanh"])
def test_activation_accuracy(fn, capability, fast, monkeypatch):
    monkeypatch.setenv("FASTRNN_CPU_CAPABILITY", capability)
    monkeypatch.setenv("FASTRNN_CPU_FAST_MATH", fast)
    x = _grid()
    got = _ops._cpu_activation(x, fn)
    ref = getattr(torch, fn)(x.double())
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(got), nan), "NaN must map to NaN, and nothing else to NaN"
    err = (got.double() - ref)[~nan].abs()
    worst = int(err.argmax())
    assert err.max().item() <= MAX_ABS_ERR, (
        f"{fn} {capability} fast={fast}: max abs error {err.max().item():.3g} at x={x[~nan][worst].item()!r}")
    # The range is right at the ends too (the clamp): sigmoid in [0, 1], tanh in [-1, 1].
    lo = 0.0 if fn == "sigmoid" else -1.0
    assert got[~nan].min().item() >= lo and got[~nan].max().item() <= 1.0


def test_fast_math_switch_changes_the_function(monkeypatch):
    """On AVX2/AVX-512 processors the switch selects a different implementation (so the accuracy test covers
    both): the polynomial and Sleef do not agree bit for bit everywhere."""
    if not torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        pytest.skip("the polynomial functions are built for AVX2/AVX-512 only")
    x = torch.linspace(-10, 10, 100_001)
    monkeypatch.setenv("FASTRNN_CPU_FAST_MATH", "1")
    fast = _ops._cpu_activation(x, "tanh")
    monkeypatch.setenv("FASTRNN_CPU_FAST_MATH", "0")
    sleef = _ops._cpu_activation(x, "tanh")
    assert not torch.equal(fast, sleef)
    assert (fast - sleef).abs().max().item() <= 2 * MAX_ABS_ERR


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_step_kernels_use_these_activations(capability, monkeypatch):
    """The RNN (tanh) and GRU (z = sigmoid) steps give exactly _cpu_activation's values: every weight is 0
    and the bias carries the pre-activation, so the step computes act(0 + b + 0 + 0) with no rounding."""
    monkeypatch.setenv("FASTRNN_CPU_CAPABILITY", capability)
    H = 1000
    v = torch.linspace(-12, 12, H)
    v[:4] = torch.tensor([math.inf, -math.inf, math.nan, 1e30])
    x = torch.zeros(1, 1, 1)
    h0 = torch.zeros(1, H)
    out, _ = _ops.rnn_forward(x, None, h0, torch.zeros(H, 1), torch.zeros(H, H), v, torch.zeros(H), False, False)
    torch.testing.assert_close(out[0, 0], _ops._cpu_activation(v, "tanh"), rtol=0, atol=0, equal_nan=True)
    # GRU with x_r = x_n = 0, W = 0, h0 = 1: n = tanh(0) = 0 and h' = (1 - z) * 0 + z * 1 = z = sigmoid(b_z).
    b_ih = torch.cat([torch.zeros(H), v, torch.zeros(H)])
    out, _, _ = _ops.gru_forward(x, None, torch.ones(1, H), torch.zeros(3 * H, 1), torch.zeros(3 * H, H), b_ih,
                                 torch.zeros(3 * H), False, False)
    torch.testing.assert_close(out[0, 0], _ops._cpu_activation(v, "sigmoid"), rtol=0, atol=0, equal_nan=True)


def test_cpu_activation_rejects_bad_input():
    with pytest.raises(TypeError, match="float32"):
        _ops._cpu_activation(torch.zeros(3, dtype=torch.float64), "tanh")
    with pytest.raises(ValueError, match="'sigmoid' or 'tanh'"):
        _ops._cpu_activation(torch.zeros(3), "relu")
