"""The fused brgemm recurrences of the CPU kernels (csrc/cpu/brgemm_step.h; forward and backward of every
cell): when they are used, and parity with torch.nn through each of their modes (threads split by batch rows or by hidden blocks, the x-projection folded
into the step or done up front, hidden sizes spanning several blocks and a partial last one, packed and
reversed sequences, float32 and bfloat16). The whole parity suite also runs through the older per-step path
with FASTRNN_CPU_BRGEMM=0."""
import pytest
import torch

import fastrnn  # noqa: F401
import fastrnn._testing_ops  # noqa: F401  fakes of the test-only ops
from common import MODES, Case, assert_close_scaled, compare, make_inputs, make_pair, run_module

_ops = torch.ops.fastrnn


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _cpu_flags()
HAS_AVX2 = {"avx2", "fma"} <= FLAGS
HAS_BF16 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"} <= FLAGS or "amx_bf16" in FLAGS


def test_enabled_where_the_processor_runs_it(monkeypatch):
    monkeypatch.delenv("FASTRNN_CPU_BRGEMM", raising=False)
    monkeypatch.delenv("FASTRNN_CPU_CAPABILITY", raising=False)
    if HAS_AVX2:  # x86 builds of torch ship oneDNN's brgemm ukernel
        assert _ops._cpu_brgemm_enabled(torch.float32)
    if HAS_AVX2:  # natively, or widened onto fp32 brgemm
        assert _ops._cpu_brgemm_enabled(torch.bfloat16)
    assert not _ops._cpu_brgemm_enabled(torch.float64)
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM", "0")
    assert not _ops._cpu_brgemm_enabled(torch.float32)
    assert not _ops._cpu_brgemm_enabled(torch.bfloat16)
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM", "1")
    monkeypatch.setenv("FASTRNN_CPU_CAPABILITY", "default")  # the portable kernels have no brgemm step
    assert not _ops._cpu_brgemm_enabled(torch.float32)
    monkeypatch.setenv("FASTRNN_CPU_CAPABILITY", "avx2")  # bf16 widened onto fp32 brgemm
    assert _ops._cpu_brgemm_enabled(torch.bfloat16) == HAS_AVX2
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM_BF16", "native")  # native bf16 brgemm needs AVX-512
    assert not _ops._cpu_brgemm_enabled(torch.bfloat16)
    monkeypatch.delenv("FASTRNN_CPU_CAPABILITY")
    if HAS_BF16 or "avx512f" not in FLAGS:
        assert _ops._cpu_brgemm_enabled(torch.bfloat16) == HAS_BF16
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM_BF16", "widen")
    assert _ops._cpu_brgemm_enabled(torch.bfloat16) == HAS_AVX2
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM_BF16", "fp32")
    with pytest.raises(ValueError, match="FASTRNN_CPU_BRGEMM_BF16 must be native or widen"):
        _ops._cpu_brgemm_enabled(torch.bfloat16)


