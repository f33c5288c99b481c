"""Interleaved A/B timing of fastrnn variants against torch.nn on the CPU, for kernel work (issue 9).

Each variant is torch.nn ("torch") or fastrnn under a set of environment switches, read per call by the
kernels ("fast", "fast:FASTRNN_CPU_BRGEMM=0", "fast:FASTRNN_CPU_BRGEMM=0+FASTRNN_CPU_FAST_MATH=0"). One
repetition calls every variant once, in an order rotated each repetition, so drifting load (a shared
machine) hits all of them alike; reported: each variant's median time and torch.nn's median / its median.

  python benchmarks/ab_cpu.py --cases lstm-default,lstm-b1 --dtype float32,bfloat16 --mode inference \
      --variants torch,fast,fast:FASTRNN_CPU_BRGEMM=0 --reps 15

Cells: lstmcell:T:B:I:H (also grucell, rnncell) times a Python loop of T single-step calls, as a decoder
with teacher forcing runs them (training: then backward from the sum of the last state).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from fastrnn.bench.cases import CASES_BY_NAME, Case
from fastrnn.bench.measure import build_pair, make_call


def _extra_case(spec: str) -> Case:
    """kind:T:B:I:H[:L[:bi]], e.g. lstm:50:16:256:256 or gru:100:1:256:256:1:bi (shapes outside the
    benchmark's list; L layers, bi: bidirectional)."""
    kind, T, B, I, H, *more = spec.split(":")
    layers = int(more[0]) if more else 1
    bidir = len(more) > 1 and more[1] == "bi"
    if len(more) > 2 or (len(more) == 2 and not bidir):
        raise SystemExit(f"bad case {spec!r}: kind:T:B:I:H[:L[:bi]]")
    return Case(f"{kind}-T{T}B{B}I{I}H{H}" + (f"L{layers}" if more else "") + ("bi" if bidir else ""), kind,
                T=int(T), B=int(B), I=int(I), H=int(H), layers=layers, bidirectional=bidir)


def _cell_calls(spec: str, dtype: torch.dtype, mode: str):
    """(name, torch.nn call, fastrnn call) for kind:T:B:I:H with kind lstmcell, grucell or rnncell."""
    import fastrnn
    kind, T, B, I, H = spec.split(":")
    T, B, I, H = int(T), int(B), int(I), int(H)
    cls = {"lstmcell": "LSTMCell", "grucell": "GRUCell", "rnncell": "RNNCell"}[kind]
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(I, H).to(dtype)
    fast = getattr(fastrnn, cls)(I, H).to(dtype)
    fast.load_state_dict(ref.state_dict(), strict=True)
    xs = torch.randn(T, B, I, dtype=dtype)
    lstm = cls == "LSTMCell"

    def call(cell):
        def run():
            with torch.set_grad_enabled(mode == "training"):
                h = torch.zeros(B, H, dtype=dtype)
                state = (h, h.clone()) if lstm else h
                for t in range(T):
                    state = cell(xs[t], state)
                last = state[0] if lstm else state
                if mode == "training":
                    last.sum().backward()
        return run

    return f"{kind}-T{T}B{B}I{I}H{H}", call(ref), call(fast)


def _variant_env(v: str):
    if v == "torch" or ":" not in v:
        return {}
    return dict(kv.split("=", 1) for kv in v.split(":", 1)[1].split("+"))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", required=True, help="benchmark case names, or kind:T:B:I:H")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--mode", default="inference,training")
    ap.add_argument("--variants", default="torch,fast")
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop a row's repetitions after this")
    args = ap.parse_args()
    variants = args.variants.split(",")
    print(f"# {_cpu_model()}, torch threads {torch.get_num_threads()}, load {os.getloadavg()}")
    print(f"# variants: {variants}; ratio = torch.nn median / variant median")
    for spec in args.cases.split(","):
        is_cell = spec.split(":")[0].endswith("cell")
        case = None if is_cell else CASES_BY_NAME[spec] if spec in CASES_BY_NAME else _extra_case(spec)
        for dtype_name in args.dtype.split(","):
            dtype = getattr(torch, dtype_name)
            for mode in args.mode.split(","):
                if is_cell:
                    name, torch_call, fast_call = _cell_calls(spec, dtype, mode)
                    calls = {"torch": torch_call, "fast": fast_call}
                else:
                    name = case.name
                    ref, fast, inp, grad = build_pair(case, "cpu", dtype)
                    if mode == "inference":
                        ref.eval(), fast.eval()
                    calls = {"torch": make_call(ref, inp, grad, mode), "fast": make_call(fast, inp, grad, mode)}
                times = {v: [] for v in variants}
                saved = {k: os.environ.get(k) for v in variants for k in _variant_env(v)}
                start = time.perf_counter()
                try:
                    for v in variants:  # warm-up
                        os.environ.update(_variant_env(v))
                        calls["torch" if v == "torch" else "fast"]()
                        for k, old in saved.items():
                            os.environ.pop(k, None) if old is None else os.environ.__setitem__(k, old)
                    for r in range(args.reps):
                        order = variants[r % len(variants):] + variants[:r % len(variants)]
                        for v in order:
                            os.environ.update(_variant_env(v))
                            t0 = time.perf_counter()
                            calls["torch" if v == "torch" else "fast"]()
                            times[v].append(time.perf_counter() - t0)
                            for k, old in saved.items():
                                os.environ.pop(k, None) if old is None else os.environ.__setitem__(k, old)
                        if time.perf_counter() - start > args.max_seconds and r >= 2:
                            break
                finally:
                    for k, old in saved.items():
                        os.environ.pop(k, None) if old is None else os.environ.__setitem__(k, old)
                med = {v: statistics.median(t) * 1e3 for v, t in times.items()}
                best = {v: min(t) * 1e3 for v, t in times.items()}
                base = med.get("torch")
                cols = "  ".join(f"{v} {m:8.2f}ms" + (f" {base / m:5.2f}x" if base and v != "torch" else "")
                                 for v, m in med.items())
                mins = " ".join(f"{m:.2f}" for m in best.values())
                print(f"{name:22s} {dtype_name:8s} {mode:9s} n={len(times[variants[0]]):3d}  {cols}  (min ms: {mins})",
                      flush=True)


if __name__ == "__main__":
    main()
