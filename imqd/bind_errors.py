"""Why a worker cannot bind its NFQUEUE, in one line that says what to do.

No netfilterqueue here: :meth:`imqd.queue_worker.QueueWorker.bind` raises :class:`WorkerError` with
:func:`describe_bind_error`'s line, and ``imqd run`` checks :func:`has_net_admin` before it starts anything.
"""

from __future__ import annotations

import os

from imqd.kernel_queues import PROC_PATH, read_nfqueue_table


class WorkerError(Exception):
    """A worker cannot start; the message is one line for the operator."""


def describe_bind_error(queue: int, exc: OSError) -> str:
    """Turn netfilterqueue's bind failure into one line that says what to do."""
    if not has_net_admin():
        return f"queue {queue}: binding NFQUEUE needs CAP_NET_ADMIN (run as root or grant the capability)"
    if not os.path.exists(PROC_PATH):
        return f"queue {queue}: the kernel has no nfnetlink_queue support (modprobe nfnetlink_queue)"
    if queue_is_bound(queue):
        return f"queue {queue}: already bound by another process (is another imqd running?)"
    return f"queue {queue}: cannot bind NFQUEUE: {exc}"


def has_net_admin() -> bool:
    """True if this process has CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))
    except OSError:
        pass
    return False


def queue_is_bound(queue: int) -> bool:
    """Whether some process is bound to ``queue`` in this network namespace."""
    return queue in read_nfqueue_table()
