"""The TCP/GSO section (issue 16): figures, target verdicts and markdown from :mod:`bench.gso`'s records.  Pure.

Ratios are formed within one repetition (a system and plain forwarding measured minutes apart in the same run),
then summarised as min / median / max over the repetitions.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

from bench.stats import by_rep, cell, mean_interval, med, median, paired, percentile, table, three

__all__ = ["summarize_gso", "gso_targets", "render_gso", "gso_notes", "GSO_TARGETS", "PLAIN", "KERNEL_LOAD",
           "IMQD_LOAD", "NO_GSO_LOAD", "FQ_LOAD", "REALTIME_LOAD", "REALTIME_PRIORITY", "KERNEL_TC_BURST_LOAD",
           "latency_spread"]

# imqd with GSO (its default) over plain forwarding, every case; latency over kernel HTB; UDP GSO over --no-gso
GSO_TARGETS = {"x1": 0.5, "x2": 0.7, "latency": 1.0, "udp": 0.95}
PLAIN = "plain"
KERNEL_LOAD = "kernel HTB + pfifo"  # the latency reference's label (bench.figures.latency_loaded)
KERNEL_TC_BURST_LOAD = "kernel HTB + pfifo, tc's default burst"
IMQD_LOAD = "imqd x1 FIFO"
NO_GSO_LOAD = "imqd x1 --no-gso FIFO"
REALTIME_PRIORITY = 10
REALTIME_LOAD = f"imqd x1 FIFO --realtime {REALTIME_PRIORITY}"
FQ_LOAD = "imqd x1 fq_codel"
MSS = 1448
QUEUED = ("imqd", "bare-loop")  # kinds whose packets cross NFQUEUE (a verdict each)


def _case(r: dict[str, Any]) -> str:
    return f"{r['direction']} x{r['flows']}"


def _bytes_per_verdict(r: dict[str, Any]) -> float | None:
    """Goodput bytes per verdict: iperf3's rate over the packets queued per second (one verdict each)."""
    vps = r.get("queued_per_s")
    return r["bps"] / 8 / vps if vps else None


def _stats_over_kernel(r: dict[str, Any]) -> float | None:
    """imqd's own verdict count over the run (/stats) over the kernel's; None where not comparable."""
    mine, kernel = r.get("verdicts"), r.get("run_queued")
    return mine / kernel if mine is not None and kernel else None


