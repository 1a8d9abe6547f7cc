"""A UDP packet generator able to saturate a Python NFQUEUE path, and the sink that counts what arrived.

Why not iperf3 -u: its UDP sender tops out well below what the forwarding path carries here.  The generator
is a ~150-line C program using ``sendmmsg`` (batches of 64), compiled with gcc on first use into a cache
directory (:mod:`bench.cbuild`); when gcc is missing, :func:`python_argv` gives the same command line in pure
Python (a ``socket.send`` loop, several times slower -- the report says which one ran).

Command line (both implementations)::

    udpgen DST[+N] PORT SIZE SECONDS PPS COUNT SRC[,SRC...]

SIZE is the UDP payload in bytes (18 makes a 64-byte Ethernet frame with FCS), PPS 0 = as fast as possible,
COUNT 0 = no limit (stop after SECONDS, or at SIGTERM).  One socket per source address, used round-robin per batch, so
several host pairs -- hence several NFQUEUE queues (the queue hash is over addresses) -- get load.
``DST+N`` sends to the N consecutive addresses starting at DST, one after the other (so each gets PPS/N, and
after ``sent`` packets destination i has had ``sent // N + (i < sent % N)``): many subscribers from one
process.  Every payload of 8 bytes or more starts with :data:`MAGIC` and the destination address (4 bytes,
network order), so a receiver can count per destination (:mod:`bench.udprecv`).  It prints one JSON line:
``{"sent": N, "errors": N, "seconds": S, "destinations": N}``.

The sink is an iptables ``raw PREROUTING ... -j DROP`` rule in the server namespace: its packet counter is the
number of packets the router forwarded, read without any userspace receiver that could itself be the
bottleneck (and without ICMP port-unreachable replies travelling back through the shaper).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.cbuild import compile_cached

__all__ = ["C_SOURCE", "build", "generator_argv", "python_argv", "parse_output", "Sink", "frame_bytes", "main",
           "MAGIC", "MAX_DESTINATIONS", "sent_to"]

MAGIC = b"IMQD"  # first payload bytes of every generated datagram (then the destination address)
MAX_DESTINATIONS = 65536
ETH_OVERHEAD = 14 + 4  # Ethernet header + FCS: a 64-byte frame carries a 46-byte IP packet
IP_UDP_HEADERS = 20 + 8

C_SOURCE = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAXSRC 16
#define MAXDST 65536

static volatile sig_atomic_t stopping;  /* SIGTERM/SIGINT: stop sending, print the result */

static void on_stop(int sig) { (void)sig; stopping = 1; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: udpgen DST[+N] PORT SIZE SECONDS PPS COUNT SRC[,SRC...]\n");
        return 2;
    }
    int port = atoi(argv[2]), size = atoi(argv[3]);
    double seconds = atof(argv[4]), pps = atof(argv[5]);
    long long count = atoll(argv[6]);
    if (size < 1 || size > 65000 || seconds <= 0 || pps < 0 || count < 0) {
        fprintf(stderr, "udpgen: bad SIZE/SECONDS/PPS/COUNT\n");
        return 2;
    }
    char *dstarg = strdup(argv[1]), *plus = strchr(dstarg, '+');
    long ndst = 1;
    if (plus) {
        *plus = 0;
        ndst = atol(plus + 1);
        if (ndst < 1 || ndst > MAXDST) { fprintf(stderr, "udpgen: bad destination count %s\n", plus + 1); return 2; }
    }
    struct in_addr first;
    if (inet_pton(AF_INET, dstarg, &first) != 1) { fprintf(stderr, "udpgen: bad DST %s\n", dstarg); return 2; }
    struct sockaddr_in *dsts = calloc(ndst, sizeof *dsts);
    for (long i = 0; i < ndst; i++) {
        dsts[i].sin_family = AF_INET;
        dsts[i].sin_port = htons(port);
        dsts[i].sin_addr.s_addr = htonl(ntohl(first.s_addr) + (uint32_t)i);
    }
    int fds[MAXSRC], nsrc = 0;
    char *srcs = strdup(argv[7]), *save = NULL;
    for (char *s = strtok_r(srcs, ",", &save); s && nsrc < MAXSRC; s = strtok_r(NULL, ",", &save)) {
        struct sockaddr_in from = {.sin_family = AF_INET};
        if (inet_pton(AF_INET, s, &from.sin_addr) != 1) { fprintf(stderr, "udpgen: bad SRC %s\n", s); return 2; }
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        int buf = 16 << 20;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf);
        if (bind(fd, (struct sockaddr *)&from, sizeof from)) { perror("udpgen: bind"); return 1; }
        if (ndst == 1 && connect(fd, (struct sockaddr *)&dsts[0], sizeof dsts[0])) { perror("udpgen: connect"); return 1; }
        fds[nsrc++] = fd;
    }
    if (nsrc == 0) { fprintf(stderr, "udpgen: no SRC\n"); return 2; }
    char *payloads = calloc(BATCH, size);
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        char *p = payloads + (size_t)i * size;
        if (size >= 8) { memcpy(p, "IMQD", 4); memcpy(p + 4, &dsts[0].sin_addr.s_addr, 4); }
        iov[i].iov_base = p;
        iov[i].iov_len = size;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    struct sigaction sa = {.sa_handler = on_stop};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    long long sent = 0, errors = 0;
    long next = 0;  /* index of the destination of the next datagram */
    double t0 = now(), t = t0, end = t0 + seconds;
    int k = 0;
    while (!stopping && t < end && (count == 0 || sent < count)) {
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
        if (ndst > 1) {
            for (int i = 0; i < n; i++) {
                struct sockaddr_in *to = &dsts[(next + i) % ndst];
                msgs[i].msg_hdr.msg_name = to;
                msgs[i].msg_hdr.msg_namelen = sizeof *to;
                if (size >= 8) memcpy((char *)iov[i].iov_base + 4, &to->sin_addr.s_addr, 4);
            }
        }
        int r = sendmmsg(fds[k], msgs, n, 0);
        if (r > 0) { sent += r; next = (next + r) % ndst; } else if (!stopping) errors++;
        k = (k + 1) % nsrc;
        t = now();
    }
    printf("{\"sent\": %lld, \"errors\": %lld, \"seconds\": %.6f, \"destinations\": %ld}\n", sent, errors,
           now() - t0, ndst);
    return 0;
}
"""

