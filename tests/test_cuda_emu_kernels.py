"""The REAL CUDA step kernels of csrc/cuda (lstm/gru/rnn x fwd/bwd, fwd_step_kernel.cuh and bwd_step_kernel.cuh)
executed on the CPU by the emulation harness (tests/cuda_emu), in three builds: plain, ASan+UBSan, TSan.

tests/cuda_emu/rnn_kernels_driver.cpp launches the kernels with the launch configuration of their traits and
runs the per-step host loop of the ATen drivers (csrc/cuda/{lstm,gru,rnn}_cuda.cpp) around them. Here:
  * forward outputs, final states and the workspace are compared with the CPU op torch.ops.fastrnn.<cell>_forward
    (same workspace layout by contract) and, without projection, with torch.nn.LSTMCell/GRUCell/RNNCell stepped
    by hand (with projection: the LSTM-with-projection formula written out in torch);
  * the backward's gate gradients dG (GRU: dG_x, dG_h) are turned into grad_input = dG @ W_ih,
    grad_w_ih = dG^T x, grad_w_hh = dG_h^T h_prev, bias grads = column sums, grad_w_hr = dh^T r, and compared,
    with grad_hx / grad_cx, to the CPU backward op and to autograd through the torch.nn cells;
  * a build of the forward kernel with one __syncthreads removed (-DFASTRNN_EMU_DROP_SYNC) must be reported by
    TSan, proving the harness would catch that bug in this kernel.
Every variant runs all of its cases in one process (the driver's `batch` case).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

_BUILD_PY = Path(__file__).resolve().parent / "cuda_emu" / "build.py"
_spec = importlib.util.spec_from_file_location("cuda_emu_build", _BUILD_PY)
emu = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cuda_emu_build", emu)
_spec.loader.exec_module(emu)

SRC = emu.EMU_DIR / "rnn_kernels_driver.cpp"
VARIANTS = ("plain", "asan", "tsan")
DROP_SYNC = "FASTRNN_EMU_DROP_SYNC"
RUN_TIMEOUT_S = 600.0

try:
    import fastrnn  # noqa: F401  (registers torch.ops.fastrnn; the CPU ops are the main oracle)

    _HAVE_OPS = hasattr(torch.ops.fastrnn, "lstm_forward")
except Exception as e:  # pragma: no cover - extension not built
    _HAVE_OPS = False
    _OPS_ERR = repr(e)
pytestmark = pytest.mark.skipif(not _HAVE_OPS, reason="fastrnn extension not built "
                                "(FASTRNN_SKIP_CUDA=1 python setup.py build_ext --inplace)")

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
CELL_CODE = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 2}


@dataclass(frozen=True)
class Case:
    cell: str
    I: int
    H: int
    batch_sizes: tuple
    packed: bool = False  # dense [T, B, I] (all batch sizes equal) or packed [N, I] + batch_sizes
    reverse: bool = False
    dtype: torch.dtype = torch.float64
    P: int = 0  # LSTM projection size (0: none)
    bias: bool = True
    train: bool = True  # forward with a workspace (the backward always gets the CPU op's workspace)

    @property
    def id(self) -> str:
        bs = "x".join(map(str, self.batch_sizes))
        return (f"{self.cell}-I{self.I}-H{self.H}{f'-P{self.P}' if self.P else ''}-{'packed' if self.packed else 'dense'}"
                f"{bs}{'-rev' if self.reverse else ''}{'' if self.bias else '-nobias'}{'' if self.train else '-infer'}-"
                f"{'f64' if self.dtype == torch.float64 else 'f32'}")

    @property
    def K(self) -> int:
        return self.P or self.H


def C(cell, I, H, bs, **kw):
    bs = tuple(bs)
    if not kw.get("packed", False):
        assert len(set(bs)) == 1, "dense cases have equal batch sizes"
    return Case(cell, I, H, bs, **kw)


F32 = dict(dtype=torch.float32)
# The plain build runs everything; sizes are small and awkward: H not a multiple of 32 (13, 33, 40: grid.x 1-2,
# a partial last unit tile), K > 32 (several reduction tiles), B = 37 (grid.y = 2, a partial row tile), T = 1 and
# B = 1, input size != hidden, packed batch sizes with sequences ending at different steps, both directions.
PLAIN_CASES = [
    C("lstm", 5, 13, [2, 2, 2]),
    C("lstm", 7, 40, [5, 5, 3, 1], packed=True, reverse=True),
    C("lstm", 7, 40, [5, 5, 3, 1], packed=True),
    C("lstm", 6, 13, [5, 5, 3, 1], packed=True, P=7),
    C("lstm", 6, 13, [5, 5, 3, 1], packed=True, P=7, reverse=True),
    C("lstm", 3, 33, [37, 37], reverse=True),
    C("lstm", 4, 13, [1]),
    C("lstm", 4, 33, [4, 2, 2], packed=True, bias=False),
    C("lstm", 5, 33, [5, 5, 3, 1], packed=True, reverse=True, **F32),
    C("lstm", 5, 13, [3, 3], P=7, **F32),
    C("lstm", 3, 40, [4, 3, 1], packed=True, reverse=True, P=35),  # K = P != H over two reduction tiles
    C("gru", 4, 33, [5, 5, 3, 1], packed=True, reverse=True),
    C("gru", 4, 33, [5, 5, 3, 1], packed=True),
    C("gru", 5, 13, [2, 2, 2]),
    C("gru", 3, 40, [37, 37], reverse=True),
    C("gru", 4, 13, [1], bias=False),
    C("gru", 3, 40, [37, 37], **F32),
    C("rnn_tanh", 6, 40, [4, 3, 3, 1], packed=True),
    C("rnn_tanh", 6, 40, [4, 3, 3, 1], packed=True, reverse=True),
    C("rnn_relu", 5, 13, [3, 3, 3], reverse=True),
    C("rnn_relu", 2, 33, [37, 37]),
    C("rnn_tanh", 3, 13, [1], **F32),
    C("rnn_relu", 4, 33, [5, 5, 3, 1], packed=True, reverse=True, **F32),
    # grid.y = 2 with a row tile that has no successor rows (backward: b0 >= n_next skips the matmul in that block)
    C("lstm", 4, 33, [37, 20, 3], packed=True),
    C("gru", 3, 33, [37, 33, 20], packed=True, reverse=True, **F32),
    # inference: no workspace (p.ws == nullptr)
    C("lstm", 5, 40, [3, 3, 3], reverse=True, train=False),
    C("gru", 4, 33, [5, 3, 1], packed=True, train=False, **F32),
    C("rnn_tanh", 4, 13, [2, 2], train=False),
]
# Sanitizer builds: fewer, smaller cases, still every kernel, K > 32, a partial unit tile, grid.y = 2 (B = 37)
# and packed sequences in both directions.
ASAN_CASES = [
    C("lstm", 7, 40, [5, 5, 3, 1], packed=True, reverse=True),
    C("lstm", 6, 13, [5, 5, 3, 1], packed=True, P=7),
    C("gru", 3, 33, [37, 37]),
    C("rnn_relu", 4, 33, [5, 5, 3, 1], packed=True, reverse=True, **F32),
    C("rnn_tanh", 3, 13, [4, 2], packed=True),
    C("lstm", 3, 33, [37, 20], packed=True, **F32),
    C("gru", 2, 13, [3, 2], packed=True, reverse=True, **F32),
]
TSAN_CASES = [
    C("lstm", 3, 40, [5, 3, 1], packed=True, reverse=True),
    C("lstm", 4, 13, [3, 2], packed=True, P=7),
    C("gru", 3, 33, [37, 37], reverse=True),
    C("rnn_tanh", 4, 33, [5, 3, 1], packed=True, **F32),
    C("rnn_relu", 3, 13, [37, 20], packed=True),
    C("lstm", 3, 13, [4, 2], packed=True, reverse=True, **F32),
    C("gru", 3, 13, [3, 3], **F32),
]
CASES = {"plain": PLAIN_CASES, "asan": ASAN_CASES, "tsan": TSAN_CASES}


# --------------------------------------------------------------------------------------------- problem data
@dataclass
class Problem:
    case: Case
    x: torch.Tensor  # input as the op takes it: [T, B, I] or [N, I]
    bsz: torch.Tensor | None  # batch_sizes (packed) or None
    hx: torch.Tensor
    cx: torch.Tensor | None
    w_ih: torch.Tensor
    w_hh: torch.Tensor
    b_ih: torch.Tensor | None
    b_hh: torch.Tensor | None
    w_hr: torch.Tensor | None
    grad_output: torch.Tensor  # like the output
    grad_hy: torch.Tensor
    grad_cy: torch.Tensor | None
    cpu_fwd: tuple = field(default=None)
    cpu_bwd: tuple = field(default=None)

    @property
    def x2d(self):
        return self.x.reshape(-1, self.x.shape[-1])


def make_problem(case: Case, seed: int) -> Problem:
    g = torch.Generator().manual_seed(seed)
    dt, H, K, I, G = case.dtype, case.H, case.K, case.I, GATES[case.cell]
    B, T, N = case.batch_sizes[0], len(case.batch_sizes), sum(case.batch_sizes)

    def rnd(*shape, scale=1.0):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1).mul(scale).to(dt)

    s = 1.0 / math.sqrt(H)
    x = rnd(N, I) if case.packed else rnd(T, B, I)
    lstm = case.cell == "lstm"
    p = Problem(
        case=case, x=x, bsz=torch.tensor(case.batch_sizes, dtype=torch.int64) if case.packed else None,
        hx=rnd(B, K, scale=0.5), cx=rnd(B, H, scale=0.5) if lstm else None,
        w_ih=rnd(G * H, I, scale=s), w_hh=rnd(G * H, K, scale=s),
        b_ih=rnd(G * H, scale=s) if case.bias else None, b_hh=rnd(G * H, scale=s) if case.bias else None,
        w_hr=rnd(case.P, H, scale=s) if case.P else None,
        grad_output=rnd(*x.shape[:-1], K), grad_hy=rnd(B, K), grad_cy=rnd(B, H) if lstm else None,
    )
    ops = torch.ops.fastrnn
    if lstm:
        p.cpu_fwd = ops.lstm_forward(x, p.bsz, p.hx, p.cx, p.w_ih, p.w_hh, p.b_ih, p.b_hh, p.w_hr, case.reverse, True)
        out, _, _, ws = p.cpu_fwd
        p.cpu_bwd = ops.lstm_backward(p.grad_output, p.grad_hy, p.grad_cy, x, p.bsz, p.hx, p.cx, p.w_ih, p.w_hh,
                                      p.w_hr, out, ws, case.reverse, case.bias)
    elif case.cell == "gru":
        p.cpu_fwd = ops.gru_forward(x, p.bsz, p.hx, p.w_ih, p.w_hh, p.b_ih, p.b_hh, case.reverse, True)
        out, _, ws = p.cpu_fwd
        p.cpu_bwd = ops.gru_backward(p.grad_output, p.grad_hy, x, p.bsz, p.hx, p.w_ih, p.w_hh, out, ws,
                                     case.reverse, case.bias)
    else:
        relu = case.cell == "rnn_relu"
        p.cpu_fwd = ops.rnn_forward(x, p.bsz, p.hx, p.w_ih, p.w_hh, p.b_ih, p.b_hh, relu, case.reverse)
        out, _ = p.cpu_fwd
        p.cpu_bwd = ops.rnn_backward(p.grad_output, p.grad_hy, x, p.bsz, p.hx, p.w_ih, p.w_hh, out, relu,
                                     case.reverse, case.bias)
    return p


def driver_inputs(p: Problem) -> tuple[dict, dict]:
    """(forward inputs, backward inputs) of the driver. gx = x W_ih^T + b_ih is the host's input_gates GEMM."""
    c = p.case
    gx = p.x2d @ p.w_ih.t()
    if p.b_ih is not None:
        gx = gx + p.b_ih
    common = {"cell": CELL_CODE[c.cell], "relu": int(c.cell == "rnn_relu"), "reverse": int(c.reverse), "H": c.H,
              "batch_sizes": np.array(c.batch_sizes, dtype=np.int64), "w_hh": p.w_hh, "hx": p.hx}
    if p.w_hr is not None:
        common["w_hr"] = p.w_hr
    if p.cx is not None:
        common["cx"] = p.cx
    fwd = {**common, "pass": 0, "gx": gx.contiguous(), "train": int(c.train)}
    if p.b_hh is not None:
        fwd["b_hh"] = p.b_hh
    out = p.cpu_fwd[0].reshape(-1, c.K)
    bwd = {**common, "pass": 1, "grad_output": p.grad_output.reshape(-1, c.K), "grad_hy": p.grad_hy, "output": out}
    if c.cell == "lstm":
        bwd["grad_cy"] = p.grad_cy
    if c.cell in ("lstm", "gru"):
        bwd["ws"] = p.cpu_fwd[-1]
    return fwd, bwd


