"""HTB.change() on a fake clock: the whole class set replaced, queues and tokens kept, orphans handed back or
moved, bad trees refused (imqd/qdisc/htb_change.py).  Both schedulers, as in :mod:`test_htb`."""

from __future__ import annotations

import math
from typing import Any

import pytest
from test_htb import C, M, Sim, scheduler

from imqd.qdisc.htb import HTB, HTBClassParams
from imqd.qdisc.leaves import LeafSpec

pytestmark = pytest.mark.usefixtures(scheduler.__name__)  # both schedulers, as test_htb's autouse fixture


# -- change() ---------------------------------------------------------------------------------


def base_tree(**a_kw: Any) -> list[HTBClassParams]:
    return [C("root", None, 10 * M), C("a", "root", 2 * M, 10 * M, **a_kw), C("b", "root", 2 * M, 10 * M),
            C("default", "root", 1 * M, 10 * M)]  # fmt: skip


def snapshot(h: HTB) -> Any:
    return (h.classes, h.class_stats(0.0), h.backlog_packets, list(h.tokens.values))


def test_change_keeps_queues_and_tokens_and_new_rate_applies_at_once() -> None:
    h = HTB(base_tree(), 0.0)
    sim = Sim(h)
    sim.put("a", n=10)
    sim.put("b", n=2)
    for _ in range(4):
        assert h.dequeue(0.0) is not None
    before = h.class_stats(0.0)
    assert h.change(base_tree(), 0.0) == [] and h.class_stats(0.0) == before  # same config: nothing moves
    new = [C("root", None, 10 * M), C("a", "root", 1 * M, 1 * M), C("b", "root", 2 * M, 10 * M),
           C("c", "root", 1 * M, 10 * M)]  # fmt: skip
    assert h.change(new, 0.0) == []  # 'default' was empty: nothing to hand back
    after = h.class_stats(0.0)
    assert after["a"]["backlog_packets"] == before["a"]["backlog_packets"] > 0
    assert after["b"]["backlog_packets"] == before["b"]["backlog_packets"]
    for name in ("root", "a", "b"):  # seconds of credit and counters survive a rate change
        for key in ("tokens", "ctokens", "packets", "bytes", "lends"):
            assert after[name][key] == before[name][key], (name, key)
    assert after["c"]["tokens"] == pytest.approx(15000 * 8 / M)  # a new class starts full
    # A smaller burst is applied at once too: credit above the new buffer is cut.
    small = [C("root", None, 10 * M), C("a", "root", 1 * M, 1 * M, burst=1000, cburst=1000)]
    h.change(small + new[2:], 0.0)
    assert h.class_stats(0.0)["a"]["tokens"] == pytest.approx(1000 * 8 / M)
    h.change(new, 0.0)
    # The queued packets leave first, in order; then the new ceil of 1 Mbit/s holds at once.
    sim.run(10.0, busy={"a": 1500})
    held = before["a"]["backlog_packets"]
    flows_a = [f for (_, n, _), f in zip(sim.log, sim.flows) if n == "a"]
    assert flows_a == sorted(flows_a) and max(flows_a[:held]) <= 10  # the 10 put before the change
    assert sim.rate("a", 1, 10) == pytest.approx(1 * M, rel=0.02)


def test_change_moves_packets_of_removed_classes_to_fallback() -> None:
    h = HTB(base_tree(), 0.0)
    sim = Sim(h)
    sim.put("default", n=1)
    sim.now = 0.5
    moved = sim.put("a", n=3)
    sim.now = 0.2
    sim.put("b", n=2)
    new = [c for c in base_tree() if c.name not in ("a", "b")]
    assert h.change(new, 1.0, fallback="default") == []
    assert h.backlog_packets == 6 and not moved
    sim.run(1.0 + 1.0)
    # Oldest first by arrival time: the default's own, then b's (t=0.2), then a's (t=0.5).
    assert [n for _, n, _ in sim.log] == ["default", "b", "b", "a", "a", "a"]


def test_change_without_fallback_returns_orphans_and_leaf_to_inner() -> None:
    h = HTB(base_tree(), 0.0)
    sim = Sim(h)
    sim.put("a", n=3)
    sim.put("b", n=2)
    held = [p for p in h.drain()]
    for p in held:  # put them back, keep the objects to compare identities
        h.enqueue(p, p.handle, 0.0)
    new = base_tree() + [C("a1", "a", 1 * M, 2 * M)]  # 'a' becomes an inner class
    new = [c for c in new if c.name != "b"]
    returned = h.change(new, 0.0)
    assert sorted(id(p) for p in returned) == sorted(id(p) for p in held)
    assert h.backlog_packets == 0
    assert not h.is_leaf("a") and h.is_leaf("a1") and "b" not in h.class_stats()


