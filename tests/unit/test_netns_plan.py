"""A lab's plan without root: names fit IFNAMSIZ and carry the prefix, addresses stay in the benchmarking ranges."""

from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from imqd.netns_links import sysctl_settings
from imqd.netns_plan import IFNAMSIZ, MAX_CLIENTS, MAX_EXTRA_ADDRS, LabPlan, make_prefix

BENCH4 = ipaddress.ip_network("198.18.0.0/15")
BENCH6 = ipaddress.ip_network("2001:2::/48")
prefixes = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_lowercase),
    st.text(string.ascii_lowercase + string.digits, max_size=10),
)


@settings(deadline=None)  # the largest lab checks ~26,000 addresses
@given(
    clients=st.integers(1, MAX_CLIENTS),
    extra=st.integers(0, 3),  # a few; the most a plan allows is the explicit example
    prefix=prefixes,
    masquerade=st.booleans(),
    ipv6=st.booleans(),
)
@example(clients=MAX_CLIENTS, extra=MAX_EXTRA_ADDRS, prefix="abcdefghijk", masquerade=True, ipv6=True)
def test_names_and_addresses_of_any_valid_plan(clients: int, extra: int, prefix: str, masquerade: bool,
                                              ipv6: bool) -> None:
    plan = LabPlan(clients, masquerade=masquerade, extra_client_addrs=extra, prefix=prefix, ipv6=ipv6)
    assert (plan.prefix, plan.masquerade, plan.ipv6, len(plan.clients)) == (prefix, masquerade, ipv6, clients)
    namespaces = plan.namespaces
    assert len(set(namespaces)) == clients + 2 and all(ns.startswith(prefix + "-") for ns in namespaces)
    assert namespaces[-2:] == [plan.router_ns, plan.server_ns]
    ifaces = [plan.wan_iface, plan.server_iface, *(i for c in plan.clients for i in (c.iface, c.router_iface))]
    assert len(set(ifaces)) == len(ifaces)
    assert all(i.startswith(prefix) and len(i) <= IFNAMSIZ for i in ifaces)
    hosts = [a for c in plan.clients for a in c.addrs4 + c.addrs6]
    routers = [a for c in plan.clients for a in (c.gw4, c.gw6)] + [plan.router_wan_addr4, plan.router_wan_addr6]
    every = hosts + routers + [plan.server_addr4, plan.server_addr6]
    assert len(set(every)) == len(every)
    for a in every:
        ip = ipaddress.ip_address(a)
        assert ip in (BENCH4 if ip.version == 4 else BENCH6), a
    for c in plan.clients:
        assert len(c.addrs4) == len(c.addrs6) == extra + 1
        assert (c.addr4, c.addr6) == (c.addrs4[0], c.addrs6[0])
        assert all(ipaddress.ip_address(a) in ipaddress.ip_network(f"{c.gw4}/24", strict=False) for a in c.addrs4)
        assert all(ipaddress.ip_address(a) in ipaddress.ip_network(f"{c.gw6}/64", strict=False) for a in c.addrs6)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"clients": 0}, "clients"),
        ({"clients": MAX_CLIENTS + 1}, "clients"),
        ({"clients": True}, "clients"),
        ({"extra_client_addrs": -1}, "extra_client_addrs"),
        ({"extra_client_addrs": MAX_EXTRA_ADDRS + 1}, "extra_client_addrs"),
        ({"prefix": "Bad-Name"}, "prefix"),
        ({"prefix": "abcdefghijkl"}, "prefix"),
        ({"prefix": ""}, "prefix"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        LabPlan(**kwargs)


def test_default_prefixes_are_valid_and_distinct() -> None:
    made = {LabPlan().prefix for _ in range(3)} | {make_prefix()}
    assert len(made) == 4


@pytest.mark.parametrize("ipv6", [True, False])
def test_sysctls_forward_only_in_the_router_and_v6_only_with_ipv6(ipv6: bool) -> None:
    plan = LabPlan(2, prefix="t", ipv6=ipv6)
    settings = dict(sysctl_settings(plan))
    assert list(settings) == plan.namespaces
    for ns, values in settings.items():
        assert "net.ipv4.conf.default.rp_filter=0" in values
        assert ("net.ipv4.ip_forward=1" in values) == (ns == plan.router_ns)
        assert any(v.startswith("net.ipv6.") for v in values) == ipv6


def test_made_prefixes_stay_valid_and_distinct_over_many_labs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imqd.netns_plan.os.getpid", lambda: 99_999)
    made = [make_prefix() for _ in range(1296)]
    assert len(set(made)) == len(made)
    for prefix in made:
        LabPlan(prefix=prefix)  # raises ValueError for a prefix it cannot use
