"""``python -m bench.probe`` -- a quick A/B of the forwarding ceiling and idle latency (root; ~1 min a system).

The full suite (``python -m bench``) takes ~20 minutes; while working on the per-packet path one wants the
two figures that path decides -- peak UDP 64-byte packets/s and the one-way delay at low load -- for a few
systems, measured alternately on one topology so slow drifts in the machine's load hit every system alike.
Nothing is written to docs/; the page's figures come only from the full suite.

    python -m bench.probe --systems bare1,imqd1 --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from bench.figures import QUICK, Bench
from bench.systems import BareLoop, Imqd, Plain, System
from imqd.netns import Topology

SYSTEMS: dict[str, Callable[[Topology], System]] = {
    "plain": Plain,
    "bare1": lambda t: BareLoop(t, (0, 0)),
    "bare2": lambda t: BareLoop(t, (0, 1)),
    "batch1": lambda t: BareLoop(t, (0, 0), batch=True),
    "select1": lambda t: BareLoop(t, (0, 0), extra=("--select",)),
    "imqd1": lambda t: Imqd(t, 1),
    "imqd2": lambda t: Imqd(t, 2),
    "imqd1-noclass": lambda t: Imqd(t, 1, {"classes": []}),
    "imqd1-notick": lambda t: Imqd(t, 1, extra_args=("--idle-tick", "0")),
    "imqd-percpu": Imqd.per_cpu,
}

PROBE = replace(QUICK, step_warm=0.4, step_window=0.8, step_factor=1.25, lossy_steps=2, ping_count=100)


def measure(b: Bench, system: System, rep: int, tcp: bool, udp: bool) -> dict[str, Any]:
    pooled: dict[str, list[float]] = {}  # upload and download probes together
    for r in b.latency_idle(system, rep):
        pooled.setdefault(f"owd_us@{1 / r['interval_s']:.0f}/s,{r['sender_cpu']}", []).extend(r["delays_us"])
    out = {k: statistics.median(v) for k, v in pooled.items()}
    if udp:
        out["udp_pps"] = b.ceiling_udp(system, rep)["pps"]
    if tcp:
        out["tcp_pps"] = b.ceiling_tcp(system, rep)["pps"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="bare1,imqd1", help=f"comma-separated, of {','.join(SYSTEMS)}")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--tcp", action="store_true", help="also the two-upload TCP ceiling")
    parser.add_argument("--no-udp", action="store_true", help="skip the UDP ceiling (latency only)")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        parser.error(f"--systems: unknown {', '.join(unknown)} (known: {', '.join(SYSTEMS)})")
    if os.geteuid() != 0:
        print("bench.probe: needs root", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with Topology(clients=1, extra_client_addrs=7, prefix=f"probe{os.getpid() % 100000}", ipv6=False) as topo:
        b = Bench(topo, PROBE, log=lambda s: None)
        with topo.iperf3_server(5201), topo.iperf3_server(5202):
            if any(n.endswith("2") for n in names):
                with BareLoop(topo, (0, 1)):
                    b.pick_sources()
            for rep in range(args.reps):
                for n in names:
                    with SYSTEMS[n](topo) as system:
                        r = measure(b, system, rep, args.tcp, not args.no_udp)
                    results[n].append(r)
                    print(f"rep {rep}: {n:<6} " + "  ".join(f"{k} {v:>10,.0f}" for k, v in r.items()), flush=True)
    print("median:")
    for n, rs in results.items():
        print(f"  {n:<6} " + "  ".join(f"{k} {statistics.median(r[k] for r in rs):>10,.0f}" for k in rs[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
