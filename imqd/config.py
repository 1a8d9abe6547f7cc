"""The shaper's configuration: pydantic models, whole-tree validation, YAML load/save.

One file describes both HTB trees (ingress = mangle PREROUTING, egress = mangle
POSTROUTING).  Values are accepted the way an operator writes them (tc rates
and sizes, "tcp", "5000-5100", "ef", "0x10/0xff") and stored normalised (ints,
tuples) so the data plane never parses strings.  ``dump_config`` writes the
readable forms back.

Every error names the class and the field: ``ConfigError.errors`` is a list of
``{"loc": ("classes", "<class name>", "<field>", ...), "msg": "..."}`` (plus
``"line"`` when it came from a file), and ``str(ConfigError)`` is one line per
error.  ``ConfigError.code`` tells the REST API which status to answer:
``invalid`` (422), ``not_found`` (404), ``exists`` (409), ``has_children`` (409).
Validate with ``parse_config(data)`` or the ``Config.with_*`` methods to get
``ConfigError``; ``Config(...)``/``model_validate`` raise pydantic's
``ValidationError`` (whose ctx carries the ``ConfigError`` of tree rules).

Defaults that depend on other fields are *not* filled into the model (a later
PATCH of ``rate`` must move them too); read them through ``ClassSpec.effective_*``
and ``Config.effective_overhead``:

* ``ceil``    = rate
* ``burst``   = 1600 + rate * 10 ms / 8 bytes, rounded up: one 1500-byte MTU
  plus room for link overhead, plus 10 ms at the rate.  The 10 ms is the
  worker's scheduling slack: a class's credit is capped at its burst, so a
  worker descheduled for longer than the burst lasts loses sending time
  for good.  tc's own default (about one MTU) suits kernel HTB, which runs
  from softirq; a userspace worker shares its CPU with other tasks, and 4 ms
  measurably lost 4-6 % of a 50 Mbit/s class to 5 ms stalls.
* ``cburst``  = the same formula with ceil
* ``quantum`` = rate_bytes / r2q (r2q = 10), clamped to [1514, 200000] as tc does
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from imqd.packet import PORT_PROTOS
from imqd.units import format_rate, format_size, parse_rate, parse_size, parse_time

__all__ = [
    "ConfigError",
    "MatchSpec",
    "QdiscSpec",
    "PerHostSpec",
    "ClassSpec",
    "Config",
    "Direction",
    "DIRECTIONS",
    "MAX_DEPTH",
    "PROTOCOLS",
    "DSCP_NAMES",
    "default_burst",
    "default_quantum",
    "parse_config",
    "class_to_data",
    "load_config",
    "dump_config",
    "save_config_atomic",
]

Direction = Literal["ingress", "egress"]
DIRECTIONS: tuple[Direction, Direction] = ("ingress", "egress")
MAX_DEPTH = 8  # levels in one tree, as the kernel's TC_HTB_MAXDEPTH
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
BURST_MTU = 1600  # bytes: one 1500-byte IP MTU plus link-layer overhead
BURST_TIME_US = 10_000  # microseconds of rate a burst holds beyond one MTU (see the module doc)
R2Q = 10
QUANTUM_MIN, QUANTUM_MAX = 1514, 200_000
MAX_OVERHEAD = 1024
U32 = 0xFFFFFFFF

PROTOCOLS: dict[str, int] = {
    "icmp": 1,
    "tcp": 6,
    "udp": 17,
    "dccp": 33,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "sctp": 132,
    "udplite": 136,
}
_PROTO_NAMES = {v: k for k, v in reversed(PROTOCOLS.items())}  # first name wins: icmpv6, not ipv6-icmp

DSCP_NAMES: dict[str, int] = {
    **{f"cs{i}": i * 8 for i in range(8)},
    **{f"af{c}{d}": c * 8 + d * 2 for c in range(1, 5) for d in range(1, 4)},
    "ef": 46,
    "va": 44,  # RFC 5865 voice-admit
    "le": 1,  # RFC 8622 lower effort
}


class ConfigError(ValueError):
    """An invalid configuration or a refused change; ``errors`` says where, ``code`` says what kind."""

    def __init__(self, errors: Sequence[Mapping[str, Any]], code: str = "invalid", path: str | None = None):
        self.errors: list[dict[str, Any]] = [dict(e) for e in errors]
        self.code = code
        self.path = path
        super().__init__(str(self))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across worker processes
        return (self.__class__, (self.errors, self.code, self.path))

    @classmethod
    def one(cls, loc: tuple[Any, ...], msg: str, code: str = "invalid") -> ConfigError:
        return cls([{"loc": loc, "msg": msg}], code=code)

    def __str__(self) -> str:
        lines = []
        for e in self.errors:
            where = ".".join(str(p) for p in e["loc"]) or "(config)"
            prefix = ""
            if self.path is not None:
                prefix = f"{self.path}:{e['line']}: " if e.get("line") else f"{self.path}: "
            lines.append(f"{prefix}{where}: {e['msg']}")
        return "\n".join(lines)


# --- field parsers (accept what an operator writes, store ints) ---------------------------------


def _no_bool(v: Any, what: str) -> None:
    if isinstance(v, bool):
        raise ValueError(f"invalid {what} {v!r}")


def _parse_cidr(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(v)
    if not isinstance(v, str):
        raise ValueError(f"invalid CIDR {v!r}: expected a string like '198.18.1.0/24' or '2001:db8::/32'")
    try:
        # strict=False: host bits are masked off, as iptables does with -s 10.0.0.1/8
        return str(ipaddress.ip_network(v.strip(), strict=False))
    except ValueError as e:
        raise ValueError(f"invalid CIDR {v!r}: {e}") from None


def _parse_proto(v: Any) -> int | None:
    if v is None:
        return None
    _no_bool(v, "protocol")
    if isinstance(v, str):
        s = v.strip().lower()
        if s in PROTOCOLS:
            return PROTOCOLS[s]
        if not s.isdigit():
            raise ValueError(f"invalid protocol {v!r}: use one of {', '.join(PROTOCOLS)} or 0..255")
        v = int(s)
    if not isinstance(v, int) or not 0 <= v <= 255:
        raise ValueError(f"invalid protocol {v!r}: use one of {', '.join(PROTOCOLS)} or 0..255")
    return v


def _port(v: Any, orig: Any) -> int:
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
        raise ValueError(f"invalid port {orig!r}: expected 0..65535 or 'lo-hi'")
    return v


def _parse_ports(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, str):
        parts = re.split(r"\s*[-:]\s*", v.strip())
        if len(parts) == 1:
            lo = hi = _port(parts[0], v)
        elif len(parts) == 2:
            lo, hi = _port(parts[0], v), _port(parts[1], v)
        else:
            raise ValueError(f"invalid port range {v!r}: expected 'lo-hi'")
    elif isinstance(v, (list, tuple)) and len(v) == 2:
        lo, hi = _port(v[0], v), _port(v[1], v)
    else:
        lo = hi = _port(v, v)
    if lo > hi:
        raise ValueError(f"invalid port range {v!r}: {lo} > {hi}")
    return lo, hi


def _parse_dscp(v: Any) -> int | None:
    if v is None:
        return None
    _no_bool(v, "dscp")
    if isinstance(v, str):
        s = v.strip().lower()
        if s in DSCP_NAMES:
            return DSCP_NAMES[s]
        try:
            v = int(s, 0)
        except ValueError:
            raise ValueError(f"invalid dscp {v!r}: use 0..63 or a name (ef, af11..af43, cs0..cs7)") from None
    if not isinstance(v, int) or not 0 <= v <= 63:
        raise ValueError(f"invalid dscp {v!r}: use 0..63 or a name (ef, af11..af43, cs0..cs7)")
    return v


def _u32(s: Any, orig: Any) -> int:
    if isinstance(s, str):
        try:
            s = int(s.strip(), 0)
        except ValueError:
            raise ValueError(f"invalid mark {orig!r}: expected an int, '0x10' or '0x10/0xff'") from None
    if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= U32:
        raise ValueError(f"invalid mark {orig!r}: value and mask must be 32-bit unsigned")
    return s


def _parse_mark(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, str) and "/" in v:
        a, _, b = v.partition("/")
        value, mask = _u32(a, v), _u32(b, v)
    elif isinstance(v, (list, tuple)) and len(v) == 2:
        value, mask = _u32(v[0], v), _u32(v[1], v)
    else:
        value, mask = _u32(v, v), U32
    if value & ~mask:
        raise ValueError(f"invalid mark {v!r}: value has bits outside the mask, it can never match")
    return value, mask


def _parse_ifname(v: Any) -> str | None:
    """Linux interface name (dev_valid_name), optionally ending in '+' as an iptables-style prefix."""
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"invalid interface name {v!r}")
    base = v[:-1] if v.endswith("+") else v
    if (not v.isascii() or not v.isprintable() or len(v) > 15 or base in (".", "..") or (not base and not v)
            or re.search(r"[\s/:+]", base)):
        raise ValueError(f"invalid interface name {v!r}: at most 15 printable ASCII characters, no '/', ':' or blanks")
    return v


def _opt_rate(v: Any) -> int | None:
    return None if v is None else parse_rate(v)


def _opt_size(v: Any) -> int | None:
    """A tc size that must hold at least one byte (bursts, quantum, byte limits)."""
    if v is None:
        return None
    n = parse_size(v)
    if n < 1:
        raise ValueError(f"invalid size {v!r}: must be at least 1 byte")
    return n


Rate = Annotated[int, BeforeValidator(parse_rate)]
OptRate = Annotated[int | None, BeforeValidator(_opt_rate)]
OptSize = Annotated[int | None, BeforeValidator(_opt_size)]


class MatchSpec(BaseModel):
    """What a leaf class catches.  Every given field must match; an empty match catches everything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    src: Annotated[str | None, BeforeValidator(_parse_cidr)] = None
    dst: Annotated[str | None, BeforeValidator(_parse_cidr)] = None
    proto: Annotated[int | None, BeforeValidator(_parse_proto)] = None
    sport: Annotated[tuple[int, int] | None, BeforeValidator(_parse_ports)] = None
    dport: Annotated[tuple[int, int] | None, BeforeValidator(_parse_ports)] = None
    dscp: Annotated[int | None, BeforeValidator(_parse_dscp)] = None
    mark: Annotated[tuple[int, int] | None, BeforeValidator(_parse_mark)] = None
    iif: Annotated[str | None, BeforeValidator(_parse_ifname)] = None
    oif: Annotated[str | None, BeforeValidator(_parse_ifname)] = None


