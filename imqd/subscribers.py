"""Subscribers from the table ISPs already keep: LibreQoS's ``ShapedDevices.csv`` -> one class per circuit and
direction.

The columns are LibreQoS's (matched by header name, case and blanks ignored, in any order; other columns
are ignored)::

    Circuit ID, Circuit Name, Device ID, Device Name, Parent Node, MAC, IPv4, IPv6,
    Download Min Mbps, Upload Min Mbps, Download Max Mbps, Upload Max Mbps, Comment

A *circuit* is what a subscriber pays for; its devices (one row each, same Circuit ID) share it.  Each
circuit becomes two classes:

==========================  ===============================================================================
``<prefix><id>-down``        ingress (download = toward the subscriber): ``rate`` = Download Min Mbps,
                             ``ceil`` = Download Max Mbps, ``match: {dst: [every IPv4 and IPv6 of its devices]}``,
                             parent ``<Parent Node>-down``
``<prefix><id>-up``          egress (upload = from the subscriber): Upload Min/Max Mbps, ``match: {src: [...]}``,
                             parent ``<Parent Node>-up``
==========================  ===============================================================================

Download is *ingress* because a subscriber's download enters the router from the upstream link and is
queued at PREROUTING (or, with ``--nat``, FORWARD, after de-NAT) where its destination is the subscriber's
address; upload leaves at POSTROUTING, before SNAT, where its source still is.  The parent classes
(``<node>-down`` ingress, ``<node>-up`` egress) are the operator's: the import refuses a Parent Node they
do not exist for.  An empty Parent Node takes the ``parent`` option, or none (the circuit is a tree of
its own: a flat network).  Mbps may have decimals (0.5 = 500 kbit/s); Min must be above 0 and at most Max.

Class names: the prefix (default ``sub-``) marks every class the import manages.  A re-import replaces
exactly that set: circuits no longer listed lose their classes, changed ones are changed, new ones are
added at the end; hand-made classes (any other name) are never touched.  A Circuit ID made of
``A-Z a-z 0-9 _ . -`` is used as it is; any other (spaces, ``/``, too long) is shortened to those
characters plus 8 hex digits of its SHA-1, so the name is stable across imports.

Every row is checked before anything changes, and every bad row is reported with its line and column:
a missing or non-numeric rate, Min above Max, an address that does not parse (or has host bits set, or is
in the wrong column), the same circuit with a different Parent Node or plan on another row, and an address
(or a prefix covering another) that two circuits list.  Two circuits never share an address: imqd's
classifier takes the first matching class, so the later circuit would silently lose that device to the
earlier one; the import is refused instead, naming both rows (LibreQoS refuses duplicate IPv6 addresses and
warns on IPv4 ones).  Rows whose first field starts with ``#`` are comments, as in LibreQoS.
"""

from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from imqd.cidr import cidr_span, normal_cidr
from imqd.config import ClassSpec, Config, ConfigError, parse_config
from imqd.config_fields import MAX_MATCH_ADDRESSES

__all__ = ["Circuit", "read_circuits", "imported_config", "DEFAULT_PREFIX", "class_names", "COLUMNS"]

CIRCUIT_ID, CIRCUIT_NAME, DEVICE_ID, DEVICE_NAME = "Circuit ID", "Circuit Name", "Device ID", "Device Name"
PARENT, MAC, IPV4, IPV6 = "Parent Node", "MAC", "IPv4", "IPv6"
DOWN_MIN, UP_MIN, DOWN_MAX, UP_MAX = "Download Min Mbps", "Upload Min Mbps", "Download Max Mbps", "Upload Max Mbps"
COMMENT = "Comment"
COLUMNS = (CIRCUIT_ID, CIRCUIT_NAME, DEVICE_ID, DEVICE_NAME, PARENT, MAC, IPV4, IPV6, DOWN_MIN, UP_MIN, DOWN_MAX,
           UP_MAX, COMMENT)
REQUIRED = (CIRCUIT_ID, PARENT, IPV4, IPV6, DOWN_MIN, UP_MIN, DOWN_MAX, UP_MAX)
RATE_COLUMNS = (DOWN_MIN, UP_MIN, DOWN_MAX, UP_MAX)
DEFAULT_PREFIX = "sub-"
SUFFIX_DOWN, SUFFIX_UP = "-down", "-up"
MAX_MBPS = Decimal(10_000_000)  # 10 Tbit/s: anything above is a typo
PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
ID_RE = re.compile(r"[A-Za-z0-9_.-]+")
NAME_MAX = 64


