"""REST API tests: every endpoint and error code, the config file after each change, races (auth and body limits:
test_api_access.py).

The data plane is replaced by ``FakeWorkers`` (it records what was pushed), so
these tests check the API + controller + config path end to end without root.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from imqd.api import APPLY_HEADER, create_app
from imqd.config import Config, ConfigDelta, ConfigError, load_config, parse_config
from imqd.controller import Controller
from imqd.stats_sampler import CounterSnapshot, LinkHistory
from stats_fakes import fake_snapshot

TOKEN = "s3cret-token-0123456789"


class FakeWorkers:
    """The ``Workers`` protocol without processes: records every pushed config."""

    def __init__(self, *, push_delay: float = 0.0) -> None:
        self.enabled = True
        self.pushes: list[Config] = []
        self.deltas: list[ConfigDelta] = []
        self.enables: list[bool] = []
        self.is_healthy = True
        self.push_delay = push_delay
        self.counters: dict[str, dict[str, Any]] = {}
        self.config: Config = parse_config({"classes": []})
        self.link_history = LinkHistory()
        self.workers: list[dict[str, Any]] = [
            {"queue": 0, "cpu": 0, "pid": 4242, "alive": True, "ready": True, "restarts": 1, "packets": 100,
             "verdicts": 90, "drops": 3, "malformed": 2, "held": 10, "lost_on_crash": 0},
            {"queue": 1, "cpu": 1, "pid": 4243, "alive": True, "ready": True, "restarts": 0, "packets": 50,
             "verdicts": 50, "drops": 0, "malformed": 0, "held": 0, "lost_on_crash": 0},
        ]
        self._lock = threading.Lock()

    def push_config(self, config: Config) -> float:
        t0 = time.monotonic()
        if self.push_delay:
            time.sleep(self.push_delay)
        with self._lock:
            self.pushes.append(config)
            self.config = config
        return time.monotonic() - t0 + 0.0005

    def push_delta(self, delta: ConfigDelta, config: Config) -> float:
        with self._lock:
            self.deltas.append(delta)
        return self.push_config(config)

    def set_enabled(self, enabled: bool) -> float:
        self.enabled = enabled
        self.enables.append(enabled)
        return 0.0007

    def healthy(self) -> bool:
        return self.is_healthy

    def worker_stats(self) -> list[dict[str, Any]]:
        return [dict(w) for w in self.workers]

    def counter_snapshot(self) -> CounterSnapshot:
        """What the supervisor's sampler would make of ``counters`` (per class: the shared-memory fields,
        ``rate_bps`` and ``qdisc``), for the config last pushed."""
        return fake_snapshot(self.config, self.counters)


def make_controller(tmp_path: Path, classes: list[dict[str, Any]] | None = None, **kw: Any
                    ) -> tuple[Controller, FakeWorkers, Path]:
    path = tmp_path / "imqd.yaml"
    workers = FakeWorkers(**kw)
    config = parse_config({"classes": classes or []})
    workers.config = config
    return Controller(config, path, workers), workers, path


BASE = [
    {"name": "root", "rate": "100mbit"},
    {"name": "web", "parent": "root", "rate": "20mbit", "ceil": "50mbit",
     "match": {"dst": "198.18.1.0/24", "proto": "tcp", "dport": "80-443"}},
    {"name": "bulk", "parent": "root", "rate": "10mbit", "default": True},
]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, Controller, FakeWorkers, Path]]:
    controller, workers, path = make_controller(tmp_path, BASE)
    with TestClient(create_app(controller, token=None, open_reads=True)) as client:
        yield client, controller, workers, path


def on_disk_bytes(path: Path) -> tuple[bytes | None, ...]:
    """The config file and its journal, byte for byte (None: absent)."""
    return tuple(p.read_bytes() if p.exists() else None
                 for p in (path, path.with_name(path.name + ".journal")))


def snapshot(controller: Controller, path: Path) -> tuple[Config, tuple[bytes | None, ...]]:
    return controller.config, on_disk_bytes(path)


def assert_unchanged(before: tuple[Config, tuple[bytes | None, ...]], controller: Controller, path: Path,
                     workers: FakeWorkers, pushes: int) -> None:
    assert controller.config is before[0]
    assert on_disk_bytes(path) == before[1]
    assert len(workers.pushes) == pushes


def disk(path: Path) -> Config:
    return load_config(path)


def names(config: Config) -> list[str]:
    return [c.name for c in config.classes]


# -- reads --------------------------------------------------------------------------
def test_list_and_get(env: Any) -> None:
    client, controller, _, _ = env
    r = client.get("/classes")
    assert r.status_code == 200
    assert [c["name"] for c in r.json()] == ["root", "web", "bulk"]
    r = client.get("/classes/web")
    assert r.status_code == 200
    body = r.json()
    assert body["rate"] == 20_000_000 and body["ceil"] == 50_000_000 and body["parent"] == "root"
    assert body["match"]["dport"] == [80, 443] and body["match"]["proto"] == 6
    assert body == controller.config.class_by_name("web").model_dump(mode="json")


def test_get_unknown_is_404_naming_the_class(env: Any) -> None:
    client = env[0]
    r = client.get("/classes/nosuch")
    assert r.status_code == 404
    (err,) = r.json()["detail"]
    assert err["loc"] == ["classes", "nosuch"] and "nosuch" in err["msg"]


def test_unknown_route_uses_the_error_shape(env: Any) -> None:
    r = env[0].get("/nothing/here")
    assert r.status_code == 404
    assert r.json()["detail"][0]["msg"] == "Not Found"


# -- POST ----------------------------------------------------------------------------
def test_add_class_persists_and_pushes(env: Any) -> None:
    client, controller, workers, path = env
    assert not path.exists()  # created on the first change
    r = client.post("/classes", json={"name": "voip", "parent": "root", "rate": "2mbit", "prio": 0,
                                      "match": {"dscp": "ef", "proto": "udp"}})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/classes/voip"
    assert float(r.headers[APPLY_HEADER]) == pytest.approx(controller.last_apply_s, abs=1e-6)
    stored = r.json()
    assert stored["rate"] == 2_000_000 and stored["match"]["dscp"] == 46 and stored["match"]["proto"] == 17
    on_disk = disk(path)
    assert on_disk == controller.config
    assert names(on_disk) == ["root", "web", "bulk", "voip"]
    assert on_disk.class_by_name("voip").model_dump(mode="json") == stored
    assert workers.pushes[-1] is controller.config
    assert path.stat().st_mode & 0o777 == 0o600


def test_add_existing_is_409_and_changes_nothing(env: Any) -> None:
    client, controller, workers, path = env
    client.post("/classes", json={"name": "a", "rate": "1mbit"})
    before, pushes = snapshot(controller, path), len(workers.pushes)
    r = client.post("/classes", json={"name": "a", "rate": "2mbit"})
    assert r.status_code == 409
    assert r.json()["detail"][0]["loc"] == ["classes", "a", "name"]
    assert_unchanged(before, controller, path, workers, pushes)


INVALID_ADDS = [
    ({"name": "x", "rate": "5furlongs"}, "rate"),
    ({"name": "x", "rate": "5mbit", "ceil": "1mbit"}, "ceil"),
    ({"name": "x", "rate": "5mbit", "parent": "ghost"}, "parent"),
    ({"name": "x", "rate": "5mbit", "match": {"dst": "198.18.300.0/24"}}, "dst"),
    ({"name": "x", "rate": "5mbit", "match": {"dport": "70000"}}, "dport"),
    ({"name": "x", "rate": "5mbit", "match": {"sport": "90-80"}}, "sport"),
    ({"name": "x", "rate": "5mbit", "prio": 9}, "prio"),
    ({"name": "x", "rate": "5mbit", "direction": "sideways"}, "direction"),
    ({"name": "x", "rate": "5mbit", "colour": "blue"}, "colour"),
    ({"name": "bad name!", "rate": "5mbit"}, "name"),
    ({"rate": "5mbit"}, "name"),
    ({"name": "x"}, "rate"),
    # children's rates over the parent's ceil: root is 100mbit, web+bulk take 30mbit
    ({"name": "x", "parent": "root", "rate": "80mbit"}, "ceil"),
    ({"name": "x", "rate": "5mbit", "default": True}, "default"),  # egress already has 'bulk'
]


@pytest.mark.parametrize(("body", "field"), INVALID_ADDS, ids=[f for _, f in INVALID_ADDS])
def test_add_invalid_is_422_naming_the_field(env: Any, body: dict[str, Any], field: str) -> None:
    client, controller, workers, path = env
    client.post("/classes", json={"name": "seed", "rate": "1mbit"})  # so the file exists
    before, pushes = snapshot(controller, path), len(workers.pushes)
    r = client.post("/classes", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(field in err["loc"] for err in detail), detail
    assert all(set(err) == {"loc", "msg"} and err["msg"] for err in detail)
    assert_unchanged(before, controller, path, workers, pushes)


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"web"', b"{not json", b"", b"null"])
def test_add_body_not_an_object_is_422(env: Any, raw: bytes) -> None:
    client, controller, workers, path = env
    before, pushes = snapshot(controller, path), len(workers.pushes)
    r = client.post("/classes", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][0] == "body"
    assert_unchanged(before, controller, path, workers, pushes)


def test_lone_surrogate_in_body_is_422_not_500(env: Any) -> None:
    client, controller, workers, path = env
    before, pushes = snapshot(controller, path), len(workers.pushes)
    raw = b'{"name": "x", "rate": "1mbit", "match": {"iif": "eth\\ud800"}}'
    r = client.post("/classes", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "match", "iif"]
    assert_unchanged(before, controller, path, workers, pushes)


def test_non_ascii_interface_names_are_refused(tmp_path: Path) -> None:
    """Interface names are at most 15 printable ASCII bytes (a lone surrogate or 'é' is refused by the config)."""
    for bad in ("eth\ud800", "\u00e9" * 15):
        with pytest.raises(ConfigError) as exc:
            make_controller(tmp_path, [{"name": "odd", "direction": "ingress", "rate": "1mbit",
                                        "match": {"iif": bad}}])
        assert "iif" in str(exc.value)


# -- PATCH ---------------------------------------------------------------------------
def test_patch_changes_live_and_on_disk(env: Any) -> None:
    client, controller, workers, path = env
    r = client.patch("/classes/web", json={"rate": "30mbit", "match": {"dport": 8080}})
    assert r.status_code == 200, r.text
    assert APPLY_HEADER in r.headers
    body = r.json()
    assert body["rate"] == 30_000_000 and body["ceil"] == 50_000_000
    assert body["match"]["dport"] == [8080, 8080] and body["match"]["dst"] == "198.18.1.0/24"  # merged
    assert disk(path).class_by_name("web").rate == 30_000_000
    assert workers.pushes[-1].class_by_name("web").rate == 30_000_000


def test_patch_null_resets_to_default(env: Any) -> None:
    client, _, _, path = env
    r = client.patch("/classes/web", json={"ceil": None})
    assert r.status_code == 200
    assert r.json()["ceil"] is None
    assert disk(path).class_by_name("web").effective_ceil == 20_000_000


def test_patch_unknown_is_404(env: Any) -> None:
    client, controller, workers, path = env
    before, pushes = snapshot(controller, path), len(workers.pushes)
    r = client.patch("/classes/ghost", json={"rate": "1mbit"})
    assert r.status_code == 404
    assert_unchanged(before, controller, path, workers, pushes)


@pytest.mark.parametrize(("patch", "field"), [
    ({"rate": "60mbit"}, "ceil"),  # ceil 50mbit < rate
    ({"ceil": "nonsense"}, "ceil"),
    ({"parent": "web"}, "parent"),  # cycle web -> web
    ({"name": "renamed"}, "name"),
    ({"match": {"proto": "icmp"}}, "dport"),  # ports need a port protocol
    ({"unknown": 1}, "unknown"),
    ({"unknown": None}, "unknown"),  # a reset of a field that does not exist is a typo, not a no-op
    ({"": None}, ""),
    ({"match": {"dprot": None}}, "dprot"),
])
def test_patch_invalid_is_422_and_changes_nothing(env: Any, patch: dict[str, Any], field: str) -> None:
    client, controller, workers, path = env
    client.patch("/classes/bulk", json={"prio": 3})  # so the file exists
    before, pushes = snapshot(controller, path), len(workers.pushes)
    r = client.patch("/classes/web", json=patch)
    assert r.status_code == 422, r.text
    assert any(field in err["loc"] for err in r.json()["detail"]), r.json()
    assert_unchanged(before, controller, path, workers, pushes)


def test_patch_cycle_through_two_classes(env: Any) -> None:
    client, controller, workers, path = env
    assert client.post("/classes", json={"name": "a", "rate": "1mbit"}).status_code == 201
    assert client.post("/classes", json={"name": "b", "parent": "a", "rate": "1mbit"}).status_code == 201
    before, pushes = snapshot(controller, path), len(workers.pushes)
    r = client.patch("/classes/a", json={"parent": "b"})
    assert r.status_code == 422
    assert "cycle" in r.json()["detail"][0]["msg"]
    assert_unchanged(before, controller, path, workers, pushes)


# -- DELETE --------------------------------------------------------------------------
def test_delete(env: Any) -> None:
    client, controller, workers, path = env
    r = client.delete("/classes/web")
    assert r.status_code == 204 and r.content == b""
    assert APPLY_HEADER in r.headers
    assert names(controller.config) == ["root", "bulk"] == names(disk(path))
    assert names(workers.pushes[-1]) == ["root", "bulk"]
    assert client.get("/classes/web").status_code == 404


def test_delete_with_children_is_409(env: Any) -> None:
    client, controller, workers, path = env
    client.delete("/classes/web")
    before, pushes = snapshot(controller, path), len(workers.pushes)
    r = client.delete("/classes/root")
    assert r.status_code == 409
    assert "children" in r.json()["detail"][0]["msg"]
    assert_unchanged(before, controller, path, workers, pushes)


def test_delete_unknown_is_404(env: Any) -> None:
    client, controller, workers, path = env
    before, pushes = snapshot(controller, path), len(workers.pushes)
    assert env[0].delete("/classes/ghost").status_code == 404
    assert_unchanged(before, controller, path, workers, pushes)


# -- save failure --------------------------------------------------------------------
def test_unwritable_config_is_503_and_changes_nothing(tmp_path: Path) -> None:
    controller, workers, _ = make_controller(tmp_path, BASE)
    controller.path = tmp_path / "missing-dir" / "imqd.yaml"
    before = controller.config
    with TestClient(create_app(controller, token=None, open_reads=True)) as client:
        r = client.patch("/classes/web", json={"rate": "1mbit"})
    assert r.status_code == 503
    assert "config" in r.json()["detail"][0]["loc"]
    assert controller.config is before and not workers.pushes


# -- stats, enabled, health, metrics --------------------------------------------------
def test_stats(env: Any) -> None:
    client, _, workers, _ = env
    workers.counters = {"web": {"bytes": 1500, "packets": 1, "drops": 2, "backlog_packets": 3,
                                "backlog_bytes": 4500, "borrows": 5, "lends": 0, "direction": "egress"}}
    body = client.get("/stats").json()
    assert body["enabled"] is True
    web = body["classes"]["web"]
    assert (web["bytes"], web["packets"], web["drops"], web["borrowed"]) == (1500, 1, 2, 5)
    assert web["backlog"] == {"packets": 3, "bytes": 4500}
    assert body["classes"]["root"]["bytes"] == 0
    assert [w["queue"] for w in body["workers"]] == [0, 1]
    assert body["workers"][0]["malformed"] == 2
    assert body["classes"]["root"]["backlog"] == {"packets": 3, "bytes": 4500}, "an inner class: its subtree's"
    assert body["directions"]["egress"]["backlog"] == {"packets": 3, "bytes": 4500}
    assert body["directions"]["egress"]["drops"] == 2 and body["directions"]["ingress"]["classes"] == 0
    workers.counters["web"]["rate_bps"] = 1_000_000.4  # the supervisor measures it from its samples
    assert client.get("/stats").json()["classes"]["web"]["rate_bps"] == 1_000_000


def test_enabled_switch(env: Any) -> None:
    client, _, workers, _ = env
    r = client.put("/enabled", json={"enabled": False})
    assert r.status_code == 200
    assert r.json() == {"enabled": False, "apply_seconds": 0.0007}
    assert workers.enabled is False and workers.enables == [False]
    assert client.get("/enabled").json()["enabled"] is False
    assert client.get("/stats").json()["enabled"] is False
    assert client.put("/enabled", json={"enabled": True}).json()["enabled"] is True
    assert workers.enables == [False, True]


@pytest.mark.parametrize("body", [{"enabled": "no"}, {"enabled": 0}, {}, {"enabled": True, "x": 1}])
def test_enabled_invalid_is_422(env: Any, body: dict[str, Any]) -> None:
    client, _, workers, _ = env
    r = client.put("/enabled", json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][0] == "body"
    assert workers.enables == []


def test_healthz(env: Any) -> None:
    client, _, workers, _ = env
    assert (client.get("/healthz").status_code, client.get("/healthz").json()) == (200, {"healthy": True})
    workers.is_healthy = False
    assert (client.get("/healthz").status_code, client.get("/healthz").json()) == (503, {"healthy": False})


def test_metrics(env: Any) -> None:
    client, _, workers, _ = env
    workers.counters = {"web": {"bytes": 9000, "packets": 6, "drops": 1, "backlog_packets": 2,
                                "backlog_bytes": 3000, "borrows": 4, "lends": 0}}
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(r.text) for s in fam.samples}

    def cls(metric: str, name: str) -> float:
        return samples[(metric, (("class", name), ("direction", "egress")))]

    def wrk(metric: str, queue: str) -> float:
        return samples[(metric, (("cpu", queue), ("queue", queue)))]

    assert cls("imqd_class_bytes_total", "web") == 9000
    assert cls("imqd_class_drops_total", "web") == 1
    assert cls("imqd_class_backlog_packets", "web") == 2
    assert cls("imqd_class_configured_rate_bytes_per_second", "web") == 20e6 / 8
    assert cls("imqd_class_configured_ceil_bytes_per_second", "root") == 100e6 / 8
    assert not any("bits" in name for name, _ in samples), "base unit bytes: a scraper rates the byte counters"
    assert wrk("imqd_worker_packets_total", "0") == 100 and wrk("imqd_worker_packets_total", "1") == 50
    assert wrk("imqd_worker_restarts_total", "0") == 1
    assert wrk("imqd_worker_held_packets", "0") == 10
    assert samples[("imqd_enabled", ())] == 1
    # read at scrape time, not cached
    workers.counters["web"]["bytes"] = 12000
    workers.enabled = False
    text = client.get("/metrics").text
    assert 'imqd_class_bytes_total{class="web",direction="egress"} 12000\n' in text
    assert "imqd_enabled 0.0" in text
    # its own registry: nothing leaks into the process-global one
    assert REGISTRY.get_sample_value("imqd_enabled") is None


def test_gso_and_overflow_counters_reach_metrics(env: Any) -> None:
    client, _, workers, _ = env
    workers.workers[0].update(gso=True, on_overflow="accept", gso_packets=7, gso_segments=300, unshaped_overflow=4,
                              user_dropped=0, queue_dropped=0, queue_full_samples=2)
    workers.workers[1].update(gso=False, on_overflow="drop", user_dropped=9, queue_dropped=3)
    samples = {(s.name, s.labels["queue"]): s.value
               for fam in text_string_to_metric_families(client.get("/metrics").text) for s in fam.samples
               if s.name.startswith("imqd_worker_")}
    assert (samples[("imqd_worker_gso", "0")], samples[("imqd_worker_gso", "1")]) == (1, 0)
    assert (samples[("imqd_worker_fail_open", "0")], samples[("imqd_worker_fail_open", "1")]) == (1, 0)
    assert samples[("imqd_worker_gso_segments_total", "0")] == 300
    assert samples[("imqd_worker_unshaped_overflow_total", "0")] == 4
    assert samples[("imqd_worker_queue_full_samples_total", "0")] == 2
    assert (samples[("imqd_worker_user_dropped_total", "1")], samples[("imqd_worker_queue_dropped_total", "1")]) == (9, 3)
    body = client.get("/stats").json()["workers"][0]
    assert (body["gso"], body["on_overflow"], body["gso_segments"]) == (True, "accept", 300)


def test_two_apps_do_not_share_metrics(tmp_path: Path) -> None:
    c1, _, _ = make_controller(tmp_path / "a", [{"name": "one", "rate": "1mbit"}])
    c2, _, _ = make_controller(tmp_path / "b", [{"name": "two", "rate": "1mbit"}])
    t1 = TestClient(create_app(c1, token=None, open_reads=True)).get("/metrics").text
    t2 = TestClient(create_app(c2, token=None, open_reads=True)).get("/metrics").text
    assert 'class="one"' in t1 and 'class="two"' not in t1
    assert 'class="two"' in t2 and 'class="one"' not in t2


def test_docs_and_openapi(env: Any) -> None:
    client = env[0]
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "/docs-static/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text, "works offline"
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/classes", "/classes/{name}", "/stats", "/enabled", "/healthz", "/metrics"} <= set(paths)
    post = paths["/classes"]["post"]
    assert {"201", "409", "422"} <= set(post["responses"])
    assert "security" not in post  # no token configured


# -- concurrency -----------------------------------------------------------------------
def test_50_parallel_patches_lose_no_update(tmp_path: Path) -> None:
    classes = [{"name": f"c{i}", "rate": "1mbit"} for i in range(50)]
    controller, workers, path = make_controller(tmp_path, classes, push_delay=0.002)
    want = {f"c{i}": (i + 2) * 1_000_000 for i in range(50)}
    barrier = threading.Barrier(50)
    with TestClient(create_app(controller, token=None, open_reads=True)) as client:

        def patch(name: str) -> int:
            barrier.wait()
            return client.patch(f"/classes/{name}", json={"rate": want[name]}).status_code

        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(pool.map(patch, want))
    assert statuses == [200] * 50
    assert {c.name: c.rate for c in controller.config.classes} == want
    assert {c.name: c.rate for c in disk(path).classes} == want
    assert len(workers.pushes) == 50
    # every pushed version builds on the previous one: each has one more changed class
    changed = [sum(c.rate != 1_000_000 for c in cfg.classes) for cfg in workers.pushes]
    assert changed == list(range(1, 51))


def test_leaf_stats_reach_stats_and_metrics(env: Any) -> None:
    client, _, workers, _ = env
    workers.counters = {"web": {"bytes": 0, "packets": 0, "drops": 0, "backlog_packets": 0, "backlog_bytes": 0,
                                "borrows": 0, "lends": 0, "direction": "egress",
                                "qdisc": [{"queue": 0, "kind": "fq_codel", "codel_drops": 3, "max_sojourn": 0.004},
                                          {"queue": 1, "kind": "fq_codel", "codel_drops": 4, "max_sojourn": 0.009}]}}
    web = client.get("/stats").json()["classes"]["web"]
    assert [q["codel_drops"] for q in web["qdisc"]] == [3, 4]
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    (drops,) = families["imqd_class_codel_drops"].samples
    assert drops.value == 7 and drops.labels == {"class": "web", "direction": "egress"}
    assert families["imqd_class_max_sojourn_seconds"].samples[0].value == 0.009


def test_controller_tells_its_follower_about_each_change_and_survives_its_failure(tmp_path: Path) -> None:
    controller, workers, _ = make_controller(tmp_path)
    seen: list[list[str]] = []
    controller.on_change = lambda cfg: seen.append([c.name for c in cfg.classes])
    controller.add_class({"name": "a", "rate": "1mbit"})
    controller.delete_class("a")
    assert seen == [["a"], []]

    def broken(cfg: Any) -> None:
        raise RuntimeError("iptables-restore: gone")

    controller.on_change = broken
    controller.add_class({"name": "b", "rate": "1mbit"})
    assert [c.name for c in controller.config.classes] == ["b"], "the change stands; the failure is logged"


def test_a_change_that_only_retunes_classes_leaves_the_follower_be(tmp_path: Path) -> None:
    """A plan change (rate, ceil, prio...) cannot change which packets a class takes: the rules and address
    sets stay (at 10,000 classes recomputing them costs ~30 ms per PATCH); anything else reaches them."""
    controller, _, _ = make_controller(tmp_path)
    seen: list[list[str]] = []
    controller.add_class({"name": "a", "rate": "1mbit", "match": {"dst": "198.18.0.1/32"}})
    controller.on_change = lambda cfg: seen.append([c.name for c in cfg.classes])
    controller.change_class("a", {"rate": "2mbit", "ceil": "4mbit", "prio": 3})
    assert seen == []
    controller.change_class("a", {"match": {"dst": "198.18.0.2/32"}})
    controller.change_class("a", {"default": True})
    controller.add_class({"name": "b", "rate": "1mbit", "match": {"dst": "198.18.0.3/32"}})
    controller.change_class("b", {"rate": "3mbit"})
    controller.delete_class("b")
    assert seen == [["a"], ["a"], ["a", "b"], ["a"]]
