"""The CUDA kernels of fastrnn::lstm_ext_* / gru_ext_* (csrc/cuda/{lstm,gru}_ext_cuda.cpp, ext_step_kernel.cuh) on a
real GPU: forward values and the workspace against the CPU ops (same contract, csrc/fastrnn.cpp), the backward's
gradients against torch.autograd.grad through fastrnn.composite (the ops in plain PyTorch), in float64, float32,
bfloat16 and float16, with every option. Skipped without a CUDA device (tests/test_cuda_emu_ext.py runs the same
device code on the CPU under the CUDA emulation)."""
from __future__ import annotations

import math

import pytest
import torch

import fastrnn  # noqa: F401  (registers torch.ops.fastrnn)
from fastrnn import composite

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not torch._C._dispatch_has_kernel_for_dispatch_key("fastrnn::lstm_ext_forward", "CUDA"),
                       reason="fastrnn was built without CUDA kernels"),
]

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# (cell, H, P, batch_sizes or None for dense [T=4, B=3], reverse, ln, lnc, zoneout, mask)
CASES = [
    ("lstm", 13, 0, None, False, False, False, "off", False),
    ("lstm", 40, 0, (3, 3, 2, 1), True, True, True, "mask", True),
    ("lstm", 300, 0, (2, 1), False, True, True, "const", False),
    ("lstm", 13, 7, (3, 3, 2, 1), False, True, True, "mask", True),
    ("lstm", 40, 35, None, True, False, True, "const", True),
    ("gru", 13, 0, None, False, False, False, "off", False),
    ("gru", 40, 0, (3, 3, 2, 1), True, True, False, "mask", True),
    ("gru", 300, 0, (2, 1), False, True, False, "const", True),
]


def _tol(dtype):
    return {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]


def _problem(case, dtype, seed=0):
    cell, H, P, bsz, reverse, ln, lnc, zo, mask = case
    g = torch.Generator().manual_seed(seed)
    lstm = cell == "lstm"
    G, K = (4 if lstm else 3) * H, P or H
    sizes = list(bsz) if bsz else [3] * 4
    B, T, N = sizes[0], len(sizes), sum(sizes)
    acc = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype

    def rnd(*shape, scale=1.0, center=0.0, dt=dtype):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale + center).to(dt)

    lead = (N,) if bsz else (T, B)

    def zoneout(D):
        if zo == "const":
            return torch.tensor([0.25], dtype=acc)
        if zo == "mask":
            return (torch.rand(*lead, D, generator=g, dtype=torch.float64) < 0.3).to(acc)
        return None

    s = 1.0 / math.sqrt(H)
    p = dict(
        gates_x=rnd(*lead, G), batch_sizes=torch.tensor(sizes) if bsz else None, hx=rnd(B, K, scale=0.5),
        cx=rnd(B, H, scale=0.5) if lstm else None, w_hh=rnd(G, K, scale=s), w_hr=rnd(P, H, scale=s) if P else None,
        b_hh=None if lstm else rnd(G, scale=s),
        ln_hh=(rnd(G, scale=0.5, center=1.0), rnd(G, scale=0.2)) if ln else (None, None),
        ln_c=(rnd(H, scale=0.5, center=1.0), rnd(H, scale=0.2)) if lnc else (None, None),
        zh=zoneout(K), zc=zoneout(H) if lstm else None,
        mask=((torch.rand(B, K, generator=g, dtype=torch.float64) < 0.7).to(acc) / 0.7) if mask else None,
        go=rnd(*lead, K), ghy=rnd(B, K), gcy=rnd(B, H) if lstm else None,
    )
    return p


def _to(p, device):
    out = {}
    for k, v in p.items():
        if isinstance(v, tuple):
            out[k] = tuple(None if t is None else t.to(device) for t in v)
        elif isinstance(v, torch.Tensor) and k != "batch_sizes":
            out[k] = v.to(device)
        else:
            out[k] = v
    return out


def _as_float32(p):
    f = lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    return {k: tuple(f(t) for t in v) if isinstance(v, tuple) else f(v) for k, v in p.items()}


