"""Many subscribers, one class each: their addresses, imqd configs, the kernel HTB reference, the offered load,
the fairness figures and a LibreQoS-style subscriber table.  Pure: no I/O (the measurements are
:mod:`bench.scale` and :mod:`bench.control_scale`).

Addresses: subscriber i is ``SUBSCRIBERS[i]`` (198.18.128.0/18, free in :mod:`imqd.netns_plan`'s plan, up to 16,384
subscribers); classes added during a run and imported tables use ``EXTRA`` (198.18.192.0/18).  The traffic
flows client -> router -> server: the server namespace answers for both prefixes, so subscriber i is a
destination and its class is an egress class shaped on the router's wan interface.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from imqd.config import default_burst, default_quantum

__all__ = ["SUBSCRIBERS", "EXTRA", "PARENT", "OVERHEAD", "address", "leaf_name", "subscriber_config",
           "one_class_config", "kernel_htb_batch", "BacklogPlan", "backlog_plan", "fairness", "jain",
           "spread", "shaped_devices_csv", "charged_bytes", "least_squares_slope"]

SUBSCRIBERS = ipaddress.IPv4Network("198.18.128.0/18")
EXTRA = ipaddress.IPv4Network("198.18.192.0/18")
PARENT = "subs"
OVERHEAD = 14  # bytes per packet both shapers charge on a veth (the Ethernet header), as bench.systems
ABOVE_CAPACITY_BPS = 10_000_000_000
IP_UDP = 28


def charged_bytes(payload: int) -> int:
    """What a shaper charges for one UDP/IPv4 datagram with `payload` bytes: the IP packet + OVERHEAD."""
    return payload + IP_UDP + OVERHEAD


def address(i: int, net: ipaddress.IPv4Network = SUBSCRIBERS) -> str:
    """Subscriber `i`'s address in `net` (ValueError past its end)."""
    if not 0 <= i < net.num_addresses:
        raise ValueError(f"subscriber {i}: {net} holds {net.num_addresses} addresses")
    return str(net.network_address + i)


def leaf_name(i: int) -> str:
    return f"s{i}"


def subscriber_config(n: int, rate_bps: int, *, ceil_bps: int | None = None, parent_bps: int | None = None,
                      extra: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """One egress parent (``PARENT``, `parent_bps`: default the sum of the leaves' rates) and `n` leaves, leaf i
    matching ``dst: address(i)/32`` at `rate_bps` (ceil `ceil_bps`, default the rate); `extra` classes after."""
    if n < 1:
        raise ValueError(f"n: expected at least 1 subscriber, got {n!r}")
    address(n - 1)  # the prefix holds them all
    parent = parent_bps if parent_bps is not None else n * rate_bps
    classes: list[dict[str, Any]] = [{"name": PARENT, "direction": "egress", "rate": parent}]
    leaf: dict[str, Any] = {"direction": "egress", "parent": PARENT, "rate": rate_bps}
    if ceil_bps is not None:
        leaf["ceil"] = ceil_bps
    classes += [{"name": leaf_name(i), **leaf, "match": {"dst": f"{address(i)}/32"}} for i in range(n)]
    return {"overhead": OVERHEAD, "classes": classes + list(extra)}


def one_class_config(rate_bps: int) -> dict[str, Any]:
    """The reference: one class for the whole subscriber prefix at `rate_bps` (what the N classes add up to)."""
    return {"overhead": OVERHEAD, "classes": [{"name": "all", "direction": "egress", "rate": rate_bps,
                                               "match": {"dst": str(SUBSCRIBERS)}}]}


def kernel_htb_batch(dev: str, n: int, rate_bps: int, *, limit: int = 1000) -> list[str]:
    """``tc -batch`` lines for kernel HTB with the same tree as :func:`subscriber_config` on `dev`.

    Leaves get imqd's defaults written out (burst and cburst: one MTU + 10 ms of rate; quantum rate/10 clamped
    to 1514..200000) and a ``pfifo limit`` like imqd's FIFO.  Classification: a u32 hash table of 256 buckets
    keyed by the last byte of the destination address, one ``match ip dst A/32`` filter per leaf in its
    bucket -- the indexed lookup tc-u32(8) describes, instead of a linear list of n filters."""
    if not 1 <= n <= 0xFFFF - 0x10:
        raise ValueError(f"n: expected 1..{0xFFFF - 0x10} leaves (HTB class minor numbers), got {n!r}")
    burst = default_burst(rate_bps)
    quantum = default_quantum(rate_bps)
    parent = n * rate_bps
    lines = [f"qdisc add dev {dev} root handle 1: htb",
             f"class add dev {dev} parent 1: classid 1:1 htb rate {parent}bit ceil {parent}bit "
             f"burst {default_burst(parent)} cburst {default_burst(parent)}"]
    for i in range(n):
        minor = i + 0x10
        lines += [f"class add dev {dev} parent 1:1 classid 1:{minor:x} htb rate {rate_bps}bit ceil {rate_bps}bit "
                  f"burst {burst} cburst {burst} quantum {quantum}",
                  f"qdisc add dev {dev} parent 1:{minor:x} handle {minor:x}: pfifo limit {limit}"]
    lines += [f"filter add dev {dev} parent 1: prio 1 handle 2: protocol ip u32 divisor 256",
              f"filter add dev {dev} parent 1: prio 1 protocol ip u32 ht 800:: match ip dst {SUBSCRIBERS} "
              "hashkey mask 0x000000ff at 16 link 2:"]
    for i in range(n):
        addr = address(i)
        bucket = int(ipaddress.IPv4Address(addr)) & 0xFF
        lines.append(f"filter add dev {dev} parent 1: prio 1 protocol ip u32 ht 2:{bucket:x}: "
                     f"match ip dst {addr}/32 flowid 1:{i + 0x10:x}")
    return lines


@dataclass(frozen=True)
class BacklogPlan:
    """All subscribers backlogged at once: each offered twice its plan, for `warm_s` + `window_s` seconds."""

    subscribers: int
    payload: int  # UDP payload bytes of every datagram
    rate_bps: int  # each subscriber's plan (rate = ceil)
    offered_pps: float  # all subscribers together
    warm_s: float  # before the window: every queue fills and every class's initial burst drains
    window_s: float  # the counted window

    @property
    def plan_pps(self) -> float:
        """One subscriber's plan in datagrams per second."""
        return self.rate_bps / 8 / charged_bytes(self.payload)

    @property
    def packets_each(self) -> float:
        """Datagrams one subscriber's plan carries in the window."""
        return self.plan_pps * self.window_s

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "plan_pps": self.plan_pps, "packets_each": self.packets_each}


