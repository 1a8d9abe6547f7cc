"""imqd.realtime: the --realtime flag's checks and the worker's switch to SCHED_FIFO."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imqd import realtime
from imqd.realtime import RealtimeError, check_priority, check_throttled, scheduling, set_realtime


@pytest.mark.parametrize("value", [0, 1, 50, 99])
def test_off_and_every_fifo_priority_are_accepted(value: int) -> None:
    assert check_priority(value) == value


@pytest.mark.parametrize("value", [-1, 100, 1000])
def test_out_of_range_priority_names_the_flag_and_the_range(value: int) -> None:
    with pytest.raises(RealtimeError, match=rf"--realtime {value}: must be 0 \(off\) or .* between 1 and 99"):
        check_priority(value)


def test_refused_when_the_kernel_does_not_throttle_real_time_tasks(tmp_path: Path) -> None:
    knob = tmp_path / "sched_rt_runtime_us"
    knob.write_text("-1\n")
    with pytest.raises(RealtimeError, match="throttling off"):
        check_throttled(str(knob))
    knob.write_text("950000\n")
    check_throttled(str(knob))
    check_throttled(str(tmp_path / "missing"))  # no knob: nothing to check


def test_zero_leaves_the_process_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object) -> None:
        raise AssertionError("must not be called for 0")

    monkeypatch.setattr(os, "sched_setscheduler", boom)
    set_realtime(0)


def test_a_refused_switch_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with pytest.raises(RealtimeError, match=r"--realtime 10: not permitted .*CAP_SYS_NICE"):
        set_realtime(10)


def test_the_switch_asks_for_sched_fifo_at_the_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(os, "sched_setscheduler", lambda pid, policy, param: calls.append((pid, policy, param)))
    set_realtime(7)
    assert [(pid, policy, param.sched_priority) for pid, policy, param in calls] == [(0, os.SCHED_FIFO, 7)]


def test_scheduling_reports_this_process_as_normal_and_a_fifo_one_with_its_priority(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert scheduling() == "normal"  # the test runner is not real-time
    monkeypatch.setattr(os, "sched_getscheduler", lambda pid: os.SCHED_FIFO)
    monkeypatch.setattr(os, "sched_getparam", lambda pid: os.sched_param(12))
    assert scheduling() == "fifo:12"
    assert realtime.MAX_PRIORITY == 99


def test_cli_takes_the_flag_over_the_environment_and_names_the_source_of_a_bad_value(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from imqd.cli import CliError, realtime_arg

    monkeypatch.setattr(realtime, "RT_RUNTIME", "/nonexistent/sched_rt_runtime_us")  # nothing to check
    assert realtime_arg(None, None) == 0 and realtime_arg(None, "") == 0, "no flag, no env: normal scheduling"
    assert realtime_arg(10, "20") == 10 and realtime_arg(None, "20") == 20
    with pytest.raises(CliError, match=r"IMQD_REALTIME='fast': not a whole number"):
        realtime_arg(None, "fast")
    with pytest.raises(CliError, match=r"IMQD_REALTIME=120: must be 0 \(off\)"):
        realtime_arg(None, "120")
    with pytest.raises(CliError, match=r"--realtime -3: must be 0 \(off\)"):
        realtime_arg(-3, None)


def test_cli_refuses_a_priority_when_throttling_is_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from imqd.cli import CliError, realtime_arg

    knob = tmp_path / "rt"
    knob.write_text("-1")
    monkeypatch.setattr(realtime, "RT_RUNTIME", str(knob))
    with pytest.raises(CliError, match="IMQD_REALTIME: .* is -1"):
        realtime_arg(None, "5")
    assert realtime_arg(0, "5") == 0, "0 is off: nothing to check"
