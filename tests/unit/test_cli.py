"""CLI argument handling that needs no root: flags are checked and named, configs validated."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from imqd.cli import host_port_arg, kernel_queue_len, main
from imqd.config import parse_config
from imqd.queue_worker import SOCKET_MESSAGES_MAX


def test_api_address_parsing() -> None:
    assert host_port_arg("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert host_port_arg("[::1]:9000") == ("::1", 9000)
    assert host_port_arg("none") is None
    for bad in ("8000", "host:", "host:x", "host:70000"):
        with pytest.raises(argparse.ArgumentTypeError, match="--api"):
            host_port_arg(bad)


def test_kernel_queue_holds_every_leaf_limit() -> None:
    cfg = parse_config({"classes": [{"name": "p", "rate": "10mbit"},
                                    {"name": "a", "parent": "p", "rate": "5mbit", "limit": 30000},
                                    {"name": "b", "parent": "p", "rate": "5mbit", "limit": 5000}]})
    assert kernel_queue_len(cfg, 100) == 35000 + 1024, "inner classes hold nothing"
    assert kernel_queue_len(parse_config({"classes": []}), 20000) == 20000
    # failing open, the socket must overflow first (the kernel only counts what overflows the socket)
    assert kernel_queue_len(cfg, 100, fail_open=True) == 35000 + 1024 + SOCKET_MESSAGES_MAX


def test_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("classes:\n  - {name: a, rate: 1mbit}\n")
    assert main(["check-config", str(good)]) == 0
    assert "OK (1 classes)" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes:\n  - {name: a, rate: 1mbit, ceil: 1kbit}\n")
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("imqd: invalid config") and "classes.a.ceil" in err


def test_half_written_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "imqd.yaml"
    path.write_text("classes:\n  - {name: a, rate: 1mb")
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err


def test_rules_apply_needs_queues(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMQD_QUEUES", raising=False)
    assert main(["rules", "apply"]) == 1
    assert "--queues is required" in capsys.readouterr().err
    monkeypatch.setenv("IMQD_QUEUES", "9:1")
    assert main(["rules", "apply"]) == 1
    assert "IMQD_QUEUES" in capsys.readouterr().err


def test_token_file_is_created_0600_and_open_ones_are_refused(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from imqd.cli import CliError, read_token

    path = tmp_path / "token"
    assert main(["token", str(path)]) == 0
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    token = read_token(path)
    assert len(token) >= 40
    assert main(["token", str(path)]) == 1, "never overwrites an existing token"
    assert "exists" in capsys.readouterr().err
    os.chmod(path, 0o644)
    with pytest.raises(CliError, match="chmod 600"):
        read_token(path)


@pytest.mark.parametrize(("flags", "gso", "fail_open"), [((), True, False), (("--no-gso",), False, False),
                                                          (("--on-overflow", "accept"), True, True),
                                                          (("--on-overflow", "drop", "--no-gso"), False, False)])
def test_gso_and_overflow_flags_reach_the_workers(flags: tuple[str, ...], gso: bool, fail_open: bool,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import imqd.queue_worker
    import imqd.supervisor

    seen: dict[str, object] = {}

    class Recorder:
        def __init__(self, queues: list[int], config: object, **kw: object) -> None:
            seen.update(kw)

        def start(self) -> None:
            raise imqd.supervisor.SupervisorError("stop here")

        def stop(self) -> None:
            pass

    monkeypatch.setattr(imqd.supervisor, "Supervisor", Recorder)
    monkeypatch.setattr(imqd.queue_worker, "has_net_admin", lambda: True)
    assert main(["run", "--queues", "0", "--api", "none", *flags]) == 1
    assert "stop here" in capsys.readouterr().err
    assert (seen["gso"], seen["fail_open"]) == (gso, fail_open)


def test_a_bad_overflow_choice_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--queues", "0", "--on-overflow", "bypass"])
    assert "--on-overflow: invalid choice: 'bypass'" in capsys.readouterr().err
