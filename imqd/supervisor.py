"""Starts one worker process per NFQUEUE, keeps them alive, and talks to them.

The supervisor owns what must outlive a worker: the shared token store (so a
restarted worker continues the class rates where the dead one left them),
the class-name -> token-slot map, the current configuration and its version.
A change travels to the workers as a :class:`~imqd.config_delta.ConfigDelta`
(only what changed); a (re)started worker, or one that missed a delta, gets
the whole configuration once.
A monitor thread receives the workers' messages (ready, applied, stats,
fatal) and restarts a worker within a second of its death, backing off when
one crashes in a loop.

Workers are started with the ``forkserver`` method: forks of a clean,
single-threaded server process that has the worker's modules imported
already, so nothing (threads, sockets of the API server) is inherited from
the supervisor, and a restart takes milliseconds, not an interpreter start.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from typing import Any

from imqd.config import Config, ConfigDelta
from imqd.kernel_queues import DEFAULT_HELD_MAX, PROC_PATH, read_nfqueue_table
from imqd.qdisc.tokens import SlotMap
from imqd.shared_counters import FIELD, FIELDS_PER_COUNTER_SLOT, SharedCounters
from imqd.shared_hosts import SharedHostTable
from imqd.shared_tokens import SharedTokenStore, free_if_stuck
from imqd.stats_sampler import (SAMPLE_INTERVAL_S, CounterSnapshot, LinkHistory, RateMeter, TreeIndex,
                                build_snapshot, empty_snapshot)
from imqd.worker_config import worker_config, worker_delta
from imqd.worker_options import WorkerOptions
from imqd.worker_process import EXIT_FATAL, worker_main
from imqd.worker_timing import IDLE_TICK_S

log = logging.getLogger("imqd.supervisor")

START_TIMEOUT_S = 15.0
APPLY_TIMEOUT_S = 2.0
CRASH_WINDOW_S = 10.0
CRASH_LOOP_COUNT = 5
MAX_BACKOFF_S = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


WORKER_MODULES = ["imqd.worker_process", "imqd.queue_worker", "imqd.shaper", "imqd.shared_tokens", "imqd.shared_hosts",
                  "netfilterqueue"]


def start_forkserver() -> Any:
    """The ``forkserver`` context, its server process started (idempotent).

    The fork server imports the worker's modules once; a (re)started worker is then a fork of that clean,
    single-threaded process: milliseconds instead of a new interpreter.  Starting it before the
    configuration is read lets those imports (~0.25 s) run while the supervisor parses the file."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_MODULES)
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return ctx


class SupervisorError(Exception):
    """Workers could not be started; the message is one line for the operator."""


@dataclass
class WorkerSlot:
    """Everything the supervisor knows about the worker of one queue."""

    queue: int
    cpu: int | None
    process: Any = None
    conn: Connection | None = None
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    pid: int | None = None
    ready: bool = False
    applied: int = -1
    restarts: int = 0
    crashes: list[float] = field(default_factory=list)
    restart_at: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    fatal: str | None = None
    lost_on_crash: int = 0
    load: WorkerLoad = field(default_factory=lambda: WorkerLoad())
    died_at: float | None = None
    last_restart_s: float | None = None  # from death noticed to the new worker bound
    resync: bool = False  # it asked for the whole configuration (it missed or refused a delta)


@dataclass
class WorkerLoad:
    """Packets/s and CPU use of one worker between two samples: whether the load is spread over the CPUs."""

    at: float | None = None
    packets: int = 0
    cpu_s: float = 0.0
    packets_per_second: float = 0.0
    cpu_percent: float = 0.0

    def update(self, now: float, packets: int, cpu_s: float | None) -> None:
        if self.at is not None and now > self.at:
            dt = now - self.at
            self.packets_per_second = max(0, packets - self.packets) / dt
            if cpu_s is not None:
                self.cpu_percent = max(0.0, cpu_s - self.cpu_s) * 100.0 / dt
        self.at, self.packets, self.cpu_s = now, packets, cpu_s if cpu_s is not None else self.cpu_s


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of ``pid`` (from /proc), or None when it cannot be read."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat
    except (OSError, IndexError, ValueError):
        return None


def kernel_queue_stats(path: str = PROC_PATH) -> dict[int, dict[str, int]]:
    """Per bound queue: packets waiting in the kernel, and the kernel's own drop counters."""
    return {q: {"kernel_waiting": row["waiting"], "queue_dropped": row["queue_dropped"],
                "user_dropped": row["user_dropped"]} for q, row in read_nfqueue_table(path).items()}


