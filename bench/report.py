"""From raw benchmark records to figures, target verdicts and the markdown page.  Pure: no I/O.

Every ratio is formed *within* one repetition (imqd and its reference measured minutes apart in the same
run), then summarised as min / median / max over the repetitions -- so a slow drift in the machine's load
moves both sides of a ratio together instead of widening it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from bench.report_control_scale import control_scale_targets, render_control_scale, summarize_control_scale
from bench.report_gso import gso_notes, gso_targets, render_gso, summarize_gso
from bench.report_scale import render_scale, scale_notes, scale_targets, summarize_scale
from bench.stats import by_rep as _by_rep
from bench.stats import cell as _f
from bench.stats import med as _med
from bench.stats import median, paired, percentile, three
from bench.stats import table as _table

__all__ = ["three", "median", "percentile", "paired", "top_frames", "summarize", "render_markdown", "limits",
           "sections_run", "TARGETS", "REFERENCE", "SUBJECT", "NO_TICK", "LOW_LATENCY", "PER_CPU", "CORE",
           "SECTIONS"]

CORE = "core"  # accuracy, ceiling, scaling, latency, cost, control plane, profile
SECTIONS = (CORE, "gso", "scale", "control-scale")  # what `python -m bench --sections` chooses from

REFERENCE = "kernel-htb"
# TCP goodput per charged byte: 1448 payload bytes (MSS with timestamps) per 1514-byte frame (IP 1500 + the
# 14 bytes both shapers charge on a veth): a shaper that hits its configured rate exactly delivers this share
GOODPUT_FACTOR = 1448 / 1514
SUBJECT = "imqd x2"  # accuracy subject: the default deployment, --queues 0:1
TARGETS = {
    "accuracy": (0.98, 1.02),
    "ceiling": 0.90,
    "added_latency_us": 50.0,
    "scaling": 1.6,
}
CEILING_PAIRS = (("imqd x1", "bare-loop x1"), ("imqd x2", "bare-loop x2"), ("imqd x1", "bare-loop-batch x1"),
                 ("bare-loop x1", "plain"),
                 ("bare-loop x2", "plain"))
SCALING_PAIRS = (("imqd x2", "imqd x1"), ("bare-loop x2", "bare-loop x1"))
NO_TICK = "imqd x1 idle-tick 0"  # imqd x1 with its idle tick off (--idle-tick 0): latency only
# The same systems while a PM QoS request keeps idle CPUs polling (imqd: `--cpu-latency 0`; plain and the bare
# loop: the bench holds the same request): the wake-up cost of idle CPUs taken out of the figure.
LOW_LATENCY = " cpu-latency 0"
# imqd with a worker on every CPU and --policy cpu (--queue-cpu-fanout): a packet is queued to the worker of the
# CPU the kernel handles it on, so no wake-up crosses CPUs (latency only)
PER_CPU = "imqd per-CPU"
IDLE_PAIRS = (("imqd x1", "plain"), ("bare-loop x1", "plain"), ("imqd x1", "bare-loop x1"), (NO_TICK, "plain"),
              (PER_CPU, "plain"),
              ("imqd x1" + LOW_LATENCY, "plain" + LOW_LATENCY), ("bare-loop x1" + LOW_LATENCY, "plain" + LOW_LATENCY))
SENDER_CPUS = ("same", "other")  # where the low-load probes were sent from: the worker's CPU, another
TRAFFIC = {"udp64": "64-byte UDP frames", "tcp1500": "full-size TCP (2 flows)"}


def top_frames(collapsed: str, n: int = 12) -> dict[str, Any]:
    """From py-spy's raw (collapsed) output: samples, and the top `n` frames by own and by total samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    own_fn: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] += count
        own_fn[_function(frames[-1])] += count
        for frame in {_function(f) for f in frames}:
            total[frame] += count
    return {"samples": samples, "own": own.most_common(n), "own_by_function": own_fn.most_common(n),
            "total": total.most_common(n)}


def _function(frame: str) -> str:
    """``"f (pkg/mod.py:12)"`` -> ``"f (pkg/mod.py)"``: py-spy frames carry the line; functions aggregate lines."""
    name, sep, where = frame.rpartition(" (")
    if not sep or not where.endswith(")"):
        return frame
    path, colon, lineno = where[:-1].rpartition(":")
    return f"{name} ({path})" if colon and lineno.isdigit() else frame


# -- figures ---------------------------------------------------------------------------------------------------
def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """All figures and target verdicts from a run's raw records."""
    out: dict[str, Any] = {
        "accuracy": _accuracy(raw.get("accuracy") or []),
        "ceiling": _ceiling(raw.get("ceiling") or []),
        "latency_idle": _latency_idle(raw.get("latency_idle") or []),
        "latency_load": _latency_load(raw.get("latency_load") or []),
        "cost": _cost(raw.get("ceiling") or [], raw.get("memory")),
        "control": _control(raw.get("control") or []),
        "profile": raw.get("profile"),
        "gso": summarize_gso(raw.get("gso")),
        "scale": summarize_scale(raw.get("scale")),
        "control_scale": summarize_control_scale(raw.get("control_scale")),
    }
    out["scaling"] = {t: {f"{a} / {b}": three(paired(_by_rep(raw.get("ceiling") or [], "pps", system=a, traffic=t),
                                                   _by_rep(raw.get("ceiling") or [], "pps", system=b, traffic=t)))
                          for a, b in SCALING_PAIRS} for t in TRAFFIC}
    out["targets"] = ((_targets(out) if CORE in sections_run(raw.get("meta", {})) else [])
                      + gso_targets(out["gso"]) + scale_targets(out["scale"]) + control_scale_targets(out["control_scale"]))
    return out


