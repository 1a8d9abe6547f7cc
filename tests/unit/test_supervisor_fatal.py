"""A worker that cannot run: reported once, by start() while starting, by the log afterwards.

CI saw ``imqd run`` print the bind error twice (the monitor's log line and start()'s) when
the worker's exit and its message arrived together; the operator must get exactly one line.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Iterator

import pytest

from imqd.config import parse_config
from imqd.supervisor import EXIT_FATAL, Supervisor


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor([3], parse_config({"classes": []}), cpus=[])
    try:
        yield sup
    finally:
        sup.store.close()
        sup.counters.close()


def exited(sup: Supervisor, code: int, fatal: str | None) -> None:
    w = sup.workers[3]
    w.process = SimpleNamespace(exitcode=code, is_alive=lambda: False)
    w.fatal = fatal
    sup._on_exit(w)


def test_fatal_exit_while_starting_is_left_to_start(supervisor: Supervisor, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="imqd"):
        exited(supervisor, EXIT_FATAL, "queue 3: already bound by another process")
    assert caplog.records == [], "start() raises this as the one line; the monitor must not log it too"
    w = supervisor.workers[3]
    assert w.fatal == "queue 3: already bound by another process"
    assert w.restart_at == float("inf"), "a worker that cannot run is not restarted"


def test_fatal_exit_code_without_message_still_ends_start(supervisor: Supervisor) -> None:
    exited(supervisor, EXIT_FATAL, None)
    assert supervisor.workers[3].fatal is not None, "start() waits for w.fatal; without it, it would wait 20 s"
    assert "queue 3" in supervisor.workers[3].fatal


def test_fatal_exit_after_start_is_logged(supervisor: Supervisor, caplog: pytest.LogCaptureFixture) -> None:
    supervisor._started = True
    with caplog.at_level(logging.ERROR, logger="imqd"):
        exited(supervisor, EXIT_FATAL, "queue 3: cannot bind NFQUEUE")
    assert [r.getMessage() for r in caplog.records] == [
        "worker for queue 3 cannot run: queue 3: cannot bind NFQUEUE"]
