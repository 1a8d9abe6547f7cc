"""The ``perhost`` leaf: one dynamic sub-queue per host (MikroTik PCQ, dummynet masks, CAKE dual-host).

Packets are grouped by ``pkt.host``, the integer address the worker takes
from the source or destination address (the ``key`` parameter tells the
worker which; this module only records it), masked to ``prefix`` bits for
IPv4 (an int below 2**32) or ``prefix6`` bits for IPv6 (default /64, the
usual size of one subscriber's LAN).  Packets without a host share one queue.

A host's queue is created by its first packet and forgotten once it has been
empty for ``idle_timeout`` seconds.  Hosts with packets are served by
deficit round robin (``quantum`` bytes per turn), so greedy hosts get equal
shares of whatever the parent class gives this leaf.

Per-host limits, HTB style: ``ceil`` (bit/s, default ``rate``; 0 = none) is
each host's hard cap, enforced by a token bucket of ``burst`` bytes
(:class:`imqd.qdisc.tbf.TokenBucket`); a host whose bucket cannot pay for
its head packet sits in a heap keyed on the time it can, and the leaf's
``next_event`` reports the earliest such time to the parent's timer.  A
packet larger than the burst (a GSO super-packet: up to 64 KB) goes as HTB
lets a class send: once the bucket is not in debt, whatever the packet's
size, leaving it in debt that the host pays off before its next packet.  The
host keeps its rate on average and never waits for ever (sch_tbf would drop
or segment it); waiting for a *full* bucket instead would waste whatever
credit accrued between the bucket filling and the worker waking up.
``rate`` is each host's guaranteed share: DRR among equal hosts is max-min
fair, so every host gets ``min(its demand, rate)`` as long as the class
receives ``active hosts x rate``; a separate "under rate first" priority
would change nothing among hosts with equal parameters, so ``rate`` needs no
bucket of its own (it is the default ``ceil`` and appears in the stats).

With several workers the caps must hold in total, not per worker (a host's traffic can hash to several):
:meth:`PerHost.share_buckets` moves every host's bucket into a
:class:`~imqd.qdisc.host_buckets.HostBucketTable` the workers share.  The
queues and the DRR stay per worker; the equal share among hosts becomes
global through the table's :class:`~imqd.qdisc.host_share.ShareTable`: the
leaf publishes its busy hosts (``len(_active)``) and holds back while its
hosts are ahead of the busy hosts of other workers (:class:`ClassShare`).

Limits on packets: ``limit`` per host (the arriving packet is dropped when
its host is full) and ``total_limit`` for the leaf (the oldest packet of the
longest host queue is dropped, so the hungriest host pays).

Costs per packet, with any number of hosts: a dict lookup, deque operations,
two set operations (longest-queue index), one token-bucket check and charge,
and for a host that has to wait a heap push/pop (O(log blocked hosts), in C).
Forgetting idle hosts is amortised: at most two candidates are examined per
operation.  Nothing scans all hosts except :meth:`PerHost.stats`,
:meth:`PerHost.change` and :meth:`PerHost.drain`.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from collections import deque
from itertools import count
from typing import Any

from imqd.qdisc.base import CountedBacklog, QueuedPacket
from imqd.qdisc.host_buckets import HostBucketTable, SharedBucket
from imqd.qdisc.host_share import POLL, SLACK, ClassShare
from imqd.qdisc.leaves import LeafSpec, check_params, register_leaf
from imqd.qdisc.sfq import DepthIndex
from imqd.qdisc.tbf import TokenBucket

DEFAULTS: dict[str, Any] = {
    "key": "dst",
    "prefix": 32,
    "prefix6": 64,
    "rate": 0,
    "ceil": None,
    "burst": None,
    "quantum": 1514,
    "limit": 100,
    "total_limit": 10240,
    "idle_timeout": 60.0,
}
KEYS = ("src", "dst")
MTU = 1514
BURST_TIME = 0.01  # default burst: 10 ms at the ceil, at least two full packets
# ... and at least one GSO super-packet: a bucket smaller than the packets it meters loses the credit that
# accrues while a host waits on its class (a 5 mbit host sending ~17 KB super-packets got 95-99 % of its
# cap with a 6 KB burst, 100 % with 64 KB; tests/integration/test_fairness.py)
SUPER_PACKET = 65536
_V4_END = 1 << 32
_NO_HOST = -1  # key of packets whose host is None

IDLE, ACTIVE, BLOCKED = 0, 1, 2
Bucket = TokenBucket | SharedBucket  # a host's cap: its own, or in a table several workers share


class _Host:
    """One host's queue, DRR deficit, token bucket and counters."""

    __slots__ = (
        "key", "q", "bytes", "deficit", "state", "bucket", "in_idle", "idle_since",
        "drops", "sent_bytes", "sent_packets", "win_sec", "win_bytes", "prev_bytes",
    )  # fmt: skip

    def __init__(self, key: int, bucket: Bucket | None) -> None:
        self.key = key
        self.q: deque[QueuedPacket] = deque()
        self.bytes = 0
        self.deficit = 0
        self.state = IDLE
        self.bucket = bucket
        self.in_idle = False  # has an entry in PerHost._idle
        self.idle_since = 0.0
        self.drops = 0
        self.sent_bytes = 0
        self.sent_packets = 0
        self.win_sec = -1  # whole second of the last send, for "bytes in the last second"
        self.win_bytes = 0
        self.prev_bytes = 0

    def last_second_bytes(self, now: float) -> float:
        """Bytes sent in the second before ``now`` (sliding estimate over two whole-second counters)."""
        sec = math.floor(now)
        frac = now - sec
        if self.win_sec == sec:
            return self.win_bytes + self.prev_bytes * (1.0 - frac)
        if self.win_sec == sec - 1:
            return self.win_bytes * (1.0 - frac)
        return 0.0


