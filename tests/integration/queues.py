"""Which NFQUEUE queue the kernel's flow hash gives a host pair: for tests that need two workers busy."""

from __future__ import annotations

import sys
import threading

from typing import Any

from imqd.kernel_queues import PROC_PATH, parse_nfqueue_table
from imqd.netns import Topology


def wire_packets(worker: dict[str, Any]) -> int:
    """The packets a worker's verdicts stand for on the wire: a GSO super-packet counts as its segments."""
    return int(worker["packets"] - worker.get("gso_packets", 0) + worker.get("gso_segments", 0))


def queue_last_ids(topo: Topology) -> dict[int, int]:
    """Per queue: the id of the last packet queued (from the router's nfnetlink_queue table)."""
    table = parse_nfqueue_table(topo.exec(topo.router_ns, ["cat", PROC_PATH]).stdout)
    return {q: row["last_id"] for q, row in table.items()}


def queue_of(topo: Topology, source: str, probes: int = 5) -> int:
    """Which queue the kernel's flow hash picks for TCP from ``source`` to the server.

    Probe with a few SYNs to a closed port and take the queue whose packet ids moved the most: unrelated
    packets (IPv6 neighbour discovery, say) may move another queue's ids a little at the same time.
    """
    before = queue_last_ids(topo)
    probe = ("import socket\nfor _ in range(%d):\n    s = socket.socket(); s.settimeout(1); s.bind((%r, 0)); "
             "s.connect_ex((%r, 9)); s.close()" % (probes, source, topo.server_addr4))
    topo.exec(topo.clients[0].ns, [sys.executable, "-c", probe], check=False)
    after = queue_last_ids(topo)
    moved = {q: after[q] - before.get(q, 0) for q in after}
    queue = max(moved, key=moved.get)
    assert moved[queue] >= probes, f"probe SYNs were not queued: {moved}"
    return queue


def sources_on_two_queues(topo: Topology) -> list[str]:
    """Two addresses of client 0 whose host pairs with the server hash to different queues (of 0:1)."""
    by_queue: dict[int, str] = {}
    for addr in topo.clients[0].addrs4:
        by_queue.setdefault(queue_of(topo, addr), addr)
        if len(by_queue) == 2:
            return list(by_queue.values())
    raise AssertionError(f"no two client addresses hash to different queues: {by_queue}")


def sources_split(topo: Topology, alone: int, together: int) -> tuple[list[str], list[str]]:
    """Addresses of client 0 whose host pairs with the server hash to two queues (of 0:1): ``alone`` of them
    on one queue, ``together`` on the other (the queue with more candidates takes ``together``)."""
    by_queue: dict[int, list[str]] = {}
    for addr in topo.clients[0].addrs4:
        by_queue.setdefault(queue_of(topo, addr), []).append(addr)
        groups = sorted(by_queue.values(), key=len)
        if len(groups) == 2 and len(groups[0]) >= alone and len(groups[1]) >= together:
            return groups[0][:alone], groups[1][:together]
    raise AssertionError(f"client addresses do not split {alone}/{together} over two queues: {by_queue}")


def uploads_at_once(topo: Topology, sources: list[str], seconds: int, omit: int) -> dict[str, float]:
    """One iperf3 upload from each of `sources` at the same time (servers listening on 5201, 5202, ...);
    each one's goodput in bit/s."""
    results: dict[str, float] = {}

    def run(port: int, addr: str) -> None:
        results[addr] = topo.iperf3(0, port=port, bind=addr, seconds=seconds, omit=omit)["bps"]

    threads = [threading.Thread(target=run, args=(5201 + i, a)) for i, a in enumerate(sources)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
