"""The benchmark command itself, in a few seconds: its tiny smoke cases, its outputs and its parity gate."""
import csv
import json
import sys

import pytest
import torch

import fastrnn
from fastrnn import bench

TINY = "lstm-tiny,gru-tiny,rnn_tanh-tiny"
GEMM = "lstm-tiny-gemm"  # T=3 B=32 I=H=256: GEMM-bound by the rule (B >= 32, H >= 256), still milliseconds


def _run(tmp_path, *extra, cases=TINY):
    argv = ["--quick", "--device", "cpu", "--cases", cases, "--repeats", "4", "--warmup", "0",
            "--peak-seconds", "0.05", "--out", str(tmp_path), "--stem", "smoke", *extra]
    return bench.main(argv)


def test_case_names_are_stable():
    names = {c.name for c in bench.select_cases(None)}
    for kind in ("lstm", "gru", "rnn_tanh"):
        for shape in ("default", "b1", "b8", "h1024", "long", "bidir2", "bidir2-b1", "packed"):
            assert f"{kind}-{shape}" in names
    assert not any(n.endswith("-tiny") for n in names), "smoke cases only run when named"
    assert [c.name for c in bench.select_cases("gru-b?")] == ["gru-b1", "gru-b8"]
    with pytest.raises(SystemExit):
        bench.select_cases("no-such-case")


def test_quick_cases_are_fewer_not_shorter():
    quick = bench.quick_cases()
    assert [c.name for c in quick] == [f"{k}-{s}" for k in ("lstm", "gru", "rnn_tanh")
                                       for s in ("default", "b1", "long")]
    for c in quick:  # the benchmark's own sequence lengths, never a shortened one
        assert c.shape("cpu")["T"] == c.T >= 100
    assert bench.left_out(quick, ["float32"], list(bench.MODES), False, "cpu") == [
        "cases *-b8, *-h1024, *-bidir2, *-bidir2-b1, *-packed", "dtype bfloat16", "peak memory"]
    assert bench.left_out(bench.select_cases(None), ["float32", "bfloat16"], list(bench.MODES), True, "cpu") == []
    assert bench.left_out(bench.select_cases("lstm-b8,gru-*,rnn_tanh-*"), ["float32", "float16", "bfloat16"],
                          ["training"], True, "cuda") == [
        "cases lstm-default, lstm-b1, lstm-h1024, lstm-long, lstm-bidir2, lstm-bidir2-b1, lstm-packed",
        "mode inference"]
    info = {"cpu": "X", "cpu_count": 2, "torch_threads": 2, "torch": "t", "fastrnn": "f", "python": "p",
            "platform": "l", "quick": True, "cases_run": 9, "cases_all": 21, "min_repeats": 5,
            "left_out": ["cases *-b8", "peak memory"],
            "gemm_peak": {"float32": {"gflops": 123.4, "n": 2048, "seconds": 1.0}}}
    text = "\n".join(bench.header_lines(info))
    assert "quick run: 9 of 21 cases, at their full sequence lengths, >= 5 timed pairs each" in text
    assert "left out: cases *-b8; peak memory" in text
    assert "peak GEMM float32: 123 GFLOP/s (torch.mm 2048x2048x2048, best call in 1 s, 2 threads; at the start)" in text
    info["gemm_peak"]["float32"].update(gflops_start=100.0, gflops_end=123.4)
    assert "; the higher of 100 at the start and 123 at the end)" in "\n".join(bench.header_lines(info))


def test_gemm_flops_and_rule():
    c = bench.CASES_BY_NAME
    # LSTM, 1 layer: 2 * rows * 4H * (I + H), rows = T * B
    assert bench.gemm_flops(c["lstm-default"], 100 * 64, "inference") == 2 * 6400 * 2048 * 1024
    assert bench.gemm_flops(c["lstm-default"], 6400, "training") == 3 * 2 * 6400 * 2048 * 1024
    # GRU, 2 layers, bidirectional, I = H = 256: layer 0 reads I, layer 1 reads 2H; two directions each
    assert bench.gemm_flops(c["gru-bidir2"], 6400, "inference") == 2 * (2 * 6400 * 768 * (256 + 256) +
                                                                        2 * 6400 * 768 * (512 + 256))
    assert bench.gemm_flops(c["rnn_tanh-b1"], 100, "inference") == 2 * 100 * 512 * 1024
    bound = {n for n, case in c.items() if bench.gemm_bound(case) and not case.smoke}
    assert bound == {f"{k}-{s}" for k in ("lstm", "gru", "rnn_tanh") for s in ("default", "h1024", "bidir2", "packed")}
    assert bench.gemm_bound(c[GEMM]) and not bench.gemm_bound(c["lstm-tiny"])


