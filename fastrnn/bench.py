"""fastrnn's benchmark command: fastrnn vs torch.nn, parity first, then interleaved timings.

    python -m fastrnn.bench                      # every case, on cuda if available else cpu
    python -m fastrnn.bench --quick              # every case at a short sequence length, < 1 min on 2 CPU cores
    python -m fastrnn.bench --cases 'lstm-*' --dtype float32 --mode training
    python -m fastrnn.bench --device cpu --markdown benchmarks/results/cpu.md
    fastrnn-bench --list                         # the case names

What one row measures (a "run": one case, one mode, one dtype):

* parity first: torch.nn and fastrnn modules with the same state_dict (load_state_dict strict) get the same
  input; outputs, final states and (training) every gradient must agree within the dtype's tolerance
  (TOLERANCE below). A mismatch marks the row PARITY_FAIL, no speed is reported for it, and the command exits 1.
* time: median milliseconds of one call, inference = forward under torch.no_grad(), training = forward +
  backward of a fixed upstream gradient into the output (parameter and input gradients; .grad reset to None
  before every call so neither side pays for accumulation). Calls are interleaved (ref, fast, ref, fast, ...)
  in one process so drifting machine load hits both; CUDA is synchronized before and after every call.
  speedup = torch.nn median / fastrnn median.
* peak memory: CUDA: torch.cuda.max_memory_allocated() during one call minus what was allocated before it.
  CPU: the peak of live bytes allocated through PyTorch's CPU allocator during one call, from
  torch.profiler's allocation records (profile_memory=True), minus nothing (counted from the call's start).
  Allocations a library makes behind the allocator's back (oneDNN/MKL scratch space) are not seen on either
  side. Measured in one extra untimed call per side.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import datetime as _dt
import fnmatch
import json
import math
import os
import platform
import shlex
import signal
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

QUICK_T = 10  # --quick caps every sequence at this length
KINDS = ("lstm", "gru", "rnn_tanh")
MODES = ("inference", "training")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("float32", "float16", "bfloat16")}

# Parity tolerance, per dtype, stated once: a tensor pair (ref, fast) agrees when
#     max|fast - ref| <= TOLERANCE[dtype] * max(1, max|ref|)
# i.e. an absolute bound for values of order one and a relative one for large values (weight gradients
# summed over T*B rows). Checked on the output, the final states and, in training, every gradient.
TOLERANCE = {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}

# Targets from the issue ("Benchmark suite and the main command"): see target_for().
OUT_COLUMNS = [
    "case", "mode", "dtype", "device", "T", "B", "I", "H", "layers", "bidirectional", "packed",
    "status", "parity_max_err", "parity_tol", "torch_ms", "fastrnn_ms", "speedup", "torch_min_ms",
    "fastrnn_min_ms", "repeats", "torch_peak_mb", "fastrnn_peak_mb", "target", "meets_target", "parity_note", "error",
]


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark shape. `name` is stable (it is what --cases and the pytest ids use)."""

    name: str
    kind: str  # lstm | gru | rnn_tanh
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    packed: Optional[Tuple[int, int]] = None  # (min_len, max_len): B sequences of mixed lengths
    T_cpu: Optional[int] = None  # shorter sequence on the CPU, where the full one takes too long
    smoke: bool = False  # tiny shapes for tests; only run when named explicitly

    def seq_len(self, device: str, quick: bool = False) -> int:
        T = self.T_cpu if (device == "cpu" and self.T_cpu) else self.T
        return min(T, QUICK_T) if quick and not self.smoke else T

    def shape(self, device: str, quick: bool = False) -> Dict[str, object]:
        T = self.seq_len(device, quick)
        packed = None
        if self.packed:
            lo, hi = self.packed
            packed = (max(1, lo * T // hi), T) if T < hi else (lo, hi)  # shortened: same proportions
        return {"T": T, "B": self.B, "I": self.I, "H": self.H, "layers": self.layers,
                "bidirectional": self.bidirectional, "packed": packed}


def _make_cases() -> List[Case]:
    cases = []
    for kind in KINDS:
        # T=100, B=64, I=H=512: the defaults of PyTorch's own RNN benchmarks (benchmarks/fastrnns).
        cases += [
            Case(f"{kind}-default", kind, T=100, B=64, I=512, H=512),
            Case(f"{kind}-b1", kind, T=100, B=1, I=512, H=512),
            Case(f"{kind}-b8", kind, T=100, B=8, I=512, H=512),
            Case(f"{kind}-h1024", kind, T=100, B=64, I=1024, H=1024, T_cpu=50),
            Case(f"{kind}-long", kind, T=1000, B=16, I=64, H=64),
            Case(f"{kind}-bidir2", kind, T=100, B=64, I=256, H=256, layers=2, bidirectional=True),
            Case(f"{kind}-packed", kind, T=100, B=64, I=512, H=512, packed=(20, 100)),
            Case(f"{kind}-tiny", kind, T=5, B=3, I=8, H=8, smoke=True),
        ]
    return cases


CASES: List[Case] = _make_cases()
CASES_BY_NAME: Dict[str, Case] = {c.name: c for c in CASES}


def select_cases(spec: Optional[str]) -> List[Case]:
    """Cases named by a comma list of names or globs ('lstm-*,gru-b1'). Globs and the default (all) leave the
    `-tiny` smoke cases out; name one explicitly to run it."""
    if not spec:
        return [c for c in CASES if not c.smoke]
    chosen: List[Case] = []
    for pat in (p.strip() for p in spec.split(",")):
        if not pat:
            continue
        if pat in CASES_BY_NAME:
            hits = [CASES_BY_NAME[pat]]
        else:
            hits = [c for c in CASES if fnmatch.fnmatchcase(c.name, pat) and not c.smoke]
        if not hits:
            raise SystemExit(f"fastrnn.bench: --cases: no case matches {pat!r} (see --list)")
        chosen += [c for c in hits if c not in chosen]
    return chosen


def target_for(case: Case, mode: str, dtype: str, device: str) -> Optional[float]:
    """The speedup the issue asks for, or None where it sets none.

    CPU float32: LSTM >= 1.0x at every shape, GRU >= 1.5x at every shape, >= 2.0x at B=1 in training (read
    as every cell kind). CPU bfloat16: >= 1.0x torch.nn's bfloat16. GPU: >= 1.0x cuDNN at the default shape
    and >= 1.5x at B <= 8 (every dtype)."""
    if case.smoke:
        return None
    if device == "cuda":
        if case.B <= 8:
            return 1.5
        return 1.0 if case.name.endswith("-default") else None
    if dtype == "bfloat16":
        return 1.0
    target = {"lstm": 1.0, "gru": 1.5}.get(case.kind)
    if case.B == 1 and mode == "training":
        target = max(target or 0.0, 2.0)
    return target


# --------------------------------------------------------------------------------------------- modules
def build_pair(case: Case, device: str, dtype: torch.dtype, quick: bool = False, seed: int = 0):
    """(torch.nn module, fastrnn module with the same state_dict, input, upstream grad for the output)."""
    import fastrnn

    shape = case.shape(device, quick)
    T, B, I, H = shape["T"], shape["B"], shape["I"], shape["H"]
    kw = dict(num_layers=case.layers, bidirectional=case.bidirectional)
    if case.kind == "lstm":
        ref_cls, fast_cls = torch.nn.LSTM, fastrnn.LSTM
    elif case.kind == "gru":
        ref_cls, fast_cls = torch.nn.GRU, fastrnn.GRU
    else:
        ref_cls, fast_cls = torch.nn.RNN, fastrnn.RNN
        kw["nonlinearity"] = "tanh"
    torch.manual_seed(seed)
    ref = ref_cls(I, H, **kw).to(device=device, dtype=dtype)
    fast = fast_cls(I, H, **kw).to(device=device, dtype=dtype)
    fast.load_state_dict(ref.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, B, I, generator=gen).to(device=device, dtype=dtype)
    out_features = H * (2 if case.bidirectional else 1)
    if shape["packed"]:
        lo, hi = shape["packed"]
        lengths = torch.randint(lo, hi + 1, (B,), generator=gen)
        lengths[0] = hi  # the longest sequence is always present, so the packed sequence spans T steps
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        inp = PackedSequence(packed.data.detach(), packed.batch_sizes, packed.sorted_indices,
                             packed.unsorted_indices)
        grad = torch.randn(packed.data.shape[0], out_features, generator=gen).to(device=device, dtype=dtype)
    else:
        inp = x
        grad = torch.randn(T, B, out_features, generator=gen).to(device=device, dtype=dtype)
    return ref, fast, inp, grad


def _data(x):
    return x.data if isinstance(x, PackedSequence) else x


def _with_grad(inp):
    """A fresh leaf copy of the input that requires grad (so both sides compute the input gradient too)."""
    if isinstance(inp, PackedSequence):
        return PackedSequence(inp.data.detach().clone().requires_grad_(), inp.batch_sizes, inp.sorted_indices,
                              inp.unsorted_indices)
    return inp.detach().clone().requires_grad_()


def _flatten_state(state) -> List[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def make_call(module, inp, grad, mode: str) -> Callable[[], None]:
    """The timed callable: one forward (inference, under no_grad) or one forward + backward (training)."""
    if mode == "inference":
        def call():
            with torch.no_grad():
                module(inp)
        return call
    params = list(module.parameters())
    x = _with_grad(inp)

    def call():
        for p in params:
            p.grad = None
        _data(x).grad = None
        out, _ = module(x)
        torch.autograd.backward([_data(out)], [grad])
    return call


def run_once_for_parity(module, inp, grad, mode: str) -> List[Tuple[str, torch.Tensor]]:
    """Runs one call and returns everything parity compares, named."""
    if mode == "inference":
        with torch.no_grad():
            out, state = module(inp)
        named = [("output", _data(out))]
        named += [(f"state[{i}]", s) for i, s in enumerate(_flatten_state(state))]
        return named
    module.zero_grad(set_to_none=True)
    x = _with_grad(inp)
    out, state = module(x)
    torch.autograd.backward([_data(out)], [grad])
    named = [("output", _data(out).detach())]
    named += [(f"state[{i}]", s.detach()) for i, s in enumerate(_flatten_state(state))]
    named.append(("grad_input", _data(x).grad))
    named += [(f"grad_{n}", p.grad) for n, p in module.named_parameters()]
    return named


class ParityError(AssertionError):
    pass


def _norm_err(ref: torch.Tensor, got: torch.Tensor) -> float:
    """max|got - ref| / max(1, max|ref|), in float64 (NaN when either holds a NaN)."""
    if ref.numel() == 0:
        return 0.0
    a64, b64 = ref.detach().double(), got.detach().double()
    return (a64 - b64).abs().max().item() / max(1.0, a64.abs().max().item())


def check_parity(ref, fast, inp, grad, mode: str, dtype: torch.dtype) -> Tuple[float, str]:
    """Compares fastrnn against torch.nn on one call. Returns (worst normalized error, note); raises
    ParityError naming the first tensor out of tolerance.

    In float16/bfloat16 torch.nn is not always the more accurate side (on the CPU it accumulates some
    gradients in the half type: measured 8e-2 off a float64 run on rnn_tanh-long's grad_weight_hh, where
    fastrnn is 4e-3 off). So a half-precision tensor that misses torch.nn by more than the tolerance is judged
    against float64 instead: torch.nn run in float64 on the same (already rounded) weights, input and gradient;
    it passes only if fastrnn is within the tolerance of that, and the note says so."""
    tol = TOLERANCE[dtype]
    want = run_once_for_parity(ref, inp, grad, mode)
    got = run_once_for_parity(fast, inp, grad, mode)
    exact = None  # the float64 arbiter, built only when needed
    worst, arbitrated = 0.0, []
    for (name, a), (_, b) in zip(want, got):
        if b is None or a is None:
            raise ParityError(f"{name}: {'fastrnn' if b is None else 'torch.nn'} produced no tensor")
        if a.shape != b.shape:
            raise ParityError(f"{name}: shape {tuple(b.shape)} != torch.nn's {tuple(a.shape)}")
        err = _norm_err(a, b)
        if not err <= tol and dtype in (torch.float16, torch.bfloat16) and math.isfinite(err):
            if exact is None:
                ref64 = copy.deepcopy(ref).double()
                inp64 = (PackedSequence(inp.data.double(), inp.batch_sizes, inp.sorted_indices,
                                        inp.unsorted_indices) if isinstance(inp, PackedSequence) else inp.double())
                exact = dict(run_once_for_parity(ref64, inp64, grad.double(), mode))
            err64, ref_err64 = _norm_err(exact[name], b), _norm_err(exact[name], a)
            if err64 <= tol:
                arbitrated.append(f"{name} (torch.nn {ref_err64:.1e} / fastrnn {err64:.1e} off float64)")
                worst = max(worst, err64)
                continue
            raise ParityError(f"{name}: max|fastrnn - torch.nn| / max(1, max|torch.nn|) = {err:.3g} and "
                              f"{err64:.3g} against float64 > tolerance {tol:g} ({dtype})")
        if not err <= tol:  # also catches NaN
            raise ParityError(f"{name}: max|fastrnn - torch.nn| / max(1, max|torch.nn|) = {err:.3g} > "
                              f"tolerance {tol:g} ({dtype})")
        worst = max(worst, err)
    note = ("judged against float64 where torch.nn was off: " + ", ".join(arbitrated)) if arbitrated else ""
    return worst, note


# ---------------------------------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], None], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3


@contextlib.contextmanager
def _quiet_stderr():
    """Silences the C++-level lines kineto prints to fd 2 when a profiler starts and stops."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(fn: Callable[[], None], device: str) -> Optional[float]:
    """Peak bytes allocated during one call of fn (see the module docstring), in MiB."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    from torch.autograd import DeviceType

    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def interleaved_medians(ref_fn, fast_fn, device: str, warmup: int, repeats: Optional[int],
                        budget_s: float, min_repeats: int = 3, max_repeats: int = 50):
    """Warm-up calls, then ref, fast, ref, fast, ... Returns (ref times, fast times) in ms.

    repeats=None picks the count adaptively: as many pairs as fit in budget_s (judged from the warm-up
    pairs, or the first pair), clamped to [min_repeats, max_repeats]."""
    ref_t, fast_t = [], []
    pair_ms = None
    for _ in range(warmup):
        pair_ms = time_call(ref_fn, device) + time_call(fast_fn, device)
    n = repeats
    i = 0
    while True:
        if n is not None and i >= n:
            break
        ref_t.append(time_call(ref_fn, device))
        fast_t.append(time_call(fast_fn, device))
        i += 1
        if n is None:
            pair_ms = min(pair_ms or math.inf, ref_t[-1] + fast_t[-1])
            n = int(min(max_repeats, max(min_repeats, budget_s * 1e3 // max(pair_ms, 1e-3))))
    return ref_t, fast_t


# -------------------------------------------------------------------------------------------- one run
def run_case(case: Case, mode: str, dtype_name: str, device: str, *, quick: bool, warmup: int,
             repeats: Optional[int], budget_s: float, measure_memory: bool = True) -> Dict[str, object]:
    dtype = DTYPES[dtype_name]
    shape = case.shape(device, quick)
    row: Dict[str, object] = {k: "" for k in OUT_COLUMNS}
    row.update(case=case.name, mode=mode, dtype=dtype_name, device=device, T=shape["T"], B=shape["B"],
               I=shape["I"], H=shape["H"], layers=shape["layers"], bidirectional=shape["bidirectional"],
               packed="" if not shape["packed"] else f"{shape['packed'][0]}..{shape['packed'][1]}",
               parity_tol=TOLERANCE[dtype])
    target = target_for(case, mode, dtype_name, device)
    row["target"] = "" if target is None else target
    try:
        ref, fast, inp, grad = build_pair(case, device, dtype, quick)
        if mode == "inference":
            ref.eval(), fast.eval()
        row["parity_max_err"], row["parity_note"] = check_parity(ref, fast, inp, grad, mode, dtype)
    except ParityError as exc:
        row.update(status="PARITY_FAIL", error=str(exc))
        return row
    except Exception as exc:  # a crash is a failure too, never a silent skip
        row.update(status="ERROR", error=f"{type(exc).__name__}: {exc}")
        return row
    try:
        ref_fn, fast_fn = make_call(ref, inp, grad, mode), make_call(fast, inp, grad, mode)
        if measure_memory:  # untimed, before the timing: these calls warm up too, like the parity calls
            row["torch_peak_mb"] = round(peak_memory_mb(ref_fn, device), 2)
            row["fastrnn_peak_mb"] = round(peak_memory_mb(fast_fn, device), 2)
        ref_t, fast_t = interleaved_medians(ref_fn, fast_fn, device, warmup, repeats, budget_s)
        t_ref, t_fast = statistics.median(ref_t), statistics.median(fast_t)
        row.update(status="OK", torch_ms=round(t_ref, 4), fastrnn_ms=round(t_fast, 4),
                   speedup=round(t_ref / t_fast, 3), torch_min_ms=round(min(ref_t), 4),
                   fastrnn_min_ms=round(min(fast_t), 4), repeats=len(ref_t))
        if target is not None:
            row["meets_target"] = bool(row["speedup"] >= target)
    except Exception as exc:
        row.update(status="ERROR", error=f"{type(exc).__name__}: {exc}")
    return row


# --------------------------------------------------------------------------------------------- outputs
def machine_info(device: str) -> Dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: Dict[str, object] = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device, "mkldnn_enabled": torch.backends.mkldnn.enabled,
    }
    try:
        import fastrnn
        info["fastrnn"] = getattr(fastrnn, "__version__", "?")
    except Exception:  # noqa: BLE001
        info["fastrnn"] = "not importable"
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v or "-")


def _shape_str(row) -> str:
    s = f"T={row['T']} B={row['B']} I={row['I']} H={row['H']}"
    if row["layers"] != 1:
        s += f" L={row['layers']}"
    if row["bidirectional"]:
        s += " bi"
    if row["packed"]:
        s += f" len={row['packed']}"
    return s


TABLE_HEAD = ["case", "mode", "dtype", "shape", "torch.nn ms", "fastrnn ms", "speedup", "target",
              "torch.nn MiB", "fastrnn MiB", "parity err", "n", "status"]


def table_cells(row) -> List[str]:
    status = row["status"]
    if status == "OK" and row["meets_target"] is False:
        status = "below target"
    return [row["case"], row["mode"], row["dtype"], _shape_str(row), _fmt(row["torch_ms"], ".2f"),
            _fmt(row["fastrnn_ms"], ".2f"), _fmt(row["speedup"], ".2f") + ("x" if row["speedup"] != "" else ""),
            _fmt(row["target"], ".1f") + ("x" if row["target"] != "" else ""), _fmt(row["torch_peak_mb"], ".1f"),
            _fmt(row["fastrnn_peak_mb"], ".1f"), _fmt(row["parity_max_err"], ".1e"), _fmt(row["repeats"], "d"),
            status]


def format_table(rows) -> str:
    cells = [TABLE_HEAD] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE_HEAD))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows, info, command: str, date: str) -> str:
    out = ["# fastrnn vs torch.nn: {} results".format(info["device"].upper()), "",
           "Generated by `fastrnn.bench`; do not edit by hand, re-run the command below.", "",
           f"- command: `{command}`", f"- date: {date}",
           f"- machine: {info['cpu']}, {info['cpu_count']} logical CPUs, torch threads {info['torch_threads']}"]
    if "gpu" in info:
        out.append(f"- GPU: {info['gpu']} (CUDA {info['cuda']}, cuDNN {info['cudnn']})")
    out.append(f"- torch {info['torch']}, fastrnn {info['fastrnn']}, Python {info['python']}, "
               f"{info['platform']}")
    if "loadavg_start" in info:
        out.append(f"- load average (1/5/15 min) at start {info['loadavg_start']}, at end "
                   f"{info.get('loadavg_end', '?')}")
    if not info.get("complete", True):
        out += ["", f"**PARTIAL: {info.get('runs_done')} of {info.get('runs_planned')} runs** (the command was "
                "interrupted or is still running)."]
    out += ["", "Times are medians of interleaved calls (torch.nn, fastrnn, torch.nn, ...); speedup = torch.nn "
            "median / fastrnn median. Memory: peak bytes allocated during one call (see benchmarks/README.md). "
            "Parity err: worst max|fastrnn - torch.nn| / max(1, max|torch.nn|) over outputs, states and "
            "gradients; tolerance " + ", ".join(f"{str(k).replace('torch.', '')} {v:g}"
                                                for k, v in TOLERANCE.items()) + ".", ""]
    out.append("| " + " | ".join(TABLE_HEAD) + " |")
    out.append("|" + "|".join("---" for _ in TABLE_HEAD) + "|")
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "/") for c in table_cells(r)) + " |")
    failed = [r for r in rows if r["status"] != "OK"]
    below = [r for r in rows if r["meets_target"] is False]
    out += ["", f"{len(rows)} runs: {len(rows) - len(failed)} ok, {len(failed)} failed, "
            f"{len(below)} below target."]
    for r in failed:
        out.append(f"- {r['case']} {r['mode']} {r['dtype']}: {r['status']}: {r['error']}")
    for r in rows:
        if r.get("parity_note"):
            out.append(f"- parity of {r['case']} {r['mode']} {r['dtype']} {r['parity_note']}")
    return "\n".join(out) + "\n"


