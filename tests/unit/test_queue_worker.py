"""The worker's per-packet path with fake netfilterqueue packets: every packet gets exactly one verdict."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, IPv6

from imqd.config import parse_config
from imqd.bind_errors import describe_bind_error
from imqd.queue_worker import BATCH_MAX, DRAIN_MAX, SOLO_MAX, QueueWorker, WorkerOptions
from imqd.worker_timing import MAX_SLEEP_S, sleep_time
from imqd.shaper import Shaper


class FakeKernelQueue:
    """nfnetlink_queue as the worker sees it: ids in arrival order, one verdict each, batch verdicts.

    ``delivered`` is the order in which the kernel re-injected (or dropped) packets; a verdict for an id
    the kernel no longer has is counted in ``enoent`` (the real kernel answers ENOENT and nothing happens).
    """

    def __init__(self) -> None:
        self.next_id = 1
        self.pending: dict[int, FakePacket] = {}  # insertion order == id order
        self.delivered: list[tuple[int, str]] = []
        self.enoent = 0
        self.batches = 0

    def arrive(self, payload: bytes, hook: int = 4, **kw: object) -> FakePacket:
        pkt = FakePacket(payload, hook=hook, kernel=self, id=self.next_id, **kw)  # type: ignore[arg-type]
        self.next_id += 1
        self.pending[pkt.id] = pkt
        return pkt

    def verdict(self, pkt_id: int, verdict: str) -> None:
        pkt = self.pending.pop(pkt_id, None)
        if pkt is None:
            self.enoent += 1
            return
        pkt.verdicts.append(verdict)
        self.delivered.append((pkt_id, verdict))

    def write(self, msg: bytes) -> int:
        """A netlink message from the worker: only NFQNL_MSG_VERDICT_BATCH is expected."""
        length, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", msg)
        assert length == len(msg) and mtype == (3 << 8) | 3, "a verdict batch message"
        _nla_len, nla_type = struct.unpack_from("=HH", msg, 20)
        verdict, max_id = struct.unpack_from(">II", msg, 24)
        assert nla_type == 2 and verdict == 1
        self.batches += 1
        swept = [i for i in self.pending if i <= max_id]
        if not swept:
            self.enoent += 1
        for i in swept:
            self.verdict(i, "accept")
        return len(msg)


@dataclass
class FakePacket:
    payload: bytes
    hook: int = 4
    indev: int = 0
    outdev: int = 0
    mark: int = 0
    kernel: FakeKernelQueue | None = None
    id: int = 0
    verdicts: list[str] = field(default_factory=list)
    given: bool = False  # netfilterqueue's own "verdict already given" flag (batches do not set it)

    def get_payload(self) -> bytes:
        return self.payload[:128]

    def get_mark(self) -> int:
        return self.mark

    def _verdict(self, verdict: str) -> None:
        if self.given:
            raise RuntimeError("Verdict already given for this packet")
        self.given = True
        if self.kernel is None:
            self.verdicts.append(verdict)
        else:
            self.kernel.verdict(self.id, verdict)

    def accept(self) -> None:
        self._verdict("accept")

    def drop(self) -> None:
        self._verdict("drop")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_worker(classes: list[dict], kernel: FakeKernelQueue | None = None) -> tuple[QueueWorker, FakeClock]:
    shaper = Shaper()
    shaper.apply(parse_config({"classes": classes}), 100.0)
    worker = QueueWorker(WorkerOptions(queue=0, cpu=None), shaper)
    clock = FakeClock()
    worker._clock = clock
    if kernel is not None:
        worker.write_verdicts = kernel.write
    return worker, clock


def drain(worker: QueueWorker, pkts: list[FakePacket]) -> None:
    """One drain of the socket as the worker's loop does it: every packet, then the flush."""
    worker.begin_drain()
    for p in pkts:
        worker._on_packet(p)
    worker.flush()


def tcp(size: int = 1000, dst: str = "198.19.0.2") -> bytes:
    return bytes(IP(src="198.18.10.2", dst=dst) / TCP(dport=5201) / (b"x" * size))


