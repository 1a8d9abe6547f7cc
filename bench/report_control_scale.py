"""The control plane at scale section (issue 17): figures, verdicts and markdown from
:mod:`bench.control_scale`'s records.  Pure.

Each request kind is summarised by the median and the maximum over its requests (pooled over the records of
one class count); a kind this imqd does not serve (every answer 404/405/413) is "not available" with the
status it gave, so pages before and after the bulk endpoints exist read the same way.
"""

from __future__ import annotations

from typing import Any

from bench.stats import median, table, three

__all__ = ["summarize_control_scale", "control_scale_targets", "render_control_scale", "CONTROL_TARGETS", "ops",
           "early", "EARLY_SLACK", "UNAVAILABLE"]

UNAVAILABLE = (404, 405, 413)  # this imqd has no such endpoint (or refuses a body that size): "not available"
EARLY_SLACK = 2  # datagrams above plan x time a subscriber may get in a window by timing alone

CONTROL_TARGETS = {"start_s": 3.0, "patch_ms": 50.0, "stats_ms": 100.0, "metrics_ms": 500.0, "bulk_s": 3.0}
OP_KINDS = ("patch", "post", "delete", "get_stats", "get_metrics")
BULK_KINDS = ("put", "import", "reimport")


def early(excess: list[float]) -> float:
    """Datagrams released early in a window: what each subscriber got beyond plan x time + EARLY_SLACK, summed."""
    return round(sum(max(0.0, e - EARLY_SLACK) for e in excess), 1)


