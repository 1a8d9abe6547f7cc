"""TCP with whole GSO super-packets (issue 16): every figure against its reference in the same run.

Per repetition (records only; :mod:`bench.report_gso` makes the figures):

* **TCP throughput** -- iperf3 through the router with every class far above what the path carries
  (``class_bps``), for each direction and flow count: plain forwarding, kernel HTB, the bare netfilterqueue
  accept loop (with and without ``NFQA_CFG_F_GSO``), and imqd x1 and x2 with GSO and with ``--no-gso``, each
  under every rule shape of :data:`SHAPES`.  Flows are split over the two client addresses that hash to
  NFQUEUE queues 0 and 1 (one flow: the first address only), so x2 systems get work on both queues.  Over a
  window inside iperf3's measured interval the kernel's queue ids give the packets queued per second (each
  gets exactly one verdict: the verdicts/s); imqd's ``/stats`` worker counters, read before and after the
  run (reading them during it would slow the worker), give the share of super-packets and a check of the
  kernel's count.
* **latency under load** (bufferbloat) -- :meth:`bench.figures.Bench.latency_loaded` with a ``load_bps``
  class after one uncounted warm-up load: kernel HTB + pfifo with imqd's class around each load of imqd x1's
  FIFO and of the same with real-time workers (the kernel's repeats are the run's own A/A figure), then imqd x1
  with ``--no-gso`` (the same FIFO limit, 1000 packets), imqd x1 with an fq_codel leaf, and kernel HTB with tc's
  default burst.
* **64-byte UDP ceiling** -- :meth:`bench.figures.Bench.ceiling_udp` for imqd x1 with GSO and ``--no-gso``, twice
  each in ABBA order.

The rule shape is a parameter (:data:`SHAPES`): ``wan`` matches the classes by the wan interface (imqd queues
only that interface); ``address`` matches them by the server's address only, so the rules are what
``imqd run --apply-rules`` makes of address-only classes (today: every interface but lo).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from bench.figures import TCP_PORTS, Bench
from bench.report_gso import (FQ_LOAD, IMQD_LOAD, KERNEL_LOAD, KERNEL_TC_BURST_LOAD, NO_GSO_LOAD, REALTIME_LOAD,
                              REALTIME_PRIORITY)
from bench.systems import (DOWN, FIFO_LIMIT, UP, BareLoop, Imqd, KernelHtb, Plain, System, fq_codel_leaf,
                           imqd_config)
from imqd.kernel_queues import PROC_PATH, parse_nfqueue_table
from imqd.netns import Topology

__all__ = ["GsoParams", "FULL_GSO", "QUICK_GSO", "Gso", "SHAPES", "shape_config", "split_flows", "tcp_systems",
           "QueueTable", "window_rates", "run_counts"]


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
    load_rounds: int  # loads of each imqd FIFO variant per repetition, each between two kernel HTB loads
    udp_ceiling: bool

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


FULL_GSO = GsoParams(reps=2, flows=(1, 8), directions=(UP, DOWN), shapes=("wan", "address"), tcp_seconds=2, omit=1,
                     class_bps=40_000_000_000, load_bps=100_000_000, load_seconds=4.0, load_rounds=5,
                     udp_ceiling=True)
QUICK_GSO = GsoParams(reps=1, flows=(8,), directions=(UP, DOWN), shapes=("wan", "address"), tcp_seconds=2, omit=1,
                      class_bps=40_000_000_000, load_bps=100_000_000, load_seconds=2.0, load_rounds=1,
                      udp_ceiling=True)


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
               BareLoop(topo, (0, 0), extra=("--gso",) if gso else (),
                        name=f"bare-loop x1{'' if gso else ' --no-gso'}"))
    for workers in (1, 2):
        for shape in p.shapes:
            for gso in (True, False):
                name = f"imqd x{workers} {shape}{'' if gso else ' --no-gso'}"
                yield ({"kind": "imqd", "workers": workers, "gso": gso, "shape": shape},
                       Imqd(topo, workers, shape_config(topo, shape, p.class_bps),
                            extra_args=() if gso else ("--no-gso",), name=name))


# Reads the NFQUEUE table when asked (a line on stdin) and answers with the CLOCK_MONOTONIC time of the read:
# a process started per reading (`ip netns exec cat`) takes 10-500 ms on a loaded machine, too uncertain for a
# window of a second or two.  CLOCK_MONOTONIC is the same in every network namespace.
_TABLE_READER = r"""
import json, sys, time
for _ in sys.stdin:
    t = time.monotonic()
    try:
        with open(sys.argv[1]) as f:
            t = time.monotonic(); text = f.read()
    except OSError:
        text = ""  # nfnetlink_queue not loaded yet: no queue, nothing queued
    print(json.dumps([t, text]), flush=True)
