"""A UDP packet generator able to saturate a Python NFQUEUE path, and the sink that counts what arrived.

Why not iperf3 -u: its UDP sender tops out well below what the forwarding path carries here.  The generator
is a ~100-line C program using ``sendmmsg`` (batches of 64), compiled with gcc on first use into a cache
directory; when gcc is missing, :func:`python_argv` gives the same command line in pure Python (a
``socket.send`` loop, several times slower -- the report says which one ran).

Command line (both implementations)::

    udpgen DST PORT SIZE SECONDS PPS COUNT SRC[,SRC...]

SIZE is the UDP payload in bytes (18 makes a 64-byte Ethernet frame with FCS), PPS 0 = as fast as possible,
COUNT 0 = no limit (stop after SECONDS).  One socket per source address, used round-robin per batch, so
several host pairs -- hence several NFQUEUE queues (the queue hash is over addresses) -- get load.  It prints
one JSON line: ``{"sent": N, "errors": N, "seconds": S}``.

The sink is an iptables ``raw PREROUTING ... -j DROP`` rule in the server namespace: its packet counter is the
number of packets the router forwarded, read without any userspace receiver that could itself be the
bottleneck (and without ICMP port-unreachable replies travelling back through the shaper).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["C_SOURCE", "build", "generator_argv", "python_argv", "parse_output", "Sink", "frame_bytes", "main"]

CACHE_DIR = Path(os.environ.get("IMQD_BENCH_CACHE", "/tmp/imqd-bench-cache"))
ETH_OVERHEAD = 14 + 4  # Ethernet header + FCS: a 64-byte frame carries a 46-byte IP packet
IP_UDP_HEADERS = 20 + 8

C_SOURCE = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAXSRC 16

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: udpgen DST PORT SIZE SECONDS PPS COUNT SRC[,SRC...]\n");
        return 2;
    }
    const char *dst = argv[1];
    int port = atoi(argv[2]), size = atoi(argv[3]);
    double seconds = atof(argv[4]), pps = atof(argv[5]);
    long long count = atoll(argv[6]);
    if (size < 1 || size > 65000 || seconds <= 0 || pps < 0 || count < 0) {
        fprintf(stderr, "udpgen: bad SIZE/SECONDS/PPS/COUNT\n");
        return 2;
    }
    int fds[MAXSRC], nsrc = 0;
    char *srcs = strdup(argv[7]), *save = NULL;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, dst, &to.sin_addr) != 1) { fprintf(stderr, "udpgen: bad DST %s\n", dst); return 2; }
    for (char *s = strtok_r(srcs, ",", &save); s && nsrc < MAXSRC; s = strtok_r(NULL, ",", &save)) {
        struct sockaddr_in from = {.sin_family = AF_INET};
        if (inet_pton(AF_INET, s, &from.sin_addr) != 1) { fprintf(stderr, "udpgen: bad SRC %s\n", s); return 2; }
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        int buf = 16 << 20;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf);
        if (bind(fd, (struct sockaddr *)&from, sizeof from) || connect(fd, (struct sockaddr *)&to, sizeof to)) {
            perror("udpgen: bind/connect");
            return 1;
        }
        fds[nsrc++] = fd;
    }
    if (nsrc == 0) { fprintf(stderr, "udpgen: no SRC\n"); return 2; }
    char *payload = calloc(1, size);
    struct iovec iov = {.iov_base = payload, .iov_len = size};
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) { msgs[i].msg_hdr.msg_iov = &iov; msgs[i].msg_hdr.msg_iovlen = 1; }
    long long sent = 0, errors = 0;
    double t0 = now(), t = t0, end = t0 + seconds;
    int k = 0;
    while (t < end && (count == 0 || sent < count)) {
        int n = BATCH;
        if (count && count - sent < n) n = (int)(count - sent);
        if (pps > 0) {
            long long due = (long long)((t - t0) * pps) + 1;
            if (due <= sent) {
                struct timespec ts = {0, 50000};
                nanosleep(&ts, NULL);
                t = now();
                continue;
            }
            if (due - sent < n) n = (int)(due - sent);
        }
        int r = sendmmsg(fds[k], msgs, n, 0);
        if (r > 0) sent += r; else errors++;
        k = (k + 1) % nsrc;
        t = now();
    }
    printf("{\"sent\": %lld, \"errors\": %lld, \"seconds\": %.6f}\n", sent, errors, now() - t0);
    return 0;
}
"""

