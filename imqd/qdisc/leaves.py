"""Which qdisc sits under each HTB leaf class, described by value.

A :class:`LeafSpec` is hashable and comparable, so ``HTB.change`` can tell
"same leaf, keep it" from "new parameters" from "new kind" with ``==``.
Leaf kinds live in an open registry: other modules call :func:`register_leaf`
for theirs (fq_codel, sfq, per-host, delay ...).  ``fifo`` and ``tbf`` are
registered here.

A leaf qdisc implements :class:`imqd.qdisc.base.Qdisc`; it may also offer
``change(spec) -> list[QueuedPacket]`` (apply new parameters in place, return
what it dropped), ``stats() -> dict``, a class attribute
``work_conserving = True`` (non-empty always dequeues: HTB then skips ``peek``)
and ``take_dropped() -> list[QueuedPacket]`` (packets it dropped inside
``dequeue``, e.g. CoDel; HTB collects them so nothing is lost silently).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from imqd.qdisc.base import Qdisc, QueuedPacket
from imqd.qdisc.fifo import Fifo
from imqd.qdisc.tbf import Tbf

_MISSING = object()


@dataclass(frozen=True)
class LeafSpec:
    """A leaf kind plus its parameters as a key-sorted tuple of ``(key, value)`` pairs."""

    kind: str = "fifo"
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"leaf: kind must be a non-empty string, got {self.kind!r}")
        raw: Iterable[Any] = self.params.items() if isinstance(self.params, Mapping) else self.params
        try:
            pairs = [(k, v) for k, v in raw]
        except (TypeError, ValueError):
            raise ValueError(f"leaf {self.kind}: params must be (key, value) pairs, got {self.params!r}") from None
        for k, _ in pairs:
            if not isinstance(k, str):
                raise ValueError(f"leaf {self.kind}: parameter names must be strings, got {k!r}")
        pairs.sort(key=lambda kv: kv[0])
        for (a, _), (b, _) in zip(pairs, pairs[1:]):
            if a == b:
                raise ValueError(f"leaf {self.kind}: parameter {a!r} given twice")
        object.__setattr__(self, "params", tuple(pairs))

    @classmethod
    def of(cls, kind: str = "fifo", **params: Any) -> "LeafSpec":
        """Convenience constructor: ``LeafSpec.of("fifo", limit_packets=100)``."""
        return cls(kind, tuple(params.items()))

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.params:
            if k == key:
                return v
        return default

    def as_dict(self) -> dict[str, Any]:
        return dict(self.params)


LeafFactory = Callable[[LeafSpec], Qdisc]
LeafChanger = Callable[[Any, LeafSpec], "list[QueuedPacket]"]

_FACTORIES: dict[str, LeafFactory] = {}
_CHANGERS: dict[str, LeafChanger] = {}

# Kinds whose module registers them on import.  Imported on first use, so a
# config naming them works without every caller importing every leaf module
# (and the modules may import this one without a cycle).
_LAZY_MODULES: dict[str, str] = {
    "fq_codel": "imqd.qdisc.fq_codel",
    "sfq": "imqd.qdisc.sfq",
    "perhost": "imqd.qdisc.perhost",
    "delay": "imqd.qdisc.netem",
}


def register_leaf(kind: str, factory: LeafFactory, changer: LeafChanger | None = None, *, replace: bool = False) -> None:
    """Make ``kind`` available to :func:`make_leaf`.

    ``factory(spec)`` builds the qdisc and raises ``ValueError`` for bad
    parameters.  ``changer(qdisc, spec)`` (optional) applies new parameters of
    the same kind in place and returns the dropped packets; without it, a
    qdisc's own ``change(spec)`` is used if it has one, else the HTB builds a
    new leaf and moves the packets over.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"register_leaf: kind must be a non-empty string, got {kind!r}")
    if kind in _FACTORIES and not replace:
        raise ValueError(f"register_leaf: leaf kind {kind!r} is already registered")
    _FACTORIES[kind] = factory
    if changer is None:
        _CHANGERS.pop(kind, None)
    else:
        _CHANGERS[kind] = changer


