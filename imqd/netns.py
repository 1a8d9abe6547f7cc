"""Network-namespace lab: clients - router - server, for tests, benchmarks and `imqd lab`.

Why namespaces: they give a real router (forwarding, conntrack, NAT, netfilter hooks, qdiscs) without touching
the host's own interfaces or iptables.  Everything a `Topology` makes carries its prefix and lives only inside
its own namespaces (the veth pairs are created inside the router namespace with the peer placed directly in the
client/server namespace, so nothing ever appears in the host namespace).

Addressing (RFC 2544 / RFC 5180 benchmarking ranges only)::

    client i  198.18.(10+i).2/24 (+ .3, .4, ... extra)   2001:2:0:(10+i)::2/64 (+ ::3, ...)
    router    198.18.(10+i).1 on lan i                    2001:2:0:(10+i)::1
    router    198.19.0.1 on wan                           2001:2:0:ff::1
    server    198.19.0.2                                  2001:2:0:ff::2

Names: namespaces ``{prefix}-c{i}``, ``{prefix}-r``, ``{prefix}-s``; interfaces (<= 15 chars) router lan
``{prefix}l{i}``, router wan ``{prefix}w``, client side ``{prefix}c{i}``, server side ``{prefix}s``, ifb
``{prefix}i{k}``.  Every external command runs from an argument list (no shell).

Cleanup is guaranteed three ways: ``__exit__``/``close()``, a ``weakref.finalize`` safety net that also runs at
interpreter exit, and ``cleanup_stale()`` for labs whose owning process died (an owner file in
``/run/imqd-lab/`` records the pid and its start time).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pnetns

__all__ = [
    "Client",
    "Topology",
    "TopologyError",
    "cleanup_stale",
    "make_prefix",
    "tool_env",
    "SERVER_ADDR4",
    "SERVER_ADDR6",
    "ROUTER_WAN_ADDR4",
    "ROUTER_WAN_ADDR6",
]

SERVER_ADDR4 = "198.19.0.2"
ROUTER_WAN_ADDR4 = "198.19.0.1"
SERVER_ADDR6 = "2001:2:0:ff::2"
ROUTER_WAN_ADDR6 = "2001:2:0:ff::1"
OWNER_DIR = "/run/imqd-lab"
MAX_CLIENTS = 64
MAX_EXTRA_ADDRS = 200
_IFNAMSIZ = 15
_IFA_F_NODAD = 0x02  # IPv6 address usable at once (no duplicate address detection delay)
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,10}")
_RTT_RE = re.compile(r"time[=<]([0-9.]+) ms")
_COUNTER = itertools.count()
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin")


class TopologyError(RuntimeError):
    """Building or driving the lab failed; the message names the namespace and command."""


@dataclass(frozen=True, slots=True)
class Client:
    """One client namespace: its addresses (index 0 is the primary one) and the router port it hangs off."""

    index: int
    ns: str
    iface: str
    router_iface: str
    addrs4: tuple[str, ...]
    addrs6: tuple[str, ...]
    gw4: str
    gw6: str

    @property
    def addr4(self) -> str:
        return self.addrs4[0]

    @property
    def addr6(self) -> str:
        return self.addrs6[0]


def make_prefix() -> str:
    """A prefix unique to this process and call: ``imq<pid % 100000>x<n>``."""
    return f"imq{os.getpid() % 100000}x{next(_COUNTER)}"


def _tool(name: str) -> str:
    """Absolute path of a system tool, also when /usr/sbin is missing from PATH."""
    found = shutil.which(name, path=tool_env()["PATH"])
    if found is None:
        raise TopologyError(f"{name!r} not found: install it (iproute2 / iptables / iperf3 / iputils-ping)")
    return found


def tool_env() -> dict[str, str]:
    """This process's environment with the sbin directories on PATH, so ``ip netns exec`` finds iptables/tc/sysctl."""
    env = dict(os.environ)
    parts = [p for p in env.get("PATH", "").split(":") if p]
    env["PATH"] = ":".join(parts + [d for d in _SBIN if d not in parts])
    return env


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


