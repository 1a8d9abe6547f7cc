"""imqd.cidr's fast reading of prefixes is held to ipaddress, its reference: same results, same refusals."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imqd.cidr import cidr_span, net_bits, normal_cidr

octet = st.one_of(st.integers(0, 255).map(str), st.sampled_from(["00", "01", "256", "1a", "", "0x1", " 1"]))
v4 = st.builds(lambda a, b, c, d: f"{a}.{b}.{c}.{d}", octet, octet, octet, octet)
v6 = st.one_of(st.ip_addresses(v=6).map(str), st.sampled_from(["::ffff:1.2.3.4", "fe80::1%eth0", "1::2::3", ":::"]))
plen = st.one_of(st.none(), st.integers(0, 130).map(str), st.sampled_from(["00", "033", "", "x", "255.255.0.0",
                                                                          "0.0.0.255", "-1"]))
texts = st.builds(lambda a, p: a if p is None else f"{a}/{p}", st.one_of(v4, v6, st.text(max_size=12)), plen)


def reference(text: str, strict: bool) -> str | type[ValueError]:
    try:
        return str(ipaddress.ip_network(text, strict=strict))
    except ValueError:
        return ValueError


@given(texts, st.booleans())
def test_normal_cidr_reads_what_ipaddress_reads(text: str, strict: bool) -> None:
    want = reference(text, strict)
    if want is ValueError:
        with pytest.raises(ValueError):
            normal_cidr(text, strict=strict)
    else:
        assert normal_cidr(text, strict=strict) == want


@given(texts)
def test_net_bits_and_span_agree_with_ipaddress(text: str) -> None:
    if reference(text, False) is ValueError:
        return
    n = ipaddress.ip_network(text, strict=False)
    assert net_bits(text) == (n.version, int(n.network_address), int(n.netmask))
    assert cidr_span(text) == (n.version, int(n.network_address), int(n.broadcast_address), n.prefixlen)


def test_any_is_zero() -> None:
    assert net_bits(None) == (0, 0, 0)


def test_a_host_address_with_host_bits_is_refused_only_when_strict() -> None:
    assert normal_cidr("198.18.1.7/24") == "198.18.1.0/24"
    with pytest.raises(ValueError, match="host bits set"):
        normal_cidr("198.18.1.7/24", strict=True)
