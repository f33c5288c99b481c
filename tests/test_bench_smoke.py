"""The benchmark command itself, in a few seconds: its tiny smoke cases, its outputs and its parity gate."""
import csv
import json

import pytest
import torch

import fastrnn
from fastrnn import bench

TINY = "lstm-tiny,gru-tiny,rnn_tanh-tiny"


def _run(tmp_path, *extra):
    argv = ["--quick", "--device", "cpu", "--cases", TINY, "--repeats", "2", "--warmup", "0",
            "--out", str(tmp_path), "--stem", "smoke", *extra]
    return bench.main(argv)


def test_case_names_are_stable():
    names = {c.name for c in bench.select_cases(None)}
    for kind in ("lstm", "gru", "rnn_tanh"):
        for shape in ("default", "b1", "b8", "h1024", "long", "bidir2", "packed"):
            assert f"{kind}-{shape}" in names
    assert not any(n.endswith("-tiny") for n in names), "smoke cases only run when named"
    assert [c.name for c in bench.select_cases("gru-b?")] == ["gru-b1", "gru-b8"]
    with pytest.raises(SystemExit):
        bench.select_cases("no-such-case")


def test_quick_run_writes_json_csv_markdown(tmp_path, capsys):
    md = tmp_path / "report.md"
    assert _run(tmp_path, "--memory", "--markdown", str(md)) == 0
    data = json.loads((tmp_path / "smoke.json").read_text())
    rows = data["results"]
    assert {(r["case"], r["mode"]) for r in rows} == {(c, m) for c in TINY.split(",")
                                                       for m in ("inference", "training")}
    assert data["machine"]["torch_threads"] == torch.get_num_threads()
    assert data["machine"]["complete"] is True and data["machine"]["runs_done"] == len(rows) == 6
    for r in rows:
        assert r["status"] == "OK", r
        assert r["dtype"] == "float32"
        assert 0 <= r["parity_max_err"] <= r["parity_tol"]
        assert r["torch_ms"] > 0 and r["fastrnn_ms"] > 0 and r["repeats"] == 2
        assert r["speedup"] == pytest.approx(r["torch_ms"] / r["fastrnn_ms"], rel=1e-2)
        assert r["torch_peak_mb"] >= 0 and r["fastrnn_peak_mb"] >= 0
    with open(tmp_path / "smoke.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == bench.OUT_COLUMNS
        assert len(list(reader)) == len(rows)
    text = md.read_text()
    assert "python -m fastrnn.bench --quick" in text and "torch threads" in text and "lstm-tiny" in text
    assert "lstm-tiny" in capsys.readouterr().out  # the table goes to stdout


def test_parity_failure_fails_the_command(tmp_path, monkeypatch, capsys):
    forward = fastrnn.GRU.forward

    def wrong(self, input, hx=None):
        out, h = forward(self, input, hx)
        return out + 1e-2, h

    monkeypatch.setattr(fastrnn.GRU, "forward", wrong)
    assert _run(tmp_path, "--mode", "inference") == 1
    rows = {r["case"]: r for r in json.loads((tmp_path / "smoke.json").read_text())["results"]}
    assert rows["gru-tiny"]["status"] == "PARITY_FAIL" and rows["gru-tiny"]["speedup"] == ""
    assert "output" in rows["gru-tiny"]["error"]
    assert rows["lstm-tiny"]["status"] == "OK"
    assert "PARITY_FAIL" in capsys.readouterr().err
