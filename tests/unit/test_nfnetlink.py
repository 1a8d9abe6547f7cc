"""The batch verdict message, byte for byte as nfnetlink_queue parses it."""

from __future__ import annotations

import struct

import pytest

from imqd.nfnetlink import NF_ACCEPT, NF_DROP, VerdictBatch


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


@pytest.mark.parametrize(("queue", "verdict"), [(-1, NF_ACCEPT), (65536, NF_ACCEPT), (True, NF_ACCEPT), (0, 2)])
def test_bad_queue_or_verdict_is_refused_by_name(queue: int, verdict: int) -> None:
    with pytest.raises(ValueError, match="queue|verdict"):
        VerdictBatch(queue, verdict)