# --------------------------------------------------------------------------------------------- references
def gather_prev(seq: torch.Tensor, init: torch.Tensor, batch_sizes, reverse: bool) -> torch.Tensor:
    """csrc/sequence.cpp gather_prev: for every packed row, the state its step started from."""
    T = len(batch_sizes)
    offs = np.concatenate([[0], np.cumsum(batch_sizes)]).astype(int)
    rows = []
    for t in range(T):
        prv = (t + 1 if t + 1 < T else -1) if reverse else t - 1
        with_prev = 0 if prv < 0 else min(batch_sizes[t], batch_sizes[prv])
        rows += [seq[offs[prv] + b] if b < with_prev else init[b] for b in range(batch_sizes[t])]
    return torch.stack(rows)


def nn_reference(p: Problem):
    """Forward with torch.nn cells (or the projection formula), stepped over the packed rows in the direction's
    order, and autograd gradients of sum(out*grad_output) + sum(hy*grad_hy) + sum(cy*grad_cy)."""
    c = p.case
    dt, H, K = torch.float64, c.H, c.K
    leaf = lambda t: None if t is None else t.detach().to(dt).clone().requires_grad_(True)  # noqa: E731
    x, hx, cx = leaf(p.x2d), leaf(p.hx), leaf(p.cx)
    w_ih, w_hh, w_hr = leaf(p.w_ih), leaf(p.w_hh), leaf(p.w_hr)
    b_ih, b_hh = leaf(p.b_ih), leaf(p.b_hh)
    bs = list(c.batch_sizes)
    offs = np.concatenate([[0], np.cumsum(bs)]).astype(int)
    if c.cell == "lstm" and not c.P:
        mod = torch.nn.LSTMCell(c.I, H, bias=c.bias, dtype=dt)
    elif c.cell == "gru":
        mod = torch.nn.GRUCell(c.I, H, bias=c.bias, dtype=dt)
    elif c.cell.startswith("rnn"):
        mod = torch.nn.RNNCell(c.I, H, bias=c.bias, nonlinearity=c.cell[4:], dtype=dt)
    else:
        mod = None
    if mod is not None:  # use our leaves as the module's parameters, so autograd reaches them
        del mod.weight_ih, mod.weight_hh
        mod.weight_ih, mod.weight_hh = w_ih, w_hh
        if c.bias:
            del mod.bias_ih, mod.bias_hh
            mod.bias_ih, mod.bias_hh = b_ih, b_hh
    h_state, c_state = [hx[b] for b in range(bs[0])], ([cx[b] for b in range(bs[0])] if cx is not None else None)
    out_rows = [None] * offs[-1]
    for t in (reversed(range(len(bs))) if c.reverse else range(len(bs))):
        n = bs[t]
        xt = x[offs[t]:offs[t] + n]
        h = torch.stack(h_state[:n])
        if c.cell == "lstm":
            cc = torch.stack(c_state[:n])
            if mod is not None:
                h, cc = mod(xt, (h, cc))
            else:  # LSTM with projection (torch.nn.LSTM's proj_size formula)
                gates = xt @ w_ih.t() + h @ w_hh.t()
                if c.bias:
                    gates = gates + b_ih + b_hh
                i, f, gg, o = gates.chunk(4, 1)
                cc = torch.sigmoid(f) * cc + torch.sigmoid(i) * torch.tanh(gg)
                h = (torch.sigmoid(o) * torch.tanh(cc)) @ w_hr.t()
            c_state[:n] = list(cc.unbind(0))
        else:
            h = mod(xt, h)
        h_state[:n] = list(h.unbind(0))
        for b in range(n):
            out_rows[offs[t] + b] = h[b]
    out, hy = torch.stack(out_rows), torch.stack(h_state)
    cy = torch.stack(c_state) if c_state is not None else None
    loss = (out * p.grad_output.reshape(-1, K).to(dt)).sum() + (hy * p.grad_hy.to(dt)).sum()
    if cy is not None:
        loss = loss + (cy * p.grad_cy.to(dt)).sum()
    leaves = dict(x=x, hx=hx, cx=cx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr)
    grads = torch.autograd.grad(loss, [v for v in leaves.values() if v is not None])
    grads = dict(zip([k for k, v in leaves.items() if v is not None], grads))
    return out.detach(), hy.detach(), (cy.detach() if cy is not None else None), grads


