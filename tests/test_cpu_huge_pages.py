"""The CPU kernels' large per-call buffers on transparent huge pages (csrc/cpu/huge_pages.h): a training
forward's workspace, a backward's gate gradients and the up-front x-projection, when 32 MB or more, are
advised MADV_HUGEPAGE before their first write. The advice changes no number, marks the buffer's mapping
eligible for huge pages, and FASTRNN_CPU_HUGE_PAGES=0 turns it off."""
import os
import subprocess
import sys

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


def _thp_eligible(address):
    """The THPeligible flag of the mapping that holds `address` (/proc/self/smaps): whether the kernel may back
    it with huge pages, which under the "madvise" mode means it was advised. (Whether it then found free huge
    pages depends on the machine's memory, not on fastrnn.)"""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:  # a mapping's first line: start-end perms ...
                start, end = (int(v, 16) for v in head.split("-"))
                inside = start <= address < end
            elif inside and head == "THPeligible:":
                return line.split()[1] == "1"
    raise AssertionError(f"no mapping with a THPeligible line holds {address:#x}")


def _workspace_eligible():
    """Whether the interior of a training forward's workspace (34 MB) may sit on huge pages."""
    g = torch.Generator().manual_seed(0)
    x, hx = torch.randn(T, B, I, generator=g), torch.zeros(B, H)
    w_ih, w_hh = torch.randn(4 * H, I, generator=g) * 0.1, torch.randn(4 * H, H, generator=g) * 0.1
    ws = ops.lstm_forward(x, None, hx, hx, w_ih, w_hh, None, None, None, False, True)[3]
    assert ws.nbytes >= 32 << 20
    return _thp_eligible(ws.data_ptr() + ws.nbytes // 2)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps") or _thp_mode() not in ("madvise", "always"),
                    reason="needs Linux with transparent huge pages (madvise or always)")
def test_workspace_is_advised(monkeypatch):
    monkeypatch.setenv("FASTRNN_CPU_HUGE_PAGES", "1")
    assert _workspace_eligible()
    if _thp_mode() == "madvise":  # (under "always" every large mapping is eligible, advised or not)
        # Off, in a fresh process: in this one, after the suite's many large buffers, the allocator can hand out
        # memory in a mapping an earlier call advised (seen once in a clean-clone CI run).
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ, FASTRNN_CPU_HUGE_PAGES="0",
                   PYTHONPATH=os.pathsep.join([os.path.dirname(here), here, os.environ.get("PYTHONPATH", "")]))
        code = "import test_cpu_huge_pages as t; print(t._workspace_eligible())"
        res = subprocess.run([sys.executable, "-c", code], env=env, cwd=here, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip().splitlines()[-1] == "False"


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
