"""A namespace lab's plumbing: the namespaces, veth pairs, addresses, routes and sysctls of a plan.

The veth pairs are created inside the router namespace with the peer placed directly in the client/server
namespace, so nothing ever appears in the host namespace.  Netlink (pyroute2) rather than ``ip`` commands:
one socket per namespace instead of a process per address.
"""

from __future__ import annotations

from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pnetns

from imqd.netns_plan import LabPlan
from imqd.netns_tools import TopologyError

__all__ = ["add_ifb", "create_namespaces", "link_lab", "sysctl_settings"]

_IFA_F_NODAD = 0x02  # IPv6 address usable at once (no duplicate address detection delay)


def create_namespaces(namespaces: list[str], made: list[str]) -> None:
    """Create each namespace, recording it in `made` first: a half-made one is still cleaned up."""
    for ns in namespaces:
        made.append(ns)
        try:
            pnetns.create(ns)
        except OSError as e:
            raise TopologyError(f"cannot create network namespace {ns!r}: {e}") from e


def sysctl_settings(plan: LabPlan) -> list[tuple[str, list[str]]]:
    """Per namespace: rp_filter off everywhere (set on default before interfaces exist, so they inherit it),
    forwarding on in the router."""
    common = ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
    if plan.ipv6:
        common += ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
    settings = []
    for ns in plan.namespaces:
        extra = []
        if ns == plan.router_ns:
            extra = ["net.ipv4.ip_forward=1"] + (["net.ipv6.conf.all.forwarding=1"] if plan.ipv6 else [])
        settings.append((ns, [*common, *extra]))
    return settings


def link_lab(plan: LabPlan) -> None:
    """The veth pairs with their addresses, loopbacks up, the default routes (none on the server with NAT)."""
    with IPRoute(netns=plan.router_ns) as ipr:
        _up(ipr, "lo")
        for c in plan.clients:
            ipr.link("add", ifname=c.router_iface, kind="veth", peer={"ifname": c.iface, "net_ns_fd": c.ns})
            _addr(ipr, c.router_iface, [c.gw4], [c.gw6], plan.ipv6)
        peer = {"ifname": plan.server_iface, "net_ns_fd": plan.server_ns}
        ipr.link("add", ifname=plan.wan_iface, kind="veth", peer=peer)
        _addr(ipr, plan.wan_iface, [plan.router_wan_addr4], [plan.router_wan_addr6], plan.ipv6)
    for c in plan.clients:
        with IPRoute(netns=c.ns) as ipr:
            _up(ipr, "lo")
            _addr(ipr, c.iface, list(c.addrs4), list(c.addrs6), plan.ipv6)
            _default_route(ipr, c.gw4, c.gw6, plan.ipv6)
    with IPRoute(netns=plan.server_ns) as ipr:
        _up(ipr, "lo")
        _addr(ipr, plan.server_iface, [plan.server_addr4], [plan.server_addr6], plan.ipv6)
        if not plan.masquerade:  # with NAT the server must not be able to reach the clients directly
            _default_route(ipr, plan.router_wan_addr4, plan.router_wan_addr6, plan.ipv6)


def add_ifb(ns: str, ifb: str) -> None:
    """An ifb device `ifb` in `ns`, up (the target of an ingress redirect)."""
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname=ifb, kind="ifb")
        _up(ipr, ifb)


def _up(ipr: Any, ifname: str) -> int:
    idx = ipr.link_lookup(ifname=ifname)[0]
    ipr.link("set", index=idx, state="up")
    return idx


def _addr(ipr: Any, ifname: str, v4: list[str], v6: list[str], ipv6: bool, plen4: int = 24, plen6: int = 64) -> None:
    idx = ipr.link_lookup(ifname=ifname)[0]
    for a in v4:
        ipr.addr("add", index=idx, address=a, prefixlen=plen4)
    if ipv6:
        # Linux prefers the newest of equally good IPv6 sources: add the primary last so it is the default.
        for a in reversed(v6):
            ipr.addr("add", index=idx, address=a, prefixlen=plen6, flags=_IFA_F_NODAD)
    ipr.link("set", index=idx, state="up")


def _default_route(ipr: Any, gw4: str, gw6: str, ipv6: bool) -> None:
    ipr.route("add", dst="default", gateway=gw4)
    if ipv6:
        ipr.route("add", dst="default", gateway=gw6, family=10)
