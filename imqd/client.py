"""``imqd class|stats|enable|import``: a thin command-line client of the REST API.

It uses only urllib so the CLI needs nothing beyond the standard library.
Every failure (API refused the change, API not reachable, bad ``--set``)
ends in one line on stderr and exit code 1 (2 for a usage mistake); the API's
error ``loc`` is printed so the operator sees which field was wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from collections.abc import Callable
from typing import Any, TextIO

DEFAULT_API = "127.0.0.1:8000"
TIMEOUT_S = 30.0  # a change waits for every worker to apply it (bounded by the supervisor)

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


class ClientError(Exception):
    """One line for the operator; ``code`` is the process exit code."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


# -- building requests ---------------------------------------------------------
Types = Callable[[tuple[str, ...]], "set[str] | None"]


def parse_sets(items: list[str], types: Types | None = None) -> dict[str, Any]:
    """``["rate=5mbit", "match.dport:=5001"]`` -> ``{"rate": "5mbit", "match": {"dport": 5001}}``.

    ``FIELD=VALUE`` sends VALUE as a string, converted to an integer, boolean or
    null only where ``types`` (from the API's own schema) says the field takes
    that and not a string -- the config is strict about types so YAML's
    ``yes`` never becomes ``True`` by accident.  ``FIELD:=JSON`` sends raw
    JSON, e.g. ``ceil:=null``.  Dots build nested objects.
    """
    body: dict[str, Any] = {}
    for item in items:
        key, raw, value = _split_set(item)
        path = key.split(".")
        if any(not part for part in path):
            raise ClientError(f"--set {item!r}: empty field name", EXIT_USAGE)
        if raw:
            try:
                parsed: Any = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ClientError(f"--set {item!r}: value is not valid JSON ({exc.msg})", EXIT_USAGE) from None
        else:
            parsed = coerce(value, types(tuple(path)) if types else None)
        node = body
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ClientError(f"--set {item!r}: {part!r} is already set to a value", EXIT_USAGE)
            node = child
        if isinstance(node.get(path[-1]), dict) and not isinstance(parsed, dict):
            raise ClientError(f"--set {item!r}: {key!r} already has sub-fields", EXIT_USAGE)
        node[path[-1]] = parsed
    return body


_INT_RE = re.compile(r"[+-]?[0-9]+")
_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def coerce(value: str, types: set[str] | None) -> Any:
    """``value`` as the JSON type the field takes; unchanged when the field takes text (or is unknown)."""
    if not types or "string" in types:
        return value
    low = value.strip().lower()
    if "integer" in types and _INT_RE.fullmatch(low):
        return int(low)
    if "boolean" in types and low in _BOOLS:
        return _BOOLS[low]
    if "null" in types and low in ("null", "none"):
        return None
    return value


def schema_types(spec: dict[str, Any], schema: dict[str, Any]) -> Types:
    """A lookup ``path -> JSON types`` for the request body ``schema`` of an OpenAPI ``spec``."""

    def resolve(node: Any) -> dict[str, Any]:
        seen = 0
        while isinstance(node, dict) and "$ref" in node and seen < 20:
            ref = str(node["$ref"])
            if not ref.startswith("#/"):
                return {}
            target: Any = spec
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            node, seen = target, seen + 1
        return node if isinstance(node, dict) else {}

    def alternatives(node: Any) -> list[dict[str, Any]]:
        node = resolve(node)
        subs = node.get("anyOf") or node.get("oneOf")
        if subs:
            return [alt for sub in subs for alt in alternatives(sub)]
        return [node]

    def lookup(path: tuple[str, ...]) -> set[str] | None:
        nodes = [schema]
        for part in path:
            nodes = [alt["properties"][part] for node in nodes for alt in alternatives(node)
                     if isinstance(alt.get("properties"), dict) and part in alt["properties"]]
            if not nodes:
                return None
        types: set[str] = set()
        for node in nodes:
            for alt in alternatives(node):
                t = alt.get("type")
                if t is None:
                    return None  # free-form: the server parses the text
                types.update(t if isinstance(t, list) else [t])
        return types

    return lookup


