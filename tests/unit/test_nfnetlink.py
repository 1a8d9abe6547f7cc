"""The messages imqd builds itself (batch verdict, queue flags), byte for byte as nfnetlink_queue parses them,
and the kernel's answer to a flags request."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imqd.nfnetlink import (NF_ACCEPT, NF_DROP, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO, VerdictBatch, find_ack,
                            id_before, queue_flags_message)


def test_batch_verdict_layout() -> None:
    msg = VerdictBatch(258).message(0x01020304)
    assert len(msg) == 32
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, mtype, flags, seq, pid) == (32, (3 << 8) | 3, 1, 0, 0), "nfnl subsys QUEUE, VERDICT_BATCH"
    family, version, res_id = struct.unpack_from("!BBH", msg, 16)
    assert (family, version, res_id) == (0, 0, 258), "nfgenmsg: the queue number in network order"
    nla_len, nla_type = struct.unpack_from("=HH", msg, 20)
    assert (nla_len, nla_type) == (12, 2), "one NFQA_VERDICT_HDR attribute"
    assert struct.unpack_from("!II", msg, 24) == (NF_ACCEPT, 0x01020304)


def test_ids_wrap_like_the_kernels_and_drop_is_possible() -> None:
    assert struct.unpack_from("!II", VerdictBatch(0, NF_DROP).message((1 << 32) + 5), 24) == (NF_DROP, 5)


@given(st.integers(0, 2**32 - 1), st.integers(1, 2**31 - 1))
def test_id_before_is_the_kernels_order_across_the_wrap(a: int, gap: int) -> None:
    b = (a + gap) & 0xFFFFFFFF  # up to half the id space later, wrapped or not
    assert id_before(a, b) and not id_before(b, a) and not id_before(a, a)


def test_id_before_at_the_wrap() -> None:
    assert id_before(0xFFFFFFFF, 0) and id_before(0xFFFFFFF0, 3) and not id_before(3, 0xFFFFFFF0)
    assert not id_before(0, 0x80000000) and not id_before(0x80000000, 0), "half the space apart: neither"


@pytest.mark.parametrize(("queue", "verdict"), [(-1, NF_ACCEPT), (65536, NF_ACCEPT), (True, NF_ACCEPT), (0, 2)])
def test_bad_queue_or_verdict_is_refused_by_name(queue: int, verdict: int) -> None:
    with pytest.raises(ValueError, match="queue|verdict"):
        VerdictBatch(queue, verdict)


# -- queue flags ---------------------------------------------------------------------------------------

def test_queue_flags_message_layout() -> None:
    """NFQNL_MSG_CONFIG with one NFQA_CFG_FLAGS and one NFQA_CFG_MASK, both big endian, asking for an ACK."""
    msg = queue_flags_message(258, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN, seq=0x01020304)
    assert len(msg) == 36
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, mtype, flags, seq, pid) == (36, (3 << 8) | 2, 1 | 4, 0x01020304, 0), "REQUEST|ACK, CONFIG"
    assert struct.unpack_from("!BBH", msg, 16) == (0, 0, 258)
    assert struct.unpack_from("=HH", msg, 20) == (8, 5) and struct.unpack_from("!I", msg, 24) == (4,)
    assert struct.unpack_from("=HH", msg, 28) == (8, 4) and struct.unpack_from("!I", msg, 32) == (5,)
    assert (NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO) == (1, 4)


@pytest.mark.parametrize(("args", "what"), [((70000, 4, 4, 1), "queue"), ((0, 4, 2, 1), "outside mask"),
                                            ((0, -1, 4, 1), "flags"), ((0, 4, 4, 1 << 32), "seq")])
def test_bad_flags_request_is_refused_by_name(args: tuple[int, int, int, int], what: str) -> None:
    with pytest.raises(ValueError, match=what):
        queue_flags_message(*args)


def nlmsgerr(seq: int, error: int) -> bytes:
    """The kernel's answer: NLMSG_ERROR carrying the error and (a copy of) the request's header."""
    return struct.pack("=IHHII", 36, 2, 0x100, seq, 12345) + struct.pack("=i", error) + struct.pack("=IHHII", 36, 0x302, 5, seq, 0)


def test_find_ack_reads_the_answer_to_our_request_only() -> None:
    assert find_ack(nlmsgerr(7, 0), 7) == 0
    assert find_ack(nlmsgerr(7, -errno.EOPNOTSUPP), 7) == -errno.EOPNOTSUPP
    assert find_ack(nlmsgerr(8, 0), 7) is None, "another request's answer"
    packet = struct.pack("=IHHII", 24, (3 << 8) | 0, 0, 0, 0) + bytes(8)  # an NFQNL_MSG_PACKET
    assert find_ack(packet, 7) is None
    assert find_ack(packet + nlmsgerr(7, -errno.EPERM), 7) == -errno.EPERM, "several messages in one datagram"
    assert find_ack(nlmsgerr(7, 0)[:18], 7) is None and find_ack(b"", 7) is None, "cut short"
    assert find_ack(struct.pack("=IHHII", 4, 2, 0, 7, 0), 7) is None, "a length below the header's"
