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

from .cases import DTYPES, Case, gemm_bound, gemm_flops, target_for

# Parity tolerance, per dtype, stated once: a tensor pair (ref, fast) agrees when
#     max|fast - ref| <= TOLERANCE[dtype] * max(1, max|ref|)
# i.e. an absolute bound for values of order one and a relative one for large values (weight gradients
# summed over T*B rows). Checked on the output, the final states and, in training, every gradient.
TOLERANCE = {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}

# Timed (torch.nn, fastrnn) pairs per run when --repeats is not given: at least MIN_REPEATS, so that the
# spread of the per-pair ratios (speedup_q1..speedup_q3, their interquartile range) means something, then as
# many as fit in the run's time budget, at most MAX_REPEATS.
MIN_REPEATS = 5

# check_parity: a peer with ref.rounding_amplified passes fastrnn within this many times the peer's own error
# off float64 (a real bug is off by O(1), not by a small factor of the rounding both sides amplify).
ROUNDING_AMPLIFIED_FACTOR = 4.0
MAX_REPEATS = 50

# The columns of a result row (JSON "results", CSV). Targets: see cases.target_for(). GEMM columns: see
# cases.gemm_flops() and cases.gemm_bound(); the fractions are of the peak GEMM rate measured at the start.
OUT_COLUMNS = [
    "case", "mode", "dtype", "device", "T", "B", "I", "H", "layers", "bidirectional", "packed",
    "status", "parity_max_err", "parity_tol", "torch_ms", "fastrnn_ms", "speedup", "speedup_q1", "speedup_q3",
    "torch_min_ms", "fastrnn_min_ms", "repeats", "torch_peak_mb", "fastrnn_peak_mb", "gemm_bound", "gemm_gflop",
    "torch_gemm_frac", "fastrnn_gemm_frac", "target", "meets_target", "parity_note", "error",
]



