"""The CLI client against a real uvicorn server on 127.0.0.1 (random port), driven through ``run_client``."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st
from test_api import BASE, TOKEN, FakeWorkers, make_controller

from imqd.api import create_app
from imqd.cli import build_parser
from imqd.client import ClientError, error_line, parse_sets, run_client
from imqd.config import load_config
from imqd.controller import Controller


class Server:
    """uvicorn in a thread; stopped by setting should_exit."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class Env:
    def __init__(self, controller: Controller, workers: FakeWorkers, path: Path, api: str) -> None:
        self.controller, self.workers, self.path, self.api = controller, workers, path, api

    def run(self, *argv: str, token_file: Path | None = None) -> tuple[int, str, str]:
        extra = ["--api", self.api] + (["--token-file", str(token_file)] if token_file else [])
        args = build_parser().parse_args([*argv, *extra])
        out, err = io.StringIO(), io.StringIO()
        code = run_client(args, out=out, err=err)
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    controller, workers, path = make_controller(tmp_path, BASE)
    with Server(create_app(controller, token=None, open_reads=True)) as api:
        yield Env(controller, workers, path, api)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[Env, Path]]:
    controller, workers, path = make_controller(tmp_path, BASE)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with Server(create_app(controller, token=TOKEN, open_reads=False)) as api:
        yield Env(controller, workers, path, api), token_file


def test_class_add_with_sets(env: Env) -> None:
    code, out, err = env.run("class", "add", "web2", "--set", "rate=5mbit", "--set", "match.dst=198.18.1.0/24",
                             "--set", "match.dport=5001", "--set", "parent=root", "--set", "prio=2")
    assert (code, err) == (0, "")
    assert out.startswith("added class web2 (applied to all workers in ")
    cls = env.controller.config.class_by_name("web2")
    assert (cls.rate, cls.parent, cls.prio) == (5_000_000, "root", 2)
    assert (cls.match.dst, cls.match.dport) == ("198.18.1.0/24", (5001, 5001))
    assert load_config(env.path).class_by_name("web2") == cls


def test_class_add_with_json_and_sets_merged(env: Env) -> None:
    body = json.dumps({"rate": "1mbit", "match": {"proto": "udp", "dport": 53}})
    code, _, err = env.run("class", "add", "dns", "--json", body, "--set", "match.sport:=[1024, 65535]",
                           "--set", "rate=2mbit")
    assert (code, err) == (0, "")
    cls = env.controller.config.class_by_name("dns")
    assert cls.rate == 2_000_000
    assert (cls.match.proto, cls.match.dport, cls.match.sport) == (17, (53, 53), (1024, 65535))


def test_set_values_take_the_field_type_from_the_api_schema(env: Env) -> None:
    code, _, err = env.run("class", "add", "7", "--set", "rate=1mbit", "--set", "direction=ingress",
                           "--set", "default=yes", "--set", "limit=500", "--set", "overhead=24", "--set", "prio=7")
    assert (code, err) == (0, "")
    cls = env.controller.config.class_by_name("7")
    assert (cls.direction, cls.default, cls.limit, cls.overhead, cls.prio) == ("ingress", True, 500, 24, 7)
    code, _, err = env.run("class", "add", "8", "--set", "rate=1mbit", "--set", "parent=7",
                           "--set", "direction=ingress")
    assert code == 1 and "classes.7.default" in err  # parent '7' stayed a string; a default can't have children
    code, _, err = env.run("class", "change", "7", "--set", "overhead=none", "--set", "prio=x")
    assert code == 1 and "classes.7.prio" in err
    code, _, err = env.run("class", "change", "7", "--set", "overhead=none")
    assert (code, err) == (0, "")
    assert env.controller.config.class_by_name("7").overhead is None


def test_schema_types_and_coerce(env: Env) -> None:
    from imqd.client import coerce, schema_types

    spec = create_app(env.controller, token=None, open_reads=True).openapi()
    for path, method in (("/classes", "post"), ("/classes/{name}", "patch")):
        types = schema_types(spec, spec["paths"][path][method]["requestBody"]["content"]["application/json"]
                             ["schema"])
        assert "integer" in types(("prio",)) and "string" not in types(("prio",))
        assert "boolean" in types(("default",))
        assert "string" in types(("parent",)) and "string" in types(("name",))
        assert types(("rate",)) is None and types(("match", "dport")) is None  # free-form text
        assert types(("nosuch",)) is None and types(("match", "nosuch")) is None
    assert coerce("12", {"integer"}) == 12 and coerce("12", {"integer", "string"}) == "12"
    assert coerce("off", {"boolean"}) is False and coerce("None", {"integer", "null"}) is None
    assert coerce("12", None) == "12" and coerce("1.5", {"integer"}) == "1.5"


