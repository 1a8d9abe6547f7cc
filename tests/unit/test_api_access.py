"""REST API access: the bearer token on writes (and on reads unless they are open), and the request body limit.

Same harness as :mod:`test_api` (its ``FakeWorkers`` controller, no root).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_api import BASE, TOKEN, FakeWorkers, assert_unchanged, make_controller, snapshot

from imqd.api import create_app
from imqd.controller import Controller


# -- security -------------------------------------------------------------------------
def secured(tmp_path: Path, open_reads: bool) -> tuple[TestClient, Controller, FakeWorkers, Path]:
    controller, workers, path = make_controller(tmp_path, BASE)
    return TestClient(create_app(controller, token=TOKEN, open_reads=open_reads)), controller, workers, path


WRITES = [("post", "/classes", {"name": "new", "rate": "1mbit"}), ("patch", "/classes/web", {"rate": "1mbit"}),
          ("delete", "/classes/web", None), ("put", "/enabled", {"enabled": False})]
READS = ["/classes", "/classes/web", "/stats", "/enabled", "/metrics"]


def call(client: TestClient, method: str, url: str, body: Any, headers: dict[str, str]) -> Any:
    if body is None:
        return client.request(method, url, headers=headers)
    return client.request(method, url, json=body, headers=headers)


@pytest.mark.parametrize("open_reads", [True, False])
@pytest.mark.parametrize(("method", "url", "body"), WRITES)
def test_writes_need_the_token(tmp_path: Path, open_reads: bool, method: str, url: str, body: Any) -> None:
    client, controller, workers, path = secured(tmp_path, open_reads)
    before = snapshot(controller, path)
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        r = call(client, method, url, body, headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["detail"][0]["loc"] == ["header", "Authorization"]
    assert_unchanged(before, controller, path, workers, 0)
    assert workers.enables == []
    r = call(client, method, url, body, {"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code in (200, 201, 204), r.text


@pytest.mark.parametrize("url", READS)
def test_reads_open_only_when_asked(tmp_path: Path, url: str) -> None:
    closed = secured(tmp_path / "closed", open_reads=False)[0]
    assert closed.get(url).status_code == 401
    assert closed.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert closed.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    opened = secured(tmp_path / "open", open_reads=True)[0]
    assert opened.get(url).status_code == 200


def test_healthz_and_docs_stay_open(tmp_path: Path) -> None:
    client = secured(tmp_path, open_reads=False)[0]
    assert client.get("/healthz").status_code == 200
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert spec["paths"]["/classes"]["post"]["security"] == [{"HTTPBearer": []}]
    assert spec["paths"]["/classes"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_token_compared_in_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    client = secured(tmp_path, open_reads=False)[0]
    assert client.get("/classes", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert seen == [(b"guess", TOKEN.encode())]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(guess=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=40))
def test_no_other_token_is_accepted(tmp_path: Path, guess: str) -> None:
    client = secured(tmp_path, open_reads=False)[0]
    r = client.get("/enabled", headers={"Authorization": f"Bearer {guess}"})
    assert r.status_code == (200 if guess == TOKEN else 401)


# -- body size ---------------------------------------------------------------------------
@pytest.fixture
def small(tmp_path: Path) -> tuple[TestClient, Controller, FakeWorkers, Path]:
    controller, workers, path = make_controller(tmp_path, BASE)
    return TestClient(create_app(controller, token=None, open_reads=True, max_body=1024)), controller, workers, path


def padded(size: int) -> bytes:
    """A valid class body of exactly ``size`` bytes (JSON allows trailing blanks)."""
    raw = json.dumps({"name": "pad", "rate": "1mbit"}).encode()
    return raw + b" " * (size - len(raw))


def test_body_at_the_limit_is_accepted(small: Any) -> None:
    client = small[0]
    r = client.post("/classes", content=padded(1024), headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text


def test_body_over_the_limit_by_content_length_is_413(small: Any) -> None:
    client, controller, workers, path = small
    before = snapshot(controller, path)
    r = client.post("/classes", content=padded(1025), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["detail"][0]["loc"] == ["body"]
    assert_unchanged(before, controller, path, workers, 0)


def test_streamed_body_over_the_limit_is_413(small: Any) -> None:
    client, controller, workers, path = small
    before = snapshot(controller, path)
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for _ in range(100):
            sent.append(1)
            yield b" " * 100

    r = client.post("/classes", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert_unchanged(before, controller, path, workers, 0)


def test_lying_content_length_is_caught_on_the_stream(small: Any) -> None:
    """A small Content-Length with a bigger body is cut off by counting received bytes."""
    from imqd.api import BodyLimit

    received: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - must not be reached
        received.append(scope)

    limit = BodyLimit(app, max_body=10)
    messages = [{"type": "http.request", "body": b"x" * 8, "more_body": True},
                {"type": "http.request", "body": b"x" * 8, "more_body": False}]
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(msg: dict[str, Any]) -> None:
        out.append(msg)

    import anyio

    scope = {"type": "http", "method": "POST", "path": "/classes", "headers": [(b"content-length", b"5")]}
    anyio.run(limit, scope, receive, send)
    assert not received
    assert out[0]["status"] == 413
