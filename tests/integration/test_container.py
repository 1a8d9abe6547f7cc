"""The container image (issue 7): build it with podman, run it inside a lab router, check it shapes and cleans up.

There is no Docker engine here; podman with the runc runtime builds and runs the same Dockerfile. The base image
is built offline from the Debian archive (scripts/build-base-image.sh, cached: it is slow) and passed as
``--build-arg BASE=...``; real Docker users get the official debian:bookworm-slim.

Skipped with one clear reason when podman/runc are missing or we are not root. ``IMQD_TEST_KEEP_IMAGE=1`` keeps
the built image after the run (the base image and podman's layer cache are always kept).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from imqd.netns import Topology

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("IMQD_TEST_BASE_IMAGE", "localhost/imqd-base:bookworm")
IMAGE = os.environ.get("IMQD_TEST_IMAGE", "localhost/imqd:test")
IMQD_UID = 10001  # the image's `imqd` user (Dockerfile ARG IMQD_UID)
CAP_NET_ADMIN = 1 << 12
RATE_BPS = 5_000_000
QUEUES = "0:1"
API = "127.0.0.1:8000"
_NAMES = itertools.count()


def podman_unavailable() -> str | None:
    """Why this machine cannot run the container tests, or None."""
    if os.geteuid() != 0:
        return "container tests need root (podman with --network ns:/run/netns/...)"
    missing = [t for t in ("podman", "runc") if shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
    if missing:
        return f"container tests need {' and '.join(missing)}: run scripts/podman-setup.sh (apt-get install podman runc debootstrap)"
    res = subprocess.run(["podman", "--runtime", "runc", "info", "--format", "{{.Store.GraphDriverName}}"],
                         capture_output=True, text=True, check=False, timeout=60)
    if res.returncode != 0:
        return f"podman does not work here: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}"
    return None


pytestmark = [
    pytest.mark.podman,
    pytest.mark.skipif(bool(reason := podman_unavailable()), reason=reason or ""),
]


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """``podman --runtime runc ARGS`` (crun fails on this host's cgroups); raises with stderr when check fails."""
    res = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True, check=False,
                         timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The imqd image built from the working tree (base image built once and cached)."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        if shutil.which("debootstrap") is None:
            pytest.skip(f"base image {BASE_IMAGE} missing and debootstrap not installed: run scripts/ci-podman.sh")
        res = subprocess.run([str(REPO / "scripts" / "build-base-image.sh"), BASE_IMAGE], capture_output=True,
                             text=True, check=False, timeout=900)
        assert res.returncode == 0, f"build-base-image.sh failed:\n{res.stdout}\n{res.stderr}"
    podman("build", "--format", "docker", "--build-arg", f"BASE={BASE_IMAGE}", "-t", IMAGE, "-f",
           str(REPO / "Dockerfile"), str(REPO), timeout=1200)
    yield IMAGE
    if os.environ.get("IMQD_TEST_KEEP_IMAGE") != "1":
        podman("rmi", "-f", IMAGE, check=False)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A host directory for /var/lib/imqd holding the config: one 5 Mbit/s egress class for everything.

    Owned by the image's imqd user, so the API could also save changes there (atomic rename in the directory:
    which is why the directory is mounted, not the file).
    """
    path = Path(tempfile.mkdtemp(prefix="imqd-ctr-"))
    (path / "imqd.yaml").write_text(
        "classes:\n"
        "  - name: all-egress\n"
        "    direction: egress\n"
        f"    rate: {RATE_BPS // 1_000_000}mbit\n"
        "    default: true\n"
    )
    for p in (path, path / "imqd.yaml"):
        os.chown(p, IMQD_UID, IMQD_UID)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def run_container(image: str, state_dir: Path) -> Iterator[Callable[..., str]]:
    """``run(topology, *imqd_args, create_only=False) -> name``: the image in the router namespace; removed after."""
    names: list[str] = []

    def run(topo: Topology, *imqd_args: str, create_only: bool = False) -> str:
        name = f"imqd-test-{os.getpid()}-{next(_NAMES)}"
        names.append(name)
        podman("create" if create_only else "run", *([] if create_only else ["-d"]), "--name", name,
               "--network", f"ns:/run/netns/{topo.router_ns}",
               "--cap-drop", "ALL", "--cap-add", "NET_ADMIN",
               "--read-only",  # as deploy/docker-compose.yml (podman adds a tmpfs /tmp by itself)
               "-e", f"IMQD_QUEUES={QUEUES}", "-e", f"IMQD_API={API}",
               "-v", f"{state_dir}:/var/lib/imqd",
               # no systemd here to run healthcheck timers; the test runs `podman healthcheck run` itself
               "--health-interval", "disable",
               image, *imqd_args)
        return name

    yield run
    for name in reversed(names):
        podman("rm", "-f", "-t", "5", name, check=False)


# ---------------------------------------------------------------- helpers
def rules_dump(topo: Topology) -> str:
    """Both families' mangle tables as the router's own (host) iptables sees them."""
    return "".join(topo.exec(topo.router_ns, [tool, "-t", "mangle"]).stdout
                   for tool in ("iptables-save", "ip6tables-save"))


def healthz_status(topo: Topology) -> int | None:
    """HTTP status of GET /healthz from inside the router namespace, or None when nothing answers."""
    code = ("import sys, urllib.request as r, urllib.error as e\n"
            "try:\n"
            f"    print(r.urlopen('http://{API}/healthz', timeout=2).status)\n"
            "except e.HTTPError as x:\n"
            "    print(x.code)\n"
            "except OSError:\n"
            "    print('none')\n")
    out = topo.exec(topo.router_ns, [sys.executable, "-c", code]).stdout.strip()
    return None if out == "none" else int(out)


def container_state(name: str) -> str:
    return podman("inspect", "--format", "{{.State.Status}} exit={{.State.ExitCode}}", name).stdout.strip()


def wait_ready(topo: Topology, name: str, timeout: float = 45) -> tuple[float, float]:
    """Wait until imqd's rules are in the router and /healthz answers 200.

    Returns (when the rules appeared, when /healthz answered): imqd binds its queues before it installs the
    rules, so the first is when shaping resumed.
    """
    deadline = time.monotonic() + timeout
    rules_seen: float | None = None
    while time.monotonic() < deadline:
        if rules_seen is None and "NFQUEUE" in rules_dump(topo):
            rules_seen = time.monotonic()
        if rules_seen is not None and healthz_status(topo) == 200:
            return rules_seen, time.monotonic()
        if not container_state(name).startswith("running"):
            break
        time.sleep(0.05)
    logs = podman("logs", name, check=False)
    raise AssertionError(f"container {name} not ready ({container_state(name)}):\n{logs.stdout}\n{logs.stderr}\n"
                         f"rules:\n{rules_dump(topo)}")


def proc1_status(name: str) -> dict[str, str]:
    text = podman("exec", name, "cat", "/proc/1/status").stdout
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


# ---------------------------------------------------------------- tests
def test_container_shapes_and_stop_removes_rules(topology: Topology, run_container: Callable[..., str]) -> None:
    assert "NFQUEUE" not in rules_dump(topology)
    name = run_container(topology)
    wait_ready(topology, name)

    rules = rules_dump(topology)
    assert "IMQD_EGRESS" in rules and "IMQD_INGRESS" in rules
    assert "--queue-balance 0:1" in rules and "--queue-bypass" in rules, rules
    # imqd runs as PID 1, as the unprivileged image user, with CAP_NET_ADMIN and nothing else
    status = proc1_status(name)
    assert status["Uid"].split()[0] == str(IMQD_UID), status["Uid"]
    assert int(status["CapEff"], 16) == CAP_NET_ADMIN, status["CapEff"]
    assert int(status["CapBnd"], 16) == CAP_NET_ADMIN, status["CapBnd"]
    # the image's own HEALTHCHECK (python urllib against IMQD_API) agrees
    hc = podman("healthcheck", "run", name, check=False)
    assert hc.returncode == 0, f"healthcheck: {hc.stdout} {hc.stderr}"

    with topology.iperf3_server(5301):
        shaped = topology.iperf3(0, 5301, seconds=4, omit=1)["bps"]
        print(f"shaped through the container: {shaped / 1e6:.2f} Mbit/s")
        assert abs(shaped - RATE_BPS) <= 0.10 * RATE_BPS, f"{shaped / 1e6:.2f} Mbit/s through the container"

        started = time.monotonic()
        podman("stop", "-t", "20", name, timeout=60)
        took = time.monotonic() - started
        assert container_state(name) == "exited exit=0", podman("logs", name, check=False).stderr
        assert took < 15, f"podman stop took {took:.1f} s: imqd did not exit on SIGTERM"
        left = rules_dump(topology)
        assert "NFQUEUE" not in left and "IMQD" not in left and "imqd" not in left, left
        # the router forwards at full speed again: nothing of imqd is left in the path
        assert topology.iperf3(0, 5301, seconds=1)["bps"] > 20 * RATE_BPS


def test_upgrade_gap_is_short(topology: Topology, run_container: Callable[..., str]) -> None:
    """deploy/container.md's upgrade: create the new container first, then stop the old and start the new.

    The router is unshaped (rules gone, --queue-bypass semantics) only from the old container's SIGTERM until the
    new one has its rules in and its workers answering; that window must stay a few seconds.
    """
    old = run_container(topology)
    wait_ready(topology, old)
    new = run_container(topology, create_only=True)
    started = time.monotonic()
    podman("stop", "-t", "20", old, timeout=60)
    podman("start", new)
    rules_at, ready_at = wait_ready(topology, new)
    gap, ready = rules_at - started, ready_at - started
    assert gap < 10, f"shaping gap during the upgrade: {gap:.1f} s"
    print(f"upgrade: unshaped for at most {gap:.2f} s, API healthy after {ready:.2f} s")


def test_file_capabilities_work_without_ambient_caps(image: str) -> None:
    """Docker gives a non-root user no ambient capabilities (podman does), so the image relies on file
    capabilities: imqd's interpreter and iptables get CAP_NET_ADMIN from the bounding set, nothing else does.

    Simulated here by clearing the ambient and inheritable sets with setpriv before exec.
    """
    script = (
        "set -e\n"
        "caps() { awk '/^CapEff/ {print $2}' /proc/self/status; }\n"
        "echo shell=$(caps)\n"
        "echo imqd_python=$(/opt/imqd/bin/python3 -c 'print(open(\"/proc/self/status\").read().split(\"CapEff:\")[1].split()[0])')\n"
        "echo system_python=$(/usr/bin/python3 -c 'print(open(\"/proc/self/status\").read().split(\"CapEff:\")[1].split()[0])')\n"
        "iptables -t mangle -A POSTROUTING -j NFQUEUE --queue-num 7 --queue-bypass\n"
        "echo rule=$(iptables -t mangle -S POSTROUTING | grep -c NFQUEUE)\n"
    )
    res = podman("run", "--rm", "--network", "none", "--cap-drop", "ALL", "--cap-add", "NET_ADMIN",
                 "--health-interval", "disable", "--entrypoint", "setpriv", image,
                 "--inh-caps=-all", "--ambient-caps=-all", "--", "sh", "-c", script)
    got = dict(line.split("=", 1) for line in res.stdout.split())
    assert int(got["shell"], 16) == 0  # the control: without file caps a non-root process has nothing
    assert int(got["imqd_python"], 16) == CAP_NET_ADMIN
    assert int(got["system_python"], 16) == 0
    assert got["rule"] == "1"

    # without NET_ADMIN the privileged interpreter refuses to start (the kernel cannot grant its file caps)
    denied = podman("run", "--rm", "--network", "none", "--cap-drop", "ALL", "--health-interval", "disable",
                    image, check=False)
    assert denied.returncode != 0
    assert "operation not permitted" in (denied.stdout + denied.stderr).lower()
