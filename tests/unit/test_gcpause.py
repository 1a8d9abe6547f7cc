"""imqd.gcpause: the collector is off inside every pause and back as it was once the last one ends."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from imqd.gcpause import paused


@pytest.fixture(autouse=True)
def collector_as_it_was() -> Iterator[None]:
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_a_pause_switches_the_collector_off_and_back_on() -> None:
    gc.enable()
    with paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_nested_and_overlapping_pauses_end_with_the_last_one() -> None:
    gc.enable()
    started, may_end = threading.Event(), threading.Event()

    def other_thread() -> None:
        with paused():
            started.set()
            may_end.wait(5)

    t = threading.Thread(target=other_thread)
    with paused():
        with paused():
            pass
        assert not gc.isenabled(), "a nested pause ending does not end the outer one"
        t.start()
        assert started.wait(5)
    assert not gc.isenabled(), "another thread's pause is still on"
    may_end.set()
    t.join(5)
    assert gc.isenabled()


def test_a_collector_switched_off_before_stays_off() -> None:
    gc.disable()
    with paused():
        pass
    assert not gc.isenabled()


def test_an_exception_inside_still_ends_the_pause() -> None:
    gc.enable()
    with pytest.raises(RuntimeError):
        with paused():
            raise RuntimeError("boom")
    assert gc.isenabled()
