"""The REST API: a thin HTTP layer over ``Controller`` (which validates, persists, applies).

Why it is built this way:

* Class bodies are validated once, by ``Config`` itself (through the
  controller), so the API and the config file accept exactly the same values
  and every refusal names the field.  The OpenAPI schema of a body is derived
  from ``ClassSpec``; fields that accept operator text ("7mbit", "tcp",
  "5000-5100") are documented as free-form there because JSON Schema cannot
  say what ``parse_rate`` accepts.
* Every error, ours or FastAPI's, has one shape: ``{"detail": [{"loc": [...],
  "msg": "..."}]}``, so the CLI prints them all the same way.
* Controller calls block until every worker applied a change, so endpoints are
  plain ``def`` (FastAPI runs them in its threadpool, the event loop stays free).
* Security: a bearer token (compared in constant time) for writes, and for
  reads unless ``open_reads``; ``/healthz`` stays open for probes; bodies are
  limited to ``max_body`` bytes on Content-Length and on the bytes received.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, WithJsonSchema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from imqd.config import ClassSpec, ConfigError
from imqd.dashboard import ChangeLog, ChangeRecorder, mount_dashboard
from imqd.json_body import dumps, dumps_ascii
from imqd.metrics import ClassSeries, metrics_registry
from imqd.stats_view import MAX_TOP, StatsQuery

__all__ = ["create_app", "APPLY_HEADER", "DEFAULT_MAX_BODY", "BULK_MAX_BODY", "STATUS_BY_CODE"]

DEFAULT_MAX_BODY = 64 * 1024
# A whole class set (PUT /classes) or subscriber table (POST /import) is larger: ~250 bytes of JSON per class,
# ~100 bytes of CSV per device row.  32 MiB holds MAX_CLASSES classes; only these two endpoints get it.
BULK_MAX_BODY = 32 * 1024 * 1024
BULK_ROUTES = frozenset({("PUT", "/classes"), ("POST", "/import")})
APPLY_HEADER = "X-Imqd-Apply-Seconds"
STATUS_BY_CODE = {"invalid": 422, "not_found": 404, "exists": 409, "has_children": 409}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# -- response and request shapes ------------------------------------------------
class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: e.g. ['classes', 'web', 'ceil'] or ['header', 'Authorization']")
    msg: str


class ErrorBody(BaseModel):
    detail: list[ErrorItem]


class EnabledBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: StrictBool = Field(description="false: every packet is accepted at once (no shaping)")


class EnabledOut(BaseModel):
    enabled: bool
    apply_seconds: float | None = Field(default=None, description="time until every worker applied the switch")


class HealthOut(BaseModel):
    healthy: bool


class Backlog(BaseModel):
    packets: int
    bytes: int


class ClassStatsOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    direction: str
    parent: str | None = None
    bytes: int
    packets: int
    drops: int
    backlog: Backlog = Field(description="held now; an inner class: its whole subtree's")
    rate_bps: int = Field(description="measured rate in bit/s over about the last second")
    borrowed: int
    lends: int
    matched: int | None = Field(default=None, description="packets classified into the class: sent + dropped + "
                                "queued (a parent: its leaves'); from imqd run")


class WorkerStatsOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    queue: int
    cpu: int | None = None
    pid: int | None = None
    alive: bool | None = None
    ready: bool | None = None
    restarts: int = 0
    packets: int = 0
    verdicts: int = 0
    drops: int = 0
    malformed: int = 0
    held: int = 0
    batch_verdicts: int = 0  # verdict messages that accepted a whole drain of the socket at once
    drain_pauses: int = 0  # drains of the socket cut short after DRAIN_MAX packets: the worker is overloaded
    host_bucket_overflows: int = 0  # per_host caps kept by this worker alone: the shared table's set was full
    hook_packets: dict[str, int] = {}  # packets per netfilter hook (prerouting, input, forward, output, postrouting)
    packets_per_second: float = 0.0
    cpu_percent: float = Field(default=0.0, description="CPU time the worker used over the last sample, %")


class DirectionStatsOut(BaseModel):
    rate_bps: int = Field(description="rate through the direction's top-level classes, bit/s")
    drops: int
    backlog: Backlog
    classes: int


class ChangeSummary(BaseModel):
    added: int = Field(description="classes added")
    changed: int = Field(description="classes changed")
    removed: int = Field(description="classes removed")
    unchanged: int = Field(description="classes left as they were (their queues and token state untouched)")
    applied: bool = Field(description="false: nothing changed (or a dry run), nothing was written or sent")
    apply_seconds: float | None = Field(default=None, description="time until every worker applied the change")


class ImportSummary(ChangeSummary):
    circuits: int = Field(description="circuits in the table (one download and one upload class each)")
    devices: int = Field(description="device rows in the table")


class StatsOut(BaseModel):
    enabled: bool
    time: float = Field(description="when the counters were sampled (Unix time); they are sampled every 0.5 s")
    directions: dict[str, DirectionStatsOut]
    classes: dict[str, ClassStatsOut] = Field(description="config order; with ?top=N highest rate first")
    workers: list[WorkerStatsOut]
    last_apply_seconds: float | None
    warnings: list[str] = Field(default_factory=list, description="classes the hooks cannot see, or that matched "
                                "nothing while their direction saw traffic (imqd.hook_checks)")


def _has_text_parser(field: Any) -> bool:
    return any(isinstance(m, BeforeValidator) for m in field.metadata)


def body_schema(model: type[BaseModel], *, partial: bool) -> dict[str, Any]:
    """JSON Schema of a request body, derived from a config model (one definition of each field).

    Fields parsed from operator text by a BeforeValidator accept more than
    their stored type, so they are left free-form here (the server names any
    bad value).  ``partial``: a JSON merge patch -- nothing required, ``null``
    resets a field to its default.
    """
    full = model.model_json_schema(mode="validation")
    props: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        prop = dict(full["properties"][name])
        if _has_text_parser(field):
            prop = {"title": prop.get("title", name),
                    "description": field.description or "a number, or the text form an operator writes "
                                                         "(tc units, names, ranges: see the example)"}
            if "default" in full["properties"][name]:
                prop["default"] = full["properties"][name]["default"]
        elif (sub := _nested_model(field.annotation)) is not None:
            prop = {"anyOf": [body_schema(sub, partial=partial), {"type": "null"}],
                    "default": None, "title": prop.get("title", name.title())}
        elif partial:
            prop = {"anyOf": [prop, {"type": "null"}]}
        props[name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False,
                              "title": model.__name__ + ("Patch" if partial else "")}
    if not partial and full.get("required"):
        schema["required"] = list(full["required"])
    return schema


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside ``Model | None`` (or ``Model``), else None."""
    for t in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