def _split_set(item: str) -> tuple[str, bool, str]:
    eq = item.find("=")
    if eq <= 0:
        raise ClientError(f"--set {item!r}: expected FIELD=VALUE (or FIELD:=JSON)", EXIT_USAGE)
    if item[eq - 1] == ":":
        return item[: eq - 1], True, item[eq + 1:]
    return item[:eq], False, item[eq + 1:]


def class_body(args: argparse.Namespace, types: Types | None = None) -> dict[str, Any]:
    """The request body from ``--json`` (if any) with ``--set`` fields merged over it."""
    body: dict[str, Any] = {}
    if args.body is not None:
        try:
            body = json.loads(args.body)
        except json.JSONDecodeError as exc:
            raise ClientError(f"--json: not valid JSON ({exc.msg} at char {exc.pos})", EXIT_USAGE) from None
        if not isinstance(body, dict):
            raise ClientError("--json: expected a JSON object, e.g. '{\"rate\": \"5mbit\"}'", EXIT_USAGE)
    _merge(body, parse_sets(args.set, types))
    return body


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


# -- talking to the API --------------------------------------------------------
class Api:
    """Sends JSON requests to one imqd API and turns failures into ClientError."""

    def __init__(self, host: str, port: int, token: str | None, timeout: float = TIMEOUT_S) -> None:
        self.where = f"{host}:{port}"
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.base = f"http://{netloc}"
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                content_type: str = "application/json", separator: str = "; ") -> tuple[int, dict[str, str], Any]:
        """One request: ``body`` is sent as JSON, or ``raw`` bytes as ``content_type``.  Errors become a
        ClientError whose message joins the API's errors with ``separator``."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                return resp.status, dict(resp.headers.items()), _decode(raw)
        except urllib.error.HTTPError as exc:
            raise ClientError(error_line(exc.code, _decode(exc.read()), separator)) from None
        except urllib.error.URLError as exc:
            raise ClientError(self._unreachable(exc.reason)) from None
        except (ConnectionError, TimeoutError) as exc:
            raise ClientError(self._unreachable(exc)) from None

    def body_types(self, method: str, path: str) -> Types | None:
        """Field types of an operation's JSON body, from the server's OpenAPI schema (None if unknown)."""
        try:
            _, _, spec = self.request("GET", "/openapi.json")
            op = spec["paths"][path][method]
            schema = op["requestBody"]["content"]["application/json"]["schema"]
        except (ClientError, KeyError, TypeError):
            return None
        return schema_types(spec, schema)

    def _unreachable(self, reason: object) -> str:
        if isinstance(reason, ConnectionRefusedError):
            return f"cannot reach the API at {self.where} (is imqd run going?)"
        return f"cannot reach the API at {self.where}: {reason}"


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace").strip()


def error_line(status: int, body: Any, separator: str = "; ") -> str:
    """One line from an API error: ``HTTP 422: rate: invalid rate 'x'; ceil: ...``; a CSV table's errors read
    ``line 5, Download Max Mbps: ...``."""
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for err in detail:
            if not isinstance(err, dict):
                parts.append(str(err))
                continue
            loc = [str(p) for p in err.get("loc") or [] if p != "body"]
            msg = str(err.get("msg", "")).replace("\n", " ")
            if len(loc) >= 2 and loc[0] == "csv":
                parts.append(f"line {', '.join(loc[1:])}: {msg}")
            else:
                parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
        text = separator.join(parts)
    else:
        text = str(detail).replace("\n", " ") if detail else ""
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


# -- output --------------------------------------------------------------------
def human_rate(bps: float | int | None) -> str:
    if bps is None:
        return "-"
    value = float(bps)
    for unit, scale in (("Gbit", 1e9), ("Mbit", 1e6), ("Kbit", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}bit"


def human_count(n: Any) -> str:
    return "-" if n is None else str(n)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned first column, right-aligned numbers; the plain format of ``tc -s``."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def stats_text(stats: dict[str, Any]) -> str:
    classes = stats.get("classes") or {}
    crows = []
    for name, c in classes.items():
        backlog = c.get("backlog") or {}
        crows.append([name, str(c.get("direction", "-")), human_rate(c.get("rate_bps")), human_count(c.get("bytes")),
                      human_count(c.get("packets")), human_count(c.get("drops")),
                      f"{backlog.get('packets', 0)}p/{backlog.get('bytes', 0)}b", human_count(c.get("matched"))])
    wrows = []
    for w in stats.get("workers") or []:
        wrows.append([str(w.get("queue", "-")), human_count(w.get("cpu")), human_count(w.get("pid")),
                      human_count(w.get("packets")), human_count(w.get("held")), human_count(w.get("drops")),
                      human_count(w.get("malformed")), human_count(w.get("restarts"))])
    enabled = stats.get("enabled")
    last = stats.get("last_apply_seconds")
    head = f"shaping: {'on' if enabled else 'off'}"
    if last is not None:
        head += f"   last change applied in {last * 1000:.1f} ms"
    warnings = [f"warning: {w}" for w in stats.get("warnings") or []]
    return "\n".join([
        head, *warnings, "",
        table(["class", "dir", "rate", "bytes", "pkts", "drops", "backlog", "matched"], crows), "",
        table(["queue", "cpu", "pid", "packets", "held", "drops", "malformed", "restarts"], wrows),
    ])


def classes_text(classes: list[dict[str, Any]]) -> str:
    rows = []
    for c in classes:
        match = c.get("match") or {}
        rows.append([str(c.get("name")), str(c.get("direction", "-")), str(c.get("parent") or "-"),
                     _rate_cell(c.get("rate")), _rate_cell(c.get("ceil")), human_count(c.get("prio")),
                     "yes" if c.get("default") else "",
                     " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in match.items()
                              if v not in (None, [], ""))])
    return table(["class", "dir", "parent", "rate", "ceil", "prio", "default", "match"], rows)


def _rate_cell(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return human_rate(value)
    return human_count(value)


def _applied(headers: dict[str, str]) -> str:
    value = {k.lower(): v for k, v in headers.items()}.get("x-imqd-apply-seconds")
    try:
        return f" (applied to all workers in {float(value) * 1000:.1f} ms)" if value else ""
    except ValueError:
        return ""


# -- commands ------------------------------------------------------------------
def resolve_api(args: argparse.Namespace) -> tuple[str, int]:
    from imqd.cli import host_port_arg

    text = args.api or os.environ.get("IMQD_API") or DEFAULT_API
    try:
        api = host_port_arg(text)
    except argparse.ArgumentTypeError as exc:
        raise ClientError(str(exc), EXIT_USAGE) from None
    if api is None:
        raise ClientError(f"--api {text!r}: expected HOST:PORT of a running imqd", EXIT_USAGE)
    return api


def resolve_token(args: argparse.Namespace) -> str | None:
    path = getattr(args, "token_file", None) or (Path(p) if (p := os.environ.get("IMQD_TOKEN_FILE")) else None)
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ClientError(f"--token-file {path}: {exc.strerror}") from None
    if not token:
        raise ClientError(f"--token-file {path}: the file is empty")
    return token


def _path(name: str) -> str:
    return "/classes/" + urllib.parse.quote(name, safe="")


def _need_name(args: argparse.Namespace) -> str:
    if not args.name:
        raise ClientError(f"class {args.action}: the class NAME is required", EXIT_USAGE)
    return str(args.name)


def cmd_class(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    action = args.action
    if action == "list":
        _, _, classes = api.request("GET", "/classes")
        print(classes_text(classes or []), file=out)
    elif action == "show":
        _, _, cls = api.request("GET", _path(_need_name(args)))
        print(json.dumps(cls, indent=2), file=out)
    elif action == "add":
        body = class_body(args, api.body_types("post", "/classes") if args.set else None)
        if args.name:
            body["name"] = args.name
        if "name" not in body:
            raise ClientError("class add: the class NAME is required", EXIT_USAGE)
        _, headers, cls = api.request("POST", "/classes", body)
        print(f"added class {cls.get('name', body['name'])}{_applied(headers)}", file=out)
    elif action == "change":
        name = _need_name(args)
        body = class_body(args, api.body_types("patch", "/classes/{name}") if args.set else None)
        if not body:
            raise ClientError("class change: nothing to change (use --set FIELD=VALUE or --json)", EXIT_USAGE)
        _, headers, cls = api.request("PATCH", _path(name), body)
        print(f"changed class {cls.get('name', name)}{_applied(headers)}", file=out)
    elif action == "delete":
        name = _need_name(args)
        _, headers, _ = api.request("DELETE", _path(name))
        print(f"deleted class {name}{_applied(headers)}", file=out)
    else:  # argparse restricts the choices; keep the message if someone calls us directly
        raise ClientError(f"class: unknown action {action!r}", EXIT_USAGE)


def stats_path(args: argparse.Namespace) -> str:
    """``/stats`` with the filters the command line asked for (``--top``, ``--parent``, ``--class``)."""
    query: list[tuple[str, str]] = [("class", n) for n in getattr(args, "classes", None) or ()]
    if getattr(args, "parent", None):
        query.append(("parent", args.parent))
    if getattr(args, "top", None):
        query.append(("top", str(args.top)))
    return "/stats" + ("?" + urllib.parse.urlencode(query) if query else "")


def cmd_stats(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    _, _, stats = api.request("GET", stats_path(args))
    if getattr(args, "json", False):
        print(json.dumps(stats, indent=2), file=out)
    else:
        print(stats_text(stats), file=out)


def cmd_enable(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    _, headers, body = api.request("PUT", "/enabled", {"enabled": args.state == "on"})
    state = "on" if body and body.get("enabled") else "off"
    print(f"shaping {state}{_applied(headers)}", file=out)


def cmd_import(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    """Send a LibreQoS ShapedDevices.csv to ``POST /import``; one line per bad row if it is refused."""
    try:
        raw = Path(args.file).read_bytes()
    except OSError as exc:
        raise ClientError(f"{args.file}: {exc.strerror}") from None
    query = {k: v for k, v in (("prefix", args.prefix), ("parent", args.parent)) if v}
    if args.dry_run:
        query["dry_run"] = "true"
    path = "/import" + ("?" + urllib.parse.urlencode(query) if query else "")
    try:
        _, headers, summary = api.request("POST", path, raw=raw, content_type="text/csv", separator="\n  ")
    except ClientError as exc:
        raise ClientError(f"{args.file}: not imported, nothing changed:\n  {exc}", exc.code) from None
    what = (f"{summary['circuits']} circuits ({summary['devices']} devices): {summary['added']} classes added, "
            f"{summary['changed']} changed, {summary['removed']} removed, {summary['unchanged']} unchanged")
    if args.dry_run:
        print(f"{args.file}: would import {what} (dry run: nothing changed)", file=out)
    else:
        print(f"{args.file}: imported {what}{_applied(headers)}", file=out)


COMMANDS = {"class": cmd_class, "stats": cmd_stats, "enable": cmd_enable, "import": cmd_import}


def run_client(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one client subcommand; return the exit code (0 ok, 1 failed, 2 usage)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        host, port = resolve_api(args)
        api = Api(host, port, resolve_token(args))
        COMMANDS[args.command](api, args, out)
    except ClientError as exc:
        print(f"imqd: {exc}", file=err)
        return exc.code
    return EXIT_OK