def tol(case: Case) -> dict:
    return dict(rtol=1e-10, atol=1e-10) if case.dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)


def close(actual, expected, case: Case, what: str, scale: float = 1.0):
    a = torch.as_tensor(np.asarray(actual)).to(torch.float64)
    e = torch.as_tensor(expected).detach().to(torch.float64).reshape(a.shape)
    t = tol(case)
    torch.testing.assert_close(a, e, rtol=t["rtol"] * scale, atol=t["atol"] * scale,
                               msg=lambda m: f"{case.id}: {what}: {m}")


def grads_from_dg(p: Problem, b: dict) -> dict:
    """Weight/input/bias gradients formed from the kernels' gate gradients, as sequence_grads does."""
    c = p.case
    f = lambda a: torch.from_numpy(a).to(torch.float64)  # noqa: E731
    d64 = lambda t: t.detach().to(torch.float64)  # noqa: E731
    dgx = f(b["dg"])
    dgh = f(b["dgh"]) if c.cell == "gru" else dgx
    out = d64(p.cpu_fwd[0]).reshape(-1, c.K)
    h_prev = gather_prev(out, d64(p.hx), list(c.batch_sizes), c.reverse)
    g = {"x": dgx @ d64(p.w_ih), "w_ih": dgx.t() @ d64(p.x2d), "w_hh": dgh.t() @ h_prev,
         "hx": f(b["grad_hx"])}
    if c.bias:
        g["b_ih"], g["b_hh"] = dgx.sum(0), dgh.sum(0)
    if c.cell == "lstm":
        g["cx"] = f(b["grad_cx"])
    if c.P:
        g["w_hr"] = f(b["dh_all"]).t() @ f(b["r_all"])
    return g