def test_leaf_kind_change_moves_packets_and_shrink_reports_drops() -> None:
    h = HTB(base_tree(leaf=LeafSpec.of("fifo", limit_packets=10)), 0.0)
    sim = Sim(h)
    sim.put("a", n=6)
    assert h.change(base_tree(leaf=LeafSpec.of("fifo", limit_packets=4)), 0.0) == []  # nothing to release
    assert [p.flow for p in h.take_dropped()] == [5, 6]  # newest go, the head stays
    assert h.class_stats()["a"]["drops"] == 2 and h.take_dropped() == []
    tbf = LeafSpec.of("tbf", rate=100 * M, burst=100000, limit_packets=3)
    assert h.change(base_tree(leaf=tbf), 0.0) == []
    assert [p.flow for p in h.take_dropped()] == [4]  # the new leaf holds only 3
    assert h.class_stats()["a"]["leaf"]["kind"] == "tbf"
    sim.run(1.0)
    assert [n for _, n, _ in sim.log] == ["a"] * 3 and sim.flows == [1, 2, 3]


def test_full_fallback_reports_its_drops() -> None:
    tree = base_tree()
    tree[3] = C("default", "root", 1 * M, 10 * M, leaf=LeafSpec.of("fifo", limit_packets=2))
    h = HTB(tree, 0.0)
    sim = Sim(h)
    sim.put("a", n=3)
    assert h.change([c for c in tree if c.name != "a"], 0.0, fallback="default") == []
    assert [p.flow for p in h.take_dropped()] == [3] and h.backlog_packets == 2


def test_slot_of_a_removed_class_is_reused_fresh() -> None:
    h = HTB(base_tree(), 0.0)
    sim = Sim(h)
    sim.put("a", n=20)
    for _ in range(20):
        h.dequeue(0.0)
    slot_a = h.class_stats()["a"]["slot"]
    assert h.class_stats(0.0)["a"]["tokens"] < 0
    new = [c for c in base_tree() if c.name != "a"] + [C("z", "root", 2 * M, 10 * M)]
    h.change(new, 0.0)
    st = h.class_stats(0.0)["z"]
    assert st["slot"] == slot_a and st["tokens"] == pytest.approx(15000 * 8 / (2 * M))


@pytest.mark.parametrize(
    ("classes", "fallback", "message"),
    [
        ([C("root", None, M), C("a", "nope", M)], None, "class 'a': parent 'nope'"),
        ([C("root", None, M), C("a", "b", M), C("b", "a", M)], None, "class 'a': parent: cycle"),
        ([C("root", None, M), C("root", None, M)], None, "class 'root': name: duplicate"),
        ([C("l0", None, M)] + [C(f"l{i}", f"l{i - 1}", M) for i in range(1, 9)], None, "class 'l7': parent: tree too deep"),
        ([C("root", None, M, slot=3), C("a", "root", M, slot=3)], None, "class 'a': slot 3"),
        ([C("root", None, M), C("a", "root", M, leaf=LeafSpec.of("fifo", limit_packets=0))], None,
         "class 'a': leaf: fifo: limit_packets"),
        ([C("root", None, M), C("a", "root", M, leaf=LeafSpec.of("fifo", colour=1))], None,
         "class 'a': leaf: .*unknown parameter 'colour'"),
        ([C("root", None, M), C("a", "root", M, leaf=LeafSpec("warp"))], None, "class 'a': leaf: .*unknown kind"),
        ([C("root", None, M), C("a", "root", M)], "root", "fallback: 'root' is not a leaf"),
        ([C("root", None, M), C("a", "root", M)], "zz", "fallback: 'zz'"),
        (["root"], None, "expected HTBClassParams"),
    ],
)  # fmt: skip
def test_change_rejects_bad_trees_and_changes_nothing(classes: list[Any], fallback: str | None, message: str) -> None:
    h = HTB(base_tree(), 0.0)
    sim = Sim(h)
    sim.put("a", n=3)
    h.dequeue(0.0)
    before = snapshot(h)
    with pytest.raises(ValueError, match=message):
        h.change(classes, 0.0, fallback=fallback)
    assert snapshot(h) == before


@pytest.mark.parametrize(
    ("kw", "field"),
    [({"rate": 0}, "rate"), ({"rate": math.nan}, "rate"), ({"ceil": 0.5 * M}, "ceil .* below rate"),
     ({"burst": 0}, "burst"), ({"cburst": 1.5}, "cburst"), ({"prio": 8}, "prio"), ({"prio": -1}, "prio"),
     ({"quantum": 0}, "quantum"), ({"slot": -2}, "slot"), ({"leaf": "fifo"}, "leaf"), ({"name": ""}, "name"),
     ({"parent": "x", "name": "x"}, "own parent")],
)  # fmt: skip
def test_bad_class_parameters_name_class_and_field(kw: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = dict(name="a", parent=None, rate=1 * M, ceil=1 * M, burst=1500, cburst=1500)
    args.update(kw)
    with pytest.raises(ValueError, match=field):
        HTBClassParams(**args)
