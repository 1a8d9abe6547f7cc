"""The operator's dashboard: a page at ``/`` and the stream of stats it reads (``GET /stats/stream``).

The page (``static/``) is plain HTML, CSS and JavaScript served from the package, plus uPlot for the link
chart (fetched from npm at install/build time, never from a CDN at run time: a router often has no route
out).  It holds no data, so it needs no token; everything it shows comes through the API with the API's
own token rules.

The stream is server-sent events: one event per counter sample (every 0.5 s), carrying only what the page
shows -- link totals, the top classes by rate per direction, the classes the page has on screen
(``watch=``), the workers, the switch and the last change -- so it stays small with 10,000 classes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from imqd.stats_sampler import DIRECTIONS, SAMPLE_INTERVAL_S
from imqd.stats_view import StatsQuery, class_entries, select

STATIC = Path(__file__).parent / "static"
MAX_STREAM_TOP = 500
MAX_WATCH = 500
STREAM_POLL_S = 0.1  # how often the stream looks for a new sample
KEEPALIVE_S = 15.0

#: one event of the stream, as OpenAPI describes a text/event-stream item (its data: one JSON object)
SSE_EVENT = {"type": "object", "properties": {
    "data": {"type": "string", "contentMediaType": "application/json",
             "description": "time, enabled, directions, top {ingress, egress}, watch, workers, last_change, "
                            "changes; history (the last 60 s of link rates) in the first event"},
    "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class ChangeLog:
    """The last successful write through the API, and how many there were (the page reloads /classes
    when that number moves)."""

    def __init__(self) -> None:
        self.last: dict[str, Any] | None = None
        self.count = 0


class ChangeRecorder:
    """ASGI middleware that records the last successful write (method, path, time, apply time) in a ChangeLog.

    Watching responses rather than the endpoints keeps every write covered (classes, the switch, and any
    bulk endpoint added later) without touching them; the apply time is their ``X-Imqd-Apply-Seconds``.
    """

    WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def __init__(self, app: ASGIApp, apply_header: str, log: ChangeLog) -> None:
        self.app = app
        self.header = apply_header.lower().encode()
        self.log = log

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in self.WRITES:
            await self.app(scope, receive, send)
            return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                seconds = next((float(v) for k, v in message.get("headers", ()) if k == self.header), None)
                self.log.last = {"time": round(time.time(), 3), "method": scope["method"],
                                 "path": scope["path"], "apply_seconds": seconds}
                self.log.count += 1
            await send(message)

        await self.app(scope, receive, watch)


def stream_event(controller: Any, top: int, watch: tuple[str, ...], changes: ChangeLog, history: bool) -> bytes:
    """One SSE event: what the page shows now, from the latest sample."""
    snap = controller.workers.counter_snapshot()
    config = controller.config
    tops = {d: list(class_entries(select(config, snap, StatsQuery(direction=d, top=top)), snap).items())
            for d in DIRECTIONS}
    known = tuple(n for n in watch if config.class_by_name(n) is not None)  # a deleted class just drops out
    body: dict[str, Any] = {
        "time": round(snap.wall, 3),
        "enabled": bool(controller.workers.enabled),
        "directions": snap.directions,
        "top": {d: [{"name": n, **e} for n, e in entries] for d, entries in tops.items()},
        "watch": class_entries(select(config, snap, StatsQuery(names=known)), snap) if known else {},
        "workers": controller.workers.worker_stats(),
        "last_change": changes.last,
        "changes": changes.count,
    }
    if history:
        body["history"] = controller.workers.link_history.as_json()
    return b"data: " + orjson.dumps(body) + b"\n\n"


def mount_dashboard(app: FastAPI, controller: Any, read_deps: list[Any], errors: dict[Any, Any],
                    changes: ChangeLog) -> None:
    """The page at ``/``, its assets at ``/dashboard/``, and ``GET /stats/stream`` (``read_deps``: the API's
    read auth; ``errors``: the OpenAPI entries of its error responses)."""
    app.mount("/dashboard", StaticFiles(directory=str(STATIC)), name="dashboard")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/stats/stream", dependencies=read_deps, tags=["state"],
             summary="Server-sent events: link totals, top classes, watched classes, workers; every sample",
             responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}, **errors})
    async def stream(
        request: Request,
        top: Annotated[int, Query(ge=1, le=MAX_STREAM_TOP, description="classes per direction, by rate")] = 50,
        watch: Annotated[list[str] | None, Query(max_length=MAX_WATCH, description="classes to include too "
                                                                                    "(the rows on screen)")] = None,
        once: Annotated[Literal["0", "1"], Query(description="1: send one event and end (scripts, tests)")] = "0",
    ) -> StreamingResponse:
        names = tuple(dict.fromkeys(watch or ()))[:MAX_WATCH]

        async def events() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            sent_at = None
            first = True
            idle_since = time.monotonic()
            while True:
                snap = controller.workers.counter_snapshot()
                if snap.time != sent_at:
                    sent_at = snap.time
                    yield await asyncio.to_thread(stream_event, controller, top, names, changes, first)
                    first = False
                    idle_since = time.monotonic()
                    if once == "1":
                        return
                elif time.monotonic() - idle_since > KEEPALIVE_S:
                    yield b": keepalive\n\n"
                    idle_since = time.monotonic()
                if await request.is_disconnected():
                    return
                await asyncio.sleep(min(STREAM_POLL_S, SAMPLE_INTERVAL_S))

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