CPU_BWD_NAMES = {
    "lstm": ("x", "hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"),
    "gru": ("x", "hx", "w_ih", "w_hh", "b_ih", "b_hh"),
    "rnn_tanh": ("x", "hx", "w_ih", "w_hh", "b_ih", "b_hh"),
    "rnn_relu": ("x", "hx", "w_ih", "w_hh", "b_ih", "b_hh"),
}


# --------------------------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def binaries():
    """Every usable variant compiled once (cached across runs), in parallel, plus the TSan build with the
    dropped __syncthreads."""
    support = {v: emu.sanitizer_support(v) for v in VARIANTS}
    jobs = [(SRC, v) for v in VARIANTS if support[v][0]]
    if support["tsan"][0]:
        jobs.append((SRC, "tsan", (DROP_SYNC,)))
    exes = emu.compile_many(jobs)
    return {(j[1], bool(j[2:])): e for j, e in zip(jobs, exes)}, support


_results: dict = {}


def variant_results(binaries, variant: str):
    """All cases of `variant` in one driver process; returns [(problem, fwd outputs, bwd outputs)]."""
    exes, support = binaries
    if (variant, False) not in exes:
        pytest.skip(f"cuda_emu variant {variant!r} unavailable: {support[variant][1]}")
    if variant not in _results:
        try:
            _results[variant] = _run_variant(variant)
        except Exception as e:  # one failed process fails every case of the build; run it once only
            _results[variant] = e
    if isinstance(_results[variant], Exception):
        raise _results[variant]
    return _results[variant]


