"""The scale benchmarks' pure parts: subscriber addresses and configs, the kernel HTB batch, the load plan,
fairness figures, the subscriber table, the generator's per-destination counts, the receiver's snapshots."""

from __future__ import annotations

import csv
import io
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import subscribers as sub
from bench import udpgen
from bench.control_scale import control_config, window_excess
from bench.report_control_scale import early
from bench.report_scale import summarize_scale
from bench.scale import load_problem
from bench.udprecv import Snapshot, parse_snapshot
from imqd.config import parse_config
from imqd.netns import Topology


# -- addresses and configs ---------------------------------------------------------------------------------------
def test_subscriber_prefixes_are_benchmark_addresses_the_topology_does_not_use() -> None:
    bench_net = ipaddress.IPv4Network("198.18.0.0/15")
    assert sub.SUBSCRIBERS.subnet_of(bench_net) and sub.EXTRA.subnet_of(bench_net)
    assert not sub.SUBSCRIBERS.overlaps(sub.EXTRA)
    topo = Topology(clients=64, extra_client_addrs=200, prefix="unit", ipv6=False)  # not started: addresses only
    used = [ipaddress.IPv4Address(a) for c in topo.clients for a in (*c.addrs4, c.gw4)]
    used += [ipaddress.IPv4Address(topo.server_addr4), ipaddress.IPv4Address(topo.router_wan_addr4)]
    assert not any(a in sub.SUBSCRIBERS or a in sub.EXTRA for a in used)


def test_address_counts_up_from_the_prefix_and_stops_at_its_end() -> None:
    assert sub.address(0) == "198.18.128.0"
    assert sub.address(9999) == "198.18.167.15"
    assert sub.address(3, sub.EXTRA) == "198.18.192.3"
    with pytest.raises(ValueError, match="holds 16384"):
        sub.address(16384)
    with pytest.raises(ValueError):
        sub.address(-1)


def test_subscriber_config_is_valid_with_one_leaf_per_address_in_config_order() -> None:
    cfg = parse_config(sub.subscriber_config(1000, 24_000))
    leaves = [c for c in cfg.classes if c.parent == sub.PARENT]
    assert len(leaves) == 1000
    assert [c.match.dst for c in leaves[:2]] == ["198.18.128.0/32", "198.18.128.1/32"]
    assert leaves[-1].name == sub.leaf_name(999) and leaves[-1].match.dst == f"{sub.address(999)}/32"
    parent = cfg.class_by_name(sub.PARENT)
    assert parent is not None and parent.rate == 1000 * 24_000  # the plans add up to the parent
    assert cfg.overhead == sub.OVERHEAD