@dataclass
class Circuit:
    """One subscriber circuit: its first row's line, plan and parent, and every device's addresses."""

    id: str
    line: int
    parent: str
    rates: dict[str, int]  # column -> bit/s
    addresses: list[str] = field(default_factory=list)  # normalised CIDRs, v4 and v6, in file order
    devices: int = 0


def _err(line: int, column: str | None, msg: str) -> dict[str, Any]:
    return {"loc": ("csv", line, column) if column else ("csv", line), "msg": msg}


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of every CSV record that is not blank or a comment."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 0
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ConfigError([_err(start, None, f"not valid CSV (the record starting here): {e}")]) from None
        line = reader.line_num
        if not row or all(not f.strip() for f in row) or row[0].lstrip().startswith("#"):
            continue
        yield start, row


def _mbps(value: str) -> int:
    """Mbps as written in the table (``2.5``) -> bit/s; ValueError with the reason."""
    try:
        mbps = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number of Mbps") from None
    if not mbps.is_finite() or mbps <= 0:
        raise ValueError(f"{value!r}: must be a number of Mbps above 0")
    if mbps > MAX_MBPS:
        raise ValueError(f"{value!r} Mbps is more than 10 Tbit/s (a typo?)")
    bps = int((mbps * 1_000_000).to_integral_value())
    if bps < 1:
        raise ValueError(f"{value!r} Mbps is less than 1 bit/s")
    return bps


def _addresses(value: str, version: int, line: int, column: str, errors: list[dict[str, Any]]) -> list[str]:
    out = []
    for piece in value.split(","):
        piece = piece.strip()
        if not piece:
            continue
        try:
            net = normal_cidr(piece, strict=True)
        except ValueError as e:
            errors.append(_err(line, column, f"{piece!r} is not an IPv{version} address or prefix: {e}"))
            continue
        found = 6 if ":" in net else 4
        if found != version:
            errors.append(_err(line, column, f"{piece!r} is an IPv{found} address: it belongs in the "
                                             f"IPv{found} column"))
            continue
        out.append(net)
    return out


def read_circuits(text: str) -> list[Circuit]:
    """The circuits of a ShapedDevices.csv text, in order of first appearance.

    Raises ``ConfigError`` listing every bad row (``loc`` = ``("csv", line, column)``) and nothing else."""
    if text.startswith("\ufeff"):  # a byte order mark from a spreadsheet
        text = text[1:]
    records = _records(text)
    first = next(records, None)
    if first is None:
        raise ConfigError([_err(1, None, "no header row (the table is empty)")])
    header_line, header = first
    canonical = {c.lower(): c for c in COLUMNS}
    index: dict[str, int] = {}
    for i, name in enumerate(header):
        col = canonical.get(" ".join(name.split()).lower())
        if col is not None and col not in index:
            index[col] = i
    missing = [c for c in REQUIRED if c not in index]
    if missing:
        raise ConfigError([_err(header_line, c, "the header has no such column (LibreQoS ShapedDevices.csv columns: "
                                               + ", ".join(COLUMNS) + ")") for c in missing])
    errors: list[dict[str, Any]] = []
    circuits: dict[str, Circuit] = {}
    owners: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, int, str]] = []
    for line, row in records:
        if len(row) < len(header):
            errors.append(_err(line, header[len(row)], f"missing: the row has {len(row)} fields, the header "
                                                       f"{len(header)}"))
            continue
        if len(row) > len(header):
            errors.append(_err(line, None, f"the row has {len(row)} fields, the header only {len(header)}"))
            continue
        value = {c: row[i].strip() for c, i in index.items()}
        bad = len(errors)
        cid = value[CIRCUIT_ID]
        if not cid:
            errors.append(_err(line, CIRCUIT_ID, "empty: every device row names the circuit it belongs to"))
        rates: dict[str, int] = {}
        for col in RATE_COLUMNS:
            try:
                rates[col] = _mbps(value[col])
            except ValueError as e:
                errors.append(_err(line, col, str(e)))
        for lo, hi in ((DOWN_MIN, DOWN_MAX), (UP_MIN, UP_MAX)):
            if lo in rates and hi in rates and rates[lo] > rates[hi]:
                errors.append(_err(line, lo, f"{value[lo]} is above {hi} {value[hi]}"))
        addrs = (_addresses(value[IPV4], 4, line, IPV4, errors) + _addresses(value[IPV6], 6, line, IPV6, errors))
        if len(errors) > bad or not cid:
            continue
        circuit = circuits.get(cid)
        if circuit is None:
            circuit = circuits[cid] = Circuit(cid, line, value[PARENT], rates)
        else:
            if value[PARENT] != circuit.parent:
                errors.append(_err(line, PARENT, f"circuit {cid!r} has Parent Node {circuit.parent!r} on line "
                                                 f"{circuit.line}: a circuit's devices share one parent"))
            for col in RATE_COLUMNS:
                if rates[col] != circuit.rates[col]:
                    errors.append(_err(line, col, f"circuit {cid!r} has {col} {_mbps_text(circuit.rates[col])} on "
                                                  f"line {circuit.line}: a circuit's devices share one plan"))
            if len(errors) > bad:
                continue
        circuit.devices += 1
        for a in addrs:
            if a not in circuit.addresses:
                circuit.addresses.append(a)
                owners.append((cidr_span(a), a, cid, line, IPV4 if ":" not in a else IPV6))
        if len(circuit.addresses) > MAX_MATCH_ADDRESSES:
            errors.append(_err(line, IPV4, f"circuit {cid!r} has {len(circuit.addresses)} addresses: at most "
                                           f"{MAX_MATCH_ADDRESSES} per circuit"))
    errors.extend(_shared_addresses(owners))
    if errors:
        errors.sort(key=lambda e: (e["loc"][1], str(e["loc"][2:])))
        raise ConfigError(errors)
    return list(circuits.values())


