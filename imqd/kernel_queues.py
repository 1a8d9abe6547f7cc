"""The kernel's view of the NFQUEUE queues: /proc/net/netfilter/nfnetlink_queue.

One line per bound queue (read it inside the namespace the queues live in):
queue number, peer port id, packets waiting, copy mode, copy range,
queue_dropped (the queue was at its max length), user_dropped (the netlink
socket buffer was full), id of the last packet queued, and a constant 1.
"""

from __future__ import annotations

PROC_PATH = "/proc/net/netfilter/nfnetlink_queue"


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