def _number(name: str, value: object, lo: float, hi: float = math.inf, integer: bool = False) -> Any:
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or math.isnan(value) or not (lo <= value <= hi):
        kind = "an int" if integer else "a number"
        raise ValueError(f"perhost: {name} must be {kind} in [{lo}, {hi}], got {value!r}")
    return value


class _Config:
    """Validated parameters (built whole before anything changes)."""

    __slots__ = tuple(DEFAULTS) + ("cap", "mask4", "mask6")

    def __init__(self, p: dict[str, Any]) -> None:
        if p["key"] not in KEYS:
            raise ValueError(f"perhost: key must be 'src' or 'dst', got {p['key']!r}")
        self.key = p["key"]
        self.prefix = _number("prefix", p["prefix"], 0, 32, integer=True)
        self.prefix6 = _number("prefix6", p["prefix6"], 0, 128, integer=True)
        self.rate = _number("rate", p["rate"], 0, 1e15)
        ceil = p["ceil"]
        self.ceil = self.rate if ceil is None else _number("ceil", ceil, 0, 1e15)
        if self.rate and self.ceil and self.ceil < self.rate:
            raise ValueError(f"perhost: ceil ({self.ceil}) must be >= rate ({self.rate}) or 0 (no cap)")
        self.cap = float(self.ceil)  # 0.0: no per-host cap
        burst = p["burst"]
        if burst is None:
            burst = max(2 * MTU, SUPER_PACKET, int(self.cap / 8 * BURST_TIME))
        self.burst = _number("burst", burst, 1, 1 << 40, integer=True)
        self.quantum = _number("quantum", p["quantum"], 1, 1 << 31, integer=True)
        self.limit = _number("limit", p["limit"], 1, 1 << 31, integer=True)
        self.total_limit = _number("total_limit", p["total_limit"], 1, 1 << 40, integer=True)
        self.idle_timeout = float(_number("idle_timeout", p["idle_timeout"], 1e-6, 1e9))
        self.mask4 = ((1 << self.prefix) - 1) << (32 - self.prefix)
        self.mask6 = ((1 << self.prefix6) - 1) << (128 - self.prefix6)


