"""Shared fixtures: network-namespace topologies, and the `netns` marker.

Tests under tests/integration are marked `netns` automatically; `netns` tests are skipped with one clear reason
when this machine cannot run them (not root, a tool missing, namespaces or iptables unusable).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from imqd.netns import Topology

INTEGRATION_DIR = Path(__file__).parent / "integration"
NEEDED_TOOLS = ("ip", "tc", "sysctl", "ss", "iptables", "iptables-save", "iptables-restore", "ip6tables",
                "ip6tables-save", "ip6tables-restore", "iperf3", "ping")


@functools.cache
def netns_unavailable() -> str | None:
    """Why netns tests cannot run here, or None.  Probes once per session with a throw-away namespace."""
    if os.geteuid() != 0:
        return "netns tests need root (network namespaces, iptables, tc)"
    from imqd.netns import tool_env

    env = tool_env()
    missing = [t for t in NEEDED_TOOLS if not shutil.which(t, path=env["PATH"])]
    if missing:
        hint = "apt-get install iproute2 iptables iperf3 iputils-ping procps"
        return f"netns tests need these tools: {', '.join(missing)} ({hint})"
    try:
        from pyroute2 import netns
    except ImportError:
        return "netns tests need pyroute2"
    probe = f"imqprobe{os.getpid()}"
    try:
        netns.create(probe)
    except OSError as e:
        return f"cannot create network namespaces: {e}"
    try:
        ip = shutil.which("ip", path=env["PATH"]) or "ip"
        res = subprocess.run([ip, "netns", "exec", probe, "iptables", "-t", "mangle", "-S"],
                             capture_output=True, text=True, check=False, env=env)
        if res.returncode != 0:
            why = res.stderr.strip().splitlines()[0] if res.stderr.strip() else f"exit {res.returncode}"
            return f"iptables unusable in a namespace: {why}"
    finally:
        netns.remove(probe)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.netns)
        if item.get_closest_marker("netns") is not None:
            reason = netns_unavailable()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Delete labs left by test runs that were killed (their owner process is gone); others' labs are untouched."""
    if os.geteuid() == 0 and os.path.isdir("/run/imqd-lab"):
        from imqd.netns import cleanup_stale

        cleanup_stale()


@pytest.fixture
def topology() -> Iterator[Topology]:
    """One client - router - server, torn down after the test."""
    from imqd.netns import Topology

    with Topology() as topo:
        yield topo


@pytest.fixture
def topology_factory() -> Iterator[Callable[..., Topology]]:
    """``make(clients=2, masquerade=True, extra_client_addrs=3, ...)`` -> a started Topology, closed after the test."""
    from imqd.netns import Topology

    made: list[Topology] = []

    def make(**options: object) -> Topology:
        topo = Topology(**options)  # type: ignore[arg-type]
        made.append(topo)
        return topo.start()

    yield make
    for topo in reversed(made):
        topo.close()