# Even I and H (native bf16's VNNI pairs) but one odd case, hidden sizes of one partial block (H=8), several
# blocks with a partial last one (H=70 at 32 units per block), batches under and over the split and fold
# thresholds.
CASES = [
    Case("B3_H8", T=5, B=3, I=6, H=8),
    Case("B20_H70_packed_bidir_hx", T=6, B=20, I=10, H=70, bidirectional=True,
         lengths=[6, 1, 3, 5, 2, 6, 4, 1, 2, 3, 6, 5, 4, 3, 2, 1, 1, 2, 5, 6], hx=True),
    Case("B9_H64_2layer_packed", T=4, B=9, I=12, H=64, num_layers=2, lengths=[4, 3, 1, 2, 4, 4, 2, 1, 3]),
    Case("B33_H40_batchfirst_nobias", T=3, B=33, I=8, H=40, batch_first=True, bias=False),
    # odd I and H: bf16 widened runs them (native bf16 needs VNNI pairs and leaves them to the per-step path)
    Case("B5_I7_H9_odd", T=4, B=5, I=7, H=9),
]
# Small sequences run on one thread by default ("auto" here); SERIAL_FLOPS=0 keeps both threads (and the hidden
# split's per-step barrier) on these small shapes.
SWITCHES = {
    "auto": {"FASTRNN_CPU_BRGEMM": "1"},
    "batch_fold": {"FASTRNN_CPU_BRGEMM": "1", "FASTRNN_CPU_BRGEMM_SPLIT": "batch", "FASTRNN_CPU_BRGEMM_FOLD_X": "1",
                   "FASTRNN_CPU_BRGEMM_SERIAL_FLOPS": "0"},
    "hidden_upfront": {"FASTRNN_CPU_BRGEMM": "1", "FASTRNN_CPU_BRGEMM_SPLIT": "hidden",
                       "FASTRNN_CPU_BRGEMM_FOLD_X": "0", "FASTRNN_CPU_BRGEMM_SERIAL_FLOPS": "0"},
    "hidden_fold_block16": {"FASTRNN_CPU_BRGEMM": "1", "FASTRNN_CPU_BRGEMM_SPLIT": "hidden",
                            "FASTRNN_CPU_BRGEMM_FOLD_X": "1", "FASTRNN_CPU_BRGEMM_BLOCK": "16",
                            "FASTRNN_CPU_BRGEMM_SERIAL_FLOPS": "0"},
    # Every block product through brgemm, or every one through fastrnn's few-row vector code (GEMV_ROWS; groups
    # of 4 rows and the rest, partial column vectors), with the x-projection folded in (products added onto the
    # tile), and its AVX2 build.
    "brgemm_only": {"FASTRNN_CPU_BRGEMM": "1", "FASTRNN_CPU_BRGEMM_GEMV_ROWS": "0",
                    "FASTRNN_CPU_BRGEMM_SERIAL_FLOPS": "0"},
    "gemv_all": {"FASTRNN_CPU_BRGEMM": "1", "FASTRNN_CPU_BRGEMM_GEMV_ROWS": "1000",
                 "FASTRNN_CPU_BRGEMM_SPLIT": "hidden", "FASTRNN_CPU_BRGEMM_SERIAL_FLOPS": "0"},
    "gemv_all_fold": {"FASTRNN_CPU_BRGEMM": "1", "FASTRNN_CPU_BRGEMM_GEMV_ROWS": "1000",
                      "FASTRNN_CPU_BRGEMM_FOLD_X": "1"},
    "gemv_all_avx2": {"FASTRNN_CPU_BRGEMM": "1", "FASTRNN_CPU_BRGEMM_GEMV_ROWS": "1000",
                      "FASTRNN_CPU_CAPABILITY": "avx2"},
    # The backward's whole-sequence GEMMs (input and weight gradients) through brgemm (seq_gemm.h) at every
    # size, in small blocks, or through MKL.
    "seq_gemm_brgemm": {"FASTRNN_CPU_BRGEMM": "1", "FASTRNN_CPU_SEQ_GEMM": "always", "FASTRNN_CPU_SEQ_GEMM_MB": "16",
                        "FASTRNN_CPU_SEQ_GEMM_NB": "16", "FASTRNN_CPU_SEQ_GEMM_KC": "40"},
    "seq_gemm_aten": {"FASTRNN_CPU_BRGEMM": "1", "FASTRNN_CPU_SEQ_GEMM": "aten"},
    # bf16 widened onto fp32 brgemm (brgemm_step.h; the default without AVX-512), both splits and x sides.
    "bf16_widened_batch_fold": {"FASTRNN_CPU_BRGEMM": "1", "FASTRNN_CPU_BRGEMM_BF16": "widen",
                                "FASTRNN_CPU_BRGEMM_SPLIT": "batch", "FASTRNN_CPU_BRGEMM_FOLD_X": "1",
                                "FASTRNN_CPU_BRGEMM_SERIAL_FLOPS": "0"},
    "bf16_widened_hidden_upfront": {"FASTRNN_CPU_BRGEMM": "1", "FASTRNN_CPU_BRGEMM_BF16": "widen",
                                    "FASTRNN_CPU_BRGEMM_SPLIT": "hidden", "FASTRNN_CPU_BRGEMM_FOLD_X": "0",
                                    "FASTRNN_CPU_BRGEMM_SERIAL_FLOPS": "0"},
}
FLOAT32_ONLY = {"seq_gemm_brgemm", "seq_gemm_aten"}  # seq_gemm's brgemm is fp32
BFLOAT16_ONLY = {"bf16_widened_batch_fold", "bf16_widened_hidden_upfront"}