def test_unshaped_packet_is_accepted_at_once() -> None:
    kernel = FakeKernelQueue()
    worker, _ = make_worker([{"name": "a", "rate": "1mbit", "match": {"dst": "198.19.9.0/24"}}], kernel)
    pkt = kernel.arrive(tcp())
    drain(worker, [pkt])
    assert pkt.verdicts == ["accept"] and kernel.enoent == 0


def test_shaped_packets_wait_for_tokens_and_keep_order() -> None:
    worker, clock = make_worker([{"name": "a", "rate": "1mbit", "burst": 1600, "default": True}])
    pkts = [FakePacket(tcp(1000)) for _ in range(5)]
    drain(worker, pkts)
    first = [p for p in pkts if p.verdicts]
    assert 1 <= len(first) < 5, "the burst lets some through at once, not all"
    assert worker.shaper.held == 5 - len(first)
    clock.now += 1.0  # 1 mbit/s for 1 s = 125 kB: everything may go, but at most a burst at a time
    for _ in range(10):
        worker._release(clock.now)
        clock.now += 0.02
    assert all(p.verdicts == ["accept"] for p in pkts)
    assert worker.counters.accepted == 5


def test_overflow_drops_are_verdicts_too() -> None:
    worker, _ = make_worker([{"name": "a", "rate": "1mbit", "limit": 3, "default": True}])
    pkts = [FakePacket(tcp(1400)) for _ in range(10)]
    for p in pkts:
        worker._on_packet(p)
    assert sum(p.verdicts == ["drop"] for p in pkts) == worker.counters.dropped > 0
    assert all(len(p.verdicts) <= 1 for p in pkts)


@pytest.mark.parametrize("data", [b"", b"\x45", b"\x60" + b"\x00" * 10, b"\x4f" + b"\x00" * 30, b"\x99" * 60])
def test_malformed_packets_are_counted_and_accepted(data: bytes) -> None:
    worker, _ = make_worker([{"name": "a", "rate": "1mbit", "default": True}])
    pkt = FakePacket(data)
    drain(worker, [pkt])
    assert pkt.verdicts == ["accept"]
    assert worker.counters.malformed == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([0, 1, 2, 3, 4]))
def test_any_bytes_get_exactly_one_verdict_eventually(data: bytes, hook: int) -> None:
    worker, clock = make_worker([
        {"name": "in", "direction": "ingress", "rate": "1mbit", "default": True},
        {"name": "out", "direction": "egress", "rate": "1mbit", "default": True},
    ])
    kernel = FakeKernelQueue()
    worker.write_verdicts = kernel.write
    pkt = kernel.arrive(data, hook=hook)
    drain(worker, [pkt])
    clock.now += 10
    worker.service(clock.now)
    assert len(pkt.verdicts) == 1 and kernel.enoent == 0


def test_ipv6_and_udp_are_shaped_in_their_direction() -> None:
    worker, _ = make_worker([{"name": "in", "direction": "ingress", "rate": "1mbit", "burst": 1600,
                              "default": True}])
    pkts = [FakePacket(bytes(IPv6(src="2001:2::1", dst="2001:2::2") / UDP() / (b"y" * 1200)), hook=0)
            for _ in range(4)]
    for p in pkts:
        worker._on_packet(p)
    assert worker.shaper.held > 0, "ingress packets are queued by the ingress tree"
    egress = FakePacket(tcp(), hook=4)
    drain(worker, [egress])
    assert egress.verdicts == ["accept"], "no egress classes: passes unshaped"


def test_callback_error_accepts_the_packet() -> None:
    worker, _ = make_worker([{"name": "a", "rate": "1mbit", "default": True}])

    class Boom(FakePacket):
        def get_payload(self) -> bytes:
            raise RuntimeError("boom")

    pkt = Boom(tcp())
    worker._on_packet(pkt)
    assert pkt.verdicts == ["accept"] and worker.counters.errors == 1