"""


class QueueTable:
    """A long-lived reader of the router's NFQUEUE table: :meth:`read` -> (monotonic time of the read, table)."""

    def __init__(self, topo: Topology, path: str = PROC_PATH) -> None:
        self.proc = topo.popen(topo.router_ns, [sys.executable, "-c", _TABLE_READER, path],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def read(self) -> tuple[float, dict[int, dict[str, int]]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the NFQUEUE table reader exited ({self.proc.poll()})")
        t, text = json.loads(line)
        return float(t), parse_nfqueue_table(text)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Gso:
    """The TCP/GSO section's measurements on one topology (iperf3 servers on TCP_PORTS already running)."""

    def __init__(self, bench: Bench, params: GsoParams, log: Callable[[str], None] = print) -> None:
        self.b = bench
        self.topo = bench.topo
        self.p = params
        self.log = log
        self.table: QueueTable | None = None

    # -- throughput --------------------------------------------------------------------------------------------
    def tcp_run(self, system: System, direction: str, flows: int) -> dict[str, Any]:
        """One iperf3 run (one client per source address, in parallel).

        The kernel's queue ids are read (cheaply, :class:`QueueTable`) over a window inside iperf3's measured
        interval: the verdicts/s.  imqd's ``/stats`` is read only before and after the run: a request spawns
        a process in the router namespace and makes the API work, which on 2 cores would slow the very
        worker being measured; its counters over the whole run give the GSO share and a check of the
        kernel's count."""
        p, b = self.p, self.b
        results: dict[str, float] = {}
        errors: list[BaseException] = []
        parts = split_flows(flows, b.sources)

        def run(port: int, src: str, n: int) -> None:
            try:
                results[src] = b.iperf(direction, n, seconds=p.tcp_seconds, omit=p.omit, port=port, bind=src)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)

        before = self.counters(system)
        threads = [threading.Thread(target=run, args=(port, src, n)) for port, (src, n) in zip(TCP_PORTS, parts)]
        for t in threads:
            t.start()
        try:
            time.sleep(p.omit + 0.7)  # iperf3's connection setup, then its omitted first interval
            k0 = self.kernel()
            time.sleep(max(0.5, p.tcp_seconds - 1.0))
            k1 = self.kernel()
        finally:
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        b.settle(system)
        if isinstance(system, Imqd):
            time.sleep(STATS_WAIT_S)  # every worker reports once more: its counters include the whole run
        after = self.counters(system)
        bps = sum(results.values())
        return {"direction": direction, "flows": flows, "clients": len(parts), "bps": bps, **window_rates(k0, k1),
                **run_counts(before, after)}

    def kernel(self) -> dict[str, Any]:
        """The kernel's last packet id per queue, with the (monotonic) time it was read."""
        if self.table is None:
            self.table = QueueTable(self.topo)
        t, queues = self.table.read()
        return {"t": t, "last_id": {q: v["last_id"] for q, v in queues.items()}}

    def counters(self, system: System) -> dict[str, Any]:
        """:meth:`kernel`, and for imqd its workers' counters (``/stats``)."""
        out = self.kernel()
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
        """Bufferbloat at `load_bps` (wan rules, one worker): kernel HTB + pfifo with imqd's class (its default
        burst written out), imqd x1's FIFO (GSO on) and the same with real-time workers (``--realtime``) in turn,
        `load_rounds` of each imqd load between two kernel loads (K I R K ... I R K), then imqd x1 --no-gso,
        imqd x1 with an fq_codel leaf, and kernel HTB with tc's default burst.

        The kernel loads around each of imqd's let imqd's FIFO be compared with the mean of the runs around it
        (slow drift of the machine cancels) and give the run its own A/A figure: how far two runs of the same
        kernel HTB land apart (the standing queue is the senders' congestion windows, see docs/benchmarks.md).
        One pair is not enough: two loads of the same queue land up to ~10 % apart (sd ~5 % of one imqd load
        over its neighbours), while the difference to find is a few per cent.
        A first load through the reference, not counted, comes before them: without it the first load of each
        block ran lowest (9.1 and 9.4 ms against 10.3-10.4 for the same kernel HTB two loads later, an A/A of
        1.10-1.13); with it three repetitions gave an A/A of 0.98-1.03."""
        warm = KernelHtb(self.topo, burst="imqd")
        try:
            warm.start()
            out = [{**self.b.latency_loaded(warm, rep, KERNEL_LOAD, rate_bps=self.p.load_bps,
                                            seconds=self.p.load_seconds), "warm_up": True}]
        finally:
            warm.stop()
        leaf = fq_codel_leaf()
        runs: list[tuple[System, str]] = [(KernelHtb(self.topo, burst="imqd"), KERNEL_LOAD)]
        realtime = ("--realtime", str(REALTIME_PRIORITY))
        for _ in range(self.p.load_rounds):
            runs += [(Imqd(self.topo, 1, name="imqd x1"), IMQD_LOAD),
                     (Imqd(self.topo, 1, extra_args=realtime, name="imqd x1 --realtime"), REALTIME_LOAD),
                     (KernelHtb(self.topo, burst="imqd"), KERNEL_LOAD)]
        runs.append((Imqd(self.topo, 1, extra_args=("--no-gso",), name="imqd x1 --no-gso"), NO_GSO_LOAD))
        if leaf is not None:
            runs.append((Imqd(self.topo, 1, imqd_config(self.topo, leaf=leaf), name="imqd x1 fq_codel"),
                         FQ_LOAD))
        runs.append((KernelHtb(self.topo), KERNEL_TC_BURST_LOAD))
        rounds: dict[str, int] = {}
        for system, label in runs:
            try:
                system.start()
                rec = self.b.latency_loaded(system, rep, label, rate_bps=self.p.load_bps, seconds=self.p.load_seconds)
            finally:
                system.stop()
            rec["round"] = rounds[label] = rounds.get(label, -1) + 1
            out.append(rec)
        return out

    def ceiling(self, rep: int) -> list[dict[str, Any]]:
        """The 64-byte UDP peak of imqd x1 with GSO and with --no-gso (the flag must not cost small packets), in
        ABBA order: a search's result drifts with its place in a sequence (measured here: 198k, 235k, 243k, 222k
        packets/s for --no-gso, GSO, GSO, --no-gso), so each side gets one early and one late search."""
        out = []
        for n, gso in enumerate((True, False, False, True)):
            system = Imqd(self.topo, 1, extra_args=() if gso else ("--no-gso",),
                          name=f"imqd x1{'' if gso else ' --no-gso'}")
            try:
                system.start()
                out.append({**self.b.ceiling_udp(system, rep), "gso": gso, "round": n // 2})
            finally:
                system.stop()
        return out

    def repetition(self, rep: int) -> dict[str, list[dict[str, Any]]]:
        """Every figure once."""
        try:
            out = {"tcp": self.tcp(rep)}
        finally:
            if self.table is not None:
                self.table.close()
                self.table = None
        out["latency"] = self.latency(rep)
        out["ceiling"] = self.ceiling(rep) if self.p.udp_ceiling else []
        return out


WORKER_COUNTERS = ("time", "verdicts", "packets", "gso_packets", "gso_segments", "gso_bytes", "restarts")
_SUMMED = ("verdicts", "packets", "gso_packets", "gso_segments", "gso_bytes")
STATS_WAIT_S = 0.8  # > imqd's STATS_INTERVAL_S + MAX_SLEEP_S: a worker's next report includes the whole run


def _queued(k0: dict[str, Any], k1: dict[str, Any]) -> int:
    """Packets the kernel queued between two readings, all queues (ids wrap at 2**32)."""
    return sum((k1["last_id"].get(q, 0) - v) & 0xFFFFFFFF for q, v in k0["last_id"].items())


def window_rates(k0: dict[str, Any], k1: dict[str, Any]) -> dict[str, Any]:
    """Packets queued per second (one verdict each) between two :meth:`Gso.kernel` readings."""
    dt = k1["t"] - k0["t"]
    queued = _queued(k0, k1)
    return {"window_s": dt, "queued": queued, "queued_per_s": queued / dt if dt > 0 else None}


def run_counts(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Over a whole run (:meth:`Gso.counters` before and after): packets the kernel queued and, for imqd, what
    its workers counted (None when a worker restarted or sent no report after the run: not comparable)."""
    out: dict[str, Any] = {"run_queued": _queued(before, after)}
    if "workers" not in before or "workers" not in after:
        return out
    totals: dict[str, int | None] = dict.fromkeys(_SUMMED, 0)
    for q, a in before["workers"].items():
        z = after["workers"].get(q)
        if z is None or z["restarts"] != a["restarts"] or z["time"] <= a["time"]:
            totals = dict.fromkeys(_SUMMED, None)
            break
        for k in _SUMMED:
            totals[k] = (totals[k] or 0) + z[k] - a[k]
    return {**out, **totals, "reports": [before["workers"], after["workers"]]}