_PY_GEN = r"""
import json, signal, socket, sys, time
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
dst, port, size, seconds, pps, count, srcs = sys.argv[1:8]
port, size, seconds, pps, count = int(port), int(size), float(seconds), float(pps), int(count)
first, _, ndst = dst.partition("+")
ndst = int(ndst or 1)
base = int.from_bytes(socket.inet_aton(first), "big")
dsts = [(socket.inet_ntoa((base + i).to_bytes(4, "big")), port) for i in range(ndst)]
payloads = [(b"IMQD" + socket.inet_aton(d[0]) + bytes(size - 8)) if size >= 8 else bytes(size) for d in dsts]
socks = []
for s in srcs.split(","):
    k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    k.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
    k.bind((s, 0))
    if ndst == 1:
        k.connect(dsts[0])
    socks.append(k)
sent = errors = 0
t0 = time.monotonic(); end = t0 + seconds; n = len(socks); i = 0; nxt = 0
while True:
    t = time.monotonic()
    if stopping or t >= end or (count and sent >= count):
        break
    if pps and sent >= (t - t0) * pps + 1:
        time.sleep(0.0001); continue
    for _ in range(64):
        try:
            if ndst == 1:
                socks[i].send(payloads[0])
            else:
                socks[i].sendto(payloads[nxt], dsts[nxt])
            sent += 1; nxt = (nxt + 1) % ndst
        except OSError:
            errors += 1
        if count and sent >= count:
            break
    i = (i + 1) % n
print(json.dumps({"sent": sent, "errors": errors, "seconds": time.monotonic() - t0, "destinations": ndst}))
"""


def frame_bytes(payload: int) -> int:
    """Ethernet frame size (with FCS) of a UDP/IPv4 datagram with `payload` bytes."""
    return payload + IP_UDP_HEADERS + ETH_OVERHEAD


def build(cc: str | None = None) -> Path | None:
    """Compile the C generator (cached by source hash); None when no C compiler is available."""
    return compile_cached("udpgen", C_SOURCE, cc)


def _args(dst: str, port: int, size: int, seconds: float, pps: float, count: int, sources: Sequence[str],
          destinations: int = 1) -> list[str]:
    if not isinstance(destinations, int) or not 1 <= destinations <= MAX_DESTINATIONS:
        raise ValueError(f"destinations: expected 1..{MAX_DESTINATIONS}, got {destinations!r}")
    if int(ipaddress.IPv4Address(dst)) + destinations - 1 > 0xFFFFFFFF:
        raise ValueError(f"destinations: {destinations} addresses from {dst} run past 255.255.255.255")
    if not sources:
        raise ValueError("sources: need at least one source address")
    if not 1 <= size <= 65000:
        raise ValueError(f"size: expected 1..65000 payload bytes, got {size!r}")
    if seconds <= 0 or pps < 0 or count < 0:
        raise ValueError(f"seconds/pps/count: bad values {seconds!r}/{pps!r}/{count!r}")
    where = dst if destinations == 1 else f"{dst}+{destinations}"
    return [where, str(port), str(size), f"{seconds:g}", f"{pps:g}", str(count), ",".join(sources)]


def python_argv(dst: str, port: int, size: int, seconds: float, pps: float = 0, count: int = 0,
                sources: Sequence[str] = (), destinations: int = 1) -> list[str]:
    """The pure-Python generator's command line (same arguments and output as the C one)."""
    return [sys.executable, "-c", _PY_GEN, *_args(dst, port, size, seconds, pps, count, sources, destinations)]


def generator_argv(dst: str, port: int, size: int, seconds: float, pps: float = 0, count: int = 0,
                   sources: Sequence[str] = (), *, destinations: int = 1, prefer_c: bool = True
                   ) -> tuple[str, list[str]]:
    """(implementation name "c-sendmmsg" or "python-send", argv) for one generator run; `destinations` > 1
    sends to that many consecutive addresses from `dst` in turn."""
    binary = build() if prefer_c else None
    if binary is None:
        return "python-send", python_argv(dst, port, size, seconds, pps, count, sources, destinations)
    return "c-sendmmsg", [str(binary), *_args(dst, port, size, seconds, pps, count, sources, destinations)]


def sent_to(index: int, sent: int, destinations: int) -> int:
    """Datagrams destination `index` (0-based) received from a generator that sent `sent` to `destinations`
    addresses in turn, starting with the first."""
    if not 0 <= index < destinations:
        raise ValueError(f"index: expected 0..{destinations - 1}, got {index!r}")
    return sent // destinations + (1 if index < sent % destinations else 0)


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
