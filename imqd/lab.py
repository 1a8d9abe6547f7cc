"""`imqd lab`, and the helper that runs a real imqd inside a lab's router namespace.

:class:`ImqdInstance` starts ``imqd run --apply-rules`` inside a
:class:`~imqd.netns.Topology`'s router namespace, waits until its workers are
bound, talks to its API from inside that namespace, and stops it.  The
integration tests, the benchmarks and ``imqd lab`` all use it, so the lab a
newcomer sees is the one the tests prove.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from imqd.netns import Topology

API_ADDR = "127.0.0.1:8000"

_HTTP = r"""
import json, sys, urllib.request, urllib.error
method, url, body = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode()}))
except Exception as e:
    print(json.dumps({"status": 0, "body": str(e)}))
"""


class ImqdInstance:
    """A running ``imqd run`` in the router namespace of ``topo`` (a context manager)."""

    def __init__(self, topo: Topology, config: dict[str, Any] | None, *, queues: str = "0:1",
                 extra_args: Sequence[str] = (), api: str = API_ADDR, apply_rules: bool = True,
                 config_path: Path | None = None, wrapper: Sequence[str] = ()) -> None:
        self.topo = topo
        self.queues = queues
        self.api = api
        self._dir = tempfile.mkdtemp(prefix="imqd-lab-")
        self.config_path = config_path or Path(self._dir) / "imqd.yaml"
        if config is not None:
            self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = Path(self._dir) / "imqd.log"
        argv = [sys.executable, "-m", "imqd.cli", "run", "--queues", queues, "--config", str(self.config_path),
                "--api", api]
        if apply_rules:
            argv.append("--apply-rules")
        self.argv = [*wrapper, *argv, *extra_args]  # wrapper: e.g. setpriv to drop capabilities
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "ImqdInstance":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 20.0) -> None:
        self.launch()
        self.wait_healthy(timeout)

    def launch(self) -> None:
        """Start ``imqd run`` and return at once (:meth:`wait_healthy` waits for it)."""
        with open(self.log_path, "ab") as log:
            self.proc = self.topo.popen(self.topo.router_ns, self.argv, stdout=log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float) -> None:
        """Until ``/healthz`` answers 200.  Each try runs a fresh Python in the namespace (~0.1 s of CPU):
        whoever times the start polls on its own instead (bench.startup) and calls this only after."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"imqd exited with {self.proc.returncode}: {self.log()}")
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"imqd did not become healthy within {timeout} s: {self.log()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (held packets are released, rules removed), then SIGKILL if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One HTTP request to the API, made from inside the router namespace."""
        payload = "" if body is None else json.dumps(body)
        res = self.topo.exec(self.topo.router_ns,
                             [sys.executable, "-c", _HTTP, method, f"http://{self.api}{path}", payload],
                             check=False, timeout=20)
        try:
            out = json.loads(res.stdout)
        except json.JSONDecodeError:
            return 0, res.stderr
        text = out["body"]
        try:
            return out["status"], json.loads(text) if text else None
        except json.JSONDecodeError:
            return out["status"], text

    def stats(self) -> dict[str, Any]:
        status, body = self.request("GET", "/stats")
        if status != 200:
            raise RuntimeError(f"GET /stats: {status} {body}")
        return body

    def worker_pids(self) -> dict[int, int]:
        return {w["queue"]: w["pid"] for w in self.stats()["workers"]}


def demo_config(topo: Topology, rate: str) -> dict[str, Any]:
    """Download shaping per client host at ``rate`` (ingress, as IMQ's imq0), plus an upload class."""
    classes: list[dict[str, Any]] = [
        {"name": "down", "direction": "ingress", "rate": rate, "match": {"iif": topo.wan_iface}},
        {"name": "up", "direction": "egress", "rate": rate, "match": {"oif": topo.wan_iface}},
    ]
    return {"overhead": 14, "classes": classes}


def run_lab(seconds: int = 10, rate: str = "20mbit", queues: tuple[int, int] = (0, 1)) -> int:
    """Build a lab, shape a download at ``rate``, print live per-class rates next to iperf3's."""
    if os.geteuid() != 0:
        print("imqd lab: needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    with Topology(clients=1) as topo:
        print(f"lab: client {topo.clients[0].addrs4[0]} -- router ({topo.router_ns}) -- server {topo.server_addr4}")
        with topo.iperf3_server(5201):
            base = topo.iperf3(0, seconds=2, reverse=True)["bps"]
            print(f"lab: unshaped download {base / 1e6:,.0f} Mbit/s")
            config = demo_config(topo, rate)
            with ImqdInstance(topo, config, queues=f"{queues[0]}:{queues[1]}") as imqd:
                print(f"lab: imqd running in {topo.router_ns}: class 'down' (ingress) and 'up' (egress) at {rate}")
                result: dict[str, Any] = {}
                t = threading.Thread(target=lambda: result.update(topo.iperf3(0, seconds=seconds, reverse=True)))
                t.start()
                print(f"{'t':>4} {'class':<6} {'rate':>12} {'backlog':>8} {'drops':>6}")
                for i in range(seconds):
                    time.sleep(1)
                    st = imqd.stats()["classes"]["down"]
                    print(f"{i + 1:>4} {'down':<6} {st['rate_bps'] / 1e6:>8.2f} Mb/s {st['backlog']['packets']:>8} "
                          f"{st['drops']:>6}")
                t.join()
                print(f"lab: iperf3 download through imqd: {result.get('bps', 0) / 1e6:.2f} Mbit/s (class rate {rate})")
                workers = imqd.stats()["workers"]
                for w in workers:
                    print(f"lab: worker queue {w['queue']} cpu {w['cpu']} pid {w['pid']} packets {w['packets']}")
    return 0
