"""What keeps memory per class small (issue 15): shared fields-sets of the config models, the compacted loaded
Config, the worker's config message, malloc_trim.  The figures themselves: ``python -m bench.memory``."""

from __future__ import annotations

import pickle
from pathlib import Path

from imqd.config import dump_config, parse_config
from imqd.journal import ConfigStore, compact
from imqd.memtrim import mmap_large_blocks, trim
from imqd.shaper import Shaper
from imqd.supervisor import config_message, kept_strings


def subscribers(n: int) -> dict:
    return {"classes": [{"name": "subs", "rate": "1gbit"}] + [
        {"name": f"s{i}", "parent": "subs", "rate": "5mbit", "ceil": "10mbit",
         "match": {"dst": [f"198.18.128.{i}/32", f"2001:db8::{i}/128"] if i == 2 else f"198.18.128.{i}/32"}}
        for i in range(4)]}


def test_equal_fields_sets_are_one_object_and_a_copy_with_changes_gets_its_own() -> None:
    cfg = parse_config(subscribers(4))
    a, b, c = cfg.classes[1], cfg.classes[2], cfg.classes[0]
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
    assert a.match.__pydantic_fields_set__ is b.match.__pydantic_fields_set__
    assert c.model_fields_set == {"name", "rate"}, "a different set of given fields is its own set"
    changed = a.model_copy(update={"prio": 3})
    assert "prio" in changed.model_fields_set and "prio" not in a.model_fields_set and "prio" not in b.model_fields_set
    assert a.model_dump(exclude_unset=True) == {"name": "s0", "parent": "subs", "rate": 5_000_000,
                                                "ceil": 10_000_000, "match": {"dst": "198.18.128.0/32"}}


def test_parents_are_one_string() -> None:
    cfg = parse_config({"classes": [{"name": "subs", "rate": "1gbit"}] + [
        {"name": f"s{i}", "parent": "".join(["su", "bs"]), "rate": "1mbit"} for i in range(3)]})
    assert len({id(c.parent) for c in cfg.classes[1:]}) == 1


def test_a_loaded_config_is_an_equal_copy_and_remembers_its_parse(tmp_path: Path) -> None:
    cfg = parse_config(subscribers(4))
    path = tmp_path / "imqd.yaml"
    path.write_text(dump_config(cfg))
    store = ConfigStore(path)
    loaded = store.load()
    assert loaded == cfg and loaded.classes == cfg.classes and loaded.position("s3") == 4
    assert store.parsed and store.remember_parse()
    again = ConfigStore(path)
    assert again.load() == cfg and not again.parsed, "read from the journal's header, not parsed again"
    copy = compact(cfg)
    assert copy == cfg and copy is not cfg and copy.class_by_name("s1") == cfg.class_by_name("s1")


def test_the_worker_message_carries_every_kept_string_before_the_config() -> None:
    cfg = parse_config(subscribers(4))
    kept = kept_strings(cfg)
    assert {"subs", "s0", "s3", "198.18.128.1/32", "198.18.128.2/32", "2001:db8::2/128"} <= set(kept)
    _, _, kept2, _, cfg2, _ = pickle.loads(pickle.dumps(config_message(1, cfg, {}, True)))
    names = {id(s) for s in kept2}
    rows = list(cfg2.rows)
    assert all(id(r[0]) in names for r in rows), "unpickled as the same objects, allocated first"
    assert all(id(a) in names for r in rows[1:] for a in (r[4] if isinstance(r[4], tuple) else (r[4],)))
    assert len({id(r[2]) for r in rows[1:]}) == 1, "subscribers on one plan share one Settings object"
    shaper = Shaper()
    shaper.apply(cfg2, 1.0)
    assert shaper.trees["egress"] is not None and len(shaper.trees["egress"].htb) == 5


def test_trim_asks_the_c_library_on_linux() -> None:
    assert trim() is True and trim() is True


def test_large_blocks_stay_mmapped() -> None:
    assert mmap_large_blocks() is True


def test_a_fifo_leaf_has_a_queue_only_while_it_holds_packets() -> None:
    from imqd.qdisc.base import QueuedPacket
    from imqd.qdisc.htb import HTB, HTBClassParams

    h = HTB([HTBClassParams("p", None, 8e6, 8e6, 1600, 1600)]
            + [HTBClassParams(f"s{i}", "p", 8e4, 8e4, 1600, 1600) for i in range(3)], 0.0)
    assert all(h.leaf(f"s{i}") is None for i in range(3)), "10,000 idle subscribers cost no queue"
    for _ in range(3):  # the first goes through (send_now would), the rest wait for tokens
        h.enqueue(QueuedPacket(1500), "s1", 0.0)
    assert h.leaf("s1") is not None and h.leaf("s1").backlog_packets == 3 and h.leaf("s0") is None
    now, out = 0.0, 0
    while out < 3:
        out += h.dequeue(now) is not None
        now += 0.01
    assert h.leaf("s1") is None, "freed once empty"
    h.enqueue(QueuedPacket(1500), "s2", now)
    h.drain()
    assert h.leaf("s2") is None, "freed by drain too"
