"""The worker's view of the network devices: names, MTUs and GSO sizes, cached -- and what a packet costs on them.

:class:`LinkCosts` is what :meth:`imqd.shaper.DirectionTree.admit` asks about a packet longer than the
smallest MTU (``floor``): :meth:`LinkCosts.charge` looks up the MTU of the device the packet was queued
for and lets :func:`imqd.gso.wire_cost` count its segments.  Packets no longer than ``floor`` (all of
them without GSO, except locally sent datagrams the kernel fragments later) never get here, so the
per-packet cost of this module for the common packet is one attribute read and one comparison.

The device is the one the packet was queued for: the output device when it has one (POSTROUTING,
OUTPUT, FORWARD: a forwarded GSO packet must fit it), else the input device (PREROUTING, INPUT: a GRO
packet was merged from frames of that link).  MTUs are read with ``SIOCGIFMTU`` on a socket of the
worker's own network namespace (``/sys`` may belong to another) on the first packet of a device, and
forgotten every ``REFRESH_S`` so a changed MTU is seen; ``floor`` is the smallest MTU of any device
(recomputed then too).  A device that appears with an MTU below ``floor`` is only looked up once one
of its packets is longer than ``floor``; until the next refresh (at most ``REFRESH_S``), its packets
between its MTU and ``floor`` are charged as one segment, short of the headers of the others.

Device names for the classifier's ``iif``/``oif`` matches come from :class:`IfaceNames` (ifindex -> name,
asked of the kernel once per device).

The largest GSO/GRO size of a device (``gso_max_size``, ``gro_max_size`` and their IPv4 versions: BIG
TCP) is asked of rtnetlink only when a packet without a length in its header (BIG TCP) turns up.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from collections.abc import Callable
from typing import Any

from imqd.gso import BIG_LENGTH, MIN_MTU, wire_cost

REFRESH_S = 10.0
SIOCGIFMTU = 0x8921
_IFREQ = struct.Struct("16si12x")  # struct ifreq: name, then ifr_mtu in the union
FALLBACK_MTU = 1500  # when no device can be read at all

# rtnetlink: RTM_GETLINK for one ifindex, and the attributes that bound a GSO/GRO packet's size
RTM_GETLINK, RTM_NEWLINK = 18, 16
NLM_F_REQUEST = 0x1
IFLA_GSO_MAX_SIZE, IFLA_GRO_MAX_SIZE, IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE = 41, 58, 63, 64
_SIZE_ATTRS = frozenset((IFLA_GSO_MAX_SIZE, IFLA_GRO_MAX_SIZE, IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE))
_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_NLA = struct.Struct("=HH")


def read_mtu(sock: socket.socket, name: str) -> int | None:
    """The MTU of device ``name`` in ``sock``'s network namespace, or None if there is no such device."""
    try:
        out = fcntl.ioctl(sock.fileno(), SIOCGIFMTU, _IFREQ.pack(name.encode(), 0))
    except (OSError, ValueError):
        return None
    return int(_IFREQ.unpack(out)[1])


def link_size_attrs(reply: bytes) -> int:
    """The largest GSO/GRO size attribute in an ``RTM_NEWLINK`` reply (0 if there is none)."""
    best = 0
    if len(reply) < _NLMSG.size + _IFINFO.size:
        return 0
    length, mtype = _NLMSG.unpack_from(reply)[:2]
    if mtype != RTM_NEWLINK:
        return 0
    off = _NLMSG.size + _IFINFO.size
    end = min(length, len(reply))
    while off + _NLA.size <= end:
        nla_len, nla_type = _NLA.unpack_from(reply, off)
        if nla_len < _NLA.size:
            break
        if nla_type & 0x3FFF in _SIZE_ATTRS and nla_len >= _NLA.size + 4:
            best = max(best, struct.unpack_from("=I", reply, off + _NLA.size)[0])
        off += (nla_len + 3) & ~3
    return best


