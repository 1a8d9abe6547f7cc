"""The core section's page: accuracy, ceiling, scaling, latency, cost, control plane and profile -- and the
names and targets the core's figures are keyed by.  Pure: no I/O (:mod:`bench.report` summarizes the records
and assembles the page).
"""

from __future__ import annotations

import json
import math
from typing import Any

from bench.stats import cell as _f
from bench.stats import table as _table

__all__ = ["render_core", "idle_label", "CORE", "SECTIONS", "REFERENCE", "GOODPUT_FACTOR", "SUBJECT", "TARGETS",
           "CEILING_PAIRS", "SCALING_PAIRS", "NO_TICK", "LOW_LATENCY", "PER_CPU", "IDLE_PAIRS", "SENDER_CPUS",
           "TRAFFIC"]

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


def render_core(s: dict[str, Any], meta: dict[str, Any]) -> list[str]:
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
    columns = [idle_label(li[k]) for k in keys]
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


def idle_label(li: dict[str, Any]) -> str:
    """'100 packets/s from the worker's CPU' for one entry of _latency_idle."""
    where = {"same": "the worker's CPU", "other": "another CPU"}[li["sender_cpu"]]
    return f"{li['pps']:,} packets/s from {where}"
