"""Issue 17 in real traffic: 1,000 subscribers imported from a ShapedDevices.csv, one plan changed by a
re-import while another subscriber downloads: the new plan holds, the other download never stalls."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from imqd.lab import ImqdInstance

pytestmark = pytest.mark.netns

GOODPUT_FACTOR = 1448 / 1514  # TCP payload per charged byte with overhead 14
HEADER = ("Circuit ID,Circuit Name,Device ID,Device Name,Parent Node,MAC,IPv4,IPv6,Download Min Mbps,"
          "Upload Min Mbps,Download Max Mbps,Upload Max Mbps,Comment")
SUBSCRIBERS = 1000
B_SECONDS = 14


def table(a: str, b: str, a_max: int) -> str:
    """1,000 circuits: A and B are the test client's two addresses, the others addresses nobody uses."""
    rows = [f"alice,Alice,a1,router,site1,,{a},,1,1,{a_max},10,",
            f"bob,Bob,b1,router,site1,,{b},,1,1,8,10,"]
    rows += [f"c{i},Circuit {i},d{i},router,site1,,198.18.{100 + i // 250}.{i % 250 + 1},,1,1,50,10,"
             for i in range(SUBSCRIBERS - 2)]
    return "\n".join([HEADER, *rows]) + "\n"


def import_table(topo: Any, imqd: ImqdInstance, path: Path) -> str:
    """``imqd import`` in the router namespace, as an operator would run it."""
    res = topo.exec(topo.router_ns, [sys.executable, "-m", "imqd.cli", "import", str(path), "--api", imqd.api],
                    check=False, timeout=60)
    assert res.returncode == 0, res.stderr + res.stdout
    return res.stdout


def test_reimport_changes_one_plan_and_never_interrupts_another_download(topology_factory: Any,
                                                                         tmp_path: Path) -> None:
    topo = topology_factory(clients=1, extra_client_addrs=1)
    a, b = topo.clients[0].addrs4[:2]
    tree = {"overhead": 14, "classes": [{"name": "site1-down", "direction": "ingress", "rate": "2gbit"},
                                        {"name": "site1-up", "direction": "egress", "rate": "2gbit"}]}
    csv_path = tmp_path / "ShapedDevices.csv"
    csv_path.write_text(table(a, b, a_max=10))
    results: dict[str, Any] = {}

    def download(name: str, port: int, addr: str, seconds: float) -> None:
        results[name] = topo.iperf3(0, port=port, bind=addr, reverse=True, seconds=seconds)

    with topo.iperf3_server(5201), topo.iperf3_server(5202), topo.iperf3_server(5203), \
            ImqdInstance(topo, tree, queues="0:1") as imqd:
        out = import_table(topo, imqd, csv_path)
        assert "imported 1000 circuits (1000 devices): 2000 classes added" in out, out
        bob = threading.Thread(target=download, args=("bob", 5201, b, B_SECONDS))
        bob.start()
        time.sleep(1.0)
        download("alice_before", 5202, a, 4)
        csv_path.write_text(table(a, b, a_max=20))  # alice's plan: 10 -> 20 Mbit/s
        t0 = time.monotonic()
        out = import_table(topo, imqd, csv_path)
        import_s = time.monotonic() - t0
        assert "0 classes added, 1 changed, 0 removed, 2001 unchanged" in out, out
        download("alice_after", 5203, a, 4)
        bob.join()
        stats = imqd.stats()["classes"]
    assert results["alice_before"]["bps"] == pytest.approx(10e6 * GOODPUT_FACTOR, rel=0.1), results["alice_before"]
    assert results["alice_after"]["bps"] == pytest.approx(20e6 * GOODPUT_FACTOR, rel=0.1), results["alice_after"]
    intervals = [i["sum"]["bits_per_second"] for i in results["bob"]["json"]["intervals"]][1:]
    nominal = 8e6 * GOODPUT_FACTOR
    assert statistics.median(intervals) == pytest.approx(nominal, rel=0.1), intervals
    assert min(intervals) >= 0.8 * nominal, (f"bob's download stalled during the re-import ({import_s:.1f} s): "
                                             f"{[round(i / 1e6, 2) for i in intervals]} Mbit/s")
    assert stats["sub-bob-down"]["packets"] > 0 and stats["sub-alice-down"]["packets"] > 0