@pytest.mark.skipif(not HAS_AVX2, reason="the brgemm path needs AVX2")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("switches", list(SWITCHES), ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_brgemm_parity(mode, switches, case, dtype, monkeypatch):
    if dtype == torch.bfloat16 and switches in FLOAT32_ONLY:
        pytest.skip(f"{switches} is a float32 switch")
    if dtype == torch.float32 and switches in BFLOAT16_ONLY:
        pytest.skip(f"{switches} is a bfloat16 switch")
    for k, v in SWITCHES[switches].items():
        monkeypatch.setenv(k, v)
    assert _ops._cpu_brgemm_enabled(dtype)
    fast, ref = make_pair(mode, case.I, case.H, dtype, "cpu", **case.module_kwargs)
    x, h0, c0 = make_inputs(mode, case, dtype, "cpu")
    out_f, grad_f = run_module(mode, fast, case, x, h0, c0)
    if dtype == torch.bfloat16:  # against torch.nn in float32 on the same rounded numbers
        ref = ref.float()
        ref.load_state_dict({k: v.float() for k, v in fast.state_dict().items()})
        x, h0, c0 = (t.detach().float().requires_grad_() if t is not None else None for t in (x, h0, c0))
    out_r, grad_r = run_module(mode, ref, case, x, h0, c0)
    compare(out_f, out_r, dtype, f"{switches} output")
    if dtype != torch.bfloat16:
        compare(grad_f, grad_r, dtype, f"{switches} grad")
    elif mode != "RNN_RELU":  # see test_cpu_capability.py: relu's kink amplifies bf16 rounding
        for k in grad_r:
            assert_close_scaled(grad_f[k], grad_r[k], dtype, f"{switches} grad {k}")


# LSTM projections (two phases per step): P spanning one partial block (P=6), several blocks with a partial last
# one (P=40 at 16 or 32 units per block), P > H's block count, packed reversed sequences.
PROJ_CASES = [
    Case("B3_H8_P6", T=5, B=3, I=6, H=8, proj_size=6),
    Case("B20_H70_P40_packed_bidir_hx", T=6, B=20, I=10, H=70, proj_size=40, bidirectional=True,
         lengths=[6, 1, 3, 5, 2, 6, 4, 1, 2, 3, 6, 5, 4, 3, 2, 1, 1, 2, 5, 6], hx=True),
    Case("B9_H64_P34_2layer_batchfirst", T=4, B=9, I=12, H=64, proj_size=34, num_layers=2, batch_first=True),
    Case("B4_I7_H9_P5_odd_bidir", T=3, B=4, I=7, H=9, proj_size=5, bidirectional=True),
]


@pytest.mark.skipif(not HAS_AVX2, reason="the brgemm path needs AVX2")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", PROJ_CASES, ids=repr)
@pytest.mark.parametrize("switches", list(SWITCHES), ids=str)
def test_brgemm_projection_parity(switches, case, dtype, monkeypatch):
    test_brgemm_parity("LSTM", switches, case, dtype, monkeypatch)


def _forward_call(cell, dtype):
    """The raw forward op of `cell` and its arguments (T=4 B=24 I=16 H=96, seeded random values in `dtype`)."""
    torch.manual_seed(0)
    T, B, I, H = 4, 24, 16, 96
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    x, h0, c0 = (torch.randn(*shape).to(dtype) for shape in ((T, B, I), (B, H), (B, H)))
    w = tuple(t.to(dtype) for t in (torch.randn(G * H, I) / 4, torch.randn(G * H, H) / 8, torch.randn(G * H),
                                    torch.randn(G * H)))
    if cell == "lstm":
        return _ops.lstm_forward, (x, None, h0, c0, *w, None, False, True)
    if cell == "gru":
        return _ops.gru_forward, (x, None, h0, *w, False, True)
    return _ops.rnn_forward, (x, None, h0, *w, False, False)


@pytest.mark.skipif(not HAS_AVX2, reason="the brgemm path needs AVX2")
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_brgemm_and_fallback_are_different_code(cell, monkeypatch):
    """The switch really changes the path (so the parity tests above test the brgemm one): the two agree to
    rounding, and for the LSTM (bias summed first, x side folded into the tile) not bit for bit."""
    op, args = _forward_call(cell, torch.float32)
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM", "1")
    fused = op(*args)
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM", "0")
    old = op(*args)
    # (with the x-projection up front, the GRU's and RNN's fused steps do the same float operations in the same
    # order as the fallback; folded, as on AMD by default, they differ by rounding: closeness is what holds)
    if cell == "lstm":
        assert not all(torch.equal(a, b) for a, b in zip(fused, old))
    for a, b in zip(fused, old):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAS_AVX2, reason="the brgemm path needs AVX2")
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_folded_x_projection_is_a_different_code_path(cell, monkeypatch):
    """FASTRNN_CPU_BRGEMM_FOLD_X really moves the x-projection into the step (so the parity tests' fold switches
    test that path, for every cell): in bfloat16 the up-front GEMM's result is rounded to bf16 before the gate
    math, the folded products stay in the float32 tile, so the outputs differ by that rounding and no more."""
    op, args = _forward_call(cell, torch.bfloat16)
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM", "1")
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM_FOLD_X", "1")
    folded = op(*args)
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM_FOLD_X", "0")
    upfront = op(*args)
    assert not torch.equal(folded[0], upfront[0])
    for a, b in zip(folded, upfront):
        torch.testing.assert_close(a.float(), b.float(), rtol=0.02, atol=0.02)


