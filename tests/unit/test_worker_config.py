"""The configuration message a worker receives (imqd.worker_config): a worker fed it ends in the state the
validated Config describes, and a malformed one is refused with a clear message and changes nothing.

The reference is computed from the ``Config`` itself (``ClassSpec.effective_*``, ``MatchSpec.alternatives``
and ``Match.matches``, first match in config order), not from the compact form.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, IPv6
from shaper_state import sample_packets, shaper_state

from imqd.classifier import Match
from imqd.config import Config, parse_config
from imqd.packet import parse_headers
from imqd.qdisc.htb import HTBClassParams
from imqd.queue_worker import QueueWorker, WorkerOptions
from imqd.shaper import Shaper, leaf_spec_for
from imqd.supervisor import config_message
from imqd.worker_config import Rows, Settings, WorkerConfig, WorkerDelta, worker_config, worker_delta

PARENTS = {"ingress": "down", "egress": "up"}


@st.composite
def configs(draw: Any) -> Config:
    """Valid configurations with every kind of class a worker must read: matches of every field (address
    lists of both families, ports, marks, interfaces), qdiscs, per_host, emulation, byte limits, overheads,
    defaults."""
    classes: list[dict[str, Any]] = [
        {"name": "down", "direction": "ingress", "rate": "100mbit", "ceil": "1gbit"},
        {"name": "up", "direction": "egress", "rate": "100mbit"},
    ]
    defaults: set[str] = set()
    for i in range(draw(st.integers(0, 8))):
        direction = draw(st.sampled_from(["ingress", "egress"]))
        c: dict[str, Any] = {"name": f"c{i}", "direction": direction, "parent": PARENTS[direction],
                             "rate": draw(st.sampled_from(["1mbit", "2mbit", "5mbit"])),
                             "ceil": draw(st.sampled_from([None, "10mbit", "50mbit"])),
                             "burst": draw(st.sampled_from([None, 3000])),
                             "quantum": draw(st.sampled_from([None, 1600])),
                             "prio": draw(st.integers(0, 7)),
                             "limit": draw(st.sampled_from([None, 50])),
                             "limit_bytes": draw(st.sampled_from([None, 64000])),
                             "overhead": draw(st.sampled_from([None, 0, 38]))}
        match = draw(st.sampled_from([
            None, {}, {"dst": f"198.18.{i}.0/24"}, {"src": [f"198.18.{i}.1", f"2001:db8:{i}::/64"]},
            {"src": f"198.18.{i}.0/25", "dst": ["198.19.0.0/16", "2001:db8:ff::/48"]},
            {"proto": "udp", "dport": "5060-5070"}, {"proto": "tcp", "sport": 80, "dst": f"198.18.{i}.7"},
            {"dscp": "ef"}, {"mark": "0x10/0xff", "dst": f"198.18.{i}.0/24"},
            {"iif" if direction == "ingress" else "oif": "eth+"}]))
        if match is not None:
            c["match"] = match
        leaf = draw(st.sampled_from(["fifo", "sfq", "fq_codel", "per_host", "delay"]))
        if leaf in ("sfq", "fq_codel"):
            c["qdisc"] = {"kind": leaf}
        elif leaf == "per_host":
            c["per_host"] = {"key": draw(st.sampled_from(["src", "dst"])), "rate": draw(st.sampled_from([0, "1mbit"]))}
        elif leaf == "delay":
            c["delay"] = "5ms"
        if direction not in defaults and draw(st.booleans()):
            c["default"] = True
            defaults.add(direction)
        classes.append({k: v for k, v in c.items() if v is not None})
    return parse_config({"overhead": draw(st.sampled_from([0, 14])), "classes": classes})


def reference_packets(config: Config) -> list[tuple[bytes, int, str | None, str | None]]:
    """Packets (with a mark and interfaces) that hit each match's every field and miss it."""
    out = []
    for p in sample_packets(config):
        out += [(p, 0, None, None), (p, 0x10, "eth0", "eth1")]
    for a in ("198.18.3.7", "198.18.0.1", "2001:db8:ff::1"):
        ip = IPv6 if ":" in a else IP
        for l4 in (UDP(sport=1000, dport=5065), TCP(sport=80, dport=443)):
            out.append((bytes(ip(dst=a, tc=184) / l4 if ip is IPv6 else ip(dst=a, tos=184) / l4), 0x10, "eth2",
                        "wlan0"))
    return out