def worker_cpus(count: int, cpus: Sequence[int] | None = None) -> list[int | None]:
    """The CPU each of ``count`` workers is pinned to: round robin over ``cpus`` (default: this process's
    CPUs, in order), so queue A runs on the first.  No CPUs (an empty list): nobody is pinned."""
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else list(cpus)
    return [cpus[i % len(cpus)] if cpus else None for i in range(count)]


def kept_strings(config: Config) -> tuple[str, ...]:
    """The strings of ``config`` a worker keeps after applying it (class names, parents, addresses), to be
    pickled *ahead* of it in the config message.

    Unpickled first, they sit together in memory; unpickled inside the config, one kept name per class would
    pin every page of the config's models, which the worker drops once applied (~2 KB per class of RSS)."""
    out: list[str] = []
    for c in config.classes:
        out.append(c.name)
        if c.parent is not None:
            out.append(c.parent)
        m = c.match
        if m is not None:
            for v in (m.src, m.dst):
                if isinstance(v, str):
                    out.append(v)
                elif v is not None:
                    out.extend(v)
    return tuple(out)


def config_message(version: int, config: Config, slots: dict[str, int], enabled: bool) -> tuple[Any, ...]:
    """``("config", version, kept strings, slots, worker config, enabled)``: the validated ``config`` as a worker
    reads it (:mod:`imqd.worker_config`: ~100 bytes of transient per class instead of ~1,800 of pickled
    models), which it need not validate again.

    What the worker keeps of the message comes first, so that it is unpickled first, together: the strings
    (:func:`kept_strings`) and the slot numbers (ints are never pickled as references: each is a new object).
    The rows it drops after applying them then fill arenas of their own, which go back to the system whole;
    with the slots after them, their ints pinned those arenas (~80 bytes a class of RSS)."""
    return ("config", version, kept_strings(config), dict(slots), worker_config(config), enabled)


