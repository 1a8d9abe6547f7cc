"""Real-time scheduling for a worker (``--realtime PRIO``): the release timer fires on time.

Why: a worker lets a held packet go when its class's tokens allow, by waking from ``select()`` at that
moment.  Under normal (CFS) scheduling the wake-up lands late by a few to ~140 us (1st..99th percentile,
measured under a saturating TCP load: docs/architecture.md), and the class then catches up with the next
packet early, so the gaps between departures jitter.  TCP's BBR reads a compressed gap as a faster path and
keeps more in flight, which is standing queue in a FIFO class.  Kernel HTB's watchdog is an hrtimer in
interrupt context.  SCHED_FIFO brings the worker's wake-up close to that.

What it costs: a SCHED_FIFO task runs before every normal task on its CPU.  A worker busy at its queue's
ceiling then leaves that CPU's normal tasks (other daemons, and softirq work deferred to ksoftirqd) only
what the kernel's RT throttling keeps back: ``/proc/sys/kernel/sched_rt_runtime_us`` of every
``sched_rt_period_us`` (default 950,000 of 1,000,000: 5 %).  With throttling off (-1) a runaway worker
could hold its CPU, so imqd refuses the flag then.
"""

from __future__ import annotations

import os

MAX_PRIORITY = 99  # SCHED_FIFO priorities run 1..99 on Linux
RT_RUNTIME = "/proc/sys/kernel/sched_rt_runtime_us"


class RealtimeError(Exception):
    """The worker cannot run real-time; the message is one line for the operator."""


def check_priority(value: int, source: str = "--realtime ") -> int:
    """``value`` if it is 0 (off) or a SCHED_FIFO priority, else RealtimeError naming where it came from
    (``source``: the flag, or ``"IMQD_REALTIME="``)."""
    if not 0 <= value <= MAX_PRIORITY:
        raise RealtimeError(f"{source}{value}: must be 0 (off) or a SCHED_FIFO priority between 1 and "
                            f"{MAX_PRIORITY}")
    return value


def check_throttled(path: str | None = None, source: str = "--realtime ") -> None:
    """RealtimeError unless the kernel keeps some of each period back from real-time tasks (``path``: the
    sysctl's file, default RT_RUNTIME)."""
    path = path or RT_RUNTIME
    try:
        with open(path, encoding="ascii") as f:
            runtime = int(f.read().strip())
    except (OSError, ValueError):
        return  # no such knob (not Linux): nothing to check
    if runtime < 0:
        raise RealtimeError(f"{source.strip().rstrip('=')}: {path} is -1 (real-time throttling off): a worker "
                            "busy at its ceiling could hold its CPU; set it to e.g. 950000 or leave real-time off")


def set_realtime(priority: int) -> None:
    """Make the calling process SCHED_FIFO at ``priority`` (0: leave it alone)."""
    if not priority:
        return
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError as exc:
        raise RealtimeError(f"--realtime {priority}: not permitted ({exc.strerror}): needs CAP_SYS_NICE or an "
                            "RLIMIT_RTPRIO of at least the priority (in a container: --ulimit "
                            f"rtprio={priority})") from exc
    except OSError as exc:
        raise RealtimeError(f"--realtime {priority}: sched_setscheduler failed: {exc.strerror}") from exc


def scheduling(pid: int = 0) -> str:
    """The process's policy for /stats: 'fifo:PRIO' or 'normal'."""
    try:
        if os.sched_getscheduler(pid) == os.SCHED_FIFO:
            return f"fifo:{os.sched_getparam(pid).sched_priority}"
    except OSError:
        pass
    return "normal"
