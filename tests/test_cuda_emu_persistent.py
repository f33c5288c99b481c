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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import persistent_residency as residency  # noqa: E402

SRC = emu.EMU_DIR / "persistent_driver.cpp"
DROP_GRID_SYNC = "FASTRNN_EMU_DROP_GRID_SYNC"
RUN_TIMEOUT_S = 600.0
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
CELL_CODE = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 2}
STORAGE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
# Tolerances of the kernels against the float64 oracle, stated once per dtype and mode. float64 and exact float32
# (the FMA kernel) differ from the oracle by accumulation order only. bfloat16/float16 run on the tensor cores: their
# products are exact (the operands are the stored 16-bit values) and accumulate in fp32, and the oracle rounds h to
# the storage dtype after every step as the kernel stores it, so what remains is accumulation order and the occasional
# rounding boundary of the 8 or 11 significant bits.
# TF32 (float32 with torch.backends.cudnn.allow_tf32): W_hh and h_{t-1} are rounded to a 10-bit mantissa (cvt.rna,
# unit roundoff u = 2^-11) before the product, so each pre-activation moves by at most 2u * sum_k |w_jk h_k| per step
# (first order); in these problems |w| <= 1/sqrt(H) and |h| <= 1, so by at most 2u * sqrt(H) <= 2^-10 * sqrt(136) =
# 1.14e-2 at the largest H tested, and the cells' derivatives are <= 1 in each pre-activation. That bound is the TF32
# tolerance against the exact oracle. Against the oracle that rounds its operands to TF32 too (oracle(tf32_operands))
# only fp32 accumulation order remains, but only for one step: after it the kernel's and the oracle's h differ by fp32
# ulps, which can move an h value across a TF32 rounding boundary (a 2^-11 change of that operand), so the step after
# may differ by up to 2^-10 * |w| * |h| per flip. test_tf32_flag_is_honoured therefore compares one step.
U_TF32 = 2.0 ** -11
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
       "tf32": dict(rtol=2 * U_TF32 * math.sqrt(136), atol=2 * U_TF32 * math.sqrt(136)),
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
    tf32: bool = False  # float32 only: torch.backends.cudnn.allow_tf32 (the tensor-core kernel)

    @property
    def grid(self) -> int:
        return -(-self.H // self.units)

    @property
    def id(self) -> str:
        return (f"{self.cell}-H{self.H}-u{self.units}-{'x'.join(map(str, self.batch_sizes))}"
                f"{'-rev' if self.reverse else ''}{'' if self.bias else '-nobias'}{'' if self.train else '-infer'}-"
                f"{str(self.dtype).split('.')[-1]}{'-tf32' if self.tf32 else ''}")


F64, F16, BF16, TF32 = (dict(dtype=torch.float64), dict(dtype=torch.float16), dict(dtype=torch.bfloat16),
                        dict(tf32=True))
# Every cell and storage dtype, float32 in both modes; units 1..32 (grid 2..16 blocks, a partial last unit tile at
# H = 13, 40); B = 37 with 32-row chunks (units = 32: two chunks per step); packed batch sizes in both directions;
# T = 1. Tensor-core kernels: split-K between warps (small batches), up to 4 output tiles per warp (units = 32, LSTM,
# 37 rows), several 64-row chunks (units = 16, 70 rows), and K = 136 (2 staged K passes for 16-bit, 3 for TF32).
PLAIN_CASES = [
    Case("lstm", 40, (5, 5, 3, 1), 4),
    Case("lstm", 40, (5, 5, 3, 1), 8, reverse=True, **F64),
    Case("lstm", 13, (37, 37), 32, **F64),
    Case("lstm", 13, (4, 2, 2), 1, reverse=True, bias=False),
    Case("lstm", 33, (6, 4, 1), 4, **BF16),
    Case("lstm", 33, (6, 4, 1), 4, reverse=True, **F16),
    Case("lstm", 13, (1,), 2, train=False),
    Case("lstm", 13, (37, 37), 32, **BF16),
    Case("lstm", 40, (5, 5, 3, 1), 4, **TF32),
    Case("lstm", 136, (3, 2), 32, reverse=True, **BF16),
    Case("lstm", 136, (64, 2), 16, reverse=True, **BF16),  # 64 rows: passes of 128 k (two, the last partial)
    Case("gru", 40, (5, 5, 3, 1), 4, reverse=True),
    Case("gru", 33, (37, 20, 3), 32, **F64),
    Case("gru", 13, (3, 3, 3), 1, train=False, **BF16),
    Case("gru", 40, (4, 3, 1), 8, **F16),
    Case("gru", 33, (70, 5), 16, **F16),
    Case("gru", 33, (37, 20, 3), 32, reverse=True, **TF32),
    Case("rnn_tanh", 40, (4, 3, 3, 1), 4, reverse=True),
    Case("rnn_relu", 33, (37, 37), 32, **F64),
    Case("rnn_relu", 13, (5, 2), 2, reverse=True, **BF16),
    Case("rnn_tanh", 40, (3, 3), 8, bias=False, **F16),
    Case("rnn_tanh", 40, (4, 3, 3, 1), 4, reverse=True, **TF32),
    Case("rnn_relu", 136, (64, 5, 4), 16, bias=False, **TF32),  # passes of 64 k at 64 rows, one of 512 at 5
]
ASAN_CASES = [Case("lstm", 40, (5, 3, 1), 8, reverse=True), Case("gru", 13, (37, 20), 32, **BF16),
              Case("rnn_relu", 33, (4, 4), 4, **F64), Case("lstm", 40, (5, 3, 1), 8, **TF32),
              Case("rnn_tanh", 136, (3, 1), 32, **F16)]
TSAN_CASES = [Case("lstm", 13, (5, 3, 1), 4, reverse=True), Case("gru", 13, (4, 4), 8, **F16),
              Case("rnn_tanh", 13, (3, 2, 1), 2), Case("lstm", 13, (9, 3), 4, **BF16),
              Case("gru", 13, (4, 2), 4, reverse=True, **TF32)]
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
         "reverse": int(case.reverse), "train": int(case.train), "tf32": int(case.tf32), "units": case.units,
         "num_sms": case.grid, "H": H,
         "batch_sizes": np.array(case.batch_sizes, dtype=np.int64), "w_hh": rnd(G * H, H, scale=s),
         "hx": rnd(B, H, scale=0.5), "gx": rnd(N, G * H, scale=1.5)}
    if case.bias:
        d["b_hh"] = rnd(G * H, scale=s)
    if case.cell == "lstm":
        d["cx"] = rnd(B, H, scale=0.5)
    return d


