"""Where the kernel reference shapes: the tc commands KernelHtb issues, recorded on a topology that is not started."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

import pytest

from bench.systems import DOWN, UP, KernelHtb
from imqd.netns import Topology


class RecordingTopology(Topology):
    """Names and addresses of a real Topology; `exec` records the commands instead of running them."""

    def __init__(self, clients: int = 1) -> None:
        super().__init__(clients=clients, extra_client_addrs=7, prefix="unit", ipv6=False)
        self.calls: list[tuple[str, list[str]]] = []

    def exec(self, ns: str, argv: Sequence[str], *, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
        self.calls.append((ns, list(argv)))
        return subprocess.CompletedProcess(list(argv), 0, "", "")


def tc_devices(topo: RecordingTopology) -> set[str]:
    return {argv[argv.index("dev") + 1] for _, argv in topo.calls if "dev" in argv}


def test_download_is_shaped_on_the_lan_egress_after_ip_rcv_not_on_an_ifb_at_the_wan_ingress() -> None:
    topo = RecordingTopology()
    htb = KernelHtb(topo)
    htb.set_rate(DOWN, 1_000_000)
    lan = topo.clients[0].router_iface
    assert {ns for ns, _ in topo.calls} == {topo.router_ns}
    assert tc_devices(topo) == {lan}
    flat = [" ".join(argv) for _, argv in topo.calls]
    assert not [c for c in flat if "ingress" in c or "ifb" in c or "mirred" in c]
    assert f"tc qdisc replace dev {lan} root handle 1: htb default 1" in flat
    assert any(c.startswith(f"tc class replace dev {lan} parent 1: classid 1:1 htb rate 1000000") for c in flat)
    assert flat[-1] == f"tc qdisc replace dev {lan} parent 1:1 handle 10: pfifo limit 1000"
    topo.calls.clear()
    htb.stop()
    assert tc_devices(topo) == {lan}


def test_upload_is_shaped_on_the_wan_egress() -> None:
    topo = RecordingTopology()
    KernelHtb(topo, leaf="fq_codel").set_rate(UP, 5_000_000)
    assert tc_devices(topo) == {topo.wan_iface}
    assert topo.calls[-1][1][-1] == "fq_codel"


@pytest.mark.parametrize("clients, direction, message", [
    (2, DOWN, "expected a topology with one client, got 2"),
    (1, "sideways", "direction: expected 'upload' or 'download', got 'sideways'"),
])
def test_what_it_cannot_shape_is_refused_before_any_command(clients: int, direction: str, message: str) -> None:
    topo = RecordingTopology(clients)
    with pytest.raises(ValueError, match=message):
        KernelHtb(topo).set_rate(direction, 1_000_000)
    assert topo.calls == []


def test_the_same_class_as_imqd_writes_imqds_default_burst_out() -> None:
    from imqd.config import default_burst

    topo = RecordingTopology()
    KernelHtb(topo, burst="imqd").set_rate(UP, 100_000_000)
    cls = next(argv for _, argv in topo.calls if argv[1:3] == ["class", "replace"])
    size = str(default_burst(100_000_000))
    assert size == "126600" and cls[cls.index("burst") + 1] == size and cls[cls.index("cburst") + 1] == size
    topo.calls.clear()
    KernelHtb(topo).set_rate(UP, 100_000_000)  # tc's default: no burst given
    assert not [argv for _, argv in topo.calls if "burst" in argv]
    with pytest.raises(ValueError, match="burst: expected 'tc' or 'imqd', got 'big'"):
        KernelHtb(topo, burst="big")
