"""Source code of the classifier's per-packet functions (the way ``dataclasses`` and ``namedtuple`` generate code).

Everything put into the generated source is an ``int`` or a ``repr`` of a validated string; the tables of the
address index are globals of the function (``_g0``, ``_g1``, ... are their ``dict.get``).  The code reads only
the fields some test needs and has three parts:

1. the fields: for IPv4 without options straight from the header bytes, else through ``parse_headers`` (which
   raises ``MalformedPacket``); the packet's mark and interface names only when a test reads them;
2. one probe per index table of the packet's family (:mod:`imqd.classifier_index`), keeping in ``e`` the
   slot of smallest order found; a probe that finds nothing gives ``_MISS``, ``(NO_ORDER, default, None)``.
   With many tables, an exact-address cache in front (:func:`cached_field`);
3. the rules the index does not hold, as ``if`` statements in order, each returning its class.  With an
   index, each also asks ``e[0] > ORDER``: the indexed rule found wins when it comes first.  The answer
   is ``e[1]`` when none of them holds (or the default, without an index).
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imqd.classifier_index import CHECK_ARGS, NO_ORDER, TableKey, pick
from imqd.packet import PORT_PROTOS, parse_headers

if TYPE_CHECKING:
    from imqd.classifier import Match

__all__ = ["Shape", "classify_packet_source", "classify_source", "compile_function", "reset_caches"]

#: fewest tables a family must have for its answers to be cached by address (see cached_field)
CACHE_MIN_TABLES = 3
#: most addresses a cache holds before it starts again (~1.5 MB)
CACHE_SIZE = 16_384

_ATTRS = ("family", "src", "dst", "proto", "sport", "dport", "dscp")  # PacketInfo fields rules may read

# How the fast path reads each field from an IPv4 header without options (data[0] == 0x45, at least 20 bytes,
# total length >= 20): the same values parse_headers would put in PacketInfo.
_V4_LOADS = {
    "family": "family = 4",
    "proto": "proto = data[9]",
    "dscp": "dscp = data[1] >> 2",
    "src": "src = _u32(data, 12)[0]",
    "dst": "dst = _u32(data, 16)[0]",
    "src+dst": "src, dst = _two_u32(data, 12)",
    # ports: first fragment (offset 0), a port protocol, and 4 L4 bytes inside both packet and capture
    "ports": ("if data[9] in _PORT_PROTOS and not (data[6] & 31 or data[7]) and length >= 24 and len(data) >= 24:\n"
              "    sport = data[20] << 8 | data[21]\n"
              "    dport = data[22] << 8 | data[23]\n"
              "else:\n"
              "    sport = dport = -1"),
}


@dataclass(frozen=True)
class Shape:
    """Everything the generated code depends on; equal shapes give the same code (no regeneration needed)."""

    #: the rules the code tests one by one, ``(order, class name, Match)`` in order
    linear: tuple[tuple[int, str, Match], ...]
    #: the index tables to probe, in probe order; the n-th is the global ``_g<n>``
    tables: tuple[TableKey, ...]
    #: packet fields the indexed rules' checks read
    check_fields: frozenset[str]
    default: str | None

    def used(self) -> set[str]:
        """The packet fields the code reads."""
        used = set(self.check_fields)
        for _, _, m in self.linear:
            used.update(var for _, var in m.conditions() if var is not None)
        used.update(field for field, _, _ in self.tables)
        return used


def compile_function(source: str, name: str, tables: Sequence[dict[int, Any]], default: str | None,
                     namespace: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """Compile ``source`` and return its function ``name``; its globals are ``namespace`` (made if None),
    updated with the helpers, the tables' ``get`` and ``_MISS``, what a probe that finds nothing gives."""
    miss = (NO_ORDER, default, None)
    ns = {} if namespace is None else namespace
    ns.update(_parse=parse_headers, _PORT_PROTOS=PORT_PROTOS, _u32=struct.Struct("!I").unpack_from,
              _two_u32=struct.Struct("!II").unpack_from, _pick=pick, _MISS=miss)
    if "_cache4" not in ns:
        reset_caches(ns)
    for i, table in enumerate(tables):
        ns[f"_g{i}"] = table.get
    exec(compile(source, "<imqd.classifier>", "exec"), ns)  # noqa: S102 -- see module doc
    return ns[name]


def _indent(lines: list[str], by: int) -> list[str]:
    pad = " " * by
    return [pad + part for line in lines for part in line.split("\n")]


def _probe(i: int, tk: TableKey, used: Collection[str], checks: bool, var: str) -> list[str]:
    """Look the packet up in table ``i`` into ``var``; a miss gives ``_MISS`` (no order, the default class)."""
    field, family, plen = tk
    width = 32 if family == 4 else 128
    mask = ((1 << plen) - 1) << (width - plen)
    key = field if plen == width else f"{field} & {mask}"
    lines = [f"{var} = _g{i}({key}, _MISS)"]
    if checks:
        args = ", ".join(a if a in used else "None" for a in CHECK_ARGS)
        lines += [f"if {var}[2] is not None:", f"    {var} = _pick({var}, _MISS, {args})"]
    return lines


