"""Taking a namespace lab down: what it owns, deleting its namespaces, and labs whose owner died.

A namespace stays alive while any process runs in it, so deleting one first kills what runs there (each
pid by id).  A lab records its owner (pid and that pid's start time, which tells a reused pid apart) in
``/run/imqd-lab/<prefix>``; ``cleanup_stale()`` reads those files, so the format lives only here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyroute2 import netns as pnetns

from imqd.netns_tools import tool

__all__ = ["OWNER_DIR", "Resources", "cleanup_stale", "write_owner_file"]

OWNER_DIR = "/run/imqd-lab"


def _proc_starttime(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def write_owner_file(prefix: str) -> str:
    """Record this process as the owner of lab `prefix`; returns the file's path."""
    os.makedirs(OWNER_DIR, exist_ok=True)
    path = os.path.join(OWNER_DIR, prefix)
    with open(path, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()} {_proc_starttime(os.getpid())}\n")
    return path


def _ns_list() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _ns_pids(ns: str) -> list[int]:
    res = subprocess.run([tool("ip"), "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def _kill_pids(pids: Sequence[int], grace: float = 1.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL -- each pid by id."""
    alive = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if not _is_gone(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _is_gone(pid: int) -> bool:
    """Exited (zombie) or reaped."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _delete_ns(ns: str) -> None:
    """Kill what still runs inside `ns` (it would keep the namespace alive), then delete it."""
    if ns not in _ns_list():
        return
    _kill_pids(_ns_pids(ns))
    try:
        pnetns.remove(ns)
    except OSError:
        subprocess.run([tool("ip"), "netns", "delete", ns], capture_output=True, check=False)


@dataclass
class Resources:
    """What a Topology owns; kept apart from it so the finalizer holds no reference to the Topology."""

    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    owner_file: str | None = None
    tmpfiles: list[str] = field(default_factory=list)

    def release(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=2)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            _delete_ns(ns)
        self.namespaces.clear()
        for path in [*self.tmpfiles, *([self.owner_file] if self.owner_file else [])]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.tmpfiles.clear()
        self.owner_file = None


def cleanup_stale(prefix: str | None = None) -> list[str]:
    """Delete leftover lab namespaces; returns the names deleted.

    With `prefix`, every namespace whose name starts with it (careful: ``"imq"`` also removes labs other
    processes are using right now).  Without, only labs whose owner process (recorded in /run/imqd-lab) is gone.
    """
    doomed: list[str] = []
    if prefix is not None:
        if not prefix:
            raise ValueError("prefix: must not be empty (that would delete every namespace)")
        doomed = [ns for ns in _ns_list() if ns.startswith(prefix)]
    else:
        try:
            owners = os.listdir(OWNER_DIR)
        except FileNotFoundError:
            owners = []
        for lab in owners:
            path = os.path.join(OWNER_DIR, lab)
            try:
                with open(path, encoding="ascii") as f:
                    pid_text, start = f.read().split()
                pid = int(pid_text)
            except (OSError, ValueError):
                continue
            if _proc_starttime(pid) == start:
                continue  # owner still alive
            doomed += [ns for ns in _ns_list() if ns.startswith(lab + "-")]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    for ns in doomed:
        _delete_ns(ns)
    return doomed