def _run_variant(variant: str):
    """Runs every case of `variant` in one driver process (the `batch` case)."""
    problems = [make_problem(c, seed) for seed, c in enumerate(CASES[variant])]
    inputs = {"n": 2 * len(problems)}
    for k, p in enumerate(problems):
        fwd, bwd = driver_inputs(p)
        inputs.update({f"{2 * k}.{n}": v for n, v in fwd.items()})
        inputs.update({f"{2 * k + 1}.{n}": v for n, v in bwd.items()})
    out = emu.run_driver(SRC, "batch", inputs, variant, timeout=RUN_TIMEOUT_S)

    def sub(k):
        pre = f"{k}."
        return {n[len(pre):]: v for n, v in out.items() if n.startswith(pre)}

    return [(p, sub(2 * k), sub(2 * k + 1)) for k, p in enumerate(problems)]


def _params():
    for v in VARIANTS:
        for i, c in enumerate(CASES[v]):
            yield pytest.param(v, i, id=f"{v}-{c.id}")


@pytest.mark.parametrize("variant,index", list(_params()))
def test_kernels_vs_cpu_ops(binaries, variant, index):
    p, f, b = variant_results(binaries, variant)[index]
    c = p.case
    G = GATES[c.cell]
    # launches: one per step (no step has 0 rows here), grid/smem from the traits
    assert f["launches"].shape == (len(c.batch_sizes), 3) and b["launches"].shape == (len(c.batch_sizes), 3)
    assert list(f["launches"][:, 0]) == [math.ceil(c.H / 32)] * len(c.batch_sizes)
    assert list(f["launches"][:, 1]) == [math.ceil(n / 32) for n in (reversed(c.batch_sizes) if c.reverse
                                                                       else c.batch_sizes)]
    # dynamic smem as documented (csrc/cuda/README.md): forward Ws[32][G*32+1] + Hs[32][33], backward
    # Ws[32][32] + Ds[32][33], in the accumulation type; always below the 48 KiB that needs no opt-in
    esize = 8 if c.dtype == torch.float64 else 4
    assert (f["launches"][:, 2] == (32 * (G * 32 + 1) + 32 * 33) * esize).all()
    assert (b["launches"][:, 2] == (32 * 32 + 32 * 33) * esize).all()
    assert (f["launches"][:, 2] < 48 * 1024).all() and (b["launches"][:, 2] < 48 * 1024).all()
    assert list(b["launches"][:, 0]) == [math.ceil(c.H / 32)] * len(c.batch_sizes)
    assert list(b["launches"][:, 1]) == [math.ceil(n / 32) for n in (c.batch_sizes if c.reverse
                                                                       else reversed(c.batch_sizes))]

    # forward vs the CPU op
    cpu_out, cpu_hy = p.cpu_fwd[0], p.cpu_fwd[1]
    close(f["output"], cpu_out.reshape(-1, c.K), c, "output")
    close(f["hy"], cpu_hy, c, "hy")
    if c.cell == "lstm":
        close(f["cy"], p.cpu_fwd[2], c, "cy")
    if c.cell in ("lstm", "gru") and c.train:
        assert f["ws"].shape == tuple(p.cpu_fwd[-1].shape) == (sum(c.batch_sizes), (5 if c.cell == "lstm" else 4) * c.H)
        close(f["ws"], p.cpu_fwd[-1], c, "workspace")
    else:
        assert "ws" not in f

    # backward: gate gradients -> the gradients the CPU backward op returns
    assert b["dg"].shape == (sum(c.batch_sizes), G * c.H)
    assert np.isfinite(b["dg"]).all() and (c.cell != "gru" or np.isfinite(b["dgh"]).all())
    mine = grads_from_dg(p, b)
    for name, ref in zip(CPU_BWD_NAMES[c.cell], p.cpu_bwd):
        if name in ("b_ih", "b_hh") and not c.bias or name == "w_hr" and not c.P:
            continue
        # weight gradients sum over rows: a little more rounding in float32
        close(mine[name], ref.reshape(mine[name].shape), c, f"grad {name}", scale=1 if name in ("hx", "cx") else 4)


