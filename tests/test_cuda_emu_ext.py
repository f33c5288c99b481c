"""The REAL CUDA pointwise step kernels of the regularised cells (csrc/cuda/ext_step_kernel.cuh: LSTM and GRU with
layer_norm, zoneout, recurrent_dropout; forward and backward, plus the projection's ext_mix / ext_split) executed
on the CPU by the emulation harness (tests/cuda_emu), in three builds: plain, ASan+UBSan, TSan.

tests/cuda_emu/ext_kernels_driver.cpp launches the kernels with their launch configuration (one block of 256
threads per batch row) and runs the host loops of csrc/cuda/{lstm,gru}_ext_cuda.cpp around them (the per-step
GEMMs as plain loops). Each sub-case runs the forward and then the backward from the forward's own output and
workspace. Checked against fastrnn.composite (the ops in plain PyTorch): forward values, and the gradients of
sum(output * go) + sum(hy * ghy) + sum(cy * gcy) against torch.autograd.grad through the composite. The workspace
is checked against the CPU op where it is registered (same layout by contract, fastrnn.cpp).
Every variant runs all of its cases in one process (the driver's `batch` case).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

_BUILD_PY = Path(__file__).resolve().parent / "cuda_emu" / "build.py"
_spec = importlib.util.spec_from_file_location("cuda_emu_build", _BUILD_PY)
emu = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cuda_emu_build", emu)
_spec.loader.exec_module(emu)

from fastrnn import composite  # noqa: E402  (plain PyTorch: the oracle needs no extension)

SRC = emu.EMU_DIR / "ext_kernels_driver.cpp"
VARIANTS = ("plain", "asan", "tsan")
DROP_SYNC = "FASTRNN_EMU_DROP_EXT_SYNC"
RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Case:
    cell: str  # "lstm" | "gru"
    H: int
    batch_sizes: tuple
    packed: bool = False
    reverse: bool = False
    ln: bool = False  # LayerNorm on W_hh h
    lnc: bool = False  # LayerNorm on c (LSTM)
    zo: str = "off"  # zoneout: "off", "mask" (0/1 per row and unit), "const" (one element)
    mask: bool = False  # recurrent dropout mask
    P: int = 0  # LSTM projection
    bias: bool = True  # GRU b_hh
    dtype: torch.dtype = torch.float64
    train: bool = True

    @property
    def id(self) -> str:
        bs = "x".join(map(str, self.batch_sizes))
        opts = [o for o, on in (("ln", self.ln), ("lnc", self.lnc), ("mask", self.mask)) if on]
        if self.zo != "off":
            opts.append(f"zo{self.zo}")
        return (f"{self.cell}-H{self.H}{f'-P{self.P}' if self.P else ''}-{'packed' if self.packed else 'dense'}{bs}"
                f"{'-rev' if self.reverse else ''}{''.join('-' + o for o in opts)}{'' if self.bias else '-nobias'}"
                f"{'' if self.train else '-infer'}-{'f64' if self.dtype == torch.float64 else 'f32'}")

    @property
    def K(self) -> int:
        return self.P or self.H

    @property
    def G(self) -> int:
        return (4 if self.cell == "lstm" else 3) * self.H


def C(cell, H, bs, **kw):
    bs = tuple(bs)
    if not kw.get("packed", False):
        assert len(set(bs)) == 1, "dense cases have equal batch sizes"
    return Case(cell, H, bs, **kw)


F32 = dict(dtype=torch.float32)
ALL = dict(ln=True, zo="mask", mask=True)
# H not a multiple of 32 (13, 40) and H > 256 (300: units strided over the block's threads, two per thread for
# some), packed sequences ending at different steps in both directions, every option alone and together.
PLAIN_CASES = [
    C("lstm", 13, [3, 3, 3]),
    C("lstm", 13, [3, 3, 2, 1], packed=True, ln=True),
    C("lstm", 40, [3, 3, 2, 1], packed=True, reverse=True, lnc=True),
    C("lstm", 40, [2, 2, 2], ln=True, lnc=True, zo="mask", mask=True),
    C("lstm", 13, [3, 3, 2, 1], packed=True, reverse=True, zo="const", mask=True, ln=True, lnc=True),
    C("lstm", 13, [3, 3, 2, 1], packed=True, P=7, **ALL, lnc=True),
    C("lstm", 40, [3, 3, 2, 1], packed=True, reverse=True, P=35, zo="const", lnc=True),
    C("lstm", 13, [2, 2], P=5, mask=True, **F32),
    C("lstm", 300, [2, 1], packed=True, ln=True, lnc=True, zo="mask", mask=True),
    C("lstm", 40, [3, 3, 2, 1], packed=True, zo="mask", **F32),
    C("lstm", 13, [3, 3, 2, 1], packed=True, reverse=True, **ALL, lnc=True, **F32),
    C("lstm", 13, [3, 3, 3], ln=True, lnc=True, zo="mask", mask=True, train=False),
    C("gru", 13, [3, 3, 3]),
    C("gru", 13, [3, 3, 2, 1], packed=True, ln=True),
    C("gru", 40, [3, 3, 2, 1], packed=True, reverse=True, zo="mask", mask=True),
    C("gru", 40, [2, 2, 2], reverse=True, **ALL),
    C("gru", 13, [3, 3, 2, 1], packed=True, zo="const", ln=True, bias=False),
    C("gru", 300, [2, 1], packed=True, reverse=True, **ALL),
    C("gru", 13, [3, 3, 2, 1], packed=True, reverse=True, **ALL, **F32),
    C("gru", 40, [3, 3, 2, 1], packed=True, mask=True, **F32),
    C("gru", 13, [2, 2], zo="const", mask=True, train=False, **F32),
]
ASAN_CASES = [
    C("lstm", 13, [3, 3, 2, 1], packed=True, reverse=True, **ALL, lnc=True),
    C("lstm", 13, [3, 2, 1], packed=True, P=7, zo="const", ln=True, lnc=True, mask=True, **F32),
    C("lstm", 300, [1], lnc=True, zo="mask"),
    C("gru", 40, [3, 3, 2, 1], packed=True, **ALL),
    C("gru", 300, [1], ln=True, **F32),
]
TSAN_CASES = [
    C("lstm", 13, [2, 1], packed=True, reverse=True, **ALL, lnc=True),
    C("lstm", 13, [2, 1], packed=True, P=5, ln=True, lnc=True, zo="const", **F32),
    C("gru", 40, [2, 1], packed=True, **ALL, **F32),
    C("gru", 300, [1], ln=True, zo="mask"),
]
CASES = {"plain": PLAIN_CASES, "asan": ASAN_CASES, "tsan": TSAN_CASES}


# --------------------------------------------------------------------------------------------- problem data
@dataclass
class Problem:
    case: Case
    gx: torch.Tensor  # [T, B, G] or [N, G]
    bsz: torch.Tensor | None
    hx: torch.Tensor
    cx: torch.Tensor | None
    w_hh: torch.Tensor
    w_hr: torch.Tensor | None
    b_hh: torch.Tensor | None
    ln_hh: tuple | None
    ln_c: tuple | None
    zh: torch.Tensor | None  # [N, K] rows or one element
    zc: torch.Tensor | None
    mask: torch.Tensor | None
    grad_output: torch.Tensor  # [N, K]
    grad_hy: torch.Tensor
    grad_cy: torch.Tensor | None


def make_problem(c: Case, seed: int) -> Problem:
    g = torch.Generator().manual_seed(seed)
    dt, H, K, G = c.dtype, c.H, c.K, c.G
    B, T, N = c.batch_sizes[0], len(c.batch_sizes), sum(c.batch_sizes)
    lstm = c.cell == "lstm"

    def rnd(*shape, scale=1.0, center=0.0):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale + center).to(dt)

    def zoneout(D):
        if c.zo == "const":
            return torch.tensor([0.25], dtype=dt)
        if c.zo == "mask":
            return (torch.rand(N, D, generator=g, dtype=torch.float64) < 0.3).to(dt)
        return None

    s = 1.0 / math.sqrt(H)
    gx = rnd(N, G) if c.packed else rnd(T, B, G)
    return Problem(
        case=c, gx=gx, bsz=torch.tensor(c.batch_sizes, dtype=torch.int64) if c.packed else None,
        hx=rnd(B, K, scale=0.5), cx=rnd(B, H, scale=0.5) if lstm else None,
        w_hh=rnd(G, K, scale=s), w_hr=rnd(c.P, H, scale=s) if c.P else None,
        b_hh=rnd(G, scale=s) if not lstm and c.bias else None,
        ln_hh=(rnd(G, scale=0.5, center=1.0), rnd(G, scale=0.2)) if c.ln else None,
        ln_c=(rnd(H, scale=0.5, center=1.0), rnd(H, scale=0.2)) if c.lnc else None,
        zh=zoneout(K), zc=zoneout(H) if lstm else None,
        mask=((torch.rand(B, K, generator=g, dtype=torch.float64) < 0.7).to(dt) / 0.7) if c.mask else None,
        grad_output=rnd(N, K), grad_hy=rnd(B, K), grad_cy=rnd(B, H) if lstm else None,
    )


def driver_inputs(p: Problem) -> dict:
    c = p.case
    d = {"cell": 0 if c.cell == "lstm" else 1, "reverse": int(c.reverse), "H": c.H, "train": int(c.train),
         "batch_sizes": np.array(c.batch_sizes, dtype=np.int64), "gx": p.gx.reshape(-1, c.G).contiguous(),
         "w_hh": p.w_hh, "hx": p.hx}
    opt = {"cx": p.cx, "w_hr": p.w_hr, "b_hh": p.b_hh, "zh": p.zh, "zc": p.zc, "mask": p.mask}
    if p.ln_hh is not None:
        opt["ln_hh_w"], opt["ln_hh_b"] = p.ln_hh
    if p.ln_c is not None:
        opt["ln_c_w"], opt["ln_c_b"] = p.ln_c
    d.update({k: v for k, v in opt.items() if v is not None})
    if c.train:
        d["grad_output"], d["grad_hy"] = p.grad_output, p.grad_hy
        if p.grad_cy is not None:
            d["grad_cy"] = p.grad_cy
    return d


# --------------------------------------------------------------------------------------------- reference
def _op_zoneout(p: Problem, z):
    """A zoneout tensor in the op's layout ([T, B, D] dense)."""
    c = p.case
    if z is None or z.numel() == 1 or c.packed:
        return z
    return z.reshape(len(c.batch_sizes), c.batch_sizes[0], -1)