@pytest.mark.skipif(not HAS_AVX2, reason="the brgemm path needs AVX2")
@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru", "rnn"])
def test_fused_backward_is_a_different_code_path(cell, monkeypatch):
    """The backward ops run the fused recurrence too: in bfloat16 it carries dh in float32 between steps where
    the per-step path rounds it to bfloat16 after each GEMM, so the two differ, and both stay within bf16's
    rounding of the float32 backward (packed, reversed, with grad_hy; threads split by batch rows and by hidden
    blocks)."""
    torch.manual_seed(0)
    lengths = torch.tensor([5, 5, 4, 4, 3, 2, 2, 1, 1, 1])
    T, B, I, H = 5, len(lengths), 16, 48
    G = {"lstm": 4, "lstm_proj": 4, "gru": 3, "rnn": 1}[cell]
    P = 22 if cell == "lstm_proj" else H
    x = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(T, B, I), lengths)
    data, bsz = x.data, x.batch_sizes
    h0, c0 = torch.randn(B, P), torch.randn(B, H)
    w = (torch.randn(G * H, I) / 4, torch.randn(G * H, P) / 6, torch.randn(G * H) / 4, torch.randn(G * H) / 4,
         torch.randn(P, H) / 6)

    def backward(dtype, reverse):
        d = [t.to(dtype) for t in (data, h0, c0, *w)]
        x_, h_, c_, wi, wh, bi, bh, wr = d
        wr = wr if cell == "lstm_proj" else None
        if cell.startswith("lstm"):
            out, hy, cy, ws = _ops.lstm_forward(x_, bsz, h_, c_, wi, wh, bi, bh, wr, reverse, True)
        elif cell == "gru":
            out, hy, ws = _ops.gru_forward(x_, bsz, h_, wi, wh, bi, bh, reverse, True)
        else:
            out, hy = _ops.rnn_forward(x_, bsz, h_, wi, wh, bi, bh, False, reverse)
        g = torch.Generator().manual_seed(1)
        go, gh, gc = (torch.randn(t.shape, generator=g).to(dtype) for t in (out, hy, c_))
        if cell.startswith("lstm"):
            r = _ops.lstm_backward(go, gh, gc, x_, bsz, h_, c_, wi, wh, wr, out, ws, reverse, True)
        elif cell == "gru":
            r = _ops.gru_backward(go, gh, x_, bsz, h_, wi, wh, out, ws, reverse, True)
        else:
            r = _ops.rnn_backward(go, gh, x_, bsz, h_, wi, wh, out, False, reverse, True)
        return [t.float() for t in r if t.numel()]

    monkeypatch.setenv("FASTRNN_CPU_BRGEMM_SERIAL_FLOPS", "0")  # the hidden split with both threads
    for split in ("batch", "hidden"):
        monkeypatch.setenv("FASTRNN_CPU_BRGEMM_SPLIT", split)
        for reverse in (False, True):
            monkeypatch.setenv("FASTRNN_CPU_BRGEMM", "1")
            fused, ref = backward(torch.bfloat16, reverse), backward(torch.float32, reverse)
            monkeypatch.setenv("FASTRNN_CPU_BRGEMM", "0")
            old = backward(torch.bfloat16, reverse)
            assert not all(torch.equal(a, b) for a, b in zip(fused, old))
            for a, b in zip(fused, ref):
                assert_close_scaled(a, b, torch.bfloat16, f"{cell} {split} reverse={reverse}")




@pytest.mark.skipif(not HAS_BF16, reason="native bf16 brgemm needs AVX-512 with bf16")
@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru", "rnn"])
def test_widened_bf16_matches_native(cell, monkeypatch):
    """bf16 widened onto fp32 brgemm computes what the native bf16 brgemm does (the products of bf16 values are
    exact in fp32, both sum in fp32): forward and backward differ by summation order alone, and the bf16
    roundings that flips; within bf16's stated tolerance, on a processor that runs both."""
    torch.manual_seed(0)
    T, B, I, H = 6, 20, 24, 40
    G = {"lstm": 4, "lstm_proj": 4, "gru": 3, "rnn": 1}[cell]
    P = 18 if cell == "lstm_proj" else H
    bf = torch.bfloat16
    x, h0, c0 = torch.randn(T, B, I).to(bf), torch.randn(B, P).to(bf), torch.randn(B, H).to(bf)
    wi, wh = (torch.randn(G * H, I) / 5).to(bf), (torch.randn(G * H, P) / 6).to(bf)
    bi, bh, wr = torch.randn(G * H).to(bf), torch.randn(G * H).to(bf), (torch.randn(P, H) / 6).to(bf)

    def run():
        if cell.startswith("lstm"):
            r = _ops.lstm_forward(x, None, h0, c0, wi, wh, bi, bh, wr if cell == "lstm_proj" else None, False, True)
            out, ws = r[0], r[3]
            back = _ops.lstm_backward(torch.ones_like(out), torch.zeros_like(h0), torch.zeros_like(c0), x, None, h0,
                                      c0, wi, wh, wr if cell == "lstm_proj" else None, out, ws, False, True)
        elif cell == "gru":
            r = _ops.gru_forward(x, None, h0, wi, wh, bi, bh, False, True)
            back = _ops.gru_backward(torch.ones_like(r[0]), torch.zeros_like(h0), x, None, h0, wi, wh, r[0], r[2],
                                     False, True)
        else:
            r = _ops.rnn_forward(x, None, h0, wi, wh, bi, bh, False, False)
            back = _ops.rnn_backward(torch.ones_like(r[0]), torch.zeros_like(h0), x, None, h0, wi, wh, r[0], False,
                                     False, True)
        return [t.float() for t in (*r, *back) if t.numel()]

    monkeypatch.setenv("FASTRNN_CPU_BRGEMM", "1")
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM_BF16", "native")
    native = run()
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM_BF16", "widen")
    widened = run()
    assert len(widened) == len(native)
    for i, (a, b) in enumerate(zip(widened, native)):
        assert_close_scaled(a, b, bf, f"{cell} output {i}")


