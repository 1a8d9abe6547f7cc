"""One-way delay through the router: UDP probes stamped when sent, timed by the receiver's kernel.

Why not ping: a ping's round trip also pays for waking the client's ping process, and its two router
crossings differ (the echo may wake the worker on another CPU, the reply then finds it awake), so
``(RTT - RTT plain) / 2`` is not the delay of one crossing.  Here the sender writes ``CLOCK_REALTIME`` into
each datagram just before ``sendto()``, and the receiving socket has ``SO_TIMESTAMPNS``: the kernel stamps
each datagram as it enters the receiver's namespace (forwarding clears the stamp, so it is taken after the
router), and the receiver reads them only once the sender is done, so no wake-up of the receiving process
is counted.  Both ends read one clock: they run on the same machine.  What the sender's own syscall costs
is the same with and without a shaper, so a difference of two systems' delays is what the router adds.

``python -m bench.owd send --to ADDR --port P --phase CPU:N:S ...``: for each phase in turn, N probes one
every S seconds (absolute schedule), sent from CPU (``any``: wherever the scheduler likes).  One process runs
every phase, so a run costs two process start-ups per direction, not two per phase.
``python -m bench.owd recv --port P``: prints ``ready``, waits for a line on stdin, then prints the delays
per phase in send order (JSON: ``{"delays_us": {"0": [...], ...}}``).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import os
import time
from collections.abc import Sequence
from typing import NamedTuple

PROBE = struct.Struct("!HIq")  # phase, sequence number, CLOCK_REALTIME ns at send
TIMESPEC = struct.Struct("qq")  # struct timespec on 64-bit Linux: the SO_TIMESTAMPNS control message
# Linux's values; Python 3.11's socket module names neither
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RCVBUF = 8 * 1024 * 1024  # the receiver reads only at the end: every probe of a run must fit


class Phase(NamedTuple):
    """`count` probes, one every `interval` seconds, sent from `cpu` (None: not pinned)."""

    cpu: int | None
    count: int
    interval: float

    @classmethod
    def parse(cls, text: str) -> Phase:
        """``CPU:COUNT:INTERVAL`` (CPU ``any`` = not pinned); ValueError naming what is wrong."""
        try:
            cpu, count, interval = text.split(":")
            phase = cls(None if cpu == "any" else int(cpu), int(count), float(interval))
        except ValueError:
            raise ValueError(f"--phase {text!r}: expected CPU:COUNT:INTERVAL, e.g. 0:200:0.01") from None
        if phase.count < 1 or not phase.interval > 0 or (phase.cpu is not None and phase.cpu < 0):
            raise ValueError(f"--phase {text!r}: expected a CPU >= 0 (or any), a count >= 1 and an interval > 0")
        return phase


def encode(phase: int, seq: int, sent_ns: int) -> bytes:
    return PROBE.pack(phase & 0xFFFF, seq & 0xFFFFFFFF, sent_ns)


def delay_us(data: bytes, ancillary: Sequence[tuple[int, int, bytes]]) -> tuple[int, int, float] | None:
    """(phase, sequence number, one-way delay in µs) of one received probe, or None if it is not a stamped
    probe."""
    if len(data) < PROBE.size:
        return None
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= TIMESPEC.size:
            sec, nsec = TIMESPEC.unpack_from(value)
            phase, seq, sent_ns = PROBE.unpack_from(data)
            return phase, seq, (sec * 1_000_000_000 + nsec - sent_ns) / 1000
    return None


def receive(port: int) -> dict[int, list[float]]:
    """Bind `port`, say ``ready``, wait for a line on stdin, then return the delays of every queued probe
    by phase, in send order."""
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
        got: dict[int, dict[int, float]] = {}
        while True:
            try:
                data, anc, _, _ = s.recvmsg(64, 64)
            except BlockingIOError:
                break
            probe = delay_us(data, anc)
            if probe is not None:
                got.setdefault(probe[0], {})[probe[1]] = probe[2]
    return {phase: [d[k] for k in sorted(d)] for phase, d in sorted(got.items())}


def send(to: str, port: int, phases: Sequence[Phase]) -> None:
    """The probes of each of `phases` in turn to `to`:`port` (absolute schedule: no drift)."""
    everywhere = os.sched_getaffinity(0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for index, phase in enumerate(phases):
            os.sched_setaffinity(0, everywhere if phase.cpu is None else {phase.cpu})
            due = time.monotonic()
            for seq in range(phase.count):
                due += phase.interval
                while (left := due - time.monotonic()) > 0:
                    time.sleep(left)
                s.sendto(encode(index, seq, time.clock_gettime_ns(time.CLOCK_REALTIME)), (to, port))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.owd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    recv = sub.add_parser("recv")
    recv.add_argument("--port", type=int, required=True)
    snd = sub.add_parser("send")
    snd.add_argument("--to", required=True)
    snd.add_argument("--port", type=int, required=True)
    snd.add_argument("--phase", action="append", required=True, metavar="CPU:COUNT:INTERVAL")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: expected 1..65535")
    if args.mode == "recv":
        print(json.dumps({"delays_us": receive(args.port)}), flush=True)
        return 0
    try:
        phases = [Phase.parse(text) for text in args.phase]
    except ValueError as exc:
        parser.error(str(exc))
    if len(phases) > 0xFFFF:
        parser.error(f"--phase: at most {0xFFFF} phases, got {len(phases)}")
    send(args.to, args.port, phases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