def test_the_packets_mark_and_interfaces_classify_it() -> None:
    kernel = FakeKernelQueue()
    worker, clock = make_worker([
        {"name": "marked", "rate": "8kbit", "burst": 1500, "match": {"mark": "0x10/0xf0"}},
        {"name": "wan", "rate": "8kbit", "burst": 1500, "match": {"oif": "wan0"}},
    ], kernel)
    worker.ifaces[3] = "wan0"
    for kw in ({"mark": 0x1F}, {"outdev": 3}, {}):
        pkts = [kernel.arrive(tcp(1400), **kw) for _ in range(3)]
        drain(worker, pkts)
        held = sum(not p.verdicts for p in pkts)
        assert held == (0 if not kw else 1), f"{kw}: an 8 kbit/s class lets its 1500-byte burst through, then holds"
    stats = worker.shaper.class_stats()
    assert stats["marked"]["packets"] == stats["wan"]["packets"] == 2


def test_disable_releases_held_packets_in_order() -> None:
    worker, _ = make_worker([{"name": "a", "rate": "1mbit", "burst": 1600, "default": True}])
    pkts = [FakePacket(tcp(1400)) for _ in range(6)]
    for p in pkts:
        worker._on_packet(p)
    order: list[int] = []
    for i, p in enumerate(pkts):
        p.accept = (lambda i=i, p=p: (order.append(i), p.verdicts.append("accept")))  # type: ignore[method-assign]
    worker.handle_message(("enabled", 2, False))
    assert worker.shaper.version == 2 and not worker.shaper.enabled
    assert all(p.verdicts for p in pkts)
    assert order == sorted(order)
    late = FakePacket(tcp())
    drain(worker, [late])
    assert late.verdicts == ["accept"]


def test_bind_error_message_names_the_queue() -> None:
    msg = describe_bind_error(7, OSError("Failed to create queue 7"))
    assert msg.startswith("queue 7:") and "\n" not in msg


def test_live_change_that_shrinks_a_queue_drops_with_verdicts_and_keeps_the_rest() -> None:
    worker, clock = make_worker([{"name": "a", "rate": "1mbit", "burst": 1600, "limit": 50, "default": True}])
    pkts = [FakePacket(tcp(1400)) for _ in range(20)]
    for p in pkts:
        worker._on_packet(p)
    held = worker.shaper.held
    assert held >= 18
    cfg = {"classes": [{"name": "a", "rate": "1mbit", "burst": 1600, "limit": 5, "default": True}]}
    worker.handle_message(("config", 2, (), {}, parse_config(cfg), True))
    assert worker.shaper.held == 5 and worker.shaper.version == 2
    dropped = [p for p in pkts if p.verdicts == ["drop"]]
    assert len(dropped) == held - 5
    for _ in range(20):
        clock.now += 0.05
        worker._release(clock.now)
    assert all(len(p.verdicts) == 1 for p in pkts), "every packet got exactly one verdict"


def test_removed_class_moves_its_packets_to_the_default_class() -> None:
    worker, clock = make_worker([{"name": "a", "rate": "1mbit", "burst": 1600, "match": {"proto": "tcp"}},
                                 {"name": "rest", "rate": "1mbit", "default": True}])
    pkts = [FakePacket(tcp(1400)) for _ in range(10)]
    for p in pkts:
        worker._on_packet(p)
    held = worker.shaper.held
    rest_only = parse_config({"classes": [{"name": "rest", "rate": "1mbit", "default": True}]})
    worker.handle_message(("config", 2, (), {}, rest_only, True))
    assert worker.shaper.held == held, "no packet lost or released early"
    assert worker.shaper.class_stats()["rest"]["backlog_packets"] == held


def test_bind_errors_say_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import imqd.bind_errors as bind_errors

    monkeypatch.setattr(bind_errors, "has_net_admin", lambda: False)
    assert "CAP_NET_ADMIN" in describe_bind_error(0, OSError("x"))
    monkeypatch.setattr(bind_errors, "has_net_admin", lambda: True)
    real_exists = bind_errors.os.path.exists
    monkeypatch.setattr(bind_errors.os.path, "exists",
                        lambda p: False if p.endswith("nfnetlink_queue") else real_exists(p))
    assert "no nfnetlink_queue support" in describe_bind_error(0, OSError("x"))
    monkeypatch.setattr(bind_errors.os.path, "exists", real_exists)
    monkeypatch.setattr(bind_errors, "queue_is_bound", lambda q: q == 5)
    assert describe_bind_error(5, OSError("x")) == "queue 5: already bound by another process (is another imqd running?)"