def tf32_rna(t: torch.Tensor) -> torch.Tensor:
    """float32 -> TF32 as cvt.rna.tf32.f32 rounds (nearest, ties away from zero: add half an ulp of the 10-bit
    mantissa to the magnitude bits, clear the low 13), returned as float64. Finite inputs only."""
    bits = t.to(torch.float32).contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    bits = ((bits + 0x1000) & 0xFFFFE000) & 0xFFFFFFFF
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    return bits.view(torch.float32).to(torch.float64)


def oracle(case: Case, d: dict, tf32_operands: bool = False):
    """(output [N, H], hy, cy, ws) in float64, h rounded to the storage dtype after every step like the kernel.
    tf32_operands: W_hh and h_{t-1} rounded to TF32 before the product (what the TF32 kernel multiplies)."""
    f = lambda a: torch.as_tensor(np.asarray(a)).to(torch.float64)  # noqa: E731
    rnd = lambda t: t.to(case.dtype).to(torch.float64)  # noqa: E731
    op = tf32_rna if tf32_operands else (lambda t: t)  # noqa: E731
    H, bs = case.H, list(case.batch_sizes)
    offs = np.concatenate([[0], np.cumsum(bs)]).astype(int)
    w, gx = f(d["w_hh"]), f(d["gx"])
    w = op(w)
    b = f(d["b_hh"]) if "b_hh" in d else torch.zeros(w.shape[0], dtype=torch.float64)
    h, c = f(d["hx"]).clone(), (f(d["cx"]).clone() if case.cell == "lstm" else None)
    out = torch.full((offs[-1], H), float("nan"), dtype=torch.float64)
    ws = torch.full((offs[-1], {"lstm": 5, "gru": 4}.get(case.cell, 0) * H), float("nan"), dtype=torch.float64)
    for t in (reversed(range(len(bs))) if case.reverse else range(len(bs))):
        n, rows = bs[t], slice(offs[t], offs[t] + bs[t])
        gh = op(h[:n]) @ w.t() + b
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


def tol(case: Case) -> dict:
    return TOL["tf32"] if case.tf32 else TOL[case.dtype]


def check(case: Case, d: dict, got: dict) -> None:
    assert int(got["err"][0]) == 0, f"{case.id}: launch returned cudaError {int(got['err'][0])}"

    def close(name, actual, expected, t):
        torch.testing.assert_close(torch.as_tensor(np.asarray(actual)).to(torch.float64), expected, **t,
                                   msg=lambda m: f"{case.id}: {name}: {m}")

    out, hy, cy, ws = oracle(case, d)
    t = tol(case)
    close("output", got["output"], out, t)
    close("hy", got["hy"], hy, t)
    if case.cell == "lstm":
        close("cy", got["cy"], cy, t)
    if case.train and case.cell in ("lstm", "gru"):
        close("ws", got["ws"], ws, t)


# ------------------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def binaries():
    """Every variant's driver compiled in parallel (two compilers at once on a 2-core machine)."""
    jobs = [(SRC, v, ()) for v in ("plain", "asan", "tsan") if emu.sanitizer_support(v)[0]]
    if emu.sanitizer_support("tsan")[0]:
        jobs.append((SRC, "tsan", (DROP_GRID_SYNC,)))
    emu.compile_many(jobs)
    return True


