"""The worker's per-packet path with fake netfilterqueue packets: every packet gets exactly one verdict."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, IPv6

from imqd.config import parse_config
from imqd.queue_worker import QueueWorker, WorkerOptions, describe_bind_error
from imqd.shaper import Shaper


@dataclass
class FakePacket:
    payload: bytes
    hook: int = 4
    indev: int = 0
    outdev: int = 0
    mark: int = 0
    verdicts: list[str] = field(default_factory=list)

    def get_payload(self) -> bytes:
        return self.payload[:128]

    def get_mark(self) -> int:
        return self.mark

    def accept(self) -> None:
        self.verdicts.append("accept")

    def drop(self) -> None:
        self.verdicts.append("drop")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_worker(classes: list[dict]) -> tuple[QueueWorker, FakeClock]:
    shaper = Shaper()
    shaper.apply(parse_config({"classes": classes}), 100.0)
    worker = QueueWorker(WorkerOptions(queue=0, cpu=None), shaper)
    clock = FakeClock()
    worker._clock = clock
    return worker, clock


def tcp(size: int = 1000, dst: str = "198.19.0.2") -> bytes:
    return bytes(IP(src="198.18.10.2", dst=dst) / TCP(dport=5201) / (b"x" * size))


def test_unshaped_packet_is_accepted_at_once() -> None:
    worker, _ = make_worker([{"name": "a", "rate": "1mbit", "match": {"dst": "198.19.9.0/24"}}])
    pkt = FakePacket(tcp())
    worker._on_packet(pkt)
    assert pkt.verdicts == ["accept"]


def test_shaped_packets_wait_for_tokens_and_keep_order() -> None:
    worker, clock = make_worker([{"name": "a", "rate": "1mbit", "burst": 1600, "default": True}])
    pkts = [FakePacket(tcp(1000)) for _ in range(5)]
    for p in pkts:
        worker._on_packet(p)
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
    worker._on_packet(pkt)
    assert pkt.verdicts == ["accept"]
    assert worker.counters.malformed == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([0, 1, 2, 3, 4]))
def test_any_bytes_get_exactly_one_verdict_eventually(data: bytes, hook: int) -> None:
    worker, clock = make_worker([
        {"name": "in", "direction": "ingress", "rate": "1mbit", "default": True},
        {"name": "out", "direction": "egress", "rate": "1mbit", "default": True},
    ])
    pkt = FakePacket(data, hook=hook)
    worker._on_packet(pkt)
    clock.now += 10
    worker._release(clock.now)
    assert len(pkt.verdicts) == 1


def test_ipv6_and_udp_are_shaped_in_their_direction() -> None:
    worker, _ = make_worker([{"name": "in", "direction": "ingress", "rate": "1mbit", "burst": 1600,
                              "default": True}])
    pkts = [FakePacket(bytes(IPv6(src="2001:2::1", dst="2001:2::2") / UDP() / (b"y" * 1200)), hook=0)
            for _ in range(4)]
    for p in pkts:
        worker._on_packet(p)
    assert worker.shaper.held > 0, "ingress packets are queued by the ingress tree"
    egress = FakePacket(tcp(), hook=4)
    worker._on_packet(egress)
    assert egress.verdicts == ["accept"], "no egress classes: passes unshaped"


def test_callback_error_accepts_the_packet() -> None:
    worker, _ = make_worker([{"name": "a", "rate": "1mbit", "default": True}])

    class Boom(FakePacket):
        def get_mark(self) -> int:
            raise RuntimeError("boom")

    pkt = Boom(tcp())
    worker._on_packet(pkt)
    assert pkt.verdicts == ["accept"] and worker.counters.errors == 1


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
    worker._on_packet(late)
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
    worker.handle_message(("config", 2, parse_config(cfg), {}, True))
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
    worker.handle_message(("config", 2, rest_only, {}, True))
    assert worker.shaper.held == held, "no packet lost or released early"
    assert worker.shaper.class_stats()["rest"]["backlog_packets"] == held


def test_bind_errors_say_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import imqd.queue_worker as qw

    monkeypatch.setattr(qw, "has_net_admin", lambda: False)
    assert "CAP_NET_ADMIN" in describe_bind_error(0, OSError("x"))
    monkeypatch.setattr(qw, "has_net_admin", lambda: True)
    real_exists = qw.os.path.exists
    monkeypatch.setattr(qw.os.path, "exists",
                        lambda p: False if p.endswith("nfnetlink_queue") else real_exists(p))
    assert "no nfnetlink_queue support" in describe_bind_error(0, OSError("x"))
    monkeypatch.setattr(qw.os.path, "exists", real_exists)
    monkeypatch.setattr(qw, "queue_is_bound", lambda q: q == 5)
    assert describe_bind_error(5, OSError("x")) == "queue 5: already bound by another process (is another imqd running?)"