# --- batch verdicts ------------------------------------------------------------------------------------

UNSHAPED_DST = "198.19.50.1"
SLOW = [{"name": "slow", "rate": "8kbit", "burst": 1600, "match": {"dst": "198.19.0.2/32"}}]


def test_packets_that_may_go_leave_in_one_batch_per_drain() -> None:
    kernel = FakeKernelQueue()
    worker, _ = make_worker([{"name": "fast", "rate": "10gbit", "default": True}], kernel)
    pkts = [kernel.arrive(tcp(100)) for _ in range(20)]
    worker.begin_drain()
    for p in pkts:
        worker._on_packet(p)
    solo = [(p.id, "accept") for p in pkts[:SOLO_MAX]]
    assert kernel.delivered == solo, "the first packets of a drain go at once, the rest wait for its end"
    worker.flush()
    assert kernel.batches == 1 and worker.counters.batches == 1
    assert kernel.delivered == [(p.id, "accept") for p in pkts] and kernel.enoent == 0
    assert worker.counters.accepted == 20


def test_at_light_load_each_packet_goes_at_once() -> None:
    kernel = FakeKernelQueue()
    worker, _ = make_worker([{"name": "fast", "rate": "10gbit", "default": True}], kernel)
    for _ in range(5):
        worker.begin_drain()
        p = kernel.arrive(tcp(100))
        worker._on_packet(p)
        assert p.verdicts == ["accept"], "no wait for the end of the drain"
        worker.flush()
    assert kernel.batches == 0


def test_a_batch_never_sweeps_up_a_held_packet() -> None:
    kernel = FakeKernelQueue()
    worker, clock = make_worker(SLOW, kernel)
    slow = [kernel.arrive(tcp(1400)) for _ in range(3)]  # the burst lets one or two through, then it holds
    drain(worker, slow)
    held = [p for p in slow if not p.verdicts]
    assert held, "the slow class holds a packet"
    others = [kernel.arrive(tcp(100, dst=UNSHAPED_DST)) for _ in range(5)]
    drain(worker, others)
    assert all(p.verdicts == ["accept"] for p in others)
    assert all(not p.verdicts for p in held), "still held: an older held packet blocks the batch"
    clock.now += 10
    worker.service(clock.now)
    assert all(p.verdicts == ["accept"] for p in slow) and kernel.enoent == 0


def test_packets_older_than_everything_held_still_go_in_a_batch() -> None:
    kernel = FakeKernelQueue()
    worker, clock = make_worker(SLOW, kernel)
    drain(worker, [kernel.arrive(tcp(1400)) for _ in range(3)])  # overdraw the slow class
    clock.now += 10
    worker.service(clock.now)
    worker.service(clock.now)  # seen idle: the next batch needs no check against held packets
    batches = kernel.batches
    first = [kernel.arrive(tcp(100, dst=UNSHAPED_DST)) for _ in range(4)]
    late_slow = [kernel.arrive(tcp(1400)) for _ in range(3)]
    drain(worker, first + late_slow)
    assert kernel.batches == batches + 1, "the held packets are newer than the batch: one message"
    assert all(p.verdicts == ["accept"] for p in first) and not late_slow[-1].verdicts


def test_a_full_batch_is_sent_without_waiting_for_the_drain_to_end() -> None:
    from imqd.queue_worker import BATCH_MAX

    kernel = FakeKernelQueue()
    worker, _ = make_worker([{"name": "fast", "rate": "10gbit", "default": True}], kernel)
    worker.begin_drain()
    for _ in range(SOLO_MAX + BATCH_MAX):
        worker._on_packet(kernel.arrive(tcp(100)))
    assert len(kernel.delivered) == SOLO_MAX + BATCH_MAX and kernel.batches == 1