# --------------------------------------------------------------------------------------------- modules
def build_pair(case: Case, device: str, dtype: torch.dtype, seed: int = 0):
    """(torch.nn module, fastrnn module with the same state_dict, input, upstream grad for the output).
    A case with fastrnn options: (the hand-written peer, fastrnn with the options, ...), handwritten.build_pair."""
    if case.options:
        from .handwritten import build_pair as build_handwritten_pair
        return build_handwritten_pair(case, device, dtype, seed)
    import fastrnn

    shape = case.shape(device)
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
    it passes only if fastrnn is within the tolerance of that, and the note says so.

    A layer-normalised recurrence is not contractive (LN rescales W_hh h to unit variance however small h is),
    so rounding grows along the sequence in every dtype: on lstm-layernorm (T=100) float32 the hand-written
    peer ends 5.6e-4 and fastrnn 1.1e-3 off float64, both above the float32 tolerance. A peer that says so
    (ref.rounding_amplified) has every tensor out of tolerance judged against float64 as above, and it also
    passes when fastrnn is within ROUNDING_AMPLIFIED_FACTOR times the peer's own distance from float64.

    A peer that draws random masks in training (handwritten's zoneout: ref.random_in_training) is compared
    with both modules in eval mode, where the masks are their expectation; the modes are restored after."""
    if getattr(ref, "random_in_training", False) and (ref.training or fast.training):
        was = [(m, m.training) for m in (ref, fast)]
        ref.eval(), fast.eval()
        try:
            return check_parity(ref, fast, inp, grad, mode, dtype)
        finally:
            for m, training in was:
                m.train(training)
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
        # rel: a peer whose recurrence amplifies rounding (handwritten's layer norm: ref.rounding_amplified)
        # is judged against float64 in every dtype, relative to its own distance from float64
        rel = getattr(ref, "rounding_amplified", False)
        if not err <= tol and (dtype in (torch.float16, torch.bfloat16) or rel) and math.isfinite(err):
            if exact is None:
                ref64 = copy.deepcopy(ref).double()
                inp64 = (PackedSequence(inp.data.double(), inp.batch_sizes, inp.sorted_indices,
                                        inp.unsorted_indices) if isinstance(inp, PackedSequence) else inp.double())
                exact = dict(run_once_for_parity(ref64, inp64, grad.double(), mode))
            err64, ref_err64 = _norm_err(exact[name], b), _norm_err(exact[name], a)
            if err64 <= tol or (rel and err64 <= ROUNDING_AMPLIFIED_FACTOR * ref_err64):
                arbitrated.append(f"{name} (torch.nn {ref_err64:.1e} / fastrnn {err64:.1e} off float64)")
                worst = max(worst, err64)
                continue
            raise ParityError(f"{name}: max|fastrnn - torch.nn| / max(1, max|torch.nn|) = {err:.3g} and "
                              f"{err64:.3g} against float64 > tolerance {tol:g} ({dtype})"
                              + (f" and > {ROUNDING_AMPLIFIED_FACTOR:g} x the peer's {ref_err64:.3g}" if rel else ""))
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
    """Peak bytes allocated during one call of fn, in MiB: CUDA from the allocator's peak counter, CPU from
    cpu_peak_bytes."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with _quiet_stderr():
        return cpu_peak_bytes(fn) / 2**20


def cpu_peak_bytes(fn: Callable[[], None]) -> int:
    """Peak of the bytes allocated during fn() through PyTorch's CPU allocator and still live at that moment,
    counting only blocks allocated inside the call (from torch.profiler's memory records): frees of blocks
    from earlier calls (the previous step's gradients, set to None at the start of a step) do not shift the
    peak down by whatever an earlier call left behind."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocs = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            allocs.append((e.start_time_ns, e.extra_fields.ptr, e.extra_fields.alloc_size))
    live = peak = 0
    mine = {}
    for _, ptr, size in sorted(allocs, key=lambda a: a[0]):
        if size > 0:
            mine[ptr] = size
            live += size
        elif ptr in mine:
            live -= mine.pop(ptr)
        peak = max(peak, live)
    return peak


def interleaved_medians(ref_fn, fast_fn, device: str, warmup: int, repeats: Optional[int],
                        budget_s: float, min_repeats: int = MIN_REPEATS, max_repeats: int = MAX_REPEATS):
    """Warm-up calls, then ref, fast, ref, fast, ... Returns (ref times, fast times) in ms.

    repeats=None picks the count adaptively: as many pairs as fit in budget_s (judged from the warm-up
    pairs, or the first pair), clamped to [min_repeats, max_repeats]; past min_repeats it also stops once the
    timed pairs have taken budget_s, so a load spike on the machine does not stretch the run."""
    ref_t, fast_t = [], []
    pair_ms = None
    for _ in range(warmup):
        pair_ms = time_call(ref_fn, device) + time_call(fast_fn, device)
    n = repeats
    i = 0
    while True:
        if n is not None and i >= n:
            break
        if repeats is None and i >= min_repeats and (sum(ref_t) + sum(fast_t)) >= budget_s * 1e3:
            break
        ref_t.append(time_call(ref_fn, device))
        fast_t.append(time_call(fast_fn, device))
        i += 1
        if n is None:
            pair_ms = min(pair_ms or math.inf, ref_t[-1] + fast_t[-1])
            n = int(min(max_repeats, max(min_repeats, budget_s * 1e3 // max(pair_ms, 1e-3))))
    return ref_t, fast_t


def ratio_quartiles(ref_t: List[float], fast_t: List[float]) -> Tuple[float, float]:
    """First and third quartiles of the per-pair ratios ref_t[i] / fast_t[i] (each pair was timed back to
    back, so a ratio sees one machine state): the spread of the speedup. Inclusive method (linear
    interpolation between the sorted ratios); with one pair both are that pair's ratio."""
    ratios = sorted(a / b for a, b in zip(ref_t, fast_t))
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return q1, q3


def gemm_peak(dtype: torch.dtype, device: str, seconds: float = 1.0) -> Dict[str, object]:
    """The machine's peak GEMM rate in this dtype, as torch itself reaches it: square torch.mm (at::mm, torch's
    threads, into a preallocated output) of a size that takes about a tenth of `seconds` per call (1024..4096,
    a multiple of 256), repeated for `seconds` (at least 3 calls); the best call's rate, in GFLOP/s (2n^3 flops
    per call). The best rather than the median: other load on the machine only ever makes a call slower."""
    gen = torch.Generator().manual_seed(0)

    def rate(n: int, calls: int, budget: float) -> float:
        a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up: packing buffers, library dispatch, CUDA handles
        best, done, t0 = 0.0, 0, time.perf_counter()
        while done < calls or time.perf_counter() - t0 < budget:
            ms = time_call(lambda: torch.mm(a, b, out=out), device)
            best = max(best, 2 * n**3 / (ms * 1e-3) / 1e9)
            done += 1
        return best

    probe = rate(1024, 3, 0.0)
    n = int(round((seconds / 10 * probe * 1e9 / 2) ** (1 / 3) / 256)) * 256
    n = min(4096, max(1024, n))
    return {"gflops": round(rate(n, 3, seconds), 1), "n": n, "seconds": seconds}


def set_gemm_fractions(row: Dict[str, object], peak_gflops: Optional[float]) -> None:
    """On a GEMM-bound row that has times, each side's GEMM rate (gemm_gflop / median time) as a fraction of
    peak_gflops; cleared when there is no peak."""
    row["torch_gemm_frac"] = row["fastrnn_gemm_frac"] = ""
    if row.get("gemm_bound") is True and row.get("status") == "OK" and peak_gflops:
        for side in ("torch", "fastrnn"):
            row[f"{side}_gemm_frac"] = round(row["gemm_gflop"] / (row[f"{side}_ms"] * 1e-3) / peak_gflops, 4)


# -------------------------------------------------------------------------------------------- one run
def run_case(case: Case, mode: str, dtype_name: str, device: str, *, warmup: int, repeats: Optional[int],
             budget_s: float, measure_memory: bool = True,
             peak_gflops: Optional[float] = None) -> Dict[str, object]:
    """One row: parity, then (memory and) interleaved timing. peak_gflops: the machine's peak GEMM rate in this
    dtype (gemm_peak()); with it, GEMM-bound rows get each side's fraction of it."""
    dtype = DTYPES[dtype_name]
    shape = case.shape(device)
    row: Dict[str, object] = {k: "" for k in OUT_COLUMNS}
    row.update(case=case.name, mode=mode, dtype=dtype_name, device=device, T=shape["T"], B=shape["B"],
               I=shape["I"], H=shape["H"], layers=shape["layers"], bidirectional=shape["bidirectional"],
               packed="" if not shape["packed"] else f"{shape['packed'][0]}..{shape['packed'][1]}",
               parity_tol=TOLERANCE[dtype])
    target = target_for(case, mode, dtype_name, device)
    row["target"] = "" if target is None else target
    try:
        ref, fast, inp, grad = build_pair(case, device, dtype)
        row["gemm_bound"] = gemm_bound(case)
        rows = inp.data.shape[0] if isinstance(inp, PackedSequence) else shape["T"] * shape["B"]
        flops = gemm_flops(case, rows, mode)
        row["gemm_gflop"] = round(flops / 1e9, 6)
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
        q1, q3 = ratio_quartiles(ref_t, fast_t)
        row.update(status="OK", torch_ms=round(t_ref, 4), fastrnn_ms=round(t_fast, 4),
                   speedup=round(t_ref / t_fast, 3), speedup_q1=round(q1, 3), speedup_q3=round(q3, 3),
                   torch_min_ms=round(min(ref_t), 4), fastrnn_min_ms=round(min(fast_t), 4), repeats=len(ref_t))
        set_gemm_fractions(row, peak_gflops)
        if target is not None:
            row["meets_target"] = bool(row["speedup"] >= target)
    except Exception as exc:
        row.update(status="ERROR", error=f"{type(exc).__name__}: {exc}")
    return row