def _mbps_text(bps: int) -> str:
    return f"{Decimal(bps) / 1_000_000:f}".rstrip("0").rstrip(".") + " Mbps"


def _shared_addresses(owners: Sequence[tuple[tuple[int, int, int, int], str, str, int, str]]
                      ) -> list[dict[str, Any]]:
    """An error for every address or prefix inside (or equal to) one of another circuit, at the later row.

    ``owners``: ((version, first, last, prefix length), CIDR, circuit, line, column). Sorted by (family,
    first address, prefix length), a prefix comes before the prefixes it contains; a stack of the prefixes
    that still cover the current address finds the one it lies in: O(n log n)."""
    errors = []
    items = sorted(owners, key=lambda o: (o[0][0], o[0][1], o[0][3]))
    stack: list[tuple[tuple[int, int, int, int], str, str, int, str]] = []
    for item in items:
        version, first, _, _ = item[0]
        while stack and (stack[-1][0][0] != version or stack[-1][0][2] < first):
            stack.pop()
        if stack and stack[-1][2] != item[2]:
            outer = stack[-1]
            later, earlier = (item, outer) if item[3] >= outer[3] else (outer, item)
            how = "is also listed" if outer[0] == item[0] else f"overlaps {earlier[1]}"
            errors.append(_err(later[3], later[4], f"{later[1]} {how} by circuit {earlier[2]!r} (line {earlier[3]}): "
                                                   "two circuits cannot share an address"))
        stack.append(item)
    return errors