def test_a_failed_batch_write_falls_back_to_one_verdict_each() -> None:
    kernel = FakeKernelQueue()
    worker, _ = make_worker([{"name": "fast", "rate": "10gbit", "default": True}], kernel)

    def broken(msg: bytes) -> int:
        raise OSError(105, "No buffer space available")

    worker.write_verdicts = broken
    pkts = [kernel.arrive(tcp(100)) for _ in range(SOLO_MAX + 3)]
    drain(worker, pkts)
    assert [v for _, v in kernel.delivered] == ["accept"] * len(pkts) and worker.counters.errors == 1


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6), st.floats(0, 0.3)), min_size=1, max_size=30))
def test_every_packet_gets_one_verdict_and_flows_keep_their_order(steps: list[tuple[int, int, float]]) -> None:
    """Random drains mixing a slow class, a fast one and unshaped traffic, in both directions."""
    kernel = FakeKernelQueue()
    worker, clock = make_worker([
        {"name": "slow", "rate": "200kbit", "burst": 3000, "limit": 5, "match": {"dst": "198.19.0.2/32"}},
        {"name": "fast", "rate": "10gbit", "match": {"dst": "198.19.0.3/32"}},
        {"name": "in", "direction": "ingress", "rate": "100kbit", "burst": 2000, "match": {"dst": "198.19.0.2/32"}},
    ], kernel)
    flows = [("198.19.0.2", 4), ("198.19.0.3", 4), (UNSHAPED_DST, 4), ("198.19.0.2", 0)]
    flow_of: dict[int, int] = {}
    for flow, count, advance in steps:
        dst, hook = flows[flow]
        batch = []
        for _ in range(count):
            p = kernel.arrive(tcp(1000, dst=dst), hook=hook)
            flow_of[p.id] = flow
            batch.append(p)
        drain(worker, batch)
        clock.now += advance
        worker.service(clock.now)
    for _ in range(1000):  # let the scheduler release everything, waking when it says, as the worker loop
        wake = worker.shaper.next_event(clock.now)
        if wake is None:
            break
        clock.now = max(clock.now, wake)
        worker.service(clock.now)
    assert not kernel.pending and kernel.enoent == 0, "every packet got exactly one verdict"
    for f in range(len(flows)):
        ids = [i for i, v in kernel.delivered if flow_of[i] == f and v == "accept"]
        assert ids == sorted(ids), f"flow {f} reordered"


def test_interface_names_are_looked_up_once_and_unknown_ones_are_none(monkeypatch: pytest.MonkeyPatch) -> None:
    import imqd.links as links

    asked: list[int] = []

    def fake(index: int) -> str:
        asked.append(index)
        if index == 7:
            return "wan0"
        raise OSError(6, "No such device or address")

    monkeypatch.setattr(links.socket, "if_indextoname", fake)
    names = links.IfaceNames()
    assert names[0] is None, "index 0: the hook has no such device (PREROUTING has no outdev)"
    assert names[7] == "wan0" and names[7] == "wan0" and names[9] is None and names[9] is None
    assert asked == [7, 9], "each index is asked once"


def test_by_hook_follows_changes_and_the_switch() -> None:
    worker, _ = make_worker([{"name": "in", "direction": "ingress", "rate": "1mbit", "default": True}])
    shaper = worker.shaper
    assert [t is not None for t in shaper.by_hook] == [True, True, True, False, False]
    shaper.set_enabled(False)
    assert shaper.by_hook == (None,) * 5
    shaper.set_enabled(True)
    shaper.apply(parse_config({"classes": [{"name": "out", "direction": "egress", "rate": "1mbit",
                                            "default": True}]}), 101.0)
    assert [t is not None for t in shaper.by_hook] == [False, False, False, True, True]


@given(now=st.floats(0, 1e6), wake_in=st.none() | st.floats(-1.0, 5.0), warm_for=st.floats(-2.0, 2.0),
       tick=st.sampled_from([0.0, 0.0001, 0.001, 0.01, 0.25]))
def test_sleep_time_never_oversleeps_an_event_and_ticks_only_while_warm(
        now: float, wake_in: float | None, warm_for: float, tick: float) -> None:
    wake = None if wake_in is None else now + wake_in
    warm_until = now + warm_for
    t = sleep_time(now, wake, warm_until, tick)
    untick = sleep_time(now, wake, warm_until, 0.0)
    assert 0.0 <= t <= untick <= MAX_SLEEP_S
    if wake is not None:
        assert untick <= max(wake - now, 0.0) + 1e-9, "never sleeps past the scheduler's next release"
    if now < warm_until and tick > 0:
        assert t <= tick, "while packets keep coming the worker wakes at least every tick"
    else:
        assert t == untick, "a router with no recent traffic (or tick 0) sleeps until its next event"


