"""The outputs: machine info, the terminal table, the markdown report, the chart, the JSON and CSV files."""
from __future__ import annotations

import csv
import json
import os
import platform
from typing import Dict, List, Optional, Tuple

import torch

from .cases import GEMM_BOUND_MIN_B, GEMM_BOUND_MIN_H
from .measure import OUT_COLUMNS, TOLERANCE

# --------------------------------------------------------------------------------------------- outputs
def machine_info(device: str) -> Dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: Dict[str, object] = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device, "mkldnn_enabled": torch.backends.mkldnn.enabled,
    }
    try:
        import fastrnn
        info["fastrnn"] = getattr(fastrnn, "__version__", "?")
    except Exception:  # noqa: BLE001
        info["fastrnn"] = "not importable"
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def header_lines(info: Dict[str, object]) -> List[str]:
    """What a reader needs before the numbers: the machine, the peak GEMM rate, and what this run left out."""
    lines = [f"machine: {info['cpu']}, {info['cpu_count']} logical CPUs, torch threads {info['torch_threads']}"]
    if "gpu" in info:
        lines.append(f"GPU: {info['gpu']} (CUDA {info['cuda']}, cuDNN {info['cudnn']})")
    lines.append(f"torch {info['torch']}, fastrnn {info['fastrnn']}, Python {info['python']}, {info['platform']}")
    for dtype, p in (info.get("gemm_peak") or {}).items():
        when = (f"the higher of {p['gflops_start']:.0f} at the start and {p['gflops_end']:.0f} at the end"
                if "gflops_end" in p else "at the start")
        lines.append(f"peak GEMM {dtype}: {p['gflops']:.0f} GFLOP/s (torch.mm {p['n']}x{p['n']}x{p['n']}, "
                     f"best call in {p['seconds']:g} s, {info['torch_threads']} threads; {when})")
    if info.get("quick"):
        lines.append(f"quick run: {info['cases_run']} of {info['cases_all']} cases, at their full sequence "
                     f"lengths, >= {info['min_repeats']} timed pairs each")
    if info.get("left_out"):
        lines.append("left out: " + "; ".join(info["left_out"]) +
                     " (`python -m fastrnn.bench` runs everything)")
    return lines


LEGEND = (f"speedup = torch.nn median / fastrnn median; IQR = first..third quartile of the per-pair ratios "
          f"(torch.nn time / fastrnn time of each interleaved pair; n pairs); GEMM %peak = flops of the case's "
          f"GEMMs per second over the peak GEMM rate above, torch.nn/fastrnn, on GEMM-bound rows only "
          f"(B >= {GEMM_BOUND_MIN_B} and H >= {GEMM_BOUND_MIN_H}; see benchmarks/README.md).")


def handwritten_note(rows) -> str:
    """The note for rows of fastrnn's options beyond torch.nn, whose reference side is not torch.nn; "" if none."""
    from .cases import HANDWRITTEN_BY_NAME

    names = [n for n in dict.fromkeys(r["case"] for r in rows) if n in HANDWRITTEN_BY_NAME]
    if not names:
        return ""
    return (f"{', '.join(names)}: fastrnn with the options named by the case against the hand-written peer "
            f"(fastrnn.bench.handwritten: a Python loop over the steps in plain PyTorch, input GEMM up front, the "
            f"same parameters); the torch.nn columns are that peer's. Parity in eval mode where zoneout draws "
            f"masks in training, and with layer norm, which amplifies rounding along the sequence on both sides, "
            f"judged against float64 (measure.check_parity); no target.")


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v or "-")


def _shape_str(row) -> str:
    s = f"T={row['T']} B={row['B']} I={row['I']} H={row['H']}"
    if row["layers"] != 1:
        s += f" L={row['layers']}"
    if row["bidirectional"]:
        s += " bi"
    if row["packed"]:
        s += f" len={row['packed']}"
    return s


TABLE_HEAD = ["case", "mode", "dtype", "shape", "torch.nn ms", "fastrnn ms", "speedup", "IQR", "target",
              "GEMM %peak", "torch.nn MiB", "fastrnn MiB", "parity err", "n", "status"]
# Left out of a table where no row has a value (a run without --memory, or without GEMM-bound rows).
_OPTIONAL = ("GEMM %peak", "torch.nn MiB", "fastrnn MiB")


