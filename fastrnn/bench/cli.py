"""The command line: `python -m fastrnn.bench` and `fastrnn-bench`."""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import signal
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from . import __doc__ as _package_doc
from .cases import CASES, DEVICE_DTYPES, Case, DTYPES, MODES, QUICK_SHAPES, quick_cases, select_cases, summarize_cases
from .cases import HANDWRITTEN_CASES
from .measure import MAX_REPEATS, MIN_REPEATS, gemm_peak, run_case, set_gemm_fractions
from .report import LEGEND, format_markdown, format_table, handwritten_note, header_lines, machine_info, write_outputs

BUDGET_S = 3.0  # seconds of timed pairs per run (full run)
QUICK_BUDGET_S = 0.5  # --quick: the same minimum of pairs, less time for the cheap cases to add more


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fastrnn-bench", description=_package_doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--cases", default=None,
                   help="comma list of case names or globs (default: all, or the quick cases; see --list)")
    p.add_argument("--mode", default="inference,training", help="inference, training or both (comma list)")
    p.add_argument("--dtype", default=None,
                   help="comma list; default float32,bfloat16 on cpu, float32,float16,bfloat16 on cuda "
                        "(float32 only with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"fewer cases, not shorter ones: the {', '.join(QUICK_SHAPES)} cases of every kind (unless "
                        f"--cases) at their full sequence lengths, float32 (unless --dtype), no memory, >= "
                        f"{MIN_REPEATS} timed pairs in a {QUICK_BUDGET_S:g} s budget per run; about a minute on 2 "
                        f"CPU cores")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed (ref, fast) pairs per run (default: adaptive, see --budget)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed (ref, fast) pairs before the timed ones (default: 1 on cuda, 0 on cpu, where the "
                        "parity and memory calls already warmed both sides up)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds of timed calls per run when --repeats is not given (default {BUDGET_S:g}, "
                        f"{QUICK_BUDGET_S:g} with --quick; {MIN_REPEATS} to {MAX_REPEATS} pairs)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                   help="measure peak memory (one extra untimed call per side; default on, off with --quick)")
    p.add_argument("--peak-seconds", type=float, default=1.0,
                   help="seconds spent measuring the peak GEMM rate per dtype at the start (default 1; 0: skip, "
                        "and no GEMM %%peak column)")
    p.add_argument("--chart", action=argparse.BooleanOptionalAction, default=True,
                   help="write <stem>.png (default on; needs matplotlib)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"),
                   help="directory for <device>.json/.csv/.png (default benchmarks/results)")
    p.add_argument("--stem", default=None, help="file name stem in --out (default: the device, +'-quick')")
    p.add_argument("--markdown", default=None, help="also write the results as a markdown report here")
    p.add_argument("--list", action="store_true", help="print the case names and exit")
    p.add_argument("--handwritten", action="store_true",
                   help="(unless --cases) the cases of fastrnn's options beyond torch.nn (layer norm, zoneout) "
                        "against the hand-written Python-loop LSTM/GRU of fastrnn.bench.handwritten: "
                        + ", ".join(c.name for c in HANDWRITTEN_CASES if not c.smoke))
    return p.parse_args(argv)


def _list_cases() -> None:
    for c in CASES + HANDWRITTEN_CASES:
        print(f"{c.name:18s} T={c.T}{f' (cpu {c.T_cpu})' if c.T_cpu else ''} B={c.B} I={c.I} H={c.H}"
              f"{f' layers={c.layers}' if c.layers != 1 else ''}{' bidirectional' if c.bidirectional else ''}"
              f"{f' packed lengths {c.packed[0]}..{c.packed[1]}' if c.packed else ''}"
              f"{' (smoke; only when named)' if c.smoke else ''}"
              f"{' ' + ' '.join(f'{k}={v}' for k, v in c.options) + ' vs hand-written' if c.options else ''}"
              f"{' [quick]' if not c.smoke and c.shape_name in QUICK_SHAPES else ''}")


def left_out(cases: List[Case], dtypes: List[str], modes: List[str], memory: bool, device: str) -> List[str]:
    """What a run of these cases, dtypes and modes leaves out of the full benchmark, for the header."""
    out = []
    missing = [c for c in select_cases(None) if c not in cases]
    if missing:
        out.append("cases " + summarize_cases(missing))
    out += [f"dtype {d}" for d in DEVICE_DTYPES[device] if d not in dtypes]
    out += [f"mode {m}" for m in MODES if m not in modes]
    if not memory:
        out.append("peak memory")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        _list_cases()
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("fastrnn.bench: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    cases = select_cases(args.cases) if args.cases or not args.quick else quick_cases()
    if args.handwritten and not args.cases:
        cases = [c for c in HANDWRITTEN_CASES if not c.smoke]
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
    repeats = args.repeats
    budget = args.budget if args.budget is not None else (QUICK_BUDGET_S if args.quick else BUDGET_S)
    memory = args.memory if args.memory is not None else not args.quick
    if repeats is not None and repeats < 1:
        raise SystemExit("fastrnn.bench: --repeats must be >= 1")

    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` writes the runs done so far too
    import fastrnn  # noqa: F401  fail early, before any timing, if the extension is not built

    t_start = time.perf_counter()
    info = machine_info(device)
    runs = [(c, m, d) for c in cases for m in modes for d in dtypes]
    info.update(quick=args.quick, cases_run=len(cases), cases_all=len(select_cases(None)),
                min_repeats=repeats if repeats is not None else MIN_REPEATS,
                left_out=left_out(cases, dtypes, modes, memory, device))
    if args.handwritten and not args.cases:  # a run of its own cases, not a part of the torch.nn benchmark
        info["left_out"] = [x for x in info["left_out"] if not x.startswith("cases ")]
    info["gemm_peak"] = {}
    if args.peak_seconds > 0:
        for d in dtypes:
            info["gemm_peak"][d] = gemm_peak(DTYPES[d], device, args.peak_seconds)

    print(f"fastrnn.bench: fastrnn vs torch.nn on {device}, {len(runs)} runs{' (--quick)' if args.quick else ''}")
    for line in header_lines(info):
        print("  " + line)
    sys.stdout.flush()

    stem = args.stem or (device + ("-quick" if args.quick else ""))
    command = ("python -m fastrnn.bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                               else argv))).strip()
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows: List[Dict[str, object]] = []

    def save(done: bool):
        """(Re)writes every output; called after each run too, so an interrupted run leaves a consistent,
        clearly marked partial report instead of nothing. The chart only at the end."""
        if hasattr(os, "getloadavg"):
            info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        info["wall_s"] = round(time.perf_counter() - t_start, 1)
        info["runs_planned"], info["runs_done"] = len(runs), len(rows)
        info["complete"] = done and len(rows) == len(runs)
        paths, chart_note = write_outputs(rows, info, args.out, stem, chart=done and args.chart)
        if args.markdown:
            os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
            with open(args.markdown, "w") as f:
                f.write(format_markdown(rows, info, command, date))
            paths.append(args.markdown)
        return paths, chart_note

    interrupted = False
    try:
        for i, (case, mode, dtype) in enumerate(runs, 1):
            t0 = time.perf_counter()
            peak = info["gemm_peak"].get(dtype, {}).get("gflops")
            row = run_case(case, mode, dtype, device, warmup=warmup, repeats=repeats, budget_s=budget,
                           measure_memory=memory, peak_gflops=peak)
            rows.append(row)
            took = time.perf_counter() - t0
            if row["status"] == "OK":
                msg = (f"torch.nn {row['torch_ms']:.2f} ms  fastrnn {row['fastrnn_ms']:.2f} ms  "
                       f"{row['speedup']:.2f}x (IQR {row['speedup_q1']:.2f}-{row['speedup_q3']:.2f}, "
                       f"n={row['repeats']}, parity {row['parity_max_err']:.1e})")
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

    if info["gemm_peak"] and not interrupted:
        # Measured again at the end: a peak measured while the machine was busy is too low (fractions above
        # 100% show it), and load comes and goes. The fractions use the higher of the two.
        for d, p in info["gemm_peak"].items():
            end = gemm_peak(DTYPES[d], device, args.peak_seconds)
            p.update(gflops_start=p["gflops"], gflops_end=end["gflops"], gflops=max(p["gflops"], end["gflops"]),
                     n=p["n"] if p["gflops"] >= end["gflops"] else end["n"])
            print(f"  peak GEMM {d} measured again at the end: {end['gflops']:.0f} GFLOP/s (start "
                  f"{p['gflops_start']:.0f}); GEMM %peak uses {p['gflops']:.0f}")
        for r in rows:
            set_gemm_fractions(r, info["gemm_peak"].get(r["dtype"], {}).get("gflops"))
    print()
    print(format_table(rows))
    print()
    print(LEGEND)
    note = handwritten_note(rows)
    if note:
        print(note)
    sys.stdout.flush()
    paths, chart_note = save(done=True)
    print(f"fastrnn.bench: wrote {', '.join(paths)} ({info['wall_s']}s)", file=sys.stderr)
    if args.chart:
        print(f"fastrnn.bench: chart: {chart_note}", file=sys.stderr)
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
