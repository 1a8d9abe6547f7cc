"""Operator mistakes end in one clear line and change nothing: no rule installed, no worker left running."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from imqd.netns import Topology

pytestmark = pytest.mark.netns

BAD_CONFIGS = {
    "unknown parent": ([{"name": "a", "rate": "1mbit", "parent": "nope"}], ("classes.a.parent", "unknown parent")),
    "cycle": ([{"name": "a", "rate": "1mbit", "parent": "b"}, {"name": "b", "rate": "1mbit", "parent": "a"}],
              ("cycle",)),
    "ceil below rate": ([{"name": "voip", "rate": "2mbit", "ceil": "1mbit"}], ("classes.voip.ceil",)),
    "bad cidr": ([{"name": "a", "rate": "1mbit", "match": {"src": "198.18.0.0/33"}}], ("classes.a.match.src",)),
    "bad unit": ([{"name": "a", "rate": "5mbits"}], ("classes.a.rate",)),
    "duplicate": ([{"name": "a", "rate": "1mbit"}, {"name": "a", "rate": "2mbit"}], ("'a'", "duplicate")),
}


def imqd(topo: Topology, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return topo.exec(topo.router_ns, [sys.executable, "-m", "imqd", *args], check=False, timeout=timeout)


def no_imqd_rules(topo: Topology) -> bool:
    out = topo.exec(topo.router_ns, ["iptables-save"]).stdout
    return "NFQUEUE" not in out and "IMQD" not in out


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_invalid_config_stops_run_before_rules_or_workers(topology: Topology, tmp_path: Path, case: str) -> None:
    classes, words = BAD_CONFIGS[case]
    cfg = tmp_path / "imqd.yaml"
    cfg.write_text(yaml.safe_dump({"classes": classes}))
    res = imqd(topology, "run", "--queues", "0:1", "--config", str(cfg), "--apply-rules", "--api", "none")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    first = res.stderr.strip().splitlines()[0]
    for word in words:
        assert word.lower() in res.stderr.lower(), (word, res.stderr)
    assert first.startswith("imqd: invalid config")
    assert no_imqd_rules(topology)
    assert "nfnetlink_queue" not in res.stderr
    queues = topology.exec(topology.router_ns, ["cat", "/proc/net/netfilter/nfnetlink_queue"], check=False)
    assert queues.stdout.strip() == "", "no worker may have bound a queue"


def test_queue_bound_by_another_process_is_one_line(topology: Topology) -> None:
    holder = topology.popen(topology.router_ns, [sys.executable, "-c", (
        "import time\nfrom netfilterqueue import NetfilterQueue\n"
        "q = NetfilterQueue(); q.bind(3, lambda p: p.accept()); print('bound', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "bound"
    try:
        t0 = time.monotonic()
        res = imqd(topology, "run", "--queues", "2:3", "--api", "none", "--apply-rules")
        assert time.monotonic() - t0 < 20
    finally:
        holder.kill()
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines == ["imqd: queue 3: already bound by another process (is another imqd running?)"], res.stderr
    assert no_imqd_rules(topology)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_missing_cap_net_admin_is_one_line(topology: Topology) -> None:
    res = topology.exec(topology.router_ns, ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin",
                                             sys.executable, "-m", "imqd", "run", "--queues", "0", "--api", "none"],
                        check=False, timeout=30)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "CAP_NET_ADMIN" in lines[0], res.stderr


def test_bad_flags_name_the_flag(topology: Topology) -> None:
    for args, word in ((["run", "--queues", "3:1"], "--queues"), (["run", "--queues", "0", "--api", "x"], "--api"),
                       (["rules", "apply", "--queues", "0:1", "--in-iface", "bad name!"], "in_iface"),
                       (["run", "--queues", "0", "--max-len", "0", "--api", "none"], "--max-len"),
                       (["run", "--queues", "0", "--max-held", "0", "--api", "none"], "--max-held"),
                       (["run", "--queues", "0", "--idle-tick", "5", "--api", "none"], "--idle-tick"),
                       (["run", "--queues", "0", "--cpu-latency", "-1", "--api", "none"], "--cpu-latency"),
                       (["run", "--queues", "0", "--realtime", "100", "--api", "none"], "--realtime")):
        res = imqd(topology, *args)
        assert res.returncode in (1, 2), (args, res.stderr)
        assert word.replace("_", "").lower() in res.stderr.replace("_", "").lower(), (args, res.stderr)
        assert "Traceback" not in res.stderr