CLASS_EXAMPLE = {"name": "web", "direction": "egress", "parent": None, "rate": "5mbit", "ceil": "10mbit",
                 "prio": 1, "match": {"dst": "198.18.1.0/24", "proto": "tcp", "dport": "80-443"}}
ClassCreate = Annotated[dict[str, Any], WithJsonSchema({**body_schema(ClassSpec, partial=False),
                                                        "examples": [CLASS_EXAMPLE]})]
ClassPatch = Annotated[dict[str, Any], WithJsonSchema({**body_schema(ClassSpec, partial=True),
                                                       "examples": [{"rate": "30mbit", "ceil": None}]})]

ClassSet = Annotated[dict[str, Any], WithJsonSchema({
    "type": "object", "title": "ClassSet", "additionalProperties": False, "required": ["classes"],
    "properties": {"overhead": {"type": "integer", "minimum": 0, "maximum": 1024,
                                "description": "global per-packet overhead in bytes (unchanged if left out)"},
                   "classes": {"type": "array", "items": body_schema(ClassSpec, partial=False),
                               "description": "the complete class set, in config order"}},
    "examples": [{"overhead": 14, "classes": [CLASS_EXAMPLE]}]})]
CSV_BODY = {"requestBody": {"required": True, "description": "a LibreQoS ShapedDevices.csv table (UTF-8)",
                            "content": {"text/csv": {"schema": {"type": "string"}, "example": (
                                "Circuit ID,Circuit Name,Device ID,Device Name,Parent Node,MAC,IPv4,IPv6,"
                                "Download Min Mbps,Upload Min Mbps,Download Max Mbps,Upload Max Mbps,Comment\n"
                                "c1,Alice,d1,router,site1,,198.18.20.1,,10,5,100,20,\n")}}}}

ClassName = Annotated[str, Path(description="the class name", examples=["web"])]