def _pct(row) -> str:
    t, f = row.get("torch_gemm_frac", ""), row.get("fastrnn_gemm_frac", "")
    return f"{100 * t:.0f}%/{100 * f:.0f}%" if t != "" and f != "" else "-"


def table_cells(row) -> List[str]:
    status = row["status"]
    if status == "OK" and row["meets_target"] is False:
        status = "below target"
    iqr = (f"{row['speedup_q1']:.2f}-{row['speedup_q3']:.2f}"
           if row.get("speedup_q1", "") != "" and row.get("speedup_q3", "") != "" else "-")
    return [row["case"], row["mode"], row["dtype"], _shape_str(row), _fmt(row["torch_ms"], ".2f"),
            _fmt(row["fastrnn_ms"], ".2f"), _fmt(row["speedup"], ".2f") + ("x" if row["speedup"] != "" else ""),
            iqr, _fmt(row["target"], ".1f") + ("x" if row["target"] != "" else ""), _pct(row),
            _fmt(row["torch_peak_mb"], ".1f"), _fmt(row["fastrnn_peak_mb"], ".1f"),
            _fmt(row["parity_max_err"], ".1e"), _fmt(row["repeats"], "d"), status]


def _table(rows) -> Tuple[List[str], List[List[str]]]:
    """(head, body) with the optional columns that are empty in every row left out."""
    body = [table_cells(r) for r in rows]
    keep = [i for i, h in enumerate(TABLE_HEAD) if h not in _OPTIONAL or any(c[i] != "-" for c in body)]
    return [TABLE_HEAD[i] for i in keep], [[c[i] for i in keep] for c in body]


def format_table(rows) -> str:
    head, body = _table(rows)
    cells = [head] + body
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows, info, command: str, date: str) -> str:
    out = ["# fastrnn vs torch.nn: {} results".format(info["device"].upper()), "",
           "Generated by `fastrnn.bench`; do not edit by hand, re-run the command below.", "",
           f"- command: `{command}`", f"- date: {date}"]
    out += [f"- {line}" for line in header_lines(info)]
    if "loadavg_start" in info:
        out.append(f"- load average (1/5/15 min) at start {info['loadavg_start']}, at end "
                   f"{info.get('loadavg_end', '?')}")
    if not info.get("complete", True):
        out += ["", f"**PARTIAL: {info.get('runs_done')} of {info.get('runs_planned')} runs** (the command was "
                "interrupted or is still running)."]
    out += ["", "Times are medians of interleaved calls (torch.nn, fastrnn, torch.nn, ...). " + LEGEND +
            " Memory: peak bytes allocated during one call (see benchmarks/README.md). "
            "Parity err: worst max|fastrnn - torch.nn| / max(1, max|torch.nn|) over outputs, states and "
            "gradients; tolerance " + ", ".join(f"{str(k).replace('torch.', '')} {v:g}"
                                                for k, v in TOLERANCE.items()) + ".", ""]
    if handwritten_note(rows):
        out += [handwritten_note(rows), ""]
    head, body = _table(rows)
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join("---" for _ in head) + "|")
    for cells in body:
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    failed = [r for r in rows if r["status"] != "OK"]
    below = [r for r in rows if r["meets_target"] is False]
    out += ["", f"{len(rows)} runs: {len(rows) - len(failed)} ok, {len(failed)} failed, "
            f"{len(below)} below target."]
    for r in failed:
        out.append(f"- {r['case']} {r['mode']} {r['dtype']}: {r['status']}: {r['error']}")
    for r in rows:
        if r.get("parity_note"):
            out.append(f"- parity of {r['case']} {r['mode']} {r['dtype']} {r['parity_note']}")
    return "\n".join(out) + "\n"


MODE_COLORS = {"inference": "tab:blue", "training": "tab:orange"}