def expected_state(config: Config, slots: dict[str, int]) -> dict[str, Any]:
    """What a worker must hold for ``config``, read from the Config alone."""
    out: dict[str, Any] = {}
    for direction in ("ingress", "egress"):
        classes = config.direction_classes(direction)  # type: ignore[arg-type]
        if not classes:
            out[direction] = None
            continue
        out[direction] = {
            "classes": {c.name: HTBClassParams(c.name, c.parent, float(c.rate), float(c.effective_ceil),
                                               c.effective_burst, c.effective_cburst, c.prio, c.effective_quantum,
                                               slots[c.name], leaf_spec_for(c)) for c in classes},
            "overhead": {c.name: config.effective_overhead(c) for c in classes},
            "host_key": {c.name: 1 if c.per_host.key == "src" else 2 for c in classes if c.per_host},
        }
    return out


def reference_class(config: Config, direction: str, data: bytes, mark: int, iif: str | None, oif: str | None
                    ) -> str | None:
    info = parse_headers(data)
    for c in config.matching_leaves(direction):  # type: ignore[arg-type]
        if any(Match.from_spec(alt).matches(info, mark, iif, oif) for alt in c.match.alternatives()):
            return c.name
    default = config.default_class(direction)  # type: ignore[arg-type]
    return default.name if default is not None else None


def received(config: Config, slots: dict[str, int], version: int = 1) -> tuple[Any, ...]:
    """The supervisor's config message as a worker unpickles it."""
    return pickle.loads(pickle.dumps(config_message(version, config, slots, True)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_a_worker_fed_the_message_holds_what_the_config_says(config: Config) -> None:
    slots = {c.name: 3 * i + 1 for i, c in enumerate(config.classes)}
    msg = received(config, slots)
    assert isinstance(msg[4], WorkerConfig) and msg[3] == slots
    worker = Shaper()
    worker.apply(msg[4], 0.0, msg[3], msg[1])
    want = expected_state(config, slots)
    for direction, tree in worker.trees.items():
        if want[direction] is None:
            assert tree is None
            continue
        assert tree is not None
        assert {p.name: p for p in tree.htb.classes} == want[direction]["classes"]
        assert tree.overhead == want[direction]["overhead"] and tree.host_key == want[direction]["host_key"]
        for data, mark, iif, oif in reference_packets(config):
            assert tree.classifier.classify_bytes(data, mark, iif, oif)[1] == \
                reference_class(config, direction, data, mark, iif, oif), (direction, data.hex(), mark, iif, oif)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), configs())
def test_a_delta_message_ends_where_the_whole_new_message_does(old: Config, new: Config) -> None:
    slots = {c.name: i for i, c in enumerate({c.name: c for c in (*old.classes, *new.classes)}.values())}
    worker, fresh = Shaper(), Shaper()
    msg = received(old, slots)
    worker.apply(msg[4], 0.0, msg[3], 1)
    delta = pickle.loads(pickle.dumps(worker_delta(old.diff(new), new.overhead)))
    try:
        worker.apply_delta(delta, 1.0, {n: slots[n] for n in delta.upserted.names}, 2)
    except ValueError:  # NeedsWholeConfig: what the worker asks the supervisor for instead
        worker.apply(received(new, slots, 2)[4], 1.0, slots, 2)
    msg = received(new, slots, 2)
    fresh.apply(msg[4], 0.0, msg[3], 2)
    packets = sample_packets(new)
    assert shaper_state(worker, packets) == shaper_state(fresh, packets)


def classes_of(*specs: tuple[str, str | None, dict[str, Any] | None]) -> Config:
    """Ingress classes under one parent: (name, parent, match)."""
    return parse_config({"classes": [{"name": "down", "direction": "ingress", "rate": "100mbit"}] + [
        {"name": n, "direction": "ingress", "parent": p, "rate": "1mbit", **({} if m is None else {"match": m})}
        for n, p, m in specs]})


