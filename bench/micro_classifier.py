"""``python -m bench.micro_classifier`` -- the classifier alone: the indexed one against the linear one.

For 1, 100, 1,000 and 10,000 rules, one destination /32 per class (the ISP case: a subscriber per class), it
prints the time ``classify_packet`` takes for a 64-byte UDP packet to the address of the *last* rule (the
linear classifier's worst case) and to an address no rule matches, the time to build the classifier, the
memory it keeps per rule (tracemalloc), and the time of one live change (one rule replaced).  A second table
spreads 10,000 rules over several prefix lengths, where each packet probes one dict per length present, with
and without the exact-address cache, for one busy address and for a new address every packet (the cache's
worst case).  Last, what ``Classifier.from_config`` costs for 10,000 subscriber classes.

Timings are the minimum over repeats of a tight loop (the function call included), so they compare the two
classifiers on this machine; they are not the worker's whole per-packet path.  Run it under the shared
benchmark lock on a busy machine: ``flock /tmp/imqd-heavy.lock .venv/bin/python -m bench.micro_classifier``.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import itertools
import struct
import sys
import time
import timeit
import tracemalloc
from collections.abc import Callable, Sequence

from imqd import classifier_codegen as codegen
from imqd.classifier import Classifier, LinearClassifier, Match
from imqd.config import parse_config

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
    """``n`` classes over the prefix ``lengths`` in turn, one disjoint prefix each, in 10.0.0.0/8 (these
    packets are bytes in memory: nothing is sent anywhere)."""
    block = 1 << (32 - min(lengths))
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    return [(f"sub{i}", Match(dst=str(ipaddress.IPv4Network((base + i * block, lengths[i % len(lengths)])))))
            for i in range(n)]  # fmt: skip


def ns_per_packet(fn: Callable[..., object], packets: Sequence[bytes], repeat: int) -> float:
    """Minimum over ``repeat`` loops of the time of one call, in ns.  One packet: the same each call; several:
    each call the next (every loop continues where the last one stopped, so none repeats if enough)."""
    namespace: dict[str, object] = {"f": fn, "p": FakePacket(), "n": {1: None, 2: None}}
    if len(packets) == 1:
        stmt, namespace["d"] = "f(p, d, n)", packets[0]
    else:
        stmt, namespace["nx"], namespace["it"] = "f(p, nx(it), n)", next, itertools.cycle(packets)
    once = timeit.timeit(stmt, globals=namespace, number=10) / 10
    number = max(10, min(20_000, int(0.005 / max(once, 1e-9))))  # ~5 ms per loop: short loops dodge other load
    return min(timeit.repeat(stmt, globals=namespace, number=number, repeat=repeat)) / number * 1e9


def build(kind: type[Classifier], rules: list[tuple[str, Match]]) -> tuple[Classifier, float]:
    """The classifier and the bytes it keeps per rule (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    c = kind(rules, None)
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return c, kept / max(1, len(rules))


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


def compare(rules: list[tuple[str, Match]], hit: bytes, repeat: int) -> dict[str, float]:
    """Old and new: ns/packet to the last rule and to no rule, build time, bytes per rule, one change."""
    out: dict[str, float] = {}
    miss = udp64(MISS)
    for tag, kind in (("old", LinearClassifier), ("new", Classifier)):
        c, out[f"{tag}_bytes"] = build(kind, rules)
        assert c.classify_bytes(hit, 0, None, None)[1] == rules[-1][0], f"{tag} misclassifies"
        assert c.classify_bytes(miss, 0, None, None)[1] is None, f"{tag} misclassifies"
        out[f"{tag}_last"] = ns_per_packet(c.classify_packet, [hit], repeat)
        out[f"{tag}_miss"] = ns_per_packet(c.classify_packet, [miss], repeat)
        out[f"{tag}_build"] = build_seconds(kind, rules, 1 if tag == "old" and len(rules) > 1000 else 3)
        out[f"{tag}_change"] = change_seconds(c, rules)
    return out


def print_sizes(rows: list[tuple[int, dict[str, float]]]) -> None:
    print("\nOne destination /32 per class; a packet to the last class ('last') and to no class ('miss')")
    print(f"{'rules':>7} | {'ns/pkt last':>15} | {'ns/pkt miss':>15} | {'build ms':>15} | {'bytes/rule':>13} | "
          f"{'change µs':>17}")  # fmt: skip
    print(f"{'':>7} | {'old':>7} {'new':>7} | {'old':>7} {'new':>7} | {'old':>7} {'new':>7} | {'old':>6} {'new':>6} "
          f"| {'old':>8} {'new':>8}")  # fmt: skip
    for n, r in rows:
        print(f"{n:>7} | {r['old_last']:7.0f} {r['new_last']:7.0f} | {r['old_miss']:7.0f} {r['new_miss']:7.0f} | "
              f"{r['old_build'] * 1e3:7.1f} {r['new_build'] * 1e3:7.1f} | {r['old_bytes']:6.0f} "
              f"{r['new_bytes']:6.0f} | {r['old_change'] * 1e6:8.0f} {r['new_change'] * 1e6:8.1f}")
        sys.stdout.flush()


def lengths_table(n: int, repeat: int) -> None:
    """The new classifier with its rules over several prefix lengths: one probe per length, and the
    exact-address cache (on from CACHE_MIN_TABLES lengths) against the same code without it."""
    print(f"\n{n:,} classes over several destination prefix lengths (new classifier, ns/packet): the same address "
          "every packet, or a new one each packet")  # fmt: skip
    print(f"{'lengths':>8} | {'same address':>17} | {'new address':>17} | cache")
    print(f"{'':>8} | {'cache':>8} {'no cache':>8} | {'cache':>8} {'no cache':>8} |")
    fresh = [udp64(str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("11.0.0.0")) + k))) for k in range(400_000)]
    for lengths in ((32,), (32, 24), (32, 29, 24), (32, 30, 29, 24), (32, 30, 29, 28, 27, 26, 25, 24)):
        rules = prefix_rules(n, lengths)
        hit = [udp64(str(ipaddress.IPv4Network(rules[-1][1].dst).network_address))]
        figures = []
        for cache in (True, False):
            saved = codegen.CACHE_MIN_TABLES
            codegen.CACHE_MIN_TABLES = saved if cache else 10**9
            try:
                c = Classifier(rules, None)
            finally:
                codegen.CACHE_MIN_TABLES = saved
            assert c.classify_bytes(hit[0], 0, None, None)[1] == rules[-1][0]
            figures.append((ns_per_packet(c.classify_packet, hit, repeat),
                            ns_per_packet(c.classify_packet, fresh, repeat), "_cached4" in c.source))  # fmt: skip
        (hit_c, new_c, used), (hit_n, new_n, _) = figures
        print(f"{len(lengths):>8} | {hit_c:8.0f} {hit_n:8.0f} | {new_c:8.0f} {new_n:8.0f} | {'yes' if used else 'no'}")
        sys.stdout.flush()


