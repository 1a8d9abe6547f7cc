"""Serving the API and the dashboard for browser tests: a real uvicorn on loopback, a real browser.

``LiveFakeWorkers`` is the ``Workers`` protocol without processes whose counters move like traffic: every
``counter_snapshot()`` after SAMPLE_INTERVAL_S is a new sample (so the stream sends events), each class at
its configured ``rate`` scaled by ``load``.  ``browser()`` launches Debian's chromium through Playwright
(its own browser download is not reachable here), or says why it cannot.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imqd.config import Config
from imqd.shared_counters import FIELD, FIELDS_PER_COUNTER_SLOT
from imqd.stats_sampler import SAMPLE_INTERVAL_S, CounterSnapshot, LinkHistory, TreeIndex, build_snapshot

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if CHROMIUM is None:
        return "chromium is not installed (Debian package chromium; scripts/bootstrap.sh installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -e '.[test]')"
    return None


class LiveFakeWorkers:
    """Workers whose every class sends at ``load`` x its configured rate (bit/s)."""

    def __init__(self, config: Config, load: float = 0.5) -> None:
        self.enabled = True
        self.config = config
        self.load = load
        self.pushes = 0
        self.link_history = LinkHistory()
        self._lock = threading.Lock()
        self._slots: dict[str, int] = {}
        self._bytes: dict[str, float] = {}
        self._snap: CounterSnapshot | None = None
        self._t0 = time.monotonic()

    def push_config(self, config: Config) -> float:
        with self._lock:
            self.config = config
            self.pushes += 1
        return 0.0012

    def push_delta(self, delta: Any, config: Config) -> float:
        return self.push_config(config)

    def set_enabled(self, enabled: bool) -> float:
        self.enabled = enabled
        return 0.0004

    def healthy(self) -> bool:
        return True

    def worker_stats(self) -> list[dict[str, Any]]:
        return [{"queue": q, "cpu": q, "pid": 4000 + q, "alive": True, "ready": True, "restarts": 0,
                 "packets": 1000 * (q + 1), "verdicts": 1000, "drops": q, "malformed": 0, "held": 3 * q,
                 "packets_per_second": 1200.0 * (q + 1), "cpu_percent": 20.0 + 10 * q} for q in range(2)]

    def counter_snapshot(self) -> CounterSnapshot:
        now = time.monotonic()
        with self._lock:
            if self._snap is not None and now - self._snap.time < SAMPLE_INTERVAL_S:
                return self._snap
            config = self.config
            for c in config.classes:
                self._slots.setdefault(c.name, len(self._slots))
            tree = TreeIndex.of(config, {c.name: self._slots[c.name] for c in config.classes})
            dt = now - (self._snap.time if self._snap is not None else self._t0)
            totals = [0] * (tree.rows * FIELDS_PER_COUNTER_SLOT)
            rates = array("d", bytes(8 * tree.rows))
            for c in config.classes:
                slot = tree.slots[c.name]
                per_s = 0.0 if config.children(c.name) else c.rate * self.load / 8 * (1 + (slot % 7) / 10)
                self._bytes[c.name] = self._bytes.get(c.name, 0.0) + per_s * dt
                totals[slot * FIELDS_PER_COUNTER_SLOT + FIELD["bytes"]] = int(self._bytes[c.name])
                totals[slot * FIELDS_PER_COUNTER_SLOT + FIELD["packets"]] = int(self._bytes[c.name] / 1500)
                rates[slot] = per_s
            for child, parent in tree.child_parent:  # an inner class sends what its children send
                rates[parent] += rates[child]
            perhost = [{"kind": "perhost", "top_hosts": [{"host": f"198.18.0.{i}", "rate": 1e6 * i,
                                                          "backlog_packets": i} for i in range(1, 4)]}]
            leaves = {c.name: perhost for c in config.classes if c.per_host is not None}
            self._snap = build_snapshot(tree, totals, rates, now, time.time(), leaves)
            self.link_history.add(self._snap)
            return self._snap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` on a loopback port in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def browser() -> Iterator[Any]:
    """A headless chromium (Debian's), driven by Playwright."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM is not None and shutil.which(CHROMIUM)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()