def reference(p: Problem):
    """fastrnn.composite in float64 with autograd: (output [N, K], hy, cy, grads by name)."""
    c = p.case
    f64 = torch.float64
    leaf = lambda t: None if t is None else t.detach().to(f64).clone().requires_grad_(True)  # noqa: E731
    gx, hx, cx, w_hh, w_hr, b_hh = (leaf(t) for t in (p.gx, p.hx, p.cx, p.w_hh, p.w_hr, p.b_hh))
    ln_hh = (leaf(p.ln_hh[0]), leaf(p.ln_hh[1])) if p.ln_hh else (None, None)
    ln_c = (leaf(p.ln_c[0]), leaf(p.ln_c[1])) if p.ln_c else (None, None)
    up = lambda t: None if t is None else t.to(f64)  # noqa: E731
    zh, zc, m = up(_op_zoneout(p, p.zh)), up(_op_zoneout(p, p.zc)), up(p.mask)
    if c.cell == "lstm":
        out, hy, cy = composite.lstm_ext_forward(gx, p.bsz, hx, cx, w_hh, w_hr, *ln_hh, *ln_c, zh, zc, m, c.reverse)
    else:
        (out, hy), cy = composite.gru_ext_forward(gx, p.bsz, hx, w_hh, b_hh, *ln_hh, zh, m, c.reverse), None
    out = out.reshape(-1, c.K)
    loss = (out * p.grad_output.to(f64)).sum() + (hy * p.grad_hy.to(f64)).sum()
    if cy is not None:
        loss = loss + (cy * p.grad_cy.to(f64)).sum()
    leaves = {"grad_gates_x": gx, "grad_hx": hx, "grad_cx": cx, "grad_w_hh": w_hh, "grad_w_hr": w_hr,
              "grad_b_hh": b_hh, "grad_ln_hh_w": ln_hh[0], "grad_ln_hh_b": ln_hh[1], "grad_ln_c_w": ln_c[0],
              "grad_ln_c_b": ln_c[1]}
    leaves = {k: v for k, v in leaves.items() if v is not None}
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    return out.detach(), hy.detach(), None if cy is None else cy.detach(), grads


