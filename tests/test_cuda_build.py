"""Compile gate of the CUDA kernels, checked on the built extension (no GPU needed).

Runs `cuobjdump --dump-resource-usage` on fastrnn/_C*.so and asserts that cubins for sm_80 and sm_90 are
present, that every kernel listed in csrc/cuda/register_budget.txt is there for both architectures (and
every fastrnn kernel there is listed), and that each uses no stack or local memory (no register spills)
and at most its register budget. Skipped when the extension was built without CUDA.
"""
import glob
import os
import re
import shutil
import subprocess

import pytest
import torch

import fastrnn  # noqa: F401  (loads fastrnn._C and its op registrations)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_FILE = os.path.join(ROOT, "csrc", "cuda", "register_budget.txt")
ARCHS = ("sm_80", "sm_90")

pytestmark = pytest.mark.skipif(
    not torch._C._dispatch_has_kernel_for_dispatch_key("fastrnn::lstm_forward", "CUDA"),
    reason="fastrnn was built without CUDA kernels",
)


def _cuobjdump():
    candidates = [shutil.which("cuobjdump")]
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        candidates.append(os.path.join(cuda_home, "bin", "cuobjdump"))
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    pytest.skip("cuobjdump not found (PATH, $CUDA_HOME/bin or the triton package)")


def _library():
    import fastrnn._C as ext

    path = ext.__file__
    assert path and os.path.isfile(path), "cannot locate the built fastrnn._C library"
    return path


def _budgets():
    budgets = {}
    with open(BUDGET_FILE) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, regs = line.split()
            budgets[name] = int(regs)
    assert budgets, f"{BUDGET_FILE} lists no kernels"
    return budgets


def parse_resource_usage(text):
    """[(arch, mangled function name, {REG: .., STACK: .., LOCAL: .., ...})] from cuobjdump's report."""
    out, arch, func = [], None, None
    for line in text.splitlines():
        m = re.match(r"\s*arch\s*=\s*(sm_\d+a?)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function\s+(\S+?):\s*$", line)
        if m:
            func = m.group(1)
            continue
        if func is not None and "REG:" in line:
            fields = {k: int(v) for k, v in re.findall(r"([A-Z_]+(?:\[\d+\])?):(\d+)", line)}
            out.append((arch, func, fields))
            func = None
    return out


@pytest.fixture(scope="module")
def usage():
    res = subprocess.run([_cuobjdump(), "--dump-resource-usage", _library()], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rows = parse_resource_usage(res.stdout)
    assert rows, "cuobjdump reported no kernels in " + _library()
    return rows


def test_parser_reads_cuobjdump_format():
    text = (
        "arch = sm_80\nResource usage:\n Function _ZN7fastrnn4cuda19rnn_fwd_step_kernelIfEEvNS0_13FwdStepParamsE:\n"
        "  REG:48 STACK:16 SHARED:0 LOCAL:12 CONSTANT[0]:464 TEXTURE:0 SURFACE:0 SAMPLER:0\n"
    )
    [(arch, name, f)] = parse_resource_usage(text)
    assert arch == "sm_80" and "rnn_fwd_step_kernel" in name
    assert f["REG"] == 48 and f["STACK"] == 16 and f["LOCAL"] == 12


def test_cubins_for_every_arch(usage):
    archs = {a for a, _, _ in usage}
    for a in ARCHS:
        assert a in archs, f"no {a} cubin in {_library()} (found {sorted(archs)})"


def test_every_kernel_has_a_budget_and_every_budget_a_kernel(usage):
    budgets = _budgets()
    kernels = [(a, n) for a, n, _ in usage if "fastrnn" in n]
    assert kernels, "no fastrnn kernels in the cubins"
    for a, n in kernels:
        matches = [k for k in budgets if k in n]
        assert len(matches) == 1, f"{n} ({a}) matches budget entries {matches}; expected exactly one"
    for k in budgets:
        for a in ARCHS:
            assert any(k in n for arch, n in kernels if arch == a), f"budget entry {k} matches no {a} kernel"


def test_no_spills_and_registers_within_budget(usage):
    budgets = _budgets()
    bad = []
    for a, n, f in usage:
        if "fastrnn" not in n:
            continue
        budget = next(v for k, v in budgets.items() if k in n)
        if f.get("STACK", 0) != 0 or f.get("LOCAL", 0) != 0:
            bad.append(f"{a} {n}: STACK:{f.get('STACK')} LOCAL:{f.get('LOCAL')} (register spills)")
        if f["REG"] > budget:
            bad.append(f"{a} {n}: REG:{f['REG']} > budget {budget}")
    assert not bad, "\n".join(bad)
