"""Inter-layer dropout (between layers, not after the last, only in training mode), as torch.nn does it."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from common import MODES, assert_close, make_pair


def _run(m, x, mode):
    out, hx = m(x)
    out = out.data if hasattr(out, "batch_sizes") else out
    return [out, *hx] if mode == "LSTM" else [out, hx]


@pytest.mark.parametrize("mode", MODES)
def test_eval_mode_ignores_dropout_and_matches_torch(mode):
    fast, ref = make_pair(mode, 6, 7, num_layers=3, dropout=0.5, bidirectional=True)
    fast.eval(), ref.eval()
    x = torch.randn(5, 3, 6)
    for a, b in zip(_run(fast, x, mode), _run(ref, x, mode)):
        assert_close(a, b, torch.float32, "eval with dropout=0.5")
    assert all(torch.equal(a, b) for a, b in zip(_run(fast, x, mode), _run(fast, x, mode)))  # deterministic


@pytest.mark.parametrize("mode", MODES)
def test_train_mode_dropout_changes_outputs(mode):
    fast, _ = make_pair(mode, 6, 7, num_layers=2, dropout=0.5)
    x = torch.randn(5, 3, 6, requires_grad=True)
    fast.eval()
    out_eval = _run(fast, x, mode)
    fast.train()
    torch.manual_seed(1)
    out_a = _run(fast, x, mode)
    torch.manual_seed(2)
    out_b = _run(fast, x, mode)
    torch.manual_seed(1)
    out_a2 = _run(fast, x, mode)
    # the first layer runs before any dropout: its final state is the same in train and eval mode
    assert_close(out_a[1][0], out_eval[1][0], torch.float32, "layer 0 h_n")
    # the second layer's input is dropped out: its outputs and final state differ from eval mode
    assert (out_a[0] - out_eval[0]).abs().max() > 1e-3
    assert (out_a[1][1] - out_eval[1][1]).abs().max() > 1e-3
    assert (out_a[0] - out_b[0]).abs().max() > 1e-3  # a different mask for a different seed
    for a, b in zip(out_a, out_a2):  # and the same for the same seed
        assert torch.equal(a, b)
    # finite outputs and gradients
    loss = sum((o * torch.randn_like(o)).sum() for o in out_a)
    grads = torch.autograd.grad(loss, [x, *fast.parameters()])
    assert all(torch.isfinite(t).all() for t in out_a)
    assert all(torch.isfinite(g).all() for g in grads) and x.grad is None
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("mode", MODES)
def test_dropout_statistics(mode):
    """With p = 0.5 about half of the second layer's inputs are zeroed and the rest scaled by 2: compare the
    second layer's output with that layer run on a masked input. The mask is recovered from torch's own
    F.dropout drawn with the same seed in the same order (fastrnn draws one mask per dropped layer)."""
    fast, _ = make_pair(mode, 6, 7, num_layers=2, dropout=0.5, batch_first=False)
    fast.train()
    x = torch.randn(5, 3, 6)
    torch.manual_seed(3)
    out_train = _run(fast, x, mode)[0]
    # Replay: layer 0 alone, dropout with the same seed, then layer 1 alone.
    l0, l1 = make_pair(mode, 6, 7)[0], make_pair(mode, 7, 7)[0]
    sd = fast.state_dict()
    l0.load_state_dict({k: v for k, v in sd.items() if k.endswith("_l0")})
    l1.load_state_dict({k.replace("_l1", "_l0"): v for k, v in sd.items() if k.endswith("_l1")})
    y0 = l0(x)[0]
    torch.manual_seed(3)
    y0_dropped = torch.nn.functional.dropout(y0, 0.5, training=True)
    zero_frac = (y0_dropped[y0 != 0] == 0).float().mean().item()  # (relu outputs hold zeros of their own)
    assert 0.3 < zero_frac < 0.7
    assert_close(out_train, l1(y0_dropped)[0], torch.float32, "train output vs replayed dropout")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", [False, True])
def test_dropout_zero_train_equals_eval(mode, packed):
    fast, ref = make_pair(mode, 6, 7, num_layers=3, dropout=0.0, bidirectional=True)
    x = torch.randn(5, 3, 6)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([5, 2, 4]), enforce_sorted=False)
    fast.train()
    tr = _run(fast, x, mode)
    fast.eval()
    ev = _run(fast, x, mode)
    for a, b in zip(tr, ev):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(tr, _run(ref.train(), x, mode)):
        assert_close(a, b, torch.float32, "dropout=0 train vs torch.nn")


def test_single_layer_dropout_has_no_effect():
    """Dropout only acts between layers: a 1-layer module with dropout=0.5 gives the same result in train and
    eval mode."""
    with pytest.warns(UserWarning, match="num_layers greater than 1"):  # torch.nn's warning, from make_pair
        fast, _ = make_pair("GRU", 6, 7, num_layers=1, dropout=0.5)
    x = torch.randn(5, 3, 6)
    a = _run(fast.train(), x, "GRU")
    b = _run(fast.eval(), x, "GRU")
    for s, t in zip(a, b):
        torch.testing.assert_close(s, t, rtol=0, atol=0)