def run_batch(cases, variant, defines=(), problems=None):
    problems = problems or [make_problem(c, seed=k) for k, c in enumerate(cases)]
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
    seen = {(c.cell.split("_")[0], c.dtype, c.tf32) for c in PLAIN_CASES}
    assert seen == {(cell, dt, tf32) for cell in ("lstm", "gru", "rnn") for dt in STORAGE
                    for tf32 in ((False, True) if dt == torch.float32 else (False,))}
    for variant in ("asan", "tsan"):  # every tensor-core kernel's dtype under each sanitizer
        assert {torch.float16, torch.bfloat16} <= {c.dtype for c in CASES[variant]}
        assert any(c.tf32 for c in CASES[variant])
    assert any(c.H > 128 for c in PLAIN_CASES if c.dtype != torch.float64), "several staged K passes"
    assert {c.units for c in PLAIN_CASES} >= {1, 2, 4, 8, 32}
    assert any(c.batch_sizes[0] > 256 // c.units * 4 for c in PLAIN_CASES), "a step of several row chunks"


def test_tf32_flag_is_honoured(binaries):
    """One float32 GRU step run with allow_tf32 off and on, compared on its workspace (r, z, n and the raw product
    W_hn h + b_hn) and output. Off: exact fp32 (the fp32 tolerance against the exact oracle, and not the TF32
    product). On: the TF32 product (the fp32 tolerance against the oracle that rounds W and h to TF32), further from
    the exact oracle than the fp32 tolerance allows, within the TF32 tolerance."""
    emu.require_variant("plain")
    base = Case("gru", 40, (8,), 4)
    d = make_problem(base)
    _, proc, outputs = run_batch([base, Case(**{**base.__dict__, "tf32": True})], "plain", problems=[d, {**d, "tf32": 1}])
    assert proc.returncode == 0 and outputs is not None, proc.stderr[-8000:]
    fp32 = TOL[torch.float32]
    for name, idx in (("ws", 3), ("output", 0)):
        exact_run, tf32_run = (torch.as_tensor(np.asarray(outputs[f"{k}.{name}"])).to(torch.float64) for k in range(2))
        exact, rounded = oracle(base, d)[idx], oracle(base, d, tf32_operands=True)[idx]
        assert (exact - rounded).abs().max() > 3 * fp32["atol"], f"{name}: the problem must separate the products"
        torch.testing.assert_close(exact_run, exact, **fp32)
        with pytest.raises(AssertionError):
            torch.testing.assert_close(exact_run, rounded, **fp32)
        torch.testing.assert_close(tf32_run, rounded, **fp32)
        torch.testing.assert_close(tf32_run, exact, **TOL["tf32"])
        with pytest.raises(AssertionError):
            torch.testing.assert_close(tf32_run, exact, **fp32)


@pytest.mark.parametrize("case", [Case("rnn_tanh", 13, (3, 3, 3), 2), Case("rnn_tanh", 13, (3, 3, 3), 2, **BF16)],
                         ids=["fma", "mma"])
def test_dropped_grid_sync_is_a_tsan_race(binaries, case):
    """Without the barrier between steps, blocks read h rows other blocks are writing: TSan must say so (the FMA and
    the tensor-core kernel)."""
    emu.require_variant("tsan")
    _, proc, _ = run_batch([case], "tsan", (DROP_GRID_SYNC,))
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


@pytest.mark.parametrize("storage,tf32", [(0, 0), (0, 1), (1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("cell", [0, 1, 2])
def test_residency_model_transcribes_the_traits(cell, storage, tf32):
    """tests/persistent_residency.py (used by the compile gate's residency check) computes the same shared memory as
    the kernels' traits, for the kernel the host picks (tensor cores or FMA)."""
    dtype = {0: "float32", 1: "float64", 2: "float16", 3: "bfloat16"}[storage]
    name = {0: "lstm", 1: "gru", 2: "rnn"}[cell]
    for H in (40, 512):
        out = emu.run_driver(SRC, "plan", {"storage": storage, "cell": cell, "H": H, "num_sms": 132, "tf32": tf32})
        units = int(out["units"][0])
        assert units > 0
        assert int(out["smem"][0]) == residency.smem_bytes(name, dtype, bool(tf32), units, H), (name, dtype, H, units)


def _wavefronts(words_per_lane):
    """Shared-memory wavefronts of one warp-wide access: lanes' b32 word addresses (a list per lane, one access of
    len(list) consecutive words each); 32 banks of 4 bytes, and an access of n words per lane is served 32/n lanes at
    a time (64-bit: half-warps, 128-bit: quarter-warps), as the hardware does."""
    n = len(words_per_lane[0])
    per_phase = 32 // n
    total = 0
    for p0 in range(0, 32, per_phase):
        banks = {}
        for lane in range(p0, p0 + per_phase):
            for w in words_per_lane[lane]:
                banks.setdefault(w % 32, set()).add(w)
        total += max(len(v) for v in banks.values())
    return total


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_tensor_core_fragment_accesses_are_bank_conflict_free(cell):
    """The shared-memory layouts of the tensor-core kernels (mma_chunk_partials; Gs strides from the traits'
    transcription, which test_residency_model_transcribes_the_traits ties to the C++, the staged rows' strides of every
    chunk from the traits themselves): the A-fragment loads (one 128-bit load per lane of its 4 words), the
    B-fragment loads (lane (g, q): word g*stride + q, then + 4) and the fragment stores to Gs (lane (g, q): column 2q
    and 2q + 1, row g and g + 8) take the minimum number of wavefronts."""
    for lane_words in ([[(lane * 4 + i) for i in range(4)] for lane in range(32)],):  # Wf: [..][lane][4]
        assert _wavefronts(lane_words) == 4
    out = emu.run_driver(SRC, "mtile", {})
    strides = {int(x) for k in ("stride_tf32", "stride_16") for x in out[k]}
    assert residency.MMA_H_STRIDE_WORDS in strides  # a full chunk's pass, which the shared-memory formula sizes
    for stride in strides:
        for off in (0, 4):  # Hs: both B registers
            assert _wavefronts([[(lane // 4) * stride + lane % 4 + off] for lane in range(32)]) == 1, stride
    for units in (1, 2, 4, 8, 16, 32):
        gs = residency.mma_g_stride(cell, units)
        for dc, dr in ((0, 0), (1, 0), (0, 8), (1, 8)):
            assert _wavefronts([[(2 * (lane % 4) + dc) * gs + lane // 4 + dr] for lane in range(32)]) == 1, (units, gs)


def test_tensor_core_passes_widen_for_few_rows():
    """MmaStaging::tile_words: a chunk of up to 64 rows stages 256 bytes of each row per pass; fewer rows
    stage wider passes (2 KB at 8 rows: 8x fewer L2 round trips per step at a small batch), always whole groups of
    8 k-steps (the split-K by k-step index), and the rows at their stride fit the staging buffer."""
    out = emu.run_driver(SRC, "mtile", {})
    buf = int(out["buffer_words"][0])
    for kind, k_per_word, k_step in (("tf32", 1, 8), ("16", 2, 16)):
        words = dict(zip(out["rows"].astype(int), out[f"tile_words_{kind}"].astype(int)))
        strides = dict(zip(out["rows"].astype(int), out[f"stride_{kind}"].astype(int)))
        assert words[64] * 4 == 256 and words[8] * 4 == 2048, (kind, words)
        assert all(words[r] >= words[r + 8] for r in range(8, 64, 8)), "wider passes for fewer rows"
        for r, w in words.items():
            assert r * strides[r] <= buf and strides[r] == w + 4, (kind, r)
            assert (w * k_per_word) % (8 * k_step) == 0, (kind, r, w)


@pytest.mark.parametrize("H,num_sms,units", [(512, 132, 4), (1024, 132, 8), (40, 132, 1), (13, 4, 4)])
def test_planner_spreads_units_over_the_sms(H, num_sms, units):
    out = emu.run_driver(SRC, "plan", {"storage": 0, "cell": 0, "H": H, "num_sms": num_sms})
    assert int(out["units"][0]) == units
    assert int(out["grid"][0]) <= num_sms


# ============================================================================================ persistent backward
# The REAL persistent backward kernels of csrc/cuda/bwd_persistent_kernel.cuh (FMA for every dtype), one cooperative
# launch per sequence, against a float64 autograd oracle of the same layer: the forward from gx with h rounded to the
# storage dtype after every step as the kernel stores it (a straight-through rounding, so the saved values the kernel
# reads are the oracle's), and the gradients of sum(out * grad_out) + sum(h_n * grad_hy) (+ sum(c_n * grad_cy)) with
# respect to gx (dG; GRU: dG_x), the GRU's W_hn h + b_hn (dph_n), hx and cx.
# Tolerances, stated once per dtype: float64 and float32 differ by accumulation order only (float32 also keeps the
# workspace in fp32). bfloat16/float16 store each step's dG in the storage dtype, and the next step's dh is computed
# from those rounded values (as the step kernels do), so a relative error of the storage's unit roundoff enters every
# step: up to T = 4 steps here, 4 * u * (a growth of the gradients below 2) on gradients of order 1.
# The tensor-core kernels multiply the same stored 16-bit values (exact products, fp32 accumulation): the same
# tolerances. TF32 (float32 with allow_tf32, the tensor-core kernel) rounds dG_next and W_hh to a 10-bit mantissa
# (u = 2^-11) before the product: each term dG_k w_kj moves by at most 2u |dG_k w_kj|, with independent signs, so a
# step's dh moves by about 2u * sqrt(sum_k (dG_k w_kj)^2) <= 2u * sqrt(G) * max|dG| (|w| <= 1/sqrt(H)): 2^-9 for
# max|dG| <= 1, and the steps' errors add (4 steps: 2^-7, 7.8e-3; observed at most 2e-4). A wrong or dropped product
# term moves a gradient by |dG w| ~ 0.1-1; test_tf32_backward_rounds_its_operands checks the rounding to fp32 order.
BWD_TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
           "tf32": dict(rtol=16 * U_TF32, atol=16 * U_TF32),
           torch.float16: dict(rtol=8 * 2.0 ** -11, atol=8 * 2.0 ** -11),
           torch.bfloat16: dict(rtol=8 * 2.0 ** -8, atol=8 * 2.0 ** -8)}


@dataclass(frozen=True)
class BwdCase:
    cell: str
    H: int
    batch_sizes: tuple
    units: int
    reverse: bool = False
    dtype: torch.dtype = torch.float32
    dense: bool = False  # grad_output as [T, B, H] (a step's rows at t * B * H) instead of packed rows
    mma: bool = False  # the tensor-core kernel (float32: TF32) instead of the FMA kernel

    @property
    def grid(self) -> int:
        return -(-self.H // self.units)

    @property
    def tol(self) -> dict:
        return BWD_TOL["tf32" if self.mma and self.dtype == torch.float32 else self.dtype]

    @property
    def id(self) -> str:
        return (f"bwd-{self.cell}-H{self.H}-u{self.units}-{'x'.join(map(str, self.batch_sizes))}"
                f"{'-rev' if self.reverse else ''}{'-dense' if self.dense else ''}-{str(self.dtype).split('.')[-1]}"
                f"{'-mma' if self.mma else ''}")


def bwd_problem(case: BwdCase, seed: int = 0):
    """(driver inputs, expected gradients): the forward and the oracle's gradients in float64."""
    g = torch.Generator().manual_seed(1000 + seed)
    H, G, bs = case.H, GATES[case.cell], list(case.batch_sizes)
    B, N, T = bs[0], sum(bs), len(bs)
    io = torch.float64 if case.dtype == torch.float64 else torch.float32
    acc = torch.float64 if case.dtype == torch.float64 else torch.float32

    def rnd(*shape, scale=1.0):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale).to(case.dtype).to(torch.float64)

    s = 1.0 / math.sqrt(H)
    w, b_hh = rnd(G * H, H, scale=s), rnd(G * H, scale=s)
    hx, gx = rnd(B, H, scale=0.5).requires_grad_(), rnd(N, G * H, scale=1.5).requires_grad_()
    cx = rnd(B, H, scale=0.5).requires_grad_() if case.cell == "lstm" else None
    go_dense = rnd(T, B, H)
    go = torch.cat([go_dense[t, :bs[t]] for t in range(T)]) if case.dense else rnd(N, H)
    ghy, gcy = rnd(B, H), (rnd(B, H) if case.cell == "lstm" else None)
    offs = np.concatenate([[0], np.cumsum(bs)]).astype(int)
    st = lambda t: t + (t.detach().to(case.dtype).to(torch.float64) - t.detach())  # noqa: E731  straight-through
    h, c = hx, cx
    outs, ws, ghn = [None] * T, [None] * T, {}
    for t in (reversed(range(T)) if case.reverse else range(T)):
        n, rows = bs[t], slice(offs[t], offs[t] + bs[t])
        gh = h[:n] @ w.t() + b_hh
        if case.cell == "lstm":
            pre = gx[rows] + gh
            i, fg, gg, o = (torch.sigmoid(pre[:, :H]), torch.sigmoid(pre[:, H:2 * H]), torch.tanh(pre[:, 2 * H:3 * H]),
                            torch.sigmoid(pre[:, 3 * H:]))
            cn = fg * c[:n] + i * gg
            cn = cn + (cn.detach().to(acc).to(torch.float64) - cn.detach())
            hn = o * torch.tanh(cn)
            ws[t] = torch.cat([i, fg, gg, o, cn], 1)
            c = torch.cat([cn, c[n:]])
        elif case.cell == "gru":
            x3, ghn[t] = gx[rows], gh[:, 2 * H:]
            r = torch.sigmoid(x3[:, :H] + gh[:, :H])
            z = torch.sigmoid(x3[:, H:2 * H] + gh[:, H:2 * H])
            nn_ = torch.tanh(x3[:, 2 * H:] + r * ghn[t])
            hn = (1 - z) * nn_ + z * h[:n]
            ws[t] = torch.cat([r, z, nn_, ghn[t]], 1)
        else:
            pre = gx[rows] + gh
            hn = torch.relu(pre) if case.cell == "rnn_relu" else torch.tanh(pre)
        hn = st(hn)
        outs[t] = hn
        h = torch.cat([hn, h[n:]])
    out = torch.cat(outs)
    loss = (out * go).sum() + (h * ghy).sum() + ((c * gcy).sum() if c is not None else 0)
    wrt = [gx, hx] + ([cx] if cx is not None else []) + [ghn[t] for t in sorted(ghn)]
    grads = torch.autograd.grad(loss, wrt)
    expected = {"dg": grads[0], "grad_hx": grads[1]}
    if cx is not None:
        expected["grad_cx"] = grads[2]
    if case.cell == "gru":
        expected["dph_n"] = torch.cat(grads[2:])
    as_io = lambda t: t.detach().to(io)  # noqa: E731
    d = {"backward": 1, "storage": STORAGE[case.dtype], "cell": CELL_CODE[case.cell],
         "relu": int(case.cell == "rnn_relu"), "reverse": int(case.reverse), "units": case.units,
         "num_sms": case.grid, "H": H, "batch_sizes": np.array(bs, dtype=np.int64), "w_hh": as_io(w),
         "hx": as_io(hx), "out": as_io(out), "grad_out": as_io(go_dense if case.dense else go),
         "go_dense": int(case.dense), "grad_hy": as_io(ghy), "mma": int(case.mma)}
    if case.cell in ("lstm", "gru"):
        d["ws"] = as_io(torch.cat(ws))
    if case.cell == "lstm":
        d["cx"], d["grad_cy"] = as_io(cx), as_io(gcy)
    return d, expected


# Every cell and dtype; units 1..32 (a partial last unit tile at H = 13, 33, 40); packed batch sizes in both
# directions (the reverse packed layer turns rows of `next` into grad_hx mid-sequence); grad_output dense and packed;
# several row chunks (units = 32: 32-row chunks, B = 37); T = 1; G*H = 160 (5 staged K tiles).
BWD_PLAIN_CASES = [
    BwdCase("lstm", 40, (5, 5, 3, 1), 4),
    BwdCase("lstm", 40, (5, 5, 3, 1), 8, reverse=True, dtype=torch.float64),
    BwdCase("lstm", 13, (37, 37), 32, dense=True),
    BwdCase("lstm", 33, (6, 4, 1), 4, reverse=True, dtype=torch.bfloat16),
    BwdCase("lstm", 13, (4, 2, 2), 1, dtype=torch.float16),
    BwdCase("lstm", 13, (1,), 2),
    BwdCase("gru", 40, (5, 5, 3, 1), 4, reverse=True),
    BwdCase("gru", 33, (37, 20, 3), 32, dtype=torch.float64),
    BwdCase("gru", 13, (3, 3, 3), 1, dtype=torch.bfloat16, dense=True),
    BwdCase("gru", 40, (4, 3, 1), 8, reverse=True, dtype=torch.float16),
    BwdCase("rnn_tanh", 40, (4, 3, 3, 1), 4, reverse=True),
    BwdCase("rnn_relu", 33, (37, 37), 32, dtype=torch.float64),
    BwdCase("rnn_relu", 13, (5, 2), 2, reverse=True, dtype=torch.bfloat16),
    BwdCase("rnn_tanh", 40, (3, 3), 8, dtype=torch.float16, dense=True),
    # chunks of 128 rows (units = 8, 32 groups) with 70 and 40 live rows: 3 and 2 live row slots, K tiles of 32 and
    # 64; and 7 rows: the K loop split 4 ways between the groups, K tiles of 256 (BwdPersistentTraits::chunk_plan)
    BwdCase("gru", 40, (70, 40, 7), 8),  # G*H = 120 (and 160 below): partial tiles
    BwdCase("lstm", 40, (70, 40, 7), 8, reverse=True, dtype=torch.bfloat16),
    # one row against 256 batch groups (units = 1): the K loop split 256 ways, then 128 (two rows)
    BwdCase("rnn_tanh", 13, (2, 1, 1), 1),
    # the tensor-core kernels (bf16/fp16, TF32): 64-row chunks (units <= 4; 70 rows: two) of which the rows of `next`
    # are fewer (forward packed: 40 rows of the step against 7 of next) or none (the first iteration); m-tiles of 16
    # units padded (units < 16) and two m-tiles (units = 32, 32-row chunks); the k-steps split between warps (one
    # n-tile: up to 8 rows); K passes of 128 (16-bit) or 64 (TF32) elements with a partial last pass (G*H = 160, 120,
    # 52, 33); 16-bit pairs in one load (even H; GRU: dph_n's pairs too) and single values (odd H)
    BwdCase("lstm", 40, (70, 40, 7), 4, dtype=torch.bfloat16, mma=True),
    BwdCase("gru", 40, (70, 40, 7), 8, reverse=True, mma=True),
    BwdCase("rnn_tanh", 33, (37, 20, 3), 32, dtype=torch.float16, mma=True),
    BwdCase("lstm", 13, (1,), 2, mma=True),
    BwdCase("gru", 40, (5, 5, 3, 1), 4, reverse=True, dtype=torch.float16, mma=True),
    BwdCase("rnn_relu", 40, (3, 3), 8, dtype=torch.bfloat16, dense=True, mma=True),
    BwdCase("gru", 13, (6, 4, 1), 1, dtype=torch.bfloat16, mma=True),
    BwdCase("lstm", 33, (37, 37), 32, reverse=True, dtype=torch.float16, mma=True),
    BwdCase("rnn_tanh", 40, (4, 3, 3, 1), 16, mma=True),
    # the K pass widened for fewer rows (MmaStaging::tile_words): 16 rows, TF32 passes of 256 (G*H = 320: two);
    # 64 rows, bf16 passes of 128 (G*H = 300: three, across the GRU's dph_n boundary at 200), 16 and 8 rows one pass
    BwdCase("lstm", 80, (12, 5), 32, mma=True),
    BwdCase("gru", 100, (70, 9), 16, dtype=torch.bfloat16, mma=True),
]
BWD_ASAN_CASES = [BwdCase("lstm", 40, (5, 3, 1), 8, reverse=True), BwdCase("gru", 13, (37, 20), 32,
                  dtype=torch.bfloat16), BwdCase("rnn_relu", 33, (4, 4), 4, dtype=torch.float64, dense=True),
                  BwdCase("gru", 40, (70, 40, 7), 4, dtype=torch.bfloat16, mma=True),
                  BwdCase("lstm", 13, (5, 3, 1), 32, reverse=True, mma=True)]
BWD_TSAN_CASES = [BwdCase("lstm", 13, (5, 3, 1), 4, reverse=True), BwdCase("gru", 13, (4, 4), 8, dtype=torch.float16),
                  BwdCase("rnn_tanh", 13, (3, 2, 1), 2),
                  BwdCase("lstm", 40, (9, 3, 1), 8, dtype=torch.float16, mma=True),
                  BwdCase("gru", 13, (4, 2), 4, reverse=True, mma=True)]
BWD_CASES = {"plain": BWD_PLAIN_CASES, "asan": BWD_ASAN_CASES, "tsan": BWD_TSAN_CASES}


def run_bwd_batch(cases, variant, defines=()):
    problems = [bwd_problem(c, seed=k) for k, c in enumerate(cases)]
    inputs = {"n": len(cases)}
    for k, (d, _) in enumerate(problems):
        inputs.update({f"{k}.{name}": v for name, v in d.items()})
    exe = emu.compile_driver(SRC, variant, defines)
    proc, outputs = emu.run_raw(exe, "batch", inputs, variant, None, RUN_TIMEOUT_S)
    return problems, proc, outputs


@pytest.mark.parametrize("variant", ["plain", "asan", "tsan"])
def test_persistent_backward_vs_oracle(binaries, variant):
    emu.require_variant(variant)
    cases = BWD_CASES[variant]
    problems, proc, outputs = run_bwd_batch(cases, variant)
    report = emu.sanitizer_report(proc.stderr)
    assert proc.returncode == 0 and not report and outputs is not None, proc.stderr[-8000:]
    for k, (case, (_, expected)) in enumerate(zip(cases, problems)):
        assert int(outputs[f"{k}.err"][0]) == 0, f"{case.id}: launch returned cudaError {int(outputs[f'{k}.err'][0])}"
        for name, want in expected.items():
            got = torch.as_tensor(np.asarray(outputs[f"{k}.{name}"])).to(torch.float64)
            torch.testing.assert_close(got, want.detach(), **case.tol,
                                       msg=lambda m, name=name, case=case: f"{case.id}: {name}: {m}")


def test_backward_cases_cover_every_kernel_and_dtype():
    assert {(c.cell.split("_")[0], c.dtype, c.mma) for c in BWD_PLAIN_CASES} == {
        (cell, dt, mma) for cell in ("lstm", "gru", "rnn") for dt in STORAGE
        for mma in ((False,) if dt == torch.float64 else (False, True))}
    for variant in ("asan", "tsan"):
        assert any(c.mma for c in BWD_CASES[variant]) and any(not c.mma for c in BWD_CASES[variant])
    # the tensor-core kernel (PersistentMmaTraits: 64-row chunks at most, m-tiles of 16 units, k-steps split between
    # the warps while a chunk has fewer than 8 output tiles, 16-bit pairs loaded together for even H)
    mma = [c for c in BWD_PLAIN_CASES if c.mma]
    chunk = lambda c: min(256 // c.units * 4, 64)  # noqa: E731  (chunk_cols)
    assert any(c.batch_sizes[0] > chunk(c) for c in mma), "several chunks of one step"
    assert {-(-c.units // 16) for c in mma} == {1, 2}, "one and two m-tiles"
    assert any(max(c.batch_sizes) <= 8 for c in mma), "one n-tile: the k-steps split between warps"
    assert any(not c.reverse and len(set(c.batch_sizes)) > 1 for c in mma), "fewer rows of next than of the step"
    assert {c.H % 2 for c in mma if c.dtype != torch.float32} == {0, 1}, "16-bit pairs in one load, and not"
    assert any(c.cell == "gru" and c.H % 2 == 0 and c.dtype != torch.float32 for c in mma), "dph_n's pairs"
    assert {c.units for c in BWD_PLAIN_CASES} >= {1, 2, 4, 8, 32}
    assert any(c.reverse and len(set(c.batch_sizes)) > 1 for c in BWD_PLAIN_CASES), "grad_hx mid-sequence"
    assert any(c.dense for c in BWD_PLAIN_CASES) and any(c.batch_sizes[0] > 256 // c.units * 4 for c in BWD_PLAIN_CASES)
    groups = lambda c: 256 // c.units  # noqa: E731  (BwdPersistentTraits::groups)
    slots = {-(-min(b, 4 * groups(c)) // groups(c)) for c in BWD_PLAIN_CASES for b in c.batch_sizes}
    assert slots == {1, 2, 3, 4}, "every count of live row slots (BwdPersistentTraits::chunk_plan), every K tile width"
    split = {groups(c) // (1 << (b - 1).bit_length()) for c in BWD_PLAIN_CASES for b in c.batch_sizes
             if b < groups(c)}
    assert split >= {2, 4, 8, 16, 32, 64, 128, 256}, f"the K loop split every way chunk_plan splits it: {split}"


def test_backward_chunk_plans_cover_each_product_once_without_bank_conflicts():
    """BwdPersistentTraits::chunk_plan, for every unit count and every row count of a chunk, transcribed thread by
    thread as bwd_persistent indexes: thread tid = (batch group bg, unit u) with phase = bg % ks and row slot
    r = bg // ks sums, for each live slot i, row r + i * rg over the k = phase (mod ks) of every K tile. Every
    (row < rows, k) must be summed exactly once into the thread that owns the row in the epilogue (bg = row for a
    split K; the partials of the phases are summed by it), the staged rows and the split-K partials must fit the
    chunk's shared memory, and each warp-wide load of Ds and Ws must be one wavefront (fp32; 64-bit types are
    served per half-warp, which the same addresses keep conflict-free)."""
    out = emu.run_driver(SRC, "bchunk", {})
    threads, room = int(out["threads"][0]), int(out["room"][0])
    plans = zip(*(out[k].astype(int) for k in ("units", "rows", "ks", "rg", "slots", "tk", "ds")))
    for U, rows, ks, rg, slots, tk, ds in plans:
        groups, chunk = threads // U, threads // U * 4
        where = f"units={U} rows={rows}: ks={ks} rg={rg} slots={slots} tk={tk} ds={ds}"
        assert slots * rg * ds <= chunk * room and threads <= chunk * room, where
        assert tk % 32 == 0 and ds >= tk, where
        phases = {}  # row -> the k phases summed for it
        for bg in range(groups):
            for i in range(slots):
                row = bg // ks + i * rg
                if row < rows:
                    phases.setdefault(row, []).append(bg % ks)
                    # without a split the summing thread is the row's epilogue owner (bg = row mod groups); with
                    # one, the owner bg = row < rg sums the partials of threads row * ks + phase
                    assert (bg == row % groups) if ks == 1 else (row < rg and bg == row * ks + bg % ks), where
        assert sorted(phases) == list(range(rows)), where
        assert all(sorted(p) == list(range(ks)) for p in phases.values()), where
        for w in range(threads // 32):
            lanes = [(w * 32 + lane) // U for lane in range(32)]  # each lane's batch group
            for i in range(slots):
                ds_words = [[((bg // ks) + i * rg) * ds + bg % ks] for bg in lanes]
                assert _wavefronts(ds_words) == 1, (where, "Ds", w, i)
            ws_words = [[(bg % ks) * U + (w * 32 + lane) % U] for lane, bg in enumerate(lanes)]
            assert _wavefronts(ws_words) == 1, (where, "Ws", w)


@pytest.mark.parametrize("H,num_sms", [(512, 132), (1024, 132), (40, 132), (13, 4), (2048, 512)])
@pytest.mark.parametrize("storage,mma", [(0, 0), (0, 1), (1, 0), (2, 1), (3, 1)])
def test_backward_planner_spreads_units_over_the_sms(H, num_sms, storage, mma):
    """choose_bwd_kernel (persistent_plan.h) with the backward kernels' occupancy: a grid of at most one block per SM
    where W_hh fits the device's shared memory; none (the step kernels) for the float64 LSTM at H = 1024, whose W_hh
    (4H x H x 8 bytes = 32 MiB) exceeds 132 SMs' 227 KiB. With tensor cores allowed (bf16/fp16; float32 with TF32)
    the tensor-core kernel with at least 8 units per block, except where its fragments fit no grid but the FMA
    kernel's slice does: the TF32 LSTM at H = 2048 on 512 SMs (8 units per block: 256 KiB of B fragments; the FMA
    kernel's 4 units: 128 KiB + 33 KiB)."""
    out = emu.run_driver(SRC, "bplan", {"storage": storage, "cell": 0, "H": H, "num_sms": num_sms, "mma": mma})
    units = int(out["units"][0])
    if storage == 1 and H >= 1024:
        assert units == 0
        return
    assert units > 0 and int(out["grid"][0]) == -(-H // units) <= num_sms
    assert int(out["mma"][0]) == int(mma and not (storage == 0 and H == 2048)), (storage, H)
    if int(out["mma"][0]):
        assert units >= 8, "the tensor-core backward is planned with a full n-tile of 8 units at least"


def test_tf32_backward_rounds_its_operands(binaries):
    """One float32 LSTM step's backward with the exact (FMA) and the TF32 (tensor-core) kernel: grad_hx = dG @ W_hh
    (the LSTM's carry through h is all in dG; its cell state goes to grad_cx), dG as the kernel wrote it. The FMA
    kernel's product is the exact one and the TF32 kernel's the product of both operands rounded to TF32 (cvt.rna),
    each to fp32 accumulation order; the two differ by more than that (the rounding is applied)."""
    cases = [BwdCase("lstm", 40, (3,), 4, mma=mma) for mma in (False, True)]
    problems, proc, outputs = run_bwd_batch(cases, "plain")
    assert proc.returncode == 0 and outputs is not None, proc.stderr[-8000:]
    for k, case in enumerate(cases):
        w = torch.as_tensor(np.asarray(problems[k][0]["w_hh"])).to(torch.float64)
        dg = torch.as_tensor(np.asarray(outputs[f"{k}.dg"])).to(torch.float64)
        exact, rounded = dg @ w, tf32_rna(dg) @ tf32_rna(w)
        got = torch.as_tensor(np.asarray(outputs[f"{k}.grad_hx"])).to(torch.float64)
        torch.testing.assert_close(got, rounded if case.mma else exact, rtol=1e-5, atol=1e-5)
        assert (rounded - exact).abs().max() > 1e-4, "the problem tells a rounded product from the exact one"


@pytest.mark.parametrize("case", [BwdCase("rnn_tanh", 13, (3, 3, 3), 2), BwdCase("gru", 13, (3, 3, 3), 4,
                                                                                    dtype=torch.bfloat16),
                                  BwdCase("lstm", 40, (3, 3, 3), 8, dtype=torch.float16, mma=True)],
                         ids=["rnn", "gru", "lstm-mma"])
def test_dropped_grid_sync_is_a_tsan_race_backward(binaries, case):
    """Without the barrier between steps, blocks stage dG rows other blocks are writing: TSan must say so."""
    emu.require_variant("tsan")
    _, proc, _ = run_bwd_batch([case], "tsan", (DROP_GRID_SYNC,))
    assert proc.returncode != 0 and "ThreadSanitizer: data race" in proc.stderr, proc.stderr[-4000:]


# ======================================================================= both directions of a layer in one launch
# A bidirectional layer's two directions run in ONE cooperative launch (params.h FwdSeqLaunch / BwdSeqLaunch: grid
# row blockIdx.y = the direction, both meeting the same grid barrier once per step; persistent.h run_*_persistent
# with n = 2). The joint launch must give each direction exactly what its own launch gives (the same kernel code on
# the same units: bit for bit), and each against the oracle; the planner must fit twice the blocks.
_DIR_ARRAYS = ("w_hh", "hx", "gx", "b_hh", "cx", "out", "ws", "grad_out", "grad_hy", "grad_cy")


def _joint(d0: dict, d1: dict) -> dict:
    """The driver's inputs of one launch of both directions: d0's, and d1's per-direction arrays named with "_r"
    (d1 runs the other way in time), on a device of twice the SMs."""
    joint = {**d0, "directions": 2, "num_sms": 2 * int(d0["num_sms"])}
    joint.update({f"{k}_r": v for k, v in d1.items() if k in _DIR_ARRAYS})
    return joint


def _flip(case):
    return type(case)(**{**case.__dict__, "reverse": not case.reverse})


def _as64(a):
    return torch.as_tensor(np.asarray(a)).to(torch.float64)


# At most 8 blocks a direction: the emulator runs 4096 threads at once.
BIDIR_FWD = {"plain": [Case("lstm", 40, (5, 5, 3, 1), 8), Case("gru", 33, (6, 4, 1), 8, **BF16),
                       Case("rnn_relu", 13, (4, 2, 2), 2, **F64), Case("lstm", 13, (5, 3, 1), 4, **TF32)],
             "asan": [Case("lstm", 13, (5, 3, 1), 4, **BF16), Case("rnn_tanh", 40, (4, 3, 1), 8)],
             "tsan": [Case("gru", 13, (4, 2), 4, **F16)]}
BIDIR_BWD = {"plain": [BwdCase("lstm", 40, (5, 5, 3, 1), 8), BwdCase("gru", 40, (70, 40, 7), 8, mma=True),
                       BwdCase("rnn_tanh", 13, (4, 2, 2), 2, dtype=torch.float64),
                       BwdCase("lstm", 33, (6, 4, 1), 8, dtype=torch.bfloat16, mma=True)],
             "asan": [BwdCase("gru", 13, (5, 3, 1), 8, dtype=torch.bfloat16, mma=True),
                      BwdCase("lstm", 40, (4, 3, 1), 8, reverse=True)],
             "tsan": [BwdCase("lstm", 13, (5, 3, 1), 8, dtype=torch.float16, mma=True)]}


@pytest.mark.parametrize("variant", ["plain", "asan", "tsan"])
def test_both_directions_in_one_launch_forward(binaries, variant):
    """Each case's layer run forward and reverse (packed batch sizes: the reverse direction starts rows mid-sequence)
    in one launch, against the same directions in launches of their own (identical bits) and the oracle."""
    emu.require_variant(variant)
    subs, expect = [], []
    for k, case in enumerate(BIDIR_FWD[variant]):
        d0, d1 = make_problem(case, seed=2 * k), make_problem(_flip(case), seed=2 * k + 1)
        subs += [_joint(d0, d1), d0, d1]
        expect.append((case, d0, d1))
    _, proc, outputs = run_batch([None] * len(subs), variant, problems=subs)
    assert proc.returncode == 0 and not emu.sanitizer_report(proc.stderr) and outputs is not None, \
        proc.stderr[-8000:]
    for k, (case, d0, d1) in enumerate(expect):
        j, s0, s1 = 3 * k, 3 * k + 1, 3 * k + 2
        assert int(outputs[f"{j}.err"][0]) == 0, case.id
        names = ["output", "hy"] + (["cy"] if case.cell == "lstm" else []) + \
            (["ws"] if case.cell in ("lstm", "gru") else [])
        for name in names:
            for sfx, single in (("", s0), ("_r", s1)):
                assert torch.equal(_as64(outputs[f"{j}.{name}{sfx}"]), _as64(outputs[f"{single}.{name}"])), \
                    f"{case.id}: {name}{sfx}: the joint launch differs from the direction's own launch"
        check(case, d0, {n[len(f"{j}."):]: v for n, v in outputs.items()
                         if n.startswith(f"{j}.") and not n.endswith("_r")})
        check(_flip(case), d1, {n[len(f"{j}."):-2]: v for n, v in outputs.items()
                                if n.startswith(f"{j}.") and n.endswith("_r")} | {"err": outputs[f"{j}.err"]})


@pytest.mark.parametrize("variant", ["plain", "asan", "tsan"])
def test_both_directions_in_one_launch_backward(binaries, variant):
    """As the forward's: the backward of both directions in one launch (FMA and tensor-core kernels) against their own
    launches (identical bits) and the oracle's gradients."""
    emu.require_variant(variant)
    subs, expect = [], []
    for k, case in enumerate(BIDIR_BWD[variant]):
        (d0, e0), (d1, e1) = bwd_problem(case, seed=2 * k), bwd_problem(_flip(case), seed=2 * k + 1)
        subs += [_joint(d0, d1), d0, d1]
        expect.append((case, e0, e1))
    inputs = {"n": len(subs)}
    for k, d in enumerate(subs):
        inputs.update({f"{k}.{name}": v for name, v in d.items()})
    proc, outputs = emu.run_raw(emu.compile_driver(SRC, variant), "batch", inputs, variant, None, RUN_TIMEOUT_S)
    assert proc.returncode == 0 and not emu.sanitizer_report(proc.stderr) and outputs is not None, \
        proc.stderr[-8000:]
    for k, (case, e0, e1) in enumerate(expect):
        j = 3 * k
        assert int(outputs[f"{j}.err"][0]) == 0, case.id
        for sfx, single, expected, c in (("", j + 1, e0, case), ("_r", j + 2, e1, _flip(case))):
            for name, want in expected.items():
                got = _as64(outputs[f"{j}.{name}{sfx}"])
                assert torch.equal(got, _as64(outputs[f"{single}.{name}"])), \
                    f"{c.id}: {name}{sfx}: the joint launch differs from the direction's own launch"
                torch.testing.assert_close(got, want.detach(), **c.tol, msg=lambda m, n=name, c=c: f"{c.id}: {n}: {m}")


def test_both_directions_need_twice_the_resident_blocks(binaries):
    """A joint launch is refused where only one direction's grid fits (as cudaLaunchCooperativeKernel refuses it):
    the host then runs the directions one after the other. One emulated SM holds 8 blocks of 256 threads of the
    LSTM's FMA kernel at 8 units (about 23 KB of shared memory each): 2 x 2 blocks (H = 13) run, 5 blocks (H = 40)
    of one direction run, 2 x 5 do not."""
    exe = emu.compile_driver(SRC, "plain")
    for H, joint_fits in ((13, True), (40, False)):
        case = Case("lstm", H, (3, 2), 8)
        d0, d1 = make_problem(case), make_problem(_flip(case), seed=1)
        proc, alone = emu.run_raw(exe, "forward", {**d0, "num_sms": 1}, "plain", None, RUN_TIMEOUT_S)
        assert proc.returncode == 0 and int(alone["err"][0]) == 0, proc.stderr[-4000:]
        proc, out = emu.run_raw(exe, "forward", {**_joint(d0, d1), "num_sms": 1}, "plain", None, RUN_TIMEOUT_S)
        assert proc.returncode == 0, proc.stderr[-4000:]
        if joint_fits:
            assert int(out["err"][0]) == 0 and np.array_equal(out["output"], alone["output"])
            assert not np.isnan(out["output_r"]).any()
        else:
            assert int(out["err"][0]) == COOPERATIVE_LAUNCH_TOO_LARGE
            assert np.isnan(out["output"]).all() and np.isnan(out["output_r"]).all(), "a refused launch runs nothing"


@pytest.mark.parametrize("kind,H,num_sms,one,both", [("plan", 512, 132, 4, 8), ("plan", 40, 132, 1, 1),
                                                     ("plan", 13, 4, 4, 8), ("bplan", 512, 132, 4, 8),
                                                     ("bplan", 1024, 132, 8, 0)])
def test_planner_fits_both_directions(kind, H, num_sms, one, both):
    """choose_units / choose_bwd_kernel with directions = 2: twice ceil(H / units) blocks on the SMs (float32, exact:
    the FMA kernels), so a bidirectional layer takes units that spread both directions' blocks over the device; none
    where the two directions' W_hh exceed the device's shared memory (the FMA backward's float32 LSTM at H = 1024:
    2 x 16 MiB against 132 x 227 KiB), and the directions run one after the other."""
    for dirs, units in ((1, one), (2, both)):
        out = emu.run_driver(SRC, kind, {"storage": 0, "cell": 0, "H": H, "num_sms": num_sms, "directions": dirs})
        assert int(out["units"][0]) == units, (dirs, out)
        assert dirs * int(out["grid"][0]) <= num_sms
