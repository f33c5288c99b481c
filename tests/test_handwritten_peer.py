"""The benchmark's hand-written peers (fastrnn.bench.handwritten) compute fastrnn.reference's equations for the
options beyond torch.nn, and, once fastrnn.LSTM/GRU take the options, the same function as fastrnn after
load_from. The benchmark's option cases run end to end on tiny shapes."""
import json

import pytest
import torch

from fastrnn import reference
from fastrnn.bench.handwritten import HandwrittenGRU, HandwrittenLSTM

T, B, I, H = 6, 3, 5, 4


def _peer(cls, layer_norm, zoneout, seed=0):
    torch.manual_seed(seed)
    m = cls(I, H, layer_norm=layer_norm, zoneout=zoneout).double()
    with torch.no_grad():  # gains and biases off 1 and 0, so that the comparison sees them
        for n, p in m.named_parameters():
            if n.startswith("ln_"):
                p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def _ln(m, which):
    return (getattr(m, f"ln_{which}_weight_l0"), getattr(m, f"ln_{which}_bias_l0")) if m.layer_norm else None


def _reference_lstm(m, x, h, c):
    gx = reference.input_gates("LSTM", x, m.weight_ih_l0, m.bias_ih_l0, m.bias_hh_l0, _ln(m, "ih"))
    k = None if not m.zoneout else torch.full_like(h, m.zoneout)
    out = []
    for t in range(x.shape[0]):
        h, c = reference.lstm_ext_cell(gx[t], h, c, m.weight_hh_l0, ln_hh=_ln(m, "hh"), ln_c=_ln(m, "c"),
                                       k_h=k, k_c=k)
        out.append(h)
    return torch.stack(out), h, c


def _reference_gru(m, x, h):
    gx = reference.input_gates("GRU", x, m.weight_ih_l0, m.bias_ih_l0, m.bias_hh_l0, _ln(m, "ih"))
    k = None if not m.zoneout else torch.full_like(h, m.zoneout)
    out = []
    for t in range(x.shape[0]):
        h = reference.gru_ext_cell(gx[t], h, m.weight_hh_l0, m.bias_hh_l0, ln_hh=_ln(m, "hh"), k_h=k)
        out.append(h)
    return torch.stack(out), h


OPTIONS = [(False, 0.0), (True, 0.0), (False, 0.25), (True, 0.25)]


@pytest.mark.parametrize("layer_norm,zoneout", OPTIONS)
def test_lstm_peer_matches_reference(layer_norm, zoneout):
    m = _peer(HandwrittenLSTM, layer_norm, zoneout)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    h0 = torch.randn(1, B, H, generator=g, dtype=torch.float64)
    c0 = torch.randn(1, B, H, generator=g, dtype=torch.float64)
    out, (h, c) = m(x, (h0, c0))
    ref_out, ref_h, ref_c = _reference_lstm(m, x, h0[0], c0[0])
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h[0], ref_h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c[0], ref_c, rtol=1e-12, atol=1e-12)
    out0, (h_n, c_n) = m(x)  # hx=None: zeros
    torch.testing.assert_close(out0, _reference_lstm(m, x, torch.zeros(B, H, dtype=torch.float64),
                                                     torch.zeros(B, H, dtype=torch.float64))[0])
    assert h_n.shape == c_n.shape == (1, B, H)


@pytest.mark.parametrize("layer_norm,zoneout", OPTIONS)
def test_gru_peer_matches_reference(layer_norm, zoneout):
    m = _peer(HandwrittenGRU, layer_norm, zoneout)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    h0 = torch.randn(1, B, H, generator=g, dtype=torch.float64)
    out, h = m(x, h0)
    ref_out, ref_h = _reference_gru(m, x, h0[0])
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h[0], ref_h, rtol=1e-12, atol=1e-12)


def test_peer_layer_norm_is_torch_layer_norm():
    a = torch.randn(7, 12, dtype=torch.float64)
    w, b = torch.randn(12, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    ln = torch.nn.functional.layer_norm(a, (12,), w, b, 1e-5)
    torch.testing.assert_close(ln, reference.layer_norm(a, w, b))


def test_peer_without_options_is_torch_nn():
    """With the options off the peers are torch.nn.LSTM / GRU (load_from copies torch.nn's parameters too)."""
    torch.manual_seed(0)
    x = torch.randn(T, B, I, dtype=torch.float64)
    for ref_cls, cls in ((torch.nn.LSTM, HandwrittenLSTM), (torch.nn.GRU, HandwrittenGRU)):
        ref = ref_cls(I, H).double()
        peer = cls(I, H).double().load_from(ref)
        want, got = ref(x), peer(x)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])