def cached_field(shape: Shape, family: int) -> str | None:
    """The address field an exact-address cache keys ``family``'s answers by, or None for no cache.

    A cache hit costs one dict lookup, a miss the probes plus a store (~80 ns more), so it pays only when a
    packet has at least ``CACHE_MIN_TABLES`` tables to probe (measured: with 1 table it only costs, with 4
    it saves ~150 ns per hit, with 8 ~400 ns).  It needs the answer to depend on that one address: every
    table of the family on the same field and no rule with a further check."""
    fields = {tk[0] for tk in shape.tables if tk[1] == family}
    count = sum(1 for tk in shape.tables if tk[1] == family)
    if count < CACHE_MIN_TABLES or len(fields) != 1 or shape.check_fields:
        return None
    return fields.pop()


def reset_caches(namespace: dict[str, Any]) -> None:
    """Empty the exact-address caches (every change of the rules or the default makes their answers stale)."""
    for family in (4, 6):
        cache: dict[int, Any] = {}
        namespace[f"_cache{family}"] = cache
        namespace[f"_cached{family}"] = cache.get


def _probes(shape: Shape, family: int, used: Collection[str]) -> list[str]:
    """Probe every table of ``family``, keeping in ``e`` the slot of smallest order found (through the
    exact-address cache when :func:`cached_field` says so)."""
    checks = bool(shape.check_fields)
    lines: list[str] = []
    for i, tk in enumerate(shape.tables):
        if tk[1] != family:
            continue
        if not lines:
            lines = _probe(i, tk, used, checks, "e")
        else:
            lines += [*_probe(i, tk, used, checks, "f"), "if f[0] < e[0]:", "    e = f"]
    if not lines:
        return ["e = _MISS"]
    key = cached_field(shape, family)
    if key is None:
        return lines
    cache = f"_cache{family}"
    return [f"e = _cached{family}({key})", "if e is None:", *_indent(lines, 4),
            f"    if len({cache}) >= {CACHE_SIZE}:", f"        {cache}.clear()", f"    {cache}[{key}] = e"]


def _by_family(shape: Shape, used: Collection[str]) -> list[str]:
    """Probes of a packet whose family is only known at run time (the parse_headers path)."""
    return ["if family == 4:", *_indent(_probes(shape, 4, used), 4),
            "else:", *_indent(_probes(shape, 6, used), 4)]  # fmt: skip


def _rules(shape: Shape, ret: str) -> list[str]:
    """The unindexed rules in order, then the answer: with an index, a rule only wins when it comes before
    the indexed rule found (``e``), and nothing after ``e`` needs testing."""
    body: list[str] = []
    for order, name, m in shape.linear:
        cond = [f"e[0] > {order}"] if shape.tables else []
        cond += [expr for expr, _ in m.conditions()]
        if not cond:
            return [*body, f"{ret}{name!r}"]  # nothing after a catch-all can match
        body += [f"if {' and '.join(cond)}:", f"    {ret}{name!r}"]
    return [*body, f"{ret}e[1]" if shape.tables else f"{ret}{shape.default!r}"]


def classify_packet_source(shape: Shape) -> str:
    """``classify_packet(pkt, data, names) -> (IP length, class or None)``: the worker's entry."""
    used = shape.used()
    meta = [line for var, line in (("mark", "mark = pkt.get_mark()"), ("iif", "iif = names[pkt.indev]"),
                                   ("oif", "oif = names[pkt.outdev]")) if var in used]  # fmt: skip
    addrs = [v for v in ("src", "dst") if v in used]
    v4 = [_V4_LOADS[v] for v in ("family", "proto", "dscp") if v in used]
    v4 += [_V4_LOADS["src+dst"]] if len(addrs) == 2 else [_V4_LOADS[v] for v in addrs]
    if used & {"sport", "dport"}:
        v4.append(_V4_LOADS["ports"])
    slow_used = used | {"family"} if shape.tables else used
    info = [f"{v} = info.{v}" for v in _ATTRS if v in slow_used]
    return "\n".join([
        "def classify_packet(pkt, data, names):",
        *_indent(meta, 4),
        "    if len(data) >= 20 and data[0] == 69 and (length := data[2] << 8 | data[3]) >= 20:",
        *_indent([*v4, *(_probes(shape, 4, used) if shape.tables else [])] or ["pass"], 8),
        "    else:",
        "        info = _parse(data)",
        "        length = info.length",
        *_indent([*info, *(_by_family(shape, used) if shape.tables else [])], 8),
        *_indent(_rules(shape, "return length, "), 4),
    ]) + "\n"  # fmt: skip


def classify_source(shape: Shape) -> str:
    """``classify(info, mark, iif, oif) -> class or None`` over a parsed ``PacketInfo``."""
    used = shape.used()
    slow_used = used | {"family"} if shape.tables else used
    info = [f"{v} = info.{v}" for v in _ATTRS if v in slow_used]
    return "\n".join([
        "def classify(info, mark, iif, oif):",
        *_indent([*info, *(_by_family(shape, used) if shape.tables else []), *_rules(shape, "return ")], 4),
    ]) + "\n"  # fmt: skip
