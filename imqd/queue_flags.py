"""The queue flags a worker asks the kernel for, the kernel's answer, and what overflowed the worker's socket.

After binding, a worker sends ``NFQNL_MSG_CONFIG`` (:func:`imqd.nfnetlink.queue_flags_message`) on its
queue's own netlink socket for each flag it wants (GSO, FAIL_OPEN) and reads the kernel's answer back from
the same socket: the kernel handles the request inside the write, so the answer is already queued when
the write returns -- possibly behind packet messages of traffic that is flowing already.  Those are kept
in order and handed to netfilterqueue afterwards through :class:`Replay`, so no packet is lost or
reordered.  :func:`lost_messages` counts, from packet ids, the packets the kernel could not deliver
because the socket buffer was full: the one overflow the kernel gives an id to, so the one a worker can
count when the queue fails open.

No netfilterqueue here: the worker passes the socket's file descriptor and replays through its own
``NetfilterQueue`` object.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from imqd.nfnetlink import find_ack, queue_flags_message

ACK_READ_LIMIT = 4096  # datagrams read at most while looking for the kernel's answer to a flags request
CONFIG_SEQ = 0x494D5100  # netlink sequence numbers of imqd's flags requests ("IMQ" + the flag bit)


@dataclass
class QueueFlags:
    """What the kernel answered when the worker asked for its queue flags (shown in /stats)."""

    gso: bool | None = False  # whole super-packets arrive; None: the kernel's answer was not seen
    gso_status: str = "off: --no-gso"
    fail_open: bool | None = False  # a full queue or socket passes packets unshaped
    overflow_status: str = "drop"

    def refused(self) -> list[str]:
        """One line per flag asked for and not taken, for the operator's log."""
        return [s for s in (self.gso_status, self.overflow_status) if "refused" in s]


def describe_answer(flag: str, error: int | None) -> str:
    """The kernel's answer to a flags request, for /stats and the log (``error`` as :func:`find_ack`)."""
    if error == 0:
        return "on"
    if error is None:
        return f"unknown: the kernel's answer to {flag} was not seen (socket overflow?)"
    code = -error
    name = "EOPNOTSUPP" if code == errno.EOPNOTSUPP else errno.errorcode.get(code, str(code))  # the kernel's word
    return f"off: the kernel refused {flag} ({name}: {os.strerror(code)})"


def await_ack(recv: Callable[[], bytes | None], seq: int, limit: int = ACK_READ_LIMIT
              ) -> tuple[int | None, list[bytes]]:
    """Read datagrams with ``recv`` (None: nothing more waiting) until the kernel's answer to request ``seq``.

    Returns that answer (0 taken, ``-errno`` refused, None if it never came) and every other datagram, in
    order: packet messages already waiting on the socket, which the caller must hand to netfilterqueue.
    """
    others: list[bytes] = []
    for _ in range(limit):
        datagram = recv()
        if datagram is None:
            break
        error = find_ack(datagram, seq)
        if error is not None:
            return error, others
        others.append(datagram)
    return None, others


class Replay:
    """A socket stand-in for ``NetfilterQueue.run_socket``: hands it datagrams the worker read itself."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self._left = list(reversed(datagrams))

    def recv(self, _size: int) -> bytes:
        if not self._left:
            raise BlockingIOError(errno.EAGAIN, "no more datagrams")  # run_socket stops at EAGAIN
        return self._left.pop()


def lost_messages(last_id: int, seen: int, waiting: int, held: int) -> int:
    """Packets the kernel queued (gave an id) but could not deliver: the socket buffer was full.

    ``last_id`` is the queue's last packet id (ids count from 1 at bind), ``seen`` the packets the worker
    received since, ``waiting`` the kernel's packets without a verdict and ``held`` those of them the worker
    has (the rest are still unread in the socket).  The kernel counts these as ``user_dropped`` -- unless
    the queue fails open, when it accepts them unshaped and counts nothing.  Ids wrap at 2**32; a result
    that would be negative (the kernel flushed packets of a device that went down) is 0.
    """
    unread = max(waiting - held, 0)
    lost = (last_id - seen - unread) & 0xFFFFFFFF
    return lost if lost < 0x80000000 else 0


def request_flag(fd: int, queue: int, bit: int) -> tuple[int | None, list[bytes]]:
    """Ask for flag ``bit`` on the queue bound to netlink socket ``fd``: the kernel's answer (0 taken,
    ``-errno`` refused, None unseen) and the packet messages read before it (see :func:`await_ack`)."""
    seq = CONFIG_SEQ + bit
    try:
        os.write(fd, queue_flags_message(queue, bit, bit, seq))
    except OSError as exc:
        return -(exc.errno or errno.EIO), []
    with socket.socket(fileno=os.dup(fd)) as sock:  # a duplicate: closing it leaves netfilterqueue's open

        def recv() -> bytes | None:
            while True:
                try:
                    return sock.recv(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return None
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:  # ENOBUFS: the kernel dropped some; read on
                        return None

        return await_ack(recv, seq)