class Supervisor:
    """One worker per queue, restarted when it dies; configuration pushed to all."""

    def __init__(self, queues: list[int], config: Config, *, max_len: int = 20000, copy_range: int = 128,
                 idle_tick: float = IDLE_TICK_S, cpus: list[int] | None = None, gso: bool = True,
                 fail_open: bool = False, held_max: int = DEFAULT_HELD_MAX, realtime: int = 0) -> None:
        if not queues:
            raise SupervisorError("no queues given")
        self.ctx = start_forkserver()
        self.lock = self.ctx.Lock()
        # The lock the workers charge under: none for one worker, the only one charging the store (that is ~10%
        # of its per-packet work), which also keeps its per_host caps to itself; several share both.
        self.worker_lock = self.lock if len(queues) > 1 else None
        self.store = SharedTokenStore.create(self.lock)
        self.hosts = SharedHostTable.create(self.lock, len(queues)) if self.worker_lock is not None else None
        self.slot_map = SlotMap(self.store, self.store.slots)
        # Per-class counters: one block per worker (by queue order), rows numbered like the token store's slots.
        self.counters = SharedCounters.create(len(queues), self.store.slots)
        self.block_of = {q: i for i, q in enumerate(queues)}
        self._meter = RateMeter()
        self._tree: tuple[Config, dict[str, int], TreeIndex] | None = None
        self._snapshot: CounterSnapshot | None = None
        self._sample_lock = threading.Lock()
        self._counters_closed = False
        self.link_history = LinkHistory()
        self.config = config
        self.enabled = True
        self.version = 1
        self.assign_slots(config)
        self.workers = {q: WorkerSlot(q, cpu) for q, cpu in zip(queues, worker_cpus(len(queues), cpus))}
        self.max_len = max_len
        self.copy_range = copy_range
        self.idle_tick = idle_tick
        self.gso = gso  # ask for whole GSO super-packets (False: --no-gso)
        self.fail_open = fail_open  # --on-overflow accept
        self.held_max = held_max  # --max-held
        self.realtime = realtime  # --realtime: the workers' SCHED_FIFO priority (0: normal)
        self._refusals_logged: set[str] = set()  # queue flags the kernel refused, logged once each
        self._cond = threading.Condition()
        self._stopping = False
        self._started = False  # until start() returns, start() reports a fatal worker, not the monitor
        self._monitor: threading.Thread | None = None
        self._sampler: threading.Thread | None = None
        self.started_at = time.time()

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """Start every worker and wait until each has bound its queue (or failed)."""
        for w in self.workers.values():
            self._spawn(w)
        self._monitor = threading.Thread(target=self._monitor_loop, name="imqd-monitor", daemon=True)
        self._monitor.start()
        self._sampler = threading.Thread(target=self._sample_loop, name="imqd-stats", daemon=True)
        self._sampler.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        with self._cond:
            while True:
                fatal = [w.fatal for w in self.workers.values() if w.fatal]
                if fatal:
                    break
                if all(w.ready for w in self.workers.values()):
                    self._started = True
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        self.stop()
        if fatal:
            raise SupervisorError(fatal[0])
        raise SupervisorError(f"workers did not bind their queues within {START_TIMEOUT_S:.0f} s")

    def _spawn(self, w: WorkerSlot) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        opts = WorkerOptions(queue=w.queue, cpu=w.cpu, max_len=self.max_len, copy_range=self.copy_range,
                             shm_name=self.store.name, idle_tick=self.idle_tick,
                             hosts_shm_name=self.hosts.name if self.hosts is not None else None,
                             counters_shm_name=self.counters.name, counters_workers=self.counters.workers,
                             counters_slots=self.counters.slots, counters_block=self.block_of[w.queue],
                             gso=self.gso, fail_open=self.fail_open, held_max=self.held_max,
                             realtime=self.realtime)
        proc = self.ctx.Process(target=worker_main, args=(opts, child, self.worker_lock), name=f"imqd-q{w.queue}",
                                daemon=True)
        proc.start()
        child.close()
        w.process, w.conn, w.pid, w.ready, w.restart_at = proc, parent, proc.pid, False, None
        self._send(w, self._config_message())

    @property
    def slots(self) -> dict[str, int]:
        """Class name -> shared token-store slot, for every class of the current configuration."""
        return self.slot_map.slots

    def assign_slots(self, config: Config) -> dict[str, int]:
        """Shared token-store slots for every class of ``config`` (kept across changes)."""
        try:
            return self.slot_map.assign(c.name for c in config.classes)
        except ValueError as exc:
            raise SupervisorError(str(exc)) from None

    def _config_message(self) -> tuple[Any, ...]:
        """The whole configuration, for a (re)started worker or one that missed a delta (:func:`config_message`).
        Taken under the lock that changes move version, config and slots under, so the three belong together."""
        with self._cond:
            return config_message(self.version, self.config, self.slot_map.slots, self.enabled)

    def stop(self, timeout: float = 5.0) -> None:
        """Tell every worker to release its packets and exit; kill stragglers."""
        self._stopping = True
        for w in self.workers.values():
            self._send(w, ("stop",))
        deadline = time.monotonic() + timeout
        for w in self.workers.values():
            if w.process is not None:
                w.process.join(max(0.0, deadline - time.monotonic()))
                if w.process.is_alive():
                    w.process.kill()
                    w.process.join(1.0)
        for thread in (self._monitor, self._sampler):
            if thread is not None and thread is not threading.current_thread():
                thread.join(1.0)
        with self._sample_lock:
            self._counters_closed = True
            self.counters.close()
        self.store.close()
        if self.hosts is not None:
            self.hosts.close()

    # -- talking to workers --------------------------------------------------
    def _send(self, w: WorkerSlot, msg: tuple[Any, ...] | memoryview) -> bool:
        """Send ``msg`` to ``w``; ``msg`` may be pickled already (what ``conn.send`` would write)."""
        conn = w.conn
        if conn is None:
            return False
        with w.send_lock:
            try:
                if isinstance(msg, tuple):
                    conn.send(msg)
                else:
                    conn.send_bytes(msg)
                return True
            except (BrokenPipeError, OSError):
                return False

    def push_config(self, config: Config, timeout: float = APPLY_TIMEOUT_S) -> float:
        """Install ``config`` on every worker as one version; return seconds until all applied.

        ``config`` must already be validated.  Workers that die meanwhile get
        the new version when they are restarted.
        """
        with self._cond:
            self.assign_slots(config)
            self.config = config
            self.version += 1
            version = self.version
            msg = self._config_message()
        return self._broadcast_and_wait(msg, version, timeout)

    def push_delta(self, delta: ConfigDelta, config: Config, timeout: float = APPLY_TIMEOUT_S) -> float:
        """Install a change on every worker as one version: only ``delta`` travels (``config`` is the result,
        kept for workers started later); return seconds until all applied.

        Removed classes free their token slots before added ones take theirs, so a change never needs more
        slots than the larger of the two configurations.
        """
        with self._cond:
            self.slot_map.release(delta.removed)
            try:
                added = self.slot_map.add(c.name for c in delta.upserted)
            except ValueError as exc:  # config validation keeps classes within the store; cannot happen
                self.assign_slots(self.config)
                raise SupervisorError(str(exc)) from None
            self.config = config
            self.version += 1
            version = self.version
            msg = ("delta", version, worker_delta(delta, config.overhead), added, self.enabled)
        return self._broadcast_and_wait(msg, version, timeout)

    def set_enabled(self, enabled: bool, timeout: float = APPLY_TIMEOUT_S) -> float:
        with self._cond:
            self.enabled = enabled
            self.version += 1
            version = self.version
        # Only the switch travels; a worker (re)started later gets it with the config message.
        return self._broadcast_and_wait(("enabled", version, enabled), version, timeout)

    def _broadcast_and_wait(self, msg: tuple[Any, ...], version: int, timeout: float) -> float:
        t0 = time.monotonic()
        data = ForkingPickler.dumps(msg)  # once for every worker (a 20,000-class import: ~0.1-0.2 s each)
        for w in self.workers.values():
            self._send(w, data)
        deadline = t0 + timeout
        with self._cond:
            while not all(w.applied >= version or not self._alive(w) for w in self.workers.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("not every worker applied version %d within %.1f s", version, timeout)
                    break
                self._cond.wait(left)
        return time.monotonic() - t0

    @staticmethod
    def _alive(w: WorkerSlot) -> bool:
        return w.process is not None and w.process.is_alive()

    # -- monitor thread ------------------------------------------------------
    def _monitor_loop(self) -> None:
        while not self._stopping:
            conns = {w.conn: w for w in self.workers.values() if w.conn is not None}
            sentinels = {w.process.sentinel: w for w in self.workers.values()
                         if w.process is not None and w.restart_at is None}
            try:
                ready = wait(list(conns) + list(sentinels), timeout=0.1)
            except OSError:
                ready = []
            for obj in ready:
                if obj in conns:
                    self._receive(conns[obj])
            for obj in ready:
                if obj in sentinels:
                    self._on_exit(sentinels[obj])
            self._restart_due()

    def _receive(self, w: WorkerSlot) -> None:
        conn = w.conn
        try:
            while conn is not None and conn.poll():
                msg = conn.recv()
                self._on_message(w, msg)
        except (EOFError, OSError):
            w.conn = None
        if w.resync:
            w.resync = False
            self._send(w, self._config_message())

    def _on_message(self, w: WorkerSlot, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        with self._cond:
            if kind == "ready":
                w.ready = True
                for line in msg[3] if len(msg) > 3 else ():  # queue flags the kernel refused: say so once
                    if line not in self._refusals_logged:
                        self._refusals_logged.add(line)
                        log.warning("queue %d: %s; imqd runs without it", w.queue, line)
                if w.died_at is not None:
                    w.last_restart_s = time.monotonic() - w.died_at
                    w.died_at = None
            elif kind == "applied":
                w.applied = max(w.applied, msg[1])
            elif kind == "stats":
                w.stats = msg[1]
                w.applied = max(w.applied, msg[1].get("version", -1))
            elif kind == "fatal":
                w.fatal = msg[1]
            elif kind == "error":
                log.error("worker for queue %d refused version %s: %s", w.queue, msg[1], msg[2])
            elif kind == "resync":  # it lacks the version a delta builds on: it gets the whole configuration
                log.warning("worker for queue %d is at version %s, cannot apply %s: sending the whole "
                            "configuration", w.queue, msg[2], msg[1])
                w.resync = True
            self._cond.notify_all()

    def _on_exit(self, w: WorkerSlot) -> None:
        if self._stopping:
            return
        self._receive(w)  # take a last 'fatal' or stats message if there is one
        if self.worker_lock is not None and free_if_stuck(self.worker_lock):
            log.warning("worker for queue %d (pid %s) died holding the shared token lock; freed it", w.queue, w.pid)
        if self.hosts is not None:  # its hosts no longer hold the others' per_host shares back
            self.hosts.share.clear_worker(self.block_of[w.queue])
        code = w.process.exitcode
        with self._cond:
            w.ready = False
            w.lost_on_crash += int(w.stats.get("held", 0)) if w.stats else 0
            if code == EXIT_FATAL or w.fatal:
                w.fatal = w.fatal or f"queue {w.queue}: worker exited with a fatal error (code {code})"
                if self._started:  # during start(), start() raises it as the one line the operator sees
                    log.error("worker for queue %d cannot run: %s", w.queue, w.fatal)
                w.restart_at = float("inf")
                self._cond.notify_all()
                return
            now = time.monotonic()
            w.died_at = now
            w.crashes = [t for t in w.crashes if now - t < CRASH_WINDOW_S] + [now]
            delay = 0.0
            if len(w.crashes) >= CRASH_LOOP_COUNT:
                delay = min(MAX_BACKOFF_S, 0.25 * 2 ** (len(w.crashes) - CRASH_LOOP_COUNT))
            w.restart_at = now + delay
            log.warning("worker for queue %d (pid %s) exited with %s; restarting in %.2f s",
                        w.queue, w.pid, code, delay)
            self._cond.notify_all()

    def _restart_due(self) -> None:
        now = time.monotonic()
        for w in self.workers.values():
            if w.restart_at is not None and w.restart_at <= now and not self._stopping:
                if w.conn is not None:
                    w.conn.close()
                w.restarts += 1
                w.fatal = None
                self._spawn(w)

    # -- views ---------------------------------------------------------------
    def healthy(self) -> bool:
        return all(w.ready and self._alive(w) for w in self.workers.values())

    def worker_stats(self) -> list[dict[str, Any]]:
        kernel = kernel_queue_stats()
        out = []
        for w in self.workers.values():
            s = dict(w.stats)
            s.pop("leaves", None)
            s.update(queue=w.queue, cpu=w.cpu, pid=w.pid, alive=self._alive(w), ready=w.ready,
                     packets_per_second=round(w.load.packets_per_second, 1),
                     cpu_percent=round(w.load.cpu_percent, 1),
                     restarts=w.restarts, applied_version=w.applied, lost_on_crash=w.lost_on_crash,
                     last_restart_seconds=w.last_restart_s)
            for key in ("packets", "verdicts", "accepted", "drops", "malformed", "errors", "held",
                        "batch_verdicts", "drain_pauses", "host_bucket_overflows", "gso_packets", "gso_segments", "gso_bytes",
                        "gso_unknown_length", "socket_overflows", "unshaped_overflow", "queue_full_samples"):
                s.setdefault(key, 0)
            # Drops the kernel made before the worker saw the packet: queue full / socket buffer full.
            s.update(kernel.get(w.queue, {"kernel_waiting": 0, "queue_dropped": 0, "user_dropped": 0}))
            out.append(s)
        return out

    # -- per-class counters ---------------------------------------------------
    def _sample_loop(self) -> None:
        while not self._stopping:
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - statistics must never stop the supervisor
                log.exception("sampling the counters failed")
            time.sleep(SAMPLE_INTERVAL_S)

    def sample(self) -> CounterSnapshot:
        """Read every worker's counters now: the snapshot that requests read until the next sample."""
        with self._cond:
            config, slots = self.config, self.slots
            tree = self._tree[2] if self._tree and self._tree[0] is config and self._tree[1] is slots else None
            leaves: dict[str, list[dict[str, Any]]] = {}
            for w in self.workers.values():
                for name, leaf in (w.stats.get("leaves") or {}).items():
                    leaves.setdefault(name, []).append({"queue": w.queue, **leaf})
            load = [(w, int(w.stats.get("packets", 0) or 0)) for w in self.workers.values()]
        if tree is None:
            tree = TreeIndex.of(config, slots)
            self._tree = (config, slots, tree)
        with self._sample_lock:
            if self._counters_closed:  # stop() unmapped the segment
                return self._snapshot or empty_snapshot(tree)
            now, wall = time.monotonic(), time.time()
            totals = self.counters.totals(tree.rows)
            rates = self._meter.add(now, totals[FIELD["bytes"]::FIELDS_PER_COUNTER_SLOT])
            snap = build_snapshot(tree, totals, rates, now, wall, leaves)
            self._snapshot = snap
            self.link_history.add(snap)
            for w, packets in load:
                w.load.update(now, packets, process_cpu_seconds(w.pid if self._alive(w) else None))
        return snap

    def counter_snapshot(self) -> CounterSnapshot:
        """The latest sample (taken now if there is none yet); at most SAMPLE_INTERVAL_S old."""
        return self._snapshot or self.sample()