def from_config_line(n: int) -> None:
    """What a whole config apply pays for the classifier of ``n`` subscriber classes."""
    classes: list[dict[str, object]] = [{"name": "root", "direction": "ingress", "rate": "10gbit"}]
    classes += [{"name": f"s{i}", "parent": "root", "direction": "ingress", "rate": "1mbit",
                 "match": {"dst": str(ipaddress.IPv4Address(BASE + 1 + i))}} for i in range(n)]  # fmt: skip
    cfg = parse_config({"classes": classes})
    specs = [c.match for c in cfg.classes if c.match is not None]
    timings: dict[str, float] = {}
    for label, fn in (("Classifier.from_config", lambda: Classifier.from_config(cfg, "ingress")),
                      ("  of which Config.matching_leaves", lambda: cfg.matching_leaves("ingress")),
                      ("  of which Match.from_spec", lambda: [Match.from_spec(spec) for spec in specs])):
        best = float("inf")
        for _ in range(3):
            gc.collect()
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        timings[label] = best
    print(f"\n{n:,} subscriber classes from a parsed config (ms):")
    for label, seconds in timings.items():
        print(f"  {label:<36} {seconds * 1e3:7.1f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_classifier", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=25, help="timing loops per figure (the minimum is shown)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="rule counts")
    args = parser.parse_args(argv)
    print(f"Python {sys.version.split()[0]}; old = LinearClassifier (one if per rule), new = Classifier (index); "
          f"minimum of {args.repeat} loops")  # fmt: skip
    rows = []
    for n in args.sizes:
        rules = host_rules(n)
        rows.append((n, compare(rules, udp64(str(rules[-1][1].dst).split("/")[0]), args.repeat)))
    print_sizes(rows)
    lengths_table(max(args.sizes), args.repeat)
    from_config_line(max(args.sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