def test_pps_config_keeps_the_children_within_the_parent() -> None:
    top = sub.ABOVE_CAPACITY_BPS
    for n in (1, 3, 10_000):
        cfg = sub.subscriber_config(n, top // n, ceil_bps=top, parent_bps=top)
        assert sum(c["rate"] for c in cfg["classes"][1:]) <= top
    parse_config(sub.subscriber_config(3, top // 3, ceil_bps=top, parent_bps=top))
    with pytest.raises(ValueError, match="at least 1"):
        sub.subscriber_config(0, 1000)


def test_one_class_config_matches_every_subscriber() -> None:
    cfg = parse_config(sub.one_class_config(5_000_000))
    (only,) = cfg.classes
    assert only.rate == 5_000_000 and ipaddress.IPv4Network(only.match.dst) == sub.SUBSCRIBERS


def test_control_config_doubles_only_the_changed_rows_and_keeps_the_import_parents() -> None:
    cfg = control_config(200, 24_000, frozenset({5, 150}))
    rates = {c["name"]: c["rate"] for c in cfg["classes"]}
    assert rates["s5"] == rates["s150"] == 48_000
    assert sum(1 for n, r in rates.items() if n.startswith("s") and n != sub.PARENT and r == 24_000) == 198
    parsed = parse_config(cfg)
    assert parsed.class_by_name("site-down").direction == "ingress"
    assert parsed.class_by_name("site-up").direction == "egress"


# -- kernel HTB reference --------------------------------------------------------------------------------------
def test_kernel_batch_has_a_class_a_leaf_qdisc_and_a_hashed_filter_per_subscriber() -> None:
    lines = sub.kernel_htb_batch("bw", 300, 40_000)
    classes = [ln for ln in lines if ln.startswith("class add") and "parent 1:1 " in ln]
    qdiscs = [ln for ln in lines if ln.startswith("qdisc add") and "pfifo limit 1000" in ln]
    filters = [ln for ln in lines if " ht 2:" in ln]
    assert len(classes) == len(qdiscs) == len(filters) == 300
    assert lines[0] == "qdisc add dev bw root handle 1: htb"
    assert "rate 12000000bit" in lines[1]  # the parent: the plans' sum
    # subscriber 299 = 198.18.129.43: bucket 0x2b (its last byte), flowid = its class 1:(299 + 0x10)
    assert filters[-1] == ("filter add dev bw parent 1: prio 1 protocol ip u32 ht 2:2b: match ip dst "
                           "198.18.129.43/32 flowid 1:13b")
    assert "classid 1:13b htb" in classes[-1]
    assert any("divisor 256" in ln for ln in lines) and any("hashkey mask 0x000000ff at 16 link 2:" in ln
                                                            for ln in lines)


def test_kernel_batch_writes_out_imqds_default_burst_and_quantum() -> None:
    leaf = parse_config({"classes": [{"name": "x", "rate": 40_000}]}).classes[0]
    line = next(ln for ln in sub.kernel_htb_batch("bw", 1, 40_000) if "classid 1:10 " in ln)
    assert f"burst {leaf.effective_burst} cburst {leaf.effective_cburst} quantum {leaf.effective_quantum}" in line
    with pytest.raises(ValueError, match="leaves"):
        sub.kernel_htb_batch("bw", 0, 1000)


# -- the backlogged load -------------------------------------------------------------------------------------
def test_backlog_plan_offers_twice_the_plans_within_the_share_of_capacity() -> None:
    plan = sub.backlog_plan(1000, 200_000, payload=1000, load_share=0.5, min_packets=100, max_window_s=30,
                            min_warm_s=2)
    assert plan.offered_pps == pytest.approx(2 * 1000 * plan.plan_pps)
    assert plan.offered_pps <= 0.5 * 200_000
    assert plan.offered_pps == pytest.approx(0.5 * 200_000, rel=0.01)
    assert plan.rate_bps == int(50 * sub.charged_bytes(1000) * 8)  # 50 datagrams/s each
    assert plan.window_s == pytest.approx(2.0, rel=0.01)  # 100 datagrams at 50/s
    assert plan.packets_each == pytest.approx(100, rel=0.01)
    assert plan.warm_s == 2


@given(st.integers(1, 16384), st.floats(1_000, 1e7), st.floats(0.05, 1.0), st.integers(1, 500),
       st.floats(0.5, 60), st.sampled_from([18, 200, 1000, 1400]))
def test_backlog_plan_properties(n: int, capacity: float, share: float, packets: int, max_window: float,
                                 payload: int) -> None:
    plan = sub.backlog_plan(n, capacity, payload=payload, load_share=share, min_packets=packets,
                            max_window_s=max_window, min_warm_s=1.0)
    assert plan.rate_bps >= 8
    if plan.rate_bps > 8:  # not the floor: the plans are half of the offered share, rounded down
        assert plan.offered_pps <= share * capacity * 1.0001
    assert plan.window_s <= max_window + 0.001
    assert plan.packets_each >= min(packets, plan.plan_pps * max_window) * 0.99
    # the warm-up outlasts an initial burst (one MTU + 10 ms of rate) draining at the plan's rate
    from imqd.config import default_burst

    assert plan.warm_s >= min(1.0, default_burst(plan.rate_bps) * 8 / plan.rate_bps)


def test_backlog_plan_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="backlog_plan"):
        sub.backlog_plan(0, 1000, payload=100, load_share=0.5, min_packets=10, max_window_s=1, min_warm_s=1)
    with pytest.raises(ValueError, match="backlog_plan"):
        sub.backlog_plan(10, 1000, payload=100, load_share=1.5, min_packets=10, max_window_s=1, min_warm_s=1)


# -- fairness --------------------------------------------------------------------------------------------------
def test_fairness_of_equal_and_of_skewed_delivery() -> None:
    assert sub.fairness([100, 100, 100], 100) == {"of_plans": 1.0, "worst": 1.0, "best": 1.0, "jain": 1.0}
    f = sub.fairness([200, 0, 0, 0], 100)
    assert f["of_plans"] == 0.5 and f["worst"] == 0.0 and f["best"] == 2.0
    assert f["jain"] == pytest.approx(0.25)  # one of four takes everything: 1/n
    assert sub.fairness([90, 110], 100)["jain"] == pytest.approx(2.0 ** 2 / (2 * (0.9 ** 2 + 1.1 ** 2)))
    with pytest.raises(ValueError):
        sub.fairness([], 10)


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=200), st.floats(0.1, 100))
def test_jain_is_between_one_over_n_and_one_and_scale_free(values: list[float], k: float) -> None:
    j = sub.jain(values)
    n = len(values)
    if any(values):
        assert 1 / n - 1e-9 <= j <= 1 + 1e-9
        assert sub.jain([v * k for v in values]) == pytest.approx(j)
    else:
        assert j == 1.0


