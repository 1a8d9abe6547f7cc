"""Scale (issue 15): imqd with thousands of subscriber classes, each figure against its reference in the same run.

Per repetition (records only; :mod:`bench.report_scale` makes the figures):

* **packets/s by class count** -- imqd x1 with one 10gbit parent and N /32 leaves (:func:`subscriber_config`),
  64-byte UDP to the *last* leaf's address (a first-match classifier's worst case), the ceiling search of
  :mod:`bench.figures` (rising load, then bisection; no full-speed step).  The same instance gives the start
  time (:func:`bench.startup.start_timed`) and the RSS of its worker and its API process (the supervisor)
  after the start and after the traffic.
* **all subscribers backlogged** -- N leaves at the same plan, every one offered twice its plan at once
  (one generator sending to the N addresses in turn, :mod:`bench.udpgen`), counted per subscriber by
  :mod:`bench.udprecv` over a window after a warm-up; the same traffic through one class of the same total
  rate (imqd, same workers) and, for ``kernel_classes``, through kernel HTB with the same N classes
  (:func:`subscribers.kernel_htb_batch`).  The load is sized from this repetition's 1-class packets/s
  (:func:`subscribers.backlog_plan`), then checked: that figure is for 64-byte packets that pass unqueued, and
  held 1000-byte packets cost the generator, the kernel and the workers more.  If the one-class reference does
  not carry the plans (:data:`REF_MIN_OF_PLANS`) or the generator does not offer about twice them
  (:data:`MIN_OFFERED_OF_PLANS`), the load is not "within what one class carries" and every figure of that
  load would measure the machine, not the shaper: the load steps down (:data:`LOAD_STEP`, at most
  :data:`MAX_DESCENTS` times) and the discarded tries are kept in the one-class record (``descents``).

The subscriber prefixes are routed to the server namespace, which answers for them
(``ip route add local PREFIX dev lo``); the router sends them out of its wan interface, where the egress
classes shape them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from bench import udpgen
from bench.figures import LOSS_STOP, MAX_PPS, START_PPS, UDP_PORT, Bench, memory_kib
from bench.search import CeilingSearch
from bench.startup import start_timed
from bench.subscribers import (ABOVE_CAPACITY_BPS, EXTRA, SUBSCRIBERS, BacklogPlan, address, backlog_plan,
                               kernel_htb_batch, one_class_config, subscriber_config)
from bench.systems import Imqd, System, read_queues
from bench.udprecv import Receiver, snapshot_data
from imqd.netns import Topology, TopologyError

__all__ = ["ScaleParams", "FULL_SCALE", "QUICK_SCALE", "Scale", "KernelHtbMany", "subscriber_routes", "SUB_PORT",
           "SMALL_PAYLOAD", "load_problem", "REF_MIN_OF_PLANS", "MIN_OFFERED_OF_PLANS", "LOAD_STEP", "MAX_DESCENTS"]

SUB_PORT = 9001  # the per-subscriber receiver's port (the DROP-rule sink counts port 9)
SMALL_PAYLOAD = 18  # 64-byte Ethernet frames for the packets/s figures
REF_MIN_OF_PLANS = 0.95  # the one-class reference must deliver this share of the plans ...
MIN_OFFERED_OF_PLANS = 1.8  # ... and the generator offer this multiple of them ("twice"), or the load steps down
LOAD_STEP = 0.6
MAX_DESCENTS = 2


def load_problem(rec: dict[str, Any]) -> str | None:
    """Why a one-class reference run says its load is beyond this machine (None: it is within)."""
    expected = rec["subscribers"] * rec["expected_each"]
    if not expected or not rec["gen_seconds"]:
        return "no traffic counted"
    offered = rec["sent"] / rec["gen_seconds"] / (rec["subscribers"] * rec["plan"]["plan_pps"])
    got = sum(rec["delivered"]) / expected
    if offered < MIN_OFFERED_OF_PLANS:
        return f"the generator offered {offered:.2f} x the plans, not ~2"
    if got < REF_MIN_OF_PLANS:
        return f"one class delivered {got:.3f} of the plans"
    return None


@dataclass(frozen=True, kw_only=True)
class ScaleParams:
    """How much of the Scale section to measure."""

    reps: int
    classes: tuple[int, ...]  # class counts of the packets/s and memory figures (the first is the reference)
    backlog_classes: tuple[int, ...]  # subscriber counts of the all-backlogged figures
    kernel_classes: int | None  # the count that also gets the kernel HTB reference (None: none)
    backlog_workers: int
    payload: int  # UDP payload of the backlogged traffic (big packets: a default burst is ~1.5 of them)
    load_share: float  # offered load / the 1-class packets/s (half of it is the sum of the plans)
    min_packets: int  # datagrams each plan carries in the window ...
    max_window_s: float  # ... unless the window would be longer than this
    min_warm_s: float
    start_timeout_s: float

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


FULL_SCALE = ScaleParams(reps=2, classes=(1, 100, 1000, 10000), backlog_classes=(1000, 10000), kernel_classes=1000,
                         backlog_workers=2, payload=1000, load_share=0.5, min_packets=100, max_window_s=30.0,
                         min_warm_s=2.0, start_timeout_s=300.0)
QUICK_SCALE = ScaleParams(reps=1, classes=(1, 100, 1000), backlog_classes=(1000,), kernel_classes=1000,
                          backlog_workers=2, payload=1000, load_share=0.5, min_packets=25, max_window_s=3.0,
                          min_warm_s=1.0, start_timeout_s=120.0)


@contextlib.contextmanager
def subscriber_routes(topo: Topology) -> Iterator[None]:
    """The server namespace answers for the subscriber prefixes; the router routes them to it."""
    added: list[tuple[str, list[str]]] = []
    try:
        for net in (SUBSCRIBERS, EXTRA):
            for ns, route in ((topo.server_ns, ["local", str(net), "dev", "lo"]),
                              (topo.router_ns, [str(net), "via", topo.server_addr4])):
                topo.exec(ns, ["ip", "route", "add", *route])
                added.append((ns, route))
        yield
    finally:
        for ns, route in reversed(added):
            if not topo.closed:
                topo.exec(ns, ["ip", "route", "del", *route], check=False)


class KernelHtbMany(System):
    """Kernel HTB with N subscriber leaves on the router's wan egress, built by one ``tc -batch``."""

    name = "kernel-htb"
    shapes = True

    def __init__(self, topo: Topology, n: int, rate_bps: int) -> None:
        super().__init__(topo)
        self.lines = kernel_htb_batch(topo.wan_iface, n, rate_bps)
        self.build_s: float | None = None

    def start(self) -> None:
        fd, path = tempfile.mkstemp(prefix="imqd-bench-tc-", suffix=".batch")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write("\n".join(self.lines) + "\n")
            t0 = time.monotonic()
            self.topo.exec(self.topo.router_ns, ["tc", "-batch", path], timeout=300)
            self.build_s = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        finally:
            os.unlink(path)

    def stop(self) -> None:
        self.topo.clear_tc(self.topo.router_ns, self.topo.wan_iface)


