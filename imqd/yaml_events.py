"""Build a YAML document's plain data straight from libyaml's event stream.

Why: PyYAML's loader first composes a node tree -- a Python ``ScalarNode`` with two ``Mark`` objects per
scalar, built by the C parser through Python calls -- and then constructs the data from that tree in Python.
For a 10,000-class file that is ~1 s, the largest part of ``imqd run``'s start.  libyaml delivers the same
document as events in ~0.1 s, and dicts, lists and scalars built from them directly take ~0.3 s in all.

Nothing about YAML's meaning is re-implemented here: each plain scalar is resolved and constructed by the
loader's own resolver and constructor (YAML 1.1 as PyYAML reads it: ``yes``/``no``, octal, ``1:30``...),
once per distinct text.  Anything beyond plain data -- anchors and aliases, explicit tags, merge keys, a
repeated key, several documents, a syntax error -- raises :class:`Unsupported` (or libyaml's own error), and
the caller loads the text the usual way, which gives the same data or the same error message.
"""

from __future__ import annotations

from typing import Any

from yaml.events import (
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import ScalarNode

__all__ = ["Unsupported", "load_plain"]

_STR = "tag:yaml.org,2002:str"
#: implicit tags whose values are immutable, so one constructed value can stand for every equal text
_SHAREABLE = frozenset(f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "timestamp"))
_COLLECTION_TAGS = (None, "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class Unsupported(Exception):
    """The document holds more than plain data; load it with the full loader."""


def load_plain(loader: Any) -> Any:
    """The data of the single document ``loader`` (a fresh PyYAML SafeLoader or CSafeLoader) reads; None for
    an empty stream.  Raises :class:`Unsupported` or a ``yaml.YAMLError`` when the full loader must speak."""
    get = loader.get_event
    if get().__class__ is not StreamStartEvent:
        raise Unsupported("no stream start")
    ev = get()
    if ev.__class__ is StreamEndEvent:
        return None
    if ev.__class__ is not DocumentStartEvent:
        raise Unsupported("no document start")
    data = _Builder(loader).value(get())
    if get().__class__ is not DocumentEndEvent or get().__class__ is not StreamEndEvent:
        raise Unsupported("not a single document")
    return data


class _Builder:
    __slots__ = ("get", "loader", "plain")

    def __init__(self, loader: Any) -> None:
        self.get = loader.get_event
        self.loader = loader
        self.plain: dict[str, Any] = {}  # plain scalar text -> its value (equal texts share one object)

    def value(self, ev: Any) -> Any:
        cls = ev.__class__
        if cls is ScalarEvent:
            return self.scalar(ev)
        if ev.anchor is not None or ev.tag not in _COLLECTION_TAGS:
            raise Unsupported("anchor or tag")
        if cls is MappingStartEvent:
            return self.mapping()
        if cls is SequenceStartEvent:
            return self.sequence()
        raise Unsupported(type(ev).__name__)  # an alias

    def scalar(self, ev: Any) -> Any:
        if ev.anchor is not None or ev.tag is not None:
            raise Unsupported("anchor or tag")
        text = ev.value
        if not ev.implicit[0]:  # quoted, or a block scalar: always a string
            return text
        try:
            return self.plain[text]
        except KeyError:
            pass
        loader = self.loader
        tag = loader.resolve(ScalarNode, text, (True, False))
        if tag == _STR:
            data = text
        elif tag in _SHAREABLE:
            data = loader.construct_object(ScalarNode(tag, text))
        else:  # a merge key ("<<") or another special
            raise Unsupported(tag)
        self.plain[text] = data
        return data

    def mapping(self) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        get, scalar, value = self.get, self.scalar, self.value
        while True:
            ev = get()
            cls = ev.__class__
            if cls is MappingEndEvent:
                return out
            key = scalar(ev) if cls is ScalarEvent else value(ev)
            if key in out:  # the full loader names the line of a repeated key
                raise Unsupported("repeated key")
            ev = get()
            out[key] = scalar(ev) if ev.__class__ is ScalarEvent else value(ev)

    def sequence(self) -> list[Any]:
        out: list[Any] = []
        get, scalar, value = self.get, self.scalar, self.value
        while True:
            ev = get()
            cls = ev.__class__
            if cls is SequenceEndEvent:
                return out
            out.append(scalar(ev) if cls is ScalarEvent else value(ev))
