"""The shaper's configuration: pydantic models, the validated ``Config``, and changes to it.

One file describes both HTB trees (ingress = mangle PREROUTING, egress = mangle
POSTROUTING).  Values are accepted the way an operator writes them (tc rates
and sizes, "tcp", "5000-5100", "ef", "0x10/0xff"; :mod:`imqd.config_fields`) and
stored normalised (ints, tuples) so the data plane never parses strings.
:mod:`imqd.config_file` reads and writes the YAML file.

Every error names the class and the field: ``ConfigError.errors`` is a list of
``{"loc": ("classes", "<class name>", "<field>", ...), "msg": "..."}`` (plus
``"line"`` when it came from a file), and ``str(ConfigError)`` is one line per
error.  ``ConfigError.code`` tells the REST API which status to answer:
``invalid`` (422), ``not_found`` (404), ``exists`` (409), ``has_children`` (409).
Validate with ``parse_config(data)`` or the ``Config.with_*`` methods to get
``ConfigError``; ``Config(...)``/``model_validate`` raise pydantic's
``ValidationError`` (whose ctx carries the ``ConfigError`` of tree rules).

Two ways to a new ``Config``, held to each other by a differential test:

* ``parse_config`` validates everything (a file, a bulk replace): every class
  through pydantic, then every tree rule (:func:`imqd.config_tree.check_tree`).
* ``with_class_added/changed/removed`` validate one class alone, then only the
  tree rules that class touches, against the index the old ``Config`` keeps
  (:func:`imqd.config_tree.check_upsert`), and build the new ``Config`` from a
  :class:`~imqd.config_delta.ConfigDelta` without revalidating anything else:
  microseconds with 10,000 classes instead of a full validation.

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

import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from imqd.config_fields import (
    DSCP_NAMES,
    MAX_MATCH_ADDRESSES,
    PROTOCOLS,
    Cidrs,
    Dscp,
    IfName,
    Mark,
    OptRate,
    OptSize,
    OptTime,
    PerHostRate,
    Ports,
    Proto,
    Rate,
    Time,
    address_pairs,
    cidr_family,
    cidr_list,
)
from imqd.config_tree import (
    MAX_CLASSES,
    MAX_DEPTH,
    TreeIndex,
    capped,
    check_tree,
    check_upsert,
    index_tree,
    too_many_classes,
)
from imqd.packet import PORT_PROTOS
from imqd.units import format_rate

__all__ = [
    "ConfigError",
    "MatchSpec",
    "QdiscSpec",
    "PerHostSpec",
    "ClassSpec",
    "Config",
    "ConfigDelta",
    "Direction",
    "DIRECTIONS",
    "MAX_CLASSES",
    "MAX_DEPTH",
    "PROTOCOLS",
    "DSCP_NAMES",
    "default_burst",
    "default_quantum",
    "parse_config",
    "validate_class",
    "class_to_data",
    "load_config",
    "dump_config",
    "save_config_atomic",
]

Direction = Literal["ingress", "egress"]
DIRECTIONS: tuple[Direction, Direction] = ("ingress", "egress")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
BURST_MTU = 1600  # bytes: one 1500-byte IP MTU plus link-layer overhead
BURST_TIME_US = 10_000  # microseconds of rate a burst holds beyond one MTU (see the module doc)
R2Q = 10
QUANTUM_MIN, QUANTUM_MAX = 1514, 200_000
MAX_OVERHEAD = 1024


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



_FIELDS_SETS: dict[frozenset[str], set[str]] = {}


class _Compact(BaseModel):
    """A frozen model whose instances share one ``__pydantic_fields_set__`` per distinct set of given fields.

    pydantic gives every instance its own set of the fields it was given: 728 bytes for a class with five or
    more of them, more than the values themselves, times 10,000 subscriber classes.  A frozen model never
    changes that set (``model_copy`` copies it before updating it), so equal ones can be one object."""

    @model_validator(mode="after")
    def _share_fields_set(self) -> Any:
        given = self.__pydantic_fields_set__
        shared = _FIELDS_SETS.setdefault(frozenset(given), given)
        if shared is not given:
            object.__setattr__(self, "__pydantic_fields_set__", shared)
        return self


class MatchSpec(_Compact):
    """What a leaf class catches.  Every given field must match; an empty match catches everything.

    ``src``/``dst`` take one CIDR or a list of them (a subscriber's devices, v4 and v6 mixed): the class
    catches a packet whose address is in any of them.  One address is stored as a string, several as a tuple.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    src: Cidrs = None
    dst: Cidrs = None
    proto: Proto = None
    sport: Ports = None
    dport: Ports = None
    dscp: Dscp = None
    mark: Mark = None
    iif: IfName = None
    oif: IfName = None

    def alternatives(self) -> tuple[MatchSpec, ...]:
        """Single-address matches that together catch what this one does: one per (src, dst) pair of the same
        IP family.  A classifier that takes one address per rule gives each the same class, in this order."""
        if not isinstance(self.src, tuple) and not isinstance(self.dst, tuple):
            return (self,)
        return tuple(self.model_copy(update={"src": s, "dst": d}) for s, d in address_pairs(self.src, self.dst))


class QdiscSpec(_Compact):
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


class PerHostSpec(_Compact):
    """PCQ / dummynet masks: one sub-queue per host address, created on its first packet.

    Each host gets ``rate`` (and may use up to ``ceil``); ``rate: 0`` means an
    equal share of what the class gets, among the hosts active now.  Hosts idle
    for ``idle_timeout`` are forgotten.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Literal["src", "dst"] = "dst"
    prefix: int = Field(default=32, ge=0, le=32, strict=True)
    prefix6: int = Field(default=64, ge=0, le=128, strict=True)
    rate: PerHostRate = 0
    ceil: OptRate = None
    burst: OptSize = None
    limit: int = Field(default=100, ge=1, strict=True)
    total_limit: int = Field(default=10240, ge=1, strict=True)
    idle_timeout: Time = 60.0

    @model_validator(mode="after")
    def _check(self) -> PerHostSpec:
        if self.ceil is not None and self.ceil < self.rate:
            raise ValueError(f"per_host ceil {format_rate(self.ceil)} is below its rate {format_rate(self.rate)}")
        if self.ceil is not None and self.rate == 0:
            raise ValueError("per_host ceil needs a per-host rate (rate 0 means an equal share)")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be above 0")
        return self


class ClassSpec(_Compact):
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

    @field_validator("parent")
    @classmethod
    def _one_parent_string(cls, v: str | None) -> str | None:
        """Interned: 10,000 subscribers of one parent keep one string, not 10,000 equal ones."""
        return v if v is None else sys.intern(v)

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
    srcs, dsts = cidr_list(m.src), cidr_list(m.dst)
    if srcs and dsts and not {cidr_family(s) for s in srcs} & {cidr_family(d) for d in dsts}:
        if len(srcs) == 1 and len(dsts) == 1:
            errs.append((("match", "dst"),
                         f"dst {m.dst} is IPv{cidr_family(m.dst)} but src {m.src} is IPv{cidr_family(m.src)}"))
        else:
            errs.append((("match", "dst"), "no src and dst address of the same IP family: the match can never hit"))
    elif len(srcs) * len(dsts) > MAX_MATCH_ADDRESSES:
        errs.append((("match", "dst"), f"{len(srcs)} src and {len(dsts)} dst addresses make {len(srcs) * len(dsts):,} "
                                       f"pairs: at most {MAX_MATCH_ADDRESSES:,}"))
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


class Config(BaseModel):
    """The whole configuration: a global per-packet overhead and the classes of both trees.

    A ``Config`` is always valid and never changes; every change returns a new one.  It keeps a
    :class:`~imqd.config_tree.TreeIndex` (by name, children, their rate sums, depths, defaults) so that
    queries are O(1) and one change is checked without a full validation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    overhead: int = Field(default=0, ge=0, le=MAX_OVERHEAD, strict=True)
    classes: list[ClassSpec] = Field(default_factory=list)

    _tree: TreeIndex = PrivateAttr(default_factory=TreeIndex)

    @model_validator(mode="after")
    def _check_tree(self) -> Config:
        errors, tree = check_tree(self.classes)
        if errors:
            raise ConfigError(errors)
        self._tree = tree
        return self

    @classmethod
    def trusted(cls, overhead: int, classes: list[ClassSpec], tree: TreeIndex | None = None) -> Config:
        """A ``Config`` of classes known to form a valid configuration (a delta applied to a valid one), built
        without validation; ``tree`` is their index when the caller has it already."""
        cfg = cls.model_construct(overhead=overhead, classes=classes)
        cfg._tree = tree if tree is not None else index_tree(classes)
        return cfg

    # --- queries -------------------------------------------------------------------------------

    def class_by_name(self, name: str) -> ClassSpec | None:
        return self._tree.by_name.get(name)

    def position(self, name: str) -> int:
        """Index of class ``name`` in ``classes`` (config order decides the first match and the default)."""
        return self._tree.pos[name]

    def children(self, name: str) -> list[ClassSpec]:
        """Direct children of ``name`` in config order (empty for a leaf or an unknown name)."""
        by_name = self._tree.by_name
        return [by_name[k] for k in self._tree.kids.get(name, ())]

    def is_leaf(self, name: str) -> bool:
        return name in self._tree.by_name and not self._tree.kids[name]

    def direction_classes(self, direction: Direction) -> list[ClassSpec]:
        """Classes of one tree, in config order."""
        return [c for c in self.classes if c.direction == direction]

    def matching_leaves(self, direction: Direction) -> list[ClassSpec]:
        """The leaf classes of one tree that have a match: the classifier's rules, in config order."""
        kids = self._tree.kids
        return [c for c in self.classes if c.direction == direction and c.match is not None and not kids[c.name]]

    def default_class(self, direction: Direction) -> ClassSpec | None:
        name = self._tree.defaults.get(direction)
        return None if name is None else self._tree.by_name[name]

    def effective_overhead(self, c: ClassSpec | str) -> int:
        """Bytes added to each packet's IP length for class ``c`` (its own or the global one)."""
        spec = self._tree.by_name[c] if isinstance(c, str) else c
        return self.overhead if spec.overhead is None else spec.overhead

    # --- changes (each returns a NEW validated Config; self is never touched) ------------------

    def with_class_added(self, spec: Mapping[str, Any] | ClassSpec) -> Config:
        if not isinstance(spec, (Mapping, ClassSpec)):
            raise ConfigError.one(("classes",), f"a class must be a mapping, not {type(spec).__name__}")
        name = spec.name if isinstance(spec, ClassSpec) else spec.get("name")
        if isinstance(name, str) and name in self._tree.by_name:
            raise ConfigError.one(("classes", name, "name"), f"class {name!r} already exists", code="exists")
        new = validate_class(spec, len(self.classes))
        errors = check_upsert(self._tree, None, new)
        if errors:
            raise ConfigError(errors)
        return self.apply_delta(_delta(upserted=(new,)))

    def with_class_changed(self, name: str, patch: Mapping[str, Any]) -> Config:
        """Apply a JSON merge patch (RFC 7396: ``null`` resets a field to its default) to class ``name``."""
        old = self._tree.by_name.get(name)
        if old is None:
            raise ConfigError.one(("classes", name), f"no class named {name!r}", code="not_found")
        if not isinstance(patch, Mapping):
            raise ConfigError.one(("classes", name), f"a patch must be a mapping, not {type(patch).__name__}")
        if "name" in patch and patch["name"] != name:
            raise ConfigError.one(
                ("classes", name, "name"), "renaming a class is not supported: remove it and add it again"
            )
        unknown = _unknown_patch_fields(ClassSpec, patch, ("classes", name))
        if unknown:
            raise ConfigError(unknown)
        new = validate_class(_merge_patch(old.model_dump(exclude_none=True), patch), self._tree.pos[name])
        if new == old:
            return self
        errors = check_upsert(self._tree, old, new)
        if errors:
            raise ConfigError(errors)
        return self.apply_delta(_delta(upserted=(new,)))

    def with_class_removed(self, name: str) -> Config:
        if name not in self._tree.by_name:
            raise ConfigError.one(("classes", name), f"no class named {name!r}", code="not_found")
        kids = self._tree.kids[name]
        if kids:  # removing a leaf breaks no rule: its parent only has fewer children
            raise ConfigError.one(
                ("classes", name),
                f"class {name!r} has children ({capped((repr(k) for k in kids), len(kids))}): remove them first",
                code="has_children",
            )
        return self.apply_delta(_delta(removed=(name,)))

    def diff(self, new: Config) -> ConfigDelta:
        """What turns this configuration into ``new`` (``self.apply_delta(self.diff(new)) == new``)."""
        from imqd.config_delta import diff

        return diff(self, new)

    def apply_delta(self, delta: ConfigDelta) -> Config:
        """This configuration with ``delta`` applied.  Trusted: the delta must come from a validated change
        (``diff``, ``with_*``); nothing is validated again.  Work proportional to the delta."""
        from imqd.config_delta import apply_delta

        return apply_delta(self, delta)


def _delta(**kw: Any) -> ConfigDelta:
    from imqd.config_delta import ConfigDelta

    return ConfigDelta(**kw)


_NESTED_SPECS: dict[str, type[BaseModel]] = {"match": MatchSpec, "qdisc": QdiscSpec, "per_host": PerHostSpec}


def _unknown_patch_fields(model: type[BaseModel], patch: Mapping[str, Any],
                          loc: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Errors for patch keys the model does not have.  Validation catches a set unknown field, but a ``null``
    (reset) of one would vanish in the merge unseen: a typo in a reset must not answer 200."""
    errors: list[dict[str, Any]] = []
    for key, value in patch.items():
        if key not in model.model_fields:
            errors.append({"loc": (*loc, key), "msg": f"unknown field {key!r}"})
        elif model is ClassSpec and key in _NESTED_SPECS and isinstance(value, Mapping):
            errors += _unknown_patch_fields(_NESTED_SPECS[key], value, (*loc, key))
    return errors


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


# --- validation entry points and error conversion ---------------------------------------------


def validate_class(spec: Mapping[str, Any] | ClassSpec, index: int) -> ClassSpec:
    """One class validated on its own (field and in-class rules), errors located as ``parse_config`` would
    locate them for a class at position ``index`` of the list."""
    if isinstance(spec, ClassSpec):
        return spec
    try:
        return ClassSpec.model_validate(spec)
    except ValidationError as e:
        raise _convert(e, {"classes": [spec]}, prefix=("classes",), index_of=lambda _: index) from None


def parse_config(data: Any) -> Config:
    """Validate a plain data tree (from YAML or JSON) into a ``Config``; raise ``ConfigError``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError.one((), f"the configuration must be a mapping, not {type(data).__name__}")
    classes = data.get("classes")
    if isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) > MAX_CLASSES:
        raise ConfigError([too_many_classes(len(classes))])  # before pydantic spends seconds on them
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


def _convert(e: ValidationError, data: Mapping[str, Any], prefix: tuple[Any, ...] = (),
             index_of: Any = None) -> ConfigError:
    """pydantic's errors as ours: a class's list index becomes its name (``index_of`` maps a label back to the
    index a lone class would have in the whole list); a ``ConfigError`` raised inside a model is unpacked."""
    errors: list[dict[str, Any]] = []
    for d in e.errors():
        loc = (*prefix, 0, *d["loc"]) if prefix else tuple(d["loc"])
        if len(loc) >= 2 and loc[0] == "classes" and isinstance(loc[1], int):
            label = _class_label(data, loc[1])
            if index_of is not None and isinstance(label, int):
                label = index_of(label)
            loc = ("classes", label, *loc[2:])
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


# The file format and the delta type live in their own modules; these names stay importable from here.
from imqd.config_delta import ConfigDelta  # noqa: E402
from imqd.config_file import class_to_data, dump_config, load_config, save_config_atomic  # noqa: E402
