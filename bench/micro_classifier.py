"""``python -m bench.micro_classifier`` -- the classifier alone: the indexed one against the linear one.

For 1, 100, 1,000 and 10,000 rules, one destination /32 per class (the ISP case: a subscriber per class), it
prints the time ``classify_packet`` takes for a 64-byte UDP packet to the address of the *last* rule (the
linear classifier's worst case) and to an address no rule matches, the time to build the classifier, the
memory it keeps per rule (tracemalloc), and the time of one live change (one rule replaced).  A second table
spreads the rules over several prefix lengths, where each packet probes one dict per length present.

Timings are the minimum over repeats of a tight loop (the function call included), so they compare the two
classifiers on this machine; they are not the worker's whole per-packet path.  Run it under the shared
benchmark lock on a busy machine: ``flock /tmp/imqd-heavy.lock .venv/bin/python -m bench.micro_classifier``.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import struct
import sys
import time
import timeit
import tracemalloc
from collections.abc import Callable, Sequence

from imqd.classifier import Classifier, LinearClassifier, Match

BASE = int(ipaddress.IPv4Address("198.18.0.0"))
MISS = "198.19.255.254"  # inside the test range, matched by no rule here
SIZES = (1, 100, 1_000, 10_000)


class FakePacket:
    """What classify_packet may read of a netfilterqueue packet."""

    indev, outdev = 1, 2

    def get_mark(self) -> int:
        return 0


def udp64(dst: str, src: str = "198.18.255.1") -> bytes:
    """A 64-byte IPv4/UDP packet (20 + 8 + 36 bytes), as the operator benchmark sends."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 64, 1, 0, 64, 17, 0, ipaddress.IPv4Address(src).packed,
                     ipaddress.IPv4Address(dst).packed)  # fmt: skip
    return ip + struct.pack("!HHHH", 40000, 5001, 44, 0) + bytes(36)


def host_rules(n: int) -> list[tuple[str, Match]]:
    """``n`` classes, each one destination /32 in 198.18.0.0/15."""
    return [(f"sub{i}", Match(dst=f"{ipaddress.IPv4Address(BASE + 1 + i)}/32")) for i in range(n)]


def prefix_rules(n: int, lengths: Sequence[int]) -> list[tuple[str, Match]]:
    """``n`` classes over the prefix ``lengths`` in turn, one disjoint prefix each, in 10.0.0.0/8 (rules only:
    no packet is sent anywhere)."""
    block = 1 << (32 - min(lengths))
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    return [(f"sub{i}", Match(dst=str(ipaddress.IPv4Network((base + i * block, lengths[i % len(lengths)])))))
            for i in range(n)]  # fmt: skip


def ns_per_packet(fn: Callable[..., object], data: bytes, repeat: int) -> float:
    """Minimum over ``repeat`` loops of the time of one call, in ns."""
    namespace = {"f": fn, "p": FakePacket(), "d": data, "n": {1: None, 2: None}}
    number = 20_000
    return min(timeit.repeat("f(p, d, n)", globals=namespace, number=number, repeat=repeat)) / number * 1e9


def build(kind: type[Classifier], rules: list[tuple[str, Match]]) -> tuple[Classifier, float, float]:
    """The classifier, the seconds it took, and the bytes it keeps per rule (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    c = kind(rules, None)
    seconds = time.perf_counter() - t0
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return c, seconds, kept / max(1, len(rules))


def build_seconds(kind: type[Classifier], rules: list[tuple[str, Match]], repeat: int) -> float:
    """Minimum build time without tracemalloc (which slows allocation down)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        kind(rules, None)
        best = min(best, time.perf_counter() - t0)
    return best


def change_seconds(c: Classifier, rules: list[tuple[str, Match]]) -> float:
    """One live change: the last rule's class gets another address, and back."""
    name, m = rules[-1]
    other = Match(dst="198.19.255.253/32")
    order = c.order(name)
    t0 = time.perf_counter()
    c.update(add=[(name, other, order)])
    c.update(add=[(name, m, order)])
    return (time.perf_counter() - t0) / 2


def row(label: str, rules: list[tuple[str, Match]], hit: bytes, repeat: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for tag, kind in (("old", LinearClassifier), ("new", Classifier)):
        c, _, per_rule = build(kind, rules)
        assert c.classify_bytes(hit, 0, None, None)[1] == rules[-1][0], f"{label}: {tag} misclassifies"
        out[f"{tag}_last"] = ns_per_packet(c.classify_packet, hit, repeat)
        out[f"{tag}_miss"] = ns_per_packet(c.classify_packet, udp64(MISS), repeat)
        out[f"{tag}_build"] = build_seconds(kind, rules, 1 if len(rules) > 1000 and tag == "old" else 3)
        out[f"{tag}_bytes"] = per_rule
        out[f"{tag}_change"] = change_seconds(c, rules)
    return out


def print_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{title}")
    print(f"{'rules':>14} | {'ns/pkt last':>15} | {'ns/pkt miss':>15} | {'build ms':>15} | "
          f"{'bytes/rule':>13} | {'change µs':>17}")  # fmt: skip
    print(f"{'':>14} | {'old':>7} {'new':>7} | {'old':>7} {'new':>7} | {'old':>7} {'new':>7} | "
          f"{'old':>6} {'new':>6} | {'old':>8} {'new':>8}")  # fmt: skip
    for label, r in rows:
        print(f"{label:>14} | {r['old_last']:7.0f} {r['new_last']:7.0f} | {r['old_miss']:7.0f} {r['new_miss']:7.0f} "
              f"| {r['old_build'] * 1e3:7.1f} {r['new_build'] * 1e3:7.1f} | {r['old_bytes']:6.0f} "
              f"{r['new_bytes']:6.0f} | {r['old_change'] * 1e6:8.0f} {r['new_change'] * 1e6:8.1f}")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_classifier", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timing loops per figure (the minimum is shown)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="rule counts")
    args = parser.parse_args(argv)
    print(f"Python {sys.version.split()[0]}; old = LinearClassifier (one if per rule), new = Classifier (index)")
    hosts = []
    for n in args.sizes:
        rules = host_rules(n)
        hosts.append((f"{n} x /32", row(f"{n} /32", rules, udp64(str(rules[-1][1].dst).split("/")[0]), args.repeat)))
    print_table("destination /32 per class (packet to the last class; to no class)", hosts)
    mixed = []
    for lengths in ((32, 24), (32, 30, 29, 28, 27, 26, 25, 24)):
        n = max(args.sizes)
        rules = prefix_rules(n, lengths)
        hit = udp64(str(ipaddress.IPv4Network(rules[-1][1].dst).network_address))
        mixed.append((f"{n} x {len(lengths)} len", row(f"{lengths}", rules, hit, args.repeat)))
    print_table("destination prefixes of several lengths (one dict probe per length present)", mixed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
