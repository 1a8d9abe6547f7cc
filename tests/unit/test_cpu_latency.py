"""The --cpu-latency request: what it writes, and that bad values and missing devices are one clear line."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from imqd.cli import CliError, cpu_latency_arg
from imqd.cpu_latency import MAX_US, CpuLatencyError, CpuLatencyRequest


def test_writes_the_limit_as_a_native_s32_and_holds_it_until_closed(tmp_path: Path) -> None:
    dev = tmp_path / "cpu_dma_latency"
    dev.write_bytes(b"")
    with CpuLatencyRequest(25, device=str(dev)) as req:
        assert req.held
        assert dev.read_bytes() == struct.pack("=i", 25), "the kernel reads a binary s32 (or an ASCII hex string)"
    assert not req.held


@pytest.mark.parametrize("value", [-1, MAX_US + 1])
def test_out_of_range_limit_names_the_flag(value: int) -> None:
    with pytest.raises(CpuLatencyError, match=rf"--cpu-latency {value}: must be between 0 and"):
        CpuLatencyRequest(value)


def test_missing_device_says_what_to_do(tmp_path: Path) -> None:
    req = CpuLatencyRequest(0, device=str(tmp_path / "absent"))
    with pytest.raises(CpuLatencyError, match="does not exist .*--device"):
        req.open()
    assert not req.held


def test_flag_wins_over_environment_and_both_are_checked() -> None:
    assert cpu_latency_arg(None, None) is None, "no flag, no env: no request (the default)"
    assert cpu_latency_arg(10, "20") == 10
    assert cpu_latency_arg(None, "0") == 0
    with pytest.raises(CliError, match="IMQD_CPU_LATENCY='fast'"):
        cpu_latency_arg(None, "fast")
    with pytest.raises(CliError, match="--cpu-latency -5"):
        cpu_latency_arg(-5, None)


def test_permission_denied_says_the_device_is_root_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*_: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("imqd.cpu_latency.os.open", denied)
    with pytest.raises(CpuLatencyError, match="permission denied .*root-only"):
        CpuLatencyRequest(0).open()


def test_out_of_range_environment_value_names_the_variable() -> None:
    with pytest.raises(CliError, match="IMQD_CPU_LATENCY=-5: must be between"):
        cpu_latency_arg(None, "-5")
