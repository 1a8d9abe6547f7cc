"""The system tools a namespace lab runs (ip, iptables, tc, iperf3, ...), and the lab's one error type.

Why a PATH of its own: tests and benchmarks often run from an environment without the sbin directories,
and ``ip netns exec`` looks the command up in the PATH it is given.
"""

from __future__ import annotations

import os
import shutil

__all__ = ["TopologyError", "tool", "tool_env"]

_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin")


class TopologyError(RuntimeError):
    """Building or driving the lab failed; the message names the namespace and command."""


def tool_env() -> dict[str, str]:
    """This process's environment with the sbin directories on PATH, so ``ip netns exec`` finds iptables/tc/sysctl."""
    env = dict(os.environ)
    parts = [p for p in env.get("PATH", "").split(":") if p]
    env["PATH"] = ":".join(parts + [d for d in _SBIN if d not in parts])
    return env


def tool(name: str) -> str:
    """Absolute path of a system tool, also when /usr/sbin is missing from PATH."""
    found = shutil.which(name, path=tool_env()["PATH"])
    if found is None:
        raise TopologyError(f"{name!r} not found: install it (iproute2 / iptables / iperf3 / iputils-ping)")
    return found