def test_class_list_and_show(env: Env) -> None:
    code, out, _ = env.run("class", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["class", "dir", "parent", "rate", "ceil", "prio"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"root", "web", "bulk"}
    assert "20.00Mbit" in rows["web"] and "50.00Mbit" in rows["web"] and "dport=[80,443]" in rows["web"]
    code, out, _ = env.run("class", "show", "web")
    assert code == 0
    assert json.loads(out) == env.controller.config.class_by_name("web").model_dump(mode="json")


def test_class_change_and_delete(env: Env) -> None:
    code, out, _ = env.run("class", "change", "web", "--set", "rate=30mbit")
    assert code == 0 and out.startswith("changed class web")
    assert load_config(env.path).class_by_name("web").rate == 30_000_000
    code, out, _ = env.run("class", "change", "web", "--set", "ceil:=null")
    assert code == 0 and env.controller.config.class_by_name("web").ceil is None
    code, out, _ = env.run("class", "delete", "web")
    assert code == 0 and out.startswith("deleted class web")
    assert env.controller.config.class_by_name("web") is None


@pytest.mark.parametrize(("argv", "field"), [
    (["class", "add", "x", "--set", "rate=5mbit", "--set", "ceil=1mbit"], "classes.x.ceil"),
    (["class", "add", "x", "--set", "rate=fast"], "classes.x.rate"),
    (["class", "add", "x", "--set", "rate=1mbit", "--set", "match.dst=not-an-ip"], "classes.x.match.dst"),
    (["class", "change", "web", "--set", "match.dport=99999"], "classes.web.match.dport"),
    (["class", "add", "web", "--set", "rate=1mbit"], "classes.web.name"),
])
def test_api_errors_are_one_line_naming_the_field(env: Env, argv: list[str], field: str) -> None:
    before = env.controller.config
    code, out, err = env.run(*argv)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("imqd: HTTP ")
    assert f" {field}: " in err
    assert env.controller.config is before


def test_not_found_and_has_children(env: Env) -> None:
    code, _, err = env.run("class", "show", "ghost")
    assert code == 1 and err.startswith("imqd: HTTP 404: classes.ghost: ")
    code, _, err = env.run("class", "delete", "root")
    assert code == 1 and err.startswith("imqd: HTTP 409: ") and "children" in err


def test_class_names_are_quoted_in_the_url(env: Env) -> None:
    code, _, err = env.run("class", "show", "a?b#c")
    assert code == 1 and "HTTP 404" in err and "'a?b#c'" in err


@pytest.mark.parametrize(("argv", "text"), [
    (["class", "change"], "NAME is required"),
    (["class", "delete"], "NAME is required"),
    (["class", "add", "--set", "rate=1mbit"], "NAME is required"),
    (["class", "change", "web"], "nothing to change"),
    (["class", "add", "x", "--set", "rate"], "expected FIELD=VALUE"),
    (["class", "add", "x", "--json", "{bad"], "--json: not valid JSON"),
    (["class", "add", "x", "--json", "[1]"], "expected a JSON object"),
    (["class", "add", "x", "--set", "match:=3", "--set", "match.dst=1.2.3.4"], "already set"),
])
def test_usage_errors_exit_2(env: Env, argv: list[str], text: str) -> None:
    pushes = len(env.workers.pushes)
    code, _, err = env.run(*argv)
    assert code == 2 and text in err and err.count("\n") == 1
    assert len(env.workers.pushes) == pushes


def test_stats_table_and_json(env: Env) -> None:
    env.workers.counters = {"web": {"bytes": 123456, "packets": 99, "drops": 7, "backlog_packets": 4,
                                    "backlog_bytes": 6000, "borrows": 0, "lends": 0}}
    code, out, _ = env.run("stats")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("shaping: on")
    head = lines.index(next(line for line in lines if line.startswith("class ")))
    assert lines[head].split() == ["class", "dir", "rate", "bytes", "pkts", "drops", "backlog", "matched"]
    web = next(line for line in lines if line.startswith("web ")).split()
    assert web[0:2] == ["web", "egress"] and web[3:] == ["123456", "99", "7", "4p/6000b", "-"], "no checks: no matched"
    whead = next(i for i, line in enumerate(lines) if line.startswith("queue "))
    assert lines[whead].split() == ["queue", "cpu", "pid", "packets", "held", "drops", "malformed", "restarts"]
    assert lines[whead + 1].split() == ["0", "0", "4242", "100", "10", "3", "2", "1"]
    assert lines[whead + 2].split() == ["1", "1", "4243", "50", "0", "0", "0", "0"]
    code, out, _ = env.run("stats", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["classes"]["web"]["bytes"] == 123456 and data["workers"][0]["pid"] == 4242


def test_stats_show_matched_and_the_warnings_first(env: Env) -> None:
    from imqd.hook_checks import parse_nat
    from imqd.run_checks import RunChecks

    nat = parse_nat("-A POSTROUTING -o wan0 -j MASQUERADE\n")
    env.controller.stats_hook = RunChecks(env.controller.config, "prerouting", read_nat=lambda: nat)
    assert env.run("class", "add", "lan1", "--set", "direction=ingress", "--set", "rate=6mbit",
                   "--set", "match.dst=198.18.1.2/32")[0] == 0
    env.workers.counters = {"web": {"packets": 99, "drops": 7, "backlog_packets": 4}}
    code, out, _ = env.run("stats")
    assert code == 0
    lines = out.splitlines()
    assert lines[1] == ("warning: class lan1 matches dst 198.18.1.2/32, but ingress is taken at mangle PREROUTING, "
                        "before de-NAT, and the nat table masquerades (-A POSTROUTING -o wan0 -j MASQUERADE): if "
                        "198.18.1.2/32 is an internal host, replies to it are still addressed to the router's "
                        "public address there, so the class never sees them; use --ingress-hook after-nat "
                        "(the default)")
    web = next(line for line in lines if line.startswith("web ")).split()
    assert web[-1] == "110", "matched = sent 99 + dropped 7 + queued 4"
    _, out, _ = env.run("stats", "--json")
    data = json.loads(out)
    assert data["warnings"] == [lines[1].removeprefix("warning: ")] and data["classes"]["root"]["matched"] == 110
    assert len([w for w in lines if w.startswith("warning:")]) == 1, "web is egress: its dst is not behind de-NAT"
    env.controller.stats_hook = None
    code, out, _ = env.run("stats")
    assert "warning" not in out


def test_enable_on_off(env: Env) -> None:
    code, out, _ = env.run("enable", "off")
    assert code == 0 and out.startswith("shaping off")
    assert env.workers.enabled is False
    code, out, _ = env.run("enable", "on")
    assert code == 0 and out.startswith("shaping on")
    assert env.workers.enables == [False, True]


def test_token(secured: tuple[Env, Path], tmp_path: Path) -> None:
    env, token_file = secured
    code, _, err = env.run("class", "list")
    assert code == 1 and err.startswith("imqd: HTTP 401: header.Authorization: missing bearer token")
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token-at-all")
    code, _, err = env.run("class", "add", "x", "--set", "rate=1mbit", token_file=wrong)
    assert code == 1 and "HTTP 401" in err and "wrong bearer token" in err
    assert env.controller.config.class_by_name("x") is None
    code, _, _ = env.run("class", "add", "x", "--set", "rate=1mbit", token_file=token_file)
    assert code == 0 and env.controller.config.class_by_name("x") is not None
    code, _, err = env.run("stats", token_file=tmp_path / "missing")
    assert code == 1 and err.startswith(f"imqd: --token-file {tmp_path / 'missing'}: ")


def test_token_file_from_environment(secured: tuple[Env, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    env, token_file = secured
    monkeypatch.setenv("IMQD_TOKEN_FILE", str(token_file))
    assert env.run("enable", "off")[0] == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    for argv in (["stats"], ["class", "list"], ["enable", "on"]):
        args = build_parser().parse_args([*argv, "--api", f"127.0.0.1:{port}"])
        err = io.StringIO()
        assert run_client(args, out=io.StringIO(), err=err) == 1
        assert err.getvalue() == f"imqd: cannot reach the API at 127.0.0.1:{port} (is imqd run going?)\n"
    monkeypatch.setenv("IMQD_API", f"127.0.0.1:{port}")
    err = io.StringIO()
    assert run_client(build_parser().parse_args(["stats"]), out=io.StringIO(), err=err) == 1
    assert f"127.0.0.1:{port}" in err.getvalue()


def test_bad_api_address_is_a_usage_error() -> None:
    err = io.StringIO()
    assert run_client(build_parser().parse_args(["stats", "--api", "nohost"]), out=io.StringIO(), err=err) == 2
    assert "HOST:PORT" in err.getvalue()


# -- pure helpers -----------------------------------------------------------------------
KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
VALUE = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(st.dictionaries(KEY, st.one_of(VALUE, st.dictionaries(KEY, VALUE, min_size=1, max_size=4)), max_size=6))
def test_parse_sets_builds_the_nested_body(body: dict[str, Any]) -> None:
    items = []
    for key, value in body.items():
        if isinstance(value, dict):
            items += [f"{key}.{sub}={v}" for sub, v in value.items()]
        else:
            items.append(f"{key}={value}")
    assert parse_sets(items) == body


@given(st.dictionaries(KEY, st.one_of(st.none(), st.booleans(), st.integers(), st.lists(st.integers(), max_size=3)),
                       max_size=6))
def test_parse_sets_raw_json(body: dict[str, Any]) -> None:
    assert parse_sets([f"{k}:={json.dumps(v)}" for k, v in body.items()]) == body


def test_parse_sets_rejects() -> None:
    for bad in ("=x", "noequals", "a..b=1", "a:=nope"):
        with pytest.raises(ClientError) as info:
            parse_sets([bad])
        assert info.value.code == 2 and bad in str(info.value)


def test_error_line() -> None:
    body = {"detail": [{"loc": ["classes", "x", "ceil"], "msg": "ceil 1mbit is below rate 5mbit"},
                       {"loc": ["body", "rate"], "msg": "multi\nline"}]}
    assert error_line(422, body) == "HTTP 422: classes.x.ceil: ceil 1mbit is below rate 5mbit; rate: multi line"
    assert error_line(500, "Internal Server Error") == "HTTP 500: Internal Server Error"
    assert error_line(502, None) == "HTTP 502"


def test_stats_top_parent_and_class(env: Env) -> None:
    env.workers.counters = {"web": {"rate_bps": 5e6}, "bulk": {"rate_bps": 9e6}}
    code, out, _ = env.run("stats", "--top", "1", "--json")
    assert code == 0 and list(json.loads(out)["classes"]) == ["bulk"]
    code, out, _ = env.run("stats", "--top", "2")
    rows = [line.split()[0] for line in out.splitlines() if line.startswith(("web ", "bulk ", "root "))]
    assert code == 0 and rows == ["bulk", "web"], "highest rate first"
    code, out, _ = env.run("stats", "--parent", "root", "--class", "web", "--json")
    assert code == 0 and list(json.loads(out)["classes"]) == ["web"]
    code, _, err = env.run("stats", "--class", "nosuch")
    assert code != 0 and "nosuch" in err
    with pytest.raises(SystemExit) as exc:  # argparse refuses it before any request
        env.run("stats", "--top", "0")
    assert exc.value.code == 2


IMPORT_HEADER = ("Circuit ID,Circuit Name,Device ID,Device Name,Parent Node,MAC,IPv4,IPv6,Download Min Mbps,"
                 "Upload Min Mbps,Download Max Mbps,Upload Max Mbps,Comment")


def test_import_a_subscriber_table(env: Env, tmp_path: Path) -> None:
    table = tmp_path / "ShapedDevices.csv"
    table.write_text(IMPORT_HEADER + "\nc1,Alice,d1,router,,,198.18.20.1,2001:db8:20::/56,10,5,100,20,\n")
    code, out, err = env.run("import", str(table), "--dry-run")
    assert (code, err) == (0, "") and "would import 1 circuits (1 devices): 2 classes added" in out
    assert env.controller.config.class_by_name("sub-c1-down") is None
    code, out, err = env.run("import", str(table), "--prefix", "s.")
    assert (code, err) == (0, "") and "imported 1 circuits" in out and "applied to all workers" in out
    assert env.controller.config.class_by_name("s.c1-down").match.dst == ("198.18.20.1/32", "2001:db8:20::/56")


def test_import_refusal_lists_every_bad_row_on_its_own_line(env: Env, tmp_path: Path) -> None:
    table = tmp_path / "ShapedDevices.csv"
    table.write_text(IMPORT_HEADER + "\nc1,A,d1,r,,,198.18.20.1,,1,1,2,2,\nc2,B,d2,r,,,198.18.20.2,,ten,5,100,20,\n"
                     "c3,C,d3,r,,,198.18.20.1,,1,1,2,2,\n")
    code, out, err = env.run("import", str(table))
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == f"imqd: {table}: not imported, nothing changed:"
    assert lines[1].startswith("  HTTP 422: line 3, Download Min Mbps: 'ten' is not a number")
    assert lines[2].startswith("  line 4, IPv4: 198.18.20.1/32 is also listed by circuit 'c1' (line 2)")
    code, _, err = env.run("import", str(tmp_path / "missing.csv"))
    assert code == 1 and "missing.csv" in err