@pytest.mark.parametrize("gaining", [["c0"], ["c0", "c1"], ["c1"], ["c3"]])
def test_a_class_that_gains_a_match_by_a_delta_keeps_its_place_in_first_match_order(gaining: list[str]) -> None:
    """Found by the property above: c0 had no match and gained a catch-all by a delta, while c2 kept one.
    The whole new configuration says c0 matches first; the delta used to give c0's rule an order after every
    class (where a class new to the configuration goes), so c2 won."""
    before = [("c0", "down", None), ("c1", "down", None), ("c2", "down", {}), ("c3", "down", None)]
    after = [(n, p, {} if n in gaining else m) for n, p, m in before]
    old, new = classes_of(*before), classes_of(*after)
    slots = {c.name: i for i, c in enumerate(old.classes)}
    worker, fresh = Shaper(), Shaper()
    worker.apply(received(old, slots)[4], 0.0, slots, 1)
    delta = worker_delta(old.diff(new), new.overhead)
    worker.apply_delta(delta, 1.0, {}, 2)  # in place: no NeedsWholeConfig
    fresh.apply(received(new, slots, 2)[4], 0.0, slots, 2)
    packets = sample_packets(new)
    assert shaper_state(worker, packets) == shaper_state(fresh, packets)
    first = worker.trees["ingress"].classifier.classify_bytes(bytes(IP(src="198.18.0.1", dst="198.18.0.2") / UDP()),
                                                              0, None, None)[1]
    assert first == (gaining[0] if gaining[0] < "c2" else "c2")


def test_subscribers_on_one_plan_share_their_settings_and_the_message_stays_small() -> None:
    n = 1000
    config = parse_config({"classes": [{"name": "subs", "rate": "10gbit"}] + [
        {"name": f"s{i}", "parent": "subs", "rate": "5mbit", "ceil": "10mbit",
         "match": {"dst": f"198.18.{i // 256}.{i % 256}/32"}} for i in range(n)]})
    blob = pickle.dumps(config_message(1, config, {c.name: i for i, c in enumerate(config.classes)}, True))
    assert len(blob) < 80 * n, f"{len(blob) / n:.0f} bytes a class"
    rows = pickle.loads(blob)[4].rows
    assert len({id(s) for s in rows.settings[1:]}) == 1
    assert isinstance(rows.names, list) and len(rows) == n + 1


def test_a_config_and_its_message_install_the_same_worker() -> None:
    config = parse_config({"overhead": 4, "classes": [
        {"name": "up", "rate": "10mbit", "ceil": "20mbit"},
        {"name": "a", "parent": "up", "rate": "1mbit", "match": {"dst": ["198.18.0.0/24", "2001:db8::/64"]},
         "per_host": {"key": "dst"}},
        {"name": "b", "parent": "up", "rate": "1mbit", "overhead": 20, "default": True}]})
    a, b = Shaper(), Shaper()
    a.apply(config, 0.0, {"up": 0, "a": 1, "b": 2}, 1)
    b.apply(received(config, {"up": 0, "a": 1, "b": 2})[4], 0.0, {"up": 0, "a": 1, "b": 2}, 1)
    packets = sample_packets(config)
    assert shaper_state(a, packets) == shaper_state(b, packets)


# -- bad input: a clear message, nothing changed ---------------------------------------------------------


def base() -> Config:
    return parse_config({"classes": [
        {"name": "up", "rate": "10mbit"},
        {"name": "a", "parent": "up", "rate": "1mbit", "match": {"dst": "198.18.0.0/24"}},
        {"name": "b", "parent": "up", "rate": "1mbit", "default": True}]})


def installed() -> tuple[Shaper, dict[str, Any]]:
    config = base()
    shaper = Shaper()
    shaper.apply(worker_config(config), 0.0, None, 1)
    return shaper, shaper_state(shaper, sample_packets(config))


def settings_of(**change: Any) -> Settings:
    return worker_config(base()).rows.settings[1]._replace(**change)


def with_row(rows: Rows, i: int, **change: Any) -> Rows:
    cols = {col: list(getattr(rows, col)) for col in ("names", "parents", "settings", "src", "dst")}
    for col, value in change.items():
        cols[col][i] = value
    return Rows(**cols)