def _proc_starttime(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _ns_list() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _ns_pids(ns: str) -> list[int]:
    res = subprocess.run([_tool("ip"), "netns", "pids", ns], capture_output=True, text=True, check=False)
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
        subprocess.run([_tool("ip"), "netns", "delete", ns], capture_output=True, check=False)


@dataclass
class _Resources:
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


class Topology:
    """clients - router - server namespaces joined by veth pairs; a context manager.

    Options: `clients` (1..64), `masquerade` (the router SNATs client traffic leaving its wan interface, and the
    server gets no route back to the client subnets so it really depends on NAT), `extra_client_addrs` (that many
    additional addresses on every client, to play several hosts), `prefix` (default `make_prefix()`), `ipv6`.
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
        if isinstance(clients, bool) or not isinstance(clients, int) or not 1 <= clients <= MAX_CLIENTS:
            raise ValueError(f"clients: expected an int in 1..{MAX_CLIENTS}, got {clients!r}")
        if (
            isinstance(extra_client_addrs, bool)
            or not isinstance(extra_client_addrs, int)
            or not 0 <= extra_client_addrs <= MAX_EXTRA_ADDRS
        ):
            raise ValueError(f"extra_client_addrs: expected an int in 0..{MAX_EXTRA_ADDRS}, got {extra_client_addrs!r}")
        prefix = make_prefix() if prefix is None else prefix
        if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
            # 11 chars + "l63" stays within IFNAMSIZ (15)
            raise ValueError(f"prefix: expected 1-11 chars [a-z][a-z0-9]*, got {prefix!r}")
        self.prefix = prefix
        self.masquerade = bool(masquerade)
        self.ipv6 = bool(ipv6)
        self.extra_client_addrs = extra_client_addrs
        self.router_ns = f"{prefix}-r"
        self.server_ns = f"{prefix}-s"
        self.wan_iface = f"{prefix}w"
        self.server_iface = f"{prefix}s"
        self.server_addr4 = SERVER_ADDR4
        self.server_addr6 = SERVER_ADDR6
        self.router_wan_addr4 = ROUTER_WAN_ADDR4
        self.router_wan_addr6 = ROUTER_WAN_ADDR6
        self.clients: list[Client] = []
        for i in range(clients):
            net = 10 + i
            hosts = range(2, 3 + extra_client_addrs)
            self.clients.append(
                Client(
                    index=i,
                    ns=f"{prefix}-c{i}",
                    iface=f"{prefix}c{i}",
                    router_iface=f"{prefix}l{i}",
                    addrs4=tuple(f"198.18.{net}.{h}" for h in hosts),
                    addrs6=tuple(f"2001:2:0:{net}::{h:x}" for h in hosts),
                    gw4=f"198.18.{net}.1",
                    gw6=f"2001:2:0:{net}::1",
                )
            )
        self.client_ns = [c.ns for c in self.clients]
        self.client_ifaces = [c.iface for c in self.clients]
        self.lan_ifaces = [c.router_iface for c in self.clients]
        self.namespaces = [*self.client_ns, self.router_ns, self.server_ns]
        self._res = _Resources()
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
            self._write_owner_file()
            self._create_namespaces()
            self._sysctls()
            self._links()
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

    def _write_owner_file(self) -> None:
        os.makedirs(OWNER_DIR, exist_ok=True)
        path = os.path.join(OWNER_DIR, self.prefix)
        with open(path, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()} {_proc_starttime(os.getpid())}\n")
        self._res.owner_file = path

    def _create_namespaces(self) -> None:
        for ns in self.namespaces:
            self._res.namespaces.append(ns)  # recorded first: a half-made one is still cleaned up
            try:
                pnetns.create(ns)
            except OSError as e:
                raise TopologyError(f"cannot create network namespace {ns!r}: {e}") from e

    def _sysctls(self) -> None:
        """rp_filter off everywhere (set on default before interfaces exist, so they inherit it), forwarding on."""
        common = ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
        if self.ipv6:
            common += ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
        for ns in self.namespaces:
            extra = []
            if ns == self.router_ns:
                extra = ["net.ipv4.ip_forward=1"] + (["net.ipv6.conf.all.forwarding=1"] if self.ipv6 else [])
            self.exec(ns, ["sysctl", "-q", "-w", *common, *extra])

    def _links(self) -> None:
        with IPRoute(netns=self.router_ns) as ipr:
            self._up(ipr, "lo")
            for c in self.clients:
                ipr.link("add", ifname=c.router_iface, kind="veth", peer={"ifname": c.iface, "net_ns_fd": c.ns})
                self._addr(ipr, c.router_iface, [c.gw4], [c.gw6], 24, 64)
            peer = {"ifname": self.server_iface, "net_ns_fd": self.server_ns}
            ipr.link("add", ifname=self.wan_iface, kind="veth", peer=peer)
            self._addr(ipr, self.wan_iface, [self.router_wan_addr4], [self.router_wan_addr6], 24, 64)
        for c in self.clients:
            with IPRoute(netns=c.ns) as ipr:
                self._up(ipr, "lo")
                self._addr(ipr, c.iface, list(c.addrs4), list(c.addrs6), 24, 64)
                self._default_route(ipr, c.gw4, c.gw6)
        with IPRoute(netns=self.server_ns) as ipr:
            self._up(ipr, "lo")
            self._addr(ipr, self.server_iface, [self.server_addr4], [self.server_addr6], 24, 64)
            if not self.masquerade:  # with NAT the server must not be able to reach the clients directly
                self._default_route(ipr, self.router_wan_addr4, self.router_wan_addr6)

    @staticmethod
    def _up(ipr: Any, ifname: str) -> int:
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=idx, state="up")
        return idx

    def _addr(self, ipr: Any, ifname: str, v4: list[str], v6: list[str], plen4: int, plen6: int) -> None:
        idx = ipr.link_lookup(ifname=ifname)[0]
        for a in v4:
            ipr.addr("add", index=idx, address=a, prefixlen=plen4)
        if self.ipv6:
            # Linux prefers the newest of equally good IPv6 sources: add the primary last so it is the default.
            for a in reversed(v6):
                ipr.addr("add", index=idx, address=a, prefixlen=plen6, flags=_IFA_F_NODAD)
        ipr.link("set", index=idx, state="up")

    def _default_route(self, ipr: Any, gw4: str, gw6: str) -> None:
        ipr.route("add", dst="default", gateway=gw4)
        if self.ipv6:
            ipr.route("add", dst="default", gateway=gw6, family=10)

    def _masquerade(self) -> None:
        tools = ["iptables"] + (["ip6tables"] if self.ipv6 else [])
        for tool in tools:
            argv = [tool, "-t", "nat", "-A", "POSTROUTING", "-o", self.wan_iface, "-j", "MASQUERADE"]
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
        res = subprocess.run([_tool("ip"), "netns", "exec", ns, *argv], check=False, **kw)
        if check and res.returncode != 0:
            err = res.stderr.strip() if isinstance(res.stderr, str) else res.stderr
            raise TopologyError(f"{ns}: {' '.join(argv)} exited {res.returncode}: {err}")
        return res

    def popen(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        """Start `argv` in `ns`; it is terminated (then killed) when the topology closes."""
        self._check_ns(ns)
        kw.setdefault("env", tool_env())
        proc = subprocess.Popen([_tool("ip"), "netns", "exec", ns, *argv], **kw)
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
            proc = self.popen(ns, [_tool("iperf3"), "-s", "-p", str(port)], stdout=logf, stderr=subprocess.STDOUT)
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
        argv = [_tool("iperf3"), "-c", target, "-p", str(port), "-t", str(seconds), "-J", "--get-server-output"]
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
            if len(ifb) > _IFNAMSIZ:
                raise TopologyError(f"ifb name {ifb!r} longer than {_IFNAMSIZ} chars: use a shorter prefix")
            with IPRoute(netns=ns) as ipr:
                ipr.link("add", ifname=ifb, kind="ifb")
                self._up(ipr, ifb)
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
    def describe(self) -> dict[str, Any]:
        """Names and addresses as plain data (for `imqd lab` output and logs)."""
        return {
            "prefix": self.prefix,
            "masquerade": self.masquerade,
            "router_ns": self.router_ns,
            "server_ns": self.server_ns,
            "wan_iface": self.wan_iface,
            "server_addr4": self.server_addr4,
            "server_addr6": self.server_addr6 if self.ipv6 else None,
            "router_wan_addr4": self.router_wan_addr4,
            "clients": [
                {"ns": c.ns, "iface": c.iface, "router_iface": c.router_iface, "addrs4": list(c.addrs4),
                 "addrs6": list(c.addrs6) if self.ipv6 else []}
                for c in self.clients
            ],
        }

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("up" if self._started else "new")
        return f"<Topology {self.prefix} clients={len(self.clients)} masquerade={self.masquerade} {state}>"

