"""The benchmark's cases: shapes, the selection by name or glob, and the targets."""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Dict, List, Optional, Tuple

import torch

KINDS = ("lstm", "gru", "rnn_tanh")
MODES = ("inference", "training")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("float32", "float16", "bfloat16")}
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1}  # gate blocks per layer: the weights are (GATES * H) x (I or H)

# --quick runs these shapes of every kind, at their full sequence lengths (a shorter sequence changes the
# ratio: fixed per-call costs weigh more), in float32, without the memory calls. They span the three regimes:
# a GEMM-bound batch (default), one sequence (b1, latency of the per-step GEMV) and many small steps (long).
QUICK_SHAPES = ("default", "b1", "long")

# A row is GEMM-bound when B >= GEMM_BOUND_MIN_B and H >= GEMM_BOUND_MIN_H (see gemm_bound()).
GEMM_BOUND_MIN_B = 32
GEMM_BOUND_MIN_H = 256


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
    # fastrnn's keyword options beyond torch.nn (issue 10), e.g. (("layer_norm", True),): the peer is then the
    # hand-written Python loop of fastrnn.bench.handwritten instead of torch.nn (HANDWRITTEN_CASES)
    options: Tuple[Tuple[str, object], ...] = ()

    def seq_len(self, device: str) -> int:
        return self.T_cpu if (device == "cpu" and self.T_cpu) else self.T

    def shape(self, device: str) -> Dict[str, object]:
        return {"T": self.seq_len(device), "B": self.B, "I": self.I, "H": self.H, "layers": self.layers,
                "bidirectional": self.bidirectional, "packed": self.packed}

    @property
    def shape_name(self) -> str:
        """The part of the name after the kind: 'default', 'b1', ... (the same for every kind)."""
        return self.name[len(self.kind) + 1:]


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
            Case(f"{kind}-bidir2-b1", kind, T=100, B=1, I=256, H=256, layers=2, bidirectional=True),
            Case(f"{kind}-packed", kind, T=100, B=64, I=512, H=512, packed=(20, 100)),
            Case(f"{kind}-tiny", kind, T=5, B=3, I=8, H=8, smoke=True),
        ]
    # A smoke case that is GEMM-bound by gemm_bound()'s rule, still a few milliseconds: for the tests of the
    # peak-fraction columns.
    cases.append(Case("lstm-tiny-gemm", "lstm", T=3, B=32, I=256, H=256, smoke=True))
    return cases


CASES: List[Case] = _make_cases()
CASES_BY_NAME: Dict[str, Case] = {c.name: c for c in CASES}

# fastrnn with its options beyond torch.nn (issue 10) against what a user writes without it: the hand-written
# LayerNorm/zoneout LSTM and GRU of fastrnn.bench.handwritten (a Python loop over the steps, the input GEMM up
# front). Not in CASES: they run when named (or with --handwritten), never in the default or --quick runs,
# and have no target.
_LN = (("layer_norm", True),)
HANDWRITTEN_CASES: List[Case] = [
    Case("lstm-layernorm", "lstm", T=100, B=32, I=256, H=256, options=_LN),
    Case("lstm-layernorm-zoneout", "lstm", T=100, B=32, I=256, H=256, options=_LN + (("zoneout", 0.1),)),
    Case("gru-layernorm", "gru", T=100, B=32, I=256, H=256, options=_LN),
    Case("lstm-layernorm-zoneout-tiny", "lstm", T=5, B=3, I=8, H=8, options=_LN + (("zoneout", 0.1),), smoke=True),
    Case("gru-layernorm-tiny", "gru", T=5, B=3, I=8, H=8, options=_LN, smoke=True),
]
HANDWRITTEN_BY_NAME: Dict[str, Case] = {c.name: c for c in HANDWRITTEN_CASES}


def select_cases(spec: Optional[str]) -> List[Case]:
    """Cases named by a comma list of names or globs ('lstm-*,gru-b1'). Globs and the default (all) leave the
    `-tiny` smoke cases and the HANDWRITTEN_CASES out; name one explicitly to run it."""
    if not spec:
        return [c for c in CASES if not c.smoke]
    chosen: List[Case] = []
    for pat in (p.strip() for p in spec.split(",")):
        if not pat:
            continue
        if pat in CASES_BY_NAME:
            hits = [CASES_BY_NAME[pat]]
        elif pat in HANDWRITTEN_BY_NAME:
            hits = [HANDWRITTEN_BY_NAME[pat]]
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
    if case.smoke or case.options:
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



def quick_cases() -> List[Case]:
    """The cases --quick runs when --cases is not given: QUICK_SHAPES of every kind."""
    return [c for c in CASES if not c.smoke and c.shape_name in QUICK_SHAPES]


def summarize_cases(cases: List[Case]) -> str:
    """Names a set of cases briefly, as --cases globs: '*-b8' for a shape left out of every kind, else names."""
    by_shape: Dict[str, List[Case]] = {}
    for c in cases:
        by_shape.setdefault(c.shape_name, []).append(c)
    parts = []
    for shape, cs in by_shape.items():
        if len(cs) == len(KINDS):
            parts.append(f"*-{shape}")
        else:
            parts += [c.name for c in cs]
    return ", ".join(parts)


def gemm_bound(case: Case) -> bool:
    """Whether the row's time is meant to be GEMM time, so that a fraction of the machine's peak GEMM rate is
    a fair yardstick for it: B >= 32 and H >= 256.

    Each step multiplies a B x H state by an H x (GATES*H) weight. With B >= 32 rows every weight element that
    is loaded serves >= 32 multiply-adds, which makes the step compute-bound rather than bound by streaming the
    weights from memory; with H >= 256 the GEMMs' work exceeds the step's pointwise work (O(B*GATES*H)) by a
    factor I + H >= 512. The b1 and b8 cases (weight bandwidth) and the long cases (H = 64: per-step overheads)
    are not GEMM-bound; the default, h1024, bidir2 and packed cases are."""
    return case.B >= GEMM_BOUND_MIN_B and case.H >= GEMM_BOUND_MIN_H


def gemm_flops(case: Case, rows: int, mode: str) -> int:
    """Floating-point operations of the case's GEMMs in one call (2 per multiply-add), the same for both sides.

    rows: the number of (time step, sequence) positions, T*B, or the total length of a packed batch. Per layer
    and direction: the input projection rows x in_features x GATES*H, and the recurrent products, whose batch
    rows add up to the same `rows` over the steps: rows x H x GATES*H. in_features is I for the first layer
    and H * directions above it. Training adds the backward GEMMs: the gradient of the layer's input and of
    the previous state (the transposed products, as many flops again) and of both weights (as many again), so
    3x the forward. Pointwise work (gates, activations, biases) is not counted."""
    dirs = 2 if case.bidirectional else 1
    g, h = GATES[case.kind], case.H
    fwd = 0
    for layer in range(case.layers):
        in_features = case.I if layer == 0 else h * dirs
        fwd += dirs * 2 * rows * g * h * (in_features + h)
    return fwd * (3 if mode == "training" else 1)
