"""The REAL persistent forward kernels of csrc/cuda/fwd_persistent_kernel.cuh (lstm/gru/rnn, float32, float64,
float16, bfloat16) executed on the CPU by the CUDA emulation as ONE cooperative launch per sequence: every block at
once, the grid barrier between steps (tests/cuda_emu/persistent_driver.cpp), in plain, ASan+UBSan and TSan builds.

Oracle: the layer's equations in float64 from the same x-side pre-activations gx, with h rounded to the storage
dtype after every step as the kernel stores it (c and the workspace stay in the accumulation dtype): outputs,
h_n, c_n and the workspace. Also: a build without the grid barrier (-DFASTRNN_EMU_DROP_GRID_SYNC) is a TSan race,
a grid larger than the emulated device can hold is refused as cudaLaunchCooperativeKernel refuses it, and the
planner (persistent_plan.h choose_units) spreads the units over the SMs.
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
emu = sys.modules.get("cuda_emu_build")
if emu is None:
    emu = importlib.util.module_from_spec(_spec)
    sys.modules["cuda_emu_build"] = emu
    _spec.loader.exec_module(emu)

SRC = emu.EMU_DIR / "persistent_driver.cpp"
DROP_GRID_SYNC = "FASTRNN_EMU_DROP_GRID_SYNC"
RUN_TIMEOUT_S = 600.0
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
CELL_CODE = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 2}
STORAGE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
# Tolerances of the kernel against the float64 oracle, per storage dtype (fp32 accumulation for the half types,
# whose outputs are rounded to 8 or 11 significant bits: the oracle rounds h identically, so what remains is
# accumulation order and the occasional rounding boundary).
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}
# cudaErrorCooperativeLaunchTooLarge (driver_types.h)
COOPERATIVE_LAUNCH_TOO_LARGE = 720


@dataclass(frozen=True)
class Case:
    cell: str
    H: int
    batch_sizes: tuple
    units: int
    reverse: bool = False
    dtype: torch.dtype = torch.float32
    bias: bool = True
    train: bool = True

    @property
    def grid(self) -> int:
        return -(-self.H // self.units)

    @property
    def id(self) -> str:
        return (f"{self.cell}-H{self.H}-u{self.units}-{'x'.join(map(str, self.batch_sizes))}"
                f"{'-rev' if self.reverse else ''}{'' if self.bias else '-nobias'}{'' if self.train else '-infer'}-"
                f"{str(self.dtype).split('.')[-1]}")


F64, F16, BF16 = dict(dtype=torch.float64), dict(dtype=torch.float16), dict(dtype=torch.bfloat16)
# Every cell and storage dtype; units 1..32 (grid 2..16 blocks, a partial last unit tile at H = 13, 40);
# B = 37 with 32-row chunks (units = 32: two chunks per step); packed batch sizes in both directions; T = 1.
PLAIN_CASES = [
    Case("lstm", 40, (5, 5, 3, 1), 4),
    Case("lstm", 40, (5, 5, 3, 1), 8, reverse=True, **F64),
    Case("lstm", 13, (37, 37), 32, **F64),
    Case("lstm", 13, (4, 2, 2), 1, reverse=True, bias=False),
    Case("lstm", 33, (6, 4, 1), 4, **BF16),
    Case("lstm", 33, (6, 4, 1), 4, reverse=True, **F16),
    Case("lstm", 13, (1,), 2, train=False),
    Case("gru", 40, (5, 5, 3, 1), 4, reverse=True),
    Case("gru", 33, (37, 20, 3), 32, **F64),
    Case("gru", 13, (3, 3, 3), 1, train=False, **BF16),
    Case("gru", 40, (4, 3, 1), 8, **F16),
    Case("rnn_tanh", 40, (4, 3, 3, 1), 4, reverse=True),
    Case("rnn_relu", 33, (37, 37), 32, **F64),
    Case("rnn_relu", 13, (5, 2), 2, reverse=True, **BF16),
    Case("rnn_tanh", 40, (3, 3), 8, bias=False, **F16),
]
ASAN_CASES = [Case("lstm", 40, (5, 3, 1), 8, reverse=True), Case("gru", 13, (37, 20), 32, **BF16),
              Case("rnn_relu", 33, (4, 4), 4, **F64)]
TSAN_CASES = [Case("lstm", 13, (5, 3, 1), 4, reverse=True), Case("gru", 13, (4, 4), 8, **F16),
              Case("rnn_tanh", 13, (3, 2, 1), 2)]
CASES = {"plain": PLAIN_CASES, "asan": ASAN_CASES, "tsan": TSAN_CASES}


# ------------------------------------------------------------------------------------------------ problem data
def make_problem(case: Case, seed: int = 0) -> dict:
    """The driver's inputs, every value exactly representable in the storage dtype (float64 arrays for float64,
    float32 arrays otherwise)."""
    g = torch.Generator().manual_seed(seed)
    H, G, B, N = case.H, GATES[case.cell], case.batch_sizes[0], sum(case.batch_sizes)
    io = torch.float64 if case.dtype == torch.float64 else torch.float32

    def rnd(*shape, scale=1.0):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale).to(case.dtype).to(io)

    s = 1.0 / math.sqrt(H)
    d = {"storage": STORAGE[case.dtype], "cell": CELL_CODE[case.cell], "relu": int(case.cell == "rnn_relu"),
         "reverse": int(case.reverse), "train": int(case.train), "units": case.units, "num_sms": case.grid, "H": H,
         "batch_sizes": np.array(case.batch_sizes, dtype=np.int64), "w_hh": rnd(G * H, H, scale=s),
         "hx": rnd(B, H, scale=0.5), "gx": rnd(N, G * H, scale=1.5)}
    if case.bias:
        d["b_hh"] = rnd(G * H, scale=s)
    if case.cell == "lstm":
        d["cx"] = rnd(B, H, scale=0.5)
    return d


def oracle(case: Case, d: dict):
    """(output [N, H], hy, cy, ws) in float64, h rounded to the storage dtype after every step like the kernel."""
    f = lambda a: torch.as_tensor(np.asarray(a)).to(torch.float64)  # noqa: E731
    rnd = lambda t: t.to(case.dtype).to(torch.float64)  # noqa: E731
    H, bs = case.H, list(case.batch_sizes)
    offs = np.concatenate([[0], np.cumsum(bs)]).astype(int)
    w, gx = f(d["w_hh"]), f(d["gx"])
    b = f(d["b_hh"]) if "b_hh" in d else torch.zeros(w.shape[0], dtype=torch.float64)
    h, c = f(d["hx"]).clone(), (f(d["cx"]).clone() if case.cell == "lstm" else None)
    out = torch.full((offs[-1], H), float("nan"), dtype=torch.float64)
    ws = torch.full((offs[-1], {"lstm": 5, "gru": 4}.get(case.cell, 0) * H), float("nan"), dtype=torch.float64)
    for t in (reversed(range(len(bs))) if case.reverse else range(len(bs))):
        n, rows = bs[t], slice(offs[t], offs[t] + bs[t])
        gh = h[:n] @ w.t() + b
        if case.cell == "lstm":
            pre = gx[rows] + gh
            i, fg, gg, o = torch.sigmoid(pre[:, :H]), torch.sigmoid(pre[:, H:2 * H]), torch.tanh(pre[:, 2 * H:3 * H]), \
                torch.sigmoid(pre[:, 3 * H:])
            c[:n] = fg * c[:n] + i * gg
            hn = o * torch.tanh(c[:n])
            ws[rows] = torch.cat([i, fg, gg, o, c[:n]], 1)
        elif case.cell == "gru":
            x3 = gx[rows]
            r = torch.sigmoid(x3[:, :H] + gh[:, :H])
            z = torch.sigmoid(x3[:, H:2 * H] + gh[:, H:2 * H])
            nn_ = torch.tanh(x3[:, 2 * H:] + r * gh[:, 2 * H:])
            hn = (1 - z) * nn_ + z * h[:n]
            ws[rows] = torch.cat([r, z, nn_, gh[:, 2 * H:]], 1)
        else:
            pre = gx[rows] + gh
            hn = torch.relu(pre) if case.cell == "rnn_relu" else torch.tanh(pre)
        h[:n] = rnd(hn)
        out[rows] = h[:n]
    return out, h, c, ws


def check(case: Case, d: dict, got: dict) -> None:
    assert int(got["err"][0]) == 0, f"{case.id}: launch returned cudaError {int(got['err'][0])}"
    out, hy, cy, ws = oracle(case, d)
    t = TOL[case.dtype]

    def close(name, actual, expected):
        torch.testing.assert_close(torch.as_tensor(np.asarray(actual)).to(torch.float64), expected, **t,
                                   msg=lambda m: f"{case.id}: {name}: {m}")

    close("output", got["output"], out)
    close("hy", got["hy"], hy)
    if case.cell == "lstm":
        close("cy", got["cy"], cy)
    if case.train and case.cell in ("lstm", "gru"):
        close("ws", got["ws"], ws)


# ------------------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def binaries():
    """Every variant's driver compiled in parallel (two compilers at once on a 2-core machine)."""
    jobs = [(SRC, v, ()) for v in ("plain", "asan", "tsan") if emu.sanitizer_support(v)[0]]
    if emu.sanitizer_support("tsan")[0]:
        jobs.append((SRC, "tsan", (DROP_GRID_SYNC,)))
    emu.compile_many(jobs)
    return True


