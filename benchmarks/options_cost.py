"""What fastrnn's options beyond torch.nn (issue 10) cost against the same module without them, on the CPU.

Interleaved: one repetition calls every variant once, in an order rotated each repetition, so drifting load
hits all alike; reported: each variant's median time and its ratio to the plain module's median. The modules
are in training mode (zoneout and recurrent_dropout draw their masks) for both "inference" (forward under
no_grad) and "training" (forward + backward of the summed output).

  python benchmarks/options_cost.py --mode LSTM --T 100 --B 32 --H 256 --reps 9
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
import fastrnn  # noqa: E402

VARIANTS = {
    "plain": {},
    "zoneout": dict(zoneout=0.1),
    "layer_norm": dict(layer_norm=True),
    "layer_norm+zoneout": dict(layer_norm=True, zoneout=0.1),
    "recurrent_dropout": dict(recurrent_dropout=0.25),
    "weight_drop": dict(weight_drop=0.3),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["LSTM", "GRU"], default="LSTM")
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--B", type=int, default=32)
    p.add_argument("--H", type=int, default=256)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--reps", type=int, default=9)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    cls = getattr(fastrnn, args.mode)
    mods = {k: cls(args.H, args.H, **kw).to(dtype).train() for k, kw in VARIANTS.items()}
    x = torch.randn(args.T, args.B, args.H, dtype=dtype)
    print(f"# {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"{args.mode} T={args.T} B={args.B} I=H={args.H} {args.dtype}, {args.reps} interleaved reps")

    def call(m, train):
        if train:
            m(x)[0].sum().backward()
        else:
            with torch.no_grad():
                m(x)

    for train in (False, True):
        names = list(mods)
        for n in names:  # warm-up
            call(mods[n], train)
        times = {n: [] for n in names}
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for n in order:
                t0 = time.perf_counter()
                call(mods[n], train)
                times[n].append(time.perf_counter() - t0)
        med = {n: statistics.median(v) for n, v in times.items()}
        print(f"{'training' if train else 'inference'}: " + ", ".join(
            f"{n} {med[n] * 1e3:.1f} ms ({med[n] / med['plain']:.2f}x)" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
