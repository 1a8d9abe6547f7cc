"""The config file plus a write-ahead journal: a change is durable in milliseconds, the YAML stays the truth.

Rewriting a 10,000-class YAML file takes ~0.5-2 s (and fsyncing 1.5 MB), far over the
50 ms a live change may take.  So every accepted change is appended to
``PATH.journal`` as one JSON line and fsynced before any worker sees it; loading
the configuration replays the journal over the YAML; and *compaction* writes the
YAML again (atomically, as before) and starts an empty journal -- in the
background when the journal grows, after a quiet period, and at shutdown.  An
operator reading ``PATH`` after a clean stop sees everything; ``imqd
check-config`` and every other reader replay the journal, so nobody sees a stale
state.  Why not a database (SQLite): the file an operator edits, diffs and keeps
in git would stop being the configuration.

The journal, JSON lines::

    {"imqd_journal": 1, "base": "<sha256 of the YAML file this journal continues; null: no file>", "seq": 0,
     "base_data": <optional: that file's content as parsed, so the next start need not parse it again>}
    {"seq": 1, "removed": [...], "upserted": [<class as in the YAML>], "overhead": null, "order": null}

Crash safety (a crash at any point leaves the old or the new state, never half;
``tests/unit/test_journal.py`` crashes between every two steps):

* append: one ``write`` + ``fdatasync``; a torn last line (no newline, or not
  JSON) was never acknowledged and is dropped on load.
* compaction: (1) the new YAML goes to a temporary file, fsynced; (2) the
  records newer than the snapshot go to ``PATH.journal.next``, whose base is
  the new YAML's hash, fsynced; (3) the YAML is renamed into place; (4)
  ``.next`` is renamed over the journal.  Load recognises each state by the
  hashes: a ``.next`` matching the YAML finishes step 4; one that does not is
  left over from before step 3 and is deleted.
* a YAML edited by hand while the journal holds changes made through the API
  matches neither: loading refuses with a message saying how to resolve it,
  rather than silently dropping either side.  (After a clean stop the journal
  is empty and hand edits simply win.)
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from imqd.config import Config, ConfigDelta, ConfigError, parse_config
from imqd.config_file import (
    YamlError,
    class_to_data,
    config_to_data,
    data_chunks,
    fsync_dir,
    install,
    read_bytes,
    read_yaml,
    write_temp,
    yaml_lines,
)

__all__ = ["ConfigStore", "JournalError", "COMPACT_RECORDS", "COMPACT_BYTES"]

JOURNAL_VERSION = 1
COMPACT_RECORDS = 1000  # compact when the journal holds this many changes ...
COMPACT_BYTES = 4 << 20  # ... or this many bytes (a bulk replace records every class it changes)


class JournalError(ConfigError):
    """The journal cannot be used (corrupt, or it conflicts with a hand-edited file)."""


@dataclass
class _Journal:
    """A journal file as read: its base hash, its records, and how many bytes of it are sound."""

    base: str | None
    seq: int = 0  # the last change the YAML file already holds: records continue from seq + 1
    base_data: Any = None  # the YAML file's content as parsed, when imqd wrote or read it (see ConfigStore.load)
    records: list[dict[str, Any]] = field(default_factory=list)
    good_size: int = 0  # bytes up to the end of the last complete line
    size: int = 0

    @property
    def last_seq(self) -> int:
        return self.records[-1]["seq"] if self.records else self.seq


def _sha256(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


class ConfigStore:
    """The configuration file ``path`` and its journal: load, record a change, compact."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.display = os.fspath(path)
        self.path = os.path.realpath(self.display)  # a symlinked config stays a symlink
        self.journal_path = self.path + ".journal"
        self.next_path = self.journal_path + ".next"
        self._fd: int | None = None
        self._parsed: tuple[str | None, str] | None = None  # (hash, JSON of the data) of a YAML file load() parsed
        self.seq = 0  # sequence number of the last recorded change
        self.records = 0  # changes in the journal, not yet written into the YAML
        self.size = 0  # bytes of the journal
        self.replayed = 0  # changes the last load() took from the journal

    # --- reading -------------------------------------------------------------------------------

    def pending(self) -> int:
        """Changes in the journal not yet written into the YAML file (read from disk until the journal is open
        for appends; 0 when it cannot be read)."""
        if self._fd is not None:
            return self.records
        try:
            journal = self._parse_journal(self.journal_path)
        except ConfigError:
            return 0
        return len(journal.records) if journal is not None else 0

    def exists(self) -> bool:
        """Whether the YAML file exists (a new configuration's file appears at the first compaction)."""
        return os.path.exists(self.path)

    def load(self, missing_ok: bool = False) -> Config:
        """The configuration: the YAML file with the journal's changes replayed, validated.

        Every problem raises ``ConfigError`` naming the file (and the line, for the YAML)."""
        for attempt in range(3):
            raw = self._read(self.path)
            try:
                journal = self._recover(raw)
                break
            except JournalError:  # maybe a compaction switched the files between our reads: look again
                if attempt == 2:
                    raise
                time.sleep(0.05)
        if raw is None and not journal.records and not missing_ok:
            raise ConfigError([{"loc": (), "msg": "file not found"}], path=self.display)
        text = ""
        data: Any = {}
        self._parsed = None
        if raw is not None and journal.base_data is not None and journal.base == _sha256(raw):
            data = journal.base_data  # this very file, parsed before: ~30 ms instead of ~1 s at 10,000 classes
        elif raw is not None:
            try:
                text = raw.decode("utf-8")
                data = read_yaml(text)
            except UnicodeDecodeError as e:
                raise ConfigError([{"loc": (), "msg": f"cannot read: {e}"}], path=self.display) from None
            except YamlError as e:
                raise ConfigError([{"loc": (), "msg": e.msg, "line": e.line}], path=self.display) from None
            if data is None:
                raise ConfigError([{"loc": (), "msg": "file is empty (half-written?)", "line": 1}], path=self.display)
            try:  # kept as JSON text (one block of memory) until remember_parse writes it, not as 10,000 dicts
                self._parsed = (_sha256(raw), _json(data))
            except (TypeError, ValueError):  # what JSON cannot hold (a YAML date): parsed again next time
                self._parsed = None
        self.replayed = len(journal.records)
        if journal.records:
            data = self._replay(data, journal.records)
        try:
            return compact(parse_config(data))
        except ConfigError as e:
            if text:
                yaml_lines(text, e.errors)
            if journal.records:
                e.errors.append({"loc": (), "msg": f"(with the {len(journal.records)} changes of "
                                                   f"{self.journal_path} applied)"})
            raise ConfigError(e.errors, code=e.code, path=self.display) from None

    def _read(self, path: str) -> bytes | None:
        try:
            return read_bytes(path)
        except OSError as e:
            raise ConfigError([{"loc": (), "msg": f"cannot read: {e}"}], path=path) from None

    def _parse_journal(self, path: str) -> _Journal | None:
        raw = self._read(path)
        if raw is None:
            return None
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline (a torn append)
        journal: _Journal | None = None
        offset = 0
        for number, line in enumerate(complete, 1):
            try:
                item = json.loads(line)
            except ValueError:
                item = None
            if number == 1:
                if not (isinstance(item, dict) and item.get("imqd_journal") == JOURNAL_VERSION and "base" in item):
                    raise JournalError([{"loc": (), "msg": "not an imqd journal (bad first line)", "line": 1}],
                                       path=path)
                seq = item.get("seq", 0)
                journal = _Journal(base=item["base"], seq=seq if isinstance(seq, int) else 0,
                                   base_data=item.get("base_data"))
            elif not _valid_record(item, journal.last_seq if journal else 0):
                if number == len(complete) and not tail:  # the last line: an append that was cut short
                    break
                raise JournalError([{"loc": (), "msg": "corrupt journal line (delete the journal to keep the file "
                                                       "as it is, losing the changes recorded after it)",
                                     "line": number}], path=path)
            else:
                assert journal is not None
                journal.records.append(item)
            offset += len(line) + 1
            if journal is not None:
                journal.good_size = offset
        if journal is None:  # empty, or only a torn header: no change was ever acknowledged
            return _Journal(base=None, good_size=0, size=len(raw)) if raw else None
        journal.size = len(raw)
        return journal

    def _recover(self, raw: bytes | None, repair: bool = False) -> _Journal:
        """The journal that continues the YAML ``raw``, seeing through an unfinished compaction.

        ``repair`` (only the process that writes, when it opens the journal): finish or discard that
        compaction on disk.  A reader changes nothing: the writer may be in the middle of one."""
        base = _sha256(raw)
        nxt = self._parse_journal(self.next_path)
        if nxt is not None:
            if nxt.base == base and raw is not None:  # compaction got past step 3: finish step 4
                if repair:
                    os.replace(self.next_path, self.journal_path)
                    fsync_dir(os.path.dirname(self.path) or ".")
                return nxt
            if repair:
                _remove(self.next_path)  # interrupted before the YAML moved: the old journal still holds
        journal = self._parse_journal(self.journal_path)
        if journal is None:
            return _Journal(base=base)
        if journal.base == base or not journal.records:
            return journal
        raise JournalError([{"loc": (), "msg": (
            f"the file was changed after imqd last wrote it, and {self.journal_path} holds "
            f"{len(journal.records)} later changes made through the API: both cannot be right. Keep the file as "
            f"it is by deleting the journal, or restore the file imqd wrote ({self.display}.bak, if that is it)")}],
            path=self.display)

    @staticmethod
    def _replay(data: Any, records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """The raw config data with the journal's changes applied (validated as a whole afterwards)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("classes", []), list):
            raise ConfigError.one((), "the file is not a configuration the journal can be replayed onto")
        classes: dict[str, Any] = {}
        for item in data.get("classes") or []:
            name = item.get("name") if isinstance(item, Mapping) else None
            if not isinstance(name, str) or name in classes:
                raise ConfigError.one(("classes",), "the file's classes must have distinct names to replay the "
                                                    "journal onto them")
            classes[name] = item
        out = dict(data)
        for rec in records:
            for name in rec["removed"]:
                classes.pop(name, None)
            for item in rec["upserted"]:
                classes[item["name"]] = item  # an existing name keeps its place, a new one goes last
            if rec["order"] is not None:
                classes = {name: classes[name] for name in rec["order"] if name in classes}
            if rec["overhead"] is not None:
                out["overhead"] = rec["overhead"]
        out["classes"] = list(classes.values())
        return out

    # --- writing -------------------------------------------------------------------------------

    def open(self) -> None:
        """Make the journal ready for appends: continue a sound one, or start one on the current file."""
        if self._fd is not None:
            return
        raw = self._read(self.path)
        journal = self._recover(raw, repair=True)
        if not journal.records:
            self._write_journal(self.journal_path, _header(_sha256(raw), journal.last_seq), [])
            journal = self._parse_journal(self.journal_path) or _Journal(base=_sha256(raw))
        elif journal.good_size < journal.size:
            os.truncate(self.journal_path, journal.good_size)  # drop a torn append
        self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND)
        self.seq, self.records, self.size = journal.last_seq, len(journal.records), journal.good_size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def record(self, delta: ConfigDelta) -> None:
        """Append ``delta`` durably.  On an error (disk full...) nothing is recorded and it propagates."""
        self.open()
        assert self._fd is not None
        line = json.dumps(record_of(delta, self.seq + 1), separators=(",", ":"), ensure_ascii=True) + "\n"
        data = line.encode("ascii")
        try:
            _write_all(self._fd, data)
            os.fdatasync(self._fd)
        except BaseException:
            try:
                os.ftruncate(self._fd, self.size)  # no half line for the next append to follow
            except OSError:
                pass
            raise
        self.seq += 1
        self.records += 1
        self.size += len(data)

    def needs_compaction(self) -> bool:
        return self.records >= COMPACT_RECORDS or self.size >= COMPACT_BYTES

    def compact(self, snapshot: Config, seq: int, lock: AbstractContextManager[Any] | None = None) -> None:
        """Write ``snapshot`` (the configuration after change ``seq``) into the YAML file and keep only the later
        changes in the journal.  The slow part (writing the YAML) runs without ``lock``; the switch-over
        (copying the later records, two renames) holds it, so no change is recorded meanwhile."""
        if self._fd is None:
            raise RuntimeError("compact() needs the journal open(): the snapshot's seq must be known")
        hasher = hashlib.sha256()
        data = config_to_data(snapshot)
        tmp = write_temp(self.path, _hashing(data_chunks(data), hasher))
        try:
            header = _header(hasher.hexdigest(), seq, _json(data))  # serialised before the lock: ~2 MB at 10,000 classes
            with lock if lock is not None else nullcontext():
                later = [line for line in self._journal_lines() if json.loads(line)["seq"] > seq]
                self._write_journal(self.next_path, header, later)
                install(tmp, self.path)
                os.replace(self.next_path, self.journal_path)
                fsync_dir(os.path.dirname(self.path) or ".")
                self.close()
                self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND)
                self.records = len(later)
                self.size = os.fstat(self._fd).st_size
        except BaseException:
            _remove(tmp)
            raise

    def _journal_lines(self) -> list[bytes]:
        raw = read_bytes(self.journal_path) or b""
        return [line for line in raw.split(b"\n")[1:] if line.strip()]

    @property
    def parsed(self) -> bool:
        """Whether the last load() parsed the YAML file (its content is not in the journal yet)."""
        return self._parsed is not None

    def remember_parse(self, lock: AbstractContextManager[Any] | None = None) -> bool:
        """Keep what ``load()`` parsed from the YAML file in the journal's header, so the next start reads the
        file's content from there (~30 ms) instead of parsing YAML (~1 s at 10,000 classes).  Only while the
        file is unchanged: the header names its hash, and a file edited by hand is parsed again.  Whether
        there was anything to remember."""
        parsed, self._parsed = self._parsed, None
        if parsed is None:
            return False
        with lock if lock is not None else nullcontext():
            self.open()
            journal = self._parse_journal(self.journal_path)
            if journal is None or journal.base != parsed[0]:
                return False  # compacted meanwhile: the new header has the data already
            header = _header(parsed[0], journal.seq, parsed[1])
            self.close()
            self._write_journal(self.journal_path, header, self._journal_lines())
            self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND)
            self.size = os.fstat(self._fd).st_size
        return True

    @staticmethod
    def _write_journal(path: str, header: bytes, lines: list[bytes]) -> None:
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, header + b"".join(line + b"\n" for line in lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(path + ".tmp", path)
        fsync_dir(os.path.dirname(path) or ".")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=True)


def _header(base: str | None, seq: int, base_json: str | None = None) -> bytes:
    """The journal's first line: the YAML file it continues (its hash), the last change that file holds, and
    optionally its parsed content (``base_json``: as :func:`_json` wrote it)."""
    head = _json({"imqd_journal": JOURNAL_VERSION, "base": base, "seq": seq})
    if base_json is not None:
        head = f'{head[:-1]},"base_data":{base_json}}}'
    return head.encode("ascii") + b"\n"


def compact(config: Config) -> Config:
    """A copy of ``config`` made of fresh objects, allocated together.

    A parsed file leaves the Config's objects (and the strings it shares with the parsed data) scattered among
    the parse's garbage, and each one keeps its page of that garbage in memory: ~10 KB of RSS per class at
    10,000 classes against ~1.7 KB for the Config itself (``python -m bench.memory``).  The caller still holds
    the parsed data while the copy is made, so the copy cannot fill the garbage's holes; dropping both then
    gives those pages back.  Costs a pickle round trip (~0.1 s at 10,000 classes)."""
    copy = pickle.loads(pickle.dumps(config, pickle.HIGHEST_PROTOCOL))
    share_numbers(copy)
    return copy


def share_numbers(config: Config) -> None:
    """Make the classes' equal int values one object each.

    Pickle writes an int by value, so the copy holds a new object for every class's ``rate``, ``ceil`` and
    ``limit`` even when 10,000 subscribers share a plan (~90 bytes a class).  The models are frozen, and a
    value replaced by an equal one changes nothing but memory, so it is done in their ``__dict__``."""
    canon: dict[int, int] = {}
    for c in config.classes:
        d = c.__dict__
        for key, value in d.items():
            if type(value) is int:
                d[key] = canon.setdefault(value, value)


def record_of(delta: ConfigDelta, seq: int) -> dict[str, Any]:
    """A delta as a journal record: classes in the form the YAML file has."""
    return {"seq": seq, "removed": list(delta.removed), "upserted": [class_to_data(c) for c in delta.upserted],
            "overhead": delta.overhead, "order": None if delta.order is None else list(delta.order)}


def _valid_record(item: Any, last_seq: int) -> bool:
    return (isinstance(item, dict) and item.get("seq") == last_seq + 1
            and isinstance(item.get("removed"), list) and all(isinstance(n, str) for n in item["removed"])
            and isinstance(item.get("upserted"), list)
            and all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in item["upserted"])
            and (item.get("overhead") is None or isinstance(item["overhead"], int))
            and (item.get("order") is None or isinstance(item["order"], list)))


def _hashing(chunks: Iterable[str], hasher: Any) -> Iterator[str]:
    for chunk in chunks:
        hasher.update(chunk.encode("utf-8"))
        yield chunk


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass

