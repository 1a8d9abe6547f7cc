"""The configuration as a YAML file: read it fast, write it readable, replace it atomically.

Reading uses libyaml (PyYAML's C parser) when it is there, and builds plain data
straight from its events (:mod:`imqd.yaml_events`: 10,000 classes in ~0.35 s
against ~1.1 s for PyYAML's C loader and ~5 s for its pure-Python one), with the
same checks: a duplicate key is an error, and every validation error names the
file and the line.  Lines are looked up only when there is an error
(the node tree is composed again then), so the common path builds no extra
objects.

The file imqd writes is the operator's YAML (tc units, protocol names); changes
made through the API reach it through the journal (:mod:`imqd.journal`), and
``load_config`` replays that journal, so every reader sees the same state.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel

from imqd.config_fields import PROTO_NAMES, U32
from imqd.units import format_rate, format_size, parse_time
from imqd.yaml_events import Unsupported, load_plain

if TYPE_CHECKING:
    from imqd.config import ClassSpec, Config

__all__ = ["load_config", "read_yaml", "yaml_lines", "dump_config", "dump_chunks", "data_chunks", "config_to_data",
           "class_to_data",
           "save_config_atomic", "write_temp", "install", "fsync_dir", "format_time"]

HEADER = "# imqd configuration (rewritten by imqd: comments are not kept)\n"
DUMP_CHUNK = 1000  # classes per yaml.dump call: the C emitter holds the GIL for one call (~40 ms per chunk)

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Loader(_Base):  # type: ignore[misc,valid-type]
    """Safe loading that refuses duplicate keys (a repeated ``rate:`` is a typo, not an override).

    Plain scalars repeat a lot in a config (keys, directions, rates): their implicit tag (int, bool, str...)
    depends only on the text, so it is resolved once per distinct text.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[str, str] = {}

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = self._tags.get(value)
            if tag is None:
                tag = self._tags[value] = super().resolve(kind, value, implicit)
            return tag
        return super().resolve(kind, value, implicit)

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


class YamlError(ValueError):
    """Text that is no YAML document; ``line`` is 1-based (None: unknown)."""

    def __init__(self, msg: str, line: int | None) -> None:
        super().__init__(msg)
        self.msg, self.line = msg, line


def read_yaml(text: str) -> Any:
    """The data of a YAML document (None when empty); raises YamlError.

    Plain data (what a config is) is built from libyaml's events (:mod:`imqd.yaml_events`, ~3x faster);
    anything else, and every error, goes through the full loader, which says what and where."""
    loader = _Loader(text)
    try:
        return load_plain(loader)
    except (Unsupported, yaml.YAMLError, TypeError):  # TypeError: an unhashable key (a list as a key)
        pass
    finally:
        loader.dispose()
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise YamlError(f"YAML syntax error: {problem}", mark.line + 1 if mark is not None else None) from None
    finally:
        loader.dispose()