def close(actual, expected, case: Case, what: str, scale: float = 1.0):
    a = torch.as_tensor(np.asarray(actual)).to(torch.float64)
    e = torch.as_tensor(expected).detach().to(torch.float64).reshape(a.shape)
    t = 1e-10 if case.dtype == torch.float64 else 2e-5
    torch.testing.assert_close(a, e, rtol=t * scale, atol=t * scale, msg=lambda m: f"{case.id}: {what}: {m}")


# --------------------------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def binaries():
    support = {v: emu.sanitizer_support(v) for v in VARIANTS}
    jobs = [(SRC, v) for v in VARIANTS if support[v][0]]
    if support["tsan"][0]:
        jobs.append((SRC, "tsan", (DROP_SYNC,)))
    exes = emu.compile_many(jobs)
    return {j[1] + ("-drop" if j[2:] else ""): e for j, e in zip(jobs, exes)}, support


_results: dict = {}


def variant_results(binaries, variant: str):
    exes, support = binaries
    if variant not in exes:
        pytest.skip(f"cuda_emu variant {variant!r} unavailable: {support[variant][1]}")
    if variant not in _results:
        try:
            problems = [make_problem(c, seed) for seed, c in enumerate(CASES[variant])]
            inputs = {"n": len(problems)}
            for k, p in enumerate(problems):
                inputs.update({f"{k}.{n}": v for n, v in driver_inputs(p).items()})
            out = emu.run_driver(SRC, "batch", inputs, variant, timeout=RUN_TIMEOUT_S)

            def sub(k):
                pre = f"{k}."
                return {n[len(pre):]: v for n, v in out.items() if n.startswith(pre)}

            _results[variant] = [(p, sub(k)) for k, p in enumerate(problems)]
        except Exception as e:  # one failed process fails every case of the build; run it once only
            _results[variant] = e
    if isinstance(_results[variant], Exception):
        raise _results[variant]
    return _results[variant]


