"""What the address sets save: TCP downloads through imqd with and without ``--no-address-sets``.

One ingress class for client 0's address (above capacity: 40gbit), client 1 unshaped; per case the Gbit/s of a
1-flow download to each client and the packets the kernel queued to imqd meanwhile (NFQUEUE packet ids, so a
GSO super-packet counts once), with plain forwarding (no imqd) as the reference.  Run as root, holding
/tmp/imqd-heavy.lock::

    flock /tmp/imqd-heavy.lock python -m bench.address_sets [--seconds 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

from imqd.kernel_queues import PROC_PATH, parse_nfqueue_table
from imqd.lab import ImqdInstance
from imqd.netns import Topology


def queued(topo: Topology) -> int:
    table = parse_nfqueue_table(topo.exec(topo.router_ns, ["cat", PROC_PATH]).stdout)
    return sum(row["last_id"] for row in table.values())


def download(topo: Topology, client: int, seconds: int, repeat: int, imqd: bool) -> dict[str, float]:
    """Median Gbit/s of `repeat` downloads to `client`, and the packets queued per second of them."""
    runs = []
    for _ in range(repeat):
        before = queued(topo) if imqd else 0
        bps = topo.iperf3(client, seconds=seconds, omit=1, reverse=True)["bps"]
        runs.append((bps, ((queued(topo) - before) if imqd else 0) / (seconds + 1)))
    return {"gbps": statistics.median(r[0] for r in runs) / 1e9, "queued_per_s": statistics.median(r[1] for r in runs)}


def measure(seconds: int, repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Topology(clients=2) as topo, topo.iperf3_server(5201):
        config = {"classes": [{"name": "down0", "direction": "ingress", "rate": "40gbit",
                               "match": {"dst": topo.clients[0].addr4}}]}
        out["plain (first)"] = {c: download(topo, c, seconds, repeat, False) for c in (0, 1)}
        for case, extra in (("address sets", []), ("--no-address-sets", ["--no-address-sets"])):
            with ImqdInstance(topo, config, queues="0", extra_args=extra):
                out[case] = {c: download(topo, c, seconds, repeat, True) for c in (0, 1)}
        out["plain (last)"] = {c: download(topo, c, seconds, repeat, False) for c in (0, 1)}
    return out


def table(res: dict[str, Any]) -> str:
    lines = ["| rules | shaped host (class 40gbit) Gbit/s | its packets queued/s (per MB) | unshaped host Gbit/s | "
             "its packets queued/s |", "|---|---:|---:|---:|---:|"]
    for case, by in res.items():
        per_mb = by[0]["queued_per_s"] / (by[0]["gbps"] * 125) if by[0]["gbps"] else 0.0
        lines.append(f"| {case} | {by[0]['gbps']:.2f} | {by[0]['queued_per_s']:,.0f} ({per_mb:.1f}) | "
                     f"{by[1]['gbps']:.2f} | {by[1]['queued_per_s']:,.0f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    print(table(measure(args.seconds, args.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
