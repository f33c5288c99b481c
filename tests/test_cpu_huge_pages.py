"""The CPU kernels' large per-call buffers on transparent huge pages (csrc/cpu/huge_pages.h): a training
forward's workspace, a backward's gate gradients and the up-front x-projection, when 32 MB or more, are
advised MADV_HUGEPAGE before their first write. The advice changes no number, takes effect where the kernel
honours it, and FASTRNN_CPU_HUGE_PAGES=0 turns it off."""
import os

import pytest
import torch

import fastrnn
from common import assert_close, make_pair

ops = torch.ops.fastrnn

# T * B rows of an LSTM workspace of 5H floats: 100 * 70 * 1280 * 4 bytes = 34 MB, over the 32 MB threshold.
T, B, I, H = 100, 70, 8, 256


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "absent"


def _anon_huge_bytes():
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no AnonHugePages line in /proc/self/smaps_rollup")


def _workspace_on_huge_pages():
    """Bytes of huge pages a training forward's workspace (34 MB) holds while it is alive."""
    g = torch.Generator().manual_seed(0)
    x, hx = torch.randn(T, B, I, generator=g), torch.zeros(B, H)
    w_ih, w_hh = torch.randn(4 * H, I, generator=g) * 0.1, torch.randn(4 * H, H, generator=g) * 0.1
    before = _anon_huge_bytes()
    out = ops.lstm_forward(x, None, hx, hx, w_ih, w_hh, None, None, None, False, True)
    assert out[3].nbytes >= 32 << 20
    return _anon_huge_bytes() - before


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup") or _thp_mode() not in ("madvise", "always"),
                    reason="needs Linux with transparent huge pages (madvise or always)")
def test_workspace_lands_on_huge_pages(monkeypatch):
    monkeypatch.setenv("FASTRNN_CPU_HUGE_PAGES", "1")
    assert _workspace_on_huge_pages() >= 2 << 20
    if _thp_mode() == "madvise":  # (under "always" every large mapping gets them, advised or not)
        monkeypatch.setenv("FASTRNN_CPU_HUGE_PAGES", "0")
        assert _workspace_on_huge_pages() == 0


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_advice_changes_no_number(kind, monkeypatch):
    """A training step with buffers over the threshold (workspace, gate gradients), with and without the
    advice: the same bits; and both match torch.nn."""
    results = []
    for env in ("1", "0"):
        monkeypatch.setenv("FASTRNN_CPU_HUGE_PAGES", env)
        torch.manual_seed(0)
        m, ref = make_pair(kind.upper(), I, H)
        x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(1), requires_grad=True)
        out, _ = m(x)
        out.square().sum().backward()
        results.append([out.detach(), x.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(1))
    assert_close(results[0][0], ref(x)[0].detach(), torch.float32, "output vs torch.nn")


def test_bad_switch_is_a_value_error(monkeypatch):
    monkeypatch.setenv("FASTRNN_CPU_HUGE_PAGES", "yes")
    m = fastrnn.LSTM(4, 5)
    with pytest.raises(ValueError, match="FASTRNN_CPU_HUGE_PAGES must be 0 or 1, got 'yes'"):
        m(torch.randn(3, 2, 4, requires_grad=True))[0].sum().backward()