def sections_run(meta: dict[str, Any]) -> list[str]:
    """The sections a run measured (runs from before sections could be chosen measured the core only)."""
    return list(meta.get("sections_run", [CORE]))


def _accuracy(records: list[dict[str, Any]]) -> dict[str, Any]:
    keys = sorted({(r["direction"], r["rate_bps"], r["flows"]) for r in records},
                  key=lambda k: (k[0] != "upload", k[1], k[2]))
    rows, all_ratios = [], []
    for direction, rate, flows in keys:
        sel = dict(direction=direction, rate_bps=rate, flows=flows)
        ref = _by_rep(records, "bps", system=REFERENCE, **sel)
        sub = _by_rep(records, "bps", system=SUBJECT, **sel)
        ratios = paired(sub, ref)
        all_ratios += ratios
        rows.append({"direction": direction, "rate_bps": rate, "flows": flows,
                     "kernel_mbps": three(v / 1e6 for v in ref.values()),
                     "imqd_mbps": three(v / 1e6 for v in sub.values()),
                     "kernel_of_ideal": three(v / (rate * GOODPUT_FACTOR) for v in ref.values()),
                     "imqd_of_ideal": three(v / (rate * GOODPUT_FACTOR) for v in sub.values()),
                     "ratio": three(ratios)})
    return {"reference": REFERENCE, "subject": SUBJECT, "rows": rows, "overall": three(all_ratios)}