_APPLY_DOC = {APPLY_HEADER: {"description": "seconds from the change until every worker applied it",
                             "schema": {"type": "string"}}}
_ERR = {"model": ErrorBody}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses, all with the one error shape."""
    return {code: {**_ERR, "description": _ERROR_TEXT[code]} for code in codes}


_ERROR_TEXT = {
    400: "the body could not be decoded (not UTF-8 JSON)",
    401: "bearer token missing or wrong",
    404: "no class of that name",
    409: "the class exists already, or it still has children",
    413: "request body too large",
    503: "the configuration file could not be written; nothing was changed",
    422: "invalid value; `loc` names the field (in a CSV table: [\"csv\", line, column])",
}


class JSON(JSONResponse):
    """JSON with non-ASCII escaped: a stray lone surrogate (e.g. from a hand-edited YAML file) still encodes."""

    def render(self, content: Any) -> bytes:
        return dumps_ascii(content)


class FastJSON(JSON):
    """Large bodies (``/stats`` of 10,000 classes: ~45 ms with json, ~4 ms with orjson); a string orjson
    refuses (a lone surrogate) falls back to ``JSON``."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


# -- errors -----------------------------------------------------------------------
def _clean(text: Any) -> Any:
    """A string that is valid UTF-8 (lone surrogates escaped) so any JSON response encodes."""
    if isinstance(text, str):
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text
    return _clean(str(text))


