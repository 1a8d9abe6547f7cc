"""A per-destination UDP counter: how many datagrams each of many subscriber addresses received.

Why: fairness between thousands of backlogged subscribers is a per-destination figure, and a raw-table DROP
rule (:class:`bench.udpgen.Sink`) only counts the total.  The namespace that plays the subscribers answers
for their whole prefix (``ip route add local PREFIX dev lo``), one socket bound to the port receives it all,
and the generator wrote each datagram's destination address into its payload (:data:`bench.udpgen.MAGIC`).
The counter is a small C program (``recvmmsg``, batches of 64): a Python receiver tops out near 50-100 k
packets/s on 2 cores and would be the bottleneck.  It is compiled on first use (:mod:`bench.cbuild`); there is
no Python fallback, so a missing compiler is a clear error.

Command line and protocol::

    udprecv PORT BASE COUNT

It counts datagrams whose payload names an address in [BASE, BASE + COUNT) (others go to ``other``), prints
``ready`` once bound, and answers each ``snap`` line on stdin with one JSON line::

    {"t": MONOTONIC_SECONDS, "total": N, "other": N, "rcvbuf_errors": N, "counts": [N, ...]}

``t`` is CLOCK_MONOTONIC (the same clock as Python's ``time.monotonic()`` in any namespace), and
``rcvbuf_errors`` is the namespace's UDP ``RcvbufErrors`` from ``/proc/net/snmp``: datagrams the receiver's
own socket dropped, which must not be blamed on the shaper.  End of stdin (or ``quit``) ends it.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.cbuild import require

__all__ = ["C_SOURCE", "build", "Snapshot", "parse_snapshot", "Receiver", "snapshot_data"]

C_SOURCE = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define BUF 64

static char bufs[BATCH][BUF];
static struct mmsghdr msgs[BATCH];
static long long *counts, total, other;
static long count;
static uint32_t base;

/* count the first r datagrams of the batch by the destination address in their payload */
static void tally(int r) {
    for (int i = 0; i < r; i++) {
        total++;
        uint32_t a;
        if (msgs[i].msg_len < 8 || memcmp(bufs[i], "IMQD", 4) != 0) { other++; continue; }
        memcpy(&a, bufs[i] + 4, 4);
        uint32_t idx = ntohl(a) - base;
        if (idx < (uint32_t)count) counts[idx]++; else other++;
    }
}

static long long rcvbuf_errors(void) {
    FILE *f = fopen("/proc/net/snmp", "r");
    if (!f) return -1;
    char head[1024], vals[1024];
    long long out = -1;
    while (fgets(head, sizeof head, f) && fgets(vals, sizeof vals, f)) {
        if (strncmp(head, "Udp:", 4) != 0) continue;
        char *hs = NULL, *vs = NULL;
        char *h = strtok_r(head, " \n", &hs), *v = strtok_r(vals, " \n", &vs);
        while (h && v) {
            if (strcmp(h, "RcvbufErrors") == 0) { out = atoll(v); break; }
            h = strtok_r(NULL, " \n", &hs);
            v = strtok_r(NULL, " \n", &vs);
        }
        break;
    }
    fclose(f);
    return out;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: udprecv PORT BASE COUNT\n"); return 2; }
    int port = atoi(argv[1]);
    count = atol(argv[3]);
    struct in_addr base_addr;
    if (port < 1 || port > 65535 || count < 1 || count > (1L << 24) || inet_pton(AF_INET, argv[2], &base_addr) != 1) {
        fprintf(stderr, "udprecv: bad PORT/BASE/COUNT\n");
        return 2;
    }
    base = ntohl(base_addr.s_addr);
    counts = calloc(count, sizeof *counts);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int buf = 64 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf);
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr *)&any, sizeof any)) { perror("udprecv: bind"); return 1; }
    struct iovec iov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = BUF;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    printf("ready\n");
    fflush(stdout);
    struct pollfd pfd[2] = {{.fd = fd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
    char line[64];
    size_t have = 0;
    for (;;) {
        if (poll(pfd, 2, -1) < 0) continue;
        if (pfd[0].revents & POLLIN) {
            int r = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
            tally(r);
        }
        if (pfd[1].revents & (POLLIN | POLLHUP)) {
            ssize_t n = read(0, line + have, sizeof line - 1 - have);
            if (n <= 0) return 0;
            have += n;
            line[have] = 0;
            char *nl;
            while ((nl = strchr(line, '\n'))) {
                *nl = 0;
                if (strcmp(line, "quit") == 0) return 0;
                if (strcmp(line, "snap") == 0) {
                    /* drain what already arrived, so the snapshot counts everything before its stamp */
                    int r;
                    while ((r = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL)) > 0) {
                        tally(r);
                    }
                    struct timespec ts;
                    clock_gettime(CLOCK_MONOTONIC, &ts);
                    printf("{\"t\": %.6f, \"total\": %lld, \"other\": %lld, \"rcvbuf_errors\": %lld, \"counts\": [",
                           ts.tv_sec + ts.tv_nsec / 1e9, total, other, rcvbuf_errors());
                    for (long i = 0; i < count; i++) printf(i ? ",%lld" : "%lld", counts[i]);
                    printf("]}\n");
                    fflush(stdout);
                }
                size_t rest = have - (size_t)(nl + 1 - line);
                memmove(line, nl + 1, rest);
                have = rest;
                line[have] = 0;
            }
            if (have >= sizeof line - 1) have = 0;  /* an over-long line: dropped */
        }
    }
}
"""