GOOD = worker_config(base()).rows
BAD_CONFIGS = [
    (WorkerConfig(0, with_row(GOOD, 1, settings=("egress", 1))), "class 'a': settings must be a Settings"),
    (WorkerConfig(0, with_row(GOOD, 1, settings=settings_of(direction="sideways"))),
     "class 'a': direction must be ingress or egress"),
    (WorkerConfig(0, with_row(GOOD, 1, settings=settings_of(rate=1.5))), "class 'a': rate must be an int"),
    (WorkerConfig(0, with_row(GOOD, 2, names="a")), "class 'a' is given twice"),
    (WorkerConfig(0, with_row(GOOD, 1, names="")), "class #1: name must be a non-empty string"),
    (WorkerConfig(0, with_row(GOOD, 2, dst="198.18.9.0/24")), "class 'b': addresses without a match"),
    (WorkerConfig(0, with_row(GOOD, 1, dst=["198.18.0.0/24"])), "class 'a': dst must be a CIDR"),
    (WorkerConfig(0, with_row(GOOD, 1, settings=settings_of(match=(None,) * 7))), "class 'a': match must be"),
    (WorkerConfig(0, Rows(["up"], [], [], [], [])), "the columns differ in length"),
    (WorkerConfig(0, Rows(("up",), [None], [], [], [])), "column names must be a list"),
    (WorkerConfig(-1, GOOD), "overhead must be an int >= 0"),
    (WorkerConfig(0, list(GOOD)), "rows must be Rows"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("bad,message", BAD_CONFIGS)
def test_a_malformed_message_is_refused_and_changes_nothing(bad: WorkerConfig, message: str) -> None:
    shaper, before = installed()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        shaper.apply(bad, 1.0, None, 2)
    assert shaper_state(shaper, sample_packets(base())) == before and shaper.version == 1


def test_a_message_htb_refuses_changes_nothing() -> None:
    shaper, before = installed()
    orphan = with_row(GOOD, 1, parents="nosuch")
    with pytest.raises(ValueError, match="nosuch"):
        shaper.apply(WorkerConfig(0, orphan), 1.0, None, 2)
    assert shaper_state(shaper, sample_packets(base())) == before


def test_a_malformed_or_mismatched_delta_is_refused_and_changes_nothing() -> None:
    shaper, before = installed()
    rows = worker_config(base()).rows
    bad_rows = Rows(["c"], ["up"], [("egress",)], [None], [None])  # type: ignore[list-item]
    cases = [(WorkerDelta(upserted=bad_rows), "class 'c': settings must be a Settings"),
             (WorkerDelta(removed=(1,)), "removed must be a tuple of class names"),  # type: ignore[arg-type]
             (WorkerDelta(upserted=Rows(["c"], ["nosuch"], [rows.settings[1]], [None], [None])), "nosuch"),
             (WorkerDelta(removed=("nosuch",)), "does not have")]
    for delta, message in cases:
        with pytest.raises(ValueError, match=message):
            shaper.apply_delta(delta, 1.0, None, 2)
        assert shaper_state(shaper, sample_packets(base())) == before and shaper.version == 1


def test_the_worker_reports_a_malformed_message_and_keeps_its_tree() -> None:
    class Pipe:
        def __init__(self) -> None:
            self.sent: list[tuple[Any, ...]] = []

        def send(self, msg: tuple[Any, ...]) -> None:
            self.sent.append(msg)

    pipe = Pipe()
    worker = QueueWorker(WorkerOptions(queue=0, cpu=None), Shaper(), pipe)
    worker._clock = lambda: 1.0
    worker.handle_message(received(base(), {"up": 0, "a": 1, "b": 2}))
    assert pipe.sent[-1] == ("applied", 1)
    before = shaper_state(worker.shaper, sample_packets(base()))
    worker.handle_message(("config", 2, (), {}, WorkerConfig(0, with_row(GOOD, 1, names="")), True))
    assert pipe.sent[-1][0] == "error" and "name must be a non-empty string" in pipe.sent[-1][2]
    assert shaper_state(worker.shaper, sample_packets(base())) == before and worker.shaper.version == 1

