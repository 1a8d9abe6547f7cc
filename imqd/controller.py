"""The control plane's single source of truth: validated config, on disk and in the workers.

Every change goes through one lock and one path: build the new Config
(validated -- a refused change raises ConfigError and changes nothing),
write it atomically to disk, then push it to every worker as one version.
The REST API and the CLI are thin layers over this class.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from imqd.config import Config, ConfigError, save_config_atomic
from imqd.stats_sampler import CounterSnapshot, LinkHistory
from imqd.stats_view import SnapshotCounters, StatsQuery, class_entries, select

# Every class needs a token slot in the workers' shared store (imqd.shared_tokens.DEFAULT_SLOTS
# is larger); refusing bigger trees here keeps a change from failing after it was saved.
MAX_CLASSES = 16384

log = logging.getLogger("imqd.controller")


class Workers(Protocol):
    """What the controller needs from the supervisor (a fake in API tests)."""

    enabled: bool

    def push_config(self, config: Config) -> float: ...

    def set_enabled(self, enabled: bool) -> float: ...

    def healthy(self) -> bool: ...

    def worker_stats(self) -> list[dict[str, Any]]: ...

    def counter_snapshot(self) -> CounterSnapshot: ...

    link_history: LinkHistory


class Controller:
    """Serialises changes: validate -> persist -> apply to all workers."""

    #: set by ``imqd run``: adds each class's ``matched`` and the ``warnings`` list to the stats (imqd.hook_checks)
    #: adds to each stats answer (``imqd run``: the no-match and placement warnings); given the answer and every
    #: class's counters (a mapping name -> counters), whatever classes the query selected
    stats_hook: Callable[[Config, dict[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None

    def __init__(self, config: Config, path: Path | None, workers: Workers,
                 on_change: Callable[[Config], None] | None = None) -> None:
        self.config = config
        self.path = path
        self.workers = workers
        #: called with each new config once the workers have it (``imqd run --apply-rules``: the rules follow
        #: the interfaces the classes name); a failure there is logged, the change itself stands
        self.on_change = on_change
        self._lock = threading.Lock()
        self.last_apply_s: float | None = None

    # -- changes -------------------------------------------------------------
    def _commit(self, new: Config) -> Config:
        if len(new.classes) > MAX_CLASSES:
            raise ConfigError([{"loc": ("classes",), "msg": f"at most {MAX_CLASSES} classes are supported"}])
        if self.path is not None:
            save_config_atomic(self.path, new)
        self.config = new
        self.last_apply_s = self.workers.push_config(new)
        if self.on_change is not None:
            try:
                self.on_change(new)
            except Exception as exc:  # noqa: BLE001 - the workers have the change; report, do not undo it
                log.error("after the change: %s", exc)
        return new

    def add_class(self, spec: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            new = self.config.with_class_added(spec)
            self._commit(new)
            return new.class_by_name(spec["name"]).model_dump(mode="json")

    def change_class(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            new = self.config.with_class_changed(name, patch)
            self._commit(new)
            return new.class_by_name(patch.get("name", name)).model_dump(mode="json")

    def delete_class(self, name: str) -> None:
        with self._lock:
            self._commit(self.config.with_class_removed(name))

    def set_enabled(self, enabled: bool) -> float:
        with self._lock:
            return self.workers.set_enabled(enabled)

    # -- views ---------------------------------------------------------------
    def get_class(self, name: str) -> dict[str, Any]:
        cls = self.config.class_by_name(name)
        if cls is None:
            raise ConfigError([{"loc": ("classes", name), "msg": f"no class named {name!r}"}], code="not_found")
        return cls.model_dump(mode="json")

    def list_classes(self) -> list[dict[str, Any]]:
        return [c.model_dump(mode="json") for c in self.config.classes]

    def stats(self, query: StatsQuery = StatsQuery()) -> dict[str, Any]:
        """Counters of the classes ``query`` selects (ConfigError naming a bad parameter), link totals
        per direction and the workers, all from the supervisor's latest sample."""
        snap = self.workers.counter_snapshot()
        classes = select(self.config, snap, query)
        out = {"enabled": self.workers.enabled, "time": round(snap.wall, 3), "directions": snap.directions,
               "classes": class_entries(classes, snap), "workers": self.workers.worker_stats(),
               "last_apply_seconds": self.last_apply_s}
        if self.stats_hook is not None:  # (it watches every class, whatever the query shows)
            out = self.stats_hook(self.config, out, SnapshotCounters(snap))
        return out
