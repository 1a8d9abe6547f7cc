"""The control plane's single source of truth: validated config, on disk and in the workers.

Every change goes through one lock and one path: build the new Config
(validated -- a refused change raises ConfigError and changes nothing, in
memory or on disk), record it durably in the config's journal
(:mod:`imqd.journal`; a failure there also changes nothing), then push it to
every worker as one version -- a :class:`~imqd.config_delta.ConfigDelta` of what
changed, not the whole configuration.  A change that changes nothing (a PATCH
to the same value, a bulk replace with the same set) records and sends nothing.
The REST API and the CLI are thin layers over this class.

A background thread writes the journal's changes into the YAML file
(compaction) when the journal grows, after IDLE_COMPACT_S without changes, and
at ``close()``; a change meanwhile waits only for the quick switch-over.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson

from imqd.config import MAX_CLASSES, Config, ConfigDelta, ConfigError, parse_config
from imqd.gcpause import paused
from imqd.journal import ConfigStore
from imqd.json_body import dumps_ascii
from imqd.stats_sampler import CounterSnapshot, LinkHistory
from imqd.stats_view import SnapshotCounters, StatsQuery, class_entries_json, select

__all__ = ["Controller", "Workers", "MAX_CLASSES", "IDLE_COMPACT_S"]

IDLE_COMPACT_S = 2.0  # the YAML file catches up with the journal this long after the last change

log = logging.getLogger("imqd.controller")


class Workers(Protocol):
    """What the controller needs from the supervisor (a fake in API tests)."""

    enabled: bool

    def push_config(self, config: Config) -> float: ...

    def push_delta(self, delta: ConfigDelta, config: Config) -> float: ...

    def set_enabled(self, enabled: bool) -> float: ...

    def healthy(self) -> bool: ...

    def worker_stats(self) -> list[dict[str, Any]]: ...

    def counter_snapshot(self) -> CounterSnapshot: ...

    link_history: LinkHistory


class StatsHook(Protocol):
    """Adds to each stats answer (``imqd run``'s :class:`~imqd.run_checks.RunChecks`: the no-match and placement
    warnings); given the answer and every class's counters (a mapping name -> counters), whatever classes the
    query selected; ``matched``: per class, the packets classified into it, written into each class's entry."""

    def __call__(self, config: Config, stats: dict[str, Any], counters: Mapping[str, Any]) -> dict[str, Any]: ...

    @property
    def matched(self) -> Mapping[str, int]: ...