def class_names(circuit_id: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
    """The (download, upload) class names of a circuit (see the module doc)."""
    room = NAME_MAX - len(prefix) - len(SUFFIX_DOWN)
    if ID_RE.fullmatch(circuit_id) and len(circuit_id) <= room:
        key = circuit_id
    else:
        digest = hashlib.sha1(circuit_id.encode("utf-8")).hexdigest()[:8]
        key = re.sub(r"[^A-Za-z0-9_.-]+", "_", circuit_id)[: room - 9].strip("_") + "-" + digest
    return f"{prefix}{key}{SUFFIX_DOWN}", f"{prefix}{key}{SUFFIX_UP}"


def _parents(node: str, config: Config, line: int, errors: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    if not node:
        return None, None
    names = (node + SUFFIX_DOWN, node + SUFFIX_UP)
    for name, direction in zip(names, ("ingress", "egress")):
        spec = config.class_by_name(name)
        if spec is None or spec.direction != direction:
            why = "there is none" if spec is None else f"{name!r} is {spec.direction}"
            errors.append(_err(line, PARENT, f"unknown parent: Parent Node {node!r} needs an {direction} class "
                                             f"{name!r} ({why}); add {node}-down (ingress) and {node}-up (egress)"))
    return names


def imported_config(config: Config, circuits: Sequence[Circuit], *, prefix: str = DEFAULT_PREFIX,
                    parent: str | None = None) -> Config:
    """``config`` with its imported classes (names starting with ``prefix``) replaced by ``circuits``'.

    Surviving circuits keep their place, new ones go at the end, so the change is a delta without
    reordering.  Raises ``ConfigError``: rows naming an unknown parent (by line), and whatever the whole
    configuration then breaks (a parent's ceil below its children's rates...)."""
    if not PREFIX_RE.fullmatch(prefix):
        raise ConfigError.one(("prefix",), f"invalid prefix {prefix!r}: 1-32 of A-Z a-z 0-9 _ . -")
    errors: list[dict[str, Any]] = []
    specs: dict[str, dict[str, Any]] = {}
    rows: dict[str, tuple[int, str]] = {}  # class name -> (line, direction) for errors
    nodes: dict[str, tuple[str | None, str | None]] = {}  # Parent Node -> its classes (10,000 rows, a few nodes)
    for c in circuits:
        node = c.parent or parent or ""
        if node in nodes:
            down_parent, up_parent = nodes[node]
        else:
            found = len(errors)
            down_parent, up_parent = _parents(node, config, c.line, errors)
            if len(errors) == found:  # (an unknown node is looked up again: every row naming it is reported)
                nodes[node] = down_parent, up_parent
        down, up = class_names(c.id, prefix)
        for name in (down, up):
            if name in specs:
                errors.append(_err(c.line, CIRCUIT_ID, f"circuit {c.id!r} gets the class name {name!r} of circuit "
                                                       f"on line {rows[name][0]}: make one of the IDs differ"))
        specs[down] = _spec(down, "ingress", down_parent, c.rates[DOWN_MIN], c.rates[DOWN_MAX], "dst", c.addresses)
        specs[up] = _spec(up, "egress", up_parent, c.rates[UP_MIN], c.rates[UP_MAX], "src", c.addresses)
        rows[down], rows[up] = (c.line, "Download"), (c.line, "Upload")
    if errors:
        raise ConfigError(errors)
    classes: list[Any] = []
    for spec in config.classes:
        if not spec.name.startswith(prefix):
            classes.append(spec)
        elif spec.name in specs:
            classes.append(_same_or_new(spec, specs.pop(spec.name)))
    classes.extend(specs.values())
    try:
        return parse_config({"overhead": config.overhead, "classes": classes})
    except ConfigError as e:
        raise ConfigError([_row_error(err, rows) for err in e.errors]) from None


def _spec(name: str, direction: str, parent: str | None, rate: int, ceil: int, key: str, addrs: list[str]
          ) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "direction": direction, "rate": rate, "ceil": ceil}
    if parent is not None:
        spec["parent"] = parent
    if addrs:
        spec["match"] = {key: addrs[0] if len(addrs) == 1 else tuple(addrs)}
    return spec


def _same_or_new(old: ClassSpec, new: dict[str, Any]) -> ClassSpec | dict[str, Any]:
    """The existing class when the import leaves it as it is: it is not validated again, and the diff sees
    no change.  Any field set by hand since (a PATCH of prio...) makes it the new spec: the import owns it."""
    match = old.match.model_dump(exclude_none=True) if old.match is not None else None
    own = (old.direction, old.parent, old.rate, old.ceil, match)
    if own != (new["direction"], new.get("parent"), new["rate"], new["ceil"], new.get("match")):
        return new
    rest = old.model_dump(exclude_none=True, exclude={"name", "direction", "parent", "rate", "ceil", "match"})
    return old if rest == _DEFAULTS else new


_DEFAULTS = {k: v.default for k, v in ClassSpec.model_fields.items()
             if v.default is not None and k not in ("name", "direction", "parent", "rate", "ceil", "match")}


def _row_error(err: dict[str, Any], rows: dict[str, tuple[int, str]]) -> dict[str, Any]:
    """A validation error of an imported class, located at its circuit's row where a column says it."""
    loc = err["loc"]
    if len(loc) >= 3 and loc[0] == "classes" and loc[1] in rows:
        line, way = rows[loc[1]]
        column = {"rate": f"{way} Min Mbps", "ceil": f"{way} Max Mbps"}.get(loc[2])
        if loc[2] == "match":
            column = IPV4
        if column is not None:
            return _err(line, column, err["msg"])
    return err
