"""The worker asks for its queue flags after binding and reads the kernel's answers back, handing packets that
arrived meanwhile to netfilterqueue in order; what overflowed the socket is counted from packet ids."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

import pytest

from imqd.links import LinkCosts
from imqd.nfnetlink import NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO, queue_flags_message
from imqd.queue_flags import CONFIG_SEQ, Replay, await_ack, describe_answer, lost_messages
from imqd.queue_worker import QueueWorker, WorkerOptions
from imqd.shaper import Shaper


def answer(seq: int, error: int) -> bytes:
    return struct.pack("=IHHIIi", 20, 2, 0, seq, 0, error)


def packet_message(n: int) -> bytes:
    """Stands for an NFQNL_MSG_PACKET datagram (only its identity matters here)."""
    return struct.pack("=IHHII", 20, (3 << 8) | 0, 0, 0, 0) + struct.pack("=I", n)


class FakeNfq:
    """The kernel's side is the other end of a datagram socket pair; run_socket loops as netfilterqueue's does."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.handled: list[bytes] = []

    def get_fd(self) -> int:
        return self.sock.fileno()

    def run_socket(self, s: Replay) -> None:  # netfilterqueue 1.1.0's loop, without nfq_handle_packet
        while True:
            try:
                buf = s.recv(4096)
            except OSError as e:
                if e.args[0] in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                raise
            self.handled.append(buf)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    yield ours, kernel
    ours.close()
    kernel.close()


def worker_on(ours: socket.socket, **opts: bool) -> tuple[QueueWorker, FakeNfq]:
    table = LinkCosts(mtu_of=lambda i: None, all_mtus=lambda: [1500])
    worker = QueueWorker(WorkerOptions(queue=3, cpu=None, **opts), Shaper(), links=table)
    nfq = FakeNfq(ours)
    worker._nfq = nfq
    return worker, nfq


def test_flags_are_asked_for_and_packets_before_each_answer_reach_netfilterqueue_in_order(pair) -> None:
    ours, kernel = pair
    for d in (packet_message(1), packet_message(2), answer(CONFIG_SEQ + NFQA_CFG_F_GSO, 0), packet_message(3),
              answer(CONFIG_SEQ + NFQA_CFG_F_FAIL_OPEN, 0), packet_message(4)):
        kernel.send(d)  # the kernel answers in the write; until then the answers wait behind the packets
    worker, nfq = worker_on(ours, gso=True, fail_open=True)
    worker.set_queue_flags()
    assert kernel.recv(100) == queue_flags_message(3, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO, CONFIG_SEQ + NFQA_CFG_F_GSO)
    assert kernel.recv(100) == queue_flags_message(3, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN,
                                                   CONFIG_SEQ + NFQA_CFG_F_FAIL_OPEN)
    assert nfq.handled == [packet_message(1), packet_message(2), packet_message(3)]
    assert ours.recv(100) == packet_message(4), "what came after the last answer stays for the loop"
    stats = worker.flag_stats()
    assert stats == {"gso": True, "gso_status": "on", "on_overflow": "accept", "overflow_status": "accept"}
    assert worker.flags.refused() == []


def test_a_kernel_without_gso_leaves_the_worker_as_before_and_says_so(pair) -> None:
    ours, kernel = pair
    kernel.send(answer(CONFIG_SEQ + NFQA_CFG_F_GSO, -errno.EOPNOTSUPP))
    worker, _ = worker_on(ours, gso=True, fail_open=False)
    worker.set_queue_flags()
    assert kernel.recv(100)[4:6] == struct.pack("=H", (3 << 8) | 2)
    stats = worker.flag_stats()
    assert stats["gso"] is False and stats["on_overflow"] == "drop"
    assert "refused NFQA_CFG_F_GSO (EOPNOTSUPP" in stats["gso_status"]
    assert worker.flags.refused() == [stats["gso_status"]]