def ops(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and max of the wall time and of the apply header (ms) over the 2xx answers; the first failure."""
    ok = [a for a in answers if 200 <= a["status"] < 300]
    bad = next((a for a in answers if not 200 <= a["status"] < 300), None)
    applied = [a["apply_s"] * 1000 for a in ok if a.get("apply_s") is not None]
    walls = [a["wall_s"] * 1000 for a in ok]
    return {"n": len(answers), "ok": len(ok),
            "wall_ms": {"median": median(walls), "max": max(walls)} if walls else None,
            "apply_ms": {"median": median(applied), "max": max(applied)} if applied else None,
            "bytes": median([a["bytes"] for a in ok]) if ok else None,
            "failure": None if bad is None else {"status": bad["status"], "body": (bad.get("body") or "")[:200]}}


def summarize_control_scale(records: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """Per class count: start time, request figures, bulk changes and the change under load (None: not run)."""
    if not records:
        return None
    rows = []
    for n in sorted({r["classes"] for r in records}):
        recs = [r for r in records if r["classes"] == n]
        row: dict[str, Any] = {"classes": n, "workers": recs[0].get("workers"),
                               "healthz_s": three(r.get("healthz_s") for r in recs),
                               "ready_s": three(r.get("ready_s") for r in recs)}
        for kind in OP_KINDS:
            row[kind] = ops([a for r in recs for a in r.get(kind, [])])
        for kind in BULK_KINDS:
            row[kind] = ops([r[kind] for r in recs if kind in r])
        loads = [r["under_load"] for r in recs if r.get("under_load")]
        row["under_load"] = None if not loads else {
            "method": loads[0]["method"], "changed": loads[0]["changed"],
            "apply_wall_s": three(u["apply_wall_s"] for u in loads),
            "failed": sum(1 for u in loads for a in u["requests"] if not 200 <= a["status"] < 300),
            "lost": sum(u["lost"] for u in loads), "sent_under": sum(u["sent_under"] for u in loads),
            "early_change": max(early(u["excess_change"]) for u in loads),
            "early_quiet": max(early(u["excess_quiet"]) for u in loads),
            "excess_change_max": max(max(u["excess_change"]) for u in loads),
            "excess_change_min": min(min(u["excess_change"]) for u in loads)}
        rows.append(row)
    return {"rows": rows}


def _unavailable(o: dict[str, Any]) -> str | None:
    """'not available (HTTP 405)' when no request of the kind succeeded, else None."""
    if o["ok"]:
        return None
    if o["failure"] is None:
        return "not measured"
    status = o["failure"]["status"]
    return f"not available (HTTP {status})" if status in UNAVAILABLE else f"failed (HTTP {status})"


def control_scale_targets(s: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 17's targets, judged at the largest class count measured."""
    if not s:
        return []
    t = CONTROL_TARGETS
    r = s["rows"][-1]
    at = f"control at {r['classes']:,} classes"
    out = []

    def row(figure: str, target: str, value: float | None, limit: float, why: str | None = None,
            fmt: str = "{:.2f}") -> None:
        out.append({"figure": f"{at}: {figure}", "target": target, "value": value, "fmt": fmt,
                    "met": value is not None and value <= limit, "misses": [why] if why else []})

    h = r["healthz_s"]
    row("start to /healthz 200 (s)", f"<= {t['start_s']:g} s", None if h is None else h["median"], t["start_s"])
    for key, label, field, limit, unit in (("patch", "PATCH /classes/{name}, X-Imqd-Apply-Seconds median", "apply_ms",
                                            t["patch_ms"], "ms"),
                                           ("patch", "PATCH /classes/{name}, wall time median", "wall_ms",
                                            t["patch_ms"], "ms"),
                                           ("get_stats", "GET /stats median", "wall_ms", t["stats_ms"], "ms"),
                                           ("get_metrics", "GET /metrics median", "wall_ms", t["metrics_ms"], "ms")):
        v = r[key][field]
        row(f"{label} ({unit})", f"<= {limit:g} {unit}", None if v is None else v["median"], limit,
            _unavailable(r[key]), "{:.1f}")
    for key, label in (("put", "PUT /classes, 1% changed"), ("import", f"CSV import of {r['classes']:,} circuits"),
                       ("reimport", "CSV re-import, 1% changed")):
        v = r[key]["wall_ms"]
        row(f"{label} (s)", f"<= {t['bulk_s']:g} s", None if v is None else v["median"] / 1000, t["bulk_s"],
            _unavailable(r[key]))
    u = r["under_load"]
    if u is not None:
        how = f"change by {u['method']}"
        row(f"packets lost under load ({how})", "0", u["lost"], 0, fmt="{:,.0f}")
        row(f"datagrams released early under load ({how})", "0", u["early_change"], 0, fmt="{:g}")
    return out


def _pair(x: dict[str, float] | None, fmt: str) -> str:
    return "n/a" if x is None else f"{fmt.format(x['median'])} / {fmt.format(x['max'])}"


def _request_cell(o: dict[str, Any], planned: int, field: str = "wall_ms") -> str:
    """'median / max' ms, with the number of requests in brackets where the time budget cut them short."""
    missing = _unavailable(o)
    if missing or o[field] is None:
        return missing or "n/a"
    return _pair(o[field], "{:.1f}") + (f" ({o['n']})" if o["n"] < planned else "")


def _bulk_cell(o: dict[str, Any]) -> str:
    """'1.23 s (applied 0.80 s)' of one bulk request, or why there is none."""
    missing = _unavailable(o)
    if missing:
        return missing
    wall = o["wall_ms"]["median"] / 1000
    applied = o["apply_ms"]
    return f"{wall:.2f} s" + ("" if applied is None else f" (applied {applied['median'] / 1000:.2f} s)")


def render_control_scale(s: dict[str, Any] | None, params: dict[str, Any] | None) -> list[str]:
    """The section's markdown lines ('not measured' when the run skipped it)."""
    L = ["## Control plane at scale", ""]
    if not s:
        return L + ["Not measured in this run (see `--sections`).", ""]
    p = params or {}
    workers = s["rows"][0]["workers"]
    L += [f"imqd x{workers} started with N subscriber leaves (one 10gbit parent, leaf i matching "
          "`dst: 198.18.128.i/32` at a 24 kbit/s plan) and the two parents an imported table hangs under; one "
          "keep-alive HTTP client in the router namespace, sequential requests. Cells are *median / max* over "
          f"{p.get('ops', '?')} requests ({p.get('reads', '?')} for the reads; fewer, in brackets, where one kind "
          f"took more than {p.get('kind_budget_s', '?')} s) in ms: the client's wall time, and "
          "for changes also the `X-Imqd-Apply-Seconds` header (from the change until every worker applied it). "
          "PATCH toggles the last leaf's rate; POST adds a leaf, DELETE removes it again. *Start* is launching "
          "`imqd run` to `GET /healthz` answering 200.", ""]
    L += table_rows(s, int(p.get("ops", 0)), int(p.get("reads", 0)))
    L += ["", "**Bulk changes:** `PUT /classes` sends the whole class set with 1% of the leaves' rates changed; "
          "`POST /import` a LibreQoS `ShapedDevices.csv` of N circuits (one device, one IPv4 address each: a "
          "download and an upload class per circuit), then the same table with 1% of its rows changed. "
          "Wall time, and in brackets the apply header.", ""]
    L += table(["classes", "PUT /classes (1% changed)", "CSV import of N circuits", "CSV re-import (1% changed)"],
               ([f"{r['classes']:,}", *(_bulk_cell(r[k]) for k in BULK_KINDS)] for r in s["rows"]))
    L += ["", f"**A bulk change under load:** {p.get('traffic_classes', '?')} unchanged subscribers are offered "
          f"twice their plan and {p.get('traffic_classes', '?')} others half of it (64-byte frames, counted per "
          "subscriber by the receiver of the Scale section) while 1% of the rows are changed (`PUT /classes`, or "
          "where it is not available one PATCH per row, as many as fit the time budget). *Lost*: datagrams of the under-plan subscribers that "
          "never arrived (target 0). *Released early*: datagrams the backlogged subscribers received beyond plan x "
          f"time (+{EARLY_SLACK} each for timing) in the window holding the change (target 0; a rebuild that reset their token "
          "buckets releases a burst of ~27 datagrams each), next to the same figure in an equal quiet window "
          "before it. The last column is each backlogged subscriber's received minus plan x time over the window "
          "with the change: negative where the change held traffic back.", ""]
    L += table(["classes", "change", "took s", "lost / sent (under plan)", "released early", "same, quiet window",
                "excess per subscriber min … max"],
               ([f"{r['classes']:,}", u["method"] + (f" ({u['failed']} failed)" if u["failed"] else ""),
                 f"{u['apply_wall_s']['median']:.2f}", f"{u['lost']:,} / {u['sent_under']:,}",
                 f"{u['early_change']:g}", f"{u['early_quiet']:g}",
                 f"{u['excess_change_min']:+.1f} … {u['excess_change_max']:+.1f}"]
                for r in s["rows"] if (u := r["under_load"]) is not None))
    return L + [""]


def table_rows(s: dict[str, Any], ops_planned: int, reads_planned: int) -> list[str]:
    """The start / request table."""
    return table(["classes", "start s", "PATCH apply", "PATCH wall", "POST apply", "POST wall", "DELETE apply",
                  "DELETE wall", "GET /stats", "GET /metrics"],
                 ([f"{r['classes']:,}", "n/a" if r["healthz_s"] is None else f"{r['healthz_s']['median']:.2f}",
                   *(_request_cell(r[kind], ops_planned, field) for kind in ("patch", "post", "delete")
                     for field in ("apply_ms", "wall_ms")),
                   *(_request_cell(r[kind], reads_planned) for kind in ("get_stats", "get_metrics"))]
                  for r in s["rows"]))