def summarize_gso(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """Throughput by system and case, latency under load, UDP ceiling with and without GSO (None: not run)."""
    if not raw:
        return None
    tcp: list[dict[str, Any]] = raw.get("tcp") or []
    cases = list(dict.fromkeys(_case(r) for r in tcp))
    systems = list(dict.fromkeys(r["system"] for r in tcp))
    rows = []
    for name in systems:
        recs = [r for r in tcp if r["system"] == name]
        first = recs[0]
        queued = first.get("kind") in QUEUED
        by_case = {}
        for case in cases:
            cr = [r for r in recs if _case(r) == case]
            if not cr:
                continue
            sel = {"direction": cr[0]["direction"], "flows": cr[0]["flows"]}
            by_case[case] = {
                **sel,
                "gbps": three(r["bps"] / 1e9 for r in cr),
                "of_plain": three(paired(by_rep(tcp, "bps", system=name, **sel), by_rep(tcp, "bps", system=PLAIN, **sel))),
                "verdicts_per_s": three(r.get("queued_per_s") for r in cr) if queued else None,
                "bytes_per_verdict": three(_bytes_per_verdict(r) for r in cr) if queued else None,
            }
        rows.append({"system": name, **{k: first.get(k) for k in ("kind", "workers", "gso", "shape")},
                     "gso_status": sorted({s for r in recs for s in r.get("gso_status") or []}), "cases": by_case,
                     "gso_share": three(r["gso_packets"] / r["packets"] for r in recs if r.get("packets")),
                     "stats_over_kernel": three(_stats_over_kernel(r) for r in recs),
                     "stats_missing": sum(1 for r in recs if r.get("kind") == "imqd" and r.get("verdicts") is None)})
    return {"cases": cases, "rows": rows, "latency": _latency(raw.get("latency") or []),
            "ceiling": _ceiling(raw.get("ceiling") or [])}


def _latency(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per label: RTT medians and p90s over its runs; over kernel HTB within each repetition (a system's runs of
    one repetition averaged, so imqd's FIFO meets the mean of the kernel runs around it); the kernel's A/A
    figure, its second run over its first in the same repetition (None for records without ``round``)."""
    warmed = any(r.get("warm_up") for r in records)
    records = [r for r in records if not r.get("warm_up")]
    labels = list(dict.fromkeys(r["system"] for r in records))
    mine = {label: [r for r in records if r["system"] == label and r["rtts_ms"]] for label in labels}
    rows = {label: {"median_ms": three(median(r["rtts_ms"]) for r in mine[label]),
                    "p90_ms": three(percentile(r["rtts_ms"], 90) for r in mine[label]),
                    "mbps": three((r.get("bps") or 0) / 1e6 for r in records if r["system"] == label),
                    "replies": three(len(r["rtts_ms"]) for r in records if r["system"] == label),
                    "windows_kb": three(r["windows"]["cwnd_bytes"] / 1000 for r in mine[label]
                                        if (r.get("windows") or {}).get("flows"))}
            for label in labels}
    cc = sorted({c for r in records for c in (r.get("windows") or {}).get("cc", [])})
    meds = {label: _rep_means(mine[label]) for label in labels}
    ratios = {label: three(paired(meds[label], meds.get(KERNEL_LOAD, {}))) for label in labels if label != KERNEL_LOAD}
    first = {r["rep"]: median(r["rtts_ms"]) for r in mine.get(KERNEL_LOAD, []) if r.get("round") == 0}
    again = {r["rep"]: median(r["rtts_ms"]) for r in mine.get(KERNEL_LOAD, []) if r.get("round") == 1}
    rate = next((r.get("rate_bps") for r in records), None)
    return {"rate_bps": rate, "rows": rows, "over_kernel": ratios, "kernel_aa": three(paired(again, first)), "cc": cc,
            "warmed_up": warmed,
            "per_load": {label: mean_interval(_between_kernel_loads(mine[label], mine.get(KERNEL_LOAD, [])))
                         for label in (IMQD_LOAD, REALTIME_LOAD) if label in mine}}


def _between_kernel_loads(imqd: list[dict[str, Any]], kernel: list[dict[str, Any]]) -> list[float]:
    """Each imqd load's median RTT over the mean of the two kernel loads around it: imqd's round j ran between
    the kernel's rounds j and j + 1 of the same repetition (records without ``round`` give nothing)."""
    ref = {(r["rep"], r["round"]): median(r["rtts_ms"]) for r in kernel if "round" in r}
    out = []
    for r in imqd:
        if "round" not in r:
            continue
        before, after = ref.get((r["rep"], r["round"])), ref.get((r["rep"], r["round"] + 1))
        if before is not None and after is not None:
            out.append(median(r["rtts_ms"]) / ((before + after) / 2))
    return out


def _median_rtt(r: dict[str, Any]) -> float:
    return median(r["rtts_ms"])


def _rep_means(recs: list[dict[str, Any]], figure: Callable[[dict[str, Any]], float] = _median_rtt
               ) -> dict[int, float]:
    """Each repetition's mean of its runs' `figure` (default: the run's median RTT)."""
    by: dict[int, list[float]] = {}
    for r in recs:
        by.setdefault(r["rep"], []).append(figure(r))
    return {rep: sum(v) / len(v) for rep, v in by.items()}


def latency_spread(lat: dict[str, Any]) -> float:
    """How far two runs of kernel HTB landed apart in this run (the largest |A/A - 1|; 0 when not measured): the
    notes set a miss against it (the target itself stays <= 1.00)."""
    aa = lat.get("kernel_aa")
    return 0.0 if aa is None else max(abs(aa["min"] - 1), abs(aa["max"] - 1))


def _ceiling(records: list[dict[str, Any]]) -> dict[str, Any]:
    systems = list(dict.fromkeys(r["system"] for r in records))
    on = _rep_means([r for r in records if r.get("gso")], itemgetter("pps"))
    off = _rep_means([r for r in records if r.get("gso") is False], itemgetter("pps"))
    return {"pps": {s: three(r["pps"] for r in records if r["system"] == s) for s in systems},
            "stopped": {s: sorted({r.get("stopped", "?") for r in records if r["system"] == s}) for s in systems},
            "gso_over_no_gso": three(paired(on, off))}


def gso_targets(s: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's targets against this run's figures (none when the section was not run)."""
    if not s:
        return []
    out = []
    shapes = list(dict.fromkeys(r["shape"] for r in s["rows"] if r["kind"] == "imqd"))
    for workers, key in ((1, "x1"), (2, "x2")):
        for shape in shapes:
            row = next((r for r in s["rows"] if r["kind"] == "imqd" and r["workers"] == workers
                        and r["shape"] == shape and r["gso"]), None)
            if row is None:
                continue
            ratios = {case: med(c["of_plain"]) for case, c in row["cases"].items()}
            known = [v for v in ratios.values() if v is not None]
            goal = GSO_TARGETS[key]
            misses = [f"{case}: {v:.3f}" for case, v in ratios.items() if v is not None and v < goal]
            out.append({"figure": f"TCP {row['system']} / plain forwarding (GSO, every case: least shown)",
                        "target": f">= {goal:.2f}", "value": min(known) if known else None,
                        "met": bool(known) and not misses, "misses": misses, "fmt": "{:.3f}"})
    lat = s["latency"]
    rate = f"{lat['rate_bps'] / 1e6:g} Mbit/s" if lat.get("rate_bps") else "shaped"
    goal = GSO_TARGETS["latency"]
    v = med(lat["over_kernel"].get(IMQD_LOAD))
    out.append({"figure": f"median RTT under a saturating TCP load in a {rate} class, imqd x1 FIFO (GSO) / kernel "
                          "HTB + pfifo, the same 1000-packet queue",
                "target": f"<= {goal:.2f}", "value": v, "met": v is not None and v <= goal, "misses": [],
                "fmt": "{:.3f}"})
    v = med(lat["over_kernel"].get(REALTIME_LOAD))
    if v is not None:
        out.append({"figure": f"median RTT under a saturating TCP load in a {rate} class, imqd x1 FIFO (GSO) with "
                              f"real-time workers (--realtime {REALTIME_PRIORITY}) / kernel HTB + pfifo",
                    "target": f"<= {goal:.2f}", "value": v, "met": v <= goal, "misses": [], "fmt": "{:.3f}"})
    v = med(lat["over_kernel"].get(FQ_LOAD))
    if v is not None:
        out.append({"figure": f"median RTT under a saturating TCP load in a {rate} class, imqd x1 fq_codel (GSO) / "
                              "kernel HTB + pfifo (this kernel has no fq_codel)",
                    "target": f"<= {goal:.2f}", "value": v, "met": v <= goal, "misses": [], "fmt": "{:.3f}"})
    v = med(s["ceiling"]["gso_over_no_gso"])
    if s["ceiling"]["pps"]:
        out.append({"figure": "64-byte UDP peak packets/s, imqd x1 with GSO / --no-gso", "target":
                    f">= {GSO_TARGETS['udp']:.2f} (unchanged)", "value": v,
                    "met": v is not None and v >= GSO_TARGETS["udp"], "misses": [], "fmt": "{:.3f}"})
    return out


def gso_notes(s: dict[str, Any] | None, nproc: Any, load: str) -> list[str]:
    """What limits the TCP/GSO figures that miss (numbers from this run)."""
    if not s:
        return []
    out = []
    rows = {r["system"]: r for r in s["rows"]}
    for t in gso_targets(s):
        if t["met"] or t["value"] is None or not t["figure"].startswith("TCP "):
            continue
        name = t["figure"][4:].split(" / ")[0]
        row = rows[name]
        ref = next((r for r in s["rows"] if r["kind"] == "bare-loop" and r["gso"]), None)
        worst = min(((case, med(c["of_plain"])) for case, c in row["cases"].items() if med(c["of_plain"]) is not None),
                    key=lambda kv: kv[1])
        case = worst[0]
        parts = [f"{name}: {case} carries {med(row['cases'][case]['gbps']):.2f} Gbit/s ({worst[1]:.3f} of plain)"]
        if ref and case in ref["cases"] and med(ref["cases"][case]["of_plain"]) is not None:
            parts.append(f"the bare accept loop with GSO {med(ref['cases'][case]['of_plain']):.3f} of plain")
        bpv = med(row["cases"][case]["bytes_per_verdict"])
        if bpv is not None:
            parts.append(f"{bpv:,.0f} goodput bytes per verdict")
        wan = next((r for r in s["rows"] if r["kind"] == "imqd" and r["workers"] == row["workers"]
                    and r["gso"] == row["gso"] and r["shape"] == "wan"), None)
        wan_bpv = med(wan["cases"].get(case, {}).get("bytes_per_verdict")) if wan else None
        if row["shape"] == "address" and bpv and wan_bpv:
            ratio = wan_bpv / bpv
            why = ("the rules queue packets no class takes: classes that name no interface queue every interface "
                   "but lo, so a forwarded packet may cross the queue at FORWARD and again at POSTROUTING "
                   "(without address sets)") if ratio > 1.2 else (
                   "the address sets keep what no class takes out of the queue")
            parts.append(f"{ratio:.1f}x the verdicts per goodput byte of the wan rules: {why}")
        if row["workers"] == 2 and row["cases"][case]["flows"] == 1:
            parts.append("one flow hashes to one queue, so x2 carries it with one worker")
        elif row["workers"] == 2:
            parts.append(f"the {nproc} CPUs also carry both iperf3 ends and the kernel's forwarding ({load}), so "
                         "a second worker finds no idle core")
        out.append("; ".join(parts) + ".")
    lat = s["latency"]
    v = med(lat["over_kernel"].get(IMQD_LOAD))
    if v is not None and v > GSO_TARGETS["latency"]:
        off = med(lat["over_kernel"].get(NO_GSO_LOAD))
        fq = med(lat["over_kernel"].get(FQ_LOAD))
        win = {label: med(row.get("windows_kb")) for label, row in lat["rows"].items()}
        parts = [f"Latency under load: imqd x1's FIFO with GSO has {v:.3f}x kernel HTB's median RTT"]
        if lat.get("kernel_aa"):
            spread = latency_spread(lat)
            parts.append(f"two runs of kernel HTB itself land {med(lat['kernel_aa']):.3f}x apart "
                         f"(spread {spread:.3f}: the difference is "
                         + ("inside" if v <= 1 + spread else "larger than") + " the reference's own run-to-run noise)")
        per = (lat.get("per_load") or {}).get(IMQD_LOAD)
        if per:
            parts.append(f"each imqd load over the kernel loads around it: {per['mean']:.3f} on average over "
                         f"{per['n']} loads (95 % interval {per['lo']:.3f}–{per['hi']:.3f}"
                         + (": 1.00 inside it)" if per["lo"] <= 1 <= per["hi"] else ")"))
        if win.get(KERNEL_LOAD) and win.get(IMQD_LOAD):
            parts.append(f"neither FIFO fills: the queue is what the senders keep in flight, their congestion "
                         f"windows sum to {win[KERNEL_LOAD]:.0f} KB through kernel HTB and {win[IMQD_LOAD]:.0f} KB "
                         f"through imqd ({'/'.join(lat.get('cc') or ['?'])}: a window set by the senders' view of "
                         "the path, e.g. BBR's allowance for ACK aggregation, not by the queue limit)")
        if off is not None:
            parts.append(f"with --no-gso (MTU-sized packets released one at a time) {off:.3f}x")
        rt = med(lat["over_kernel"].get(REALTIME_LOAD))
        if rt is not None:
            parts.append(f"with real-time workers (--realtime {REALTIME_PRIORITY}: held packets leave on time, "
                         f"steadier gaps between departures) {rt:.3f}x")
        if fq is not None:
            parts.append(f"with an fq_codel leaf {fq:.3f}x: the ping's flow no longer waits behind the bulk flows")
        out.append("; ".join(parts) + ".")
    c = s["ceiling"]
    v = med(c["gso_over_no_gso"])
    if v is not None and v < GSO_TARGETS["udp"]:
        why = sorted({x for st in c["stopped"].values() for x in st})
        out.append(f"64-byte UDP with GSO / --no-gso: {v:.3f}"
                   + ("; a search ended because the senders could not offer more (`generator`): the figure is "
                      "then the senders' limit on this loaded machine, not the flag's cost" if "generator" in why
                      else "; nothing in the UDP path depends on the flag (it changes only what the kernel hands "
                           "over for GSO packets), so read this as the run's noise unless it repeats"))
    return out


def render_gso(s: dict[str, Any] | None, params: dict[str, Any] | None, meta: dict[str, Any] | None = None) -> list[str]:
    """The section's markdown lines ('not measured' when the run skipped it)."""
    L = ["## TCP with whole GSO super-packets", ""]
    if not s:
        return L + ["Not measured in this run (see `--sections`).", ""]
    p = params or {}
    sources = (meta or {}).get("sources", {})
    cls = p.get("class_bps")
    L += [f"**Throughput:** iperf3 through the router, every class at {cls / 1e9:g} Gbit/s (above what any path "
          f"here carries, so nothing is held back), {p.get('tcp_seconds', '?')} s after {p.get('omit', '?')} s "
          "omitted for slow start, the kernel's TCP autotuning. Upload: client -> server; download: iperf3 -R. "
          f"Flows are split over two iperf3 clients, one per client address ({', '.join(sources.values()) or '?'}: "
          "the NFQUEUE flow hash sends them to queues 0 and 1; one flow uses the first only), so x2 systems get "
          "work on both queues. *plain*: forwarding only; *kernel-htb*: HTB at the class rate on the wan egress "
          "for uploads and on the lan egress for downloads, `pfifo limit 1000`; *bare-loop x1*: a netfilterqueue "
          "accept loop "
          "(one verdict per packet, imqd's bind parameters and wan rules) that asks for whole GSO packets "
          "(`--no-gso`: does not); *imqd xN SHAPE*: `imqd run --apply-rules --queues 0[:1]` with GSO, its "
          "default, or `--no-gso`. Rule shapes:", ""]
    from bench.gso import SHAPES  # the descriptions live with the configs

    L += [f"- `{k}`: {v[0]}" + ("" if k != "address" else "; `--apply-rules` queues what those classes can take "
                                 "as today's main does (see the notes below)") for k, v in SHAPES.items()
          if k in p.get("shapes", SHAPES)]
    L += [""]
    cases = s["cases"]
    L += ["Gbit/s (goodput as received):", ""]
    L += table(["system", *cases], ([r["system"], *(cell(r["cases"].get(c, {}).get("gbps"), "{:.2f}") for c in cases)]
                                     for r in s["rows"]))
    L += ["", "/ plain forwarding (within each repetition):", ""]
    L += table(["system", *cases], ([r["system"], *(cell(r["cases"].get(c, {}).get("of_plain")) for c in cases)]
                                     for r in s["rows"] if r["kind"] != "plain"))
    L += ["", "Verdicts/s (goodput bytes per verdict), medians, over a window inside iperf3's measured interval: "
          "packets queued per second from the kernel's queue ids (`/proc/net/netfilter/nfnetlink_queue`: every "
          "queued packet gets exactly one verdict, so ACKs that cross the queue count too); bytes per verdict = "
          f"goodput / verdicts (one MSS is {MSS:,} bytes).", ""]
    queued = [r for r in s["rows"] if r["kind"] in QUEUED]
    L += table(["system", *cases], ([r["system"], *(_verdict_cell(r["cases"].get(c, {})) for c in cases)]
                                     for r in queued))
    imqd = [r for r in queued if r["kind"] == "imqd"]
    L += ["", "imqd's own counters (`/stats` read before and after each run, not during it: a request would take CPU "
          "from the worker being measured; all cases together): *GSO share* = super-packets / packets its workers "
          "saw; *verdicts: /stats / kernel* = the verdicts its workers counted over the run / the packets the "
          "kernel queued meanwhile (1.000: the kernel's figure above is imqd's); *not comparable*: runs in which "
          "a worker restarted.", ""]
    L += table(["system", "GSO share", "verdicts: /stats / kernel", "not comparable"],
               ([r["system"], cell(r["gso_share"], "{:.2f}"), cell(r["stats_over_kernel"]), str(r["stats_missing"])]
                for r in imqd))
    statuses = sorted({st for r in queued for st in r["gso_status"]})
    if statuses:
        L += ["", "imqd workers' `gso_status` (the kernel's answer to the flag): " + ", ".join(f"`{x}`" for x in statuses)
              + "."]
    L += [""]
    L += _render_targets_table(s)
    L += _render_latency(s["latency"], p)
    L += _render_ceiling(s["ceiling"])
    return L


def _verdict_cell(c: dict[str, Any]) -> str:
    v, b = med(c.get("verdicts_per_s")), med(c.get("bytes_per_verdict"))
    if v is None:
        return "n/a"
    return f"{v:,.0f}" + ("" if b is None else f" ({b:,.0f} B)")


def _render_targets_table(s: dict[str, Any]) -> list[str]:
    """The issue's throughput targets next to the measured ratio of every case."""
    L = ["Targets (issue 16): imqd x1 >= 0.5 x plain forwarding, imqd x2 >= 0.7 x, in every case, with GSO:", ""]
    cases = s["cases"]
    rows = []
    for r in s["rows"]:
        if r["kind"] != "imqd" or not r["gso"]:
            continue
        goal = GSO_TARGETS[f"x{r['workers']}"]
        cells = []
        for c in cases:
            v = med(r["cases"].get(c, {}).get("of_plain"))
            cells.append("n/a" if v is None else f"{v:.3f} {'pass' if v >= goal else '**miss**'}")
        rows.append([r["system"], f">= {goal:.1f}", *cells])
    return L + table(["system", "target", *cases], rows) + [""]


def _render_latency(lat: dict[str, Any], p: dict[str, Any]) -> list[str]:
    rate = f"{lat['rate_bps'] / 1e6:g} Mbit/s" if lat.get("rate_bps") else "shaped"
    cc = "/".join(lat.get("cc") or []) or "the host's default"
    rounds = int(p.get("load_rounds") or 1)
    L = [f"**Latency under load (bufferbloat):** four TCP uploads ({cc}) saturate a {rate} upload class for "
         f"{p.get('load_seconds', '?')} s after 2 s of warm-up; pings every 50 ms from the same host through the same "
         "class (imqd x1: one worker; wan rules). The FIFOs hold 1000 packets: kernel HTB's `pfifo limit 1000`, "
         "imqd's default leaf limit."
         + (" *kernel HTB + pfifo* has imqd's class: its default burst and cburst (10 ms of rate plus an MTU) "
            "written out, as the Scale section's reference; *tc's default burst* is one MTU on this kernel (its "
            "packet scheduler clock runs at 1 GHz), so that class cannot catch up after a late release."
            if KERNEL_TC_BURST_LOAD in lat["rows"] else "")
         + (" Each repetition starts with one load through kernel HTB that is not counted (the first load of a "
            "block ran lowest)." if lat.get("warmed_up") else "")
         + (" Each repetition runs kernel HTB and imqd's FIFO"
            + (f" (with normal and with real-time workers, `--realtime {REALTIME_PRIORITY}`)"
               if REALTIME_LOAD in lat["rows"] else "")
            + f" in turn, {rounds} loads of each imqd between two kernel "
            "loads; imqd's ratio is its loads' mean over the kernel loads' mean in the same repetition, and the "
            "kernel's second load over its first (A/A) is how far the same reference lands apart." if rounds > 1 else
            " Kernel HTB runs before and after imqd's FIFO in each repetition; imqd's ratio is to the mean of the "
            "two, and their own ratio (A/A) is how far the same reference lands apart.")
         + " *Windows*: "
         "the senders' congestion windows summed, sampled half-way (`ss -tin`): what a FIFO that does not fill "
         "holds. Target: imqd no worse than kernel HTB.", ""]
    L += table(["queue", "median RTT ms", "p90 RTT ms", "TCP Mbit/s", "windows KB", "/ kernel HTB median RTT"],
               ([label, cell(r["median_ms"], "{:.1f}"), cell(r["p90_ms"], "{:.1f}"), cell(r["mbps"], "{:.1f}"),
                 cell(r.get("windows_kb"), "{:.0f}"), _over_kernel_cell(lat, label)]
                for label, r in lat["rows"].items()))
    per_load = [f"*{label}*: mean {per['mean']:.3f}, sd {per['sd']:.3f} over {per['n']} loads, 95 % confidence "
                f"interval of the mean {per['lo']:.3f}–{per['hi']:.3f}"
                for label, per in (lat.get("per_load") or {}).items() if per]
    if per_load:
        L += ["", "Each imqd load over the mean of the two kernel HTB loads around it: " + "; ".join(per_load) + "."]
    return L + [""]


def _over_kernel_cell(lat: dict[str, Any], label: str) -> str:
    if label != KERNEL_LOAD:
        return cell(lat["over_kernel"].get(label))
    return f"{cell(lat['kernel_aa'])} (A/A: second run / first)" if lat.get("kernel_aa") else ""


def _render_ceiling(c: dict[str, Any]) -> list[str]:
    if not c["pps"]:
        return ["**64-byte UDP ceiling:** not measured in this run.", ""]
    L = ["**64-byte UDP ceiling with and without GSO:** imqd x1, the rising-then-bisecting search of the Ceiling "
         "section (same two senders, counted by a DROP rule in the server namespace), twice each in ABBA order "
         "(GSO, --no-gso, --no-gso, GSO: a search's result drifts with its place in a sequence). GSO does not "
         "apply to these "
         "packets: the flag must cost nothing. Target: GSO / --no-gso >= 0.95 (unchanged within this machine's "
         "noise).", ""]
    L += table(["system", "peak packets/s", "search ended by"],
               ([sy, cell(v, "{:,.0f}"), ", ".join(c["stopped"].get(sy, []))] for sy, v in c["pps"].items()))
    L += ["", f"imqd x1 GSO / --no-gso (each side's mean within each repetition): {cell(c['gso_over_no_gso'])}.", ""]
    return L