def read_gso_max(index: int) -> int:
    """The largest GSO or GRO packet device ``index`` may carry (at least 64 KB; BIG TCP raises it)."""
    request = _NLMSG.pack(_NLMSG.size + _IFINFO.size, RTM_GETLINK, NLM_F_REQUEST, 1, 0) + _IFINFO.pack(0, 0, index, 0, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
            nl.settimeout(1.0)
            nl.send(request)
            size = link_size_attrs(nl.recv(65536))
    except OSError:
        size = 0
    return max(size, BIG_LENGTH)


def read_all_mtus(sock: socket.socket) -> list[int]:
    """The MTU of every device in ``sock``'s network namespace."""
    return [m for _, name in socket.if_nameindex() if (m := read_mtu(sock, name)) is not None]


class IfaceNames(dict[int, "str | None"]):
    """ifindex -> name, cached (interfaces rarely change); a miss asks the kernel once.

    A dict with ``__missing__`` so the per-packet lookup is a plain subscript."""

    def __init__(self) -> None:
        super().__init__({0: None})

    def __missing__(self, index: int) -> str | None:
        try:
            name: str | None = socket.if_indextoname(index)
        except OSError:
            name = None
        self[index] = name
        return name


class LinkCosts:
    """The MTU of each device (cached; a miss reads it), ``floor``, and the GSO counters of one worker.

    Slotted: ``floor`` is read for every packet.  The readers are the kernel's by default; tests give their
    own: ``mtu_of(ifindex)`` (None: no such device), ``all_mtus()`` and ``gso_max_of(ifindex)``.
    """

    __slots__ = ("floor", "gso_packets", "gso_segments", "gso_bytes", "unknown_length", "_mtus", "_gso_max",
                 "_mtu_of", "_all_mtus", "_gso_max_of", "_sock")

    def __init__(self, mtu_of: Callable[[int], int | None] | None = None,
                 all_mtus: Callable[[], list[int]] | None = None,
                 gso_max_of: Callable[[int], int] = read_gso_max) -> None:
        self._sock: socket.socket | None = None
        if mtu_of is None or all_mtus is None:
            sock = self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            mtu_of = mtu_of or (lambda index: read_mtu(sock, _index_name(index)))
            all_mtus = all_mtus or (lambda: read_all_mtus(sock))
        self._mtu_of = mtu_of
        self._all_mtus = all_mtus
        self._gso_max_of = gso_max_of
        self._mtus: dict[int, int] = {}
        self._gso_max: dict[int, int] = {}
        self.floor = FALLBACK_MTU  # the smallest MTU of any device: no longer packet is a super-packet
        self.gso_packets = 0  # packets charged as more than one segment
        self.gso_segments = 0  # the segments they stand for
        self.gso_bytes = 0  # their IP bytes (as the headers give them)
        self.unknown_length = 0  # BIG TCP packets charged at the device's largest GSO/GRO size
        self.refresh()

    def mtu(self, index: int) -> int:
        """The MTU of device ``index`` (``floor`` for a device that is gone or carries no IP)."""
        mtu = self._mtus.get(index)
        if mtu is None:
            mtu = self._mtu_of(index)
            if mtu is None or mtu < MIN_MTU:
                return self.floor  # gone (its queued packets are dropped) or no IP link: do not cache
            self._mtus[index] = mtu
            if mtu < self.floor:
                self.floor = mtu
        return mtu

    @property
    def cached(self) -> dict[int, int]:
        """ifindex -> MTU read since the last refresh."""
        return dict(self._mtus)

    def refresh(self) -> None:
        """Forget every cached MTU and recompute ``floor`` over all devices (every REFRESH_S)."""
        self._mtus.clear()
        self._gso_max.clear()
        self.floor = min((m for m in self._all_mtus() if m >= MIN_MTU), default=FALLBACK_MTU)

    def charge(self, pkt: Any, data: bytes, overhead: int) -> int:
        """Bytes to charge for ``pkt`` (header bytes ``data``), ``overhead`` per segment (:mod:`imqd.gso`)."""
        index = pkt.outdev or pkt.indev
        mtu = self.mtu(index)
        cost = wire_cost(data, mtu)
        if not cost.exact:
            gso_max = self._gso_max.get(index)
            if gso_max is None:
                gso_max = self._gso_max[index] = self._gso_max_of(index)
            cost = wire_cost(data, mtu, gso_max)
            self.unknown_length += 1
        if cost.segments > 1:
            self.gso_packets += 1
            self.gso_segments += cost.segments
            self.gso_bytes += cost.length
        return cost.ip_bytes + cost.segments * overhead

    def counters(self) -> dict[str, int]:
        """The worker's GSO counters, for its stats."""
        return {"gso_packets": self.gso_packets, "gso_segments": self.gso_segments, "gso_bytes": self.gso_bytes,
                "gso_unknown_length": self.unknown_length, "mtu_floor": self.floor}

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


def _index_name(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return ""  # no such device: the ioctl on "" fails and read_mtu answers None
