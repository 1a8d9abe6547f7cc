"""The nfnetlink_queue messages netfilterqueue does not send for us -- built here, pure bytes, no I/O.

netfilterqueue 1.1.0 issues one ``NFQNL_MSG_VERDICT`` per packet.  The kernel also takes
``NFQNL_MSG_VERDICT_BATCH`` (``net/netfilter/nfnetlink_queue.c``,
``include/uapi/linux/netfilter/nfnetlink_queue.h``): one message gives the same verdict to *every* packet
still waiting in the queue whose id is not after ``max_id``.  The kernel keeps a queue's packets in arrival
(id) order, so a worker that holds nothing back can accept everything it received in one system call
instead of one each.  It must never batch past a packet it still holds: that packet would be accepted too.

The worker writes the message to the queue's own netlink socket (``NetfilterQueue.get_fd()``), so the
kernel finds the queue instance by the socket's port id exactly as for netfilterqueue's own verdicts.

Queue flags (``NFQNL_MSG_CONFIG`` with ``NFQA_CFG_FLAGS`` and ``NFQA_CFG_MASK``, ``nfqnl_recv_config``):
netfilterqueue 1.1.0 cannot set them either.  :func:`queue_flags_message` asks for them with
``NLM_F_ACK``; the kernel answers on the same socket with an ``NLMSG_ERROR`` message whose error is 0
(taken) or a negative errno (``EOPNOTSUPP`` for a flag the kernel does not know), which
:func:`find_ack` picks out of whatever else the socket holds (packets may already be arriving).
The flags imqd uses:

* ``NFQA_CFG_F_GSO``: hand GSO/GRO super-packets to the queue whole.  Without it the kernel segments
  each into MTU-sized packets first (``nfqnl_enqueue_packet``) -- up to ~45 verdicts instead of one
  -- and computes a software checksum for each.  The worker copies 128 bytes and never sends a
  payload back in a verdict (with a 128-byte copy the kernel would trim the packet to it), so it may.
* ``NFQA_CFG_F_FAIL_OPEN``: a packet that finds the queue full (``--max-len``) or the socket buffer
  full is accepted unshaped instead of dropped (``__nfqnl_enqueue_packet``).
"""

from __future__ import annotations

import socket
import struct

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 0x1
NFQA_CFG_F_CONNTRACK = 0x2
NFQA_CFG_F_GSO = 0x4
NFQA_VERDICT_HDR = 2
NF_DROP = 0
NF_ACCEPT = 1

# nlmsghdr (len, type, flags, seq, pid: host order) + nfgenmsg (family, version, res_id: big endian)
_HEADER = struct.Struct("=IHHII BBH")
_ATTR = struct.Struct("=HH")
_VERDICT_HDR = struct.Struct(">II")  # struct nfqnl_msg_verdict_hdr: verdict, id (both __be32)
_BE32 = struct.Struct(">I")
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_ERRNO = struct.Struct("=i")  # struct nlmsgerr starts with the (negative) error, then the request's header


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


def id_before(a: int, b: int) -> bool:
    """Whether kernel packet id ``a`` came before ``b`` (32-bit ids that wrap, as the kernel's nfq_id_after).

    A batch up to ``max_id`` sweeps every waiting packet with an id not after it: the worker sends one only
    when no packet it holds is older (:meth:`imqd.queue_worker.QueueWorker.flush`)."""
    return 0 < ((b - a) & 0xFFFFFFFF) < 0x80000000


def queue_flags_message(queue: int, flags: int, mask: int, seq: int) -> bytes:
    """``NFQNL_MSG_CONFIG`` that sets the bits of ``mask`` in queue ``queue``'s flags to those of ``flags``.

    One ``NFQA_CFG_FLAGS`` and one ``NFQA_CFG_MASK`` (big-endian u32 each) in one message: the kernel keeps
    the last of repeated attributes, so a second pair would override the first.  ``NLM_F_ACK`` makes the
    kernel answer with its error code (0 = taken); ``seq`` lets :func:`find_ack` tell that answer apart.
    """
    if not isinstance(queue, int) or isinstance(queue, bool) or not 0 <= queue <= 65535:
        raise ValueError(f"queue: expected an int 0..65535, got {queue!r}")
    for name, value in (("flags", flags), ("mask", mask), ("seq", seq)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"{name}: expected an unsigned 32-bit int, got {value!r}")
    if flags & ~mask:
        raise ValueError(f"flags {flags:#x} has bits outside mask {mask:#x}: the kernel would ignore them")
    attr_len = _ATTR.size + _BE32.size
    length = _HEADER.size + 2 * attr_len
    return (_HEADER.pack(length, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, 0,
                         socket.AF_UNSPEC, 0, socket.htons(queue))
            + _ATTR.pack(attr_len, NFQA_CFG_FLAGS) + _BE32.pack(flags)
            + _ATTR.pack(attr_len, NFQA_CFG_MASK) + _BE32.pack(mask))


def find_ack(datagram: bytes, seq: int) -> int | None:
    """The error code of the kernel's answer to request ``seq`` in one received datagram, or None.

    0 means the kernel took the request, a negative number is ``-errno``.  A datagram may hold several
    netlink messages (or be a packet message for netfilterqueue): anything else, or a message cut short,
    is not the answer.
    """
    off = 0
    end = len(datagram)
    while off + _NLMSGHDR.size <= end:
        length, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(datagram, off)
        if length < _NLMSGHDR.size or off + length > end:
            return None
        if mtype == NLMSG_ERROR and mseq == seq and length >= _NLMSGHDR.size + _ERRNO.size:
            return _ERRNO.unpack_from(datagram, off + _NLMSGHDR.size)[0]
        off += (length + 3) & ~3  # NLMSG_ALIGN
    return None
