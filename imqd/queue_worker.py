"""One NFQUEUE worker: the only module that touches netfilterqueue.

A worker binds one queue number, copies only the first ``copy_range`` bytes of
each packet (the headers), and hands them to the :class:`~imqd.shaper.Shaper`.
The packet itself stays in the kernel until the worker issues its verdict:
``accept()`` re-injects it where it left the hook (IMQ's ``okfn`` through
``nf_reinject``), ``drop()`` discards it when a queue overflows.

The loop is a watchdog loop: ``select()`` on the netlink socket and the
control pipe with the scheduler's next release time as the timeout
(microsecond resolution, unlike ``poll()``), drain what arrived with
``run(block=False)``, send the batch verdict for what may go, then release
what is due.  Verdicts are issued in release order, which is arrival order
within a flow, so a flow is never reordered.  While traffic flows, the loop
also wakes every ``idle_tick`` (1 ms) so that the CPU and the worker's code stay
warm for the next packet (:func:`imqd.worker_timing.sleep_time`).

Nothing a packet contains may crash the worker: malformed headers are counted
and accepted; any unexpected error in the callback accepts the packet.

Here is the worker itself: the per-packet path, the verdicts, the loop and the
control channel.  Around it, with no netfilterqueue: :mod:`imqd.worker_process`
(the process: signals, CPU, shared memory, first configuration),
:mod:`imqd.worker_options` (options and counters), :mod:`imqd.worker_timing`
(the loop's timeout), :mod:`imqd.worker_stats` (the stats message) and
:mod:`imqd.bind_errors` (why a bind failed).
"""

from __future__ import annotations

import functools
import os
import select
import sys
import time
from typing import Any, Callable

from imqd import worker_stats
from imqd.bind_errors import WorkerError, describe_bind_error
from imqd.gcpause import paused
from imqd.kernel_queues import read_nfqueue_table
from imqd.links import REFRESH_S, IfaceNames, LinkCosts
from imqd.memtrim import trim
from imqd.nfnetlink import NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO, VerdictBatch, id_before
from imqd.packet import MalformedPacket
from imqd.qdisc.base import QueuedPacket
from imqd.queue_flags import QueueFlags, Replay, describe_answer, request_flag
from imqd.realtime import scheduling
from imqd.shaper import NeedsWholeConfig, Shaper
from imqd.worker_options import WorkerCounters, WorkerOptions
from imqd.worker_timing import KEEP_WARM_S, STATS_INTERVAL_S, sleep_time

BATCH_MAX = 64  # packets whose accept may wait for one batch verdict (bounds the added delay)
SOLO_MAX = 3  # the first packets of each socket drain are accepted one by one (low latency at light load)
# At most this many packets per socket drain: netfilterqueue's run(block=False) returns only when the socket is
# empty, which under sustained overload is never -- and then no control message (a config change, a stop)
# and no stats would be handled. 2,048 packets are ~10 ms of a worker's work.
DRAIN_MAX = 2048
NO_LIMIT = sys.maxsize  # outside drain_socket (tests, a packet handled on its own): no pause


class DrainPause(BaseException):
    """Raised by the packet callback to end a socket drain early (``DRAIN_MAX``); netfilterqueue passes the
    callback's exception out of ``run()`` after the packet it was handling. A BaseException so that the
    callback's own ``except Exception`` (a worker never dies of one packet) does not swallow it."""