def backlog_plan(n: int, capacity_pps: float, *, payload: int, load_share: float, min_packets: int,
                 max_window_s: float, min_warm_s: float) -> BacklogPlan:
    """Size the all-backlogged load from `capacity_pps` (what one class carries on this machine, measured in
    the same run): `load_share` of it is offered, half of that is the sum of the plans.  The window lasts
    until each subscriber's plan carries `min_packets` datagrams (at most `max_window_s`); the warm-up lasts
    at least `min_warm_s` and long enough for an initial burst (one MTU + 10 ms of rate) to drain at the
    rate the backlog grows (offered - plan = plan)."""
    if n < 1 or capacity_pps <= 0 or not 0 < load_share <= 1 or min_packets < 1 or max_window_s <= 0:
        raise ValueError(f"backlog_plan: bad n/capacity/share/packets/window {n!r}/{capacity_pps!r}/"
                         f"{load_share!r}/{min_packets!r}/{max_window_s!r}")
    per_sub_pps = load_share * capacity_pps / 2 / n
    rate = max(8, int(per_sub_pps * charged_bytes(payload) * 8))
    plan = BacklogPlan(n, payload, rate, 0.0, 0.0, 0.0)
    offered = 2 * n * plan.plan_pps
    window = min(max_window_s, min_packets / plan.plan_pps)
    warm = max(min_warm_s, 1.5 * default_burst(rate) * 8 / rate)
    return BacklogPlan(n, payload, rate, offered, warm, window)


def fairness(delivered: Sequence[int], expected: float) -> dict[str, float]:
    """From datagrams each subscriber got in a window and what its plan carries in it: the sum over the sum of
    plans, the worst and best subscriber's share of its plan, and Jain's index of the shares."""
    if not delivered or expected <= 0:
        raise ValueError("fairness: need at least one subscriber and a positive expectation")
    shares = [d / expected for d in delivered]
    return {"of_plans": sum(shares) / len(shares), "worst": min(shares), "best": max(shares),
            "jain": jain(shares)}


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all are equal, 1/n when one takes everything."""
    if not values:
        raise ValueError("jain: no values")
    squares = sum(v * v for v in values)
    return 1.0 if squares == 0 else sum(values) ** 2 / (len(values) * squares)


def spread(n: int, share: float = 0.01) -> list[int]:
    """`share` of `n` rows (at least one), evenly spaced and each in the middle of its stretch: the rows a bulk
    change touches, leaving the first stretch's lower half untouched for traffic that must not notice."""
    k = max(1, int(n * share))
    step = n // k
    return [j * step + step // 2 for j in range(k)]


def shaped_devices_csv(n: int, *, first: int = 0, node: str = "site", down_mbps: float = 1.0,
                       up_mbps: float = 0.5, changed: Iterable[int] = ()) -> str:
    """A LibreQoS ShapedDevices.csv with `n` circuits of one device each (IPv4 ``EXTRA[first + i]``), plan
    `down_mbps`/`up_mbps` as Min and 10x as Max, under Parent Node `node`; the rows in `changed` get twice the
    plan (a bulk change)."""
    moved = set(changed)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["Circuit ID", "Circuit Name", "Device ID", "Device Name", "Parent Node", "MAC", "IPv4", "IPv6",
                "Download Min Mbps", "Upload Min Mbps", "Download Max Mbps", "Upload Max Mbps", "Comment"])
    for i in range(n):
        k = 2 if i in moved else 1
        down, up = down_mbps * k, up_mbps * k
        w.writerow([f"c{i}", f"Subscriber {i}", f"d{i}", f"cpe{i}", node, "", address(first + i, EXTRA), "",
                    f"{down:g}", f"{up:g}", f"{10 * down:g}", f"{10 * up:g}", ""])
    return out.getvalue()


def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """The slope of the least-squares line through (xs, ys); None with fewer than two distinct xs."""
    if len(xs) != len(ys):
        raise ValueError("least_squares_slope: xs and ys differ in length")
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if math.isfinite(sxx) and sxx else None