def _opt_time(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError(f"invalid time {v!r}")
    return parse_time(v)


def _rate_or_zero(v: Any) -> int:
    """A per-host rate: a tc rate, or 0 for "an equal share of the class among active hosts"."""
    if v in (0, "0"):
        return 0
    return parse_rate(v)


OptTime = Annotated[float | None, BeforeValidator(_opt_time)]


class QdiscSpec(BaseModel):
    """The leaf queue of a class (default: a tail-drop FIFO of ``limit`` packets).

    ``sfq`` and ``fq_codel`` queue each flow (5-tuple hash) separately and serve
    them by DRR; ``fq_codel`` adds CoDel (RFC 8290) per flow.  ``limit`` here is
    the leaf's packet limit (the class's ``limit`` is used when it is not given).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["fifo", "sfq", "fq_codel"] = "fifo"
    target: OptTime = Field(default=None, description="fq_codel: acceptable standing delay, e.g. 5ms")
    interval: OptTime = Field(default=None, description="fq_codel: CoDel interval, e.g. 100ms")
    flows: int | None = Field(default=None, ge=1, le=65536, strict=True)
    quantum: OptSize = None
    limit: int | None = Field(default=None, ge=1, strict=True)

    @model_validator(mode="after")
    def _check(self) -> QdiscSpec:
        if self.kind != "fq_codel":
            for f in ("target", "interval"):
                if getattr(self, f) is not None:
                    raise ValueError(f"{f} is an fq_codel setting, not one of {self.kind}")
        if self.kind == "fifo" and (self.flows is not None or self.quantum is not None):
            raise ValueError("flows and quantum need a flow-queueing kind (sfq or fq_codel)")
        for f in ("target", "interval"):
            v = getattr(self, f)
            if v is not None and v <= 0:
                raise ValueError(f"{f} must be above 0")
        return self


class PerHostSpec(BaseModel):
    """PCQ / dummynet masks: one sub-queue per host address, created on its first packet.

    Each host gets ``rate`` (and may use up to ``ceil``); ``rate: 0`` means an
    equal share of what the class gets, among the hosts active now.  Hosts idle
    for ``idle_timeout`` are forgotten.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Literal["src", "dst"] = "dst"
    prefix: int = Field(default=32, ge=0, le=32, strict=True)
    prefix6: int = Field(default=64, ge=0, le=128, strict=True)
    rate: Annotated[int, BeforeValidator(_rate_or_zero)] = 0
    ceil: OptRate = None
    burst: OptSize = None
    limit: int = Field(default=100, ge=1, strict=True)
    total_limit: int = Field(default=10240, ge=1, strict=True)
    idle_timeout: Annotated[float, BeforeValidator(_opt_time)] = 60.0

    @model_validator(mode="after")
    def _check(self) -> PerHostSpec:
        if self.ceil is not None and self.ceil < self.rate:
            raise ValueError(f"per_host ceil {format_rate(self.ceil)} is below its rate {format_rate(self.rate)}")
        if self.ceil is not None and self.rate == 0:
            raise ValueError("per_host ceil needs a per-host rate (rate 0 means an equal share)")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be above 0")
        return self


class ClassSpec(BaseModel):
    """One HTB class.  Rules within the class (ceil >= rate, ...) are checked here, tree rules by ``Config``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_RE.pattern, strict=True)
    direction: Direction = "egress"
    parent: str | None = Field(default=None, strict=True)
    rate: Rate
    ceil: OptRate = None
    burst: OptSize = None
    cburst: OptSize = None
    prio: int = Field(default=0, ge=0, le=7, strict=True)
    quantum: OptSize = None
    limit: int = Field(default=1000, ge=1, strict=True)
    limit_bytes: OptSize = None
    overhead: int | None = Field(default=None, ge=0, le=MAX_OVERHEAD, strict=True)
    default: bool = Field(default=False, strict=True)
    match: MatchSpec | None = None
    qdisc: QdiscSpec | None = None
    per_host: PerHostSpec | None = None
    delay: OptTime = Field(default=None, description="added delay, e.g. 20ms (netem / dummynet delay)")
    jitter: OptTime = Field(default=None, description="random extra delay up to this, e.g. 5ms")
    loss: float | None = Field(default=None, ge=0, le=100, description="percent of packets dropped at random")
    reorder: bool = Field(default=False, strict=True, description="with jitter: let packets overtake each other")

    @model_validator(mode="after")
    def _check_class(self) -> ClassSpec:
        errors = [{"loc": loc, "msg": msg} for loc, msg in _class_errors(self)]
        if errors:
            raise ConfigError(errors)  # locs relative to the class; _convert prefixes ("classes", name)
        return self

    @property
    def effective_ceil(self) -> int:
        return self.rate if self.ceil is None else self.ceil

    @property
    def effective_burst(self) -> int:
        return default_burst(self.rate) if self.burst is None else self.burst

    @property
    def effective_cburst(self) -> int:
        return default_burst(self.effective_ceil) if self.cburst is None else self.cburst

    @property
    def effective_quantum(self) -> int:
        return default_quantum(self.rate) if self.quantum is None else self.quantum


def default_burst(rate_bps: int) -> int:
    """Bytes: one MTU plus BURST_TIME_US of ``rate_bps``, rounded up (see the module doc for why)."""
    return BURST_MTU + (rate_bps * BURST_TIME_US + 7_999_999) // 8_000_000  # ceil(rate/8 * t)


def default_quantum(rate_bps: int) -> int:
    """tc's default DRR quantum: rate in bytes/s over r2q, clamped like the kernel warns about."""
    return min(max(rate_bps // 8 // R2Q, QUANTUM_MIN), QUANTUM_MAX)


def _class_errors(c: ClassSpec) -> list[tuple[tuple[Any, ...], str]]:
    """Cross-field checks inside one class: (loc below the class, message)."""
    errs: list[tuple[tuple[Any, ...], str]] = []
    if c.ceil is not None and c.ceil < c.rate:
        errs.append((("ceil",), f"ceil {format_rate(c.ceil)} is below rate {format_rate(c.rate)}"))
    emulates = c.delay is not None or c.jitter is not None or c.loss is not None
    if emulates and c.qdisc is not None and c.qdisc.kind != "fifo":
        errs.append((("qdisc",), "delay/jitter/loss emulation replaces the leaf queue: it cannot be combined "
                                  f"with qdisc {c.qdisc.kind}"))
    if emulates and c.per_host is not None:
        errs.append((("per_host",), "delay/jitter/loss emulation cannot be combined with per_host"))
    if c.per_host is not None and c.qdisc is not None and c.qdisc.kind != "fifo":
        errs.append((("qdisc",), f"per_host queues each host itself: it cannot be combined with qdisc "
                                  f"{c.qdisc.kind}"))
    if c.reorder and not c.jitter:
        errs.append((("reorder",), "reorder only has an effect with jitter"))
    m = c.match
    if m is None:
        return errs
    fam = {"src": _family(m.src), "dst": _family(m.dst)}
    if fam["src"] and fam["dst"] and fam["src"] != fam["dst"]:
        errs.append((("match", "dst"), f"dst {m.dst} is IPv{fam['dst']} but src {m.src} is IPv{fam['src']}"))
    if m.proto is not None and m.proto not in PORT_PROTOS:
        for f in ("sport", "dport"):
            if getattr(m, f) is not None:
                errs.append(
                    (("match", f), f"{f} needs a protocol with ports (tcp, udp, sctp, ...), not {m.proto}")
                )
    if c.direction == "egress" and m.iif is not None:
        errs.append((("match", "iif"), "egress (POSTROUTING) packets have no input interface: match a mark instead"))
    if c.direction == "ingress" and m.oif is not None:
        errs.append((("match", "oif"), "ingress (PREROUTING) packets have no output interface yet"))
    return errs


def _family(cidr: str | None) -> int:
    return 0 if cidr is None else ipaddress.ip_network(cidr).version


class Config(BaseModel):
    """The whole configuration: a global per-packet overhead and the classes of both trees."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    overhead: int = Field(default=0, ge=0, le=MAX_OVERHEAD, strict=True)
    classes: list[ClassSpec] = Field(default_factory=list)

    _by_name: dict[str, ClassSpec] = PrivateAttr(default_factory=dict)
    _children: dict[str, list[ClassSpec]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_tree(self) -> Config:
        errors: list[dict[str, Any]] = []

        def err(name: str, loc: tuple[Any, ...], msg: str) -> None:
            errors.append({"loc": ("classes", name, *loc), "msg": msg})

        by_name: dict[str, ClassSpec] = {}
        for c in self.classes:
            if c.name in by_name:
                err(c.name, ("name",), f"duplicate class name {c.name!r}")
            else:
                by_name[c.name] = c
        uniq = list(by_name.values())  # config order, first of each name

        # parent links that are usable: known and in the same direction
        parent_of: dict[str, ClassSpec] = {}
        for c in uniq:
            if c.parent is None:
                continue
            p = by_name.get(c.parent)
            if p is None:
                err(c.name, ("parent",), f"unknown parent {c.parent!r}")
            elif p.direction != c.direction:
                err(c.name, ("parent",), f"parent {p.name!r} is {p.direction}, this class is {c.direction}")
            else:
                parent_of[c.name] = p

        # depth (root = 1) and cycles; a class under a cycle gets no depth and no extra error
        depth: dict[str, int | None] = {}
        for c in uniq:
            chain: list[str] = []
            cur: ClassSpec | None = c
            base: int | None = 0
            while cur is not None:
                if cur.name in depth:
                    base = depth[cur.name]
                    break
                if cur.name in chain:
                    loop = chain[chain.index(cur.name) :]
                    for name in loop:
                        err(name, ("parent",), "parent chain forms a cycle: " + " -> ".join([*loop, loop[0]]))
                    base = None
                    break
                chain.append(cur.name)
                cur = parent_of.get(cur.name)
            for name in reversed(chain):
                base = None if base is None else base + 1
                depth[name] = base
                if base == MAX_DEPTH + 1:
                    err(name, ("parent",), f"tree deeper than {MAX_DEPTH} levels")

        children: dict[str, list[ClassSpec]] = {c.name: [] for c in uniq}
        for c in uniq:
            if c.name in parent_of and depth[c.name] is not None:
                children[parent_of[c.name].name].append(c)

        defaults: dict[str, str] = {}
        for c in uniq:
            kids = children[c.name]
            if kids:
                if c.default:
                    err(c.name, ("default",), "only a leaf class (no children) can be the default")
                if c.match is not None:
                    err(c.name, ("match",), "only a leaf class (no children) can have a match")
                total = sum(k.rate for k in kids)
                if total > c.effective_ceil:
                    parts = ", ".join(f"{k.name} {format_rate(k.rate)}" for k in kids)
                    err(
                        c.name,
                        ("ceil",),
                        f"children's rates add up to {format_rate(total)} ({parts}), "
                        f"more than ceil {format_rate(c.effective_ceil)}",
                    )
            if c.default:
                if c.direction in defaults:
                    err(c.name, ("default",), f"{c.direction} already has the default class {defaults[c.direction]!r}")
                else:
                    defaults[c.direction] = c.name

        if errors:
            raise ConfigError(errors)
        self._by_name = by_name
        self._children = children
        return self

    # --- queries -------------------------------------------------------------------------------

    def class_by_name(self, name: str) -> ClassSpec | None:
        return self._by_name.get(name)

    def children(self, name: str) -> list[ClassSpec]:
        """Direct children of ``name`` in config order (empty for a leaf or an unknown name)."""
        return list(self._children.get(name, ()))

    def is_leaf(self, name: str) -> bool:
        return name in self._by_name and not self._children[name]

    def direction_classes(self, direction: Direction) -> list[ClassSpec]:
        """Classes of one tree, in config order."""
        return [c for c in self.classes if c.direction == direction]

    def matching_leaves(self, direction: Direction) -> list[ClassSpec]:
        """The leaf classes of one tree that have a match: the classifier's rules, in config order."""
        return [c for c in self.direction_classes(direction) if c.match is not None and self.is_leaf(c.name)]

    def default_class(self, direction: Direction) -> ClassSpec | None:
        return next((c for c in self.classes if c.direction == direction and c.default), None)

    def effective_overhead(self, c: ClassSpec | str) -> int:
        """Bytes added to each packet's IP length for class ``c`` (its own or the global one)."""
        spec = self._by_name[c] if isinstance(c, str) else c
        return self.overhead if spec.overhead is None else spec.overhead

    # --- changes (each returns a NEW validated Config; self is never touched) ------------------

    def with_class_added(self, spec: Mapping[str, Any] | ClassSpec) -> Config:
        if not isinstance(spec, (Mapping, ClassSpec)):
            raise ConfigError.one(("classes",), f"a class must be a mapping, not {type(spec).__name__}")
        name = spec.name if isinstance(spec, ClassSpec) else spec.get("name")
        if isinstance(name, str) and name in self._by_name:
            raise ConfigError.one(("classes", name, "name"), f"class {name!r} already exists", code="exists")
        return parse_config({"overhead": self.overhead, "classes": [*self.classes, spec]})

    def with_class_changed(self, name: str, patch: Mapping[str, Any]) -> Config:
        """Apply a JSON merge patch (RFC 7396: ``null`` resets a field to its default) to class ``name``."""
        old = self._by_name.get(name)
        if old is None:
            raise ConfigError.one(("classes", name), f"no class named {name!r}", code="not_found")
        if not isinstance(patch, Mapping):
            raise ConfigError.one(("classes", name), f"a patch must be a mapping, not {type(patch).__name__}")
        if "name" in patch and patch["name"] != name:
            raise ConfigError.one(
                ("classes", name, "name"), "renaming a class is not supported: remove it and add it again"
            )
        merged = _merge_patch(old.model_dump(exclude_none=True), patch)
        classes: list[Any] = [merged if c is old else c for c in self.classes]
        return parse_config({"overhead": self.overhead, "classes": classes})

    def with_class_removed(self, name: str) -> Config:
        if name not in self._by_name:
            raise ConfigError.one(("classes", name), f"no class named {name!r}", code="not_found")
        kids = self._children[name]
        if kids:
            raise ConfigError.one(
                ("classes", name),
                f"class {name!r} has children ({', '.join(repr(k.name) for k in kids)}): remove them first",
                code="has_children",
            )
        return parse_config({"overhead": self.overhead, "classes": [c for c in self.classes if c.name != name]})


def _merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge_patch(dict(out[k]), v)
        else:
            out[k] = v
    return out


# --- validation entry point and error conversion ------------------------------------------------


def parse_config(data: Any) -> Config:
    """Validate a plain data tree (from YAML or JSON) into a ``Config``; raise ``ConfigError``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError.one((), f"the configuration must be a mapping, not {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise _convert(e, data) from None


def _class_label(data: Mapping[str, Any], index: int) -> Any:
    """The class NAME at ``classes[index]`` of the raw input, else the index itself."""
    classes = data.get("classes")
    if isinstance(classes, Sequence) and not isinstance(classes, str) and 0 <= index < len(classes):
        item = classes[index]
        name = item.name if isinstance(item, ClassSpec) else item.get("name") if isinstance(item, Mapping) else None
        if isinstance(name, str) and name:
            return name
    return index


def _convert(e: ValidationError, data: Mapping[str, Any]) -> ConfigError:
    errors: list[dict[str, Any]] = []
    for d in e.errors():
        loc = tuple(d["loc"])
        if len(loc) >= 2 and loc[0] == "classes" and isinstance(loc[1], int):
            loc = ("classes", _class_label(data, loc[1]), *loc[2:])
        exc = (d.get("ctx") or {}).get("error")
        if isinstance(exc, ConfigError):  # raised by our own model validators, locs relative to `loc`
            errors.extend({**e, "loc": (*loc, *e["loc"])} for e in exc.errors)
            continue
        msg = d["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif d["type"] == "extra_forbidden":
            msg = "unknown field (a typo?)"
        elif d["type"] == "string_pattern_mismatch" and loc[-1:] == ("name",):
            msg = f"invalid name {d.get('input')!r}: use 1-64 of A-Z a-z 0-9 _ . -"
        errors.append({"loc": loc, "msg": msg})
    return ConfigError(errors)


# --- YAML ---------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a repeated ``rate:`` is a typo, not an override)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node that ``loc`` reaches (class names resolve in sequences)."""
    if root is None:
        return None
    node: yaml.Node = root
    line = node.start_mark.line + 1
    for part in loc:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    nxt, line = v, k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                if part == i or (isinstance(part, str) and _node_name(item) == part):
                    nxt, line = item, item.start_mark.line + 1
                    break
        if nxt is None:
            break
        node = nxt
    return line


def _node_name(node: yaml.Node) -> str | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == "name" and isinstance(v, yaml.ScalarNode):
                return v.value
    return None


def load_config(path: str | os.PathLike[str], missing_ok: bool = False) -> Config:
    """Read and validate a YAML config.  Every problem -> ``ConfigError`` naming the file and line."""
    p = os.fspath(path)
    try:
        text = Path(p).read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return Config()
        raise ConfigError([{"loc": (), "msg": "file not found"}], path=p) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([{"loc": (), "msg": f"cannot read: {e}"}], path=p) from None
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([{"loc": (), "msg": f"YAML syntax error: {problem}", "line": line}], path=p) from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError([{"loc": (), "msg": "file is empty (half-written?)", "line": 1}], path=p)
    try:
        return parse_config(data)
    except ConfigError as e:
        for err in e.errors:
            err["line"] = _line_of(root, err["loc"])
        raise ConfigError(e.errors, code=e.code, path=p) from None


def _match_out(m: MatchSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in MatchSpec.model_fields:
        v = getattr(m, field)
        if v is None:
            continue
        if field == "proto":
            v = _PROTO_NAMES.get(v, v)
        elif field in ("sport", "dport"):
            v = v[0] if v[0] == v[1] else f"{v[0]}-{v[1]}"
        elif field == "mark":
            v = f"{v[0]:#x}" if v[1] == U32 else f"{v[0]:#x}/{v[1]:#x}"
        out[field] = v
    return out


_RATE_FIELDS = frozenset(("rate", "ceil"))
_SIZE_FIELDS = frozenset(("burst", "cburst", "quantum", "limit_bytes"))


def class_to_data(c: ClassSpec) -> dict[str, Any]:
    """The readable form of a class that ``dump_config`` writes (tc strings, names), None fields omitted."""
    out: dict[str, Any] = {}
    for field in ClassSpec.model_fields:
        v = getattr(c, field)
        if v is None:
            continue
        if field in _RATE_FIELDS:
            v = format_rate(v)
        elif field in _SIZE_FIELDS:
            v = format_size(v)
        elif field == "match":
            v = _match_out(v)
        elif field in ("qdisc", "per_host"):
            v = _options_out(v)
        elif field in _TIME_FIELDS:
            v = format_time(v)
        elif field == "reorder" and not v:
            continue
        out[field] = v
    return out


_TIME_FIELDS = frozenset(("delay", "jitter", "target", "interval", "idle_timeout"))


def format_time(seconds: float) -> str:
    """Readable seconds that parse_time reads back exactly (ms when whole, else s)."""
    for unit, scale in (("s", 1), ("ms", 1000), ("us", 1_000_000)):
        v = round(seconds * scale, 6)
        if v == int(v) and parse_time(f"{int(v)}{unit}") == seconds:
            return f"{int(v)}{unit}"
    return repr(seconds)


def _options_out(m: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in type(m).model_fields:
        v = getattr(m, field)
        if v is None:
            continue
        if field in _RATE_FIELDS:
            v = format_rate(v) if v else 0
        elif field in _SIZE_FIELDS:
            v = format_size(v)
        elif field in _TIME_FIELDS:
            v = format_time(v)
        out[field] = v
    return out


def dump_config(cfg: Config) -> str:
    """YAML text of ``cfg`` with tc-style rates/sizes; ``load_config`` of it gives ``cfg`` back."""
    data = {"overhead": cfg.overhead, "classes": [class_to_data(c) for c in cfg.classes]}
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return "# imqd configuration (rewritten by imqd: comments are not kept)\n" + body


def save_config_atomic(path: str | os.PathLike[str], cfg: Config) -> None:
    """Replace ``path`` with ``cfg`` so a crash leaves the old or the new file, never half of one.

    The new file is written to a 0600 temporary file in the same directory and
    fsynced; the previous file is kept as ``PATH.bak``; ``os.replace`` swaps the
    new one in and the directory is fsynced so the rename itself is durable.
    A symlinked ``path`` is followed, so the link stays in place.
    """
    target = os.path.realpath(os.fspath(path))
    directory = os.path.dirname(target) or "."
    text = dump_config(cfg)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(target):
            tmp_bak = tmp + ".bak"
            try:
                os.link(target, tmp_bak)  # cheap and atomic: .bak becomes the old inode
            except OSError:
                shutil.copy2(target, tmp_bak)
            os.replace(tmp_bak, target + ".bak")
        os.replace(tmp, target)
    except BaseException:
        for leftover in (tmp, tmp + ".bak"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
