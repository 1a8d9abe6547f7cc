"""The PNG: accuracy ratios (imqd / kernel HTB) and forwarded packets/s per system, with min-max bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to a file
import matplotlib.pyplot as plt  # noqa: E402

from bench.report import TARGETS, TRAFFIC  # noqa: E402

__all__ = ["draw"]


def _err(stats: list[dict[str, float] | None]) -> tuple[list[float], list[list[float]]]:
    med = [s["median"] if s else 0.0 for s in stats]
    lo = [s["median"] - s["min"] if s else 0.0 for s in stats]
    hi = [s["max"] - s["median"] if s else 0.0 for s in stats]
    return med, [lo, hi]


def draw(summary: dict[str, Any], path: Path) -> None:
    """Two panels side by side, written to `path`."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    rows = [r for r in summary["accuracy"]["rows"] if r["ratio"]]
    labels = [f"{'up' if r['direction'] == 'upload' else 'down'} {r['rate_bps'] / 1e6:g}M x{r['flows']}" for r in rows]
    med, err = _err([r["ratio"] for r in rows])
    lo, hi = TARGETS["accuracy"]
    ax1.axhspan(lo, hi, color="tab:green", alpha=0.15, label=f"target {lo}–{hi}")
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.errorbar(range(len(rows)), med, yerr=err, fmt="o", color="tab:blue", capsize=3, label="imqd / kernel HTB")
    for key, marker, color, label in (("kernel_of_ideal", "x", "tab:red", "kernel HTB / ideal"),
                                      ("imqd_of_ideal", "+", "tab:green", "imqd / ideal")):
        vals = [r.get(key) for r in rows]
        if any(vals):
            ax1.plot([i for i, v in enumerate(vals) if v], [v["median"] for v in vals if v], marker, color=color,
                     label=label)
    ax1.set_xlim(-0.7, max(1, len(rows)) - 0.3)
    ax1.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=8)
    ax1.set_ylabel("goodput ratio")
    ax1.set_title("Accuracy: goodput ratios (median; bars: min–max of imqd / kernel)")
    ax1.legend(fontsize=8, loc="lower right")
    if med:
        extra = [r[k]["median"] for r in rows for k in ("kernel_of_ideal", "imqd_of_ideal") if r.get(k)]
        span = max(0.05, *(abs(m - 1) + max(lo_e, hi_e) + 0.01 for m, lo_e, hi_e in zip(med, *err, strict=True)),
                   *(abs(v - 1) + 0.01 for v in extra))
        ax1.set_ylim(1 - span, 1 + span)

    ceiling = summary["ceiling"]
    systems = list(dict.fromkeys(s for t in TRAFFIC for s in ceiling.get(t, {}).get("pps", {})))
    width = 0.8 / max(1, len(TRAFFIC))
    for i, traffic in enumerate(TRAFFIC):
        stats = [ceiling.get(traffic, {}).get("pps", {}).get(s) for s in systems]
        med, err = _err(stats)
        xs = [x + (i - (len(TRAFFIC) - 1) / 2) * width for x in range(len(systems))]
        ax2.bar(xs, med, width, yerr=err, capsize=3, label=TRAFFIC[traffic])
    ax2.set_yscale("log")
    ax2.set_xticks(range(len(systems)), systems, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("packets/s forwarded (log)")
    ax2.set_title("Ceiling: peak forwarded packets/s")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
