"""fastrnn's benchmark command: fastrnn vs torch.nn, parity first, then interleaved timings.

A package: cases.py (the shapes, targets, GEMM flop counts), measure.py (module pairs, parity, timing,
memory, the peak GEMM rate, one run), report.py (table, markdown, chart, JSON/CSV), cli.py (the command).

    python -m fastrnn.bench                      # every case, on cuda if available else cpu
    python -m fastrnn.bench --quick              # fewer cases at full length, float32: about 1 min on 2 CPU cores
    python -m fastrnn.bench --cases 'lstm-*' --dtype float32 --mode training
    python -m fastrnn.bench --device cpu --markdown benchmarks/results/cpu.md
    fastrnn-bench --list                         # the case names

What one row measures (a "run": one case, one mode, one dtype):

* parity first: torch.nn and fastrnn modules with the same state_dict (load_state_dict strict) get the same
  input; outputs, final states and (training) every gradient must agree within the dtype's tolerance
  (measure.TOLERANCE). A mismatch marks the row PARITY_FAIL, no speed is reported for it, and the command exits 1.
* time: median milliseconds of one call, inference = forward under torch.no_grad(), training = forward +
  backward of a fixed upstream gradient into the output (parameter and input gradients; .grad reset to None
  before every call so neither side pays for accumulation). Calls are interleaved (ref, fast, ref, fast, ...)
  in one process so drifting machine load hits both; CUDA is synchronized before and after every call.
  speedup = torch.nn median / fastrnn median; its spread: the interquartile range of the per-pair ratios
  (speedup_q1..speedup_q3) over at least MIN_REPEATS pairs.
* GEMM rate: at the start, the machine's peak GEMM rate in each dtype (a large torch.mm with torch's
  threads, measure.gemm_peak); on GEMM-bound rows (cases.gemm_bound: B >= 32 and H >= 256) each side's
  GEMM flops (cases.gemm_flops) per second of its median call, as a fraction of that peak.
* peak memory: CUDA: torch.cuda.max_memory_allocated() during one call minus what was allocated before it.
  CPU: the peak of live bytes allocated through PyTorch's CPU allocator during one call, from
  torch.profiler's allocation records (profile_memory=True), minus nothing (counted from the call's start).
  Allocations a library makes behind the allocator's back (oneDNN/MKL scratch space) are not seen on either
  side. Measured in one extra untimed call per side.
"""

from .cases import (CASES, CASES_BY_NAME, DEVICE_DTYPES, DTYPES, GATES, KINDS, MODES, QUICK_SHAPES,
                    Case, gemm_bound, gemm_flops, quick_cases, select_cases, target_for)
from .measure import (MIN_REPEATS, OUT_COLUMNS, TOLERANCE, ParityError, build_pair, check_parity, gemm_peak,
                      interleaved_medians, make_call, peak_memory_mb, ratio_quartiles, run_case,
                      run_once_for_parity, time_call)
from .report import format_markdown, format_table, header_lines, machine_info, write_chart, write_outputs
from .cli import left_out, main, parse_args

__all__ = [
    "CASES", "CASES_BY_NAME", "DEVICE_DTYPES", "DTYPES", "GATES", "KINDS", "MODES", "QUICK_SHAPES", "Case",
    "gemm_bound", "gemm_flops", "quick_cases", "select_cases", "target_for", "MIN_REPEATS", "OUT_COLUMNS",
    "TOLERANCE", "ParityError", "build_pair", "check_parity", "gemm_peak", "interleaved_medians", "make_call",
    "peak_memory_mb", "ratio_quartiles", "run_case", "run_once_for_parity", "time_call", "format_markdown",
    "format_table", "header_lines", "machine_info", "write_chart", "write_outputs", "left_out", "main", "parse_args",
]
