"""The config file and its write-ahead journal (imqd.journal): durable changes, replay, compaction, crashes.

A crash is simulated by making one step raise: the files are then exactly as a power cut at that point
leaves them (every earlier step was fsynced).  Whatever the step, loading gives the configuration the
changes made, never half of one, and the next writer recovers and continues.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from imqd import journal as journal_mod
from imqd.config import Config, ConfigDelta, ConfigError, dump_config, load_config, parse_config
from imqd.journal import COMPACT_RECORDS, ConfigStore, JournalError

BASE = {"overhead": 14, "classes": [
    {"name": "down", "direction": "ingress", "rate": "100mbit"},
    {"name": "a", "direction": "ingress", "parent": "down", "rate": "10mbit", "match": {"dst": "198.18.1.1"}},
    {"name": "b", "direction": "ingress", "parent": "down", "rate": "10mbit", "default": True},
]}


class Crash(BaseException):
    """Stands for the power going off: nothing after it runs (not an Exception: no handler swallows it)."""


def start(tmp_path: Path, data: dict[str, Any] = BASE) -> tuple[ConfigStore, Config, Path]:
    path = tmp_path / "imqd.yaml"
    path.write_text(dump_config(parse_config(data)))
    store = ConfigStore(path)
    return store, store.load(), path


def change(store: ConfigStore, config: Config, name: str, **patch: Any) -> Config:
    new = config.with_class_changed(name, patch)
    store.record(ConfigDelta(upserted=(new.class_by_name(name),)))
    return new


def journal_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path.parent / (path.name + ".journal")).read_text().splitlines()]


def test_changes_are_replayed_over_the_file(tmp_path: Path) -> None:
    store, cfg, path = start(tmp_path)
    before = path.read_bytes()
    cfg = change(store, cfg, "a", rate="20mbit")
    new = cfg.with_class_added({"name": "c", "direction": "ingress", "parent": "down", "rate": "1mbit"})
    store.record(cfg.diff(new))
    cfg = new.with_class_removed("b")
    store.record(ConfigDelta(removed=("b",)))
    store.record(ConfigDelta(overhead=38))
    cfg = cfg.apply_delta(ConfigDelta(overhead=38))
    assert path.read_bytes() == before, "a change does not rewrite the YAML file"
    assert load_config(path) == cfg
    again = ConfigStore(path)
    assert again.load() == cfg and again.replayed == 4
    lines = journal_lines(path)
    assert [r.get("seq") for r in lines[1:]] == [1, 2, 3, 4]
    assert lines[1]["upserted"][0]["rate"] == "20mbit", "records hold classes as the YAML file writes them"


def test_a_reordering_bulk_change_replays_in_the_new_order(tmp_path: Path) -> None:
    store, cfg, path = start(tmp_path)
    new = parse_config({"overhead": 14, "classes": [BASE["classes"][0], BASE["classes"][2], BASE["classes"][1]]})
    delta = cfg.diff(new)
    assert delta.order == ("down", "b", "a")
    store.record(delta)
    assert [c.name for c in load_config(path).classes] == ["down", "b", "a"]


def test_a_torn_last_line_was_never_acknowledged(tmp_path: Path) -> None:
    store, cfg, path = start(tmp_path)
    cfg = change(store, cfg, "a", rate="20mbit")
    jpath = Path(store.journal_path)
    with open(jpath, "ab") as f:
        f.write(b'{"seq": 2, "removed": ["a"], "ups')  # the power went off mid-append
    assert load_config(path) == cfg
    store.close()
    writer = ConfigStore(path)
    writer.open()  # drops the torn bytes so the next append starts a clean line
    assert not jpath.read_bytes().endswith(b"ups")
    cfg = change(writer, cfg, "b", rate="5mbit")
    assert load_config(path) == cfg


def test_a_corrupt_line_before_others_is_refused_with_its_line(tmp_path: Path) -> None:
    store, cfg, path = start(tmp_path)
    change(store, cfg, "a", rate="20mbit")
    jpath = Path(store.journal_path)
    text = jpath.read_text().splitlines()
    jpath.write_text("\n".join([text[0], "garbage", *text[1:]]) + "\n")
    with pytest.raises(JournalError) as ei:
        load_config(path)
    assert ei.value.errors[0]["line"] == 2 and "corrupt journal line" in str(ei.value)


def test_a_failed_append_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, cfg, path = start(tmp_path)
    cfg = change(store, cfg, "a", rate="20mbit")
    size = os.path.getsize(store.journal_path)

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_mod.os, "fdatasync", full)
    with pytest.raises(OSError):
        change(store, cfg, "b", rate="5mbit")
    monkeypatch.undo()
    assert os.path.getsize(store.journal_path) == size, "the half-written line is cut off again"
    assert load_config(path) == cfg
    cfg = change(store, cfg, "b", rate="6mbit")
    assert load_config(path) == cfg


def test_compaction_writes_the_file_and_keeps_later_changes(tmp_path: Path) -> None:
    store, cfg, path = start(tmp_path)
    cfg = change(store, cfg, "a", rate="20mbit")
    snapshot, seq = cfg, store.seq
    later = change(store, cfg, "b", rate="5mbit")  # recorded while the snapshot is being written
    store.compact(snapshot, seq)
    assert parse_config(load_yaml(path)) == snapshot, "the YAML file holds the snapshot"
    assert [r["seq"] for r in journal_lines(path)[1:]] == [2], "only the later change stays in the journal"
    assert load_config(path) == later
    assert oct(path.stat().st_mode & 0o777) == "0o600" and (tmp_path / "imqd.yaml.bak").exists()
    store.compact(later, store.seq)
    assert journal_lines(path)[1:] == [] and parse_config(load_yaml(path)) == later


def load_yaml(path: Path) -> Any:
    from imqd.config_file import read_yaml

    return read_yaml(path.read_text())


@pytest.mark.parametrize("step", ["write_temp", "journal.next", "install", "replace"])
def test_a_crash_at_any_step_of_compaction_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         step: str) -> None:
    store, cfg, path = start(tmp_path)
    cfg = change(store, cfg, "a", rate="20mbit")
    snapshot, seq = cfg, store.seq
    cfg = change(store, cfg, "b", rate="5mbit")
    real = {"write_temp": journal_mod.write_temp, "install": journal_mod.install,
            "_write_journal": ConfigStore._write_journal, "replace": os.replace}

    def crash_after(name: str) -> Any:
        def wrapped(*a: Any, **kw: Any) -> Any:
            result = real[name](*a, **kw)
            if name != "replace" or str(a[1]).endswith(".journal"):
                raise Crash(name)
            return result
        return wrapped

    if step == "write_temp":
        monkeypatch.setattr(journal_mod, "write_temp", crash_after("write_temp"))
    elif step == "journal.next":
        monkeypatch.setattr(ConfigStore, "_write_journal", staticmethod(crash_after("_write_journal")))
    elif step == "install":
        monkeypatch.setattr(journal_mod, "install", crash_after("install"))
    else:
        monkeypatch.setattr(journal_mod.os, "replace", crash_after("replace"))
    with pytest.raises(Crash):
        store.compact(snapshot, seq)
    monkeypatch.undo()
    assert load_config(path) == cfg, f"after a crash at {step}"
    writer = ConfigStore(path)  # the next imqd run: recovers, continues
    writer.open()
    assert not Path(writer.next_path).exists()
    cfg = change(writer, cfg, "a", rate="30mbit")
    assert load_config(path) == cfg
    writer.compact(cfg, writer.seq)
    assert ConfigStore(path).load() == cfg and journal_lines(path)[1:] == []


def test_a_hand_edit_with_pending_changes_is_refused_not_guessed(tmp_path: Path) -> None:
    store, cfg, path = start(tmp_path)
    change(store, cfg, "a", rate="20mbit")
    path.write_text(path.read_text().replace("10mbit", "11mbit"))
    with pytest.raises(JournalError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert "changed after imqd last wrote it" in msg and "1 later changes" in msg and "deleting the journal" in msg
    os.unlink(store.journal_path)
    assert load_config(path).class_by_name("a").rate == 11_000_000


def test_a_hand_edit_after_a_clean_stop_simply_wins(tmp_path: Path) -> None:
    store, cfg, path = start(tmp_path)
    cfg = change(store, cfg, "a", rate="20mbit")
    store.compact(cfg, store.seq)
    path.write_text(path.read_text().replace("20mbit", "21mbit"))
    assert load_config(path).class_by_name("a").rate == 21_000_000


def test_the_parsed_file_is_remembered_until_it_changes(tmp_path: Path) -> None:
    store, cfg, path = start(tmp_path)
    assert store.parsed and store.remember_parse()
    again = ConfigStore(path)
    assert again.load() == cfg and not again.parsed, "the second start reads the parsed content from the journal"
    path.write_text(path.read_text().replace("100mbit", "90mbit"))  # an edit by hand (no pending changes)
    edited = ConfigStore(path)
    assert edited.load().class_by_name("down").rate == 90_000_000 and edited.parsed


def test_a_new_file_is_created_by_the_first_compaction(tmp_path: Path) -> None:
    path = tmp_path / "new.yaml"
    store = ConfigStore(path)
    assert store.load(missing_ok=True) == Config()
    with pytest.raises(ConfigError, match="file not found"):
        ConfigStore(path).load()
    cfg = parse_config(BASE)
    store.open()
    store.record(Config().diff(cfg))
    assert load_config(path) == cfg, "the journal alone holds it until the file is written"
    store.compact(cfg, store.seq)
    assert path.exists() and load_config(path) == cfg


def test_compaction_is_due_when_the_journal_grows(tmp_path: Path) -> None:
    store, cfg, _ = start(tmp_path)
    for i in range(COMPACT_RECORDS):
        assert not store.needs_compaction()
        cfg = change(store, cfg, "a", rate=f"{1 + i % 50}mbit")
    assert store.needs_compaction()


def test_a_deleted_file_is_not_found_even_with_an_empty_journal(tmp_path: Path) -> None:
    store, cfg, path = start(tmp_path)
    store.open()
    path.unlink()
    with pytest.raises(ConfigError, match="file not found"):
        load_config(path)
    assert load_config(path, missing_ok=True) == Config()


def test_a_loaded_config_holds_one_object_per_distinct_number() -> None:
    """The copy journal.compact makes shares equal ints between classes (pickle makes each a new object) and
    is equal to what it copied."""
    data = {"classes": [{"name": "subs", "rate": "10gbit"}]
            + [{"name": f"s{i}", "parent": "subs", "rate": 1_000_000 + (i % 2), "ceil": "1gbit",
                "match": {"dst": f"198.18.1.{i}/32"}} for i in range(6)]}
    config = parse_config(data)
    copy = journal_mod.compact(config)
    assert copy == config and copy is not config
    leaves = copy.classes[1:]
    assert len({id(c.rate) for c in leaves}) == 2, "two plans, two rate objects"
    assert len({id(c.ceil) for c in leaves}) == 1 and len({id(c.limit) for c in leaves}) == 1
    assert [c.rate for c in leaves] == [1_000_000, 1_000_001] * 3