def leaf_kinds() -> list[str]:
    """Every kind :func:`make_leaf` accepts (registered, or registered by a module loaded on demand)."""
    return sorted(set(_FACTORIES) | set(_LAZY_MODULES))


def _factory(kind: str) -> LeafFactory | None:
    factory = _FACTORIES.get(kind)
    if factory is None and kind in _LAZY_MODULES:
        try:
            importlib.import_module(_LAZY_MODULES[kind])
        except ImportError:
            return None
        factory = _FACTORIES.get(kind)
    return factory


def make_leaf(spec: LeafSpec) -> Qdisc:
    """Build the qdisc ``spec`` describes; ``ValueError`` names the kind and the bad parameter."""
    if not isinstance(spec, LeafSpec):
        raise ValueError(f"leaf: expected a LeafSpec, got {spec!r}")
    factory = _factory(spec.kind)
    if factory is None:
        raise ValueError(f"leaf: unknown kind {spec.kind!r} (known: {', '.join(leaf_kinds())})")
    try:
        return factory(spec)
    except TypeError as exc:  # a factory fed a wrongly typed value
        raise ValueError(f"leaf {spec.kind}: bad parameters {spec.as_dict()!r}: {exc}") from None


def change_leaf(qdisc: Any, spec: LeafSpec) -> list[QueuedPacket] | None:
    """Apply ``spec`` (same kind) to ``qdisc`` in place; ``None`` if it cannot be changed in place."""
    changer = _CHANGERS.get(spec.kind)
    if changer is not None:
        return changer(qdisc, spec)
    change = getattr(qdisc, "change", None)
    if change is None:
        return None
    return change(spec)


def check_params(spec: LeafSpec, allowed: Iterable[str]) -> dict[str, Any]:
    """Parameters of ``spec`` as a dict, refusing names not in ``allowed`` (for factories)."""
    allowed = set(allowed)
    params = spec.as_dict()
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"leaf {spec.kind}: unknown parameter {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return params


# -- built-in kinds -----------------------------------------------------------------

_FIFO_PARAMS = ("limit_packets", "limit_bytes")
_TBF_PARAMS = ("rate", "burst", "limit_packets", "limit_bytes")


def _fifo_args(spec: LeafSpec) -> tuple[int, int | None]:
    p = check_params(spec, _FIFO_PARAMS)
    return p.get("limit_packets", 1000), p.get("limit_bytes")


@functools.lru_cache(maxsize=1024)
def _fifo_args_of(spec: LeafSpec) -> tuple[int, int | None]:
    """:func:`_fifo_args`, remembered per spec: HTB builds an idle leaf's FIFO again on its next packet, and
    checking the parameters each time cost ~5% of a worker's time with 1,000 subscribers all backlogged."""
    return _fifo_args(spec)


def _make_fifo(spec: LeafSpec) -> Fifo:
    try:
        args = _fifo_args_of(spec)
    except TypeError:  # a parameter value that cannot be hashed: check it uncached (and report it as before)
        args = _fifo_args(spec)
    return Fifo(*args)


def _change_fifo(q: Fifo, spec: LeafSpec) -> list[QueuedPacket]:
    return q.change(*_fifo_args(spec))


def _tbf_args(spec: LeafSpec) -> dict[str, Any]:
    p = check_params(spec, _TBF_PARAMS)
    for need in ("rate", "burst"):
        if need not in p:
            raise ValueError(f"leaf tbf: parameter {need!r} is required")
    return p


def _make_tbf(spec: LeafSpec) -> Tbf:
    return Tbf(**_tbf_args(spec))


def _change_tbf(q: Tbf, spec: LeafSpec) -> list[QueuedPacket]:
    return q.change(**_tbf_args(spec))


register_leaf("fifo", _make_fifo, _change_fifo)
register_leaf("tbf", _make_tbf, _change_tbf)
