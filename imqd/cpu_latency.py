"""Hold a CPU wake-up latency limit (PM QoS, ``/dev/cpu_dma_latency``) while imqd runs.

Why: at light load every packet finds the worker's CPU idle.  A CPU in a deep idle
state (or a virtual CPU the hypervisor has descheduled on ``hlt``) takes tens of
microseconds to wake, and an NFQUEUE pass wakes up to two of them (the worker's and
the receiver's); docs/benchmarks.md measures imqd with and without ``--cpu-latency 0``.
It costs power: with 0 an idle CPU polls instead of sleeping.  This is what tuned's
``latency-performance`` profile (``force_latency``), cyclictest and ptp4l do.

The kernel keeps the request only while the file stays open, so it is dropped the
moment imqd exits, however it exits: a crash never leaves the machine pinned awake.
See the kernel's Documentation/power/pm_qos_interface.rst.
"""

from __future__ import annotations

import errno
import os
import struct
from types import TracebackType

DEVICE = "/dev/cpu_dma_latency"
MAX_US = 2_000_000_000  # the request is a signed 32-bit count of microseconds


class CpuLatencyError(Exception):
    """The limit cannot be held; the message is one line for the operator."""


def check_latency_us(value: int, source: str = "--cpu-latency ") -> int:
    """``value`` if it is a usable limit, else CpuLatencyError naming where it came from (``source``:
    the flag, or ``"IMQD_CPU_LATENCY="`` for the environment)."""
    if not 0 <= value <= MAX_US:
        raise CpuLatencyError(f"{source}{value}: must be between 0 and {MAX_US:,} microseconds")
    return value


class CpuLatencyRequest:
    """A PM QoS request for at most ``us`` microseconds of CPU wake-up latency, held until close()."""

    def __init__(self, us: int, device: str = DEVICE) -> None:
        self.us = check_latency_us(us)
        self.device = device
        self._fd: int | None = None

    def open(self) -> CpuLatencyRequest:
        try:
            fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CpuLatencyError(
                f"--cpu-latency: {self.device} does not exist (a kernel without CPU latency QoS, or a "
                f"container started without --device {self.device})") from None
        except PermissionError:
            raise CpuLatencyError(f"--cpu-latency: cannot open {self.device}: permission denied (the device is "
                                  "root-only: run as root, or give this user write access to it)") from None
        except OSError as exc:
            raise CpuLatencyError(f"--cpu-latency: cannot open {self.device}: "
                                  f"{os.strerror(exc.errno or errno.EIO)}") from None
        try:
            os.write(fd, struct.pack("=i", self.us))
        except OSError as exc:
            os.close(fd)
            raise CpuLatencyError(f"--cpu-latency: {self.device} refused {self.us} us: "
                                  f"{os.strerror(exc.errno or errno.EIO)}") from None
        self._fd = fd
        return self

    def close(self) -> None:
        """Drop the request (the kernel forgets it when the file closes)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> CpuLatencyRequest:
        return self if self.held else self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