def test_zoneout_training_masks():
    """In training each unit keeps its previous value with probability p (both h and c for the LSTM);
    torch.manual_seed reproduces the masks; eval is deterministic."""
    m = HandwrittenLSTM(I, 64, zoneout=0.3).double().train()
    x = torch.randn(40, 16, I, dtype=torch.float64)
    torch.manual_seed(5)
    out1 = m(x)[0]
    torch.manual_seed(5)
    out2 = m(x)[0]
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)
    kept = (out1[1:] == out1[:-1]).double().mean().item()
    assert 0.25 < kept < 0.35, kept
    m.eval()
    torch.testing.assert_close(m(x)[0], m(x)[0], rtol=0, atol=0)


def test_load_from_checks_options():
    src = HandwrittenLSTM(I, H)
    with pytest.raises(ValueError, match="ln_ih_weight_l0"):
        HandwrittenLSTM(I, H, layer_norm=True).load_from(src)


# ------------------------------------------------------------------ against fastrnn's modules (once they exist)
def _fastrnn_with_options(kind, **opts):
    import fastrnn

    cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[kind]
    try:
        return cls(I, H, **opts)
    except TypeError as exc:
        pytest.skip(f"fastrnn.{cls.__name__} does not take {sorted(opts)} yet: {exc}")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("layer_norm,zoneout", OPTIONS)
def test_peer_matches_fastrnn_module(kind, layer_norm, zoneout):
    fast = _fastrnn_with_options(kind, layer_norm=layer_norm, zoneout=zoneout).double().eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in fast.named_parameters():
            if n.startswith("ln_"):
                p.add_(0.3 * torch.randn_like(p))
    peer = {"lstm": HandwrittenLSTM, "gru": HandwrittenGRU}[kind](
        I, H, layer_norm=layer_norm, zoneout=zoneout).double().eval().load_from(fast)
    assert [n for n, _ in peer.named_parameters()] == [n for n, _ in fast.named_parameters()]
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=torch.float64)
    hx = (h0, torch.randn(1, B, H, dtype=torch.float64)) if kind == "lstm" else h0
    want, got = peer(x, hx), fast(x, hx)
    torch.testing.assert_close(got[0], want[0])
    for a, b in zip(torch.utils._pytree.tree_leaves(got[1]), torch.utils._pytree.tree_leaves(want[1])):
        torch.testing.assert_close(a, b)
    g = torch.randn_like(want[0])
    grads_want = torch.autograd.grad(want[0], [x] + list(peer.parameters()), g)
    grads_got = torch.autograd.grad(got[0], [x] + list(fast.parameters()), g)
    names = ["input"] + [n for n, _ in peer.named_parameters()]
    for n, a, b in zip(names, grads_got, grads_want):
        torch.testing.assert_close(a, b, msg=lambda m, n=n: f"grad {n}: {m}")


def _run_option_cases(tmp_path):
    from fastrnn import bench

    cases = "lstm-layernorm-zoneout-tiny,gru-layernorm-tiny"
    rc = bench.main(["--device", "cpu", "--cases", cases, "--dtype", "float32", "--repeats", "3",
                     "--warmup", "0", "--peak-seconds", "0", "--no-memory", "--no-chart", "--out", str(tmp_path),
                     "--stem", "hw"])
    rows = json.loads((tmp_path / "hw.json").read_text())["results"]
    assert rc == 0, [r["error"] for r in rows]
    assert {(r["case"], r["mode"]) for r in rows} == {(c, m) for c in cases.split(",")
                                                       for m in ("inference", "training")}
    for r in rows:
        assert r["status"] == "OK" and r["torch_ms"] > 0 and r["fastrnn_ms"] > 0 and r["target"] == ""
    return rows


def test_bench_option_cases_wiring(tmp_path, monkeypatch, capsys):
    """The benchmark's wiring of the option cases, with the peers standing in for fastrnn's modules (so it
    runs before fastrnn has the options): named cases only, parity in eval mode under zoneout, no target."""
    import fastrnn
    from fastrnn import bench

    assert not any(c.options for c in bench.select_cases(None))
    assert not any(c.options for c in bench.select_cases("lstm-*"))
    assert [c.name for c in bench.select_cases("gru-layernorm")] == ["gru-layernorm"]
    monkeypatch.setattr(fastrnn, "LSTM", HandwrittenLSTM)
    monkeypatch.setattr(fastrnn, "GRU", HandwrittenGRU)
    _run_option_cases(tmp_path)
    assert "the torch.nn columns are that peer's" in capsys.readouterr().out


def test_bench_option_cases_run(tmp_path):
    """The benchmark's option cases on tiny shapes with fastrnn's modules: parity against the peer, timings."""
    _fastrnn_with_options("lstm", layer_norm=True, zoneout=0.1)
    _fastrnn_with_options("gru", layer_norm=True)
    _run_option_cases(tmp_path)
