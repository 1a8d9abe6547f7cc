"""``GET /stats`` filters (class, parent, direction, top), ``/metrics`` naming checked by promtool, at scale."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from imqd.api import create_app
from test_api import BASE, make_controller

PROMTOOL = shutil.which("promtool")

CLASSES = [
    *BASE,
    {"name": "video", "parent": "root", "rate": "30mbit"},
    {"name": "in-root", "direction": "ingress", "rate": "50mbit"},
    {"name": "in-a", "direction": "ingress", "parent": "in-root", "rate": "10mbit"},
]


@pytest.fixture
def api(tmp_path: Path) -> Any:
    controller, workers, _ = make_controller(tmp_path, CLASSES)
    workers.counters = {"web": {"rate_bps": 3e6, "bytes": 10}, "bulk": {"rate_bps": 9e6},
                        "video": {"rate_bps": 1e6}, "in-a": {"rate_bps": 4e6}, "root": {"rate_bps": 13e6},
                        "in-root": {"rate_bps": 5e6}}
    with TestClient(create_app(controller, token=None, open_reads=True)) as client:
        yield client, workers


def names(r: Any) -> list[str]:
    assert r.status_code == 200, r.text
    return list(r.json()["classes"])


def test_no_filter_is_every_class_in_config_order(api: Any) -> None:
    client, _ = api
    assert names(client.get("/stats")) == [c["name"] for c in CLASSES]


def test_class_parent_direction_top(api: Any) -> None:
    client, _ = api
    assert names(client.get("/stats?class=web")) == ["web"]
    assert names(client.get("/stats?class=video&class=web")) == ["video", "web"]
    assert client.get("/stats?class=web").json()["classes"]["web"]["bytes"] == 10
    assert names(client.get("/stats?parent=root")) == ["web", "bulk", "video"]
    assert names(client.get("/stats?parent=web")) == [], "a leaf has no children"
    assert names(client.get("/stats?direction=ingress")) == ["in-root", "in-a"]
    assert names(client.get("/stats?top=3")) == ["root", "bulk", "in-root"], "highest rate first"
    assert names(client.get("/stats?parent=root&top=2")) == ["bulk", "web"]
    assert names(client.get("/stats?direction=egress&top=1")) == ["root"]
    assert names(client.get("/stats?class=web&class=video&top=1")) == ["web"]
    assert names(client.get("/stats?class=web&parent=in-root")) == [], "both filters hold"
    body = client.get("/stats?top=1").json()
    assert body["directions"]["egress"]["rate_bps"] == 13_000_000, "link totals whatever the filter"
    assert len(body["workers"]) == 2


@pytest.mark.parametrize("query, status, loc", [
    ("class=nosuch", 404, ["query", "class", "nosuch"]),
    ("parent=nosuch", 404, ["query", "parent", "nosuch"]),
    ("top=0", 422, ["query", "top"]),
    ("top=many", 422, ["query", "top"]),
    ("top=1000001", 422, ["query", "top"]),
    ("direction=sideways", 422, ["query", "direction"]),
])
def test_bad_filters_name_the_parameter(api: Any, query: str, status: int, loc: list[str]) -> None:
    r = api[0].get("/stats?" + query)
    assert r.status_code == status
    (err,) = r.json()["detail"]
    assert err["loc"] == loc and err["msg"]


def test_top_at_10000_classes(tmp_path: Path) -> None:
    classes = [{"name": "root", "rate": "10gbit"}] + [
        {"name": f"sub{i:05d}", "parent": "root", "rate": "1mbit", "ceil": "100mbit"} for i in range(10_000)]
    controller, workers, _ = make_controller(tmp_path, classes)
    rates = {f"sub{i:05d}": (i * 7919) % 10_007 for i in range(10_000)}
    workers.counters = {name: {"rate_bps": r * 1000} for name, r in rates.items()}
    client = TestClient(create_app(controller, token=None, open_reads=True))
    want = sorted(rates, key=lambda n: -rates[n])[:20]
    got = client.get("/stats?top=20&parent=root").json()["classes"]
    assert list(got) == want and got[want[0]]["rate_bps"] == rates[want[0]] * 1000
    assert len(client.get("/stats").json()["classes"]) == 10_001


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus; "
                                               "scripts/bootstrap.sh installs it)")
def test_metrics_pass_promtool(api: Any) -> None:
    client, workers = api
    workers.counters["web"]["qdisc"] = [{"queue": 0, "kind": "fq_codel", "codel_drops": 1, "max_sojourn": 0.01},
                                        {"queue": 1, "kind": "perhost", "active_hosts": 3}]
    text = client.get("/metrics").text
    assert "imqd_class_bytes_total" in text and "imqd_class_max_sojourn_seconds" in text
    res = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"promtool check metrics:\n{res.stdout}{res.stderr}"


def test_fast_json_falls_back_for_a_lone_surrogate() -> None:
    from imqd.api import FastJSON

    assert FastJSON({"a": [1, 2.5]}).body == b'{"a":[1,2.5]}'
    assert FastJSON({"bad\udc80": 1}).body == b'{"bad\\udc80":1}', "what orjson refuses, json escapes"


def test_metrics_series_per_class(api: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    client, _ = api
    fams = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    per_class = [f for f in fams.values() if f.name.startswith("imqd_class_") and f.samples]
    assert {len(f.samples) for f in per_class} == {len(CLASSES)}
    assert len(per_class) == 9, "5 counters, 2 backlogs, configured rate and ceil"
    assert fams["imqd_class_bytes"].type == "counter"
    web = {s.labels["class"]: s.value for s in fams["imqd_class_bytes"].samples}
    assert web["web"] == 10 and web["root"] == 0


def test_a_misspelt_filter_is_refused(api: Any) -> None:
    r = api[0].get("/stats?tpo=5")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "tpo"] and "top" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 600])
def test_the_classes_part_written_in_pieces_is_the_whole_answer(n: int) -> None:
    """class_entries_json (the answer's classes, PIECE at a time) is class_entries (at once) with each class's
    matched count, in the same order, across piece boundaries."""
    import json
    from array import array

    from imqd.config import parse_config
    from imqd.shared_counters import FIELDS_PER_COUNTER_SLOT
    from imqd.stats_sampler import TreeIndex, build_snapshot
    from imqd.stats_view import PIECE, class_entries, class_entries_json

    assert PIECE == 256
    config = parse_config({"classes": [{"name": "root", "rate": "1gbit"}] + [
        {"name": f"c{i}", "parent": "root", "rate": "1mbit", "match": {"dst": f"198.18.{i // 250}.{i % 250}/32"}}
        for i in range(n)]})
    slots = {c.name: i for i, c in enumerate(config.classes)}
    tree = TreeIndex.of(config, slots)
    totals = [(7 * s + f) * 1000 for s in range(len(slots)) for f in range(FIELDS_PER_COUNTER_SLOT)]
    snap = build_snapshot(tree, totals, array("d", [float(s) for s in range(len(slots))]), 1.0, 2.0, {})
    classes = config.classes[::-1]  # any order the query chose
    matched = {c.name: i for i, c in enumerate(config.classes) if i % 3}
    want = class_entries(classes, snap)
    for name, entry in want.items():
        entry["matched"] = matched.get(name, 0)
    got = json.loads(class_entries_json(classes, snap, matched))
    assert list(got) == [c.name for c in classes] and got == want
    assert json.loads(class_entries_json(classes, snap)) == class_entries(classes, snap), "no hook: no matched"


def test_stats_answer_holds_what_orjson_refuses(tmp_path: Path) -> None:
    """A hook's warning with a lone surrogate (orjson refuses it) is written escaped, with every class's entry."""
    import json

    controller, _, _ = make_controller(tmp_path, CLASSES)

    class Hook:
        matched = {"web": 7}

        def __call__(self, config: Any, stats: dict[str, Any], counters: Any) -> dict[str, Any]:
            stats["warnings"] = ["bad\udc80"]
            return stats

    controller.stats_hook = Hook()
    body = controller.stats_json()
    assert b'"bad\\udc80"' in body
    out = json.loads(body)
    assert list(out["classes"]) == [c["name"] for c in CLASSES]
    assert out["classes"]["web"]["matched"] == 7 and out["classes"]["bulk"]["matched"] == 0
