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

from .cases import (CASES, CASES_BY_NAME, DEVICE_DTYPES, DTYPES, KINDS, MODES, QUICK_T, Case,  # noqa: F401
                    select_cases, target_for)
from .measure import (OUT_COLUMNS, TOLERANCE, ParityError, build_pair, check_parity,  # noqa: F401
                      interleaved_medians, make_call, peak_memory_mb, run_case, run_once_for_parity,
                      time_call)
from .report import format_markdown, format_table, machine_info, write_chart, write_outputs  # noqa: F401
from .cli import main, parse_args  # noqa: F401