@pytest.mark.parametrize("variant,index", [pytest.param("plain", i, id=f"plain-{c.id}")
                                           for i, c in enumerate(PLAIN_CASES)])
def test_kernels_vs_torch_nn(binaries, variant, index):
    """The same plain-build results against torch.nn cells (forward) and autograd through them (backward)."""
    p, f, b = variant_results(binaries, variant)[index]
    c = p.case
    out, hy, cy, ref = nn_reference(p)
    close(f["output"], out, c, "output (torch.nn)")
    close(f["hy"], hy, c, "hy (torch.nn)")
    if cy is not None:
        close(f["cy"], cy, c, "cy (torch.nn)")
    mine = grads_from_dg(p, b)
    for name, g in ref.items():
        close(mine[name], g, c, f"grad {name} (autograd)", scale=1 if name in ("hx", "cx") else 4)


def test_cases_cover_every_kernel_and_launch_shape():
    for v, cases in CASES.items():
        # every case runs a forward and a backward: all six kernels, for float and double, in every build
        assert {(c.cell.split("_")[0], c.dtype) for c in cases} == {
            (cell, dt) for cell in ("lstm", "gru", "rnn") for dt in (torch.float32, torch.float64)}, v
        assert any(c.P for c in cases) and any(c.batch_sizes[0] > 32 for c in cases), v  # projection, grid.y = 2
        assert any(c.reverse for c in cases) and any(c.packed for c in cases), v
        assert any(c.H > 32 for c in cases) and any(c.H % 32 for c in cases), v
    assert {torch.float32, torch.float64} == {c.dtype for c in PLAIN_CASES}
    assert any(len(c.batch_sizes) == 1 and c.batch_sizes[0] == 1 for c in PLAIN_CASES)


# --------------------------------------------------------------------------------------------- the harness bites
def test_dropped_syncthreads_in_forward_kernel_is_a_tsan_race(binaries):
    """fwd_step_kernel.cuh with the __syncthreads that ends each K tile removed (-DFASTRNN_EMU_DROP_SYNC): the
    next tile's shared-memory stores then race with this tile's reads in other warps. Needs K > 32 (two tiles).
    TSan must report it."""
    exes, support = binaries
    if ("tsan", True) not in exes:
        pytest.skip(f"tsan unavailable: {support['tsan'][1]}")
    case = C("lstm", 3, 40, [3, 2], packed=True)
    fwd, _ = driver_inputs(make_problem(case, 123))
    proc, _ = emu.run_raw(exes[("tsan", True)], "forward", fwd, "tsan", timeout=RUN_TIMEOUT_S)
    assert proc.returncode != 0, "TSan did not stop the run"
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr, proc.stderr[-4000:]
    assert "fwd_step" in proc.stderr, proc.stderr[-4000:]  # the race is in the forward kernel's tile loop
