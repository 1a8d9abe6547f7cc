"""CLI argument handling that needs no root: flags are checked and named, configs validated."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from imqd.cli import host_port_arg, kernel_queue_len, main
from imqd.config import parse_config
from imqd.kernel_queues import DEFAULT_HELD_MAX, SOCKET_MESSAGES_MAX


@pytest.fixture(autouse=True)
def hermetic_iptables(monkeypatch: pytest.MonkeyPatch) -> None:
    """No unit test reads the host's nat table or could change its rules, whatever a bug would do."""
    import imqd.rules

    def no_apply(*args: object, **kw: object) -> None:
        raise AssertionError("a unit test reached rules.apply")

    monkeypatch.setattr(imqd.rules, "read_nat", lambda runner=None, ipv6=True: {"ipv4": "", "ipv6": ""})
    monkeypatch.setattr(imqd.rules, "apply", no_apply)


def test_api_address_parsing() -> None:
    assert host_port_arg("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert host_port_arg("[::1]:9000") == ("::1", 9000)
    assert host_port_arg("none") is None
    for bad in ("8000", "host:", "host:x", "host:70000"):
        with pytest.raises(argparse.ArgumentTypeError, match="--api"):
            host_port_arg(bad)


def test_kernel_queue_holds_every_leaf_limit_and_what_the_socket_holds() -> None:
    cfg = parse_config({"classes": [{"name": "p", "rate": "10mbit"},
                                    {"name": "a", "parent": "p", "rate": "5mbit", "limit": 30000},
                                    {"name": "b", "parent": "p", "rate": "5mbit", "limit": 5000}]})
    # the socket must overflow first: the kernel gives an id (to count) only to what overflows the socket
    assert kernel_queue_len(cfg, 100, held_max=40000) == 35000 + 1024 + SOCKET_MESSAGES_MAX, \
        "inner classes hold nothing"
    assert kernel_queue_len(parse_config({"classes": []}), 50000) == 50000
    # ... but no more held than the classes may hold together (--max-held)
    assert kernel_queue_len(cfg, 100) == DEFAULT_HELD_MAX + 1024 + SOCKET_MESSAGES_MAX
    assert kernel_queue_len(cfg, 100, held_max=10) == 10 + 1024 + SOCKET_MESSAGES_MAX


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


# ---------------------------------------------------------------- --ingress-hook, the deprecated --nat
def options(argv: list[str]):
    from imqd.cli import build_parser, rule_options

    return rule_options(build_parser().parse_args(["rules", "apply", "--queues", "0:1", *argv]))


def test_ingress_is_after_de_nat_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMQD_INGRESS_HOOK", raising=False)
    assert options([]).ingress_hook == "after-nat"
    assert options(["--ingress-hook", "prerouting"]).ingress_hook == "prerouting"
    assert options(["--ingress-hook", "BB"]).ingress_hook == "prerouting"
    assert options(["--ingress-hook", "AB"]).ingress_hook == "after-nat"
    monkeypatch.setenv("IMQD_INGRESS_HOOK", "prerouting")
    assert options([]).ingress_hook == "prerouting"
    assert options(["--ingress-hook", "after-nat"]).ingress_hook == "after-nat", "the flag wins over the env"


def test_bad_ingress_hook_is_one_line_naming_the_flag_or_env(capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        main(["rules", "apply", "--queues", "0:1", "--ingress-hook", "BA"])
    err = capsys.readouterr().err
    assert "--ingress-hook BA: IMQ's behaviour BA shapes egress after SNAT, which iptables cannot do" in err
    monkeypatch.setenv("IMQD_INGRESS_HOOK", "sideways")
    assert main(["rules", "apply", "--queues", "0:1"]) == 1
    assert capsys.readouterr().err == ("imqd: IMQD_INGRESS_HOOK: expected one of after-nat, prerouting "
                                       "(or IMQ's AB, BB), got 'sideways'\n")


def test_nat_flag_still_works_with_a_one_line_notice(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMQD_INGRESS_HOOK", raising=False)
    assert options(["--nat"]).ingress_hook == "after-nat"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("imqd: notice: --nat is deprecated")
    with pytest.raises(Exception, match="--nat .* contradicts --ingress-hook prerouting"):
        options(["--nat", "--ingress-hook", "prerouting"])
    assert main(["rules", "apply", "--queues", "0:1", "--nat", "--ingress-hook", "prerouting"]) == 1


# ---------------------------------------------------------------- check-config: the placement warnings
MASQUERADING = "*nat\n-A POSTROUTING -o wan0 -j MASQUERADE\nCOMMIT\n"


def test_check_config_warns_when_ingress_before_de_nat_cannot_see_a_class(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import imqd.rules

    monkeypatch.setattr(imqd.rules, "read_nat", lambda runner=None, ipv6=True: {"ipv4": MASQUERADING, "ipv6": ""})
    monkeypatch.delenv("IMQD_INGRESS_HOOK", raising=False)
    path = tmp_path / "imqd.yaml"
    path.write_text("classes:\n  - {name: lan1, direction: ingress, rate: 6mbit, match: {dst: 198.18.1.2/32}}\n")
    assert main(["check-config", str(path), "--ingress-hook", "prerouting"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: OK (1 classes, 1 warning (ingress hook prerouting))\n"
    assert err.startswith("imqd: warning: class lan1 matches dst 198.18.1.2/32, but ingress is taken at mangle "
                          "PREROUTING, before de-NAT") and err.count("\n") == 1
    assert main(["check-config", str(path)]) == 0, "the default placement sees the internal host"
    assert capsys.readouterr() == (f"{path}: OK (1 classes)\n", "")


def test_check_config_without_a_readable_nat_table_says_the_check_was_skipped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import imqd.rules

    def denied(runner=None, ipv6=True):
        raise imqd.rules.RulesError("iptables-save: permission denied -- managing imqd's rules needs CAP_NET_ADMIN")

    monkeypatch.setattr(imqd.rules, "read_nat", denied)
    path = tmp_path / "imqd.yaml"
    path.write_text("classes:\n  - {name: a, rate: 1mbit}\n")
    assert main(["check-config", str(path), "--ingress-hook", "prerouting"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: OK (1 classes)\n"
    assert err == ("imqd: note: NAT placement checks skipped, the nat table is unreadable: iptables-save: "
                   "permission denied -- managing imqd's rules needs CAP_NET_ADMIN\n")


def test_run_checks_the_placement_it_installs_else_the_one_installed(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """`imqd run --apply-rules` checks its own placement; without it, the one `imqd rules apply` installed."""
    import logging

    import imqd.rules
    from imqd.cli import start_checks
    from imqd.rules import RuleOptions

    monkeypatch.setattr(imqd.rules, "read_nat", lambda runner=None, ipv6=True: {"ipv4": MASQUERADING, "ipv6": ""})
    installed: list[object] = ["prerouting"]

    def installed_hook(runner=None):
        if isinstance(installed[0], Exception):
            raise installed[0]
        return installed[0]

    monkeypatch.setattr(imqd.rules, "installed_ingress_hook", installed_hook)
    config = parse_config({"classes": [{"name": "lan1", "direction": "ingress", "rate": "6mbit",
                                        "match": {"dst": "198.18.1.2/32"}}]})
    opts = RuleOptions(queues=(0, 1))
    with caplog.at_level(logging.WARNING, logger="imqd"):
        assert start_checks(config, opts, applying=True).ingress_hook == "after-nat"
        assert not caplog.records
        assert start_checks(config, opts, applying=False).ingress_hook == "prerouting"
    (record,) = caplog.records
    assert record.getMessage().startswith("class lan1 matches dst 198.18.1.2/32, but ingress is taken at mangle "
                                          "PREROUTING")
    installed[0] = None
    assert start_checks(config, opts, applying=False).ingress_hook == "after-nat", "nothing installed: the flag's"
    installed[0] = imqd.rules.RulesError("iptables-save not found")
    assert start_checks(config, opts, applying=False).ingress_hook == "after-nat"


@pytest.mark.parametrize(("flags", "gso", "fail_open"), [((), True, False), (("--no-gso",), False, False),
                                                          (("--on-overflow", "accept"), True, True),
                                                          (("--on-overflow", "drop", "--no-gso"), False, False)])
def test_gso_and_overflow_flags_reach_the_workers(flags: tuple[str, ...], gso: bool, fail_open: bool,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import imqd.bind_errors
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
    monkeypatch.setattr(imqd.bind_errors, "has_net_admin", lambda: True)
    assert main(["run", "--queues", "0", "--api", "none", *flags]) == 1
    assert "stop here" in capsys.readouterr().err
    assert (seen["gso"], seen["fail_open"]) == (gso, fail_open)


def test_a_bad_overflow_choice_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--queues", "0", "--on-overflow", "bypass"])
    assert "--on-overflow: invalid choice: 'bypass'" in capsys.readouterr().err
