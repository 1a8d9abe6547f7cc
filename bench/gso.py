"""TCP with whole GSO super-packets (issue 16): every figure against its reference in the same run.

Per repetition (records only; :mod:`bench.report_gso` makes the figures):

* **TCP throughput** -- iperf3 through the router with every class far above what the path carries
  (``class_bps``), for each direction and flow count: plain forwarding, kernel HTB, the bare netfilterqueue
  accept loop (with and without ``NFQA_CFG_F_GSO``), and imqd x1 and x2 with GSO and with ``--no-gso``, each
  under every rule shape of :data:`SHAPES`.  Flows are split over the two client addresses that hash to
  NFQUEUE queues 0 and 1 (one flow: the first address only), so x2 systems get work on both queues.  Over a
  window inside iperf3's measured interval the kernel's queue ids give the packets queued per second (each
  gets exactly one verdict: the verdicts/s) and, for imqd, its ``/stats`` worker counters give the same
  figure as imqd counts it and the share of super-packets.  The kernel's count is the one reported: a worker
  that drains a flooded socket sends no ``/stats`` report meanwhile, so its counters may not move in a
  short window.
* **latency under load** (bufferbloat) -- :meth:`bench.figures.Bench.latency_loaded` with a ``load_bps``
  class: kernel HTB + pfifo and imqd x1 with GSO and ``--no-gso``, the same FIFO limit (1000 packets).
* **64-byte UDP ceiling** -- :meth:`bench.figures.Bench.ceiling_udp` for imqd x1 with GSO and ``--no-gso``.

The rule shape is a parameter (:data:`SHAPES`): ``wan`` matches the classes by the wan interface (imqd queues
only that interface); ``address`` matches them by the server's address only, so the rules are what
``imqd run --apply-rules`` makes of address-only classes (today: every interface but lo).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from bench.figures import TCP_PORTS, Bench
from bench.systems import DOWN, FIFO_LIMIT, UP, BareLoop, Imqd, KernelHtb, Plain, System, imqd_config, read_queues
from imqd.netns import Topology

__all__ = ["GsoParams", "FULL_GSO", "QUICK_GSO", "Gso", "SHAPES", "shape_config", "split_flows", "tcp_systems"]


@dataclass(frozen=True, kw_only=True)
class GsoParams:
    """How much of the TCP/GSO section to measure."""

    reps: int
    flows: tuple[int, ...]
    directions: tuple[str, ...]
    shapes: tuple[str, ...]  # rule shapes imqd is measured under (keys of SHAPES)
    tcp_seconds: int
    omit: int
    class_bps: int  # the class rate of the throughput runs: above what any path here carries
    load_bps: int  # the class rate of the latency-under-load runs
    load_seconds: float
    udp_ceiling: bool

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


FULL_GSO = GsoParams(reps=2, flows=(1, 8), directions=(UP, DOWN), shapes=("wan", "address"), tcp_seconds=2, omit=1,
                     class_bps=40_000_000_000, load_bps=100_000_000, load_seconds=4.0, udp_ceiling=True)
QUICK_GSO = GsoParams(reps=1, flows=(8,), directions=(UP, DOWN), shapes=("wan", "address"), tcp_seconds=2, omit=1,
                      class_bps=40_000_000_000, load_bps=100_000_000, load_seconds=2.0, udp_ceiling=True)


def _by_wan(topo: Topology, bps: int) -> dict[str, Any]:
    return imqd_config(topo, bps)


def _by_address(topo: Topology, bps: int) -> dict[str, Any]:
    """``up`` to the server and ``down`` from it, by address only: no interface names for the rules."""
    server = f"{topo.server_addr4}/32"
    return {"overhead": 14, "classes": [
        {"name": "up", "direction": "egress", "rate": bps, "limit": FIFO_LIMIT, "match": {"dst": server}},
        {"name": "down", "direction": "ingress", "rate": bps, "limit": FIFO_LIMIT, "match": {"src": server}}]}


# rule shape -> (what the report says, the imqd config at a class rate)
SHAPES: dict[str, tuple[str, Callable[[Topology, int], dict[str, Any]]]] = {
    "wan": ("classes matched by the wan interface (`oif`/`iif`)", _by_wan),
    "address": ("classes matched by the server's address only (`dst`/`src`)", _by_address),
}


def shape_config(topo: Topology, shape: str, bps: int) -> dict[str, Any]:
    """The imqd config of rule shape `shape` with both classes at `bps`."""
    if shape not in SHAPES:
        raise ValueError(f"shape: expected one of {', '.join(SHAPES)}, got {shape!r}")
    return SHAPES[shape][1](topo, bps)


def split_flows(flows: int, sources: list[str]) -> list[tuple[str, int]]:
    """(source address, flows) per iperf3 client: the flows split as evenly as they go over the sources, none
    with zero flows (one flow: the first source only)."""
    if flows < 1 or not sources:
        raise ValueError(f"flows: expected >= 1 over >= 1 source, got {flows!r} over {sources!r}")
    n = min(flows, len(sources))
    return [(src, flows // n + (i < flows % n)) for i, src in enumerate(sources[:n])]


def tcp_systems(topo: Topology, p: GsoParams) -> Iterator[tuple[dict[str, Any], System]]:
    """(record fields, system) for every system of the throughput runs, in measuring order."""
    yield {"kind": "plain", "workers": None, "gso": None, "shape": None}, Plain(topo)
    yield {"kind": "kernel-htb", "workers": None, "gso": None, "shape": None}, KernelHtb(topo)
    for gso in (True, False):
        yield ({"kind": "bare-loop", "workers": 1, "gso": gso, "shape": "wan"},
               BareLoop(topo, (0, 0), extra=("--gso",) if gso else (), name=f"bare-loop x1{'' if gso else ' --no-gso'}"))
    for workers in (1, 2):
        for shape in p.shapes:
            for gso in (True, False):
                name = f"imqd x{workers} {shape}{'' if gso else ' --no-gso'}"
                yield ({"kind": "imqd", "workers": workers, "gso": gso, "shape": shape},
                       Imqd(topo, workers, shape_config(topo, shape, p.class_bps),
                            extra_args=() if gso else ("--no-gso",), name=name))


class Gso:
    """The TCP/GSO section's measurements on one topology (iperf3 servers on TCP_PORTS already running)."""

    def __init__(self, bench: Bench, params: GsoParams, log: Callable[[str], None] = print) -> None:
        self.b = bench
        self.topo = bench.topo
        self.p = params
        self.log = log

    # -- throughput --------------------------------------------------------------------------------------------
    def tcp_run(self, system: System, direction: str, flows: int) -> dict[str, Any]:
        """One iperf3 run (one client per source address, in parallel); queue and /stats counters over a window
        inside iperf3's measured interval."""
        p, b = self.p, self.b
        results: dict[str, float] = {}
        errors: list[BaseException] = []
        parts = split_flows(flows, b.sources)

        def run(port: int, src: str, n: int) -> None:
            try:
                results[src] = b.iperf(direction, n, seconds=p.tcp_seconds, omit=p.omit, port=port, bind=src)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=run, args=(port, src, n)) for port, (src, n) in zip(TCP_PORTS, parts)]
        for t in threads:
            t.start()
        try:
            time.sleep(p.omit + 0.7)  # iperf3's connection setup, then its omitted first interval
            s0 = self.counters(system)
            time.sleep(max(0.5, p.tcp_seconds - 1.0))
            s1 = self.counters(system)
        finally:
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        bps = sum(results.values())
        rec: dict[str, Any] = {"direction": direction, "flows": flows, "clients": len(parts), "bps": bps,
                               **window_rates(s0, s1)}
        self.b.settle(system)
        return rec

    def counters(self, system: System) -> dict[str, Any]:
        """The kernel's last packet id per queue (and imqd's worker counters), with the time they were read."""
        t0 = time.monotonic()
        queues = read_queues(self.topo)
        out: dict[str, Any] = {"t": (t0 + time.monotonic()) / 2, "last_id": {q: v["last_id"] for q, v in queues.items()}}
        if isinstance(system, Imqd):
            out["workers"] = {w["queue"]: {k: w.get(k, 0) for k in WORKER_COUNTERS} for w in system.stats()["workers"]}
        return out

    def tcp(self, rep: int) -> list[dict[str, Any]]:
        """Every system of :func:`tcp_systems` through every direction and flow count."""
        out = []
        for fields, system in tcp_systems(self.topo, self.p):
            try:  # not `with`: a start that fails half-way (rules installed, say) is undone too
                system.start()
                self.set_rates(system)
                status = self.gso_status(system)
                for direction in self.p.directions:
                    for flows in self.p.flows:
                        rec = {"rep": rep, "system": system.name, **fields, **self.tcp_run(system, direction, flows)}
                        if status is not None:
                            rec["gso_status"] = status
                        out.append(rec)
                        vps = rec["queued_per_s"] if fields["kind"] in ("imqd", "bare-loop") else None
                        self.log(f"  gso      {system.name:<24} {direction:<8} x{flows}: {rec['bps'] / 1e9:7.3f} Gbit/s"
                                 + ("" if vps is None else f", {vps:>9,.0f} verdicts/s"))
            finally:
                system.stop()
        return out

    def set_rates(self, system: System) -> None:
        """Kernel HTB at the class rate in both directions (imqd's configs carry it already)."""
        if isinstance(system, KernelHtb):
            for direction in (UP, DOWN):
                system.set_rate(direction, self.p.class_bps)

    @staticmethod
    def gso_status(system: System) -> list[str] | None:
        """imqd's workers' ``gso_status`` (whether the kernel took the flag); None for other systems."""
        if not isinstance(system, Imqd):
            return None
        return [str(w.get("gso_status")) for w in system.stats()["workers"]]

    # -- latency under load, UDP ceiling ------------------------------------------------------------------------
    def latency(self, rep: int) -> list[dict[str, Any]]:
        """Bufferbloat at `load_bps`: kernel HTB + pfifo, imqd x1 with GSO and with --no-gso (wan rules)."""
        out = []
        systems: list[System] = [KernelHtb(self.topo), Imqd(self.topo, 1, name="imqd x1"),
                                 Imqd(self.topo, 1, extra_args=("--no-gso",), name="imqd x1 --no-gso")]
        for system in systems:
            try:
                system.start()
                label = "kernel HTB + pfifo" if isinstance(system, KernelHtb) else f"{system.name} FIFO"
                out.append(self.b.latency_loaded(system, rep, label, rate_bps=self.p.load_bps,
                                                 seconds=self.p.load_seconds))
            finally:
                system.stop()
        return out

    def ceiling(self, rep: int) -> list[dict[str, Any]]:
        """The 64-byte UDP peak of imqd x1 with GSO and with --no-gso (the flag must not cost small packets)."""
        out = []
        for gso in (True, False):
            system = Imqd(self.topo, 1, extra_args=() if gso else ("--no-gso",),
                          name=f"imqd x1{'' if gso else ' --no-gso'}")
            try:
                system.start()
                out.append({**self.b.ceiling_udp(system, rep), "gso": gso})
            finally:
                system.stop()
        return out

    def repetition(self, rep: int) -> dict[str, list[dict[str, Any]]]:
        """Every figure once."""
        out = {"tcp": self.tcp(rep), "latency": self.latency(rep)}
        out["ceiling"] = self.ceiling(rep) if self.p.udp_ceiling else []
        return out


