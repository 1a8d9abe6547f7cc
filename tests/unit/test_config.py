"""Configuration models, whole-tree validation, YAML load/dump/save (imqd.config)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imqd.config import (
    MAX_DEPTH,
    ClassSpec,
    Config,
    ConfigError,
    class_to_data,
    default_burst,
    default_quantum,
    dump_config,
    load_config,
    parse_config,
    save_config_atomic,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "imqd.yaml"


def cls(name: str, rate: Any = "10mbit", **kw: Any) -> dict[str, Any]:
    return {"name": name, "rate": rate, **kw}


def errors_of(data: Any) -> list[dict[str, Any]]:
    with pytest.raises(ConfigError) as ei:
        parse_config(data)
    assert ei.value.code == "invalid"
    return ei.value.errors


def locs(data: Any) -> set[tuple[Any, ...]]:
    return {tuple(e["loc"]) for e in errors_of(data)}


# --- accepted forms are normalised --------------------------------------------------------------


def test_values_are_normalised() -> None:
    cfg = parse_config(
        {
            "overhead": 14,
            "classes": [
                cls("up", "100mbit", ceil="1gbit", burst="16k", cburst=3200, quantum="3028b", limit_bytes="1m",
                    match={"src": "198.18.1.77/24", "dst": "198.18.0.0/15", "proto": "TCP", "sport": 80,
                           "dport": "5000-5100", "dscp": "af41", "mark": "0x10/0xff", "oif": "wan0"}),
            ]
        }
    )  # fmt: skip
    c = cfg.classes[0]
    assert (c.rate, c.ceil, c.burst, c.cburst, c.quantum, c.limit_bytes) == (
        100_000_000, 10**9, 16384, 3200, 3028, 2**20)  # fmt: skip
    m = c.match
    assert m is not None
    assert m.src == "198.18.1.0/24"  # host bits masked, as iptables does
    assert (m.proto, m.sport, m.dport, m.dscp, m.mark, m.oif) == (6, (80, 80), (5000, 5100), 34, (16, 255), "wan0")


@pytest.mark.parametrize(
    ("field", "value", "want"),
    [
        ("proto", "udp", 17), ("proto", "icmpv6", 58), ("proto", "sctp", 132), ("proto", 47, 47), ("proto", "0", 0),
        ("dport", "10:20", (10, 20)), ("dport", [1, 2], (1, 2)), ("dport", "443", (443, 443)),
        ("dscp", "ef", 46), ("dscp", "CS6", 48), ("dscp", "af11", 10), ("dscp", "af43", 38), ("dscp", 63, 63),
        ("mark", 5, (5, 0xFFFFFFFF)), ("mark", "0x10", (16, 0xFFFFFFFF)), ("mark", "16/0xf0", (16, 0xF0)),
        ("src", "2001:db8::1/32", "2001:db8::/32"), ("src", "198.18.1.1", "198.18.1.1/32"),
        ("oif", "ppp+", "ppp+"),
    ],
)  # fmt: skip
def test_match_field_forms(field: str, value: Any, want: Any) -> None:
    cfg = parse_config({"classes": [cls("a", match={field: value})]})
    assert getattr(cfg.classes[0].match, field) == want


def test_defaults_and_effective_values() -> None:
    cfg = parse_config({"overhead": 24, "classes": [cls("a", "100mbit"), cls("b", "100kbit", ceil="2mbit", overhead=0)]})
    a, b = cfg.classes
    assert (a.direction, a.parent, a.prio, a.limit, a.default, a.match) == ("egress", None, 0, 1000, False, None)
    assert a.ceil is None and a.effective_ceil == a.rate
    assert a.effective_burst == 1600 + 100_000_000 // 8 * 10 // 1000  # one MTU + 10 ms
    assert b.effective_cburst == default_burst(2_000_000) == 1600 + 2500
    assert a.effective_quantum == 200_000 and b.effective_quantum == 1514  # clamped like tc
    assert default_quantum(8_000_000) == 100_000  # rate_bytes / r2q
    assert cfg.effective_overhead(a) == 24 and cfg.effective_overhead("b") == 0


# --- every error names the class and the field --------------------------------------------------


def test_duplicate_name() -> None:
    assert locs({"classes": [cls("a"), cls("a", direction="ingress")]}) == {("classes", "a", "name")}


def test_unknown_parent_and_parent_in_other_direction() -> None:
    data = {"classes": [cls("up"), cls("x", parent="nope"), cls("y", parent="up", direction="ingress")]}
    errs = errors_of(data)
    assert {tuple(e["loc"]) for e in errs} == {("classes", "x", "parent"), ("classes", "y", "parent")}
    assert any("'nope'" in e["msg"] for e in errs)


def test_cycles() -> None:
    data = {"classes": [cls("a", parent="c"), cls("b", parent="a"), cls("c", parent="b"), cls("d", parent="d"),
                        cls("e", parent="d")]}  # fmt: skip
    errs = errors_of(data)
    assert {tuple(e["loc"]) for e in errs} == {("classes", n, "parent") for n in "abcd"}
    assert all("cycle" in e["msg"] for e in errs)


def test_ceil_below_rate() -> None:
    assert locs({"classes": [cls("voip", "2mbit", ceil="1mbit")]}) == {("classes", "voip", "ceil")}


def test_child_ceil_above_parent_ceil_is_allowed() -> None:
    cfg = parse_config({"classes": [cls("p", "10mbit"), cls("c", "1mbit", ceil="100mbit", parent="p")]})
    assert cfg.children("p") == [cfg.classes[1]]


def test_children_rates_above_parent_ceil() -> None:
    base = [cls("p", "10mbit", ceil="12mbit"), cls("c1", "6mbit", parent="p")]
    parse_config({"classes": [*base, cls("c2", "6mbit", parent="p")]})  # 12 <= ceil 12: fine
    errs = errors_of({"classes": [*base, cls("c2", "7mbit", parent="p")]})
    assert [tuple(e["loc"]) for e in errs] == [("classes", "p", "ceil")]
    assert "13mbit" in errs[0]["msg"] and "c2 7mbit" in errs[0]["msg"]


def test_one_default_per_direction() -> None:
    ok = [cls("a", default=True), cls("b", direction="ingress", default=True)]
    assert parse_config({"classes": ok}).default_class("ingress").name == "b"  # type: ignore[union-attr]
    errs = errors_of({"classes": [*ok, cls("c", default=True)]})
    assert [tuple(e["loc"]) for e in errs] == [("classes", "c", "default")]
    assert "'a'" in errs[0]["msg"]


def test_default_or_match_on_inner_class() -> None:
    data = {"classes": [cls("p", "20mbit", default=True, match={"proto": "tcp"}), cls("c", "1mbit", parent="p")]}
    assert locs(data) == {("classes", "p", "default"), ("classes", "p", "match")}


def test_depth_limit() -> None:
    chain = [cls("l1")] + [cls(f"l{i}", parent=f"l{i - 1}") for i in range(2, MAX_DEPTH + 1)]
    parse_config({"classes": chain})  # exactly MAX_DEPTH levels: fine
    deeper = [*chain, cls(f"l{MAX_DEPTH + 1}", parent=f"l{MAX_DEPTH}")]
    assert locs({"classes": deeper}) == {("classes", f"l{MAX_DEPTH + 1}", "parent")}


@pytest.mark.parametrize(
    ("klass", "loc"),
    [
        (cls("a", "1zbit"), ("rate",)),
        (cls("a", "-1mbit"), ("rate",)),
        (cls("a", True), ("rate",)),
        ({"name": "a"}, ("rate",)),
        (cls("a", raet="1mbit"), ("raet",)),
        (cls("a", ceil="lots"), ("ceil",)),
        (cls("a", burst=0), ("burst",)),
        (cls("a", cburst="1t"), ("cburst",)),
        (cls("a", quantum=-5), ("quantum",)),
        (cls("a", limit=0), ("limit",)),
        (cls("a", limit="10"), ("limit",)),
        (cls("a", limit_bytes="0b"), ("limit_bytes",)),
        (cls("a", prio=8), ("prio",)),
        (cls("a", prio=True), ("prio",)),
        (cls("a", overhead=-1), ("overhead",)),
        (cls("a", default="yes"), ("default",)),
        (cls("a", direction="sideways"), ("direction",)),
        (cls("a", match={"proto": "tcpp"}), ("match", "proto")),
        (cls("a", match={"proto": 256}), ("match", "proto")),
        (cls("a", match={"dport": "90-80"}), ("match", "dport")),
        (cls("a", match={"sport": 70000}), ("match", "sport")),
        (cls("a", match={"sport": "1-2-3"}), ("match", "sport")),
        (cls("a", match={"dscp": "af44"}), ("match", "dscp")),
        (cls("a", match={"dscp": 64}), ("match", "dscp")),
        (cls("a", match={"mark": "0x100/0xff"}), ("match", "mark")),
        (cls("a", match={"mark": "0x1/0x1/0x1"}), ("match", "mark")),
        (cls("a", match={"mark": 2**32}), ("match", "mark")),
        (cls("a", match={"src": "198.18.1.0/33"}), ("match", "src")),
        (cls("a", match={"dst": "not-an-address"}), ("match", "dst")),
        (cls("a", match={"src": "198.18.0.0/15", "dst": "2001:db8::/32"}), ("match", "dst")),
        (cls("a", match={"proto": "icmp", "dport": 80}), ("match", "dport")),
        (cls("a", match={"oif": "averyveryverylongname"}), ("match", "oif")),
        (cls("a", match={"oif": "eth/0"}), ("match", "oif")),
        (cls("a", match={"iif": "eth0"}), ("match", "iif")),  # egress has no input interface
        (cls("a", direction="ingress", match={"oif": "eth0"}), ("match", "oif")),
        (cls("a", match={"prot": "tcp"}), ("match", "prot")),
    ],
)
def test_field_errors_name_class_and_field(klass: dict[str, Any], loc: tuple[str, ...]) -> None:
    data = {"classes": [cls("other"), klass]}
    errs = errors_of(data)
    assert [tuple(e["loc"]) for e in errs] == [("classes", "a", *loc)]
    assert errs[0]["msg"] and not errs[0]["msg"].startswith("Value error")


def test_bad_name_and_nameless_class() -> None:
    assert locs({"classes": [cls("bad name!")]}) == {("classes", "bad name!", "name")}
    assert locs({"classes": [cls("x" * 65)]}) == {("classes", "x" * 65, "name")}
    assert locs({"classes": [{"rate": "1mbit"}]}) == {("classes", 0, "name")}  # no name: the index


def test_global_fields() -> None:
    assert locs({"overhead": 5000}) == {("overhead",)}
    assert locs({"classes": [], "extra": 1}) == {("extra",)}
    assert locs({"classes": "nope"}) == {("classes",)}
    assert locs([1, 2]) == {()}


def test_config_error_pickles() -> None:
    import pickle

    err = ConfigError([{"loc": ("classes", "a", "rate"), "msg": "bad"}], code="exists", path="/x.yaml")
    back = pickle.loads(pickle.dumps(err))
    assert (back.errors, back.code, back.path, str(back)) == (err.errors, "exists", "/x.yaml", str(err))


def test_str_is_one_line_per_error() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config({"classes": [cls("a", ceil="1kbit"), cls("b", prio=9)]})
    lines = str(ei.value).splitlines()
    assert len(lines) == 2
    assert any(line.startswith("classes.a.ceil: ") for line in lines)
    assert any(line.startswith("classes.b.prio: ") for line in lines)


# --- queries ------------------------------------------------------------------------------------


def test_queries() -> None:
    cfg = parse_config(
        {"classes": [cls("up", "20mbit"), cls("down", "50mbit", direction="ingress"), cls("u2", "5mbit", parent="up"),
                     cls("u1", "5mbit", parent="up"), cls("d1", "5mbit", parent="down", direction="ingress")]}
    )  # fmt: skip
    assert cfg.class_by_name("u1") is cfg.classes[3]
    assert cfg.class_by_name("nope") is None
    assert [c.name for c in cfg.children("up")] == ["u2", "u1"]
    assert cfg.children("u1") == [] and cfg.children("nope") == []
    assert [c.name for c in cfg.direction_classes("egress")] == ["up", "u2", "u1"]
    assert [c.name for c in cfg.direction_classes("ingress")] == ["down", "d1"]
    assert cfg.is_leaf("u1") and not cfg.is_leaf("up") and not cfg.is_leaf("nope")
    assert cfg.default_class("egress") is None


# --- changes for the REST API -------------------------------------------------------------------


@pytest.fixture
def tree() -> Config:
    return parse_config({"classes": [cls("up", "20mbit"), cls("a", "5mbit", parent="up", prio=3,
                                                              match={"proto": "tcp", "dport": 80})]})  # fmt: skip


def test_with_class_added(tree: Config) -> None:
    new = tree.with_class_added(cls("b", "5mbit", parent="up"))
    assert [c.name for c in new.children("up")] == ["a", "b"]
    assert tree.class_by_name("b") is None  # the original is untouched
    new2 = tree.with_class_added(ClassSpec(name="c", rate=1000))
    assert new2.class_by_name("c") is not None
    with pytest.raises(ConfigError) as ei:
        tree.with_class_added(cls("a", "1mbit"))
    assert ei.value.code == "exists" and ei.value.errors[0]["loc"] == ("classes", "a", "name")
    with pytest.raises(ConfigError) as ei:
        tree.with_class_added(cls("big", "16mbit", parent="up"))  # 5 + 16 > 20
    assert ei.value.code == "invalid" and ei.value.errors[0]["loc"] == ("classes", "up", "ceil")
    with pytest.raises(ConfigError) as ei:
        tree.with_class_added(cls("b", "1mbit", ceil="nope"))
    assert ei.value.errors[0]["loc"] == ("classes", "b", "ceil")


def test_with_class_changed_is_a_merge_patch(tree: Config) -> None:
    new = tree.with_class_changed("a", {"rate": "6mbit", "match": {"dport": None, "sport": "1000-2000"}})
    a = new.class_by_name("a")
    assert a is not None and a.rate == 6_000_000 and a.prio == 3
    assert a.match is not None and (a.match.proto, a.match.sport, a.match.dport) == (6, (1000, 2000), None)
    reset = tree.with_class_changed("a", {"prio": None, "match": None})
    ra = reset.class_by_name("a")
    assert ra is not None and ra.prio == 0 and ra.match is None  # null = back to the default
    assert tree.class_by_name("a").rate == 5_000_000  # type: ignore[union-attr]


def test_with_class_changed_errors(tree: Config) -> None:
    with pytest.raises(ConfigError) as ei:
        tree.with_class_changed("zz", {"rate": 1})
    assert ei.value.code == "not_found"
    with pytest.raises(ConfigError) as ei:
        tree.with_class_changed("a", {"ceil": "1mbit"})
    assert ei.value.code == "invalid" and ei.value.errors[0]["loc"] == ("classes", "a", "ceil")
    with pytest.raises(ConfigError) as ei:
        tree.with_class_changed("a", {"name": "b"})
    assert ei.value.errors[0]["loc"] == ("classes", "a", "name")
    with pytest.raises(ConfigError) as ei:
        tree.with_class_changed("a", {"rate": None})  # rate is required
    assert ei.value.errors[0]["loc"] == ("classes", "a", "rate")
    with pytest.raises(ConfigError):
        tree.with_class_changed("up", {"direction": "ingress"})  # its child would be in the other tree


def test_with_class_removed(tree: Config) -> None:
    with pytest.raises(ConfigError) as ei:
        tree.with_class_removed("up")
    assert ei.value.code == "has_children" and "'a'" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        tree.with_class_removed("nope")
    assert ei.value.code == "not_found"
    new = tree.with_class_removed("a").with_class_removed("up")
    assert new.classes == [] and len(tree.classes) == 2


# --- YAML ---------------------------------------------------------------------------------------


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.default_class("ingress") is not None and cfg.default_class("egress") is not None
    assert load_config_text(dump_config(cfg)) == cfg


def load_config_text(text: str) -> Config:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.yaml"
        p.write_text(text)
        return load_config(p)


def test_dump_uses_tc_strings_and_omits_none(tree: Config) -> None:
    text = dump_config(tree.with_class_changed("a", {"burst": 16384, "match": {"mark": "0x10/0xff"}}))
    assert "rate: 20mbit" in text and "rate: 5mbit" in text and "burst: 16k" in text
    assert "proto: tcp" in text and "mark: 0x10/0xff" in text and "dport: 80" in text
    assert "ceil" not in text and "null" not in text and "quantum" not in text


def test_class_to_data_is_the_readable_form(tree: Config) -> None:
    a = tree.class_by_name("a")
    assert a is not None
    data = class_to_data(a)
    assert data["rate"] == "5mbit" and data["match"] == {"proto": "tcp", "dport": 80} and "ceil" not in data
    assert parse_config({"classes": [class_to_data(c) for c in tree.classes]}) == tree


def test_load_missing(tmp_path: Path) -> None:
    assert load_config(tmp_path / "none.yaml", missing_ok=True) == Config()
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "none.yaml")
    assert "none.yaml" in str(ei.value)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("overhead: 0\nclasses:\n  - name: a\n    rate: [1\n", 5, "YAML"),  # half-written
        ("classes:\n  - name: a\n    rate: 'unterminated\n", 4, "YAML"),
        ("", 1, "empty"),
        ("# only a comment\n", 1, "empty"),
        ("classes:\n  - name: a\n    rate: 1mbit\n    rate: 2mbit\n", 4, "duplicate key 'rate'"),
        ("- 1\n- 2\n", 1, "mapping"),
        ("classes:\n  - name: a\n    rate: 1mbit\n  - name: b\n    rate: 2mbit\n    ceil: 1mbit\n", 6, "ceil"),
        ("classes:\n  - name: a\n    rate: 1mbit\n    match:\n      dport: 99999\n", 5, "match.dport"),
    ],
)
def test_load_errors_name_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    p = tmp_path / "imqd.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert f"{p}:{line}:" in msg, msg
    assert fragment in msg


def test_save_atomic_keeps_bak_and_0600(tmp_path: Path, tree: Config) -> None:
    p = tmp_path / "imqd.yaml"
    save_config_atomic(p, tree)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert load_config(p) == tree
    assert not (tmp_path / "imqd.yaml.bak").exists()
    first = p.read_text()
    changed = tree.with_class_changed("a", {"rate": "1mbit"})
    save_config_atomic(str(p), changed)
    assert load_config(p) == changed
    assert (tmp_path / "imqd.yaml.bak").read_text() == first
    assert stat.S_IMODE((tmp_path / "imqd.yaml.bak").stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["imqd.yaml", "imqd.yaml.bak"]  # no temporary files left


def test_save_atomic_follows_symlink(tmp_path: Path, tree: Config) -> None:
    real = tmp_path / "real.yaml"
    link = tmp_path / "link.yaml"
    save_config_atomic(real, Config())
    link.symlink_to(real)
    save_config_atomic(link, tree)
    assert link.is_symlink() and load_config(real) == tree
    assert (tmp_path / "real.yaml.bak").exists()


def test_save_failure_leaves_old_file(tmp_path: Path, tree: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "imqd.yaml"
    save_config_atomic(p, tree)
    before = p.read_text()

    def boom(*a: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        save_config_atomic(p, Config())
    assert p.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["imqd.yaml"]


# --- generated valid trees ----------------------------------------------------------------------

RATE_TEXT = st.sampled_from(["bit", "kbit", "mbit", "kibit", "bps", "kbps"])


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    classes: list[dict[str, Any]] = []
    names = iter(f"c{i}" for i in range(1000))

    def grow(parent: dict[str, Any] | None, direction: str, budget: int, depth: int) -> None:
        n = draw(st.integers(0, 3)) if depth < 4 else 0
        for _ in range(n):
            if budget < 2:
                return
            rate = draw(st.integers(1, budget // 2))
            budget -= rate
            c: dict[str, Any] = {"name": next(names), "direction": direction, "rate": rate}
            if parent is not None:
                c["parent"] = parent["name"]
            if draw(st.booleans()):
                c["ceil"] = rate + draw(st.integers(0, 10**9))
            for f, s in (("burst", st.integers(1, 2**20)), ("prio", st.integers(0, 7)),
                         ("quantum", st.integers(1, 2**20)), ("limit", st.integers(1, 10**5)),
                         ("limit_bytes", st.integers(1, 2**30)), ("overhead", st.integers(0, 64))):  # fmt: skip
                if draw(st.booleans()):
                    c[f] = draw(s)
            classes.append(c)
            grow(c, direction, c.get("ceil", rate), depth + 1)
            if not any(k.get("parent") == c["name"] for k in classes) and draw(st.booleans()):
                c["match"] = draw(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "src": st.sampled_from(["198.18.0.0/15", "198.18.7.0/24"]),
                            "proto": st.sampled_from(["tcp", "udp", 132]),
                            "dport": st.sampled_from([53, "1000-2000", [5, 6]]),
                            "dscp": st.sampled_from(["ef", 10, "cs1"]),
                            "mark": st.sampled_from([7, "0x10/0xf0", "0x1"]),
                            ("iif" if direction == "ingress" else "oif"): st.sampled_from(["eth0", "ppp+"]),
                        },
                    )
                )

    for direction in ("ingress", "egress"):
        for _ in range(draw(st.integers(0, 2))):
            grow(None, direction, draw(st.integers(10**3, 10**10)), 1)
            # a top class of this loop is the parent of everything grown under it
    for direction in ("ingress", "egress"):
        leaves = [c for c in classes if c["direction"] == direction
                  and not any(k.get("parent") == c["name"] for k in classes)]  # fmt: skip
        if leaves and draw(st.booleans()):
            draw(st.sampled_from(leaves))["default"] = True
    draw(st.randoms()).shuffle(classes)  # config order need not be topological
    return {"overhead": draw(st.integers(0, 100)), "classes": classes}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_configs())
def test_random_valid_trees_validate_and_round_trip(data: dict[str, Any]) -> None:
    cfg = parse_config(data)
    assert [c.name for c in cfg.classes] == [c["name"] for c in data["classes"]]
    text = dump_config(cfg)
    again = load_config_text(text)
    assert again == cfg
    assert dump_config(again) == text
    for c in cfg.classes:  # the model API agrees with the tree that was generated
        assert [k.name for k in cfg.children(c.name)] == [
            k["name"] for k in data["classes"] if k.get("parent") == c.name
        ]


# -- issue 5: leaf queue, per-host and emulation options --------------------------------------
def test_leaf_options_round_trip(tmp_path: Path) -> None:
    cfg = parse_config({"classes": [
        {"name": "a", "rate": "10mbit", "qdisc": {"kind": "fq_codel", "target": "5ms", "interval": "100ms"}},
        {"name": "b", "rate": "10mbit", "per_host": {"key": "src", "prefix": 24, "rate": "2mbit", "ceil": "4mbit"}},
        {"name": "c", "rate": "10mbit", "per_host": {"rate": 0, "idle_timeout": "30s"}},
        {"name": "d", "rate": "10mbit", "delay": "20ms", "jitter": "500us", "loss": 0.5, "reorder": True},
        {"name": "e", "rate": "10mbit", "qdisc": {"kind": "sfq", "flows": 128, "quantum": "3k"}},
    ]})
    a, b, c, d, e = cfg.classes
    assert (a.qdisc.target, a.qdisc.interval) == (0.005, 0.1)
    assert (b.per_host.key, b.per_host.prefix, b.per_host.rate, b.per_host.ceil) == ("src", 24, 2_000_000, 4_000_000)
    assert c.per_host.rate == 0 and c.per_host.idle_timeout == 30.0
    assert (d.delay, d.jitter, d.loss, d.reorder) == (0.02, 0.0005, 0.5, True)
    assert e.qdisc.quantum == 3072
    path = tmp_path / "c.yaml"
    save_config_atomic(path, cfg)
    assert load_config(path) == cfg


@pytest.mark.parametrize("cls, where", [
    ({"qdisc": {"kind": "fifo", "target": "5ms"}}, "classes.x.qdisc"),
    ({"qdisc": {"kind": "codel"}}, "classes.x.qdisc.kind"),
    ({"qdisc": {"kind": "fq_codel", "target": "-1ms"}}, "classes.x.qdisc"),
    ({"per_host": {"rate": "5mbit", "ceil": "1mbit"}}, "classes.x.per_host"),
    ({"per_host": {"key": "both"}}, "classes.x.per_host.key"),
    ({"per_host": {"prefix": 33}}, "classes.x.per_host.prefix"),
    ({"delay": "5ms", "qdisc": {"kind": "sfq"}}, "classes.x.qdisc"),
    ({"delay": "5ms", "per_host": {}}, "classes.x.per_host"),
    ({"loss": 101}, "classes.x.loss"),
    ({"delay": "soon"}, "classes.x.delay"),
    ({"reorder": True}, "classes.x.reorder"),
])
def test_bad_leaf_options_name_the_field(cls: dict, where: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"classes": [{"name": "x", "rate": "1mbit", **cls}]})
    assert where in str(exc.value), str(exc.value)
