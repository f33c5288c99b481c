"""The CPU pointwise kernels under each instruction-set variant, chosen per call by FASTRNN_CPU_CAPABILITY
(default | avx2 | avx512; a variant the processor lacks falls back to the best it has)."""
import pytest
import torch

from common import Case, MODES, assert_close_scaled, compare, make_inputs, make_pair, run_module

CAPABILITIES = ["default", "avx2", "avx512"]
# Hidden sizes around the vector widths (float32: 8 AVX2 / 16 AVX-512 lanes; float64 half that), so that
# full vectors, tails and tail-only rows all run; packed + bidirectional exercise the varying batch sizes.
CASES = [
    Case("H13_packed_bidir_hx", T=4, B=3, I=5, H=13, bidirectional=True, lengths=[4, 1, 3], hx=True),
    Case("H33_2layer", T=3, B=2, I=4, H=33, num_layers=2),
    Case("H3_tail_only_batchfirst", T=3, B=2, I=4, H=3, batch_first=True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("capability", CAPABILITIES)
def test_capability_parity(capability, mode, case, dtype, monkeypatch):
    monkeypatch.setenv("FASTRNN_CPU_CAPABILITY", capability)
    fast, ref = make_pair(mode, case.I, case.H, dtype, "cpu", **case.module_kwargs)
    x, h0, c0 = make_inputs(mode, case, dtype, "cpu")
    out_f, grad_f = run_module(mode, fast, case, x, h0, c0)
    if dtype == torch.bfloat16:  # against torch.nn in float32 on the same rounded numbers
        ref = ref.float()
        ref.load_state_dict({k: v.float() for k, v in fast.state_dict().items()})
        x, h0, c0 = (t.detach().float().requires_grad_() if t is not None else None for t in (x, h0, c0))
    out_r, grad_r = run_module(mode, ref, case, x, h0, c0)
    compare(out_f, out_r, dtype, f"{capability} output")
    if dtype != torch.bfloat16:
        compare(grad_f, grad_r, dtype, f"{capability} grad")
    elif mode != "RNN_RELU":  # see test_parity_half_vs_float32
        for k in grad_r:
            assert_close_scaled(grad_f[k], grad_r[k], dtype, f"{capability} grad {k}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_capabilities_agree(mode, dtype, monkeypatch):
    """All variants compute the same function: their results agree to within rounding of the dtype."""
    case = CASES[0]
    fast, _ = make_pair(mode, case.I, case.H, dtype, "cpu", **case.module_kwargs)
    x, h0, c0 = make_inputs(mode, case, dtype, "cpu")
    results = {}
    for cap in CAPABILITIES:
        monkeypatch.setenv("FASTRNN_CPU_CAPABILITY", cap)
        results[cap] = run_module(mode, fast, case, x, h0, c0)
    base_out, base_grad = results["default"]
    for cap in CAPABILITIES[1:]:
        compare(results[cap][0], base_out, dtype, f"{cap} vs default output")
        if dtype != torch.bfloat16:
            compare(results[cap][1], base_grad, dtype, f"{cap} vs default grad")


def test_bad_capability_raises(monkeypatch):
    monkeypatch.setenv("FASTRNN_CPU_CAPABILITY", "sse9")
    fast, _ = make_pair("GRU", 3, 4)
    with pytest.raises(ValueError, match="FASTRNN_CPU_CAPABILITY"):
        fast(torch.randn(2, 1, 3))
