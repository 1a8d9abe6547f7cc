"""One NFQUEUE worker: the only module that touches netfilterqueue.

A worker binds one queue number, copies only the first ``copy_range`` bytes of
each packet (the headers), and hands them to the :class:`~imqd.shaper.Shaper`.
The packet itself stays in the kernel until the worker issues its verdict:
``accept()`` re-injects it where it left the hook (IMQ's ``okfn`` through
``nf_reinject``), ``drop()`` discards it when a queue overflows.

The loop is a watchdog loop: ``select()`` on the netlink socket and the
control pipe with the scheduler's next release time as the timeout
(microsecond resolution, unlike ``poll()``), drain what arrived with
``run(block=False)``, then release what is due.  Verdicts are issued in
release order, which is arrival order within a flow, so a flow is never
reordered.

Nothing a packet contains may crash the worker: malformed headers are counted
and accepted; any unexpected error in the callback accepts the packet.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from imqd.kernel_queues import PROC_PATH, read_nfqueue_table
from imqd.packet import MalformedPacket, parse_headers
from imqd.qdisc.base import QueuedPacket
from imqd.shaper import PASS, Shaper

# netfilterqueue's Packet.hook values (NF_INET_*): PREROUTING, INPUT and FORWARD
# feed the ingress tree (FORWARD/INPUT are used on NAT routers, after de-NAT);
# OUTPUT and POSTROUTING feed the egress tree.
INGRESS_HOOKS = frozenset({0, 1, 2})

STATS_INTERVAL_S = 0.5
MAX_SLEEP_S = 0.25

EXIT_FATAL = 3  # the supervisor must not restart: bad queue number, queue busy, no permission


@dataclass
class WorkerOptions:
    """What a worker needs to start (picklable: sent to a spawned process)."""

    queue: int
    cpu: int | None
    max_len: int = 20000
    copy_range: int = 128
    sock_len: int = 8 * 1024 * 1024
    shm_name: str | None = None


@dataclass(slots=True)
class WorkerCounters:
    packets: int = 0
    accepted: int = 0
    dropped: int = 0
    malformed: int = 0
    errors: int = 0


class IfaceNames:
    """ifindex -> name, cached (interfaces rarely change; refreshed on a miss)."""

    __slots__ = ("_names",)

    def __init__(self) -> None:
        self._names: dict[int, str | None] = {0: None}

    def get(self, index: int) -> str | None:
        try:
            return self._names[index]
        except KeyError:
            try:
                name: str | None = socket.if_indextoname(index)
            except OSError:
                name = None
            self._names[index] = name
            return name


class QueueWorker:
    """Binds one NFQUEUE and runs the shaper on its packets until told to stop."""

    def __init__(self, opts: WorkerOptions, shaper: Shaper, control: Any | None = None) -> None:
        self.opts = opts
        self.shaper = shaper
        self.control = control  # multiprocessing Connection to the supervisor, or None
        self.counters = WorkerCounters()
        self.ifaces = IfaceNames()
        self._nfq: Any = None
        self._stop = False
        self._clock = time.monotonic

    # -- the per-packet path -------------------------------------------------
    def _on_packet(self, pkt: Any) -> None:
        c = self.counters
        c.packets += 1
        try:
            direction = "ingress" if pkt.hook in INGRESS_HOOKS else "egress"
            if not self.shaper.shapes(direction):  # no classes there, or shaping off: no need to look
                pkt.accept()
                c.accepted += 1
                return
            now = self._clock()
            try:
                info = parse_headers(pkt.get_payload())
            except MalformedPacket:
                c.malformed += 1
                pkt.accept()
                c.accepted += 1
                return
            verdict, dropped = self.shaper.admit(
                info, direction, pkt.get_mark(), self.ifaces.get(pkt.indev), self.ifaces.get(pkt.outdev), pkt, now
            )
            for d in dropped:
                d.handle.drop()
            c.dropped += len(dropped)
            if verdict == PASS:
                pkt.accept()
                c.accepted += 1
            else:
                self._release(now)
        except Exception:  # noqa: BLE001 - a worker must never die of one packet
            c.errors += 1
            try:
                pkt.accept()
                c.accepted += 1
            except Exception:  # already given a verdict
                pass

    def _release(self, now: float) -> None:
        shaper = self.shaper
        pkts = shaper.release(now)
        for p in pkts:
            p.handle.accept()
        self.counters.accepted += len(pkts)
        self._drop_all(shaper.take_dropped())

    def _drop_all(self, pkts: list[QueuedPacket]) -> None:
        for p in pkts:
            try:
                p.handle.drop()
            except Exception:
                self.counters.errors += 1
        self.counters.dropped += len(pkts)

    def _accept_all(self, pkts: list[QueuedPacket]) -> None:
        for p in pkts:
            try:
                p.handle.accept()
            except Exception:
                self.counters.errors += 1
        self.counters.accepted += len(pkts)

    # -- setup and loop ------------------------------------------------------
    def bind(self) -> None:
        """Bind the queue; raise WorkerError with one clear line if that is impossible."""
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        try:
            nfq = NetfilterQueue()
            nfq.bind(self.opts.queue, self._on_packet, max_len=self.opts.max_len, mode=COPY_PACKET,
                     range=self.opts.copy_range, sock_len=self.opts.sock_len)
        except OSError as exc:
            raise WorkerError(describe_bind_error(self.opts.queue, exc)) from None
        self._nfq = nfq

    def stop(self) -> None:
        self._stop = True

    def run(self) -> None:
        """Serve packets until stop(); then accept every held packet and unbind."""
        nfq = self._nfq
        fd = nfq.get_fd()
        ctrl = self.control
        watch = [fd] if ctrl is None else [fd, ctrl]
        clock = self._clock
        shaper = self.shaper
        next_stats = 0.0
        try:
            while not self._stop:
                now = clock()
                wake = shaper.next_event(now)
                timeout = MAX_SLEEP_S if wake is None else min(max(wake - now, 0.0), MAX_SLEEP_S)
                ready, _, _ = select.select(watch, [], [], timeout)  # retried on EINTR (PEP 475)
                if ready:
                    if fd in ready:
                        # Handles every packet already received; netfilterqueue itself skips ENOBUFS
                        # (socket overflow: the kernel dropped packets and counts them as user_dropped).
                        nfq.run(block=False)
                    if ctrl is not None and ctrl in ready:
                        self._on_control()
                now = clock()
                if shaper.busy:
                    self._release(now)
                if now >= next_stats and ctrl is not None:
                    self.send_stats()
                    next_stats = now + STATS_INTERVAL_S
        finally:
            self._accept_all(shaper.drain())
            try:
                nfq.unbind()
            except Exception:
                pass

    # -- control channel -----------------------------------------------------
    def _on_control(self) -> None:
        ctrl = self.control
        while ctrl.poll():
            try:
                msg = ctrl.recv()
            except (EOFError, OSError):
                self._stop = True  # supervisor gone: release everything and exit
                return
            self.handle_message(msg)

    def handle_message(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        now = self._clock()
        if kind == "config":
            _, version, config, slots, enabled = msg
            try:
                released = self.shaper.apply(config, now, slots, version)
                released += self.shaper.set_enabled(enabled)
            except Exception as exc:  # the supervisor validated it; report, keep the old tree
                self._send(("error", version, f"{type(exc).__name__}: {exc}"))
                return
            self._accept_all(released)
            self._drop_all(self.shaper.take_dropped())
            self._send(("applied", version))
        elif kind == "enabled":
            _, version, enabled = msg
            self._accept_all(self.shaper.set_enabled(bool(enabled)))
            self.shaper.version = version
            self._send(("applied", version))
        elif kind == "stop":
            self._stop = True

    def _send(self, msg: tuple[Any, ...]) -> None:
        if self.control is None:
            return
        try:
            self.control.send(msg)
        except (BrokenPipeError, OSError):
            self._stop = True

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "queue": self.opts.queue,
            "cpu": self.opts.cpu,
            "pid": os.getpid(),
            "packets": c.packets,
            "verdicts": c.accepted + c.dropped,
            "accepted": c.accepted,
            "drops": c.dropped,
            "malformed": c.malformed,
            "errors": c.errors,
            "held": self.shaper.held,
            "version": self.shaper.version,
            "enabled": self.shaper.enabled,
            "classes": self.shaper.class_stats(),
            "time": self._clock(),
        }

    def send_stats(self) -> None:
        self._send(("stats", self.stats()))


class WorkerError(Exception):
    """A worker cannot start; the message is one line for the operator."""


def describe_bind_error(queue: int, exc: OSError) -> str:
    """Turn netfilterqueue's bind failure into one line that says what to do."""
    if not has_net_admin():
        return f"queue {queue}: binding NFQUEUE needs CAP_NET_ADMIN (run as root or grant the capability)"
    if not os.path.exists(PROC_PATH):
        return f"queue {queue}: the kernel has no nfnetlink_queue support (modprobe nfnetlink_queue)"
    if queue_is_bound(queue):
        return f"queue {queue}: already bound by another process (is another imqd running?)"
    return f"queue {queue}: cannot bind NFQUEUE: {exc}"


def has_net_admin() -> bool:
    """True if this process has CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))
    except OSError:
        pass
    return False


def queue_is_bound(queue: int) -> bool:
    """Whether some process is bound to ``queue`` in this network namespace."""
    return queue in read_nfqueue_table()


def pin_to_cpu(cpu: int | None) -> None:
    if cpu is None:
        return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass


def worker_main(opts: WorkerOptions, control: Any, lock: Any) -> None:
    """Entry point of a worker process (spawned by the supervisor)."""
    from imqd.shared_tokens import SharedTokenStore

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    pin_to_cpu(opts.cpu)
    store = SharedTokenStore.attach(opts.shm_name, lock) if opts.shm_name else None
    shaper = Shaper(tokens=store) if store is not None else Shaper()
    worker = QueueWorker(opts, shaper, control)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    # Take the first configuration before binding, so no packet is ever seen unconfigured.
    msg = control.recv()
    worker.handle_message(msg)
    try:
        worker.bind()
    except WorkerError as exc:
        worker._send(("fatal", str(exc)))
        sys.exit(EXIT_FATAL)
    worker._send(("ready", opts.queue, os.getpid()))
    try:
        worker.run()
        worker.send_stats()
    finally:
        if store is not None:
            store.close()