def build(cc: str | None = None) -> str:
    """The compiled receiver's path (CompilerMissing without a C compiler)."""
    return str(require("udprecv", C_SOURCE, cc))


@dataclass(frozen=True)
class Snapshot:
    """The receiver's counters at one moment (CLOCK_MONOTONIC seconds)."""

    t: float
    total: int
    other: int
    rcvbuf_errors: int
    counts: tuple[int, ...]


def parse_snapshot(line: str, count: int) -> Snapshot:
    """One ``snap`` answer; ValueError naming what is wrong with it."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"udprecv: not a JSON snapshot: {line.strip()[:200]!r}") from e
    if not isinstance(data, dict) or not {"t", "total", "other", "rcvbuf_errors", "counts"} <= set(data):
        raise ValueError(f"udprecv: snapshot without t/total/other/rcvbuf_errors/counts: {line.strip()[:200]!r}")
    if len(data["counts"]) != count:
        raise ValueError(f"udprecv: {len(data['counts'])} counts, expected {count}")
    return Snapshot(float(data["t"]), int(data["total"]), int(data["other"]), int(data["rcvbuf_errors"]),
                    tuple(int(c) for c in data["counts"]))


class Receiver:
    """The counter running in a namespace (a context manager): ``snap()`` reads its counters."""

    def __init__(self, popen: Callable[..., subprocess.Popen[str]], port: int, base: str, count: int) -> None:
        ipaddress.IPv4Address(base)  # ValueError for a bad address, before anything starts
        if not 1 <= count <= 1 << 24:
            raise ValueError(f"count: expected 1..{1 << 24}, got {count!r}")
        self.popen, self.port, self.base, self.count = popen, port, base, count
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Receiver:
        self.proc = self.popen([build(), str(self.port), self.base, str(self.count)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().strip()
        if ready != "ready":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.__exit__()
            raise RuntimeError(f"udprecv did not start: {ready or err.strip()[-300:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def snap(self) -> Snapshot:
        """The counters now (everything that arrived before the answer's stamp is counted)."""
        if self.proc is None or self.proc.stdin is None or self.proc.stdout is None:
            raise RuntimeError("udprecv is not running")
        self.proc.stdin.write("snap\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"udprecv exited: {self.proc.stderr.read()[-300:] if self.proc.stderr else ''}")
        return parse_snapshot(line, self.count)


def snapshot_data(snap: Snapshot) -> dict[str, Any]:
    """A snapshot as plain JSON data (without the counts: records keep derived per-destination figures)."""
    return {"t": snap.t, "total": snap.total, "other": snap.other, "rcvbuf_errors": snap.rcvbuf_errors}
