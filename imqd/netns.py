"""Network-namespace lab: clients - router - server, for tests, benchmarks and `imqd lab`.

Why namespaces: they give a real router (forwarding, conntrack, NAT, netfilter hooks, qdiscs) without touching
the host's own interfaces or iptables.  Everything a `Topology` makes carries its prefix and lives only inside
its own namespaces.  Every external command runs from an argument list (no shell).

The pieces: :mod:`imqd.netns_plan` (names and addresses, checked before anything is made),
:mod:`imqd.netns_links` (namespaces, veth pairs, addresses, routes), :mod:`imqd.netns_cleanup` (teardown and
stale labs), :mod:`imqd.netns_tools` (system tools, `TopologyError`).  This module is the `Topology` that drives
them, runs commands and traffic in the lab and sets up the kernel reference shaper; the names callers use are
all importable from here.

Cleanup is guaranteed three ways: ``__exit__``/``close()``, a ``weakref.finalize`` safety net that also runs at
interpreter exit, and ``cleanup_stale()`` for labs whose owning process died (an owner file in
``/run/imqd-lab/`` records the pid and its start time).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from imqd.netns_cleanup import OWNER_DIR, Resources, cleanup_stale, write_owner_file
from imqd.netns_links import add_ifb, create_namespaces, link_lab, sysctl_settings
from imqd.netns_plan import (
    IFNAMSIZ,
    MAX_CLIENTS,
    MAX_EXTRA_ADDRS,
    ROUTER_WAN_ADDR4,
    ROUTER_WAN_ADDR6,
    SERVER_ADDR4,
    SERVER_ADDR6,
    Client,
    LabPlan,
    make_prefix,
)
from imqd.netns_tools import TopologyError, tool, tool_env

__all__ = [
    "Client",
    "Topology",
    "TopologyError",
    "cleanup_stale",
    "make_prefix",
    "tool_env",
    "MAX_CLIENTS",
    "MAX_EXTRA_ADDRS",
    "OWNER_DIR",
    "SERVER_ADDR4",
    "SERVER_ADDR6",
    "ROUTER_WAN_ADDR4",
    "ROUTER_WAN_ADDR6",
]

_RTT_RE = re.compile(r"time[=<]([0-9.]+) ms")


def _rate_arg(name: str, value: int | str) -> str:
    """tc rate: an int is bit/s, a str is passed through (``"5mbit"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{name}: expected bit/s as int or a tc rate string, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{name}: must be > 0, got {value}")
        return f"{value}bit"
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{name}: bad tc rate {value!r}")
    return value


class Topology(LabPlan):
    """clients - router - server namespaces joined by veth pairs; a context manager.

    Options: `clients` (1..64), `masquerade` (the router SNATs client traffic leaving its wan interface, and the
    server gets no route back to the client subnets so it really depends on NAT), `extra_client_addrs` (that many
    additional addresses on every client, to play several hosts), `prefix` (default `make_prefix()`), `ipv6`.
    Every bad option raises ValueError before anything is made.  The names, addresses and `describe()` come
    from :class:`~imqd.netns_plan.LabPlan`, which this extends with the namespaces themselves.
    """

    def __init__(
        self,
        clients: int = 1,
        *,
        masquerade: bool = False,
        extra_client_addrs: int = 0,
        prefix: str | None = None,
        ipv6: bool = True,
    ) -> None:
        super().__init__(clients, masquerade=masquerade, extra_client_addrs=extra_client_addrs, prefix=prefix,
                         ipv6=ipv6)
        self._res = Resources()
        self._finalizer = weakref.finalize(self, self._res.release)
        self._ifbs: dict[tuple[str, str], str] = {}
        self._started = False

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Topology:
        """Build everything; on any failure tear down what was made and re-raise."""
        if self._started:
            raise TopologyError(f"{self.prefix}: already started")
        self._started = True
        try:
            self._res.owner_file = write_owner_file(self.prefix)
            create_namespaces(self.namespaces, self._res.namespaces)
            for ns, settings in sysctl_settings(self):
                self.exec(ns, ["sysctl", "-q", "-w", *settings])
            link_lab(self)
            if self.masquerade:
                self._masquerade()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill the processes started here, delete every namespace made (idempotent)."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _masquerade(self) -> None:
        tools = ["iptables"] + (["ip6tables"] if self.ipv6 else [])
        for tool_name in tools:
            argv = [tool_name, "-t", "nat", "-A", "POSTROUTING", "-o", self.wan_iface, "-j", "MASQUERADE"]
            self.exec(self.router_ns, argv)

    # ---------------------------------------------------------------- running things
    def _check_ns(self, ns: str) -> None:
        if ns not in self.namespaces:
            raise ValueError(f"ns: {ns!r} is not one of this topology's namespaces {self.namespaces}")
        if self.closed:
            raise TopologyError(f"{self.prefix}: topology already closed")

    def exec(self, ns: str, argv: Sequence[str], *, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
        """Run `argv` in namespace `ns` (``ip netns exec``); text output captured, 60 s timeout by default.

        With check (default) a non-zero exit raises TopologyError carrying the command's stderr.
        """
        self._check_ns(ns)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        kw.setdefault("env", tool_env())
        res = subprocess.run([tool("ip"), "netns", "exec", ns, *argv], check=False, **kw)
        if check and res.returncode != 0:
            err = res.stderr.strip() if isinstance(res.stderr, str) else res.stderr
            raise TopologyError(f"{ns}: {' '.join(argv)} exited {res.returncode}: {err}")
        return res

    def popen(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        """Start `argv` in `ns`; it is terminated (then killed) when the topology closes."""
        self._check_ns(ns)
        kw.setdefault("env", tool_env())
        proc = subprocess.Popen([tool("ip"), "netns", "exec", ns, *argv], **kw)
        self._res.procs.append(proc)
        return proc

    def runner(self, ns: str) -> Callable[..., subprocess.CompletedProcess]:
        """A ``subprocess.run``-compatible callable running inside `ns` (for ``imqd.rules`` and friends)."""
        self._check_ns(ns)

        def run(argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
            kw.setdefault("check", False)
            check = kw.pop("check")
            res = self.exec(ns, argv, check=False, **kw)
            if check:
                res.check_returncode()
            return res

        return run

    # ---------------------------------------------------------------- traffic
    @contextlib.contextmanager
    def iperf3_server(self, port: int = 5201, ns: str | None = None) -> Iterator[subprocess.Popen]:
        """An iperf3 server on `port` in `ns` (default: the server namespace), ready when the block starts."""
        ns = self.server_ns if ns is None else ns
        fd, log = tempfile.mkstemp(prefix=f"{self.prefix}-iperf3-", suffix=".log")
        self._res.tmpfiles.append(log)
        with os.fdopen(fd, "w") as logf:
            proc = self.popen(ns, [tool("iperf3"), "-s", "-p", str(port)], stdout=logf, stderr=subprocess.STDOUT)
        try:
            self._wait_listening(ns, port, proc, log)
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _wait_listening(self, ns: str, port: int, proc: subprocess.Popen, log: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                with open(log, encoding="utf-8", errors="replace") as f:
                    raise TopologyError(f"{ns}: iperf3 server on port {port} exited: {f.read().strip()}")
            listening = [f[3] for f in map(str.split, self.exec(ns, ["ss", "-Hltn"]).stdout.splitlines()) if len(f) > 3]
            if any(local.rsplit(":", 1)[-1] == str(port) for local in listening):
                return
            time.sleep(0.05)
        raise TopologyError(f"{ns}: iperf3 server not listening on port {port} after {timeout} s")

    def iperf3(
        self,
        client_index: int,
        port: int = 5201,
        seconds: float = 3,
        reverse: bool = False,
        parallel: int = 1,
        bind: str | None = None,
        udp: bool = False,
        bitrate: int | str | None = None,
        *,
        server: str | None = None,
        v6: bool = False,
        omit: int = 0,
        length: int | None = None,
    ) -> dict[str, Any]:
        """Run an iperf3 client in client `client_index` against the server (``iperf3 -J``).

        Returns ``bps`` (goodput as received: by the server, or by the client with `reverse`), ``sent_bps``,
        ``retransmits`` (TCP, else None), ``lost_percent``/``jitter_ms`` (UDP, else None), ``server_saw``
        (the client addresses the server saw -- the router's with NAT) and the parsed ``json``.
        """
        client = self._client(client_index)
        if seconds <= 0 or parallel < 1 or omit < 0:
            raise ValueError(f"seconds/parallel/omit: bad values {seconds!r}/{parallel!r}/{omit!r}")
        target = server or (self.server_addr6 if v6 else self.server_addr4)
        argv = [tool("iperf3"), "-c", target, "-p", str(port), "-t", str(seconds), "-J", "--get-server-output"]
        argv += ["-P", str(parallel), "--connect-timeout", "3000"]
        if omit:
            argv += ["-O", str(omit)]
        if reverse:
            argv.append("-R")
        if bind:
            argv += ["-B", bind]
        if udp:
            argv.append("-u")
        if bitrate is not None:
            argv += ["-b", str(bitrate)]
        if length is not None:
            argv += ["-l", str(length)]
        res = self.exec(client.ns, argv, check=False, timeout=seconds + omit + 30)
        try:
            data = json.loads(res.stdout)
        except json.JSONDecodeError as e:
            why = f"exit {res.returncode}: {res.stderr.strip()}"
            raise TopologyError(f"{client.ns}: iperf3 gave no JSON ({why})") from e
        if "error" in data:
            raise TopologyError(f"{client.ns}: iperf3 {' '.join(argv[1:])}: {data['error']}")
        end = data["end"]
        received = end.get("sum_received") or end.get("sum") or {}
        sent = end.get("sum_sent") or end.get("sum") or {}
        saw = re.findall(r"connected to (\S+) port", data.get("server_output_text", ""))
        if "server_output_json" in data:
            saw = [c["remote_host"] for c in data["server_output_json"]["start"].get("connected", [])]
        return {
            "bps": float(received.get("bits_per_second", 0.0)),
            "sent_bps": float(sent.get("bits_per_second", 0.0)),
            "retransmits": None if udp else sent.get("retransmits"),
            "lost_percent": received.get("lost_percent") if udp else None,
            "jitter_ms": received.get("jitter_ms") if udp else None,
            "server_saw": sorted(set(saw)),
            "json": data,
        }

    def ping(
        self,
        client_index: int,
        count: int = 5,
        interval: float = 0.2,
        *,
        target: str | None = None,
        v6: bool = False,
        source: str | None = None,
        deadline: float | None = None,
        cpu: int | None = None,
    ) -> list[float]:
        """Ping from client `client_index` (default target: the server); the RTTs in ms of the replies received.

        `cpu` pins ping to that CPU: on veth the echo's forwarding runs on the sender's CPU, so this chooses
        whether the router's work lands on the same CPU as a pinned worker or another one.
        No reply (or an unreachable network) gives an empty list; a usage error raises TopologyError.
        """
        client = self._client(client_index)
        if count < 1 or interval <= 0:
            raise ValueError(f"count/interval: bad values {count!r}/{interval!r}")
        if cpu is not None and cpu not in os.sched_getaffinity(0):
            raise ValueError(f"cpu: {cpu!r} is not one of this process's CPUs {sorted(os.sched_getaffinity(0))}")
        target = target or (self.server_addr6 if v6 else self.server_addr4)
        deadline = deadline if deadline is not None else count * interval + 2
        argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", "-w", str(int(deadline + 0.999))]
        if v6 or ":" in target:
            argv.append("-6")
        if source:
            argv += ["-I", source]
        pin = [] if cpu is None else ["taskset", "-c", str(cpu)]
        res = self.exec(client.ns, [*pin, *argv, target], check=False, timeout=deadline + 10)
        rtts = [float(m) for m in _RTT_RE.findall(res.stdout)]
        if not rtts and res.returncode > 1 and "unreachable" not in (res.stdout + res.stderr).lower():
            raise TopologyError(f"{client.ns}: {' '.join(argv)} {target}: {res.stderr.strip()}")
        return rtts

    def _client(self, index: int) -> Client:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.clients):
            raise ValueError(f"client_index: expected 0..{len(self.clients) - 1}, got {index!r}")
        return self.clients[index]

    # ---------------------------------------------------------------- kernel reference shaping
    def htb(
        self,
        ns: str,
        iface: str,
        rate: int | str,
        *,
        ceil: int | str | None = None,
        burst: str | None = None,
        cburst: str | None = None,
        quantum: int | None = None,
    ) -> None:
        """Kernel HTB (root 1:, one class 1:1 that takes everything) on `iface` in `ns`: the reference shaper."""
        argv = ["class", "replace", "dev", iface, "parent", "1:", "classid", "1:1", "htb"]
        argv += ["rate", _rate_arg("rate", rate)]
        if ceil is not None:
            argv += ["ceil", _rate_arg("ceil", ceil)]
        if burst is not None:
            argv += ["burst", str(burst)]
        if cburst is not None:
            argv += ["cburst", str(cburst)]
        if quantum is not None:
            argv += ["quantum", str(int(quantum))]
        self.exec(ns, ["tc", "qdisc", "replace", "dev", iface, "root", "handle", "1:", "htb", "default", "1"])
        self.exec(ns, ["tc", *argv])

    def ingress_htb(self, iface: str, rate: int | str, *, ns: str | None = None, **htb_kw: Any) -> str:
        """Ingress reference: redirect everything arriving on `iface` to an ifb and shape it there with HTB.

        Returns the ifb's name.  `ns` defaults to the router namespace.
        """
        ns = self.router_ns if ns is None else ns
        self._check_ns(ns)
        ifb = self._ifbs.get((ns, iface))
        if ifb is None:
            ifb = f"{self.prefix}i{len(self._ifbs)}"
            if len(ifb) > IFNAMSIZ:
                raise TopologyError(f"ifb name {ifb!r} longer than {IFNAMSIZ} chars: use a shorter prefix")
            add_ifb(ns, ifb)
            self._ifbs[(ns, iface)] = ifb
        self.exec(ns, ["tc", "qdisc", "replace", "dev", iface, "handle", "ffff:", "ingress"])
        self.exec(ns, ["tc", "filter", "replace", "dev", iface, "parent", "ffff:", "pref", "1", "protocol", "all",
                       "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb])
        self.htb(ns, ifb, rate, **htb_kw)
        return ifb

    def clear_tc(self, ns: str, iface: str) -> None:
        """Remove root and ingress qdiscs from `iface` (and the ifb made for it by ingress_htb)."""
        self.exec(ns, ["tc", "qdisc", "del", "dev", iface, "root"], check=False)
        self.exec(ns, ["tc", "qdisc", "del", "dev", iface, "ingress"], check=False)
        ifb = self._ifbs.pop((ns, iface), None)
        if ifb is not None:
            self.exec(ns, ["ip", "link", "del", ifb], check=False)

    # ---------------------------------------------------------------- misc
    def __repr__(self) -> str:
        state = "closed" if self.closed else ("up" if self._started else "new")
        return f"<Topology {self.prefix} clients={len(self.clients)} masquerade={self.masquerade} {state}>"

