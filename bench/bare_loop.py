"""The ceiling of the NFQUEUE-in-Python architecture: bind one queue, accept every packet in the callback.

Same bind parameters as an imqd worker (copy range 128, the same kernel queue length and socket buffer), a
blocking ``run()``, nothing else -- so ``imqd / bare loop`` isolates what imqd's parsing, classification and
scheduling cost.  Run one process per queue: ``python -m bench.bare_loop --queue 0``.  SIGTERM/SIGINT stop it.
``--gso`` asks for whole GSO/GRO super-packets after binding, as an imqd worker does by default
(:func:`imqd.queue_flags.request_flag`): the TCP reference for imqd with GSO.
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


def serve(queue: int, cpu: int | None = None, batch: bool = False, select_loop: bool = False,
          gso: bool = False) -> None:
    """Bind `queue` (asking for whole GSO packets if `gso`) and accept everything until a signal arrives."""
    from netfilterqueue import COPY_PACKET, NetfilterQueue

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    nfq = NetfilterQueue()
    last = [-1]

    def note(pkt: Any) -> None:
        last[0] = pkt.id

    nfq.bind(queue, note if batch else accept, max_len=MAX_LEN, mode=COPY_PACKET, range=COPY_RANGE,
             sock_len=SOCK_LEN)
    if gso:
        ask_gso(nfq, queue)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"bare_loop: queue {queue} bound, pid {os.getpid()}", flush=True)
    try:
        if batch:
            run_batched(nfq, queue, last)
        elif select_loop:
            import select

            fd = nfq.get_fd()
            while True:
                select.select([fd], [], [], 0.25)
                nfq.run(block=False)
        else:
            nfq.run()
    except KeyboardInterrupt:
        pass
    finally:
        nfq.unbind()


def ask_gso(nfq: Any, queue: int) -> None:
    """NFQA_CFG_F_GSO on the bound queue; exits if the kernel refuses (the figure would not be what it says).

    Packet messages that arrived before the kernel's answer are accepted through netfilterqueue, in order."""
    from imqd.nfnetlink import NFQA_CFG_F_GSO
    from imqd.queue_flags import Replay, describe_answer, request_flag

    error, others = request_flag(nfq.get_fd(), queue, NFQA_CFG_F_GSO)
    if others:
        nfq.run_socket(Replay(others))
    if error != 0:
        nfq.unbind()
        sys.exit(f"bare_loop: queue {queue}: GSO {describe_answer('NFQA_CFG_F_GSO', error)}")


def run_batched(nfq: Any, queue: int, last: list[int]) -> None:
    """select(), drain the socket, then one batch verdict for everything received."""
    import select

    from imqd.nfnetlink import VerdictBatch

    fd = nfq.get_fd()
    batch = VerdictBatch(queue)
    while True:
        select.select([fd], [], [])
        nfq.run(block=False)
        if last[0] >= 0:
            os.write(fd, batch.message(last[0]))
            last[0] = -1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (as imqd pins queue i to CPU i)")
    parser.add_argument("--batch", action="store_true", help="one batch verdict per drained socket")
    parser.add_argument("--select", action="store_true", help="select() + run(block=False), verdicts one by one")
    parser.add_argument("--gso", action="store_true", help="ask for whole GSO/GRO super-packets (NFQA_CFG_F_GSO)")
    args = parser.parse_args(argv)
    if not 0 <= args.queue <= 65535:
        parser.error(f"--queue {args.queue}: expected 0..65535")
    serve(args.queue, args.cpu, args.batch, args.select, args.gso)
    return 0


if __name__ == "__main__":
    sys.exit(main())
