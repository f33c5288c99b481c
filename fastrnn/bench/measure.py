"""Measuring one run: the module pair, parity, interleaved timing and peak memory."""
from __future__ import annotations

import contextlib
import copy
import math
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from .cases import DTYPES, Case, target_for

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