def error_response(status: int, errors: Iterable[dict[str, Any]], headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    detail = [{"loc": [_clean(p) for p in e.get("loc", ())], "msg": _clean(e.get("msg", ""))} for e in errors]
    return JSON({"detail": detail}, status_code=status, headers=headers)


def refuse_unknown_query(request: Request, known: set[str]) -> None:
    """A misspelt filter (``?tpo=5``) must not quietly answer with everything."""
    for key in request.query_params:
        if key not in known:
            raise ConfigError.one(("query", key), f"unknown query parameter {key!r}; known: {', '.join(sorted(known))}")


class AuthError(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


def _not_utf8(value: Any, loc: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """The loc of the first string in a JSON value that is not valid Unicode (a lone surrogate escape)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return loc
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            bad = _not_utf8(k, loc) or _not_utf8(v, (*loc, k))
            if bad is not None:
                return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad = _not_utf8(v, (*loc, i))
            if bad is not None:
                return bad
    return None


def _check_text(body: Any) -> None:
    bad = _not_utf8(body)
    if bad is not None:
        raise ConfigError([{"loc": ("body", *[_clean(p) for p in bad]),
                            "msg": "not valid Unicode text (lone surrogate escape)"}])


# -- body size limit (pure ASGI, so it sees the raw stream) ----------------------------
class BodyLimit:
    """Refuse bodies over ``max_body`` bytes with 413: by Content-Length, and by counting what arrives.

    The bulk routes (``(method, path)`` in ``bulk_routes``) may send up to ``bulk_max_body``."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_body: int, bulk_max_body: int | None = None,
                 bulk_routes: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.app = app
        self.max_body = max_body
        self.bulk_max_body = bulk_max_body if bulk_max_body is not None else max_body
        self.bulk_routes = bulk_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bulk = (scope.get("method"), scope.get("path")) in self.bulk_routes
        limit = self.bulk_max_body if bulk else self.max_body
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await self._refuse(send, 400, "Content-Length is not a number")
                    return
                if length > limit:
                    await self._refuse(send, 413, f"request body over {limit} bytes")
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(send, 413, f"request body over {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Send, status: int, msg: str) -> None:
        payload = json.dumps({"detail": [{"loc": ["body"], "msg": msg}]}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


# -- the app ------------------------------------------------------------------------------
def mount_offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs with its JavaScript and CSS from the swagger-ui-bundle package."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Any:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="imqd API",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon-32x32.png")



def create_app(controller: Any, *, token: str | None, open_reads: bool, max_body: int = DEFAULT_MAX_BODY,
               bulk_max_body: int = BULK_MAX_BODY) -> FastAPI:
    """The REST API over ``controller``; ``token`` guards writes (and reads unless ``open_reads``)."""
    app = FastAPI(
        title="imqd",
        version="1",
        description="Shaping classes of an imqd router, changed live; statistics; on/off switch.",
        responses={413: {**_ERR, "description": _ERROR_TEXT[413]}},
        default_response_class=JSON,
        docs_url=None,  # served below from local files: a router often has no route to a CDN
    )
    mount_offline_docs(app)
    # -- auth --
    bearer = HTTPBearer(auto_error=False, description="the token from imqd run --token-file")
    secret = token.encode() if token else None

    def require_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if creds is None:
            raise AuthError("missing bearer token (Authorization: Bearer TOKEN)")
        assert secret is not None
        if not hmac.compare_digest(creds.credentials.encode("utf-8", "surrogateescape"), secret):
            raise AuthError("wrong bearer token")

    auth = [Depends(require_token)] if secret else []
    write_deps = auth
    read_deps = auth if not open_reads else []
    write_errors = _errors(400, 401, 422, 503) if secret else _errors(400, 422, 503)
    read_401 = _errors(401) if read_deps else {}

    # -- error handlers: one shape for everything --
    @app.exception_handler(ConfigError)
    async def _config_error(_: Request, exc: ConfigError) -> JSONResponse:
        return error_response(STATUS_BY_CODE.get(exc.code, 422), exc.errors)

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return error_response(401, [{"loc": ["header", "Authorization"], "msg": exc.msg}],
                              headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(OSError)
    async def _os_error(_: Request, exc: OSError) -> JSONResponse:
        # the controller saves before it changes memory or workers: nothing was changed
        return error_response(503, [{"loc": ["config"], "msg": f"could not save the configuration: {exc}"}])

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, [{"loc": e.get("loc", ()), "msg": e.get("msg", "invalid")}
                                    for e in exc.errors()])

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        loc = ["body"] if exc.status_code == 400 else []  # FastAPI's only 400: a body it cannot decode
        errors = detail if isinstance(detail, list) else [{"loc": loc, "msg": str(detail)}]
        return error_response(exc.status_code, errors, headers=getattr(exc, "headers", None))

    def applied(seconds: float | None) -> dict[str, str]:
        return {APPLY_HEADER: f"{seconds:.6f}"} if seconds is not None else {}

    # -- classes --
    @app.get("/classes", response_model=list[ClassSpec], dependencies=read_deps, responses=read_401,
             tags=["classes"], summary="All classes of both trees")
    def list_classes() -> Response:
        return JSON(controller.list_classes())

    @app.get("/classes/{name}", response_model=ClassSpec, dependencies=read_deps,
             responses={**read_401, **_errors(404, 422)}, tags=["classes"], summary="One class")
    def get_class(name: ClassName) -> Response:
        return JSON(controller.get_class(name))

    @app.post("/classes", status_code=201, response_model=ClassSpec, dependencies=write_deps,
              responses={201: {"headers": _APPLY_DOC}, **write_errors, **_errors(409)},
              tags=["classes"], summary="Add a class (applied to every worker before the response)")
    def add_class(body: Annotated[ClassCreate, Body()]) -> Response:
        _check_text(body)
        stored = controller.add_class(body)
        return JSON(stored, status_code=201, headers={
            **applied(controller.applied_seconds), "Location": f"/classes/{stored['name']}"})

    @app.patch("/classes/{name}", response_model=ClassSpec, dependencies=write_deps,
               responses={200: {"headers": _APPLY_DOC}, **write_errors, **_errors(404)},
               tags=["classes"], summary="Change fields of a class live (JSON merge patch: null resets)")
    def change_class(name: ClassName, body: Annotated[ClassPatch, Body()]) -> Response:
        _check_text(body)
        stored = controller.change_class(name, body)
        return JSON(stored, headers=applied(controller.applied_seconds))

    @app.delete("/classes/{name}", status_code=204, dependencies=write_deps,
                responses={204: {"headers": _APPLY_DOC}, **(_errors(401) if secret else {}),
                           **_errors(404, 409, 422, 503)},
                tags=["classes"], summary="Remove a leaf class; its held packets go to the default class")
    def delete_class(name: ClassName) -> Response:
        controller.delete_class(name)
        return Response(status_code=204, headers=applied(controller.applied_seconds))

    @app.put("/classes", response_model=ChangeSummary, dependencies=write_deps,
             responses={200: {"headers": _APPLY_DOC}, **write_errors, **_errors(413)}, tags=["classes"],
             summary="Replace the whole class set atomically; only the difference is applied")
    def replace_classes(body: Annotated[ClassSet, Body()]) -> Response:
        _check_text(body)
        summary = controller.replace_classes(body)
        return JSON(summary, headers=applied(summary["apply_seconds"]))

    @app.post("/import", response_model=ImportSummary, dependencies=write_deps, openapi_extra=CSV_BODY,
              responses={200: {"headers": _APPLY_DOC}, **write_errors, **_errors(413)}, tags=["classes"],
              summary="Import subscribers from a LibreQoS ShapedDevices.csv: one download and one upload class "
                      "per circuit, replacing the previously imported ones as one change")
    async def import_subscribers(
        request: Request,
        prefix: Annotated[str | None, Query(description="name prefix of the imported classes (default sub-)")] = None,
        parent: Annotated[str | None, Query(description="Parent Node for rows that name none")] = None,
        dry_run: Annotated[bool, Query(description="only report what would change")] = False,
    ) -> Response:
        raw = await request.body()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError.one(("body",), f"the table is not UTF-8 text: {exc}") from None
        summary = await run_in_threadpool(controller.import_subscribers, text, prefix=prefix, parent=parent,
                                          dry_run=dry_run)
        return JSON(summary, headers=applied(summary["apply_seconds"]))

    # -- state --
    @app.get("/stats", response_model=StatsOut, dependencies=read_deps,
             responses={**read_401, 404: {**_ERR, "description": "a class named in `class` or `parent` does not "
                                                                 "exist"}, **_errors(422)},
             tags=["state"], summary="Per-class counters (all, or the ones asked for), link totals, workers")
    def stats(
        request: Request,
        class_: Annotated[list[str] | None, Query(alias="class", description="only these classes (repeatable)")
                          ] = None,
        parent: Annotated[str | None, Query(description="only the children of this class")] = None,
        direction: Annotated[Literal["ingress", "egress"] | None, Query(description="only this tree")] = None,
        top: Annotated[int | None, Query(ge=1, le=MAX_TOP, description="the N classes with the highest rate "
                                                                         "now, highest first")] = None,
    ) -> Response:
        # The stats are plain JSON types already; FastAPI's jsonable_encoder took half of a request's
        # time with 1,000 classes (~20 ms) to copy them unchanged.
        refuse_unknown_query(request, {"class", "parent", "direction", "top"})
        return Response(controller.stats_json(StatsQuery(tuple(class_ or ()), parent, direction, top)),
                        media_type="application/json")

    @app.get("/enabled", response_model=EnabledOut, dependencies=read_deps, responses=read_401, tags=["state"],
             summary="Whether shaping is on")
    def get_enabled() -> Response:
        return JSON({"enabled": bool(controller.workers.enabled)})

    @app.put("/enabled", response_model=EnabledOut, dependencies=write_deps,
             responses={200: {"headers": _APPLY_DOC}, **write_errors}, tags=["state"],
             summary="Switch shaping off (every packet accepted at once) or on, live")
    def put_enabled(body: EnabledBody) -> Response:
        seconds = controller.set_enabled(body.enabled)
        return JSON({"enabled": bool(controller.workers.enabled), "apply_seconds": seconds},
                            headers=applied(seconds))

    @app.get("/healthz", response_model=HealthOut, responses={503: {"model": HealthOut,
                                                                     "description": "a worker is down"}},
             tags=["state"], summary="200 when every worker is alive and bound to its queue")
    def healthz() -> Response:
        ok = bool(controller.workers.healthy())
        return JSON({"healthy": ok}, status_code=200 if ok else 503)

    registry = metrics_registry(controller)
    class_series = ClassSeries()

    @app.get("/metrics", dependencies=read_deps, tags=["state"], summary="Prometheus text format",
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
                        **read_401})
    def metrics() -> Response:
        text = class_series.text(controller.config, controller.workers.counter_snapshot())
        return Response(generate_latest(registry) + text.encode(), media_type=CONTENT_TYPE_LATEST)

    changes = ChangeLog()
    mount_dashboard(app, controller, read_deps, {**read_401, **_errors(422)}, changes)
    app.add_middleware(ChangeRecorder, apply_header=APPLY_HEADER, log=changes)
    app.add_middleware(BodyLimit, max_body=max_body, bulk_max_body=max(max_body, bulk_max_body),
                       bulk_routes=BULK_ROUTES)
    return app