def test_fail_open_refused_means_drop_and_no_answer_means_unknown(pair) -> None:
    ours, kernel = pair
    kernel.send(answer(CONFIG_SEQ + NFQA_CFG_F_FAIL_OPEN, -errno.EINVAL))
    worker, _ = worker_on(ours, gso=False, fail_open=True)
    worker.set_queue_flags()
    assert worker.flag_stats()["on_overflow"] == "drop"
    assert worker.flags.overflow_status.startswith("drop (off: the kernel refused NFQA_CFG_F_FAIL_OPEN (EINVAL")
    assert worker.flag_stats()["gso_status"] == "off: --no-gso"
    kernel.recv(100)
    worker, nfq = worker_on(ours, gso=True, fail_open=False)
    kernel.send(packet_message(9))
    worker.set_queue_flags()  # no answer at all (it was lost to a full socket)
    assert worker.flags.gso is None and worker.flags.gso_status.startswith("unknown")
    assert nfq.handled == [packet_message(9)]


def test_nothing_is_asked_when_nothing_is_wanted(pair) -> None:
    ours, kernel = pair
    worker, _ = worker_on(ours, gso=False, fail_open=False)
    worker.set_queue_flags()
    kernel.setblocking(False)
    with pytest.raises(BlockingIOError):
        kernel.recv(100)


def test_await_ack_gives_up_after_its_limit() -> None:
    feed = iter([packet_message(i) for i in range(10)])
    error, others = await_ack(lambda: next(feed, None), 5, limit=4)
    assert error is None and len(others) == 4
    assert describe_answer("X", 0) == "on" and describe_answer("X", None).startswith("unknown")


@pytest.mark.parametrize(("last_id", "seen", "waiting", "held", "lost"), [
    (100, 100, 0, 0, 0),  # every packet came and got its verdict
    (100, 90, 10, 0, 0),  # ten still unread in the socket
    (100, 85, 15, 5, 5),  # 85 seen, five of them held; ten unread; five never delivered
    (100, 60, 20, 10, 30),
    (5, 2**32 - 3, 0, 0, 8),  # ids wrapped
    (100, 100, 0, 3, 0),  # held > waiting: the kernel flushed a device's packets; never negative
])
def test_lost_messages(last_id: int, seen: int, waiting: int, held: int, lost: int) -> None:
    assert lost_messages(last_id, seen, waiting, held) == lost


def test_worker_stats_carry_the_flag_and_gso_fields() -> None:
    table = LinkCosts(mtu_of=lambda i: None, all_mtus=lambda: [1500])
    stats = QueueWorker(WorkerOptions(queue=3, cpu=None), Shaper(), links=table).stats()
    for key in ("gso", "gso_status", "on_overflow", "overflow_status", "gso_packets", "gso_segments", "gso_bytes",
                "gso_unknown_length", "mtu_floor", "socket_overflows", "unshaped_overflow", "queue_full_samples"):
        assert key in stats, key
    assert stats["mtu_floor"] == 1500 and stats["socket_overflows"] == 0


def test_a_refused_flag_is_logged_once_however_many_workers_report_it(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from imqd.config import parse_config
    from imqd.supervisor import Supervisor

    sup = Supervisor([3, 4], parse_config({"classes": []}), cpus=[], gso=True, fail_open=True)
    try:
        line = describe_answer("NFQA_CFG_F_GSO", -errno.EOPNOTSUPP)
        with caplog.at_level(logging.WARNING, logger="imqd"):
            for q in (3, 4, 3):  # two workers, one of them restarted
                sup._on_message(sup.workers[q], ("ready", q, 100 + q, [line]))
            sup._on_message(sup.workers[4], ("ready", 4, 200, []))
        assert [r.getMessage() for r in caplog.records] == [f"queue 3: {line}; imqd runs without it"]
        assert all(w.ready for w in sup.workers.values())
        assert (sup.gso, sup.fail_open) == (True, True)
    finally:
        sup.store.close()
        sup.counters.close()
        if sup.hosts is not None:
            sup.hosts.close()