@pytest.mark.skipif(not HAS_BF16, reason="bf16 brgemm needs AVX-512 with bf16")
def test_few_row_products_are_a_different_code_path(monkeypatch):
    """FASTRNN_CPU_BRGEMM_GEMV_ROWS really moves one-row step products off brgemm. On ordinary numbers the
    bf16 loop's outputs round to the same bf16 values as brgemm's, so those cannot tell the paths apart; these
    can: every gate's h product is [1, 1, 1, 1] . [2^24, 1, -2^24, 1] (exactly 2). fastrnn's loop adds each
    (k, k+1) pair's elements in order in float32: ((2^24 + 1) - 2^24) + 1 = 1; brgemm gives something else (AMX
    sums these exactly: 2; AVX512_BF16's dot product adds the odd element first: 0). The LSTM's h then reads s
    back: h = sigmoid(s) * tanh(sigmoid(s) * tanh(s)) from c0 = 0."""
    H, I, bf16 = 4, 2, torch.bfloat16
    x, h0, c0 = torch.zeros(1, 1, I, dtype=bf16), torch.ones(1, H, dtype=bf16), torch.zeros(1, H, dtype=bf16)
    w_ih = torch.zeros(4 * H, I, dtype=bf16)
    w_hh = torch.tensor([[2.0**24, 1.0, -(2.0**24), 1.0]] * (4 * H), dtype=bf16)

    def h_of(s):
        s = torch.tensor(float(s), dtype=torch.float64)
        return (torch.sigmoid(s) * torch.tanh(torch.sigmoid(s) * torch.tanh(s))).to(bf16).item()

    def run(rows):
        monkeypatch.setenv("FASTRNN_CPU_BRGEMM", "1")
        monkeypatch.setenv("FASTRNN_CPU_BRGEMM_GEMV_ROWS", rows)
        out = _ops.lstm_forward(x, None, h0, c0, w_ih, w_hh, None, None, None, False, False)[0]
        return set(out.flatten().tolist())

    assert run("1000") == {h_of(1)}
    assert run("0") != {h_of(1)}


# The whole-sequence GEMM of the CPU backward (csrc/cpu/seq_gemm.h) through the test-only op: every layout the
# callers pass (b rows contiguous or b = W^T; a rows contiguous or a = d^T), accumulate or not, sizes with partial
# row blocks, panels and K chunks, small blocks so that several of each (and several panel groups) run.
SMALL_BLOCKS = {"FASTRNN_CPU_SEQ_GEMM_MB": "16", "FASTRNN_CPU_SEQ_GEMM_NB": "16", "FASTRNN_CPU_SEQ_GEMM_KC": "40",
                "FASTRNN_CPU_SEQ_GEMM_GROUP": "2"}