def test_ratio_quartiles_and_peak():
    q1, q3 = bench.ratio_quartiles([2.0, 4.0, 6.0, 8.0, 10.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert (q1, q3) == (4.0, 8.0)
    q1, q3 = bench.ratio_quartiles([10.0, 3.0, 2.0, 1.0], [5.0, 1.0, 1.0, 1.0])  # ratios 2, 3, 2, 1
    assert (q1, q3) == (1.75, 2.25)
    peak = bench.gemm_peak(torch.float32, "cpu", seconds=0.05)
    assert peak["gflops"] > 0 and 1024 <= peak["n"] <= 4096 and peak["n"] % 256 == 0


def test_quick_run_writes_json_csv_markdown_png(tmp_path, capsys):
    md = tmp_path / "report.md"
    cases = TINY + "," + GEMM
    assert _run(tmp_path, "--memory", "--markdown", str(md), cases=cases) == 0
    data = json.loads((tmp_path / "smoke.json").read_text())
    rows = data["results"]
    assert {(r["case"], r["mode"]) for r in rows} == {(c, m) for c in cases.split(",")
                                                       for m in ("inference", "training")}
    machine = data["machine"]
    assert machine["torch_threads"] == torch.get_num_threads()
    assert machine["complete"] is True and machine["runs_done"] == len(rows) == 8
    peaks = machine["gemm_peak"]["float32"]  # measured at the start and again at the end; the higher is used
    peak = peaks["gflops"]
    assert peak == max(peaks["gflops_start"], peaks["gflops_end"]) > 0
    for r in rows:
        assert r["status"] == "OK", r
        assert r["dtype"] == "float32"
        assert 0 <= r["parity_max_err"] <= r["parity_tol"]
        assert r["torch_ms"] > 0 and r["fastrnn_ms"] > 0 and r["repeats"] == 4
        assert r["speedup"] == pytest.approx(r["torch_ms"] / r["fastrnn_ms"], rel=1e-2)
        assert 0 < r["speedup_q1"] <= r["speedup_q3"]  # the spread of the per-pair ratios
        assert r["torch_peak_mb"] >= 0 and r["fastrnn_peak_mb"] >= 0
        if r["case"] == GEMM:  # T=3 B=32 I=H=256 LSTM: 2 * 96 rows * 1024 * 512 flops forward, 3x in training
            assert r["gemm_bound"] is True
            assert r["gemm_gflop"] == pytest.approx((3 if r["mode"] == "training" else 1) * 2 * 96 * 1024 * 512 / 1e9,
                                                    abs=1e-4)
            for side in ("torch", "fastrnn"):
                assert r[f"{side}_gemm_frac"] == pytest.approx(
                    r["gemm_gflop"] / (r[f"{side}_ms"] / 1e3) / peak, rel=2e-2, abs=2e-4)
        else:
            assert r["gemm_bound"] is False and r["torch_gemm_frac"] == "" and r["fastrnn_gemm_frac"] == ""
    with open(tmp_path / "smoke.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == bench.OUT_COLUMNS
        assert len(list(reader)) == len(rows)
    png = tmp_path / "smoke.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and machine["chart"] == str(png)
    text = md.read_text()
    assert "python -m fastrnn.bench --quick" in text and "torch threads" in text and "lstm-tiny" in text
    assert "peak GEMM float32:" in text and "| IQR |" in text and "GEMM %peak" in text
    out, err = capsys.readouterr()
    assert "lstm-tiny" in out  # the table goes to stdout, after the header
    assert out.index("peak GEMM float32:") < out.index("quick run: 4 of 24 cases") < out.index("lstm-tiny")
    assert ("left out: cases *-default, *-b1, *-b8, *-h1024, *-long, *-bidir2, *-bidir2-b1, *-packed; "
            "dtype bfloat16 ") in out
    head = out.splitlines()[out.splitlines().index(next(l for l in out.splitlines() if l.startswith("case ")))]
    assert "IQR" in head and "GEMM %peak" in head
    lines = err.splitlines()  # the chart is named at the end, after the files written
    assert lines.index(f"fastrnn.bench: chart: {png}") > next(i for i, l in enumerate(lines)
                                                              if l.startswith("fastrnn.bench: wrote "))


def test_no_chart_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert _run(tmp_path, "--mode", "inference", "--peak-seconds", "0", cases="gru-tiny") == 0
    assert not (tmp_path / "smoke.png").exists()
    assert "chart: matplotlib is not importable" in capsys.readouterr().err
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert data["machine"]["gemm_peak"] == {}


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
