"""PUT /classes (the whole set at once) and POST /import (a LibreQoS ShapedDevices.csv) through the API.

Both are validated as a whole before anything changes, and only the difference reaches the file (journal)
and the workers; a refusal names the class and field, or the CSV line and column, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_api import TOKEN, FakeWorkers, assert_unchanged, disk, make_controller, names, snapshot

from imqd.api import APPLY_HEADER, DEFAULT_MAX_BODY, create_app
from imqd.controller import Controller

TREE = [
    {"name": "site1-down", "direction": "ingress", "rate": "1gbit"},
    {"name": "site1-up", "direction": "egress", "rate": "1gbit"},
    {"name": "voip", "direction": "egress", "rate": "2mbit", "match": {"proto": "udp", "dport": 5060}},
]
HEADER = ("Circuit ID,Circuit Name,Device ID,Device Name,Parent Node,MAC,IPv4,IPv6,Download Min Mbps,"
          "Upload Min Mbps,Download Max Mbps,Upload Max Mbps,Comment")

Env = tuple[TestClient, Controller, FakeWorkers, Path]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    controller, workers, path = make_controller(tmp_path, TREE)
    with TestClient(create_app(controller, token=None, open_reads=True)) as client:
        yield client, controller, workers, path


def csv(*rows: str) -> str:
    return "\n".join([HEADER, *rows]) + "\n"


def circuit(cid: str, ip: str, down: str = "10", up: str = "5", parent: str = "site1") -> str:
    return f"{cid},Circuit {cid},{cid}-d,router,{parent},,{ip},,{down},{up},{float(down) * 10:g},{float(up) * 4:g},"


def post_csv(client: TestClient, text: str, **params: Any) -> Any:
    return client.post("/import", content=text.encode(), params=params, headers={"content-type": "text/csv"})


# -- PUT /classes ------------------------------------------------------------------------------------


def test_put_replaces_the_set_and_sends_only_the_difference(env: Env) -> None:
    client, controller, workers, path = env
    body = {"overhead": 14, "classes": [
        TREE[0], TREE[1], {**TREE[2], "rate": "3mbit"},
        {"name": "web", "direction": "egress", "parent": "site1-up", "rate": "10mbit", "match": {"dport": 443}}]}
    r = client.put("/classes", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"added": 1, "changed": 1, "removed": 0, "unchanged": 2, "applied": True,
                        "apply_seconds": pytest.approx(controller.last_apply_s)}
    assert APPLY_HEADER in r.headers
    delta = workers.deltas[-1]
    assert [c.name for c in delta.upserted] == ["voip", "web"] and delta.removed == () and delta.overhead == 14
    assert disk(path) == controller.config and names(controller.config) == ["site1-down", "site1-up", "voip", "web"]
    r = client.put("/classes", json={"classes": [TREE[1], {**TREE[2], "rate": "3mbit"}]})
    assert r.json()["removed"] == 2 and workers.deltas[-1].removed == ("site1-down", "web")
    assert controller.config.overhead == 14, "overhead left out: unchanged"


def test_put_of_the_same_set_changes_nothing_not_even_the_file(env: Env) -> None:
    client, controller, workers, path = env
    assert client.put("/classes", json={"classes": TREE}).status_code == 200  # nothing to do on a fresh file
    client.post("/classes", json={"name": "x", "direction": "egress", "rate": "1mbit"})  # the file exists now
    before, pushes = snapshot(controller, path), len(workers.pushes)
    same = {"overhead": controller.config.overhead, "classes": [*TREE, {"name": "x", "direction": "egress",
                                                                          "rate": "1000kbit"}]}
    r = client.put("/classes", json=same)
    assert r.status_code == 200
    assert r.json() == {"added": 0, "changed": 0, "removed": 0, "unchanged": 4, "applied": False,
                        "apply_seconds": None}
    assert APPLY_HEADER not in r.headers
    assert_unchanged(before, controller, path, workers, pushes)


@pytest.mark.parametrize(("classes", "loc"), [
    ([TREE[0], TREE[1], {**TREE[2], "name": "site1-up"}], ["classes", "site1-up", "name"]),  # conflicting names
    ([TREE[0], {**TREE[1], "rate": "fast"}], ["classes", "site1-up", "rate"]),
    ([TREE[0], {**TREE[1], "parent": "nowhere"}], ["classes", "site1-up", "parent"]),
    ([TREE[0], {**TREE[1], "parent": "site1-down"}], ["classes", "site1-up", "parent"]),  # other direction
    ([TREE[0], {"name": "a b", "rate": "1mbit"}], ["classes", "a b", "name"]),
])
def test_put_refusals_name_the_class_and_field_and_change_nothing(env: Env, classes: list[Any],
                                                                 loc: list[Any]) -> None:
    client, controller, workers, path = env
    before, pushes = snapshot(controller, path), len(workers.pushes)
    r = client.put("/classes", json={"classes": classes})
    assert r.status_code == 422, r.text
    assert loc in [e["loc"] for e in r.json()["detail"]]
    assert_unchanged(before, controller, path, workers, pushes)


@pytest.mark.parametrize("body", [{}, {"classes": "all"}, {"classes": [], "extra": 1}, [], {"overhead": -1,
                                                                                            "classes": []}])
def test_put_malformed_bodies_are_422(env: Env, body: Any) -> None:
    client, controller, workers, path = env
    before, pushes = snapshot(controller, path), len(workers.pushes)
    assert client.put("/classes", json=body).status_code == 422
    assert_unchanged(before, controller, path, workers, pushes)


def test_bulk_routes_take_bodies_far_over_the_normal_limit(tmp_path: Path) -> None:
    controller, workers, path = make_controller(tmp_path, TREE)
    app = create_app(controller, token=None, open_reads=True, bulk_max_body=400_000)
    many = [*TREE, *({"name": f"c{i}", "direction": "ingress", "parent": "site1-down", "rate": "1mbit",
                      "match": {"dst": f"198.18.{i // 250}.{i % 250 + 1}"}} for i in range(1000))]
    with TestClient(app) as client:
        r = client.put("/classes", json={"classes": many})
        assert len(r.request.content) > DEFAULT_MAX_BODY and r.status_code == 200, r.text
        assert r.json()["added"] == 1000
        r = client.put("/classes", json={"classes": many * 4})
        assert r.status_code == 413, "the bulk limit still holds"
        big_post = {"name": "x", "rate": "1mbit", "padding": "x" * DEFAULT_MAX_BODY}
        assert client.post("/classes", json=big_post).status_code == 413, "other routes keep the normal limit"


# -- POST /import ------------------------------------------------------------------------------------


def test_import_adds_one_class_per_circuit_and_direction(env: Env) -> None:
    client, controller, workers, path = env
    text = csv(circuit("c1", "198.18.20.1"), circuit("c1", "198.18.20.2"), circuit("c2", "198.18.20.3"))
    r = post_csv(client, text)
    assert r.status_code == 200, r.text
    assert r.json() == {"circuits": 2, "devices": 3, "added": 4, "changed": 0, "removed": 0, "unchanged": 3,
                        "applied": True, "apply_seconds": pytest.approx(controller.last_apply_s)}
    c1 = controller.config.class_by_name("sub-c1-down")
    assert c1.match.dst == ("198.18.20.1/32", "198.18.20.2/32") and c1.rate == 10_000_000
    assert disk(path) == controller.config
    assert [c.name for c in workers.deltas[-1].upserted] == ["sub-c1-down", "sub-c1-up", "sub-c2-down",
                                                             "sub-c2-up"]


def test_reimport_with_one_plan_changed_sends_one_class(env: Env) -> None:
    client, controller, workers, _ = env
    rows = [circuit(f"c{i}", f"198.18.20.{i + 1}") for i in range(20)]
    assert post_csv(client, csv(*rows)).status_code == 200
    rows[7] = circuit("c7", "198.18.20.8", down="25")
    r = post_csv(client, csv(*rows))
    assert r.json()["changed"] == 1 and r.json()["added"] == 0 and r.json()["removed"] == 0
    delta = workers.deltas[-1]
    assert [c.name for c in delta.upserted] == ["sub-c7-down"] and delta.order is None
    assert controller.config.class_by_name("sub-c7-down").rate == 25_000_000
    r = post_csv(client, csv(*rows[:-1]))
    assert r.json()["removed"] == 2 and workers.deltas[-1].removed == ("sub-c19-down", "sub-c19-up")


def test_import_dry_run_changes_nothing(env: Env) -> None:
    client, controller, workers, path = env
    before, pushes = snapshot(controller, path), len(workers.pushes)
    r = post_csv(client, csv(circuit("c1", "198.18.20.1")), dry_run="true")
    assert r.status_code == 200 and r.json()["added"] == 2 and r.json()["applied"] is False
    assert_unchanged(before, controller, path, workers, pushes)


def csv_errors(client: TestClient, text: str, **params: Any) -> list[list[Any]]:
    r = post_csv(client, text, **params)
    assert r.status_code == 422, r.text
    return [e["loc"] for e in r.json()["detail"]]


def test_bad_rows_are_named_by_line_and_column_and_nothing_changes(env: Env) -> None:
    client, controller, workers, path = env
    before, pushes = snapshot(controller, path), len(workers.pushes)
    text = csv(circuit("c1", "198.18.20.1"), circuit("c2", "198.18.20.x"), circuit("c3", "198.18.20.3", down="0"),
               "c4,short")
    assert csv_errors(client, text) == [["csv", 3, "IPv4"], ["csv", 4, "Download Max Mbps"],
                                        ["csv", 4, "Download Min Mbps"], ["csv", 5, "Device ID"]]
    assert_unchanged(before, controller, path, workers, pushes)


def test_unknown_parent_is_named_on_its_rows(env: Env) -> None:
    client = env[0]
    assert csv_errors(client, csv(circuit("c1", "198.18.20.1", parent="site9"))) == [["csv", 2, "Parent Node"]] * 2


def test_duplicate_addresses_across_circuits_no_circuit_wins_the_import_is_refused(env: Env) -> None:
    client, controller, workers, path = env
    before, pushes = snapshot(controller, path), len(workers.pushes)
    r = post_csv(client, csv(circuit("c1", "198.18.20.1"), circuit("c2", "198.18.20.1")))
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["csv", 3, "IPv4"] and "circuit 'c1' (line 2)" in err["msg"]
    assert_unchanged(before, controller, path, workers, pushes)


def test_circuit_ids_that_would_share_a_class_name_are_refused(env: Env) -> None:
    from imqd.subscribers import class_names

    clash = class_names("a b")[0][len("sub-"):-len("-down")]
    locs = csv_errors(env[0], csv(circuit("a b", "198.18.20.1"), circuit(clash, "198.18.20.2")))
    assert locs == [["csv", 3, "Circuit ID"], ["csv", 3, "Circuit ID"]]


def test_import_options_prefix_and_parent(env: Env) -> None:
    client, controller, _, _ = env
    r = post_csv(client, csv(circuit("c1", "198.18.20.1", parent="")), prefix="isp2.", parent="site1")
    assert r.status_code == 200, r.text
    assert controller.config.class_by_name("isp2.c1-down").parent == "site1-down"
    assert csv_errors(client, csv(circuit("c1", "198.18.20.1")), prefix="bad prefix") == [["prefix"]]


def test_import_body_must_be_utf8(env: Env) -> None:
    r = env[0].post("/import", content=b"\xff\xfe\x00", headers={"content-type": "text/csv"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"]


def test_a_large_table_imports_in_one_request(env: Env) -> None:
    client, controller, _, _ = env
    rows = [circuit(f"c{i}", f"198.18.{20 + i // 250}.{i % 250 + 1}", down="0.5", up="0.5") for i in range(1200)]
    text = csv(*rows)
    assert len(text) > DEFAULT_MAX_BODY
    r = post_csv(client, text)
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 2400 and len(controller.config.classes) == 2403


def test_bulk_writes_need_the_token(tmp_path: Path) -> None:
    controller, workers, path = make_controller(tmp_path, TREE)
    with TestClient(create_app(controller, token=TOKEN, open_reads=False)) as client:
        assert client.put("/classes", json={"classes": TREE}).status_code == 401
        assert post_csv(client, csv(circuit("c1", "198.18.20.1"))).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.put("/classes", json={"classes": TREE}, headers=auth).status_code == 200


# -- the controller's file: journal first, YAML soon after -----------------------------------------------


def test_changes_reach_the_yaml_file_after_a_quiet_spell_and_at_close(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import imqd.controller as controller_mod
    from imqd.config_file import read_yaml
    from imqd.journal import ConfigStore

    monkeypatch.setattr(controller_mod, "IDLE_COMPACT_S", 0.2)
    controller, workers, path = make_controller(tmp_path, TREE)
    controller.add_class({"name": "a", "direction": "egress", "rate": "1mbit"})  # creates the file
    controller.change_class("a", {"rate": "2mbit"})
    assert ConfigStore(path).pending() == 1, "the change is in the journal at once"
    import time

    deadline = time.monotonic() + 5
    while ConfigStore(path).pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ConfigStore(path).pending() == 0, "written into the YAML file after the quiet spell"
    assert read_yaml(path.read_text())["classes"][-1]["rate"] == "2mbit"
    controller.change_class("a", {"rate": "3mbit"})
    controller.close()
    assert ConfigStore(path).pending() == 0 and read_yaml(path.read_text())["classes"][-1]["rate"] == "3mbit"


def test_a_patch_that_changes_nothing_sends_nothing_and_reports_no_apply_time(env: Env) -> None:
    client, controller, workers, path = env
    assert APPLY_HEADER in client.patch("/classes/voip", json={"rate": "3mbit"}).headers
    before, pushes = snapshot(controller, path), len(workers.pushes)
    r = client.patch("/classes/voip", json={"rate": "3000kbit"})
    assert r.status_code == 200 and r.json()["rate"] == 3_000_000
    assert APPLY_HEADER not in r.headers, "nothing was applied: no stale time from the change before"
    assert_unchanged(before, controller, path, workers, pushes)
