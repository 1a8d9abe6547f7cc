"""Packet classification: first matching rule wins, else the default class, else None (unshaped).

``Classifier`` compiles its rules into generated Python functions (the way
``dataclasses`` and ``namedtuple`` generate code): each rule becomes an ``if``
over local variables and integer constants, only the conditions a rule really
has are tested, and only the fields some rule needs are loaded.  Everything
put into the generated source is an ``int`` or a ``repr`` of a validated
string.  ``Match.matches`` is the plain interpreted version of the same test;
it is the reference the tests hold the compiled code to.

Two functions come out of the same rule body:

* ``classify(info, mark, iif, oif)`` over a parsed :class:`PacketInfo`;
* ``classify_packet(pkt, data, names) -> (length, class)`` over the raw
  header bytes of a netfilterqueue packet -- the worker's per-packet path.
  For the common packet (IPv4 without options) it reads just the bytes the
  rules need, straight from ``data``, instead of building a ``PacketInfo``;
  anything else goes through :func:`imqd.packet.parse_headers`, which also
  raises ``MalformedPacket``.  The packet's mark and interfaces are read only
  if a rule tests them.  ``classify_bytes`` is the same with the mark and
  interface names given.  Both ways give the same answer for every input (a
  property test holds them to it).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imqd.packet import PORT_PROTOS, PacketInfo, parse_headers

if TYPE_CHECKING:
    from imqd.config import Config, Direction, MatchSpec

__all__ = ["Match", "Classifier"]

U32 = 0xFFFFFFFF
ClassifyFn = Callable[[PacketInfo, int, "str | None", "str | None"], "str | None"]


def _net(cidr: str | None) -> tuple[int, int, int]:
    """(family, network int, mask int) of a CIDR; (0, 0, 0) for "any"."""
    if cidr is None:
        return 0, 0, 0
    n = ipaddress.ip_network(cidr, strict=False)
    return n.version, int(n.network_address), int(n.netmask)


def _if_test(name: str | None, have: str | None) -> bool:
    if name is None:
        return True
    if have is None:
        return False
    if name.endswith("+"):
        return have.startswith(name[:-1])
    return have == name


@dataclass(frozen=True, slots=True)
class Match:
    """A compiled match.  All given fields must hold; a Match with no fields matches everything.

    ``src``/``dst`` are CIDR strings (a v4 CIDR never matches a v6 packet),
    ``sport``/``dport`` inclusive ``(lo, hi)`` ranges, ``mark`` a ``(value, mask)``
    pair tested as ``mark & mask == value``, ``iif``/``oif`` interface names
    where a trailing ``+`` matches any name with that prefix (as iptables).
    """

    src: str | None = None
    dst: str | None = None
    proto: int | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    dscp: int | None = None
    mark: tuple[int, int] | None = None
    iif: str | None = None
    oif: str | None = None
    family: int = field(init=False)
    src_net: int = field(init=False)
    src_mask: int = field(init=False)
    dst_net: int = field(init=False)
    dst_mask: int = field(init=False)

    def __post_init__(self) -> None:
        sfam, snet, smask = _net(self.src)
        dfam, dnet, dmask = _net(self.dst)
        if sfam and dfam and sfam != dfam:
            raise ValueError(f"src {self.src} and dst {self.dst} are of different IP families")
        for name, rng in (("sport", self.sport), ("dport", self.dport)):
            if rng is not None and not (0 <= rng[0] <= rng[1] <= 65535):
                raise ValueError(f"invalid {name} range {rng!r}")
        if self.mark is not None and self.mark[0] & ~self.mark[1] & U32:
            raise ValueError(f"mark value {self.mark[0]:#x} has bits outside mask {self.mark[1]:#x}")
        object.__setattr__(self, "family", sfam or dfam)
        object.__setattr__(self, "src_net", snet)
        object.__setattr__(self, "src_mask", smask)
        object.__setattr__(self, "dst_net", dnet)
        object.__setattr__(self, "dst_mask", dmask)

    @classmethod
    def from_spec(cls, spec: MatchSpec) -> Match:
        return cls(
            src=spec.src, dst=spec.dst, proto=spec.proto, sport=spec.sport, dport=spec.dport,
            dscp=spec.dscp, mark=spec.mark, iif=spec.iif, oif=spec.oif,
        )  # fmt: skip

    def matches(self, info: PacketInfo, mark: int, iif: str | None, oif: str | None) -> bool:
        """Interpreted test (slow path, reference for the compiled classifier)."""
        if self.family and info.family != self.family:
            return False
        if self.src is not None and info.src & self.src_mask != self.src_net:
            return False
        if self.dst is not None and info.dst & self.dst_mask != self.dst_net:
            return False
        if self.proto is not None and info.proto != self.proto:
            return False
        if self.sport is not None and not self.sport[0] <= info.sport <= self.sport[1]:
            return False
        if self.dport is not None and not self.dport[0] <= info.dport <= self.dport[1]:
            return False
        if self.dscp is not None and info.dscp != self.dscp:
            return False
        if self.mark is not None and mark & self.mark[1] != self.mark[0]:
            return False
        return _if_test(self.iif, iif) and _if_test(self.oif, oif)

    def conditions(self) -> list[tuple[str, str | None]]:
        """``(expression, field it reads)`` pairs over the generated classifier's locals, cheapest and most
        selective first; ``mark``/``iif``/``oif`` are arguments, not ``PacketInfo`` attributes."""
        cond: list[tuple[str, str | None]] = []
        if self.family:
            cond.append((f"family == {self.family}", "family"))
        if self.proto is not None:
            cond.append((f"proto == {self.proto}", "proto"))
        for var, rng in (("dport", self.dport), ("sport", self.sport)):
            if rng is not None:
                lo, hi = rng
                cond.append((f"{var} == {lo}" if lo == hi else f"{lo} <= {var} <= {hi}", var))
        full = (1 << (32 if self.family == 4 else 128)) - 1
        for var, cidr, net, mask in (("dst", self.dst, self.dst_net, self.dst_mask),
                                     ("src", self.src, self.src_net, self.src_mask)):  # fmt: skip
            if cidr is None or mask == 0:
                continue  # /0 needs the family test only
            cond.append((f"{var} == {net}" if mask == full else f"{var} & {mask} == {net}", var))
        if self.dscp is not None:
            cond.append((f"dscp == {self.dscp}", "dscp"))
        if self.mark is not None:
            value, mask = self.mark
            cond.append((f"mark == {value}" if mask & U32 == U32 else f"mark & {mask} == {value}", "mark"))
        for var, name in (("iif", self.iif), ("oif", self.oif)):
            if name is None:
                continue
            if name.endswith("+"):
                cond.append((f"{var} is not None and {var}.startswith({name[:-1]!r})", var))
            else:
                cond.append((f"{var} == {name!r}", var))
        return cond


_RETURN = re.compile(r"^(\s*)return ")
_ATTRS = ("family", "src", "dst", "proto", "sport", "dport", "dscp")  # PacketInfo fields rules may read

# How classify_bytes reads each field from an IPv4 header without options (data[0] == 0x45, at least 20
# bytes, total length >= 20): the same values parse_headers would put in PacketInfo.
_V4_LOADS = {
    "family": "    family = 4",
    "proto": "    proto = data[9]",
    "dscp": "    dscp = data[1] >> 2",
    "src": "    src = _from_bytes(data[12:16], 'big')",
    "dst": "    dst = _from_bytes(data[16:20], 'big')",
    # ports: first fragment (offset 0), a port protocol, and 4 L4 bytes inside both packet and capture
    "ports": ("    if data[9] in _PORT_PROTOS and not (data[6] & 31 or data[7]) and length >= 24 and len(data) >= 24:\n"
              "        sport = data[20] << 8 | data[21]\n"
              "        dport = data[22] << 8 | data[23]\n"
              "    else:\n"
              "        sport = dport = -1"),
}


class _Given:
    """A stand-in packet for classify_bytes: this mark, interfaces 1 (in) and 2 (out)."""

    __slots__ = ("mark",)
    indev, outdev = 1, 2

    def __init__(self, mark: int) -> None:
        self.mark = mark

    def get_mark(self) -> int:
        return self.mark


class Classifier:
    """Ordered rules ``(class name, Match)``; the first match wins, else the default, else None.

    ``classify_packet(pkt, data, names)`` is an instance attribute holding the generated function (no method
    binding per call); ``source`` is its code.  ``classify(info, mark, iif, oif)``, the same rules over a
    parsed ``PacketInfo``, is compiled on first use: the worker never needs it, and compiling a large rule
    set twice would double the time a live change takes.
    """

    __slots__ = ("rules", "default", "classify_packet", "source", "_body", "_used", "_classify")

    #: ``classify_packet(pkt, data, names)``: classify_bytes with the mark and the interface names (``names``
    #: maps ifindex -> name) taken from a netfilterqueue packet, only when some rule tests them
    classify_packet: Callable[[Any, bytes, Any], "tuple[int, str | None]"]

    def __init__(self, rules: Sequence[tuple[str, Match]], default: str | None) -> None:
        self.rules: tuple[tuple[str, Match], ...] = tuple(rules)
        self.default = default
        for name, m in self.rules:
            if not isinstance(name, str) or not isinstance(m, Match):
                raise TypeError(f"a rule is (class name, Match), got ({name!r}, {m!r})")
        self._body, self._used = self._rule_body()
        self._classify: ClassifyFn | None = None
        self.source = self._generate()
        self.classify_packet = self._compile(self.source, "classify_packet")  # type: ignore[assignment]

    @property
    def classify(self) -> ClassifyFn:
        """``classify(info, mark, iif, oif)`` over a parsed PacketInfo (compiled on first use)."""
        if self._classify is None:
            loads = [f"    {v} = info.{v}" for v in _ATTRS if v in self._used]
            source = "\n".join(["def classify(info, mark, iif, oif):", *loads, *self._body]) + "\n"
            self._classify = self._compile(source, "classify")
        return self._classify

    @staticmethod
    def _compile(source: str, name: str) -> Any:
        namespace: dict[str, object] = {"_parse": parse_headers, "_PORT_PROTOS": PORT_PROTOS,
                                        "_from_bytes": int.from_bytes}
        exec(compile(source, "<imqd.classifier>", "exec"), namespace)  # noqa: S102 -- see module doc
        return namespace[name]

    def _rule_body(self) -> tuple[list[str], set[str]]:
        """The rules as ``if`` statements over local variables, and the fields they read."""
        body: list[str] = []
        used: set[str] = set()
        for name, m in self.rules:
            cond = m.conditions()
            used.update(attr for _, attr in cond if attr is not None)
            if not cond:
                body.append(f"    return {name!r}")
                break  # nothing after a catch-all can match
            body.append(f"    if {' and '.join(expr for expr, _ in cond)}:\n        return {name!r}")
        else:
            body.append(f"    return {self.default!r}")
        return body, used

    def _generate(self) -> str:
        """Source of ``classify_packet``: the rule body once, after loading the fields it reads."""
        body, used = self._body, self._used
        loads = [f"    {v} = info.{v}" for v in _ATTRS if v in used]
        v4_loads = [_V4_LOADS[v] for v in ("family", "proto", "dscp", "src", "dst") if v in used]
        if used & {"sport", "dport"}:
            v4_loads.append(_V4_LOADS["ports"])
        # classify_packet: the worker's entry.  The mark and the interface names are read from the packet only
        # if a rule tests them; the fields come straight from the header bytes for IPv4 without options, else
        # from parse_headers; then the rule body, once (compiling it twice would double the apply time of a
        # large tree).
        meta = [
            "    mark = pkt.get_mark()" if "mark" in used else "    mark = 0",
            "    iif = names[pkt.indev]" if "iif" in used else "    iif = None",
            "    oif = names[pkt.outdev]" if "oif" in used else "    oif = None",
        ]
        with_length = [_RETURN.sub(r"\1return length, ", line) for line in "\n".join(body).split("\n")]
        return "\n".join([
            "def classify_packet(pkt, data, names):", *meta,
            "    if len(data) >= 20 and data[0] == 69 and (data[2] << 8 | data[3]) >= 20:",
            "        length = data[2] << 8 | data[3]",
            *["    " + line for line in "\n".join(v4_loads).split("\n") if line],
            "    else:",
            "        info = _parse(data)",
            "        length = info.length",
            *["    " + line for line in loads],
            *with_length,
        ]) + "\n"

    def classify_bytes(self, data: bytes, mark: int, iif: str | None, oif: str | None) -> tuple[int, str | None]:
        """``(IP length, class)`` of the raw header bytes -- ``classify_packet`` with the mark and interface
        names given directly (tests and tools; the worker calls ``classify_packet``)."""
        return self.classify_packet(_Given(mark), data, {1: iif, 2: oif})

    @classmethod
    def from_config(cls, config: Config, direction: Direction) -> Classifier:
        """Rules from the leaf classes of ``direction`` that have a match, in config order (a match listing
        several addresses gives one rule per address, ``MatchSpec.alternatives``)."""
        rules = [(c.name, Match.from_spec(alt)) for c in config.matching_leaves(direction)
                 for alt in c.match.alternatives()]
        default = config.default_class(direction)
        return cls(rules, default.name if default is not None else None)

    def __repr__(self) -> str:
        return f"Classifier({len(self.rules)} rules, default={self.default!r})"