def test_sleep_time_examples() -> None:
    assert sleep_time(10.0, None, 0.0, 0.001) == MAX_SLEEP_S  # no traffic for a while: sleep long
    assert sleep_time(10.0, None, 10.5, 0.001) == 0.001  # traffic within KEEP_WARM_S: tick
    assert sleep_time(10.0, 10.0002, 10.5, 0.001) == pytest.approx(0.0002)  # a release before the tick
    assert sleep_time(10.0, 9.0, 10.5, 0.001) == 0.0  # overdue release: do not sleep
    assert sleep_time(10.0, None, 10.5, 0.0) == MAX_SLEEP_S  # --idle-tick 0


def test_packets_are_counted_per_hook_whatever_the_shaper_does() -> None:
    """The per-hook counts tell imqd.hook_checks which direction saw traffic and where ingress is queued."""
    kernel = FakeKernelQueue()
    worker, _ = make_worker([{"name": "in", "direction": "ingress", "rate": "1mbit",
                              "match": {"dst": "198.18.99.0/24"}}], kernel)
    hooks = [0, 0, 2, 2, 2, 1, 4, 3, 4, 4]
    drain(worker, [kernel.arrive(tcp(), hook=h) for h in hooks])
    drain(worker, [kernel.arrive(b"\x45garbage", hook=2)])  # malformed: counted all the same
    assert worker.stats()["hook_packets"] == {"prerouting": 2, "input": 1, "forward": 4, "output": 1,
                                              "postrouting": 3}
    assert worker.stats()["packets"] == len(hooks) + 1


class DrainingNfq:
    """netfilterqueue's ``run(block=False)``: hands every packet waiting in the socket to the callback until
    the socket is empty, and lets an exception of the callback out after the packet it was handling."""

    def __init__(self, callback: Any, waiting: list[FakePacket]) -> None:
        self.callback = callback
        self.waiting = waiting

    def run(self, block: bool = True) -> None:
        assert block is False
        while self.waiting:
            self.callback(self.waiting.pop(0))


@pytest.mark.parametrize("shaped", [False, True])
def test_a_drain_of_an_overloaded_socket_pauses_so_the_loop_serves_control_messages(shaped: bool) -> None:
    """Under sustained overload the socket never empties: a drain stops after DRAIN_MAX packets (every one
    handled: a verdict, or held by the scheduler), the rest stays in the socket for the next turn."""
    kernel = FakeKernelQueue()
    classes = [{"name": "a", "rate": "1mbit", "default": True}] if shaped else \
        [{"name": "a", "rate": "1mbit", "match": {"dst": "198.19.9.0/24"}}]
    worker, _ = make_worker(classes, kernel)
    pkts = [kernel.arrive(tcp(100)) for _ in range(DRAIN_MAX + 500)]
    waiting = list(pkts)
    worker._nfq = DrainingNfq(worker._on_packet, waiting)
    worker.drain_socket()
    handled = pkts[: len(pkts) - len(waiting)]
    assert DRAIN_MAX <= len(handled) < DRAIN_MAX + BATCH_MAX, "paused after about DRAIN_MAX packets"
    assert worker.counters.drain_pauses == 1 and worker.counters.packets == len(handled)
    held = worker.shaper.held
    assert sum(1 for p in handled if p.verdicts) + held == len(handled), "each handled packet: verdict or held"
    assert all(not p.verdicts for p in waiting), "the rest waits in the socket"
    assert (held > 0) == shaped
    worker.drain_socket()  # the next turn takes the rest; a drain that empties the socket does not pause
    assert not waiting and worker.counters.drain_pauses == 1
    assert worker._drain_limit > len(pkts), "outside a drain no pause: a packet handled alone is never cut"


def test_only_the_queue_worker_imports_netfilterqueue() -> None:
    """The rest of imqd runs (and is tested) without it: the worker's helpers live beside it, not in it."""
    import ast
    from pathlib import Path

    import imqd

    root = Path(imqd.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "netfilterqueue" for n in names):
                importers.add(path.relative_to(root).as_posix())
    assert importers == {"queue_worker.py"}
