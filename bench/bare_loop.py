"""The ceiling of the NFQUEUE-in-Python architecture: bind one queue, accept every packet in the callback.

Same bind parameters as an imqd worker (copy range 128, the same kernel queue length and socket buffer), a
blocking ``run()``, nothing else -- so ``imqd / bare loop`` isolates what imqd's parsing, classification and
scheduling cost.  Run one process per queue: ``python -m bench.bare_loop --queue 0``.  SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

COPY_RANGE = 128  # as imqd's --copy-range default
MAX_LEN = 20000  # as imqd's --max-len default
SOCK_LEN = 8 * 1024 * 1024  # as imqd's WorkerOptions.sock_len


def accept(pkt: Any) -> None:
    pkt.accept()


def serve(queue: int, cpu: int | None = None) -> None:
    """Bind `queue` and accept everything until a signal arrives."""
    from netfilterqueue import COPY_PACKET, NetfilterQueue

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    nfq = NetfilterQueue()
    nfq.bind(queue, accept, max_len=MAX_LEN, mode=COPY_PACKET, range=COPY_RANGE, sock_len=SOCK_LEN)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"bare_loop: queue {queue} bound, pid {os.getpid()}", flush=True)
    try:
        nfq.run()
    except KeyboardInterrupt:
        pass
    finally:
        nfq.unbind()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (as imqd pins queue i to CPU i)")
    args = parser.parse_args(argv)
    if not 0 <= args.queue <= 65535:
        parser.error(f"--queue {args.queue}: expected 0..65535")
    serve(args.queue, args.cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
