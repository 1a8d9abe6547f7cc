"""From raw benchmark records to figures, target verdicts and the markdown page.  Pure: no I/O.

Every ratio is formed *within* one repetition (imqd and its reference measured minutes apart in the same
run), then summarised as min / median / max over the repetitions -- so a slow drift in the machine's load
moves both sides of a ratio together instead of widening it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.report_core import (CEILING_PAIRS, CORE, GOODPUT_FACTOR, IDLE_PAIRS, LOW_LATENCY, NO_TICK, PER_CPU,
                               REFERENCE, SCALING_PAIRS, SECTIONS, SENDER_CPUS, SUBJECT, TARGETS, TRAFFIC,
                               idle_label, render_core)
from bench.report_control_scale import control_scale_targets, render_control_scale, summarize_control_scale
from bench.report_gso import gso_notes, gso_targets, render_gso, summarize_gso
from bench.report_scale import render_scale, scale_notes, scale_targets, summarize_scale
from bench.stats import by_rep as _by_rep
from bench.stats import med as _med
from bench.stats import median, paired, percentile, three
from bench.stats import table as _table

__all__ = ["three", "median", "percentile", "paired", "top_frames", "summarize", "render_markdown", "limits",
           "sections_run", "TARGETS", "REFERENCE", "SUBJECT", "NO_TICK", "LOW_LATENCY", "PER_CPU", "CORE",
           "SECTIONS"]

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
            out.append({"figure": f"added latency per packet at {idle_label(li)}{how} "
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
        L += render_core(s, meta)
    L += render_gso(s.get("gso"), meta.get("gso_params"), meta)
    L += render_scale(s.get("scale"), meta.get("scale_params"))
    L += render_control_scale(s.get("control_scale"), meta.get("control_scale_params"))
    return "\n".join(L).rstrip() + "\n"


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
        if not any(f.startswith(f"added latency per packet at {idle_label(li)} (one-way") for f in missed):
            continue
        added = li["added_us"]
        bare, own = _med(added.get("bare-loop x1 - plain")), _med(added.get("imqd x1 - bare-loop x1"))
        plain_owd = _med(li["median_us"].get("plain"))
        if bare is None or own is None:
            continue
        why = (f"Added latency above 50 µs per packet at {idle_label(li)}: the bare loop alone adds {bare:.0f} µs "
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