def _params():
    for v in VARIANTS:
        for i, c in enumerate(CASES[v]):
            yield pytest.param(v, i, id=f"{v}-{c.id}")


def ws_width(c: Case) -> int:
    H = c.H
    if c.cell == "lstm":
        return 6 * H + (4 * H + 1 if c.ln else 0) + (H + 1 if c.lnc else 0)
    return 4 * H + (3 * H + 1 if c.ln else 0)


@pytest.mark.parametrize("variant,index", list(_params()))
def test_ext_kernels_vs_composite(binaries, variant, index):
    p, r = variant_results(binaries, variant)[index]
    c = p.case
    N, T = sum(c.batch_sizes), len(c.batch_sizes)
    # launches: one block per row of the step, 256 threads, 2 x 8 partial sums of shared memory; the projection
    # adds ext_mix after every forward step and ext_split before every backward step
    order = list(reversed(c.batch_sizes) if c.reverse else c.batch_sizes)
    per = 2 if c.P else 1
    esize = 8 if c.dtype == torch.float64 else 4
    assert r["launches"].shape == (per * T, 3)
    assert list(r["launches"][::per, 0]) == order
    assert (r["launches"][:, 1] == 256).all() and (r["launches"][:, 2] == 16 * esize).all()
    if c.train:
        assert list(r["blaunches"][::per, 0]) == order[::-1]

    out, hy, cy, grads = reference(p)
    close(r["output"], out, c, "output")
    close(r["hy"], hy, c, "hy")
    if cy is not None:
        close(r["cy"], cy, c, "cy")
    if not c.train:
        assert "ws" not in r and "grad_gates_x" not in r
        return
    assert r["ws"].shape == (N, ws_width(c)) and np.isfinite(r["ws"]).all()
    for name, g in grads.items():
        # weight gradients sum over rows and steps: a little more rounding
        close(r[name], g, c, name, scale=1 if name in ("grad_gates_x", "grad_hx", "grad_cx") else 4)
    assert set(r) - {"output", "hy", "cy", "ws", "launches", "blaunches"} == set(grads)