def yaml_lines(text: str, errors: list[dict[str, Any]]) -> None:
    """Add the ``line`` each error's ``loc`` points at in ``text`` (parsed again: errors are rare)."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError:
        return
    finally:
        loader.dispose()
    for err in errors:
        err["line"] = _line_of(root, err["loc"])


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
    """Read and validate a YAML config, with the changes its journal holds (``PATH.journal``, written by
    ``imqd run``) replayed.  Every problem -> ``ConfigError`` naming the file and line."""
    from imqd.journal import ConfigStore

    return ConfigStore(path).load(missing_ok=missing_ok)


# --- writing -------------------------------------------------------------------------------------


_RATE_FIELDS = frozenset(("rate", "ceil"))
_SIZE_FIELDS = frozenset(("burst", "cburst", "quantum", "limit_bytes"))
_TIME_FIELDS = frozenset(("delay", "jitter", "target", "interval", "idle_timeout"))


def class_to_data(c: ClassSpec) -> dict[str, Any]:
    """The readable form of a class that ``dump_config`` writes (tc strings, names), None fields omitted."""
    out = _readable(c)
    if not out.get("reorder", True):
        del out["reorder"]
    return out


def format_time(seconds: float) -> str:
    """Readable seconds that parse_time reads back exactly (ms when whole, else s)."""
    for unit, scale in (("s", 1), ("ms", 1000), ("us", 1_000_000)):
        v = round(seconds * scale, 6)
        if v == int(v) and parse_time(f"{int(v)}{unit}") == seconds:
            return f"{int(v)}{unit}"
    return repr(seconds)


def _readable(m: BaseModel) -> dict[str, Any]:
    """A model's set fields as an operator writes them: tc rates, sizes and times, protocol names, port ranges,
    marks in hex; the match and leaf options likewise."""
    out: dict[str, Any] = {}
    for field in type(m).model_fields:
        v = getattr(m, field)
        if v is None:
            continue
        if field in _RATE_FIELDS:
            v = format_rate(v) if v else 0  # a per-host rate of 0 means "an equal share"
        elif field in _SIZE_FIELDS:
            v = format_size(v)
        elif field in _TIME_FIELDS:
            v = format_time(v)
        elif field in ("match", "qdisc", "per_host"):
            v = _readable(v)
        elif field == "proto":
            v = PROTO_NAMES.get(v, v)
        elif field in ("sport", "dport"):
            v = v[0] if v[0] == v[1] else f"{v[0]}-{v[1]}"
        elif field == "mark":
            v = f"{v[0]:#x}" if v[1] == U32 else f"{v[0]:#x}/{v[1]:#x}"
        elif isinstance(v, tuple):  # several addresses
            v = list(v)
        out[field] = v
    return out


def config_to_data(cfg: Config) -> dict[str, Any]:
    """The configuration as the plain data its YAML file holds."""
    return {"overhead": cfg.overhead, "classes": [class_to_data(c) for c in cfg.classes]}


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def dump_chunks(cfg: Config) -> Iterator[str]:
    """The YAML text of ``cfg`` in pieces of DUMP_CHUNK classes: a background writer lets other threads run
    between them (the C emitter keeps the GIL for a whole call)."""
    return data_chunks(config_to_data(cfg))


def data_chunks(data: dict[str, Any]) -> Iterator[str]:
    """``dump_chunks`` of the data ``config_to_data`` made (``read_yaml`` of the text gives ``data`` back)."""
    yield HEADER + _dump({"overhead": data["overhead"]})
    classes = data["classes"]
    if not classes:
        yield "classes: []\n"
        return
    yield "classes:\n"
    for i in range(0, len(classes), DUMP_CHUNK):
        yield _dump(classes[i: i + DUMP_CHUNK])


def dump_config(cfg: Config) -> str:
    """YAML text of ``cfg`` with tc-style rates/sizes; ``load_config`` of it gives ``cfg`` back."""
    return "".join(dump_chunks(cfg))


def fsync_dir(directory: str) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_temp(target: str, chunks: Any) -> str:
    """Write ``chunks`` (str pieces) to a new 0600 file next to ``target`` and fsync it; return its path."""
    directory = os.path.dirname(target) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def install(tmp: str, target: str, keep_backup: bool = True) -> None:
    """Rename ``tmp`` over ``target`` (the old file kept as ``TARGET.bak``) and make the rename durable."""
    try:
        if keep_backup and os.path.exists(target):
            tmp_bak = tmp + ".bak"
            try:
                os.link(target, tmp_bak)  # cheap and atomic: .bak becomes the old inode
            except OSError:
                shutil.copy2(target, tmp_bak)
            try:
                os.replace(tmp_bak, target + ".bak")
            except BaseException:
                _unlink(tmp_bak)
                raise
        os.replace(tmp, target)
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(os.path.dirname(target) or ".")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def save_config_atomic(path: str | os.PathLike[str], cfg: Config) -> None:
    """Replace ``path`` with ``cfg`` so a crash leaves the old or the new file, never half of one.

    The new file is written to a 0600 temporary file in the same directory and
    fsynced; the previous file is kept as ``PATH.bak``; ``os.replace`` swaps the
    new one in and the directory is fsynced so the rename itself is durable.
    A symlinked ``path`` is followed, so the link stays in place.
    """
    target = os.path.realpath(os.fspath(path))
    install(write_temp(target, dump_chunks(cfg)), target)


def read_bytes(path: str) -> bytes | None:
    """The file's bytes, None when it does not exist."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