def pids_of(system: Imqd) -> dict[str, int]:
    """The API process (the supervisor: ``ip netns exec`` execs it, so it is the Popen pid) and the workers."""
    assert system.inst is not None and system.inst.proc is not None
    return {"api": system.inst.proc.pid, **{f"worker{i}": pid for i, pid in enumerate(system.worker_pids())}}


def rss_kib(pids: dict[str, int]) -> dict[str, dict[str, int]]:
    return {role: memory_kib([pid]) for role, pid in pids.items()}


class Scale:
    """The Scale section's measurements on one topology (routes from :func:`subscriber_routes` in place)."""

    def __init__(self, bench: Bench, params: ScaleParams, log: Callable[[str], None] = print) -> None:
        self.b = bench
        self.topo = bench.topo
        self.p = params
        self.log = log

    # -- packets/s, start time and memory by class count ---------------------------------------------------
    def pps_at(self, n: int, rep: int) -> dict[str, Any]:
        """imqd x1 with n leaves: start time, RSS, peak packets/s of 64-byte UDP to the last leaf."""
        cfg = subscriber_config(n, max(1, ABOVE_CAPACITY_BPS // n), ceil_bps=ABOVE_CAPACITY_BPS,
                                parent_bps=ABOVE_CAPACITY_BPS)
        system = Imqd(self.topo, 1, cfg, name=f"imqd x1 {n} classes", start_timeout=self.p.start_timeout_s)
        try:
            start = start_timed(system, self.p.start_timeout_s)
            pids = pids_of(system)
            rss_start = rss_kib(pids)
            peak = self.peak(system, address(n - 1))
            rss_after = rss_kib(pids)
        finally:
            system.stop()
        rec = {"rep": rep, "classes": n, "workers": 1, **start, "pids": pids, "rss_start_kib": rss_start,
               "rss_after_kib": rss_after, **peak}
        self.log(f"  scale    {n:>6} classes: {peak['pps']:>10,.0f} pps peak ({peak['stopped']}), start "
                 f"{start['healthz_s']:.2f} s, RSS worker {rss_after['worker0']['rss'] / 1024:.1f} MiB, "
                 f"API {rss_after['api']['rss'] / 1024:.1f} MiB")
        return rec

    def peak(self, system: System, dst: str) -> dict[str, Any]:
        """The best forwarded packets/s of the ceiling search towards `dst` (64-byte frames).

        With many classes the first step (START_PPS) may already lose; the best figure is then the rate
        forwarded under overload, which a Python path in receive livelock holds below its ceiling.  So a
        search that found no lossless step runs once more from half the rate it forwarded."""
        bp = self.b.p
        steps: list[dict[str, Any]] = []
        start: float = START_PPS
        with udpgen.Sink(self.b.server_run, UDP_PORT) as sink:
            for _ in range(2):
                search = CeilingSearch(start, bp.step_factor, bp.lossy_steps, bp.refine_steps, LOSS_STOP, MAX_PPS)
                while (pps := search.next_pps()) is not None:
                    step = self.b.udp_step(system, sink, pps, size=SMALL_PAYLOAD, dst=dst)
                    steps.append(step)
                    search.record(pps, step["offered_pps"], step["pps"])
                if any(not lost for _, lost in search.history):
                    break
                start = max(100.0, 0.5 * max(s["pps"] for s in steps))
        best = max(steps, key=lambda s: s["pps"])
        return {"pps": best["pps"], "offered_pps": best["offered_pps"], "steps": steps,
                "stopped": search.stopped or "unknown"}

    # -- all subscribers backlogged ----------------------------------------------------------------------------
    def backlog_at(self, n: int, capacity_pps: float, rep: int) -> list[dict[str, Any]]:
        """The n-subscriber backlog through one class (reference), n imqd classes and, if asked, kernel HTB."""
        p = self.p
        w = p.backlog_workers
        share = p.load_share
        descents: list[dict[str, Any]] = []
        while True:  # the one-class reference first, at a load it carries (see load_problem)
            plan = backlog_plan(n, capacity_pps, payload=p.payload, load_share=share,
                                min_packets=p.min_packets, max_window_s=p.max_window_s, min_warm_s=p.min_warm_s)
            one = Imqd(self.topo, w, one_class_config(n * plan.rate_bps), name=f"imqd x{w} one class",
                       start_timeout=p.start_timeout_s)
            try:
                one.start()
                ref = self.backlog_run(one, plan, rep)
            finally:
                one.stop()
            ref.update(shape="one class", load_share=share)
            why = load_problem(ref)
            if why is None or len(descents) == MAX_DESCENTS:
                break
            self.log(f"  backlog  load {share:.3g} x the 1-class packets/s is beyond this machine ({why}): "
                     f"x{LOAD_STEP}")
            descents.append({"load_share": share, "problem": why, "of_plans": sum(ref["delivered"]) / (
                n * ref["expected_each"]), "offered_pps": ref["sent"] / ref["gen_seconds"], "plan": ref["plan"]})
            share *= LOAD_STEP
        ref["descents"] = descents
        ref["load_problem"] = why  # still beyond it after MAX_DESCENTS: the figures say so
        out = [ref]
        systems: list[tuple[str, System]] = [
            ("classes", Imqd(self.topo, w, subscriber_config(n, plan.rate_bps), name=f"imqd x{w}",
                             start_timeout=p.start_timeout_s))]
        if p.kernel_classes == n:
            systems.append(("classes", KernelHtbMany(self.topo, n, plan.rate_bps)))
        for shape, system in systems:
            try:  # not `with`: a start that fails half-way (imqd's rules installed, say) is undone too
                try:
                    system.start()
                except TopologyError as e:
                    if not isinstance(system, KernelHtbMany):
                        raise
                    # the reference is "where it can be built": this kernel or tc could not
                    self.log(f"  backlog  kernel HTB with {n} classes could not be built: {e}")
                    out.append({"rep": rep, "system": system.name, "subscribers": n, "shape": shape,
                                "error": str(e)[-500:]})
                    continue
                rec = self.backlog_run(system, plan, rep)
            finally:
                system.stop()
            rec.update(shape=shape, load_share=share)
            if isinstance(system, KernelHtbMany):
                rec["build_s"] = system.build_s
            out.append(rec)
        return out

    def backlog_run(self, system: System, plan: BacklogPlan, rep: int) -> dict[str, Any]:
        """Offer every subscriber twice its plan; count what each got in the window after the warm-up."""
        n = plan.subscribers
        queues0 = read_queues(self.topo)
        _, argv = udpgen.generator_argv(address(0), SUB_PORT, plan.payload, plan.warm_s + plan.window_s + 0.3,
                                        pps=plan.offered_pps, sources=self.b.sources, destinations=n)
        with Receiver(lambda a, **kw: self.topo.popen(self.topo.server_ns, a, **kw), SUB_PORT, address(0), n) as rx:
            gen = self.topo.popen(self.topo.clients[0].ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
            try:
                time.sleep(plan.warm_s)
                s0 = rx.snap()
                time.sleep(plan.window_s)
                s1 = rx.snap()
            finally:
                sent = Bench.finish([gen])
        queues1 = read_queues(self.topo)
        pool_drops = None
        if isinstance(system, Imqd) and system.inst is not None:  # what imqd itself refused (longest queues first)
            pool_drops = sum(w.get("pool_drops") or 0 for w in system.inst.stats().get("workers", []))
        window = s1.t - s0.t
        delivered = [b - a for a, b in zip(s0.counts, s1.counts)]
        drops = {k: sum(q[k] for q in queues1.values()) - sum(q[k] for q in queues0.values())
                 for k in ("queue_dropped", "user_dropped")}
        rec = {"rep": rep, "system": system.name, "subscribers": n, "plan": plan.as_dict(), "window_s": window,
               "expected_each": plan.plan_pps * window, "delivered": delivered, "sent": sent["sent"],
               "gen_seconds": sent["seconds"], "snap0": snapshot_data(s0), "snap1": snapshot_data(s1),
               "nfqueue_drops": drops, "pool_drops": pool_drops}
        got = sum(delivered) / (n * rec["expected_each"]) if n and rec["expected_each"] else 0.0
        self.log(f"  backlog  {system.name:<18} {n:>6} subscribers at {plan.rate_bps:,} bit/s: delivered "
                 f"{got:.3f} of the plans, worst {min(delivered) / rec['expected_each']:.2f} "
                 f"({window:.1f} s window, offered {sent['sent'] / sent['seconds']:,.0f} pps)")
        return rec

    # -- one repetition ----------------------------------------------------------------------------------------
    def repetition(self, rep: int) -> dict[str, list[dict[str, Any]]]:
        """Every figure once: packets/s (and start, memory) by class count, then the backlogged runs sized
        from this repetition's packets/s with the first class count (1).

        Even repetitions measure the class counts rising, odd ones falling: a ceiling search finds more or less
        by its place in a sequence (one run found 256k packets/s for 1 class first, where the run before found
        238k and both found 216-219k for 10,000 classes), so over two repetitions each count runs once early and
        once late."""
        order = list(self.p.classes) if rep % 2 == 0 else list(reversed(self.p.classes))
        measured = {n: {**self.pps_at(n, rep), "position": i} for i, n in enumerate(order)}
        pps = [measured[n] for n in self.p.classes]
        capacity = pps[0]["pps"]
        backlog = [r for n in self.p.backlog_classes for r in self.backlog_at(n, capacity, rep)]
        return {"pps": pps, "backlog": backlog}