def test_least_squares_slope() -> None:
    assert sub.least_squares_slope([1, 100, 1000, 10000], [5 + 2 * x for x in (1, 100, 1000, 10000)]) == \
        pytest.approx(2.0)
    assert sub.least_squares_slope([5], [1]) is None
    assert sub.least_squares_slope([5, 5], [1, 2]) is None
    with pytest.raises(ValueError):
        sub.least_squares_slope([1, 2], [1])


# -- bulk changes -------------------------------------------------------------------------------------------------
@given(st.integers(1, 20000))
def test_spread_picks_one_percent_evenly_inside_the_range(n: int) -> None:
    rows = sub.spread(n)
    assert len(rows) == max(1, n // 100)
    assert rows == sorted(set(rows)) and all(0 <= r < n for r in rows)
    if n >= 100:
        assert rows[0] >= 40  # the first stretch's lower part stays unchanged (traffic runs through it)


def test_shaped_devices_csv_has_libreqos_columns_one_row_per_circuit_and_doubles_changed_rows() -> None:
    text = sub.shaped_devices_csv(200, first=10, changed=[3])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["Circuit ID", "Circuit Name", "Device ID", "Device Name", "Parent Node", "MAC", "IPv4",
                             "IPv6", "Download Min Mbps", "Upload Min Mbps", "Download Max Mbps", "Upload Max Mbps",
                             "Comment"]
    assert len(rows) == 200 and len({r["IPv4"] for r in rows}) == 200
    assert rows[0]["IPv4"] == sub.address(10, sub.EXTRA) and rows[0]["Parent Node"] == "site"
    assert (rows[0]["Download Min Mbps"], rows[0]["Download Max Mbps"]) == ("1", "10")
    assert (rows[3]["Download Min Mbps"], rows[3]["Upload Max Mbps"]) == ("2", "10")


def test_shaped_devices_csv_imports_where_imqd_reads_libreqos_tables() -> None:
    subscribers = pytest.importorskip("imqd.subscribers", reason="this imqd has no CSV import yet")
    circuits = subscribers.read_circuits(sub.shaped_devices_csv(50, changed=[7]))
    assert len(circuits) == 50


# -- generator and receiver ---------------------------------------------------------------------------------------
@given(st.integers(1, 500), st.integers(0, 10**6))
def test_sent_to_splits_a_round_robin_exactly(destinations: int, sent: int) -> None:
    each = [udpgen.sent_to(i, sent, destinations) for i in range(destinations)]
    assert sum(each) == sent
    assert all(e in (sent // destinations, sent // destinations + 1) for e in each)
    assert each == sorted(each, reverse=True)  # the round robin starts at the first destination
    with pytest.raises(ValueError):
        udpgen.sent_to(destinations, sent, destinations)


def test_generator_argv_with_many_destinations() -> None:
    argv = udpgen.python_argv("198.18.128.0", 9001, 1000, 2, pps=500, sources=["198.18.10.2"], destinations=10000)
    assert argv[-7:] == ["198.18.128.0+10000", "9001", "1000", "2", "500", "0", "198.18.10.2"]
    assert udpgen.python_argv("198.19.0.2", 9, 18, 1, sources=["198.18.10.2"])[-7] == "198.19.0.2"
    with pytest.raises(ValueError, match="destinations"):
        udpgen.python_argv("198.18.128.0", 9, 18, 1, sources=["198.18.10.2"], destinations=0)
    with pytest.raises(ValueError, match="past 255"):
        udpgen.python_argv("255.255.255.250", 9, 18, 1, sources=["198.18.10.2"], destinations=10)


def test_parse_snapshot() -> None:
    snap = parse_snapshot('{"t": 12.5, "total": 7, "other": 1, "rcvbuf_errors": 0, "counts": [2, 4]}\n', 2)
    assert snap == Snapshot(12.5, 7, 1, 0, (2, 4))
    with pytest.raises(ValueError, match="3 counts"):
        parse_snapshot('{"t": 1, "total": 0, "other": 0, "rcvbuf_errors": 0, "counts": [0, 0, 0]}', 2)
    with pytest.raises(ValueError, match="not a JSON"):
        parse_snapshot("udprecv: bind: Address in use", 2)
    with pytest.raises(ValueError, match="without"):
        parse_snapshot('{"t": 1}', 2)


def test_window_excess_and_early_release() -> None:
    a = Snapshot(10.0, 0, 0, 0, (0, 0, 0, 100))
    b = Snapshot(12.0, 0, 0, 0, (100, 101, 127, 200))  # plan 50/s: 100 each expected in 2 s
    excess = window_excess(a, b, range(0, 4), 50.0)
    assert excess == [0.0, 1.0, 27.0, 0.0]
    assert early(excess) == 25.0  # the +1 is timing (within the slack); 27 extra is a released burst
    assert early([-3.0, 2.0]) == 0.0


def _one_class_record(offered_of_plans: float, of_plans: float, n: int = 10) -> dict:
    plan = sub.backlog_plan(n, 10_000, payload=1000, load_share=0.5, min_packets=25, max_window_s=3.0,
                            min_warm_s=1.0)
    expected = plan.plan_pps * plan.window_s
    return {"rep": 0, "system": "imqd x2 one class", "subscribers": n, "plan": plan.as_dict(), "window_s": plan.window_s,
            "expected_each": expected, "delivered": [round(of_plans * expected)] * n,
            "sent": round(offered_of_plans * n * plan.plan_pps * 4.0), "gen_seconds": 4.0,
            "nfqueue_drops": {"queue_dropped": 0, "user_dropped": 0}, "shape": "one class", "load_share": 0.5}


def test_a_load_is_within_the_machine_only_if_one_class_carries_it_and_the_generator_offers_twice() -> None:
    assert load_problem(_one_class_record(2.0, 1.0)) is None
    assert "generator offered 1.50" in (load_problem(_one_class_record(1.5, 1.0)) or "")
    assert "one class delivered 0.8" in (load_problem(_one_class_record(2.0, 0.8)) or "")
    assert load_problem(_one_class_record(2.0, 1.0) | {"gen_seconds": 0}) == "no traffic counted"


def test_the_report_says_when_a_load_stepped_down_or_stayed_beyond_the_machine() -> None:
    rec = _one_class_record(2.0, 1.0) | {"descents": [{"load_share": 0.5, "problem": "one class delivered 0.800"}],
                                         "load_share": 0.3, "load_problem": None}
    notes = summarize_scale({"pps": [], "backlog": [rec]})["load_notes"]
    assert notes == ["repetition 1, 10 subscribers: the load 0.5 x the 1-class packets/s was beyond this machine "
                     "(one class delivered 0.800); it stepped down"]
    rec["load_problem"] = "one class delivered 0.700"
    assert "its figures measure the machine" in summarize_scale({"pps": [], "backlog": [rec]})["load_notes"][-1]


def test_class_counts_run_rising_then_falling_and_the_backlog_is_sized_from_one_class() -> None:
    """Each class count runs once early and once late over two repetitions (a search's result drifts with its
    place in a sequence); records stay in config order and the backlog runs get the 1-class packets/s."""
    from bench.scale import FULL_SCALE, Scale

    scale = Scale.__new__(Scale)
    scale.p = FULL_SCALE
    ran: list[int] = []
    sized: list[float] = []
    scale.pps_at = lambda n, rep: ran.append(n) or {"rep": rep, "classes": n, "pps": 1000.0 / n}  # type: ignore
    scale.backlog_at = lambda n, capacity, rep: sized.append(capacity) or []  # type: ignore
    first, second = scale.repetition(0), scale.repetition(1)
    counts = list(FULL_SCALE.classes)
    assert ran == counts + counts[::-1]
    assert [r["classes"] for r in first["pps"]] == counts == [r["classes"] for r in second["pps"]]
    assert [r["position"] for r in second["pps"]] == list(range(len(counts)))[::-1]
    assert sized == [1000.0 / counts[0]] * (2 * len(FULL_SCALE.backlog_classes))
    assert summarize_scale({"pps": first["pps"] + second["pps"]})["alternating"]