def _ceiling(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for traffic in TRAFFIC:
        recs = [r for r in records if r["traffic"] == traffic]
        systems = list(dict.fromkeys(r["system"] for r in recs))
        pps = {s: three(r["pps"] for r in recs if r["system"] == s) for s in systems}
        ratios = {f"{a} / {b}": three(paired(_by_rep(recs, "pps", system=a), _by_rep(recs, "pps", system=b)))
                  for a, b in CEILING_PAIRS}
        entry: dict[str, Any] = {"pps": pps, "ratios": ratios}
        if traffic == "udp64":
            entry["overload_pps"] = {s: three(r.get("overload_pps") for r in recs if r["system"] == s)
                                     for s in systems}
            # why each search ended (runs before this was recorded: absent); "bound" means the figure is
            # only a lower bound: the system lost nothing at the highest load the search tried
            entry["stopped"] = {s: dict(Counter(r["stopped"] for r in recs if r["system"] == s and "stopped" in r))
                                for s in systems}
        else:
            entry["gbps"] = {s: three(r["bps"] / 1e9 for r in recs if r["system"] == s) for s in systems}
        out[traffic] = entry
    return out


def _latency_idle(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per probe rate and sender CPU: each system's median one-way delay across the router (upload and
    download probes together, :mod:`bench.owd`), and what IDLE_PAIRS add per packet.

    Keyed ``"100/s same CPU"`` (probes a second; sent from the worker's CPU or another one)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((round(1 / r["interval_s"]), r["sender_cpu"]), []).append(r)
    out = {}
    for (pps, cpu), recs in sorted(groups.items(), key=lambda kv: (kv[0][0], SENDER_CPUS.index(kv[0][1]))):
        pooled: dict[str, dict[int, list[float]]] = {}
        for r in recs:
            pooled.setdefault(r["system"], {}).setdefault(r["rep"], []).extend(r["delays_us"])
        med = {sy: {rep: median(d) for rep, d in by_rep.items() if d} for sy, by_rep in pooled.items()}
        out[f"{pps}/s {cpu} CPU"] = {
            "pps": pps, "sender_cpu": cpu,
            "median_us": {sy: three(v.values()) for sy, v in med.items() if v},
            "added_us": {f"{a} - {b}": three(paired(med.get(a, {}), med.get(b, {}), "-")) for a, b in IDLE_PAIRS}}
    return out


def _idle_label(li: dict[str, Any]) -> str:
    """'100 packets/s from the worker's CPU' for one entry of _latency_idle."""
    where = {"same": "the worker's CPU", "other": "another CPU"}[li["sender_cpu"]]
    return f"{li['pps']:,} packets/s from {where}"


def _latency_load(records: list[dict[str, Any]]) -> dict[str, Any]:
    labels = list(dict.fromkeys(r["system"] for r in records))
    rows = {}
    for label in labels:
        recs = [r for r in records if r["system"] == label and r["rtts_ms"]]
        rows[label] = {"median_ms": three(median(r["rtts_ms"]) for r in recs),
                       "p90_ms": three(percentile(r["rtts_ms"], 90) for r in recs),
                       "mbps": three((r.get("bps") or 0) / 1e6 for r in recs)}
    med = {label: {r["rep"]: median(r["rtts_ms"]) for r in records if r["system"] == label and r["rtts_ms"]}
           for label in labels}
    ratio = three(paired(med.get("imqd FIFO", {}), med.get("kernel HTB + pfifo", {})))
    return {"rows": rows, "imqd_fifo_over_kernel": ratio}


def _cost(ceiling: list[dict[str, Any]], memory: dict[str, Any] | None) -> dict[str, Any]:
    cpu: dict[str, list[float]] = {}
    for r in ceiling:
        step = r.get("cost_step")
        if r["traffic"] != "udp64" or not step or not step.get("packets"):
            continue
        if r["system"] == "plain":
            continue  # no process: the kernel's work is not attributed to anyone
        cpu.setdefault(r["system"], []).append(step["cpu_s"] / (step["packets"] / 1e6))
    at = {r["system"]: r["cost_step"].get("target_pps") for r in ceiling
          if r["traffic"] == "udp64" and r.get("cost_step")}
    mem = None
    if memory:
        held = memory.get("held") or 0
        before, peak = memory["before_kib"], memory["at_peak_kib"]
        mem = {"held": held, "processes": memory.get("processes"), "rss_before_mib": before["rss"] / 1024,
               "rss_peak_mib": peak["rss"] / 1024, "pss_before_mib": before["pss"] / 1024,
               "pss_peak_mib": peak["pss"] / 1024, "hwm_mib": memory.get("hwm_kib", 0) / 1024,
               "bytes_per_held": (peak["pss"] - before["pss"]) * 1024 / held if held else None}
    return {"cpu_s_per_mpkt": {s: three(v) for s, v in cpu.items()}, "at_pps": at, "memory": mem}


def _control(records: list[dict[str, Any]]) -> dict[str, Any]:
    sizes = sorted({r["classes"] for r in records})
    out: dict[str, Any] = {"by_classes": {}}
    for n in sizes:
        recs = [r for r in records if r["classes"] == n]
        apply = [a * 1000 for r in recs for a in r.get("apply_s", []) if a is not None]
        out["by_classes"][n] = {
            "workers": recs[0].get("workers"),
            "apply_ms": three(apply),
            "apply_p90_ms": percentile(apply, 90) if apply else None,
            "get_stats_rps": three(r.get("get_rps") for r in recs),
            "patch_rps": three(r.get("patch_rps") for r in recs),
        }
    return out


def _targets(s: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per target: the figure's median(s), met or not, and the rows that miss."""
    out = []
    lo, hi = TARGETS["accuracy"]
    rows = [r for r in s["accuracy"]["rows"] if r["ratio"]]
    miss = [r for r in rows if not lo <= r["ratio"]["median"] <= hi]
    out.append({"figure": "accuracy", "target": f"{lo:.2f}-{hi:.2f} of kernel HTB",
                "value": _med(s["accuracy"]["overall"]), "met": bool(rows) and not miss,
                "misses": [f"{r['direction']} {r['rate_bps'] / 1e6:g} Mbit/s x{r['flows']}: "
                           f"{r['ratio']['median']:.3f}" for r in miss]})
    for traffic in TRAFFIC:
        for pair in ("imqd x1 / bare-loop x1", "imqd x2 / bare-loop x2"):
            v = _med(s["ceiling"].get(traffic, {}).get("ratios", {}).get(pair))
            out.append({"figure": f"ceiling {traffic} {pair}", "target": f">= {TARGETS['ceiling']:.2f}",
                        "value": v, "met": v is not None and v >= TARGETS["ceiling"], "misses": []})
    for system, suffix, how in (("imqd x1", "", ""), ("imqd x1", LOW_LATENCY, " with --cpu-latency 0"),
                                (PER_CPU, "", " with a worker per CPU and --policy cpu")):
        for li in s["latency_idle"].values():
            v = _med(li["added_us"].get(f"{system}{suffix} - plain{suffix}"))
            if v is None:
                continue  # not measured (runs before these figures)
            out.append({"figure": f"added latency per packet at {_idle_label(li)}{how} "
                                  f"(one-way delay {system}{suffix} - plain{suffix})",
                        "target": f"<= {TARGETS['added_latency_us']:.0f} us",
                        "value": v, "met": v <= TARGETS["added_latency_us"], "misses": []})
    for traffic in TRAFFIC:
        v = _med(s["scaling"].get(traffic, {}).get("imqd x2 / imqd x1"))
        out.append({"figure": f"scaling {traffic} imqd x2 / imqd x1", "target": f">= {TARGETS['scaling']:.1f}",
                    "value": v, "met": v is not None and v >= TARGETS["scaling"], "misses": []})
    return out


def render_markdown(s: dict[str, Any], meta: dict[str, Any], *, png: str | None = "benchmarks.png",
                    json_name: str = "benchmarks.json") -> str:
    """The page: machine and command, one table per figure, target verdicts and what limits the misses."""
    m = meta.get("machine", {})
    loads = [v for _, v in meta.get("loadavg", [])]
    p = meta.get("params", {})
    reps = p.get("reps", "?")
    L: list[str] = ["# imqd benchmarks", ""]
    L += ["Generated by `bench/` -- do not edit by hand; rerun the command below. Every figure is a ratio to a "
          "reference measured in the same run on the same namespace topology (client -- router -- server, veth "
          f"pairs), given as median (min–max) over {reps} repetition(s); ratios are formed within each "
          f"repetition. Raw records: [{json_name}]({json_name}).", ""]
    L += ["## Machine and command", ""]
    L += [f"- Command: `{meta.get('command', '?')}` (as root), {meta.get('started', '')}, "
          f"took {meta.get('duration_s', 0):.0f} s" + (" -- **quick mode: 1 repetition, short runs**"
                                                       if meta.get("quick") else ""),
          *(f"- Section `{r['section']}` measured again by `{r['command']}`, {r['started']}, took "
            f"{r['duration_s']:.0f} s ({r['why']}); its figures below come from that run"
            for r in meta.get("reruns", [])),
          f"- Machine: {m.get('nproc')} CPUs, {m.get('cpu_model')}"
          + (f" ({m['hypervisor']} guest)" if m.get("hypervisor") else "")
          + f", Linux {m.get('kernel')}, Python {m.get('python')}, NetfilterQueue {m.get('netfilterqueue')}, "
          f"{m.get('iperf3')}",
          f"- Load average (1 min) during the run: mean {sum(loads) / len(loads):.2f}, max {max(loads):.2f} "
          "(other work on the machine makes every figure noisier)" if loads else "- Load average: not sampled",
          f"- UDP generator: {meta.get('generator', '?')}, one sender process per source address; source "
          f"addresses by NFQUEUE queue: {meta.get('sources', {})}",
          "- imqd: `imqd run --apply-rules`, `overhead: 14` (what kernel HTB counts on a veth), classes `up` "
          "(egress, oif wan) and `down` (ingress, iif wan); x1 = `--queues 0`, x2 = `--queues 0:1`. Its rules "
          "follow the classes (`imqd.rules.for_config`): only the wan side is queued (mangle POSTROUTING `-o wan`; "
          "ingress after de-NAT, the default placement: mangle FORWARD and INPUT `-i wan`), so a forwarded packet crosses the NFQUEUE path once; the bare loop gets the same "
          "rules.", ""]
    if png:
        L += [f"![accuracy and ceiling]({png})", ""]

    L += ["## Targets", ""]
    L += _table(["figure", "target", "median", "verdict"],
                ([t["figure"], t["target"], "n/a" if t["value"] is None else t["fmt"].format(t["value"]) if "fmt" in t
                  else (f"{t['value']:.0f} µs" if "latency" in t["figure"] else f"{t['value']:.3f}"),
                  ("met" if t["met"] else "**missed**") + ("" if not t["misses"] else ": " + "; ".join(t["misses"]))]
                 for t in s["targets"]))
    L += [""]

    notes = limits(s, meta)
    if notes:
        L += ["### What limits the figures that miss", ""] + [f"- {n}" for n in notes] + [""]

    if CORE in sections_run(meta):
        L += _render_core(s, meta)
    L += render_gso(s.get("gso"), meta.get("gso_params"), meta)
    L += render_scale(s.get("scale"), meta.get("scale_params"))
    L += render_control_scale(s.get("control_scale"), meta.get("control_scale_params"))
    return "\n".join(L).rstrip() + "\n"


def _low_rate_seconds(min_packets: int) -> int:
    """How long an accuracy run at 1 Mbit/s lasts (bench.figures.Bench.accuracy)."""
    return math.ceil(min_packets * 1514 * 8 / 1e6)


def _gso_sentence(meta: dict[str, Any]) -> str:
    """Whether imqd had whole GSO super-packets in the accuracy runs (the kernel's answer, from /stats)."""
    status = meta.get("imqd_gso_status")
    if not status:
        return ""  # runs from before imqd asked for GSO, or before the bench recorded it
    on = all(x == "on" for x in status)
    what = ("TCP crossed the queue as whole super-packets, charged as the segments the wire carries" if on
            else "TCP crossed the queue as MTU-sized packets")
    return (f"imqd ran with its defaults, GSO {'on' if on else 'not on'} (its workers' `gso_status`: "
            + ", ".join(f"`{x}`" for x in status) + f"): {what}. ")


def _render_core(s: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Accuracy, ceiling, scaling, latency, cost, control plane and profile."""
    p = meta.get("params", {})
    L: list[str] = []
    a = s["accuracy"]
    L += ["## Accuracy: TCP goodput, imqd / kernel HTB", "",
          f"iperf3 goodput through a class at the configured rate; {a['subject']} vs kernel HTB ({a['reference']}: "
          "HTB + `pfifo limit 1000` on the wan egress for uploads, on the lan egress for downloads: there, as "
          "in imqd's queue and behind any real router, the server's packets no longer belong to its socket; an "
          "IFB at the wan ingress would hold them before, and the server's TCP would see them in a queue of its "
          "own host and hold back its spurious retransmissions). The other direction is left unshaped. Each run "
          "lasts "
          f"{p.get('tcp_seconds', '?')} s ({_low_rate_seconds(p.get('min_packets', 400))} s at 1 Mbit/s: at least "
          f"{p.get('min_packets', 400)} full-size packets) after "
          f"{p.get('omit', '?')} s omitted for slow start. " + _gso_sentence(meta)
          + "Overall ratio: " + _f(a["overall"]) + ".", ""]
    L += _table(["direction", "rate", "flows", "kernel HTB Mbit/s", "imqd Mbit/s", "imqd / kernel",
                 "kernel / ideal", "imqd / ideal"],
                ([r["direction"], f"{r['rate_bps'] / 1e6:g} Mbit/s", str(r["flows"]), _f(r["kernel_mbps"]),
                  _f(r["imqd_mbps"]), _f(r["ratio"]), _f(r.get("kernel_of_ideal")), _f(r.get("imqd_of_ideal"))]
                 for r in a["rows"]))
    L += ["", "*ideal* = the configured rate × 1448/1514: TCP payload per charged frame, the goodput of a shaper "
          "that holds its rate exactly.", ""]
    L += [""]

    c = s["ceiling"]
    L += ["## Ceiling: packets/s forwarded with every class above capacity", "",
          "UDP: 64-byte Ethernet frames (18-byte payload) from two senders, one per source address (so x2 "
          "systems get one host pair per queue). The offered load rises from 10 kpps by "
          f"×{p.get('step_factor', '?')} until less than 90% arrives in {p.get('lossy_steps', '?')} step(s) "
          "in a row or the senders cannot offer the next step, then bisects "
          f"{p.get('refine_steps', 0)} time(s) between the highest load that arrived and the lowest that did "
          "not (also when the senders' limit ended the rise after a lossy step); the figure is the best forwarded rate of any step "
          "or of the full-speed run (steady state, counted by a DROP rule in the server namespace). "
          "*At full speed* "
          "is the rate when both senders send as fast as they can: the senders' kernel work then starves the "
          "Python workers on 2 cores (receive livelock). TCP: two iperf3 uploads (one per source address), "
          "packets/s = goodput / 1448-byte MSS. *bare-loop* accepts each packet in its callback, one verdict "
          "message each -- the reference of the target; *bare-loop-batch* (reference only) accepts everything "
          "one drain of the socket brought in one `NFQNL_MSG_VERDICT_BATCH` message, as imqd does when it "
          "holds nothing older: it shows how much of imqd's figure the batching alone explains.", ""]
    systems = list(dict.fromkeys(list(c.get("udp64", {}).get("pps", {})) + list(c.get("tcp1500", {}).get("pps", {}))))
    L += _table(["system", "UDP 64 B peak pps", "UDP at full speed pps", "TCP pps", "TCP Gbit/s"],
                ([sy, _f(c.get("udp64", {}).get("pps", {}).get(sy), "{:,.0f}"),
                  _f(c.get("udp64", {}).get("overload_pps", {}).get(sy), "{:,.0f}"),
                  _f(c.get("tcp1500", {}).get("pps", {}).get(sy), "{:,.0f}"),
                  _f(c.get("tcp1500", {}).get("gbps", {}).get(sy), "{:.3f}")] for sy in systems))
    L += [""]
    L += _table(["ratio", "UDP 64 B", "TCP"],
                ([pair, _f(c.get("udp64", {}).get("ratios", {}).get(pair)),
                  _f(c.get("tcp1500", {}).get("ratios", {}).get(pair))]
                 for pair in [f"{x} / {y}" for x, y in CEILING_PAIRS]))
    L += [""]
    ended = {sy: n for sy, n in c.get("udp64", {}).get("stopped", {}).items() if n}
    if ended:
        L += ["UDP searches ended by: " + "; ".join(
            f"{sy}: " + ", ".join(f"{why} ×{k}" for why, k in sorted(n.items())) for sy, n in ended.items())
            + " (*loss*: the system dropped; *generator*: the senders could not offer more, so the figure may be "
              "the senders' limit; *bound*: the search's upper bound, a lower bound for the system; *full speed only*: "
              "no search, plain forwarding is measured at full speed).", ""]

    L += ["## Scaling: 2 workers / 1 worker", ""]
    L += _table(["ratio", "UDP 64 B", "TCP"],
                ([f"{x} / {y}", _f(s["scaling"].get("udp64", {}).get(f"{x} / {y}")),
                  _f(s["scaling"].get("tcp1500", {}).get(f"{x} / {y}"))] for x, y in SCALING_PAIRS))
    L += [""]

    li = s["latency_idle"]
    keys = list(li)
    L += ["## Latency", "", f"**Low load:** {p.get('ping_count', '?')} UDP probes at 10 ms intervals (100/s), then "
          f"{p.get('ping_count', '?')} at 1 ms intervals (1,000/s), nothing else running, each rate once from the "
          "client (upload) and once from the server (download); the figure is the median one-way delay across the "
          "router per repetition, both directions together. Each probe carries its send time; the receiving "
          "socket's kernel stamps its arrival (`SO_TIMESTAMPNS`) and the receiver reads them only after the last "
          "was sent, so neither end's process wake-up is counted, and a difference of two systems is what the "
          "router adds to one packet (`bench/owd.py`; a ping RTT would also count waking the client's ping "
          "process, and its echo and reply cross the router differently). The sender is pinned to the CPU of "
          "imqd x1's worker (and of the bare loop), then to another CPU: on a veth the kernel forwards a packet "
          "on its sender's CPU, so this decides whether waking the worker crosses CPUs. "
          f"`{NO_TICK}` is imqd x1 run with `--idle-tick 0`: without the tick that keeps an idle worker awake "
          "while traffic flows. "
          f"`…{LOW_LATENCY}` rows run while a PM QoS request (`/dev/cpu_dma_latency` = 0) keeps idle CPUs polling "
          "instead of sleeping: imqd x1 with `--cpu-latency 0`, plain forwarding and the bare loop with the same "
          "request held by the benchmark. They show what the wake-up of idle CPUs costs, and what an operator "
          f"who trades power for latency gets. `{PER_CPU}` runs a worker on every CPU with `--policy cpu` "
          "(`--queue-cpu-fanout`): each packet goes to the worker pinned to the CPU the kernel handles it on, so "
          "waking the worker never crosses CPUs, wherever the sender runs; no power trade-off.", ""]
    columns = [_idle_label(li[k]) for k in keys]
    systems = list(dict.fromkeys(sy for k in keys for sy in li[k]["median_us"]))
    L += _table(["median one-way µs", *columns], ([sy] + [_f(li[k]["median_us"].get(sy), "{:.0f}") for k in keys]
                                                  for sy in systems))
    L += [""]
    pairs = list(dict.fromkeys(pair for k in keys for pair, v in li[k]["added_us"].items() if v is not None))
    L += _table(["added per packet µs", *columns],
                ([pair] + [_f(li[k]["added_us"].get(pair), "{:.0f}") for k in keys] for pair in pairs))
    L += [""]
    ll = s["latency_load"]
    L += ["**Under load (bufferbloat):** four TCP uploads saturate a 20 Mbit/s class; pings from the same host go "
          "through the same class (imqd x1, so one worker holds one FIFO; with x2 the ping's host pair may hash "
          "to the other worker's FIFO and skip the queue). FIFO limit 1000 packets on both sides.", ""]
    L += _table(["queue", "median RTT ms", "p90 RTT ms", "TCP Mbit/s"],
                ([label, _f(r["median_ms"], "{:.1f}"), _f(r["p90_ms"], "{:.1f}"), _f(r["mbps"], "{:.1f}")]
                 for label, r in ll["rows"].items()))
    if "imqd fq_codel" not in ll["rows"]:
        L += ["| imqd fq_codel | n/a: leaf not available (no fq_codel leaf key in imqd's class config) | | |"]
    if "kernel HTB + fq_codel" not in ll["rows"]:
        L += ["| kernel HTB + fq_codel | n/a: this kernel has no sch_fq_codel | | |"]
    L += ["", f"imqd FIFO / kernel HTB + pfifo median RTT: {_f(ll['imqd_fifo_over_kernel'])}."]
    if meta.get("fq_codel_leaf"):
        L += ["", f"imqd fq_codel: the classes carry `{json.dumps(meta['fq_codel_leaf'])}` (CoDel target and "
              "interval at their defaults)."]
    L += [""]

    cost = s["cost"]
    L += ["## Cost", "", "CPU seconds (user + system, all threads, from /proc/PID/stat) of the system's "
          "processes per million forwarded 64-byte packets, at a fixed offered load of "
          f"{next(iter(v for v in cost['at_pps'].values() if v), 0):,.0f} pps. The system time includes the "
          "kernel work done in the verdict call (re-injection, forwarding).", ""]
    L += _table(["system", "CPU s / Mpkt"], ([sy, _f(v, "{:.1f}")] for sy, v in cost["cpu_s_per_mpkt"].items()))
    L += [""]
    mem = cost["memory"]
    if mem:
        L += [f"**Memory with packets held:** a 1 Mbit/s class (limit 20000) fed a burst of 1000-byte UDP packets "
              f"held {mem['held']:,} packets in imqd x1 ({mem['processes']} processes: supervisor/API, fork "
              "server, resource tracker, worker).", ""]
        L += _table(["", "before", f"with {mem['held']:,} held"],
                    [["RSS sum MiB", f"{mem['rss_before_mib']:.1f}", f"{mem['rss_peak_mib']:.1f}"],
                     ["PSS sum MiB (shared pages split)", f"{mem['pss_before_mib']:.1f}", f"{mem['pss_peak_mib']:.1f}"],
                     ["peak RSS (VmHWM) sum MiB", "", f"{mem['hwm_mib']:.1f}"]])
        if mem["bytes_per_held"] is not None:
            L += ["", f"≈ {mem['bytes_per_held']:.0f} bytes of imqd memory per held packet (the packet itself "
                  "stays in the kernel; imqd keeps the 128-byte copy and its queue entry)."]
        L += [""]

    ctl = s["control"]["by_classes"]
    L += ["## Control plane", "", "Against a real imqd x2 in the router namespace over loopback HTTP, one "
          "keep-alive client (Python http.client), sequential requests. *Apply* is the `X-Imqd-Apply-Seconds` "
          "header of `PATCH /classes/{name}`: from the change until every worker applied it.", ""]
    L += _table(["classes", "apply ms", "apply p90 ms", "GET /stats req/s", "PATCH /classes/{name} req/s"],
                ([str(n), _f(v["apply_ms"], "{:.1f}"),
                  "n/a" if v["apply_p90_ms"] is None else f"{v['apply_p90_ms']:.1f}",
                  _f(v["get_stats_rps"], "{:.1f}"), _f(v["patch_rps"], "{:.2f}")] for n, v in ctl.items()))
    L += [""]

    prof = s.get("profile")
    L += ["## Where the time goes (py-spy)", ""]
    if prof and not prof.get("error") and prof.get("samples"):
        L += [f"`py-spy record` on the imqd x1 worker (pid {prof['pid']}) for {prof['seconds']} s under "
              f"{prof.get('offered_pps', 0):,.0f} pps of 64-byte UDP (just above its peak); {prof['samples']} "
              "busy samples (idle time in select() is not sampled).", ""]
        src = prof.get("source") or {}
        L += ["Own time by line (a native call such as a verdict or a netlink receive counts as the Python line "
              "that makes it, kernel work included):", ""]
        L += _table(["own time", "frame", "source line"],
                    ([f"{100 * n / prof['samples']:.1f}%", f"`{fr}`", f"`{src[fr]}`" if src.get(fr) else ""]
                     for fr, n in prof["own"][:10]))
        L += ["", "Own time by function:", ""]
        L += _table(["own time", "function"], ([f"{100 * n / prof['samples']:.1f}%", f"`{fr}`"]
                                               for fr, n in prof.get("own_by_function", [])[:8]))
        L += ["", "Total (inclusive) time by function (imqd's own code; the process entry frames are left out):", ""]
        own_code = [(fr, n) for fr, n in prof["total"] if "(imqd/" in fr or "(bench/" in fr]
        L += _table(["total time", "function"], ([f"{100 * n / prof['samples']:.1f}%", f"`{fr}`"]
                                                 for fr, n in own_code[:10]))
        L += [""]
    else:
        L += [f"not profiled in this run{': ' + prof['error'] if prof and prof.get('error') else ''}.", ""]
    return L


def limits(s: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """One sentence per missed target: what the measurements say limits it (numbers from this run)."""
    missed = {t["figure"] for t in s["targets"] if not t["met"] and t["value"] is not None}
    loads = [v for _, v in meta.get("loadavg", [])]
    load = f"load average {sum(loads) / len(loads):.1f}" if loads else "unknown load"
    nproc = meta.get("machine", {}).get("nproc", "?")
    out = []
    prof = s.get("profile") or {}
    top = ""
    if prof.get("samples"):
        top = "; py-spy's top own-time functions of the worker: " + ", ".join(
            f"`{fr.split(' (')[0]}` {100 * n / prof['samples']:.0f}%"
            for fr, n in (prof.get("own_by_function") or prof["own"])[:4])
    if "accuracy" in missed:
        # runs before the field was recorded used 4 ms
        out += _accuracy_notes(s["accuracy"]["rows"], nproc, load, meta.get("default_burst_us", 4000))
    if any(f.startswith("ceiling") for f in missed):
        bad = [t for t in s["targets"] if t["figure"].startswith("ceiling") and not t["met"]]
        out.append("Ceiling below 0.90 of the bare loop for " + ", ".join(
            f"{t['figure'][8:]} ({t['value']:.2f})" for t in bad) + ": per packet imqd adds to the bare "
                   "loop's netlink receive the classification of the header bytes (Python) and the HTB charge (C), "
                   "and saves most verdict system calls by batching them" + top + ". The two-worker figures share "
                   f"{nproc} CPUs with the senders, so they are also the most sensitive to other load ({load}).")
    for li in s["latency_idle"].values():
        if not any(f.startswith(f"added latency per packet at {_idle_label(li)} (one-way") for f in missed):
            continue
        added = li["added_us"]
        bare, own = _med(added.get("bare-loop x1 - plain")), _med(added.get("imqd x1 - bare-loop x1"))
        plain_owd = _med(li["median_us"].get("plain"))
        if bare is None or own is None:
            continue
        why = (f"Added latency above 50 µs per packet at {_idle_label(li)}: the bare loop alone adds {bare:.0f} µs "
               "per packet (one NFQUEUE pass: the kernel's queueing, waking a process, the netlink round trip); "
               + (f"imqd adds {own:.0f} µs to that (parsing and classifying in Python, charging the class in C"
                  if own >= 0 else f"imqd takes {-own:.0f} µs less than that"))
        if li["pps"] < 1000:
            faster = [_med(v["median_us"].get("plain")) for v in s["latency_idle"].values()
                      if v["pps"] > li["pps"] and v["sender_cpu"] == li["sender_cpu"]]
            fast_owd = faster[0] if faster and faster[0] is not None else None
            why += ("; its" if own >= 0 else " (its") + " idle tick keeps the worker awake while traffic flows). "
            if plain_owd is not None and plain_owd > 10 and (fast_owd is None or plain_owd > 2 * fast_owd):
                why += ("At this rate the CPUs sleep between packets and every wake-up is cold: even plain kernel "
                        f"forwarding takes {plain_owd:.0f} µs one way"
                        + (f" (at 1,000 packets/s: {fast_owd:.0f} µs)" if fast_owd is not None else ""))
            else:
                why += ("At this rate the worker's CPU is asleep when a packet comes: plain forwarding wakes no "
                        f"other process ({plain_owd:.0f} µs one way), an NFQUEUE pass must wake the worker"
                        + (", from another CPU" if li["sender_cpu"] == "other" else ""))
        elif own >= 0:
            why += ")"
        polled = _med(added.get(f"imqd x1{LOW_LATENCY} - plain{LOW_LATENCY}"))
        if polled is not None:
            bare_polled = _med(added.get(f"bare-loop x1{LOW_LATENCY} - plain{LOW_LATENCY}"))
            why += (f". With idle CPUs kept polling (`--cpu-latency 0`) imqd adds {polled:.0f} µs per packet at "
                    "this rate" + (f" (the bare loop {bare_polled:.0f} µs)" if bare_polled is not None else ""))
        per_cpu = _med(added.get(f"{PER_CPU} - plain"))
        if per_cpu is not None:
            why += (f". With a worker on every CPU and `--policy cpu` (no wake-up crosses CPUs) imqd adds "
                    f"{per_cpu:.0f} µs per packet at this rate")
        out.append(why + ".")
    for traffic in TRAFFIC:
        if f"scaling {traffic} imqd x2 / imqd x1" not in missed:
            continue
        ours = _med(s["scaling"][traffic].get("imqd x2 / imqd x1"))
        bare = _med(s["scaling"][traffic].get("bare-loop x2 / bare-loop x1"))
        if bare is not None and bare < TARGETS["scaling"]:
            out.append(f"Scaling below 1.6 for {traffic} ({ours:.2f}): even the bare loop scales only {bare:.2f} "
                       f"from 1 to 2 processes here. The machine has {nproc} CPUs, shared by the two workers, the "
                       f"traffic senders, the kernel's forwarding work and other users ({load}): a second worker "
                       "finds no idle core (the target applies where the machine has the cores).")
        else:
            shown = "n/a" if bare is None else f"{bare:.2f}"
            out.append(f"Scaling below 1.6 for {traffic} ({ours:.2f}) while the bare loop scales {shown}: on "
                       f"{nproc} CPUs shared by the two workers, the senders and the kernel's forwarding work, "
                       "the heavier imqd worker (profile below) gets less of the second core; with other users "
                       f"on the machine ({load}) single runs vary a lot.")
    return out + gso_notes(s.get("gso"), nproc, load) + scale_notes(s.get("scale"))


def _accuracy_notes(rows: list[dict[str, Any]], nproc: Any, load: str, burst_us: int) -> list[str]:
    """Per missed accuracy row: is it the reference that is off the configured rate, or imqd?"""
    lo, hi = TARGETS["accuracy"]
    theirs, ours = [], []
    for r in rows:
        if not r["ratio"] or lo <= r["ratio"]["median"] <= hi:
            continue
        k, m = _med(r.get("kernel_of_ideal")), _med(r.get("imqd_of_ideal"))
        label = f"{r['direction']} {r['rate_bps'] / 1e6:g} Mbit/s x{r['flows']}"
        if k is not None and m is not None and abs(k - 1) > abs(m - 1):
            theirs.append(f"{label} (kernel {k:.3f}, imqd {m:.3f} of ideal)")
        else:
            ours.append(f"{label} (imqd {m:.3f}, kernel {k:.3f} of ideal)" if k is not None and m is not None
                        else label)
    out = []
    if theirs:
        out.append("Accuracy misses where kernel HTB is further from its configured rate than imqd: "
                   + "; ".join(theirs) + ". There the ratio measures the reference's error, not imqd's.")
    if ours:
        out.append("Accuracy misses where imqd is further from its configured rate: " + "; ".join(ours)
                   + ". imqd releases packets from a userspace timer (the worker's select() timeout) and a class's "
                   f"burst holds one MTU plus {burst_us / 1000:g} ms of rate, so a worker descheduled for longer than that "
                   f"({nproc} CPUs shared with iperf3, the kernel's forwarding work and other users, {load}) "
                   "loses sending time that kernel HTB, run from softirq, does not.")
    return out
