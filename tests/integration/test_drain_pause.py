"""What the worker's drain pause relies on, with the real netfilterqueue and kernel queue: an exception the
packet callback raises after its verdict ends ``run(block=False)`` there, and the next ``run`` goes on with the
packets still in the socket -- none lost, none left without a verdict (imqd.queue_worker.DrainPause)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.netns

ADDR = "198.18.0.1"
PACKETS = 5000
EVERY = 100

_PROBE = r"""
import select, socket, sys, threading, time
from netfilterqueue import NetfilterQueue
from imqd.queue_worker import DrainPause
seen = {"packets": 0, "pauses": 0}
def callback(pkt):
    pkt.accept()
    seen["packets"] += 1
    if seen["packets"] % EVERY == 0:
        raise DrainPause
q = NetfilterQueue()
q.bind(0, callback, max_len=100000)
def send():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(PACKETS):
        s.sendto(b"x", (ADDR, 9))
sender = threading.Thread(target=send)
sender.start()
fd, deadline = q.get_fd(), time.monotonic() + 20
while time.monotonic() < deadline and seen["packets"] < PACKETS:
    if select.select([fd], [], [], 0.1)[0]:
        try:
            q.run(block=False)
        except DrainPause:
            seen["pauses"] += 1
sender.join()
table = open("/proc/net/netfilter/nfnetlink_queue").read().split()
q.unbind()
print(seen["packets"], seen["pauses"], table[2], table[5], table[6])  # waiting, queue_dropped, user_dropped
"""


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"imqd-pause-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{ADDR}/32", "dev", "lo"],
                    ["iptables", "-A", "OUTPUT", "-o", "lo", "-d", ADDR, "-p", "udp", "--dport", "9",
                     "-j", "NFQUEUE", "--queue-num", "0"]):
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_a_callback_exception_pauses_the_drain_and_loses_nothing(namespace: str) -> None:
    code = _PROBE.replace("EVERY", str(EVERY)).replace("PACKETS", str(PACKETS)).replace("ADDR", repr(ADDR))
    res = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    packets, pauses, waiting, queue_dropped, user_dropped = map(int, res.stdout.split())
    assert packets == PACKETS and pauses == PACKETS // EVERY, res.stdout
    assert (waiting, queue_dropped, user_dropped) == (0, 0, 0), "every packet got its verdict, none dropped"