def write_chart(rows, path: str, title: str = "") -> Optional[str]:
    """The speedup of every case and mode, one panel per dtype: a bar per (case, mode) from the 1.0x line (as
    fast as torch.nn) to its speedup, on a log2 axis (2x and 0.5x equally far from 1x), with the interquartile
    range of its per-pair ratios as error bar and its target as a red tick (hatched bar: below target).
    Returns None when written, else why not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
        from matplotlib.ticker import FuncFormatter, LogLocator
    except Exception as exc:  # noqa: BLE001  the set-up installs it; a bare `pip install fastrnn` may not
        return f"matplotlib is not importable ({type(exc).__name__}: {exc}); pip install matplotlib"
    ok = [r for r in rows if r["status"] == "OK"]
    if not ok:
        return "no run passed parity"
    dtypes = list(dict.fromkeys(r["dtype"] for r in ok))
    cases = list(dict.fromkeys(r["case"] for r in ok))
    modes = [m for m in MODE_COLORS if any(r["mode"] == m for r in ok)]
    by_key = {(r["case"], r["mode"], r["dtype"]): r for r in ok}
    slot = 0.8 / len(modes)
    values = [1.0] + [v for r in ok for v in (r["speedup"], r.get("speedup_q1"), r.get("speedup_q3"), r["target"])
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
    lo, hi = min(values) / 1.25, max(values) * 1.25
    legend_in = 0.7  # inches below the panels for the legend
    height = 1.2 + legend_in + 0.3 * len(cases) * len(modes)
    fig, axes = plt.subplots(1, len(dtypes), sharey=True, squeeze=False,
                             figsize=(2.0 + 4.5 * len(dtypes), height))
    for ax, dtype in zip(axes[0], dtypes):
        for j, mode in enumerate(modes):
            for i, case in enumerate(cases):
                r = by_key.get((case, mode, dtype))
                if r is None:
                    continue
                y, s = i - 0.4 + slot * (j + 0.5), r["speedup"]
                ax.barh(y, s - 1.0, slot * 0.9, left=1.0, color=MODE_COLORS[mode], edgecolor="black",
                        linewidth=0.3, hatch="///" if r["meets_target"] is False else None)
                if r.get("speedup_q1", "") != "" and r.get("speedup_q3", "") != "":
                    ax.errorbar(s, y, xerr=[[max(0.0, s - r["speedup_q1"])], [max(0.0, r["speedup_q3"] - s)]],
                                fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
                if r["target"] != "":
                    ax.plot([r["target"]] * 2, [y - slot / 2, y + slot / 2], color="red", lw=2)
        ax.axvline(1.0, color="gray", ls="--", lw=0.8)
        ax.set_title(dtype)
        ax.set_xlabel("speedup over torch.nn (x)")
        ax.set_xscale("log", base=2)
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(LogLocator(base=2))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.grid(axis="x", lw=0.3, alpha=0.5)
    axes[0][0].set_yticks(range(len(cases)), cases)
    axes[0][0].invert_yaxis()
    handles = [Patch(color=MODE_COLORS[m], label=m) for m in modes]
    handles += [Line2D([], [], color="red", lw=2, label="target"),
                Line2D([], [], color="black", lw=0.8, marker="|", label="IQR of per-pair ratios"),
                Patch(facecolor="white", edgecolor="black", hatch="///", label="below target"),
                Line2D([], [], color="gray", ls="--", lw=0.8, label="1.0x = torch.nn")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(title or f"fastrnn vs torch.nn ({ok[0]['device']})", fontsize=10)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_outputs(rows, info, out_dir: str, stem: str, chart: bool = True) -> Tuple[List[str], str]:
    """Writes <stem>.json and <stem>.csv (and, with chart, <stem>.png) in out_dir. Returns (the paths written,
    the chart's path or why there is none)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    chart_note = "not drawn (--no-chart, or the run is not finished)"
    if chart:
        ppath = os.path.join(out_dir, f"{stem}.png")
        where = info.get("gpu") if info.get("device") == "cuda" else info.get("cpu")
        why = write_chart(rows, ppath, title=f"fastrnn vs torch.nn on {info.get('device')} ({where}, "
                                             f"{info.get('torch_threads')} threads)")
        chart_note = why or ppath
        if why is None:
            paths.append(ppath)
    info["chart"] = chart_note
    jpath = os.path.join(out_dir, f"{stem}.json")
    with open(jpath, "w") as f:
        json.dump({"machine": info, "tolerance": {str(k): v for k, v in TOLERANCE.items()}, "results": rows},
                  f, indent=1)
    paths.insert(0, jpath)
    cpath = os.path.join(out_dir, f"{stem}.csv")
    with open(cpath, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=OUT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    paths.insert(1, cpath)
    return paths, chart_note
