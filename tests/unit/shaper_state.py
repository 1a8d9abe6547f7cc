"""What a Shaper is configured to do, as plain data: the yardstick for "a delta leaves the workers in the
same state as a fresh start from the final configuration".

Built only from what a Shaper must keep answering however it applies changes (a rebuild now, incremental
HTB and classifier updates later): per direction, every class's HTB parameters and token slot, each
class's overhead, and the class the classifier picks for sample packets (the default class included).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from scapy.all import IP, TCP, UDP, IPv6

from imqd.config import Config
from imqd.config_fields import cidr_list
from imqd.shaper import Shaper

OUTSIDE4, OUTSIDE6 = "203.0.113.9", "2001:db8:ffff::9"


def sample_packets(config: Config) -> list[bytes]:
    """Packets that hit every address of every match of ``config`` (first and last address of each prefix),
    in both roles, plus a few that match nothing."""
    addrs: set[str] = set()
    for c in config.classes:
        if c.match is None:
            continue
        for cidr in (*cidr_list(c.match.src), *cidr_list(c.match.dst)):
            net = ipaddress.ip_network(cidr)
            addrs.update({str(net.network_address), str(net.broadcast_address)})
    out = [bytes(IP(src=OUTSIDE4, dst="198.51.100.1") / UDP(sport=1, dport=2)),
           bytes(IPv6(src=OUTSIDE6, dst="2001:db8:fffe::1") / TCP())]
    for a in sorted(addrs):
        v6 = ":" in a
        ip, other = (IPv6, OUTSIDE6) if v6 else (IP, OUTSIDE4)
        for l4 in (TCP(sport=40000, dport=80), UDP(sport=5060, dport=5060)):
            out.append(bytes(ip(src=other, dst=a) / l4))
            out.append(bytes(ip(src=a, dst=other) / l4))
    return out


def shaper_state(shaper: Shaper, packets: list[bytes]) -> dict[str, Any]:
    """Everything a fresh start and a sequence of deltas must agree on (see the module doc)."""
    state: dict[str, Any] = {"enabled": shaper.enabled, "version": shaper.version}
    for direction, tree in shaper.trees.items():
        if tree is None:
            state[direction] = None
            continue
        state[direction] = {
            "classes": {p.name: p for p in tree.htb.classes},
            "leaves": sorted(tree.htb.leaves()),
            "overhead": dict(tree.overhead),
            "host_key": dict(tree.host_key),
            "classify": [tree.classifier.classify_bytes(p, 0, None, None)[1] for p in packets],
        }
    return state
