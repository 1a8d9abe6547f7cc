"""nfnetlink_queue messages that netfilterqueue does not send for us -- built here, pure bytes, no I/O.

netfilterqueue 1.1.0 issues one ``NFQNL_MSG_VERDICT`` per packet and configures a queue's copy mode and
length only.  The kernel offers two more things a shaper wants (``net/netfilter/nfnetlink_queue.c``,
``include/uapi/linux/netfilter/nfnetlink_queue.h``):

* ``NFQNL_MSG_VERDICT_BATCH``: one message gives the same verdict to *every* packet still waiting in the
  queue whose id is not after ``max_id``.  The kernel keeps a queue's packets in arrival (id) order, so a
  worker that holds nothing back can accept everything it received in one system call instead of one each.
  It must never batch past a packet it still holds: that packet would be accepted too.
* ``NFQA_CFG_FLAGS``: ``F_FAIL_OPEN`` makes the kernel accept, instead of drop, packets that find the queue
  full -- a router keeps forwarding (unshaped) when the shaper falls behind.

The worker writes these messages to the queue's own netlink socket (``NetfilterQueue.get_fd()``), so the
kernel finds the queue instance by the socket's port id exactly as for netfilterqueue's own verdicts.
"""

from __future__ import annotations

import struct

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_VERDICT_BATCH = 3
NFQNL_MSG_CONFIG = 2
NLM_F_REQUEST = 0x1

NFQA_VERDICT_HDR = 2
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5

NF_DROP = 0
NF_ACCEPT = 1

NFQA_CFG_F_FAIL_OPEN = 0x1
NFQA_CFG_F_CONNTRACK = 0x2
NFQA_CFG_F_GSO = 0x4

# nlmsghdr (len, type, flags, seq, pid: host order) + nfgenmsg (family, version, res_id: big endian)
_HEADER = struct.Struct("=IHHII BBH")
_ATTR = struct.Struct("=HH")
_VERDICT_HDR = struct.Struct(">II")  # struct nfqnl_msg_verdict_hdr: verdict, id (both __be32)
_BE32 = struct.Struct(">I")


def _header(msg_type: int, queue: int, length: int) -> bytes:
    import socket

    return _HEADER.pack(length, (NFNL_SUBSYS_QUEUE << 8) | msg_type, NLM_F_REQUEST, 0, 0,
                        socket.AF_UNSPEC, 0, socket.htons(queue))


def _check_queue(queue: int) -> None:
    if not isinstance(queue, int) or isinstance(queue, bool) or not 0 <= queue <= 65535:
        raise ValueError(f"queue: expected an int 0..65535, got {queue!r}")


class VerdictBatch:
    """Builds ``NFQNL_MSG_VERDICT_BATCH`` messages for one queue; :meth:`message` is on the per-round path."""

    __slots__ = ("_prefix",)

    def __init__(self, queue: int, verdict: int = NF_ACCEPT) -> None:
        _check_queue(queue)
        if verdict not in (NF_ACCEPT, NF_DROP):
            raise ValueError(f"verdict: expected NF_ACCEPT (1) or NF_DROP (0), got {verdict!r}")
        length = _HEADER.size + _ATTR.size + _VERDICT_HDR.size
        self._prefix = (_header(NFQNL_MSG_VERDICT_BATCH, queue, length)
                        + _ATTR.pack(_ATTR.size + _VERDICT_HDR.size, NFQA_VERDICT_HDR) + _BE32.pack(verdict))

    def message(self, max_id: int) -> bytes:
        """The verdict for every waiting packet with an id up to ``max_id`` (kernel ids are 32-bit, wrapping)."""
        return self._prefix + _BE32.pack(max_id & 0xFFFFFFFF)


def config_flags(queue: int, flags: int, mask: int) -> bytes:
    """``NFQNL_MSG_CONFIG`` setting the queue flags in ``mask`` to their values in ``flags``."""
    _check_queue(queue)
    known = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_CONNTRACK | NFQA_CFG_F_GSO
    if mask & ~known or flags & ~mask:
        raise ValueError(f"flags {flags:#x} / mask {mask:#x}: only {known:#x} are known, and flags must lie in mask")
    attrs = (_ATTR.pack(_ATTR.size + 4, NFQA_CFG_FLAGS) + _BE32.pack(flags)
             + _ATTR.pack(_ATTR.size + 4, NFQA_CFG_MASK) + _BE32.pack(mask))
    return _header(NFQNL_MSG_CONFIG, queue, _HEADER.size + len(attrs)) + attrs