def _cpu_ext_ops():
    try:
        import fastrnn  # noqa: F401

        has = torch._C._dispatch_has_kernel_for_dispatch_key
        return has("fastrnn::lstm_ext_forward", "CPU") and has("fastrnn::gru_ext_forward", "CPU")
    except Exception:  # pragma: no cover - extension not built
        return False


@pytest.mark.skipif(not _cpu_ext_ops(), reason="the CPU ext ops are not built")
@pytest.mark.parametrize("index", [pytest.param(i, id=f"plain-{c.id}") for i, c in enumerate(PLAIN_CASES)
                                   if c.train])
def test_ext_workspace_vs_cpu_op(binaries, index):
    """The workspace layout by contract: what the CPU forward op saves, column for column."""
    p, r = variant_results(binaries, "plain")[index]
    c = p.case
    ops = torch.ops.fastrnn
    lnh = p.ln_hh or (None, None)
    if c.cell == "lstm":
        lnc = p.ln_c or (None, None)
        res = ops.lstm_ext_forward(p.gx, p.bsz, p.hx, p.cx, p.w_hh, p.w_hr, *lnh, *lnc, _op_zoneout(p, p.zh),
                                   _op_zoneout(p, p.zc), p.mask, c.reverse, True)
    else:
        res = ops.gru_ext_forward(p.gx, p.bsz, p.hx, p.w_hh, p.b_hh, *lnh, _op_zoneout(p, p.zh), p.mask,
                                  c.reverse, True)
    close(r["ws"], res[-1], c, "workspace (CPU op)", scale=4)
    close(r["output"], res[0].reshape(-1, c.K), c, "output (CPU op)")


def test_cases_cover_the_options():
    for v, cases in CASES.items():
        assert {(c.cell, c.dtype) for c in cases} == {(cell, dt) for cell in ("lstm", "gru")
                                                      for dt in (torch.float32, torch.float64)}, v
        assert any(c.ln for c in cases) and any(c.lnc for c in cases) and any(c.mask for c in cases), v
        assert {"mask", "const"} <= {c.zo for c in cases}, v
        assert any(c.P for c in cases) and any(c.H > 256 for c in cases) and any(c.H % 32 for c in cases), v
        assert any(c.reverse for c in cases) and any(c.packed for c in cases), v
    assert {"off", "mask", "const"} == {c.zo for c in PLAIN_CASES}
    assert any(not c.train for c in PLAIN_CASES)


# --------------------------------------------------------------------------------------------- the harness bites
def test_dropped_syncthreads_in_block_reduction_is_a_tsan_race(binaries):
    """ext_step_kernel.cuh with the barrier that ends block_sum2 removed (-DFASTRNN_EMU_DROP_EXT_SYNC): the next
    reduction's partial sums (LayerNorm's variance pass right after its mean) then overwrite shared memory that
    slower warps still read. TSan must report it."""
    exes, support = binaries
    if "tsan-drop" not in exes:
        pytest.skip(f"tsan unavailable: {support['tsan'][1]}")
    case = C("gru", 40, [2, 1], packed=True, ln=True, train=False)
    proc, _ = emu.run_raw(exes["tsan-drop"], "run", driver_inputs(make_problem(case, 7)), "tsan",
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode != 0, "TSan did not stop the run"
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr, proc.stderr[-4000:]
    assert "block_sum2" in proc.stderr, proc.stderr[-4000:]
