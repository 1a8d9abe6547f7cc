"""The kernel's view of the NFQUEUE queues: /proc/net/netfilter/nfnetlink_queue.

One line per bound queue (read it inside the namespace the queues live in):
queue number, peer port id, packets waiting, copy mode, copy range,
queue_dropped (the queue was at its max length), user_dropped (the netlink
socket buffer was full), id of the last packet queued, and a constant 1.
"""

from __future__ import annotations

PROC_PATH = "/proc/net/netfilter/nfnetlink_queue"

SOCK_LEN = 8 * 1024 * 1024  # a worker's netlink socket receive buffer (the kernel doubles it: 16 MiB)
# The most packet messages that buffer can hold: each costs at least ~512 bytes of skb (830 measured with a
# 128-byte copy: 20,164 messages).  A kernel queue longer than this plus what the worker holds never fills
# before the socket does.
SOCKET_MESSAGES_MAX = 2 * SOCK_LEN // 512
# The most packets this kernel (6.18, verdicts looked up in a hash table) holds in one queue, whatever the
# queue's max length says: the 65,537th is dropped ("nf_queue: hash insert failed: -7" in dmesg) and counted
# in queue_dropped.  Measured: 200,000 packets queued and never given a verdict leave 65,536 waiting, per queue.
KERNEL_QUEUE_MAX = 65536
# What a worker's classes may hold together by default (imqd.qdisc.held_pool): the kernel's bound less what
# the socket may hold unread, which counts in the queue too.
DEFAULT_HELD_MAX = KERNEL_QUEUE_MAX - SOCKET_MESSAGES_MAX


def parse_nfqueue_table(text: str) -> dict[int, dict[str, int]]:
    """``{queue: {portid, waiting, queue_dropped, user_dropped, last_id}}`` from the file's text."""
    out: dict[int, dict[str, int]] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 8 and all(x.isdigit() for x in f[:8]):
            out[int(f[0])] = {"portid": int(f[1]), "waiting": int(f[2]), "queue_dropped": int(f[5]),
                              "user_dropped": int(f[6]), "last_id": int(f[7])}
    return out


def read_nfqueue_table(path: str = PROC_PATH) -> dict[int, dict[str, int]]:
    """The table of this process's network namespace; empty when the file is missing (no queue bound yet)."""
    try:
        with open(path) as fh:
            return parse_nfqueue_table(fh.read())
    except OSError:
        return {}