@pytest.mark.skipif(not HAS_AVX2, reason="the brgemm path needs AVX2")
@pytest.mark.parametrize("blocks", ["default", "small"])
@pytest.mark.parametrize("layout", ["nn", "nt", "tn", "tt"])
@pytest.mark.parametrize("add", [False, True], ids=["set", "add"])
@pytest.mark.parametrize("mkn", [(1, 7, 5), (37, 100, 70), (130, 93, 51)], ids=str)
def test_seq_gemm_matches_float64(mkn, add, layout, blocks, monkeypatch):
    monkeypatch.setenv("FASTRNN_CPU_SEQ_GEMM", "always")
    if blocks == "small":
        for k, v in SMALL_BLOCKS.items():
            monkeypatch.setenv(k, v)
    torch.manual_seed(0)
    M, K, N = mkn
    a = torch.randn(M, K) if layout[0] == "n" else torch.randn(K, M).t()
    b = torch.randn(K, N) if layout[1] == "n" else torch.randn(N, K).t()
    c = torch.randn(M, N)
    out, on_brgemm = _ops._cpu_seq_gemm(a, b, c, add)
    assert on_brgemm
    ref = a.double() @ b.double() + (c.double() if add else 0)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * K ** 0.5)
    # into a row range of a wider buffer (the callers write the input gradient in chunks of its rows)
    wide = torch.full((M, N + 9), 7.0)
    out2, _ = _ops._cpu_seq_gemm(a, b, wide.narrow(1, 3, N), add)
    assert torch.equal(out2, out) if not add else torch.allclose(out2, ref.float() - c + 7.0, atol=1e-4 * K ** 0.5)


@pytest.mark.skipif(not HAS_AVX2, reason="the brgemm path needs AVX2")
def test_seq_gemm_choice(monkeypatch):
    """What the default choice sends to brgemm (seq_gemm.h): large products whose b has contiguous rows; not
    b = W^T, not small ones, nothing with FASTRNN_CPU_SEQ_GEMM=aten; and the value is checked."""
    monkeypatch.setenv("FASTRNN_CPU_SEQ_GEMM", "brgemm")
    a, w = torch.randn(600, 512), torch.randn(512, 256)
    assert _ops._cpu_seq_gemm(a, w, torch.empty(600, 256), False)[1]  # dG @ W
    assert _ops._cpu_seq_gemm(torch.randn(512, 600).t(), torch.randn(512, 512), torch.empty(600, 512), False)[1]
    assert not _ops._cpu_seq_gemm(a, torch.randn(256, 512).t(), torch.empty(600, 256), False)[1]  # x @ W^T
    assert not _ops._cpu_seq_gemm(a[:8, :64], w[:64, :32], torch.empty(8, 32), False)[1]  # small
    assert not _ops._cpu_seq_gemm(a.double(), w.double(), torch.empty(600, 256, dtype=torch.double), False)[1]
    monkeypatch.setenv("FASTRNN_CPU_SEQ_GEMM", "aten")
    out, on_brgemm = _ops._cpu_seq_gemm(a, w, torch.empty(600, 256), False)
    assert not on_brgemm
    torch.testing.assert_close(out, a @ w)
    monkeypatch.setenv("FASTRNN_CPU_SEQ_GEMM", "mkl")
    with pytest.raises(ValueError, match="FASTRNN_CPU_SEQ_GEMM must be aten, brgemm or always"):
        _ops._cpu_seq_gemm(a, w, torch.empty(600, 256), False)


@pytest.mark.skipif(not HAS_AVX2, reason="the brgemm path needs AVX2")
@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN], ids=lambda c: c.__name__)
def test_backward_gemms_go_through_seq_gemm(cls, monkeypatch):
    """The backward's whole-sequence GEMMs are seq_gemm's (so the parity switches above test it): an invalid
    FASTRNN_CPU_SEQ_GEMM reaches its check from loss.backward() of every cell."""
    m = cls(8, 12)
    out, _ = m(torch.randn(5, 3, 8))
    monkeypatch.setenv("FASTRNN_CPU_SEQ_GEMM", "mkl")
    with pytest.raises(ValueError, match="FASTRNN_CPU_SEQ_GEMM must be aten, brgemm or always"):
        out.sum().backward()


# Float32 and bfloat16 forwards of at most FASTRNN_CPU_BRGEMM_SHORT_ROWS rows in all (default 4) with fewer than 4
# batch rows take the per-step path (packing the weights costs more than the steps it speeds up: decoding one
# token at a time); 0 sends them to brgemm. Both against torch.nn, forward and backward, at the rule's edges (4 rows:
# per-step by default; 5 and B=4: brgemm either way).
SHORT_CASES = [Case("T1_B1", T=1, B=1, I=6, H=40), Case("T4_B1", T=4, B=1, I=6, H=40),
               Case("T2_B2_hx", T=2, B=2, I=6, H=40, hx=True), Case("T5_B1", T=5, B=1, I=6, H=40),
               Case("T1_B4", T=1, B=4, I=6, H=40), Case("T1_unbatched", T=1, B=1, I=6, H=40, batched=False)]


@pytest.mark.skipif(not HAS_AVX2, reason="the brgemm path needs AVX2")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("short_rows", ["0", "4"])
@pytest.mark.parametrize("case", SHORT_CASES, ids=repr)
@pytest.mark.parametrize("mode", MODES)
def test_short_sequences_either_path(mode, case, short_rows, dtype, monkeypatch):
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM", "1")
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM_SHORT_ROWS", short_rows)
    _parity_vs_float32(mode, case, f"short_rows={short_rows}", dtype)