WORKER_COUNTERS = ("time", "verdicts", "packets", "gso_packets", "gso_segments", "gso_bytes", "restarts")
_SUMMED = ("verdicts", "packets", "gso_packets", "gso_segments", "gso_bytes")


def window_rates(s0: dict[str, Any], s1: dict[str, Any]) -> dict[str, Any]:
    """Between two :meth:`Gso.counters` readings: packets queued per second (kernel ids, all queues: one
    verdict each) and, for imqd, the verdicts per second its workers counted (each over its own report
    times; None unless every worker sent a new report in the window) and their GSO counters."""
    dt = s1["t"] - s0["t"]
    queued = sum((s1["last_id"].get(q, 0) - v) & 0xFFFFFFFF for q, v in s0["last_id"].items())
    out: dict[str, Any] = {"window_s": dt, "queued": queued, "queued_per_s": queued / dt if dt > 0 else None}
    if "workers" not in s0 or "workers" not in s1:
        return out
    vps: float | None = 0.0
    totals = dict.fromkeys(_SUMMED, 0)
    for q, a in s0["workers"].items():
        z = s1["workers"].get(q)
        if z is None or z["restarts"] != a["restarts"] or not a["time"] or z["time"] <= a["time"]:
            vps = None  # a worker without a fresh report (or restarted): its counters say nothing of the window
            continue
        if vps is not None:
            vps += (z["verdicts"] - a["verdicts"]) / (z["time"] - a["time"])
        for k in totals:
            totals[k] += z[k] - a[k]
    out.update(stats_verdicts_per_s=vps, workers=[s0["workers"], s1["workers"]], **totals)
    return out