_PY_GEN = r"""
import json, socket, sys, time
dst, port, size, seconds, pps, count, srcs = sys.argv[1:8]
port, size, seconds, pps, count = int(port), int(size), float(seconds), float(pps), int(count)
socks = []
for s in srcs.split(","):
    k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    k.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
    k.bind((s, 0)); k.connect((dst, port)); socks.append(k.send)
payload = bytes(size)
sent = errors = 0
t0 = time.monotonic(); end = t0 + seconds; n = len(socks); i = 0
while True:
    t = time.monotonic()
    if t >= end or (count and sent >= count):
        break
    if pps and sent >= (t - t0) * pps + 1:
        time.sleep(0.0001); continue
    for _ in range(64):
        try:
            socks[i](payload); sent += 1
        except OSError:
            errors += 1
        if count and sent >= count:
            break
    i = (i + 1) % n
print(json.dumps({"sent": sent, "errors": errors, "seconds": time.monotonic() - t0}))
"""


def frame_bytes(payload: int) -> int:
    """Ethernet frame size (with FCS) of a UDP/IPv4 datagram with `payload` bytes."""
    return payload + IP_UDP_HEADERS + ETH_OVERHEAD


def build(cc: str | None = None) -> Path | None:
    """Compile the C generator (cached by source hash); None when no C compiler is available."""
    cc = cc or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    digest = hashlib.sha256(C_SOURCE.encode()).hexdigest()[:16]
    binary = CACHE_DIR / f"udpgen-{digest}"
    if binary.exists():
        return binary
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    src = CACHE_DIR / f"udpgen-{digest}.c"
    src.write_text(C_SOURCE)
    tmp = binary.with_suffix(f".tmp{os.getpid()}")
    res = subprocess.run([cc, "-O2", "-o", str(tmp), str(src)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"udpgen: {cc} failed: {res.stderr.strip()[:500]}")
    os.replace(tmp, binary)
    return binary


def _args(dst: str, port: int, size: int, seconds: float, pps: float, count: int, sources: Sequence[str]
          ) -> list[str]:
    if not sources:
        raise ValueError("sources: need at least one source address")
    if not 1 <= size <= 65000:
        raise ValueError(f"size: expected 1..65000 payload bytes, got {size!r}")
    if seconds <= 0 or pps < 0 or count < 0:
        raise ValueError(f"seconds/pps/count: bad values {seconds!r}/{pps!r}/{count!r}")
    return [dst, str(port), str(size), f"{seconds:g}", f"{pps:g}", str(count), ",".join(sources)]


def python_argv(dst: str, port: int, size: int, seconds: float, pps: float = 0, count: int = 0,
                sources: Sequence[str] = ()) -> list[str]:
    """The pure-Python generator's command line (same arguments and output as the C one)."""
    return [sys.executable, "-c", _PY_GEN, *_args(dst, port, size, seconds, pps, count, sources)]


def generator_argv(dst: str, port: int, size: int, seconds: float, pps: float = 0, count: int = 0,
                   sources: Sequence[str] = (), *, prefer_c: bool = True) -> tuple[str, list[str]]:
    """(implementation name "c-sendmmsg" or "python-send", argv) for one generator run."""
    binary = build() if prefer_c else None
    if binary is None:
        return "python-send", python_argv(dst, port, size, seconds, pps, count, sources)
    return "c-sendmmsg", [str(binary), *_args(dst, port, size, seconds, pps, count, sources)]


def parse_output(text: str) -> dict[str, Any]:
    """The generator's JSON line; ValueError with the text when it is missing."""
    for line in reversed(text.strip().splitlines()):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and "sent" in data:
            return data
    raise ValueError(f"udpgen printed no result line: {text.strip()[:300]!r}")


class Sink:
    """Counts UDP packets to `port` arriving in a namespace with a raw-table DROP rule (installed on enter)."""

    def __init__(self, run: Callable[..., subprocess.CompletedProcess], port: int) -> None:
        self.run = run  # a Topology.runner(ns)
        self.port = port
        self._rule = ["PREROUTING", "-p", "udp", "--dport", str(port), "-j", "DROP"]

    def __enter__(self) -> Sink:
        self.run(["iptables", "-t", "raw", "-A", *self._rule], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(["iptables", "-t", "raw", "-D", *self._rule], check=False)

    def count(self) -> int:
        """Packets the rule has dropped so far."""
        out = self.run(["iptables", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"], check=True).stdout
        return parse_counter(out, self.port)


def parse_counter(listing: str, port: int) -> int:
    """The packet counter of the ``udp dpt:PORT`` DROP rule in ``iptables -L -v -x -n`` output."""
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "DROP" and f"dpt:{port}" in fields:
            return int(fields[0])
    raise ValueError(f"no DROP rule for udp dpt:{port} in the listing")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.udpgen`` : build the C generator and print its path (or say why not)."""
    binary = build()
    print(binary if binary else "no C compiler: the Python generator will be used")
    return 0


if __name__ == "__main__":
    sys.exit(main())