def _parity_vs_float32(mode, case, what, dtype=torch.float32):
    """fastrnn against torch.nn in float32 on the same weights and inputs (bfloat16: on the same rounded
    ones, as test_modules_parity's test_parity_half_vs_float32): outputs and gradients."""
    fast, ref = make_pair(mode, case.I, case.H, dtype, "cpu", **case.module_kwargs)
    x, h0, c0 = make_inputs(mode, case, dtype, "cpu")
    out_f, grad_f = run_module(mode, fast, case, x, h0, c0)
    if dtype != torch.float32:
        ref = ref.float()
        ref.load_state_dict({k: v.float() for k, v in fast.state_dict().items()})
        x, h0, c0 = (t.detach().float().requires_grad_() if t is not None else None for t in (x, h0, c0))
    out_r, grad_r = run_module(mode, ref, case, x, h0, c0)
    compare(out_f, out_r, dtype, f"{what} output")
    if dtype == torch.float32:
        compare(grad_f, grad_r, dtype, f"{what} grad")
    elif mode != "RNN_RELU":  # (relu's kink: see test_parity_half_vs_float32)
        for k in grad_r:
            assert_close_scaled(grad_f[k], grad_r[k], dtype, f"{what} grad {k}")


# Decoding steps (fewer than 4 rows in all; float32 and bfloat16) multiply by W_ih and W_hh read in place
# (step_gemm.h, mm_wt_into): on one thread below 512 KB of weight, the output columns split over the threads
# above; FASTRNN_CPU_WT_GEMV=0 sends them to at::mm. Against torch.nn either way, forward and backward, with a K
# that is no multiple of the vector width (the masked tail; bf16: after whole bf16 vectors), an odd column count
# (the one-column loop: the Elman RNN's H), 3 rows from the steps or from the batch, and an LSTM projection
# (its h = r @ W_hr^T step product).
# A call of one step with up to 8 batch rows takes the same products (brgemm_step.cpp, too_short_to_pack): rows
# in groups of 3 sharing each weight vector, 8 = 3 + 3 + 2 on one thread, 7 = 3 + 3 + 1 split over the threads.
WT_GEMV_CASES = [Case("T1_B1_I37_H257", T=1, B=1, I=37, H=257), Case("T3_B1_H256", T=3, B=1, I=256, H=256),
                 Case("T1_B3_H300_hx", T=1, B=3, I=64, H=300, hx=True),
                 Case("T2_B1_H256_unbatched", T=2, B=1, I=256, H=256, batched=False),
                 Case("T1_B8_I37_H257", T=1, B=8, I=37, H=257), Case("T1_B7_H256_hx", T=1, B=7, I=256, H=256, hx=True)]
WT_GEMV_PROJ = Case("T2_B1_H256_P37", T=2, B=1, I=40, H=256, proj_size=37)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", ["avx512", "avx2", "default", "at::mm"])
@pytest.mark.parametrize("mode,case", [(m, c) for m in MODES for c in WT_GEMV_CASES] + [("LSTM", WT_GEMV_PROJ)],
                         ids=repr)
