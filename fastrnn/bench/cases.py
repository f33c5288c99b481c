"""The benchmark's cases: shapes, the selection by name or glob, and the targets."""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Dict, List, Optional, Tuple

import torch

QUICK_T = 10  # --quick caps every sequence at this length
KINDS = ("lstm", "gru", "rnn_tanh")
MODES = ("inference", "training")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("float32", "float16", "bfloat16")}


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