class Controller:
    """Serialises changes: validate -> record -> apply to all workers."""

    stats_hook: StatsHook | None = None

    def __init__(self, config: Config, path: Path | None, workers: Workers,
                 on_change: Callable[[Config], None] | None = None, store: ConfigStore | None = None) -> None:
        self.config = config
        self.path = path
        if store is not None:  # the store ``config`` was loaded from (it may remember the parsed file)
            self.store = store
        self.workers = workers
        #: called with each new config once the workers have it, unless the change only re-tuned classes
        #: (``ConfigDelta.only_tunes``) (``imqd run --apply-rules``: the rules and address sets follow what the
        #: classes match); a failure there is logged, the change itself stands
        self.on_change = on_change
        self._lock = threading.Lock()
        self.last_apply_s: float | None = None
        self._calls = threading.local()  # per API thread: what its last change call applied
        self._last_change = 0.0
        self._wake = threading.Event()
        self._closing = False
        self._compactor: threading.Thread | None = None
        if self.store is not None and (self.store.pending() or self.store.parsed):
            self._start_compactor()  # changes from before a crash into the file; the parsed file remembered

    @property
    def path(self) -> Path | None:
        """The YAML file changes are persisted to (None: not persisted)."""
        return self._path

    @path.setter
    def path(self, path: Path | None) -> None:
        self._path = path
        self.store = ConfigStore(path) if path is not None else None

    # -- changes -------------------------------------------------------------
    @property
    def applied_seconds(self) -> float | None:
        """Seconds until every worker had the change the calling thread's last change call made; None when
        that call changed nothing (the response then has no X-Imqd-Apply-Seconds)."""
        return getattr(self._calls, "applied", None)

    def _commit(self, new: Config, delta: ConfigDelta, counts: dict[str, int] | None = None) -> dict[str, int]:
        """Record and apply one validated change; what it added, changed and removed (``counts``: that, when the
        caller has it already -- 40 ms for a 20,000-class import)."""
        if counts is None:
            counts = delta.counts(self.config)
        self._calls.applied = None
        if delta.empty:
            return counts
        if self.store is not None:  # OSError: nothing recorded, nothing changed
            if not self.store.exists() and not self.store.pending():
                self.store.open()
                self.store.compact(new, self.store.seq)  # the first change creates the file
            else:
                self.store.record(delta)
        old, self.config = self.config, new
        self.last_apply_s = self._calls.applied = self.workers.push_delta(delta, new)
        if self.on_change is not None and not delta.only_tunes(old):  # a plan change leaves the rules be
            try:
                self.on_change(new)
            except Exception as exc:  # noqa: BLE001 - the workers have the change; report, do not undo it
                log.error("after the change: %s", exc)
        self._last_change = time.monotonic()
        if self.store is not None:
            self._start_compactor()
            if self.store.needs_compaction():
                self._wake.set()
        return counts

    def add_class(self, spec: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            new = self.config.with_class_added(spec)
            added = new.class_by_name(spec["name"])
            self._commit(new, ConfigDelta(upserted=(added,)))
            return added.model_dump(mode="json")

    def change_class(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            new = self.config.with_class_changed(name, patch)
            changed = new.class_by_name(name)
            self._calls.applied = None
            if new is not self.config:
                self._commit(new, ConfigDelta(upserted=(changed,)))
            return changed.model_dump(mode="json")

    def delete_class(self, name: str) -> None:
        with self._lock:
            self._commit(self.config.with_class_removed(name), ConfigDelta(removed=(name,)))

    def replace_classes(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Make the class set exactly ``body["classes"]`` (and ``body["overhead"]``, if given) in one version.

        Validated as a whole; only the difference is recorded and sent, so unchanged classes keep their
        queues and token state.  The same set again changes nothing, not even the file."""
        if not isinstance(body, Mapping):
            raise ConfigError.one((), f"the body must be an object with 'classes', not {type(body).__name__}")
        unknown = set(body) - {"classes", "overhead"}
        if unknown:
            raise ConfigError([{"loc": (k,), "msg": "unknown field (a typo?)"} for k in sorted(unknown)])
        if "classes" not in body:
            raise ConfigError.one(("classes",), "required: the complete list of classes")
        with self._lock, paused():
            new = parse_config({"overhead": body.get("overhead", self.config.overhead), "classes": body["classes"]})
            return self._summary(new)

    def import_subscribers(self, text: str, *, prefix: str | None = None, parent: str | None = None,
                           dry_run: bool = False) -> dict[str, Any]:
        """Replace the imported classes (names starting with ``prefix``) with the circuits of a LibreQoS
        ShapedDevices.csv ``text`` (:mod:`imqd.subscribers`), as one change; ``dry_run``: only say what would
        change."""
        from imqd.subscribers import DEFAULT_PREFIX, imported_config, read_circuits

        with paused():  # 20,000 classes and more are built, none garbage before the end (imqd.gcpause)
            circuits = read_circuits(text)  # every bad row, before the lock: nothing depends on the config yet
            with self._lock:
                new = imported_config(self.config, circuits, prefix=prefix or DEFAULT_PREFIX, parent=parent)
                summary = self._summary(new, dry_run=dry_run)
        devices = sum(c.devices for c in circuits)
        return {"circuits": len(circuits), "devices": devices, **summary}

    def _summary(self, new: Config, dry_run: bool = False) -> dict[str, Any]:
        delta = self.config.diff(new)
        counts = delta.counts(self.config)
        unchanged = len(new.classes) - counts["added"] - counts["changed"]
        seconds = None
        if not dry_run and not delta.empty:
            self._commit(new, delta, counts)
            seconds = self.applied_seconds
        return {**counts, "unchanged": unchanged, "applied": not dry_run and not delta.empty,
                "apply_seconds": seconds}

    def set_enabled(self, enabled: bool) -> float:
        with self._lock:
            return self.workers.set_enabled(enabled)

    # -- the YAML file catching up with the journal ---------------------------------------------
    def _start_compactor(self) -> None:
        if self._compactor is None and not self._closing:
            self._compactor = threading.Thread(target=self._compact_loop, name="imqd-compact", daemon=True)
            self._compactor.start()

    def _compact_loop(self) -> None:
        assert self.store is not None
        while not self._closing:
            self._wake.wait(IDLE_COMPACT_S)
            self._wake.clear()
            if self.store.parsed and not self._closing:
                try:
                    self.store.remember_parse(self._lock)
                except OSError as exc:
                    log.warning("could not keep the parsed %s in its journal (the next start parses it "
                                "again): %s", self.path, exc)
            if self._closing or not self.store.pending():
                continue
            if not self.store.needs_compaction() and time.monotonic() - self._last_change < IDLE_COMPACT_S:
                continue
            try:
                self.compact()
            except Exception as exc:  # noqa: BLE001 - the journal still holds everything: retry later
                log.error("writing %s failed (the changes stay in its journal): %s", self.path, exc)

    def compact(self) -> None:
        """Write the current configuration into the YAML file; the journal keeps only later changes."""
        if self.store is None:
            return
        with self._lock:
            self.store.open()
            snapshot, seq = self.config, self.store.seq
        self.store.compact(snapshot, seq, self._lock)

    def close(self) -> None:
        """Stop the background writer and bring the YAML file up to date (at shutdown)."""
        self._closing = True
        self._wake.set()
        if self._compactor is not None:
            self._compactor.join(10.0)
        if self.store is not None:
            if self.store.records:
                try:
                    self.compact()
                except OSError as exc:
                    log.error("writing %s failed (the changes stay in its journal): %s", self.path, exc)
            self.store.close()

    # -- views ---------------------------------------------------------------
    def get_class(self, name: str) -> dict[str, Any]:
        cls = self.config.class_by_name(name)
        if cls is None:
            raise ConfigError([{"loc": ("classes", name), "msg": f"no class named {name!r}"}], code="not_found")
        return cls.model_dump(mode="json")

    def list_classes(self) -> list[dict[str, Any]]:
        return [c.model_dump(mode="json") for c in self.config.classes]

    def stats_json(self, query: StatsQuery = StatsQuery()) -> bytes:
        """``GET /stats``: counters of the classes ``query`` selects (ConfigError naming a bad parameter), link
        totals per direction and the workers, all from the supervisor's latest sample, as JSON.  The classes'
        part is written a piece at a time (:func:`~imqd.stats_view.class_entries_json`)."""
        snap = self.workers.counter_snapshot()
        classes = select(self.config, snap, query)
        out: dict[str, Any] = {"enabled": self.workers.enabled, "time": round(snap.wall, 3),
                               "directions": snap.directions, "classes": {},
                               "workers": self.workers.worker_stats(), "last_apply_seconds": self.last_apply_s}
        matched = None
        if self.stats_hook is not None:  # (it watches every class, whatever the query shows)
            out = self.stats_hook(self.config, out, SnapshotCounters(snap))
            matched = self.stats_hook.matched
        entries = class_entries_json(classes, snap, matched)
        out["classes"] = orjson.Fragment(entries)
        try:
            return orjson.dumps(out)
        except orjson.JSONEncodeError:  # a lone surrogate (see imqd.json_body): the slow way, whole
            out["classes"] = json.loads(entries)
            return dumps_ascii(out)
