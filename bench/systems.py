"""The systems under test, all on one Topology, each a context manager with the same small interface.

* :class:`Plain` -- forwarding only, no shaping: the ceiling of the machine.
* :class:`KernelHtb` -- the in-kernel reference: HTB on the router's egress interface for uploads (wan) and
  on the client-side (lan) egress for downloads, each with an explicit ``pfifo limit 1000`` leaf (imqd's
  default FIFO length; the kernel's implicit leaf would be ``txqueuelen`` long) or an ``fq_codel`` leaf.
  Not an IFB fed from the wan ingress: see :class:`KernelHtb`.
* :class:`BareLoop` -- ``bench.bare_loop`` processes, one per queue, behind exactly the NFQUEUE rules imqd
  installs for the benchmark's classes (``imqd.rules.for_config``: the wan interface only, so a forwarded
  packet crosses the queue once): the ceiling of the NFQUEUE-in-Python architecture.
* :class:`Imqd` -- a real ``imqd run --apply-rules`` (:class:`imqd.lab.ImqdInstance`) with one class per
  direction: ``up`` (egress, ``oif`` wan) and ``down`` (ingress, ``iif`` wan), like IMQ's imq1/imq0.

``set_rate(direction, bps)`` reshapes without a restart (tc ``replace``; imqd: ``PATCH /classes/{name}``),
``pids()`` names the processes whose CPU time and memory are the system's cost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import report
from imqd import rules
from imqd.config import ClassSpec, default_burst, parse_config
from imqd.kernel_queues import PROC_PATH, parse_nfqueue_table
from imqd.lab import ImqdInstance
from imqd.netns import Topology
from imqd.supervisor import worker_cpus

__all__ = ["System", "Plain", "KernelHtb", "BareLoop", "Imqd", "imqd_config", "fq_codel_leaf", "descendants",
           "UP", "DOWN", "FIFO_LIMIT", "ABOVE_CAPACITY_BPS"]

UP, DOWN = "upload", "download"
FIFO_LIMIT = 1000  # packets: imqd's default leaf FIFO; the kernel reference gets the same pfifo
ABOVE_CAPACITY_BPS = 10_000_000_000  # a class rate no path here reaches: the shaper never holds back
REPO = Path(__file__).resolve().parent.parent


class System:
    """Base: a named system on `topo`; subclasses override what they need."""

    name = "system"
    shapes = False  # True: set_rate() limits traffic

    def __init__(self, topo: Topology) -> None:
        self.topo = topo

    def __enter__(self) -> System:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def set_rate(self, direction: str, bps: int) -> None:
        raise NotImplementedError(f"{self.name} does not shape")

    def pids(self) -> list[int]:
        return []


class Plain(System):
    name = "plain"


class KernelHtb(System):
    """Kernel HTB + a pfifo (or fq_codel) leaf; `set_rate` installs/replaces it for one direction.

    Downloads are shaped on the lan egress, where the packets wait *after* ``ip_rcv`` dropped their socket
    reference (``skb_orphan``), as they do in imqd's PREROUTING queue and in any router a remote server sends
    through.  An IFB fed from the wan ingress holds them before that: since veth keeps ``skb->sk`` across
    namespaces (Linux 5.7), the server's TCP on this one-host topology then sees its packets still "in a host
    queue", so TCP small queues throttle it and its spurious tail-loss probes and RTO retransmissions are
    suppressed (``TCPSpuriousRtxHostQueues``) instead of taking the class's bandwidth.  At 1 Mbit/s x8
    (0.15-0.5 s of queue) that lifted the reference to 1.005 of ideal while the same HTB on the lan egress and
    imqd both carried 0.962, each with ~27 retransmitted segments (all reported back as duplicates by DSACK).
    """

    shapes = True

    def __init__(self, topo: Topology, leaf: str = "pfifo", burst: str = "tc") -> None:
        """`burst` "tc": tc's default burst and cburst (one MTU on a kernel whose packet scheduler clock runs at
        1 GHz, as here); "imqd": imqd's default for the rate (:func:`imqd.config.default_burst`, 10 ms of rate
        plus an MTU), so that both shapers have the same class."""
        super().__init__(topo)
        if leaf not in ("pfifo", "fq_codel"):
            raise ValueError(f"leaf: expected 'pfifo' or 'fq_codel', got {leaf!r}")
        if burst not in ("tc", "imqd"):
            raise ValueError(f"burst: expected 'tc' or 'imqd', got {burst!r}")
        self.leaf = leaf
        self.burst = burst
        self.name = "kernel-htb" if leaf == "pfifo" else "kernel-htb+fq_codel"
        self._ifaces: set[str] = set()

    def set_rate(self, direction: str, bps: int) -> None:
        """A fresh HTB (empty queue) at `bps`: the old root qdisc of that direction is deleted first, because
        ``tc qdisc replace`` cannot change an existing HTB root (and a fresh queue makes runs independent)."""
        topo = self.topo
        if direction == UP:
            dev = topo.wan_iface
        elif direction == DOWN:
            if len(topo.clients) != 1:  # one lan egress carries the whole download only with one client
                raise ValueError(f"KernelHtb shapes downloads on the lan egress: expected a topology with one "
                                 f"client, got {len(topo.clients)}")
            dev = topo.clients[0].router_iface
        else:
            raise ValueError(f"direction: expected {UP!r} or {DOWN!r}, got {direction!r}")
        topo.exec(topo.router_ns, ["tc", "qdisc", "del", "dev", dev, "root"], check=False)
        size = str(default_burst(bps)) if self.burst == "imqd" else None  # None: tc's default
        topo.htb(topo.router_ns, dev, bps, burst=size, cburst=size)
        self._ifaces.add(dev)
        leaf = ["pfifo", "limit", str(FIFO_LIMIT)] if self.leaf == "pfifo" else ["fq_codel"]
        topo.exec(topo.router_ns, ["tc", "qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:", *leaf])

    def stop(self) -> None:
        for iface in self._ifaces:
            self.topo.clear_tc(self.topo.router_ns, iface)
        self._ifaces.clear()


def read_queues(topo: Topology) -> dict[int, dict[str, int]]:
    return parse_nfqueue_table(topo.exec(topo.router_ns, ["cat", PROC_PATH]).stdout)


class BareLoop(System):
    """One ``bench.bare_loop`` process per queue (queue i pinned to CPU i, as imqd does) + imqd's rules."""

    def __init__(self, topo: Topology, queues: tuple[int, int] = (0, 0), log_dir: str | None = None,
                 batch: bool = False, extra: tuple[str, ...] = (), name: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__(topo)
        self.queues = queues
        self.batch = batch
        self.extra = extra
        self.name = name or f"bare-loop{'-batch' if batch else ''} x{queues[1] - queues[0] + 1}"
        self.config = config  # the imqd config whose rules it gets (None: imqd_config's, the wan interface)
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 10.0) -> None:
        wanted = list(range(self.queues[0], self.queues[1] + 1))
        for q, cpu in zip(wanted, worker_cpus(len(wanted))):  # pinned as imqd's supervisor pins its workers
            argv = [sys.executable, "-m", "bench.bare_loop", "--queue", str(q)]
            argv += [] if cpu is None else ["--cpu", str(cpu)]
            argv += (["--batch"] if self.batch else []) + list(self.extra)
            self.procs.append(self.topo.popen(self.topo.router_ns, argv, cwd=str(REPO), stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE))
        deadline = time.monotonic() + timeout
        while set(wanted) - set(read_queues(self.topo)):
            for p in self.procs:
                if p.poll() is not None:
                    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
                    raise RuntimeError(f"bare_loop exited {p.returncode}: {err.strip()[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"bare_loop queues {wanted} not bound after {timeout} s")
            time.sleep(0.05)
        # exactly the rules imqd installs for the benchmark's classes (imqd.rules.for_config)
        cfg = parse_config(self.config or imqd_config(self.topo))
        wanted = rules.for_config(rules.RuleOptions(queues=self.queues), cfg)
        rules.apply(wanted, runner=self.topo.runner(self.topo.router_ns))

    def stop(self) -> None:
        try:
            rules.remove(runner=self.topo.runner(self.topo.router_ns))
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.terminate()
            for p in self.procs:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self.procs.clear()

    def pids(self) -> list[int]:
        # `ip netns exec` execs the command, so the Popen pid is the Python process itself
        return [p.pid for p in self.procs if p.poll() is None]


def fq_codel_leaf() -> dict[str, Any] | None:
    """The class fields that give a class an fq_codel leaf in this imqd, or None when the config has no such key.

    The key is probed, not assumed: each candidate spelling must validate *and* make the shaper build an
    fq_codel leaf, so the benchmark follows the config format instead of guessing it.
    """
    from imqd import shaper

    candidates: list[dict[str, Any]] = []
    for key in ClassSpec.model_fields:
        if key == "fq_codel":
            candidates += [{key: {}}, {key: True}]
        elif any(word in key for word in ("leaf", "qdisc", "aqm", "sched", "queue")):
            candidates += [{key: "fq_codel"}, {key: {"kind": "fq_codel"}}, {key: {"type": "fq_codel"}},
                           {key: {"name": "fq_codel"}}]
    for fields in candidates:
        try:
            cfg = parse_config({"classes": [{"name": "x", "rate": "1mbit", **fields}]})
            if shaper.leaf_spec_for(cfg.classes[0]).kind == "fq_codel":
                return fields
        except Exception:  # noqa: BLE001 - a spelling this version does not accept
            continue
    return None


def imqd_config(topo: Topology, rate_bps: int = ABOVE_CAPACITY_BPS, *, limit: int = FIFO_LIMIT,
                leaf: dict[str, Any] | None = None, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``up`` (egress on wan) and ``down`` (ingress from wan) classes; overhead 14 as kernel HTB on a veth."""
    leaf = leaf or {}
    classes = [
        {"name": "up", "direction": "egress", "rate": rate_bps, "limit": limit, "match": {"oif": topo.wan_iface},
         **leaf},
        {"name": "down", "direction": "ingress", "rate": rate_bps, "limit": limit,
         "match": {"iif": topo.wan_iface}, **leaf},
    ]
    return {"overhead": 14, "classes": classes + list(extra or [])}


def descendants(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", encoding="ascii") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


class Imqd(System):
    """A real imqd in the router namespace; `workers` 1 -> ``--queues 0``, n -> ``--queues 0:n-1``."""

    shapes = True

    def __init__(self, topo: Topology, workers: int = 1, config: dict[str, Any] | None = None,
                 extra_args: tuple[str, ...] = (), name: str | None = None, start_timeout: float = 20.0) -> None:
        super().__init__(topo)
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers: expected an int >= 1, got {workers!r}")
        self.workers = workers
        self.name = name or f"imqd x{workers}"
        self.config = config if config is not None else imqd_config(topo)
        self.extra_args = extra_args
        self.start_timeout = start_timeout  # seconds until /healthz answers 200 (many classes start slower)
        self.inst: ImqdInstance | None = None

    @classmethod
    def per_cpu(cls, topo: Topology) -> Imqd:
        """imqd with a worker on every CPU this process may use and ``--policy cpu`` (report.PER_CPU)."""
        return cls(topo, len(os.sched_getaffinity(0)), extra_args=("--policy", "cpu"), name=report.PER_CPU)

    def start(self) -> None:
        self.launch()
        self.wait_started()

    def prepare(self) -> None:
        """Write the config file (PyYAML's pure-Python dumper: ~1.5 s for 10,000 classes, not imqd's start)."""
        queues = "0" if self.workers == 1 else f"0:{self.workers - 1}"
        self.inst = ImqdInstance(self.topo, self.config, queues=queues, extra_args=list(self.extra_args))

    def launch(self) -> None:
        """Start ``imqd run`` without waiting for it (bench.startup times the start with its own poller)."""
        if self.inst is None:
            self.prepare()
        self._require().launch()

    def wait_started(self) -> None:
        """Until ``/healthz`` answers 200 and every worker reported its pid."""
        self._require().wait_healthy(self.start_timeout)
        deadline = time.monotonic() + 10
        while len(self.worker_pids()) < self.workers:  # healthz is up; wait until every worker reports a pid
            if time.monotonic() > deadline:
                raise RuntimeError(f"imqd workers did not report within 10 s: {self.inst.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.inst is not None:
            self.inst.stop()
            self.inst = None

    def _require(self) -> ImqdInstance:
        if self.inst is None:
            raise RuntimeError("imqd is not running")
        return self.inst

    def set_rate(self, direction: str, bps: int) -> None:
        name = {UP: "up", DOWN: "down"}.get(direction)
        if name is None:
            raise ValueError(f"direction: expected {UP!r} or {DOWN!r}, got {direction!r}")
        status, body = self._require().request("PATCH", f"/classes/{name}", {"rate": bps, "ceil": None})
        if status != 200:
            raise RuntimeError(f"PATCH /classes/{name}: {status} {body}")

    def stats(self) -> dict[str, Any]:
        return self._require().stats()

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.stats()["workers"] if w.get("pid")]

    def pids(self) -> list[int]:
        inst = self._require()
        assert inst.proc is not None
        return descendants(inst.proc.pid)
