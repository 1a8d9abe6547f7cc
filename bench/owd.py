"""One-way delay through the router: UDP probes stamped when sent, timed by the receiver's kernel.

Why not ping: a ping's round trip also pays for waking the client's ping process, and its two router
crossings differ (the echo may wake the worker on another CPU, the reply then finds it awake), so
``(RTT - RTT plain) / 2`` is not the delay of one crossing.  Here the sender writes ``CLOCK_REALTIME`` into
each datagram just before ``sendto()``, and the receiving socket has ``SO_TIMESTAMPNS``: the kernel stamps
each datagram as it enters the receiver's namespace (forwarding clears the stamp, so it is taken after the
router), and the receiver reads them only once the sender is done, so no wake-up of the receiving process
is counted.  Both ends read one clock: they run on the same machine.  What the sender's own syscall costs
is the same with and without a shaper, so a difference of two systems' delays is what the router adds.

``python -m bench.owd recv --port P``: prints ``ready``, waits for a line on stdin, then prints the delays
(JSON: ``{"delays_us": [...]}``, in send order).  ``python -m bench.owd send --to ADDR --port P --count N
--interval S``: N probes, one every S seconds on an absolute schedule.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from collections.abc import Sequence

PROBE = struct.Struct("!Iq")  # sequence number, CLOCK_REALTIME ns at send
TIMESPEC = struct.Struct("qq")  # struct timespec on 64-bit Linux: the SO_TIMESTAMPNS control message
# Linux's values; Python 3.11's socket module names neither
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RCVBUF = 8 * 1024 * 1024  # the receiver reads only at the end: every probe of a run must fit


def encode(seq: int, sent_ns: int) -> bytes:
    return PROBE.pack(seq & 0xFFFFFFFF, sent_ns)


def delay_us(data: bytes, ancillary: Sequence[tuple[int, int, bytes]]) -> tuple[int, float] | None:
    """(sequence number, one-way delay in µs) of one received probe, or None if it is not a stamped probe."""
    if len(data) < PROBE.size:
        return None
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= TIMESPEC.size:
            sec, nsec = TIMESPEC.unpack_from(value)
            seq, sent_ns = PROBE.unpack_from(data)
            return seq, (sec * 1_000_000_000 + nsec - sent_ns) / 1000
    return None


def receive(port: int) -> list[float]:
    """Bind `port`, say ``ready``, wait for a line on stdin, then return the delays of every queued probe."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)  # needs CAP_NET_ADMIN
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.bind(("0.0.0.0", port))
        print("ready", flush=True)
        sys.stdin.readline()
        s.setblocking(False)
        got: dict[int, float] = {}
        while True:
            try:
                data, anc, _, _ = s.recvmsg(64, 64)
            except BlockingIOError:
                break
            probe = delay_us(data, anc)
            if probe is not None:
                got[probe[0]] = probe[1]
    return [got[k] for k in sorted(got)]


def send(to: str, port: int, count: int, interval: float) -> None:
    """`count` probes to `to`:`port`, one every `interval` seconds (absolute schedule: no drift)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        due = time.monotonic()
        for seq in range(count):
            due += interval
            while (left := due - time.monotonic()) > 0:
                time.sleep(left)
            s.sendto(encode(seq, time.clock_gettime_ns(time.CLOCK_REALTIME)), (to, port))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.owd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    recv = sub.add_parser("recv")
    recv.add_argument("--port", type=int, required=True)
    snd = sub.add_parser("send")
    snd.add_argument("--to", required=True)
    snd.add_argument("--port", type=int, required=True)
    snd.add_argument("--count", type=int, required=True)
    snd.add_argument("--interval", type=float, required=True)
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: expected 1..65535")
    if args.mode == "recv":
        print(json.dumps({"delays_us": receive(args.port)}), flush=True)
    else:
        if args.count < 1 or args.interval <= 0:
            parser.error(f"--count/--interval: expected a positive count and interval, got "
                         f"{args.count}/{args.interval}")
        send(args.to, args.port, args.count, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