class QueueWorker:
    """Binds one NFQUEUE and runs the shaper on its packets until told to stop.

    Verdicts for packets that may go at once are not issued one by one under load: past the first
    ``SOLO_MAX`` packets of a drain of the socket (light load: those go at once, for latency), they collect
    in ``_ok`` and leave together in one ``NFQNL_MSG_VERDICT_BATCH`` (:mod:`imqd.nfnetlink`) at the end of
    the drain, or every ``BATCH_MAX`` packets.  A batch accepts every packet the kernel still has up to an id,
    so it is only sent when no packet the shaper holds is older than the newest packet in ``_ok``:
    ``_first_held`` is the id of the first packet held since the shaper was last seen empty (every packet
    the shaper keeps passes ``_on_held``), a lower bound for every id it holds; None means it holds
    nothing.  Otherwise the packets get individual verdicts.  Before any held packet is
    released, ``_ok`` is flushed, so verdicts follow arrival order within a flow.
    """

    def __init__(self, opts: WorkerOptions, shaper: Shaper, control: Any | None = None,
                 links: LinkCosts | None = None) -> None:
        self.opts = opts
        self.shaper = shaper
        self.control = control  # multiprocessing Connection to the supervisor, or None
        self.counters = WorkerCounters()
        self.ifaces = IfaceNames()
        self.links = links if links is not None else LinkCosts()  # MTUs: what a GSO super-packet costs
        self.flags = QueueFlags()
        self.queue_full_samples = 0  # stats samples that found the kernel queue at its max length
        self._nfq: Any = None
        self._stop = False
        self._clock = time.monotonic
        self._ok: list[Any] = []  # packets to accept, in arrival order, verdict not yet sent
        self._drain_start = 0  # counters.packets when the current drain of the socket began
        self._drain_limit = NO_LIMIT  # packets after which a drain pauses (DRAIN_MAX inside drain_socket)
        self._first_held: int | None = None
        self._batch = VerdictBatch(opts.queue)
        # writes one netlink message to the queue's socket; None = no batching (individual verdicts)
        self.write_verdicts: Callable[[bytes], object] | None = None

    # -- the per-packet path -------------------------------------------------
    def _on_packet(self, pkt: Any) -> None:
        c = self.counters
        c.packets += 1
        try:
            hook = pkt.hook
            c.by_hook[hook] += 1
            tree = self.shaper.by_hook[hook]
            if tree is not None:
                now = self._clock()
                try:
                    dropped = tree.admit(pkt, pkt.get_payload(), self.ifaces, now, self.links)
                except MalformedPacket:
                    c.malformed += 1
                    dropped = None
                if dropped is not None:
                    self._on_held(pkt, dropped, now)
                    return
        except Exception:  # noqa: BLE001 - a worker must never die of one packet
            # Accept it on its own (after the older ones): if the scheduler did keep it, netfilterqueue
            # refuses the second verdict at release ("verdict already given"), which _accept_all counts.
            c.errors += 1
            self.flush()
            self._accept_all([pkt])
            return
        ok = self._ok
        if not ok and c.packets - self._drain_start <= SOLO_MAX:
            # Light load: the first packets of a drain go at once, as a bare accept loop would -- the
            # verdict then needs no more Python (and no cold cache lines) than that loop does.
            try:
                pkt.accept()
                c.accepted += 1
                return
            except Exception:  # noqa: BLE001 - fall back to the batch
                c.errors += 1
        ok.append(pkt)
        if len(ok) >= BATCH_MAX:
            self.flush()
            if self.counters.packets - self._drain_start >= self._drain_limit:
                raise DrainPause

    def _on_held(self, pkt: Any, dropped: list[QueuedPacket], now: float) -> None:
        """The shaper kept ``pkt`` (or dropped it): verdicts for the drops, then whatever is due now."""
        if self._first_held is None:
            self._first_held = pkt.id
        if dropped:
            self._drop_all(dropped)
        self._release(now)
        if self.counters.packets - self._drain_start >= self._drain_limit:
            raise DrainPause

    def drain_socket(self) -> None:
        """Handle what the socket holds, at most about ``DRAIN_MAX`` packets, then send the batch verdict; the
        rest waits for the next turn of the loop (which handles control messages and stats in between)."""
        self.begin_drain()
        self._drain_limit = DRAIN_MAX
        try:
            self._nfq.run(block=False)
        except DrainPause:
            self.counters.drain_pauses += 1
        finally:
            self._drain_limit = NO_LIMIT
        self.flush()

    def begin_drain(self) -> None:
        """A drain of the socket starts: its first SOLO_MAX packets may be accepted one by one."""
        self._drain_start = self.counters.packets

    def service(self, now: float) -> None:
        """Between socket drains: release what the scheduler lets go at ``now``."""
        if self.shaper.busy:
            self._release(now)
        else:
            self._first_held = None  # nothing held: every later batch is safe again

    def flush(self) -> None:
        """Send the verdicts of the packets waiting in ``_ok``: one batch message when that is safe.

        Called after each drain of the socket (and every BATCH_MAX packets, and before anything else gets
        a verdict)."""
        ok = self._ok
        if not ok:
            return
        self._ok = []
        write = self.write_verdicts
        last = ok[-1].id
        first_held = self._first_held
        safe = first_held is None or id_before(last, first_held)
        if not safe and not self.shaper.busy:  # what was held has gone since: nothing can be swept up
            self._first_held = None
            safe = True
        if write is not None and safe:
            try:
                write(self._batch.message(last))
                self.counters.accepted += len(ok)
                self.counters.batches += 1
                return
            except OSError:
                self.counters.errors += 1  # fall back to one verdict each
        self._accept_all(ok)

    def _release(self, now: float) -> None:
        shaper = self.shaper
        pkts = shaper.release(now)
        if pkts:
            self.flush()  # older packets first: keeps each flow in order
            self._accept_all(pkts)
        self._drop_all(shaper.take_dropped())

    def _drop_all(self, pkts: list[QueuedPacket]) -> None:
        for p in pkts:
            try:
                p.handle.drop()
            except Exception:
                self.counters.errors += 1
        self.counters.dropped += len(pkts)

    def _accept_all(self, pkts: list[Any]) -> None:
        """Accept each of ``pkts`` (netfilterqueue packets, or QueuedPackets holding one) on its own."""
        for p in pkts:
            try:
                (p.handle if isinstance(p, QueuedPacket) else p).accept()
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
        self.write_verdicts = functools.partial(os.write, nfq.get_fd())
        self.set_queue_flags()

    def set_queue_flags(self) -> None:
        """Ask the kernel for the queue flags the options want (a fresh queue has none) and record its answers.

        A kernel that refuses GSO (``EOPNOTSUPP``: older than 3.10) segments super-packets before queueing,
        as without the flag: the worker runs as before and says so in ``flags``.
        """
        opts = self.opts
        flags = self.flags
        if opts.gso:
            error = self._set_flag(NFQA_CFG_F_GSO)
            flags.gso = None if error is None else error == 0
            flags.gso_status = describe_answer("NFQA_CFG_F_GSO", error)
        if opts.fail_open:
            error = self._set_flag(NFQA_CFG_F_FAIL_OPEN)
            flags.fail_open = None if error is None else error == 0
            answer = describe_answer("NFQA_CFG_F_FAIL_OPEN", error)
            flags.overflow_status = "accept" if error == 0 else f"{'accept' if error is None else 'drop'} ({answer})"

    def _set_flag(self, bit: int) -> int | None:
        """Set one flag bit on the bound queue; the kernel's answer (0, -errno, or None if unseen).

        Packet messages read while waiting for the answer go to netfilterqueue after it, in order."""
        error, others = request_flag(self._nfq.get_fd(), self.opts.queue, bit)
        if others:
            self._nfq.run_socket(Replay(others))
            self.flush()
        return error

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
        tick = self.opts.idle_tick
        next_stats = 0.0
        next_refresh = clock() + REFRESH_S
        warm_until = 0.0
        try:
            while not self._stop:
                now = clock()
                timeout = sleep_time(now, shaper.next_event(now), warm_until, tick)
                ready, _, _ = select.select(watch, [], [], timeout)  # retried on EINTR (PEP 475)
                if ready:
                    if fd in ready:
                        warm_until = now + KEEP_WARM_S
                        # Handles every packet already received; netfilterqueue itself skips ENOBUFS
                        # (socket overflow: the kernel dropped packets and counts them as user_dropped).
                        self.drain_socket()
                    if ctrl is not None and ctrl in ready:
                        self._on_control()
                now = clock()
                self.service(now)
                if now >= next_stats and ctrl is not None:
                    self.send_stats()
                    next_stats = now + STATS_INTERVAL_S
                if now >= next_refresh:
                    self.links.refresh()  # MTUs may have changed, devices come and gone
                    next_refresh = now + REFRESH_S
        finally:
            self.flush()
            self._accept_all(shaper.drain())
            try:
                nfq.unbind()
            except Exception:
                pass

    # -- control channel -----------------------------------------------------
    def _on_control(self) -> None:
        ctrl = self.control
        while ctrl.poll():
            with paused():  # unpickling and applying a big change: no collection until done (imqd.gcpause)
                try:
                    msg = ctrl.recv()
                except (EOFError, OSError):
                    self._stop = True  # supervisor gone: release everything and exit
                    return
                whole = msg[0] == "config"
                self.handle_message(msg)
                del msg
            if whole:  # the whole configuration, dropped now: give back what it used (imqd.memtrim)
                trim()

    def handle_message(self, msg: tuple[Any, ...]) -> None:
        self.flush()  # what the change releases must not overtake packets already let through
        kind = msg[0]
        now = self._clock()
        if kind == "config":
            _, version, _kept, slots, config, enabled = msg  # the order: see supervisor.config_message
            try:
                released = self.shaper.apply(config, now, slots, version)
                released += self.shaper.set_enabled(enabled)
            except Exception as exc:  # the supervisor validated it; report, keep the old tree
                self._send(("error", version, f"{type(exc).__name__}: {exc}"))
                return
            self._accept_all(released)
            self._drop_all(self.shaper.take_dropped())
            self._send(("applied", version))
        elif kind == "delta":
            self._apply_delta(msg, now)
        elif kind == "enabled":
            _, version, enabled = msg
            self._accept_all(self.shaper.set_enabled(bool(enabled)))
            self.shaper.version = version
            self._send(("applied", version))
        elif kind == "stop":
            self._stop = True

    def _apply_delta(self, msg: tuple[Any, ...], now: float) -> None:
        """A change as a delta on top of version ``version - 1``; one already applied (a restarted worker got
        the whole configuration of that version) is acknowledged again.  A gap (a delta this worker never
        received, or one it refused) asks the supervisor for the whole configuration instead."""
        _, version, delta, slots_added, enabled = msg
        shaper = self.shaper
        if version <= shaper.version:
            self._send(("applied", shaper.version))
            return
        if version != shaper.version + 1:
            self._send(("resync", version, shaper.version))
            return
        try:
            released = shaper.apply_delta(delta, now, slots_added, version)
            released += shaper.set_enabled(enabled)
        except NeedsWholeConfig:  # a reorder, a first or last class of a direction...: the whole config, please
            self._send(("resync", version, shaper.version))
            return
        except Exception as exc:  # the supervisor validated it; report, keep the old tree, ask for the whole
            self._send(("error", version, f"{type(exc).__name__}: {exc}"))
            self._send(("resync", version, shaper.version))
            return
        self._accept_all(released)
        self._drop_all(shaper.take_dropped())
        self._send(("applied", version))

    def _send(self, msg: tuple[Any, ...]) -> None:
        if self.control is None:
            return
        try:
            self.control.send(msg)
        except (BrokenPipeError, OSError):
            self._stop = True

    def stats(self) -> dict[str, Any]:
        """The stats message's body (:mod:`imqd.worker_stats`)."""
        now = self._clock()  # one reading: the tokens are projected to the time the stats report
        return {"queue": self.opts.queue, "cpu": self.opts.cpu, "pid": os.getpid(),
                **worker_stats.counter_stats(self.counters),
                **self.flag_stats(), **self.links.counters(), **self.overflow_stats(),
                **worker_stats.shaper_stats(self.shaper),
                "scheduling": scheduling(), "time": now}

    def flag_stats(self) -> dict[str, Any]:
        return worker_stats.flag_stats(self.flags)

    def overflow_stats(self) -> dict[str, int]:
        """What the kernel could not queue for this worker (:func:`imqd.worker_stats.overflow_stats`); a sample
        that finds the queue at its max length is counted in ``queue_full_samples``."""
        row = read_nfqueue_table().get(self.opts.queue) if self._nfq is not None else None
        if row is not None and row["waiting"] >= self.opts.max_len:
            self.queue_full_samples += 1
        return worker_stats.overflow_stats(row, self.counters.packets, self.shaper.held + len(self._ok),
                                           self.flags.fail_open, self.queue_full_samples)

    def send_stats(self) -> None:
        self._send(("stats", self.stats()))