def test_decoding_steps_read_weights_in_place(mode, case, variant, dtype, monkeypatch):
    """variant: the instruction set of the loop (FASTRNN_CPU_CAPABILITY; one the processor lacks falls back to
    the best it has), or at::mm instead (FASTRNN_CPU_WT_GEMV=0)."""
    monkeypatch.setenv("FASTRNN_CPU_WT_GEMV", "0" if variant == "at::mm" else "1")
    if variant != "at::mm":
        monkeypatch.setenv("FASTRNN_CPU_CAPABILITY", variant)
    torch.manual_seed(0)
    _parity_vs_float32(mode, case, variant, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows", range(1, 10))
def test_in_place_product_rows(rows, dtype):
    """mm_wt_into (step_gemm.h) serves 1 to 8 rows, a @ w.t() with w read in place, and leaves 9 to at::mm:
    against torch's product of the same operands (fp32 sums; bf16 rounded once), K and N no multiple of the
    vector width or of the 4-column unit."""
    import fastrnn._testing_ops  # noqa: F401  (the test ops' fake kernels)
    torch.manual_seed(rows)
    a, w = torch.randn(rows, 37).to(dtype), torch.randn(13, 37).to(dtype)
    out, in_place = torch.ops.fastrnn._cpu_mm_wt(a, w)
    assert in_place == (rows <= 8)
    expected = (a.float() @ w.float().t()).to(dtype)
    torch.testing.assert_close(out, expected, **({} if dtype == torch.float32 else {"atol": 0.0, "rtol": 8e-3}))


@pytest.mark.parametrize("variant", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("add", [False, True], ids=["set", "add"])
@pytest.mark.parametrize("rows", range(1, 10))
def test_short_backward_products(rows, add, variant, monkeypatch):
    """small_mm_into (step_gemm.h), both of its products, for 1 to 8 rows (9 left to at::mm), c set or added to,
    every instruction set's loop (one the processor lacks falls back to the best it has): against float64.
    narrow: a [rows, K] @ b, the input gradient dG @ W_ih (K = 37; N = 61: whole 3-vector blocks, then single
    vectors, then a masked tail at either vector width). outer: m^T @ b with m [rows, 29] row-major, the weight
    gradient dG^T @ x (each of the 29 output rows sums `rows` rows of b; N = 61 again)."""
    import fastrnn._testing_ops  # noqa: F401  (the test ops' fake kernels)
    monkeypatch.setenv("FASTRNN_CPU_CAPABILITY", variant)
    torch.manual_seed(rows)
    b = torch.randn(37, 61)
    for name, a, bb in (("narrow", torch.randn(rows, 37), b), ("outer", torch.randn(rows, 29).t(), b[:rows])):
        c = torch.randn(a.shape[0], bb.shape[1])
        out, served = torch.ops.fastrnn._cpu_small_mm(a, bb, c, add)
        assert served == (rows <= 8), name
        expected = (c.double() if add else 0) + a.double() @ bb.double()
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(not HAS_AVX2, reason="the brgemm path needs AVX2")
@pytest.mark.parametrize("path", ["brgemm", "per-step"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_reused_scratch_changes_no_number(mode, path, monkeypatch):
    """The packed weights live in per-thread scratch buffers that later calls reuse (csrc/cpu/scratch.h). A
    training step of a larger module, then a smaller one (its packs in the larger, reused buffers), then the
    larger again: every output and gradient bit-identical to the same calls with the pool off, and within the
    tolerance of torch.nn. per-step: the fallback, whose MKL-packed weights take the same pool."""
    if path == "per-step":
        monkeypatch.setenv("FASTRNN_CPU_BRGEMM", "0")
    # (sizes: every weight, even an Elman RNN's, over the pool's 256 KB minimum)
    big, small = Case("big", T=6, B=8, I=288, H=288), Case("small", T=5, B=8, I=272, H=272)
    cases = [big, small, big]
    runs = {}
    for pool in ("1", "0"):
        monkeypatch.setenv("FASTRNN_CPU_SCRATCH", pool)
        runs[pool] = []
        for i, case in enumerate(cases):
            torch.manual_seed(case.H)
            fast, ref = make_pair(mode, case.I, case.H)
            x, h0, c0 = make_inputs(mode, case, torch.float32, "cpu", seed=i)
            got = run_module(mode, fast, case, x, h0, c0)
            runs[pool].append(got)
            if pool == "1":
                xr, h0r, c0r = make_inputs(mode, case, torch.float32, "cpu", seed=i)
                want = run_module(mode, ref, case, xr, h0r, c0r)
                for part in range(2):
                    compare(got[part], want[part], torch.float32, f"{case.name} #{i}")
    for a, b in zip(runs["1"], runs["0"]):
        for part in range(2):
            for k in a[part]:
                assert torch.equal(a[part][k], b[part][k]), k


@pytest.mark.parametrize("path", ["brgemm", "per-step"])
@pytest.mark.parametrize("mode,I,H,T,B", [("RNN_TANH", 16, 16, 3, 8), ("RNN_TANH", 20, 16, 70, 5),
                                          ("GRU", 48, 16, 70, 5), ("LSTM", 64, 16, 1, 8)], ids=str)
def test_input_gradient_in_the_gate_gradients_storage(mode, I, H, T, B, path, monkeypatch):
    """Where the input is at least as wide as the gates (I >= gates * H), the backward keeps the gate gradients
    in the input gradient's storage and computes the input gradient last, in row chunks from the last to the
    first (csrc/sequence.cpp, sequence_grads): one chunk for up to 256 rows (a cell's step), several beyond
    (N = 350: 256 + 94). Every gradient against torch.nn."""
    if path == "per-step":
        monkeypatch.setenv("FASTRNN_CPU_BRGEMM", "0")
    case = Case("wide input", T=T, B=B, I=I, H=H)
    torch.manual_seed(0)
    fast, ref = make_pair(mode, I, H)
    got = run_module(mode, fast, case, *make_inputs(mode, case, torch.float32, "cpu"))
    want = run_module(mode, ref, case, *make_inputs(mode, case, torch.float32, "cpu"))
    for part in range(2):
        compare(got[part], want[part], torch.float32, f"{mode} N={T * B}")
