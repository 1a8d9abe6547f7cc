"""The Scale section (issue 15): figures, target verdicts and markdown from :mod:`bench.scale`'s records.  Pure.

Ratios are formed within one repetition: N classes / 1 class packets/s, imqd / one class and imqd / kernel
HTB delivered with the same subscribers; memory per class is the least-squares slope of RSS over the class
counts of one repetition.
"""

from __future__ import annotations

from typing import Any

from bench.stats import by_rep, cell, med, paired, table, three
from bench.subscribers import fairness, least_squares_slope

__all__ = ["summarize_scale", "scale_targets", "render_scale", "scale_notes", "SCALE_TARGETS", "KERNEL"]

SCALE_TARGETS = {"pps_ratio": 0.9, "of_plans": (0.95, 1.05), "worst": 0.85, "jain": 0.99, "of_one_class": 0.9,
                 "bytes_per_class": 2048}
KERNEL = "kernel-htb"
ROLES = {"worker0": "worker", "api": "API process"}


def summarize_scale(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """Packets/s, start time and memory by class count; fairness of the all-backlogged runs (None: not run)."""
    if not raw:
        return None
    pps: list[dict[str, Any]] = raw.get("pps") or []
    counts = sorted({r["classes"] for r in pps})
    base = counts[0] if counts else None
    rows = []
    for n in counts:
        recs = [r for r in pps if r["classes"] == n]
        rows.append({"classes": n, "pps": three(r["pps"] for r in recs),
                     "of_base": three(paired(by_rep(pps, "pps", classes=n), by_rep(pps, "pps", classes=base))),
                     "healthz_s": three(r.get("healthz_s") for r in recs),
                     **{f"{role}_rss_mib": three(r["rss_after_kib"][role]["rss"] / 1024 for r in recs
                                                 if role in r.get("rss_after_kib", {})) for role in ROLES},
                     "stopped": sorted({r.get("stopped", "?") for r in recs})})
    return {"base": base, "pps": rows, "bytes_per_class": _memory_slopes(pps),
            "backlog": _backlog(raw.get("backlog") or []), "unbuilt": _unbuilt(raw.get("backlog") or []),
            "load_notes": _load_notes(raw.get("backlog") or []),
            "alternating": any("position" in r for r in pps)}


def _load_notes(records: list[dict[str, Any]]) -> list[str]:
    """The loads the one-class reference showed to be beyond this machine (bench.scale.load_problem)."""
    out = []
    for r in records:
        for d in r.get("descents") or []:
            out.append(f"repetition {r['rep'] + 1}, {r['subscribers']:,} subscribers: the load "
                       f"{d['load_share']:.3g} x the 1-class packets/s was beyond this machine ({d['problem']}); "
                       "it stepped down")
        if r.get("load_problem"):
            out.append(f"repetition {r['rep'] + 1}, {r['subscribers']:,} subscribers: even the load "
                       f"{r['load_share']:.3g} x the 1-class packets/s was beyond this machine "
                       f"({r['load_problem']}): its figures measure the machine, not the shaper")
    return out


def _memory_slopes(pps: list[dict[str, Any]]) -> dict[str, dict[str, float] | None]:
    """Per role: bytes of RSS per class, the slope over the class counts of each repetition."""
    out = {}
    for role in ROLES:
        slopes = []
        for rep in sorted({r["rep"] for r in pps}):
            pts = [(r["classes"], r["rss_after_kib"][role]["rss"] * 1024) for r in pps
                   if r["rep"] == rep and role in r.get("rss_after_kib", {})]
            slopes.append(least_squares_slope([x for x, _ in pts], [y for _, y in pts]))
        out[ROLES[role]] = three(slopes)
    return out


def backlog_figures(rec: dict[str, Any]) -> dict[str, float]:
    """One backlogged run's fairness figures (:func:`bench.subscribers.fairness`)."""
    return fairness(rec["delivered"], rec["expected_each"])


def _backlog(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per subscriber count and system: fairness figures, and the within-repetition ratios of delivered
    traffic to the one-class reference and to kernel HTB."""
    rows = []
    for n in sorted({r["subscribers"] for r in records}):
        recs = [(r, backlog_figures(r)) for r in records if r["subscribers"] == n and "error" not in r]
        systems = list(dict.fromkeys(r["system"] for r, _ in recs))
        delivered = {sy: {r["rep"]: fig["of_plans"] for r, fig in recs if r["system"] == sy} for sy in systems}
        one = next((r["system"] for r, _ in recs if r.get("shape") == "one class"), None)
        for system in systems:
            sel = [(r, fig) for r, fig in recs if r["system"] == system]
            rows.append({
                "subscribers": n, "system": system, "shape": sel[0][0].get("shape"),
                "rate_bps": three(r["plan"]["rate_bps"] for r, _ in sel),
                "window_s": three(r["window_s"] for r, _ in sel),
                "packets_each": three(r["expected_each"] for r, _ in sel),
                "offered_pps": three(r["sent"] / r["gen_seconds"] for r, _ in sel if r["gen_seconds"]),
                **{k: three(fig[k] for _, fig in sel) for k in ("of_plans", "worst", "jain")},
                "of_one_class": None if one in (None, system) else three(paired(delivered[system], delivered[one])),
                "of_kernel": None if system == KERNEL or KERNEL not in delivered
                else three(paired(delivered[system], delivered[KERNEL])),
                "nfqueue_drops": three(sum(r["nfqueue_drops"].values()) for r, _ in sel if "nfqueue_drops" in r),
                "pool_drops": three(r["pool_drops"] for r, _ in sel if r.get("pool_drops") is not None),
                "build_s": three(r.get("build_s") for r, _ in sel),
            })
    return rows


def _unbuilt(records: list[dict[str, Any]]) -> list[str]:
    """Why a reference could not be built, once per system and subscriber count."""
    return list(dict.fromkeys(f"{r['system']} with {r['subscribers']:,} classes could not be built: {r['error']}"
                              for r in records if "error" in r))


def _subject_rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The backlogged rows of imqd with one class per subscriber (the figures the targets are about)."""
    return [r for r in s["backlog"] if r["shape"] == "classes" and r["system"] != KERNEL]


def scale_targets(s: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One verdict per target of issue 15 that this run measured."""
    if not s:
        return []
    t = SCALE_TARGETS
    out = []
    rows = [r for r in s["pps"] if r["classes"] != s["base"]]
    if rows:
        top = rows[-1]
        v = med(top["of_base"])
        out.append({"figure": f"scale: packets/s with {top['classes']:,} classes / {s['base']:,} class",
                    "target": f">= {t['pps_ratio']:.2f}", "value": v, "met": v is not None and v >= t["pps_ratio"],
                    "misses": [], "fmt": "{:.3f}"})
    lo, hi = t["of_plans"]
    for r in _subject_rows(s):
        what = f"scale: {r['subscribers']:,} subscribers backlogged, {r['system']}"
        for key, target, ok in (("of_plans", f"{lo:.2f}-{hi:.2f}", lambda v: lo <= v <= hi),
                                ("worst", f">= {t['worst']:.2f}", lambda v: v >= t["worst"]),
                                ("jain", f">= {t['jain']:.2f}", lambda v: v >= t["jain"]),
                                ("of_one_class", f">= {t['of_one_class']:.2f}", lambda v: v >= t["of_one_class"])):
            v = med(r[key])
            label = {"of_plans": "delivered / sum of plans", "worst": "worst subscriber / its plan",
                     "jain": "Jain's fairness index", "of_one_class": "delivered / one class's"}[key]
            out.append({"figure": f"{what}: {label}", "target": target, "value": v,
                        "met": v is not None and ok(v), "misses": [], "fmt": "{:.3f}"})
    for role, v3 in s["bytes_per_class"].items():
        v = med(v3)
        out.append({"figure": f"scale: {role} RSS bytes per class", "target": f"<= {t['bytes_per_class']:,}",
                    "value": v, "met": v is not None and v <= t["bytes_per_class"], "misses": [], "fmt": "{:,.0f}"})
    return out


def scale_notes(s: dict[str, Any] | None) -> list[str]:
    """Per backlogged count whose delivery misses: what the same run measured about the cause."""
    if not s:
        return []
    out = [f"{note}." for note in s.get("load_notes", [])]
    pps = {r["classes"]: med(r["pps"]) for r in s["pps"]}
    top = s["pps"][-1] if s["pps"] else None
    ratio = med(top["of_base"]) if top else None
    if top and ratio is not None and ratio < SCALE_TARGETS["pps_ratio"] and "generator" in top["stopped"]:
        out.append(f"Packets/s with {top['classes']:,} classes ({ratio:.3f} of 1 class): that search ended because "
                   f"the generator could offer no more ({pps[top['classes']]:,.0f} packets/s, no loss yet), so the "
                   "figure is a lower bound of what imqd forwards, not its ceiling.")
    for r in _subject_rows(s):
        worst, dropped = med(r["worst"]), med(r["nfqueue_drops"])
        if worst is not None and worst < SCALE_TARGETS["worst"] and dropped:
            out.append(f"{r['subscribers']:,} subscribers backlogged, {r['system']}: the worst subscriber got "
                       f"{worst:.2f} of its plan while the kernel dropped {dropped:,.0f} packets before a worker "
                       "saw them (a full queue or socket drops per packet, not per class, so the unluckiest "
                       "subscriber loses more than its share of the excess).")
    lo = SCALE_TARGETS["of_plans"][0]
    for r in _subject_rows(s):
        got, offered = med(r["of_plans"]), med(r["offered_pps"])
        if got is None or got >= lo or offered is None:
            continue
        note = (f"{r['subscribers']:,} subscribers backlogged: {r['system']} delivered {got:.2f} of the plans "
                f"while {offered:,.0f} packets/s were offered")
        forwards = pps.get(r["subscribers"])
        if forwards is not None:
            note += (f"; with {r['subscribers']:,} classes one worker forwards at most {forwards:,.0f} packets/s "
                     "(packets/s table)")
        dropped = med(r["nfqueue_drops"])
        if dropped:
            note += (f"; the kernel dropped {dropped:,.0f} packets before a worker saw them (its NFQUEUE queue "
                     "was full -- `--max-len`, or this kernel's own 65,536 -- or the worker's socket buffer was)")
        out.append(note + ".")
    return out


def _median_cell(x: dict[str, float] | None, fmt: str) -> str:
    """The median alone: for what the run chose (a plan, a window), not what it measured."""
    v = med(x)
    return "n/a" if v is None else fmt.format(v)


def render_scale(s: dict[str, Any] | None, params: dict[str, Any] | None) -> list[str]:
    """The section's markdown lines ('not measured' when the run skipped it)."""
    L = ["## Scale: thousands of subscriber classes", ""]
    if not s:
        return L + ["Not measured in this run (see `--sections`).", ""]
    p = params or {}
    L += ["**Packets/s by class count:** imqd x1 with one 10gbit parent and N leaves, leaf i matching "
          "`dst: 198.18.128.i/32` (rate 10gbit/N, ceil 10gbit); 64-byte UDP frames to the address of the *last* "
          "leaf in config order, the rising-then-bisecting search of the Ceiling section (no full-speed step; a "
          "search that loses at its first step runs once more from half the rate it forwarded; counted by a "
          "DROP rule in the server namespace). *Start* is the time from launching `imqd run` to "
          "`GET /healthz` answering 200 (every worker bound). RSS is the worker's and the API process's (the "
          "supervisor) after the traffic."
          + (" The class counts run rising in the first repetition and falling in the second (a search finds "
             "more or less by its place in a sequence): each count runs once early and once late."
             if s.get("alternating") else ""), ""]
    L += table(["classes", "peak packets/s", f"/ {s['base']:,} class", "start s", "worker RSS MiB", "API RSS MiB"],
               ([f"{r['classes']:,}", cell(r["pps"], "{:,.0f}"), cell(r["of_base"]), cell(r["healthz_s"], "{:.2f}"),
                 cell(r["worker0_rss_mib"], "{:.1f}"), cell(r["api_rss_mib"], "{:.1f}")] for r in s["pps"]))
    L += ["", "Memory per class (least-squares slope of RSS over the class counts, per repetition): "
          + ", ".join(f"{role} {cell(v, '{:,.0f}')} bytes" for role, v in s["bytes_per_class"].items()) + ".", ""]
    L += [f"**All subscribers backlogged:** N leaves under one parent, every leaf `rate = ceil =` the plan, and "
          "every subscriber offered twice its plan at once: one generator sends "
          f"{p.get('payload', '?')}-byte UDP payloads to the N addresses in turn, a C receiver in the server "
          "namespace counts per address (`bench/udprecv.py`). The offered load is "
          f"{p.get('load_share', '?')} x the 1-class packets/s above (what one class carries on this machine, "
          "measured in the same repetition) and the plans add up to half of it; when the one-class run then "
          "delivers less than 0.95 of the plans or the generator offers less than 1.8 x them, that load is beyond "
          "what one class carries for this traffic and it steps down (x0.6, at most twice; notes below). Counted over a window after a "
          "warm-up (every queue filled, every initial burst drained); the window lasts until each plan carries "
          f"{p.get('min_packets', '?')} datagrams, at most {p.get('max_window_s', '?')} s. *one class* is the same "
          "traffic through a single class of the plans' total rate (same workers): the reference for what the "
          "machine carries; *kernel-htb* is kernel HTB with the same leaves (imqd's burst and quantum written out, "
          "`pfifo limit 1000` leaves) and a u32 hash table on the destination's last byte, one `/32` filter per "
          "leaf. Jain's index is over each subscriber's delivered / plan (not given for one class: there the "
          "subscribers share one FIFO). *Kernel drops before imqd*: packets the kernel dropped because an NFQUEUE "
          "queue was full (`--max-len`, or this kernel's bound of 65,536 packets a queue) or a worker's socket "
          "buffer was. *imqd's pool drops*: arrivals imqd refused because their class held more than its share of "
          "what a worker may hold (`--max-held`: the longest queues drop first).", ""]
    L += table(["subscribers", "system", "plan bit/s", "window s", "datagrams per plan", "delivered / plans",
                "worst", "Jain", "/ one class", "/ kernel HTB", "kernel drops before imqd", "imqd's pool drops"],
               ([f"{r['subscribers']:,}", r["system"], _median_cell(r["rate_bps"], "{:,.0f}"),
                 _median_cell(r["window_s"], "{:.1f}"), _median_cell(r["packets_each"], "{:.0f}"), cell(r["of_plans"]),
                 cell(r["worst"]) if r["shape"] != "one class" else "(FIFO)",
                 cell(r["jain"]) if r["shape"] != "one class" else "(FIFO)",
                 cell(r["of_one_class"]), cell(r["of_kernel"]),
                 "" if r["system"] == KERNEL else cell(r["nfqueue_drops"], "{:,.0f}"),
                 "" if r["pool_drops"] is None else cell(r["pool_drops"], "{:,.0f}")] for r in s["backlog"]))
    L += [""] + [f"{why}.\n" for why in s.get("unbuilt", [])]
    for r in (r for r in s["backlog"] if r["build_s"]):
        L += [f"Kernel HTB with {r['subscribers']:,} leaves and their filters was built by one `tc -batch` in "
              f"{cell(r['build_s'], '{:.2f}')} s.", ""]
    return L