class PerHost(CountedBacklog):
    """The per-host fair-share leaf; see the module docstring for the parameters."""

    __slots__ = (
        "cfg", "_hosts", "_active", "_blocked", "_seq", "_idle", "_depth",
        "_qlen", "_bytes", "_now", "drops", "forgotten", "_shared", "_fair", "_held",
    )  # fmt: skip

    #: Hosts over their ceil hold packets back: parents must ``peek``.
    work_conserving = False

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"perhost: unknown parameter {unknown[0]!r} (allowed: {', '.join(DEFAULTS)})")
        self.cfg = _Config({**DEFAULTS, **params})
        self._hosts: dict[int, _Host] = {}
        self._active: deque[_Host] = deque()  # hosts with packets, DRR order
        self._blocked: list[tuple[float, int, _Host]] = []  # (time its head conforms, tie-break, host)
        self._seq = count()
        self._idle: deque[tuple[float, _Host]] = deque()  # aging candidates, roughly oldest first
        self._depth: DepthIndex[_Host] = DepthIndex()
        self._qlen = 0
        self._bytes = 0
        self._now = 0.0
        self.drops = 0
        self.forgotten = 0
        self._shared: tuple[HostBucketTable, int] | None = None  # (table, class tag): see share_buckets
        self._fair: ClassShare | None = None  # this leaf's claim on the class across workers: see share_buckets
        self._held = False  # _select found a host but the other workers' hosts are behind (with _fair only)

    @classmethod
    def from_spec(cls, spec: LeafSpec) -> PerHost:
        return cls(**check_params(spec, DEFAULTS))

    def share_buckets(self, table: HostBucketTable | None, tag: int = 0) -> None:
        """Keep the hosts' caps in ``table`` under ``tag`` (this class's identity, the same in every worker),
        or in this leaf again for ``None``.  A host moved either way starts with a full bucket."""
        shared = None if table is None else (table, tag)
        if shared == self._shared:
            return
        self._shared = shared
        if self._fair is not None:
            self._fair.set_active(0, self._now)  # this claim ends (its hosts count again under the new one)
        self._fair = None if table is None or table.share is None else ClassShare(table.share, tag)
        self._held = False
        for host in self._hosts.values():
            if host.bucket is not None:
                host.bucket = self._new_bucket(host.key)
        self._blocked_to_active()

    def _new_bucket(self, key: int) -> Bucket | None:
        cfg = self.cfg
        if not cfg.cap:
            return None
        if self._shared is None:
            return TokenBucket(cfg.cap, cfg.burst)
        table, tag = self._shared
        return SharedBucket(table, tag, key, cfg.cap, cfg.burst)

    def _blocked_to_active(self) -> None:
        """Blocked hosts were timed for buckets that changed: let _select re-time them."""
        for _, _, host in self._blocked:
            if host.state == BLOCKED:
                host.state = ACTIVE
                self._active.append(host)
        self._blocked.clear()

    # -- data path ---------------------------------------------------------------------

    def host_key(self, host: int | None) -> int:
        """The queue key for address ``host``: masked to the v4 or v6 prefix (-1 for ``None``)."""
        if host is None:
            return _NO_HOST
        return host & (self.cfg.mask4 if host < _V4_END else self.cfg.mask6)

    def enqueue(self, pkt: QueuedPacket, now: float) -> list[QueuedPacket]:
        self._now = now
        cfg = self.cfg
        h = pkt.host
        key = _NO_HOST if h is None else h & (cfg.mask4 if h < _V4_END else cfg.mask6)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(key, self._new_bucket(key))
        q = host.q
        n = len(q)
        size = pkt.size
        if n >= cfg.limit:  # host full: drop the arrival
            host.drops += 1
            self.drops += 1
            out = [pkt]
        else:
            q.append(pkt)
            self._depth.moved(host, n, n + 1)
            host.bytes += size
            self._bytes += size
            self._qlen += 1
            if host.state == IDLE:
                host.state = ACTIVE
                host.deficit = cfg.quantum
                self._active.append(host)
            out = [] if self._qlen <= cfg.total_limit else [self._drop_longest()]
        idle = self._idle
        if idle and now - idle[0][0] >= cfg.idle_timeout:
            self._age(now, 2)
        return out

    def _drop_longest(self) -> QueuedPacket:
        """Drop the oldest packet of the longest host queue (over ``total_limit``).

        A host emptied here stays on its list and is unlinked lazily.
        """
        host: _Host = self._depth.take_longest()  # type: ignore[assignment]
        q = host.q
        pkt = q.popleft()
        n = len(q)
        self._depth.moved(host, n + 1, n)
        host.bytes -= pkt.size
        host.drops += 1
        self._bytes -= pkt.size
        self._qlen -= 1
        self.drops += 1
        return pkt

    def _went_idle(self, host: _Host, now: float) -> None:
        host.state = IDLE
        host.idle_since = now
        if not host.in_idle:
            host.in_idle = True
            self._idle.append((now, host))

    def _age(self, now: float, budget: int | None) -> None:
        """Forget up to ``budget`` hosts idle for ``idle_timeout`` (all due ones if ``None``)."""
        idle = self._idle
        timeout = self.cfg.idle_timeout
        hosts = self._hosts
        while idle and now - idle[0][0] >= timeout:
            if budget is not None:
                if budget <= 0:
                    return
                budget -= 1
            _, host = idle.popleft()
            if host.state != IDLE or hosts.get(host.key) is not host:
                host.in_idle = False  # busy again (re-queued when it next goes idle) or already gone
            elif now - host.idle_since < timeout:
                idle.append((host.idle_since, host))  # went idle again later: check again then
            elif host.bucket is not None and host.bucket.tokens(now) < host.bucket.burst - 1:
                host.idle_since = now  # still paying off a debt: forgetting it would refill its bucket
                idle.append((now, host))
            else:
                host.in_idle = False
                del hosts[host.key]
                self.forgotten += 1

    def expire(self, now: float) -> int:
        """Forget every host idle for ``idle_timeout`` now (for a housekeeping timer); returns how many."""
        before = self.forgotten
        self._age(now, None)
        return self.forgotten - before

    def _select(self, now: float) -> _Host | None:
        """The host whose head packet goes next at ``now`` (DRR over hosts whose bucket can pay)."""
        blocked = self._blocked
        active = self._active
        if blocked and blocked[0][0] <= now:
            while blocked and blocked[0][0] <= now:
                host = heapq.heappop(blocked)[2]
                if host.state != BLOCKED:
                    continue
                if host.q:
                    host.state = ACTIVE
                    active.append(host)
                else:
                    self._went_idle(host, now)
        while active:
            host = active[0]
            q = host.q
            if not q:
                active.popleft()
                self._went_idle(host, now)
            elif host.deficit <= 0:
                host.deficit += self.cfg.quantum
                active.rotate(-1)
            else:
                b = host.bucket
                if b is not None:
                    size = q[0].size
                    if size > b.burst:  # larger than the bucket: goes once it is out of debt (HTB's rule)
                        size = 0
                    if not b.conforms(size, now):
                        active.popleft()
                        host.state = BLOCKED
                        heapq.heappush(blocked, (b.ready_at(size), next(self._seq), host))
                        continue
                fair = self._fair
                if fair is not None and not (  # the common case inline: nothing to publish, the gate open
                        fair.act == len(active) and now - fair.read_at < POLL and fair.vt - SLACK <= fair.others_min
                ) and not self._fair_open(now):
                    return None
                return host
        if self._fair is not None:
            self._fair_open(now)  # publishes that no host is busy here
        return None

    def _fair_open(self, now: float) -> bool:
        """Publish this leaf's busy hosts; whether they may send now (not ahead of other workers' hosts)."""
        fair = self._fair
        n = len(self._active)  # the hosts with packets that their caps let go (blocked ones are not in it)
        if n != fair.act:  # type: ignore[union-attr]
            fair.set_active(n, now)  # type: ignore[union-attr]
        ok = not n or fair.may_send(now)  # type: ignore[union-attr]
        self._held = not ok
        return ok

    def dequeue(self, now: float) -> QueuedPacket | None:
        self._now = now
        host = self._select(now)
        if host is None:
            return None
        q = host.q
        pkt = q.popleft()
        n = len(q)
        self._depth.moved(host, n + 1, n)
        size = pkt.size
        host.deficit -= size
        host.bytes -= size
        self._bytes -= size
        self._qlen -= 1
        b = host.bucket
        if b is not None:
            b.consume(size, now)
        sec = math.floor(now)
        if host.win_sec != sec:
            host.prev_bytes = host.win_bytes if host.win_sec == sec - 1 else 0
            host.win_sec = sec
            host.win_bytes = 0
        host.win_bytes += size
        host.sent_bytes += size
        host.sent_packets += 1
        if not n:
            self._active.popleft()
            self._went_idle(host, now)
        fair = self._fair
        if fair is not None:
            fair.sent(size, now)
            if len(self._active) != fair.act:
                fair.set_active(len(self._active), now)
        idle = self._idle
        if idle and now - idle[0][0] >= self.cfg.idle_timeout:
            self._age(now, 2)
        return pkt

    def peek(self, now: float) -> QueuedPacket | None:
        host = self._select(now)
        return host.q[0] if host is not None else None

    def next_event(self, now: float) -> float | None:
        if not self._qlen:
            return None
        if self._select(now) is not None:
            return now
        if self._held:  # the other workers' hosts are behind: look again soon
            t = now + POLL
            return self._blocked[0][0] if self._blocked and self._blocked[0][0] < t else t
        if self._blocked:
            t = self._blocked[0][0]
            return t if t > now else now
        return None

    def drain(self) -> list[QueuedPacket]:
        out: list[QueuedPacket] = []
        now = self._now
        for host in self._hosts.values():
            if host.q:
                out.extend(host.q)
                host.q.clear()
                host.bytes = 0
            if host.state != IDLE:
                self._went_idle(host, now)
        self._active.clear()
        self._blocked.clear()
        self._depth.clear()
        self._qlen = self._bytes = 0
        if self._fair is not None:
            self._fair.set_active(0, now)
            self._held = False
        return out

    # -- reconfiguration ---------------------------------------------------------------

    def change(self, spec: LeafSpec) -> list[QueuedPacket]:
        """Apply ``spec`` (missing parameters take their defaults) keeping the packets that still fit.

        A new ``prefix``/``prefix6`` regroups the held packets by the new
        keys (hosts start afresh); otherwise hosts keep their queues,
        counters and bucket levels under the new rate, ceil and burst.
        """
        old = self.cfg
        cfg = _Config({**DEFAULTS, **check_params(spec, DEFAULTS)})
        now = self._now
        dropped: list[QueuedPacket] = []
        if (cfg.prefix, cfg.prefix6) != (old.prefix, old.prefix6):
            held = self.drain()
            self._hosts.clear()
            self._idle.clear()
            self.cfg = cfg
            for pkt in held:
                dropped.extend(self.enqueue(pkt, now))
            return dropped
        self.cfg = cfg
        self._blocked_to_active()
        for host in self._hosts.values():
            if not cfg.cap:
                host.bucket = None
            elif host.bucket is None:
                host.bucket = self._new_bucket(host.key)
            else:
                host.bucket.set_rate(cfg.cap, cfg.burst)
            q = host.q
            if not q:
                continue
            n = len(q)
            while len(q) > cfg.limit:
                dropped.append(q.pop())
            if len(q) != n:
                self._depth.moved(host, n, len(q))
                host.drops += n - len(q)
                self.drops += n - len(q)
                host.bytes = sum(p.size for p in q)
        self._qlen = sum(len(h.q) for h in self._hosts.values())
        self._bytes = sum(h.bytes for h in self._hosts.values())
        while self._qlen > cfg.total_limit:
            dropped.append(self._drop_longest())
        return dropped

    # -- introspection -----------------------------------------------------------------


    def _host_name(self, key: int) -> str:
        if key == _NO_HOST:
            return "none"
        if key < _V4_END:
            return f"{ipaddress.IPv4Address(key)}/{self.cfg.prefix}"
        return f"{ipaddress.IPv6Address(key)}/{self.cfg.prefix6}"

    def stats(self, now: float | None = None, top: int = 10) -> dict[str, Any]:
        """Counters plus the ``top`` hosts by bytes sent in the last second (one pass over the hosts)."""
        if now is None:
            now = self._now
        hosts = list(self._hosts.values())
        rated = heapq.nlargest(top, ((h.last_second_bytes(now), h.key, h) for h in hosts), key=lambda e: e[0])
        cfg = self.cfg
        out = {
            "kind": "perhost",
            "backlog_packets": self._qlen,
            "backlog_bytes": self._bytes,
            "drops": self.drops,
            "hosts": len(hosts),
            "active_hosts": sum(1 for h in hosts if h.q),
            "blocked_hosts": sum(1 for e in self._blocked if e[2].state == BLOCKED),
            "forgotten_hosts": self.forgotten,
            "key": cfg.key,
            "prefix": cfg.prefix,
            "prefix6": cfg.prefix6,
            "rate": cfg.rate,
            "ceil": cfg.ceil,
            "burst": cfg.burst,
            "top_hosts": [
                {
                    "host": self._host_name(h.key),
                    "rate": b * 8.0,
                    "bytes_last_second": b,
                    "backlog_packets": len(h.q),
                    "backlog_bytes": h.bytes,
                    "sent_bytes": h.sent_bytes,
                    "sent_packets": h.sent_packets,
                    "drops": h.drops,
                }
                for b, _, h in rated
            ],
        }
        if self._fair is not None:  # the equal share is among the busy hosts of every worker
            out["busy_hosts_all_workers"] = self._fair.busy_hosts(now)
        return out


def _make(spec: LeafSpec) -> PerHost:
    return PerHost.from_spec(spec)


register_leaf("perhost", _make)
