"""The nfnetlink_queue message netfilterqueue does not send for us -- built here, pure bytes, no I/O.

netfilterqueue 1.1.0 issues one ``NFQNL_MSG_VERDICT`` per packet.  The kernel also takes
``NFQNL_MSG_VERDICT_BATCH`` (``net/netfilter/nfnetlink_queue.c``,
``include/uapi/linux/netfilter/nfnetlink_queue.h``): one message gives the same verdict to *every* packet
still waiting in the queue whose id is not after ``max_id``.  The kernel keeps a queue's packets in arrival
(id) order, so a worker that holds nothing back can accept everything it received in one system call
instead of one each.  It must never batch past a packet it still holds: that packet would be accepted too.

The worker writes the message to the queue's own netlink socket (``NetfilterQueue.get_fd()``), so the
kernel finds the queue instance by the socket's port id exactly as for netfilterqueue's own verdicts.
"""

from __future__ import annotations

import socket
import struct

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_VERDICT_BATCH = 3
NLM_F_REQUEST = 0x1
NFQA_VERDICT_HDR = 2
NF_DROP = 0
NF_ACCEPT = 1

# nlmsghdr (len, type, flags, seq, pid: host order) + nfgenmsg (family, version, res_id: big endian)
_HEADER = struct.Struct("=IHHII BBH")
_ATTR = struct.Struct("=HH")
_VERDICT_HDR = struct.Struct(">II")  # struct nfqnl_msg_verdict_hdr: verdict, id (both __be32)
_BE32 = struct.Struct(">I")


class VerdictBatch:
    """Builds ``NFQNL_MSG_VERDICT_BATCH`` messages for one queue; :meth:`message` is on the per-round path."""

    __slots__ = ("_prefix",)

    def __init__(self, queue: int, verdict: int = NF_ACCEPT) -> None:
        if not isinstance(queue, int) or isinstance(queue, bool) or not 0 <= queue <= 65535:
            raise ValueError(f"queue: expected an int 0..65535, got {queue!r}")
        if verdict not in (NF_ACCEPT, NF_DROP):
            raise ValueError(f"verdict: expected NF_ACCEPT (1) or NF_DROP (0), got {verdict!r}")
        length = _HEADER.size + _ATTR.size + _VERDICT_HDR.size
        header = _HEADER.pack(length, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST, 0, 0,
                              socket.AF_UNSPEC, 0, socket.htons(queue))
        self._prefix = header + _ATTR.pack(_ATTR.size + _VERDICT_HDR.size, NFQA_VERDICT_HDR) + _BE32.pack(verdict)

    def message(self, max_id: int) -> bytes:
        """The verdict for every waiting packet with an id up to ``max_id`` (kernel ids are 32-bit, wrapping)."""
        return self._prefix + _BE32.pack(max_id & 0xFFFFFFFF)