def write_chart(rows, path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001  matplotlib is optional
        return False
    ok = [r for r in rows if r["status"] == "OK"]
    if not ok:
        return False
    labels = [f"{r['case']} {r['mode'][:5]} {r['dtype'].replace('float', 'fp').replace('bfloat', 'bf')}"
              for r in ok]
    speed = [r["speedup"] for r in ok]
    colors = ["tab:green" if r["meets_target"] is True else "tab:red" if r["meets_target"] is False
              else "tab:blue" for r in ok]
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * len(ok) + 1)))
    ax.barh(range(len(ok)), speed, color=colors)
    ax.set_yticks(range(len(ok)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("speedup over torch.nn (median / median); green = meets target, red = below")
    ax.set_title(f"fastrnn vs torch.nn ({ok[0]['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(rows, info, out_dir: str, stem: str, chart: bool = True) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    jpath = os.path.join(out_dir, f"{stem}.json")
    with open(jpath, "w") as f:
        json.dump({"machine": info, "tolerance": {str(k): v for k, v in TOLERANCE.items()}, "results": rows},
                  f, indent=1)
    paths.append(jpath)
    cpath = os.path.join(out_dir, f"{stem}.csv")
    with open(cpath, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=OUT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    paths.append(cpath)
    ppath = os.path.join(out_dir, f"{stem}.png")
    if chart and write_chart(rows, ppath):
        paths.append(ppath)
    return paths


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fastrnn-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--cases", default=None, help="comma list of case names or globs (default: all; see --list)")
    p.add_argument("--mode", default="inference,training", help="inference, training or both (comma list)")
    p.add_argument("--dtype", default=None,
                   help="comma list; default float32,bfloat16 on cpu, float32,float16,bfloat16 on cuda "
                        "(float32 only with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"sequence length capped at {QUICK_T}, 3 timed pairs, no extra warm-up, no memory, float32 only "
                        "unless --dtype")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed (ref, fast) pairs per run (default: adaptive, see --budget)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed (ref, fast) pairs before the timed ones (default: 1 on cuda, 0 on cpu, where the "
                        "parity and memory calls already warmed both sides up)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed calls per run when --repeats is not given (default 3; 3 to 50 pairs)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                   help="measure peak memory (one extra untimed call per side; default on, off with --quick)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"),
                   help="directory for <device>.json/.csv/.png (default benchmarks/results)")
    p.add_argument("--stem", default=None, help="file name stem in --out (default: the device, +'-quick')")
    p.add_argument("--markdown", default=None, help="also write the results as a markdown report here")
    p.add_argument("--list", action="store_true", help="print the case names and exit")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for c in CASES:
            print(f"{c.name:18s} T={c.T}{f' (cpu {c.T_cpu})' if c.T_cpu else ''} B={c.B} I={c.I} H={c.H}"
                  f"{f' layers={c.layers}' if c.layers != 1 else ''}{' bidirectional' if c.bidirectional else ''}"
                  f"{f' packed lengths {c.packed[0]}..{c.packed[1]}' if c.packed else ''}"
                  f"{' (smoke; only when named)' if c.smoke else ''}")
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("fastrnn.bench: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    cases = select_cases(args.cases)
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"fastrnn.bench: --mode: unknown mode {m!r} (inference, training)")
    dtypes = ([d.strip() for d in args.dtype.split(",") if d.strip()] if args.dtype
              else (["float32"] if args.quick else list(DEVICE_DTYPES[device])))
    for d in dtypes:
        if d not in DEVICE_DTYPES[device]:
            raise SystemExit(f"fastrnn.bench: --dtype {d!r} is not benchmarked on {device} "
                             f"(choose from {', '.join(DEVICE_DTYPES[device])})")
    # On the CPU the parity call (and the memory call) already ran each side once on the same shapes, which is
    # all the warm-up oneDNN/MKL need; on CUDA one more pair lets cuDNN and the caching allocator settle.
    warmup = args.warmup if args.warmup is not None else (1 if device == "cuda" else 0)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else None)
    budget = args.budget if args.budget is not None else 3.0
    if repeats is not None and repeats < 1:
        raise SystemExit("fastrnn.bench: --repeats must be >= 1")

    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` writes the runs done so far too
    import fastrnn  # noqa: F401  fail early, before any timing, if the extension is not built

    info = machine_info(device)
    runs = [(c, m, d) for c in cases for m in modes for d in dtypes]
    print(f"fastrnn.bench: {len(runs)} runs on {device} ({info['cpu']}; torch {info['torch']}, "
          f"{info['torch_threads']} threads){' [quick]' if args.quick else ''}", file=sys.stderr)
    stem = args.stem or (device + ("-quick" if args.quick else ""))
    command = ("python -m fastrnn.bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                               else argv))).strip()
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows: List[Dict[str, object]] = []
    t_start = time.perf_counter()

    def save(done: bool) -> List[str]:
        """(Re)writes every output; called after each run too, so an interrupted run leaves a consistent,
        clearly marked partial report instead of nothing."""
        if hasattr(os, "getloadavg"):
            info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        info["wall_s"] = round(time.perf_counter() - t_start, 1)
        info["runs_planned"], info["runs_done"] = len(runs), len(rows)
        info["complete"] = done and len(rows) == len(runs)
        paths = write_outputs(rows, info, args.out, stem, chart=done)
        if args.markdown:
            os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
            with open(args.markdown, "w") as f:
                f.write(format_markdown(rows, info, command, date))
            paths.append(args.markdown)
        return paths

    interrupted = False
    try:
        for i, (case, mode, dtype) in enumerate(runs, 1):
            t0 = time.perf_counter()
            row = run_case(case, mode, dtype, device, quick=args.quick, warmup=warmup, repeats=repeats,
                           budget_s=budget,
                           measure_memory=args.memory if args.memory is not None else not args.quick)
            rows.append(row)
            took = time.perf_counter() - t0
            if row["status"] == "OK":
                msg = (f"torch.nn {row['torch_ms']:.2f} ms  fastrnn {row['fastrnn_ms']:.2f} ms  "
                       f"{row['speedup']:.2f}x  (n={row['repeats']}, parity {row['parity_max_err']:.1e})")
                if row["meets_target"] is False:
                    msg += f"  BELOW TARGET {row['target']}x"
            else:
                msg = f"*** {row['status']}: {row['error']}"
            print(f"[{i}/{len(runs)}] {case.name} {mode} {dtype}: {msg}  [{took:.1f}s]", file=sys.stderr,
                  flush=True)
            if i < len(runs):
                save(done=False)
    except KeyboardInterrupt:
        interrupted = True
        print(f"fastrnn.bench: interrupted after {len(rows)} of {len(runs)} runs; writing those", file=sys.stderr)

    print(format_table(rows))
    paths = save(done=True)
    print(f"fastrnn.bench: wrote {', '.join(paths)} ({info['wall_s']}s)", file=sys.stderr)
    if interrupted:
        return 130

    failed = [r for r in rows if r["status"] != "OK"]
    if failed:
        print(f"fastrnn.bench: FAILED: {len(failed)} of {len(rows)} runs did not pass parity or crashed:",
              file=sys.stderr)
        for r in failed:
            print(f"  {r['case']} {r['mode']} {r['dtype']}: {r['status']}: {r['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
