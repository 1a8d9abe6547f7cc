"""One change checked incrementally (imqd.config_tree.check_upsert) vs the full validation it replaces.

``Config.with_class_added/changed/removed`` validate the changed class alone and then only the tree rules it
touches, against the index the old ``Config`` keeps.  ``parse_config`` of the whole changed list is the
reference: for random changes on random trees both must accept or refuse alike, name the same error
locations, and (when accepted) build equal configurations -- including the kept index, which ``Config``
equality compares.  Also: ``diff``/``apply_delta`` are inverses, and error messages stay short at 10,000
classes.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from imqd.config import MAX_CLASSES, MAX_DEPTH, ClassSpec, Config, ConfigDelta, ConfigError, parse_config
from imqd.config_tree import index_tree

RATES = ["1mbit", "2mbit", "5mbit", "10mbit", "40mbit", "300mbit"]
CEILS = [None, "10mbit", "50mbit", "100mbit", "1gbit"]
NAMES = [f"c{i}" for i in range(14)]


@st.composite
def trees(draw: Any) -> list[dict[str, Any]]:
    """A class list, valid or not (tests assume() validity where they need it): mostly sane trees, with
    deep chains, many siblings, defaults and matches on random classes."""
    n = draw(st.integers(1, 12))
    classes: list[dict[str, Any]] = []
    for i in range(n):
        c: dict[str, Any] = {"name": NAMES[i], "direction": draw(st.sampled_from(["ingress", "egress"])),
                             "rate": draw(st.sampled_from(RATES[:4]))}
        same = [d["name"] for d in classes if d["direction"] == c["direction"]]
        if same and draw(st.booleans()):
            c["parent"] = draw(st.sampled_from(same))
        ceil = draw(st.sampled_from(CEILS))
        if ceil is not None:
            c["ceil"] = ceil
        classes.append(c)
    parents = {c.get("parent") for c in classes}
    for c in classes:
        if c["name"] in parents:
            c["ceil"] = "1gbit"  # inner classes: room for their children (changes may still overflow it)
        elif draw(st.integers(0, 3)) == 0:
            c["match"] = {"dst": f"198.18.0.{NAMES.index(c['name'])}/32"}
    for direction in ("ingress", "egress"):
        leaves = [c for c in classes if c["direction"] == direction and c["name"] not in parents]
        if leaves and draw(st.booleans()):
            draw(st.sampled_from(leaves))["default"] = True
    return classes


def patches(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {
        "rate": st.sampled_from(RATES),
        "ceil": st.sampled_from(CEILS),
        "parent": st.sampled_from([None, "zz", *names]),
        "direction": st.sampled_from(["ingress", "egress"]),
        "default": st.booleans(),
        "match": st.sampled_from([None, {"dst": "198.18.9.0/24"}, {"dst": "2001:db8::/64", "src": "198.18.0.1"}]),
        "prio": st.sampled_from([0, 3, 9]),  # 9: a field error
    }
    return st.fixed_dictionaries({}, optional=fields).filter(bool)


def outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except ConfigError as e:
        return e.code, sorted(repr(err["loc"]) for err in e.errors)


def reference(cfg: Config, classes: list[Any]) -> tuple[str, Any]:
    return outcome(lambda: parse_config({"overhead": cfg.overhead, "classes": classes}))


def same(incremental: tuple[str, Any], full: tuple[str, Any]) -> None:
    assert incremental[0] == full[0], (incremental, full)
    if incremental[0] == "ok":
        assert incremental[1] == full[1]
        assert incremental[1]._tree == index_tree(full[1].classes), "the kept index is the one a full pass builds"
        for c in full[1].classes:  # dict equality ignores order: children must stay in config order too
            assert incremental[1].children(c.name) == full[1].children(c.name)
    else:
        assert incremental[1] == full[1]


def valid_tree(data: Any) -> tuple[list[dict[str, Any]], Config]:
    """A random tree that passes the full validation (hypothesis discards the others)."""
    classes = data.draw(trees())
    ok, cfg = outcome(lambda: parse_config({"classes": classes}))
    assume(ok == "ok")
    return classes, cfg


SLOW = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@settings(max_examples=400, **SLOW)
@given(st.data())
def test_change_matches_full_validation(data: Any) -> None:
    classes, cfg = valid_tree(data)
    name = data.draw(st.sampled_from([c.name for c in cfg.classes]))
    patch = data.draw(patches([c.name for c in cfg.classes]))
    old = cfg.class_by_name(name)
    merged = {**old.model_dump(exclude_none=True)}
    for k, v in patch.items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = v
    full = reference(cfg, [merged if c.name == name else c for c in cfg.classes])
    same(outcome(lambda: cfg.with_class_changed(name, patch)), full)
    assert cfg == parse_config({"classes": classes}), "a refused or accepted change never touches the old config"


@settings(max_examples=300, **SLOW)
@given(st.data())
def test_add_matches_full_validation(data: Any) -> None:
    _, cfg = valid_tree(data)
    spec = {"name": "new", "rate": "1mbit", **data.draw(patches([c.name for c in cfg.classes]))}
    spec = {k: v for k, v in spec.items() if v is not None}
    same(outcome(lambda: cfg.with_class_added(spec)), reference(cfg, [*cfg.classes, spec]))


@settings(max_examples=200, **SLOW)
@given(st.data())
def test_remove_matches_full_validation(data: Any) -> None:
    _, cfg = valid_tree(data)
    name = data.draw(st.sampled_from([c.name for c in cfg.classes]))
    incremental = outcome(lambda: cfg.with_class_removed(name))
    if cfg.children(name):
        assert incremental[0] == "has_children"  # refused outright; a full pass would blame the orphans
    else:
        same(incremental, reference(cfg, [c for c in cfg.classes if c.name != name]))


@settings(max_examples=200, **SLOW)
@given(trees(), trees(), st.integers(0, 3), st.integers(0, len(NAMES) - 1))
def test_diff_and_apply_are_inverses(a: list[dict[str, Any]], b: list[dict[str, Any]], overhead: int,
                                     shift: int) -> None:
    def renamed(name: str) -> str:  # b's names shifted: classes removed and added in one delta
        return NAMES[(NAMES.index(name) + shift) % len(NAMES)]

    b = [{**c, "name": renamed(c["name"]), **({"parent": renamed(c["parent"])} if "parent" in c else {})}
         for c in b]
    ok_a, old = outcome(lambda: parse_config({"classes": a}))
    ok_b, new = outcome(lambda: parse_config({"overhead": overhead, "classes": b}))
    assume(ok_a == ok_b == "ok")
    delta = old.diff(new)
    assert old.apply_delta(delta) == new
    assert old.apply_delta(delta)._tree == index_tree(new.classes)
    assert old.diff(old).empty and new.diff(new) == ConfigDelta()
    survivors = [c.name for c in new.classes if old.class_by_name(c.name) is not None]
    in_order = survivors == [c.name for c in old.classes if new.class_by_name(c.name) is not None]
    added_last = all(old.class_by_name(c.name) is None for c in new.classes[len(survivors):])
    assert (delta.order is None) == (in_order and added_last)


@settings(max_examples=100, **SLOW)
@given(trees(), st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(RATES[:3])), min_size=1, max_size=20))
def test_a_sequence_of_changes_keeps_the_index_exact(classes: list[dict[str, Any]],
                                                      steps: list[tuple[str, str]]) -> None:
    ok, cfg = outcome(lambda: parse_config({"classes": classes}))
    assume(ok == "ok")
    for name, rate in steps:
        if cfg.class_by_name(name) is None:
            kind, new = outcome(lambda: cfg.with_class_added({"name": name, "rate": rate}))
        elif cfg.is_leaf(name) and rate == "1mbit":
            kind, new = outcome(lambda: cfg.with_class_removed(name))
        else:
            kind, new = outcome(lambda: cfg.with_class_changed(name, {"rate": rate}))
        if kind == "ok":
            cfg = new
            assert cfg == parse_config({"classes": [c.model_dump() for c in cfg.classes]})


def big_tree(n: int) -> Config:
    return parse_config({"classes": [
        {"name": "top", "direction": "ingress", "rate": "10gbit"},
        *({"name": f"s{i}", "direction": "ingress", "parent": "top", "rate": "1mbit", "ceil": "20mbit",
           "match": {"dst": f"198.18.{i // 250}.{i % 250 + 1}/32"}} for i in range(n))]})


def test_errors_list_at_most_five_siblings() -> None:
    cfg = big_tree(10_000)  # 10,000 x 1mbit = exactly the parent's 10gbit
    with pytest.raises(ConfigError) as ei:
        cfg.with_class_changed("s5", {"rate": "2mbit"})
    (err,) = ei.value.errors
    assert err["loc"] == ("classes", "top", "ceil")
    assert "s0 1mbit, s1 1mbit, s2 1mbit, s3 1mbit, s4 1mbit and 9,995 more" in err["msg"], err["msg"]
    assert len(err["msg"]) < 200
    with pytest.raises(ConfigError) as ei:
        parse_config({"classes": [*(c.model_dump() for c in cfg.classes), {"name": "x", "direction": "ingress",
                                                                          "parent": "top", "rate": "1mbit"}]})
    assert "and 9,996 more" in ei.value.errors[0]["msg"]
    with pytest.raises(ConfigError) as ei:
        cfg.with_class_removed("top")
    assert ei.value.code == "has_children" and "and 9,995 more" in str(ei.value)


def test_one_change_keeps_the_class_order_and_siblings_order() -> None:
    cfg = big_tree(50)
    new = cfg.with_class_changed("s7", {"rate": "2mbit"}).with_class_removed("s3").with_class_added(
        {"name": "s99", "direction": "ingress", "parent": "top", "rate": "1mbit"})
    names = [c.name for c in new.classes]
    assert names == ["top", *(f"s{i}" for i in range(50) if i != 3), "s99"]
    assert [c.name for c in new.children("top")] == names[1:]
    assert new.class_by_name("s7").rate == 2_000_000 and new.position("s99") == 50


def test_unchanged_patch_returns_the_same_config() -> None:
    cfg = big_tree(3)
    assert cfg.with_class_changed("s1", {"rate": "1mbit"}) is cfg


def test_depth_limit_when_a_subtree_moves() -> None:
    chain = [{"name": "a0", "rate": "1mbit", "ceil": "1gbit"}]
    chain += [{"name": f"a{i}", "parent": f"a{i - 1}", "rate": "1mbit", "ceil": "1gbit"} for i in range(1, 4)]
    other = [{"name": "b0", "rate": "1mbit", "ceil": "1gbit"}]
    other += [{"name": f"b{i}", "parent": f"b{i - 1}", "rate": "1mbit", "ceil": "1gbit"} for i in range(1, 5)]
    cfg = parse_config({"classes": chain + other})  # depths 4 and 5
    with pytest.raises(ConfigError) as ei:
        cfg.with_class_changed("b0", {"parent": "a3"})  # b4 would sit at depth 9
    assert [e["loc"] for e in ei.value.errors] == [("classes", "b4", "parent")]
    assert f"deeper than {MAX_DEPTH}" in ei.value.errors[0]["msg"]
    moved = cfg.with_class_changed("b1", {"parent": "a3"})  # b4 at depth 8: allowed
    assert moved == parse_config({"classes": [c.model_dump() for c in moved.classes]})


def test_class_limit_is_checked_on_load_and_on_every_change() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config({"classes": [{"name": f"c{i}", "rate": 1000} for i in range(MAX_CLASSES + 1)]})
    assert ei.value.errors[0]["loc"] == ("classes",)
    assert f"at most {MAX_CLASSES:,}" in ei.value.errors[0]["msg"]
    full = Config.trusted(0, [ClassSpec(name=f"c{i}", rate=1000) for i in range(MAX_CLASSES)])
    with pytest.raises(ConfigError, match=f"at most {MAX_CLASSES:,}"):
        full.with_class_added({"name": "one-more", "rate": 1000})
    assert full.with_class_changed("c1", {"rate": 2000}).class_by_name("c1").rate == 2000
    assert len(full.with_class_removed("c1").with_class_added({"name": "x", "rate": 1000}).classes) == MAX_CLASSES


def test_a_class_moved_under_a_parent_takes_its_config_place_among_the_children() -> None:
    cfg = parse_config({"classes": [{"name": "a", "rate": "1mbit", "ceil": "1gbit"}, {"name": "x", "rate": "1mbit"},
                                    {"name": "b", "parent": "a", "rate": "1mbit"}]})
    moved = cfg.with_class_changed("x", {"parent": "a"})
    assert [c.name for c in moved.children("a")] == ["x", "b"]


@pytest.mark.slow
def test_a_file_of_100000_classes_is_refused_naming_the_limit(tmp_path: Any) -> None:
    """Issue 15: a config over the limit is refused with a clear message (after its YAML is read: ~10 s)."""
    from imqd.cli import main

    path = tmp_path / "big.yaml"
    path.write_text("classes:\n" + "".join(f"- {{name: c{i}, rate: 1mbit}}\n" for i in range(100_000)))
    with pytest.raises(ConfigError) as ei:
        from imqd.config import load_config

        load_config(path)
    assert f"100,000 classes: imqd supports at most {MAX_CLASSES:,}" in str(ei.value)
    assert main(["check-config", str(path)]) == 1
