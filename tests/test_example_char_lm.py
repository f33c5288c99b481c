"""examples/char_lm.py in its --smoke sizes: both impls train (the loss goes down), sample text of the requested
length and write their outputs; fastrnn's layer norm and zoneout once the modules take them."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import fastrnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "char_lm.py")
SAMPLE_LEN = 37
# one thread: the smoke sizes are many tiny ops, which a loaded 2-core machine slows down most with 2 threads
SMOKE = ["--smoke", "--threads", "1", "--sample-len", str(SAMPLE_LEN)]


def _run(tmp_path, *extra):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, SCRIPT, *SMOKE, "--out", str(out), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "losses.json").read_text()), proc.stdout, out


def _check_run(run, args):
    losses = run["train_loss"]
    assert len(losses) == args["epochs"] * args["steps_per_epoch"] >= 6
    assert len(run["val_loss"]) == len(run["epoch_s"]) == args["epochs"] >= 2
    assert all(l == l for l in losses)  # no NaN
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.1, (run["label"], first, last)
    assert run["val_loss"][-1] < run["val_loss"][0], run["val_loss"]
    assert isinstance(run["sample"], str) and len(run["sample"]) == SAMPLE_LEN
    assert all(t > 0 for t in run["epoch_s"])


def test_smoke_both_impls(tmp_path):
    data, stdout, out = _run(tmp_path, "--compare")
    labels = [r["label"] for r in data["runs"]]
    assert labels == ["torch.nn", "fastrnn"]
    for r in data["runs"]:
        _check_run(r, data["args"])
    # the drop-in swap: same seed, same initial weights, the same function: the same losses to rounding
    a, b = (r["train_loss"] for r in data["runs"])
    assert a == pytest.approx(b, rel=1e-3, abs=1e-3)
    assert "time per epoch, fastrnn:" in stdout and "torch.nn / fastrnn time per epoch:" in stdout
    assert data["summary"]["speedup"] > 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no loss_curve.png" in stdout
    else:
        assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_layer_norm_zoneout(tmp_path):
    try:
        fastrnn.LSTM(4, 4, layer_norm=True, zoneout=0.1)
    except TypeError as exc:
        pytest.skip(f"fastrnn.LSTM does not take layer_norm/zoneout yet: {exc}")
    data, stdout, _ = _run(tmp_path, "--impl", "fastrnn", "--layer-norm", "--zoneout", "0.1")
    (run,) = data["runs"]
    assert run["label"] == "fastrnn"
    _check_run(run, data["args"])
    assert "layer_norm=True" in stdout and "zoneout=0.1" in stdout


def test_without_matplotlib(tmp_path, monkeypatch, capsys):
    """In process, matplotlib made unimportable: the JSON is written, the PNG skipped with a message."""
    spec = importlib.util.spec_from_file_location("char_lm", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    threads = torch.get_num_threads()
    try:
        assert mod.main([*SMOKE, "--impl", "torch", "--epochs", "1", "--steps-per-epoch", "3",
                         "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "no loss_curve.png: matplotlib is not importable" in capsys.readouterr().out
    assert (tmp_path / "losses.json").exists() and not (tmp_path / "loss_curve.png").exists()
    text = mod.stdlib_corpus(10_000)
    assert len(text) == 10_000 and text == mod.stdlib_corpus(10_000)  # deterministic