def run_batch(cases, variant, defines=()):
    problems = [make_problem(c, seed=k) for k, c in enumerate(cases)]
    inputs = {"n": len(cases)}
    for k, d in enumerate(problems):
        inputs.update({f"{k}.{name}": v for name, v in d.items()})
    exe = emu.compile_driver(SRC, variant, defines)
    proc, outputs = emu.run_raw(exe, "batch", inputs, variant, None, RUN_TIMEOUT_S)
    return problems, proc, outputs


@pytest.mark.parametrize("variant", ["plain", "asan", "tsan"])
def test_persistent_kernels_vs_oracle(binaries, variant):
    emu.require_variant(variant)
    cases = CASES[variant]
    problems, proc, outputs = run_batch(cases, variant)
    report = emu.sanitizer_report(proc.stderr)
    assert proc.returncode == 0 and not report and outputs is not None, proc.stderr[-8000:]
    for k, (case, d) in enumerate(zip(cases, problems)):
        check(case, d, {name[len(f"{k}."):]: v for name, v in outputs.items() if name.startswith(f"{k}.")})


def test_cases_cover_every_kernel_and_dtype():
    seen = {(c.cell.split("_")[0], c.dtype) for c in PLAIN_CASES}
    assert seen == {(cell, dt) for cell in ("lstm", "gru", "rnn") for dt in STORAGE}
    assert {c.units for c in PLAIN_CASES} >= {1, 2, 4, 8, 32}
    assert any(c.batch_sizes[0] > 256 // c.units * 4 for c in PLAIN_CASES), "a step of several row chunks"


def test_dropped_grid_sync_is_a_tsan_race(binaries):
    """Without the barrier between steps, blocks read h rows other blocks are writing: TSan must say so."""
    emu.require_variant("tsan")
    _, proc, _ = run_batch([Case("rnn_tanh", 13, (3, 3, 3), 2)], "tsan", (DROP_GRID_SYNC,))
    assert proc.returncode != 0 and "ThreadSanitizer: data race" in proc.stderr, proc.stderr[-4000:]


def test_grid_larger_than_the_device_is_refused(binaries):
    """A cooperative grid the device cannot hold at once fails at launch (as the driver's does) and runs
    nothing; the ATen driver then takes the step kernels."""
    d = make_problem(Case("lstm", 13, (3, 2), 1))
    d["num_sms"] = 1  # 13 blocks of 256 threads on one SM of 2048 threads: at most 8 resident
    proc, out = emu.run_raw(emu.compile_driver(SRC, "plain"), "forward", d, "plain", None, RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert int(out["err"][0]) == COOPERATIVE_LAUNCH_TOO_LARGE
    assert np.isnan(out["output"]).all(), "a refused launch runs nothing"


@pytest.mark.parametrize("H,num_sms,units", [(512, 132, 4), (1024, 132, 8), (40, 132, 1), (13, 4, 4)])
def test_planner_spreads_units_over_the_sms(H, num_sms, units):
    out = emu.run_driver(SRC, "plan", {"storage": 0, "cell": 0, "H": H, "num_sms": num_sms})
    assert int(out["units"][0]) == units
    assert int(out["grid"][0]) <= num_sms
