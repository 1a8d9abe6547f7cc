"""A namespace lab's names and addresses, worked out and checked before anything is made (pure: no I/O).

Kept apart from the plumbing so a bad option is refused before a namespace exists, and so the plan can be
read (tests, ``describe()``) without root.

Addressing (RFC 2544 / RFC 5180 benchmarking ranges only)::

    client i  198.18.(10+i).2/24 (+ .3, .4, ... extra)   2001:2:0:(10+i)::2/64 (+ ::3, ...)
    router    198.18.(10+i).1 on lan i                    2001:2:0:(10+i)::1
    router    198.19.0.1 on wan                           2001:2:0:ff::1
    server    198.19.0.2                                  2001:2:0:ff::2

Names: namespaces ``{prefix}-c{i}``, ``{prefix}-r``, ``{prefix}-s``; interfaces (<= 15 chars) router lan
``{prefix}l{i}``, router wan ``{prefix}w``, client side ``{prefix}c{i}``, server side ``{prefix}s``, ifb
``{prefix}i{k}``.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Client",
    "LabPlan",
    "make_prefix",
    "IFNAMSIZ",
    "MAX_CLIENTS",
    "MAX_EXTRA_ADDRS",
    "SERVER_ADDR4",
    "SERVER_ADDR6",
    "ROUTER_WAN_ADDR4",
    "ROUTER_WAN_ADDR6",
]

SERVER_ADDR4 = "198.19.0.2"
ROUTER_WAN_ADDR4 = "198.19.0.1"
SERVER_ADDR6 = "2001:2:0:ff::2"
ROUTER_WAN_ADDR6 = "2001:2:0:ff::1"
MAX_CLIENTS = 64
MAX_EXTRA_ADDRS = 200
IFNAMSIZ = 15
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,10}")
_COUNTER = itertools.count()


@dataclass(frozen=True, slots=True)
class Client:
    """One client namespace: its addresses (index 0 is the primary one) and the router port it hangs off."""

    index: int
    ns: str
    iface: str
    router_iface: str
    addrs4: tuple[str, ...]
    addrs6: tuple[str, ...]
    gw4: str
    gw6: str

    @property
    def addr4(self) -> str:
        return self.addrs4[0]

    @property
    def addr6(self) -> str:
        return self.addrs6[0]


_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def make_prefix() -> str:
    """A prefix unique to this process and call: ``imq<pid % 100000>x<n>``, n in base 36 and wrapping after
    1,296 calls, so it never passes 11 characters (interface names are ``<prefix><letter><digits>``); a
    collision would need 1,296 labs of one process alive at once."""
    n = next(_COUNTER) % 36**2
    return f"imq{os.getpid() % 100000}x{_BASE36[n // 36] if n >= 36 else ''}{_BASE36[n % 36]}"


class LabPlan:
    """Every name and address of one lab, and the options that change how it is wired.

    A plain class rather than a frozen record: `Topology` extends it, so these are the topology's own
    attributes (``topo.router_ns``), as its callers have always read them.
    """

    def __init__(
        self,
        clients: int = 1,
        *,
        masquerade: bool = False,
        extra_client_addrs: int = 0,
        prefix: str | None = None,
        ipv6: bool = True,
    ) -> None:
        """Check the options (ValueError naming the bad one, before anything else) and lay out the lab."""
        if isinstance(clients, bool) or not isinstance(clients, int) or not 1 <= clients <= MAX_CLIENTS:
            raise ValueError(f"clients: expected an int in 1..{MAX_CLIENTS}, got {clients!r}")
        if (
            isinstance(extra_client_addrs, bool)
            or not isinstance(extra_client_addrs, int)
            or not 0 <= extra_client_addrs <= MAX_EXTRA_ADDRS
        ):
            raise ValueError(f"extra_client_addrs: expected an int in 0..{MAX_EXTRA_ADDRS}, got {extra_client_addrs!r}")
        prefix = make_prefix() if prefix is None else prefix
        if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
            # 11 chars + "l63" stays within IFNAMSIZ (15)
            raise ValueError(f"prefix: expected 1-11 chars [a-z][a-z0-9]*, got {prefix!r}")
        self.prefix = prefix
        self.masquerade = bool(masquerade)
        self.ipv6 = bool(ipv6)
        self.extra_client_addrs = extra_client_addrs
        self.router_ns = f"{prefix}-r"
        self.server_ns = f"{prefix}-s"
        self.wan_iface = f"{prefix}w"
        self.server_iface = f"{prefix}s"
        self.server_addr4 = SERVER_ADDR4
        self.server_addr6 = SERVER_ADDR6
        self.router_wan_addr4 = ROUTER_WAN_ADDR4
        self.router_wan_addr6 = ROUTER_WAN_ADDR6
        self.clients: list[Client] = []
        for i in range(clients):
            net = 10 + i
            hosts = range(2, 3 + extra_client_addrs)
            self.clients.append(
                Client(
                    index=i,
                    ns=f"{prefix}-c{i}",
                    iface=f"{prefix}c{i}",
                    router_iface=f"{prefix}l{i}",
                    addrs4=tuple(f"198.18.{net}.{h}" for h in hosts),
                    addrs6=tuple(f"2001:2:0:{net}::{h:x}" for h in hosts),
                    gw4=f"198.18.{net}.1",
                    gw6=f"2001:2:0:{net}::1",
                )
            )
        self.client_ns = [c.ns for c in self.clients]
        self.client_ifaces = [c.iface for c in self.clients]
        self.lan_ifaces = [c.router_iface for c in self.clients]
        # clients first, then router and server: the order they are made (and deleted in reverse)
        self.namespaces = [*self.client_ns, self.router_ns, self.server_ns]

    def describe(self) -> dict[str, Any]:
        """Names and addresses as plain data (for `imqd lab` output and logs)."""
        return {
            "prefix": self.prefix,
            "masquerade": self.masquerade,
            "router_ns": self.router_ns,
            "server_ns": self.server_ns,
            "wan_iface": self.wan_iface,
            "server_addr4": self.server_addr4,
            "server_addr6": self.server_addr6 if self.ipv6 else None,
            "router_wan_addr4": self.router_wan_addr4,
            "clients": [
                {"ns": c.ns, "iface": c.iface, "router_iface": c.router_iface, "addrs4": list(c.addrs4),
                 "addrs6": list(c.addrs6) if self.ipv6 else []}
                for c in self.clients
            ],
        }
