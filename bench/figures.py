"""The measurements: each function drives traffic through a running system and returns plain records.

No ratios or statistics here (that is :mod:`bench.report`); every record carries the repetition, the system
and the raw numbers, so the JSON file can be re-analysed.  Traffic always flows client -> router -> server
(upload, shaped on egress) or server -> client (download, shaped on ingress); see :mod:`bench.systems`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench import owd, udpgen
from bench.report import top_frames
from bench.search import CeilingSearch
from bench.systems import ABOVE_CAPACITY_BPS, DOWN, REPO, UP, Imqd, KernelHtb, Plain, System, read_queues
from bench.tcp_windows import sample_windows
from imqd.netns import Topology
from imqd.supervisor import worker_cpus

__all__ = ["Params", "QUICK", "FULL", "Bench"]

UDP_PORT = 9
WINDOW_S = 0.2  # accuracy runs: TCP windows add up to this much of the class rate ...
WINDOW_MIN = 64 * 1024  # ... but at least this many bytes
PROBES = 5  # datagrams per address when finding which queue an address hashes to
TCP_PORTS = (5201, 5202)
MSS = 1448  # TCP payload per full-size packet (1500 MTU - 20 IP - 20 TCP - 12 timestamps)
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, kw_only=True)
class Params:
    """How much to measure: the full run or --quick."""

    reps: int
    rates: tuple[int, ...]
    flows: tuple[int, ...]
    directions: tuple[str, ...]
    tcp_seconds: int
    omit: int
    step_warm: float
    step_window: float
    step_factor: float
    lossy_steps: int
    refine_steps: int
    ceiling_tcp_seconds: int
    ping_count: int
    load_seconds: float
    api_seconds: float
    apply_count: int
    profile_seconds: float
    # Full-size packets an accuracy run carries at least (low rates run longer).  800: a shaper releases a GSO
    # super-packet whole (20-30 KB here), so at 1 Mbit/s the goodput of a run comes in steps of ~0.2 s of data;
    # 400 packets (5 s) left a run's figure on one of two levels ~5% apart by timing alone.
    min_packets: int = 800

    def as_dict(self) -> dict[str, Any]:
        """The parameters as JSON-ready values (recorded in each run's raw results)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


FULL = Params(reps=3, rates=(1_000_000, 5_000_000, 20_000_000, 100_000_000), flows=(1, 8),
              directions=(UP, DOWN), tcp_seconds=2, omit=1, step_warm=0.5, step_window=1.0, step_factor=1.4,
              lossy_steps=2, refine_steps=3, ceiling_tcp_seconds=2,
              ping_count=200, load_seconds=4, api_seconds=2.0, apply_count=20, profile_seconds=4)
QUICK = Params(reps=1, rates=(20_000_000,), flows=(1,), directions=(UP, DOWN), tcp_seconds=2, omit=1,
               step_warm=0.25, step_window=0.4, step_factor=2.5, lossy_steps=1,
               refine_steps=1, ceiling_tcp_seconds=1, ping_count=30, load_seconds=2,
               api_seconds=1.0, apply_count=5, profile_seconds=0, min_packets=400)
START_PPS = 10_000  # the first offered load of the ceiling search (and the load the CPU cost is read at)
# A sanity bound only: the search ends when the system loses packets or the generator cannot offer the step.
# (It was 400,000 until a faster machine forwarded that without loss: the figure was then the bound's.)
MAX_PPS = 10_000_000
LOSS_STOP = 0.9  # stop rising once less than this share of the offered load arrives
IDLE_INTERVALS_S = (0.01, 0.001)  # low load: 100 and 1,000 probes a second
OWD_PORT = 9950  # UDP port of the one-way delay probes (bench.owd)


def ping_cpus() -> dict[str, int]:
    """Where the low-load latency probes are sent from: the CPU imqd x1's worker (and the bare loop) is pinned
    to and, if there is one, another."""
    (worker,) = worker_cpus(1)
    others = sorted(os.sched_getaffinity(0) - {worker})
    return {"same": worker, **({"other": others[0]} if others else {})}


LOAD_RATE_BPS = 20_000_000  # the class rate of the latency-under-load runs
LOAD_FLOWS = 4  # TCP uploads that load the class in the latency-under-load runs
HELD_TARGET = 10_000
_BACKLOG_RE = re.compile(r"backlog \S+ (\d+)p")


# -- process accounting -----------------------------------------------------------------------------------
def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of `pids` (all threads), from /proc/PID/stat; vanished pids count 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def memory_kib(pids: Sequence[int]) -> dict[str, int]:
    """Sums over `pids`: VmRSS, VmHWM (peak RSS) and Pss (shared pages split between sharers), in KiB."""
    out = {"rss": 0, "hwm": 0, "pss": 0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out["rss"] += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        out["hwm"] += int(line.split()[1])
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        out["pss"] += int(line.split()[1])
        except OSError:
            continue
    return out


class Bench:
    """Measurements on one topology (one client with several addresses, one server)."""

    def __init__(self, topo: Topology, params: Params, log: Callable[[str], None] = print) -> None:
        self.topo = topo
        self.p = params
        self.log = log
        self.client = topo.clients[0]
        self.server_run = topo.runner(topo.server_ns)
        self.sources: list[str] = [self.client.addrs4[0], self.client.addrs4[1]]
        self.generator = udpgen.generator_argv(topo.server_addr4, UDP_PORT, 18, 1, sources=self.sources)[0]

    # -- plumbing ---------------------------------------------------------------------------------------
    def udp(self, seconds: float, *, size: int = 18, pps: float = 0, count: int = 0,
            sources: Sequence[str] | None = None, dst: str | None = None) -> list[subprocess.Popen[str]]:
        """Start one generator process per source (real hosts are separate senders) sending to `dst` (default
        the server); returns them."""
        procs = []
        for src in sources or self.sources:
            _, argv = udpgen.generator_argv(dst or self.topo.server_addr4, UDP_PORT, size, seconds, pps=pps,
                                            count=count, sources=[src])
            procs.append(self.topo.popen(self.client.ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True))
        return procs

    @staticmethod
    def finish(procs: Sequence[subprocess.Popen[str]]) -> dict[str, float]:
        sent = 0
        seconds = 0.0
        for p in procs:
            out, err = p.communicate(timeout=60)
            if p.returncode != 0:
                raise RuntimeError(f"udpgen exited {p.returncode}: {err.strip()[-300:]}")
            res = udpgen.parse_output(out)
            sent += res["sent"]
            seconds = max(seconds, res["seconds"])
        return {"sent": sent, "seconds": seconds}

    def iperf(self, direction: str, flows: int = 1, *, seconds: int | None = None, omit: int | None = None,
              port: int = TCP_PORTS[0], bind: str | None = None, window: int | None = None) -> float:
        """TCP goodput in bit/s (as received); `window` = iperf3 -w per stream (None: the kernel's autotuning)."""
        if window is None:
            return self.topo.iperf3(0, port=port, seconds=seconds or self.p.tcp_seconds,
                                    omit=self.p.omit if omit is None else omit, reverse=direction == DOWN,
                                    parallel=flows, bind=bind)["bps"]
        return iperf3_window(self.topo, direction == DOWN, flows, seconds or self.p.tcp_seconds,
                             self.p.omit if omit is None else omit, port, window)

    def settle(self, system: System, timeout: float = 5.0) -> float:
        """Wait until nothing waits in the router (NFQUEUE packets awaiting a verdict, which includes what
        imqd holds, or a kernel HTB backlog), so one run's leftovers do not count in the next; returns the wait."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            waiting = sum(q["waiting"] for q in read_queues(self.topo).values())
            if isinstance(system, KernelHtb):
                out = self.topo.exec(self.topo.router_ns, ["tc", "-s", "qdisc", "show"]).stdout
                waiting += sum(int(m) for m in _BACKLOG_RE.findall(out))
            if waiting == 0:
                break
            time.sleep(0.1)
        return time.monotonic() - t0

    # -- queue mapping ----------------------------------------------------------------------------------------
    def pick_sources(self) -> dict[int, str]:
        """Two client addresses that the NFQUEUE flow hash sends to queues 0 and 1 (needs a 2-queue system up).

        The hash (xt_NFQUEUE: jhash of the addresses and protocol, seeded once per boot of the module) cannot
        be computed from outside, so each address sends a few probe datagrams and we watch which queue's last
        packet id moves.
        """
        found: dict[int, str] = {}
        with udpgen.Sink(self.server_run, UDP_PORT):
            for addr in self.client.addrs4:
                before = read_queues(self.topo)
                self.finish(self.udp(1, count=PROBES, sources=[addr]))
                time.sleep(0.05)
                after = read_queues(self.topo)
                # each probe crosses the queue once (POSTROUTING -o wan); stray packets move others a little
                moved = [q for q in after if after[q]["last_id"] - before.get(q, {}).get("last_id", 0) >= PROBES]
                if len(moved) == 1 and moved[0] not in found:
                    found[moved[0]] = addr
                if len(found) == 2:
                    break
        if len(found) < 2:
            raise RuntimeError(f"no two client addresses hash to different queues: {found}")
        self.sources = [found[0], found[1]]
        return found

    # -- accuracy -----------------------------------------------------------------------------------------
    def accuracy(self, system: System, rep: int) -> list[dict[str, Any]]:
        """Goodput at each configured rate, flow count and direction; the other direction left unshaped.

        A run lasts at least ``min_packets`` full-size packets at the configured rate (10 s at 1 Mbit/s): iperf3's
        goodput over a few hundred packets is too coarse to resolve 2%.  The TCP window is capped
        (:func:`accuracy_window`), so the class's queue holds at most ~WINDOW_S of data: the shaper stays
        saturated, but a run does not end with seconds of queue that iperf3's closing exchange waits behind."""
        out = []
        for direction in self.p.directions:
            other = DOWN if direction == UP else UP
            if isinstance(system, KernelHtb):
                system.stop()  # removes both directions' qdiscs (and any queued packets)
            else:
                system.set_rate(other, ABOVE_CAPACITY_BPS)
            for rate in self.p.rates:
                system.set_rate(direction, rate)
                seconds = max(self.p.tcp_seconds, math.ceil(self.p.min_packets * 1514 * 8 / rate))
                for flows in self.p.flows:
                    window = accuracy_window(rate, flows)
                    bps = self.iperf(direction, flows, seconds=seconds, window=window)
                    out.append({"rep": rep, "system": system.name, "direction": direction, "rate_bps": rate,
                                "flows": flows, "bps": bps, "seconds": seconds, "window": window})
                    self.log(f"  accuracy {system.name:<12} {direction:<8} {rate / 1e6:>5g} Mbit/s x{flows}: "
                             f"{bps / 1e6:8.3f} Mbit/s")
                    self.settle(system)
        if isinstance(system, KernelHtb):
            system.stop()
        else:
            for direction in (UP, DOWN):
                system.set_rate(direction, ABOVE_CAPACITY_BPS)
        return out

    # -- ceiling (and CPU cost, measured in the same window) ---------------------------------------------------
    def udp_step(self, system: System, sink: udpgen.Sink, pps: float, size: int = 18, settle: float = 5.0,
                 dst: str | None = None) -> dict[str, Any]:
        """One offered load (`pps` in total, 0 = full speed) from two senders: steady-state forwarded rate.

        The rate is read from the sink's counter over a window that starts after a warm-up, so packets still
        queued from the warm-up or the previous step do not count; the system's CPU time over the same
        window gives the cost.
        """
        warm, window = self.p.step_warm, self.p.step_window
        pids = system.pids()
        procs = self.udp(warm + window + 0.15, size=size, pps=pps / len(self.sources), dst=dst)
        try:
            time.sleep(warm)
            c0, t0, cpu0 = *_timed_count(sink), cpu_seconds(pids)
            time.sleep(window)
            c1, t1, cpu1 = *_timed_count(sink), cpu_seconds(pids)
        finally:
            gen = self.finish(procs)
        self.settle(system, settle)
        return {"offered_pps": gen["sent"] / gen["seconds"], "pps": (c1 - c0) / (t1 - t0), "packets": c1 - c0,
                "cpu_s": cpu1 - cpu0, "target_pps": pps}

    def ceiling_udp(self, system: System, rep: int) -> dict[str, Any]:
        """Peak forwarded packets/s of 64-byte frames (18-byte UDP payload) over rising offered loads.

        Full speed from two senders is not the peak on a Python NFQUEUE path: the senders' softirq work
        starves the workers (receive livelock) and throughput collapses.  So the offered load rises from
        START_PPS by Params.step_factor until the system loses packets, then bisects towards the ceiling
        (:class:`bench.search.CeilingSearch`); the figure is the best forwarded rate of any step, the first
        step (fixed load) gives the CPU cost, and a final full-speed step records the overload rate.  Plain
        forwarding only runs at full speed (the generator is its limit).  ``stopped`` records why the
        search ended.
        """
        steps: list[dict[str, Any]] = []
        search = CeilingSearch(START_PPS, self.p.step_factor, self.p.lossy_steps, self.p.refine_steps,
                               LOSS_STOP, MAX_PPS)
        with udpgen.Sink(self.server_run, UDP_PORT) as sink:
            if not isinstance(system, Plain):
                while (pps := search.next_pps()) is not None:
                    step = self.udp_step(system, sink, pps)
                    steps.append(step)
                    search.record(pps, step["offered_pps"], step["pps"])
            full = self.udp_step(system, sink, 0, settle=30.0)  # last: an overloaded queue takes long to drain
        best = max([full, *steps], key=lambda s: s["pps"])
        cost = steps[0] if steps else full
        rec = {"rep": rep, "system": system.name, "traffic": "udp64", "pps": best["pps"],
               "offered_pps": best["offered_pps"], "overload_pps": full["pps"], "full_speed_offered_pps":
               full["offered_pps"], "cost_step": cost, "steps": steps,
               "stopped": search.stopped or "full speed only"}
        self.log(f"  ceiling  {system.name:<12} udp64 {rec['pps']:>10,.0f} pps peak "
                 f"(offered {best['offered_pps']:,.0f}; {full['pps']:,.0f} at full speed "
                 f"{full['offered_pps']:,.0f}; {len(steps)} steps, ended by {rec['stopped']})")
        return rec

    def ceiling_tcp(self, system: System, rep: int) -> dict[str, Any]:
        """Two full-size TCP uploads (one per source address, so two queues when there are two)."""
        results: dict[str, float] = {}
        pids = system.pids()
        secs = self.p.ceiling_tcp_seconds

        def run(port: int, src: str) -> None:
            results[src] = self.iperf(UP, 1, seconds=secs, omit=1, port=port, bind=src)

        cpu0 = cpu_seconds(pids)
        pairs = zip(TCP_PORTS, self.sources, strict=True)
        threads = [threading.Thread(target=run, args=(port, src)) for port, src in pairs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu1 = cpu_seconds(pids)
        bps = sum(results.values())
        rec = {"rep": rep, "system": system.name, "traffic": "tcp1500", "bps": bps, "pps": bps / 8 / MSS,
               "cpu_s": cpu1 - cpu0, "seconds": secs + 1}
        self.log(f"  ceiling  {system.name:<12} tcp   {rec['pps']:>10,.0f} pps ({bps / 1e9:.3f} Gbit/s goodput)")
        self.settle(system)
        return rec

    # -- latency -------------------------------------------------------------------------------------------
    def ping(self, count: int, interval: float, cpu: int | None = None) -> list[float]:
        return self.topo.ping(0, count=count, interval=interval, deadline=count * interval + 3, cpu=cpu)

    def one_way(self, direction: str, phases: Sequence[owd.Phase]) -> list[list[float]]:
        """One-way delays (µs) across the router of the UDP probes of each of `phases` (:mod:`bench.owd`),
        sent from the client (UP) or the server (DOWN)."""
        topo, client = self.topo, self.topo.clients[0]
        src, dst, to = ((client.ns, topo.server_ns, topo.server_addr4) if direction == UP
                        else (topo.server_ns, client.ns, client.addr4))
        py = [sys.executable, "-m", "bench.owd"]
        recv = topo.popen(dst, [*py, "recv", "--port", str(OWD_PORT)], cwd=str(REPO), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = recv.stdout.readline().strip() if recv.stdout else ""
            if ready != "ready":
                raise RuntimeError(f"bench.owd recv in {dst}: {ready or recv.stderr.read()[-500:]}")
            spec = [a for ph in phases for a in ("--phase", f"{'any' if ph.cpu is None else ph.cpu}:{ph.count}:"
                                                           f"{ph.interval}")]
            topo.exec(src, [*py, "send", "--to", to, "--port", str(OWD_PORT), *spec], cwd=str(REPO),
                      timeout=sum(ph.count * ph.interval for ph in phases) + 30)
            time.sleep(0.05)  # the last probe's crossing
            out, err = recv.communicate("go\n", timeout=30)
        finally:
            if recv.poll() is None:
                recv.kill()
                recv.wait()
        if recv.returncode != 0:
            raise RuntimeError(f"bench.owd recv in {dst} exited {recv.returncode}: {err[-500:]}")
        got = json.loads(out)["delays_us"]
        return [got.get(str(i), []) for i in range(len(phases))]

    def latency_idle(self, system: System, rep: int, name: str | None = None) -> list[dict[str, Any]]:
        """One-way delays across the router at low load through `system` (:mod:`bench.owd`): a probe every
        10 ms, then every 1 ms, nothing else; upload and download.

        Two low loads, because on a machine whose CPUs sleep between packets the slower one pays every
        wake-up cold; and the sender pinned to the CPU of the (first) worker, then to another CPU, because on
        veth the router forwards a packet on its sender's CPU, and that decides whether waking the worker
        crosses CPUs -- a lottery per run if the sender were left to the scheduler (docs/benchmarks.md).
        `name` labels the records (default: the system's name)."""
        name = name or system.name
        runs = [(placement, cpu, interval) for placement, cpu in ping_cpus().items() for interval in IDLE_INTERVALS_S]
        # a first phase warms the neighbour and conntrack entries
        phases = [owd.Phase(None, 3, 0.05), *(owd.Phase(cpu, self.p.ping_count, iv) for _, cpu, iv in runs)]
        out = []
        for direction in (UP, DOWN):
            delays = self.one_way(direction, phases)[1:]
            for (placement, _, interval), d in zip(runs, delays):
                self.log(f"  latency  {name:<22} idle, {1 / interval:,.0f}/s {direction} from the {placement} "
                         f"CPU: median {_median(d):.0f} us one way ({len(d)} probes)")
                out.append({"rep": rep, "system": name, "interval_s": interval, "sender_cpu": placement,
                            "direction": direction, "delays_us": d})
        return out

    def latency_loaded(self, system: System, rep: int, label: str, rate_bps: int = LOAD_RATE_BPS,
                       seconds: float | None = None) -> dict[str, Any]:
        """ping RTTs through a class at `rate_bps` saturated by LOAD_FLOWS TCP uploads (bufferbloat) for
        `seconds` (default Params.load_seconds) after a warm-up, and the senders' congestion windows half-way
        (:mod:`bench.tcp_windows`: what sets the standing queue of a FIFO that does not fill)."""
        load_s = self.p.load_seconds if seconds is None else seconds
        system.set_rate(UP, rate_bps)
        result: dict[str, float] = {}
        warm = 2.0
        secs = int(load_s + warm + 1)
        t = threading.Thread(target=lambda: result.update(bps=self.iperf(UP, LOAD_FLOWS, seconds=secs, omit=0)))
        t.start()
        windows: dict[str, Any] = {}
        sampler = threading.Timer(warm + load_s / 2, lambda: windows.update(sample_windows(self.topo, TCP_PORTS[0])))
        sampler.start()
        try:
            time.sleep(warm)
            count = int(load_s / 0.05)
            rtts = self.ping(count, 0.05)
        finally:
            sampler.join()
            t.join()
        if isinstance(system, KernelHtb):
            system.stop()
        else:
            system.set_rate(UP, ABOVE_CAPACITY_BPS)
        self.settle(system)
        self.log(f"  latency  {label:<20} under load: median {_median(rtts):.1f} ms ({len(rtts)} replies, "
                 f"{result.get('bps', 0) / 1e6:.1f} Mbit/s; senders' windows {windows.get('cwnd_bytes', 0):,} B "
                 f"{'/'.join(windows.get('cc', []))})")
        return {"rep": rep, "system": label, "rtts_ms": rtts, "bps": result.get("bps"), "rate_bps": rate_bps,
                "windows": windows or None}

    # -- memory with packets held ------------------------------------------------------------------------------
    def held_memory(self, system: Imqd) -> dict[str, Any]:
        """imqd's memory while a 1 mbit class holds >= HELD_TARGET packets (a paced burst of 1000-byte UDP)."""
        inst = system.inst
        assert inst is not None
        status, body = inst.request("PATCH", "/classes/up", {"rate": 1_000_000, "limit": 2 * HELD_TARGET})
        if status != 200:
            raise RuntimeError(f"PATCH /classes/up: {status} {body}")
        before = memory_kib(system.pids())
        burst = int(HELD_TARGET * 1.2)
        peak_held, peak_mem = 0, before
        with udpgen.Sink(self.server_run, UDP_PORT):
            procs = self.udp(10, size=1000, pps=10_000, count=burst, sources=self.sources[:1])
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                held = sum(w.get("held", 0) for w in system.stats()["workers"])
                mem = memory_kib(system.pids())
                if held > peak_held:
                    peak_held, peak_mem = held, mem
                if procs[0].poll() is not None and held < peak_held:
                    break  # the burst is in and the class drains: the peak is behind us
                time.sleep(0.2)
            self.finish(procs)
            after = memory_kib(system.pids())
            # raise the rate first: everything held is released; only then restore the limit
            inst.request("PATCH", "/classes/up", {"rate": ABOVE_CAPACITY_BPS})
            self.settle(system, timeout=10)
            inst.request("PATCH", "/classes/up", {"limit": None})
        rec = {"held": peak_held, "before_kib": before, "at_peak_kib": peak_mem, "hwm_kib": after["hwm"],
               "processes": len(system.pids())}
        self.log(f"  memory   imqd held {peak_held} packets: RSS {before['rss']} -> {peak_mem['rss']} KiB, "
                 f"PSS {before['pss']} -> {peak_mem['pss']} KiB")
        return rec

    # -- control plane -----------------------------------------------------------------------------------------
    def api(self, system: Imqd, plan: dict[str, Any]) -> dict[str, Any]:
        """Run the HTTP client below inside the router namespace (imqd's API listens on its loopback)."""
        inst = system.inst
        assert inst is not None
        res = self.topo.exec(self.topo.router_ns, [sys.executable, "-c", _API_CLIENT, inst.api, json.dumps(plan)],
                             timeout=120)
        return json.loads(res.stdout.strip().splitlines()[-1])

    # -- profile -----------------------------------------------------------------------------------------------
    def profile(self, system: Imqd, seconds: float, pps: float) -> dict[str, Any]:
        """py-spy samples of the worker under UDP load at `pps` (just above its peak): top frames by own and
        total samples.  Idle samples (waiting in select) are not recorded, so shares are of busy time."""
        spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        if not os.path.exists(spy):
            return {"error": "py-spy not installed (pip install py-spy)"}
        pid = system.worker_pids()[0]
        fd, path = tempfile.mkstemp(prefix="imqd-bench-pyspy-", suffix=".txt")
        os.close(fd)
        try:
            with udpgen.Sink(self.server_run, UDP_PORT):
                procs = self.udp(seconds + 2, pps=pps / len(self.sources))
                time.sleep(0.5)
                res = subprocess.run([spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250", "-f",
                                      "raw", "-o", path, "--nonblocking"], capture_output=True, text=True,
                                     timeout=seconds + 30, check=False)
                self.finish(procs)
            self.settle(system)
            if res.returncode != 0:
                return {"error": f"py-spy exited {res.returncode}: {res.stderr.strip()[-300:]}"}
            with open(path, encoding="utf-8", errors="replace") as f:
                collapsed = f.read()
        finally:
            os.unlink(path)
        top = top_frames(collapsed, n=30)
        return {"pid": pid, "seconds": seconds, "offered_pps": pps, **top,
                "source": {fr: source_line(fr) for fr, _ in top["own"]}}


def accuracy_window(rate_bps: int, flows: int) -> int:
    """iperf3 -w per stream: together WINDOW_S of the rate (at least WINDOW_MIN bytes), split over the flows."""
    total = max(WINDOW_MIN, int(rate_bps / 8 * WINDOW_S))
    return max(4096, total // flows)


def iperf3_window(topo: Topology, reverse: bool, flows: int, seconds: int, omit: int, port: int, window: int
                  ) -> float:
    """iperf3 with ``-w`` (Topology.iperf3 has no window option): goodput in bit/s as received."""
    argv = ["iperf3", "-c", topo.server_addr4, "-p", str(port), "-t", str(seconds), "-O", str(omit), "-J",
            "-P", str(flows), "-w", str(window), "--connect-timeout", "3000", *(["-R"] if reverse else [])]
    res = topo.exec(topo.clients[0].ns, argv, check=False, timeout=seconds + omit + 30)
    try:
        data = json.loads(res.stdout)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"iperf3 gave no JSON (exit {res.returncode}): {res.stderr.strip()[-300:]}") from e
    if "error" in data:
        raise RuntimeError(f"iperf3 {' '.join(argv[1:])}: {data['error']}")
    return float(data["end"]["sum_received"]["bits_per_second"])


def _timed_count(sink: udpgen.Sink) -> tuple[int, float]:
    """The sink's count and the moment it was read (the midpoint of the ~10 ms the read takes)."""
    before = time.monotonic()
    count = sink.count()
    return count, (before + time.monotonic()) / 2


def source_line(frame: str) -> str | None:
    """The source text of a py-spy frame ``"f (imqd/x.py:12)"`` when the file is in this repository."""
    where = frame.rpartition(" (")[2].rstrip(")")
    path, _, lineno = where.rpartition(":")
    if not lineno.isdigit() or not path.startswith(("imqd/", "bench/")):
        return None
    try:
        with open(REPO / path, encoding="utf-8") as f:
            for i, text in enumerate(f, 1):
                if i == int(lineno):
                    return text.strip()
    except OSError:
        return None
    return None


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


# A keep-alive HTTP client run inside the router namespace.  Plan keys:
#   "apply": [[path, body], ...]  -> PATCH each, collect X-Imqd-Apply-Seconds and the wall time
#   "rps":   {"seconds": S, "get": path, "patch": [path, [body, body, ...]]} -> requests per second of each
_API_CLIENT = r"""
import http.client, json, sys, time
host, port = sys.argv[1].rsplit(":", 1)
plan = json.loads(sys.argv[2])
conn = http.client.HTTPConnection(host, int(port), timeout=30)
def req(method, path, body=None):
    data = None if body is None else json.dumps(body)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    r = conn.getresponse(); payload = r.read()
    if r.status >= 300:
        raise SystemExit(f"{method} {path}: {r.status} {payload[:300]!r}")
    return r
out = {}
if "apply" in plan:
    apply, wall = [], []
    for path, body in plan["apply"]:
        t = time.perf_counter(); r = req("PATCH", path, body); wall.append(time.perf_counter() - t)
        h = r.getheader("X-Imqd-Apply-Seconds")
        apply.append(float(h) if h else None)
    out["apply_s"] = apply; out["patch_wall_s"] = wall
if "rps" in plan:
    p = plan["rps"]; secs = p["seconds"]
    n = 0; t0 = time.perf_counter()
    while time.perf_counter() - t0 < secs:
        req("GET", p["get"]); n += 1
    out["get_rps"] = n / (time.perf_counter() - t0); out["get_n"] = n
    path, bodies = p["patch"]
    n = 0; t0 = time.perf_counter()
    while time.perf_counter() - t0 < secs:
        req("PATCH", path, bodies[n % len(bodies)]); n += 1
    out["patch_rps"] = n / (time.perf_counter() - t0); out["patch_n"] = n
print(json.dumps(out))
"""