def _forward(cell, p, reverse, train=True):
    ops = torch.ops.fastrnn
    if cell == "lstm":
        return ops.lstm_ext_forward(p["gates_x"], p["batch_sizes"], p["hx"], p["cx"], p["w_hh"], p["w_hr"], *p["ln_hh"],
                                    *p["ln_c"], p["zh"], p["zc"], p["mask"], reverse, train)
    return ops.gru_ext_forward(p["gates_x"], p["batch_sizes"], p["hx"], p["w_hh"], p["b_hh"], *p["ln_hh"], p["zh"],
                               p["mask"], reverse, train)


def _backward(cell, p, res, reverse):
    ops = torch.ops.fastrnn
    if cell == "lstm":
        out, _, _, ws = res
        return ops.lstm_ext_backward(p["go"], p["ghy"], p["gcy"], p["batch_sizes"], p["hx"], p["cx"], p["w_hh"],
                                     p["w_hr"], p["ln_hh"][0], p["ln_c"][0], p["zh"], p["zc"], p["mask"], out, ws,
                                     reverse)
    out, _, ws = res
    return ops.gru_ext_backward(p["go"], p["ghy"], p["batch_sizes"], p["hx"], p["w_hh"], p["ln_hh"][0], p["zh"],
                                p["mask"], out, ws, reverse, True)


def _reference_grads(cell, p, reverse):
    """Autograd through fastrnn.composite in float64, in the backward op's output order (None: not a leaf)."""
    f64 = torch.float64
    leaf = lambda t: None if t is None else t.detach().to(f64).clone().requires_grad_(True)  # noqa: E731
    up = lambda t: None if t is None else t.to(f64)  # noqa: E731
    gx, hx, cx, w_hh, w_hr, b_hh = (leaf(p[k]) for k in ("gates_x", "hx", "cx", "w_hh", "w_hr", "b_hh"))
    lnh = tuple(leaf(t) for t in p["ln_hh"])
    lnc = tuple(leaf(t) for t in p["ln_c"])
    if cell == "lstm":
        out, hy, cy = composite.lstm_ext_forward(gx, p["batch_sizes"], hx, cx, w_hh, w_hr, *lnh, *lnc, up(p["zh"]),
                                                 up(p["zc"]), up(p["mask"]), reverse)
        loss = (out * up(p["go"])).sum() + (hy * up(p["ghy"])).sum() + (cy * up(p["gcy"])).sum()
        leaves = [gx, hx, cx, w_hh, w_hr, lnh[0], lnh[1], lnc[0], lnc[1]]
    else:
        out, hy = composite.gru_ext_forward(gx, p["batch_sizes"], hx, w_hh, b_hh, *lnh, up(p["zh"]), up(p["mask"]),
                                            reverse)
        loss = (out * up(p["go"])).sum() + (hy * up(p["ghy"])).sum()
        leaves = [gx, hx, w_hh, b_hh, lnh[0], lnh[1]]
    live = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(loss, live))
    return [None if t is None else next(grads) for t in leaves]


def _close(actual, expected, dtype, what, scale=1.0):
    t = _tol(dtype) * scale
    torch.testing.assert_close(actual.detach().cpu().to(torch.float64), expected.detach().cpu().to(torch.float64),
                               rtol=t, atol=t, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_cuda_ext_ops(case, dtype):
    cell, reverse = case[0], case[4]
    p = _problem(case, dtype)
    pc = _to(p, "cuda")
    res = _forward(cell, pc, reverse)
    # The CPU ops have no float16: there, the CPU op in float32 on the same values (the workspace and the
    # accumulation are float32 in both)
    cpu = _forward(cell, _as_float32(p) if dtype == torch.float16 else p, reverse)
    for i, name in enumerate(("output", "hy", "cy", "ws")[:len(res)] if cell == "lstm" else ("output", "hy", "ws")):
        _close(res[i], cpu[i], dtype, f"{name} (CUDA vs CPU op)", scale=4 if name == "ws" else 1)
    inf = _forward(cell, pc, reverse, train=False)
    assert inf[-1].numel() == 0
    _close(inf[0], res[0], dtype, "output (inference vs train)", scale=0 if dtype == torch.float64 else 1)
    grads = _backward(cell, pc, res, reverse)
    ref = _reference_grads(cell, p, reverse)
    for i, (g, r) in enumerate(zip(grads, ref)):
        if r is None:
            assert g.numel() == 0, i
            continue
        # weight gradients sum over rows and steps; half types round every stored state
        _close(g, r, dtype, f"gradient {i} (CUDA vs autograd through fastrnn.composite)", scale=8)
