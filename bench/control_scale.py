"""Control plane at scale (issue 17): the API with N = 100, 1,000, 10,000 subscriber classes.

Per class count, one imqd (``backlog_workers`` workers) started with N leaves (:func:`subscriber_config`) plus
two parents for an imported table (``site-down`` ingress, ``site-up`` egress); records only
(:mod:`bench.report_control_scale` makes the figures):

* start time: launch -> ``GET /healthz`` 200 (:mod:`bench.startup`);
* ``ops`` PATCHes (the last class's rate, toggled), POSTs of new leaves and DELETEs of them: the
  ``X-Imqd-Apply-Seconds`` header and the client's wall time of each;
* ``reads`` requests each of ``GET /stats`` and ``GET /metrics``: wall time and size;
* (of each kind no more requests once ``kind_budget_s`` went to it: at 4 s a PATCH -- today's imqd with 10,000
  classes -- 50 of them would take minutes; the records say how many were made)
* ``PUT /classes`` with the whole set, 1% of the leaves' rates changed; a LibreQoS ``ShapedDevices.csv`` of N
  circuits to ``POST /import``, then the same table with 1% of its rows changed;
* **under load**: while 2 x ``traffic_classes`` unchanged subscribers carry traffic (half offered twice their
  plan, half half of it), 1% of the rows are changed back (``PUT /classes``; where it is not available, one
  PATCH per row as an operator would today, within ``kind_budget_s``).  At the receiver: packets of the under-plan subscribers lost
  (target 0), and for the backlogged ones how many datagrams more than plan x time arrived in the window
  holding the change -- a change that reset their token state would release a burst -- next to the same
  figure for an equal quiet window before it (the measurement's own noise).

An endpoint this imqd does not have (404/405, or a body limit that refuses the request: 413) is recorded with
its status, so the same benchmark runs before and after the bulk endpoints exist.  One keep-alive HTTP client
(Python ``http.client``) runs inside the router namespace, reading its request list from stdin.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench import udpgen
from bench.figures import Bench
from bench.report_control_scale import early
from bench.scale import SMALL_PAYLOAD, SUB_PORT
from bench.startup import start_timed
from bench.subscribers import (ABOVE_CAPACITY_BPS, EXTRA, PARENT, address, charged_bytes, leaf_name,
                               shaped_devices_csv, spread, subscriber_config)
from bench.systems import Imqd
from bench.udprecv import Receiver, Snapshot, snapshot_data
from imqd.lab import API_ADDR

__all__ = ["ControlScaleParams", "FULL_CONTROL_SCALE", "QUICK_CONTROL_SCALE", "ControlScale", "control_config",
           "import_parents", "window_excess"]
NODE = "site"  # the Parent Node of the imported table
IMPORT_FIRST = 2048  # imported circuits' addresses start at EXTRA[IMPORT_FIRST]; POSTed leaves below it
CSV_DOWN_MBPS = 0.5  # 10,000 circuits (1% of them at twice the plan) stay within the 10gbit import parents


@dataclass(frozen=True, kw_only=True)
class ControlScaleParams:
    """How much of the control-plane-at-scale section to measure."""

    classes: tuple[int, ...]
    workers: int
    ops: int  # PATCHes, POSTs and DELETEs each (even: the PATCHes toggle a rate and leave it as it was)
    reads: int  # GET /stats and GET /metrics each
    kind_budget_s: float  # ... but no more of one kind once this many seconds went to it (slow imqds)
    plan_bps: int  # every subscriber's plan
    traffic_classes: int  # subscribers offered twice their plan under load (as many more offered half)
    warm_s: float
    quiet_s: float
    start_timeout_s: float

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# 24 kbit/s = 50 datagrams/s of 64-byte frames (60 bytes charged): a default burst (one MTU + 10 ms) is ~27 of
# them, so a reset token bucket shows as ~27 extra datagrams in one subscriber's count
FULL_CONTROL_SCALE = ControlScaleParams(classes=(100, 1000, 10000), workers=2, ops=50, reads=20,
                                        kind_budget_s=60.0, plan_bps=24_000, traffic_classes=20, warm_s=1.5,
                                        quiet_s=2.0, start_timeout_s=300.0)
QUICK_CONTROL_SCALE = ControlScaleParams(classes=(100, 1000), workers=2, ops=10, reads=5, kind_budget_s=5.0,
                                         plan_bps=24_000, traffic_classes=10, warm_s=1.0, quiet_s=1.0,
                                         start_timeout_s=120.0)

_CLIENT = r"""
import http.client, json, sys, time
host, port = sys.argv[1].rsplit(":", 1)
plan = json.load(sys.stdin)
deadline = time.monotonic() + plan["budget_s"] if plan.get("budget_s") else None
def connect():
    return http.client.HTTPConnection(host, int(port), timeout=600)
conn = connect()
out = []
for op in plan["ops"]:
    if deadline is not None and out and time.monotonic() > deadline:
        break  # the kind's time budget is spent: the figures are over the requests made
    headers, body = {}, None
    if "json" in op:
        body = json.dumps(op["json"]).encode(); headers["Content-Type"] = "application/json"
    elif "text" in op:
        body = op["text"].encode(); headers["Content-Type"] = op["type"]
    t = time.perf_counter()
    try:
        try:
            conn.request(op["method"], op["path"], body=body, headers=headers)
        except OSError:  # refused while sending a large body (e.g. 413 and close): its answer may still be there
            pass
        r = conn.getresponse(); payload = r.read()
    except (OSError, http.client.HTTPException) as e:
        out.append({"status": 0, "wall_s": time.perf_counter() - t, "apply_s": None, "bytes": 0,
                    "body": f"{type(e).__name__}: {e}"})
        conn.close(); conn = connect()
        continue
    wall = time.perf_counter() - t
    h = r.getheader("X-Imqd-Apply-Seconds")
    rec = {"status": r.status, "wall_s": wall, "apply_s": float(h) if h else None, "bytes": len(payload)}
    if r.status >= 300 or op.get("keep"):
        rec["body"] = payload[:2000].decode(errors="replace")
    out.append(rec)
    if r.will_close:
        conn.close(); conn = connect()
print(json.dumps(out))
"""


def import_parents() -> list[dict[str, Any]]:
    """The classes a table with Parent Node ``site`` hangs its circuits under (download ingress, upload egress)."""
    return [{"name": f"{NODE}-down", "direction": "ingress", "rate": ABOVE_CAPACITY_BPS},
            {"name": f"{NODE}-up", "direction": "egress", "rate": ABOVE_CAPACITY_BPS}]


def control_config(n: int, plan_bps: int, changed: frozenset[int] = frozenset()) -> dict[str, Any]:
    """N leaves at `plan_bps` (the rows in `changed` at twice it) under a 10gbit parent, plus the import parents:
    what imqd starts with, and the whole-set body of ``PUT /classes``."""
    cfg = subscriber_config(n, plan_bps, parent_bps=ABOVE_CAPACITY_BPS, extra=import_parents())
    for i in changed:
        cfg["classes"][1 + i]["rate"] = 2 * plan_bps  # classes[0] is the parent, leaf i follows at 1 + i
    return cfg


def window_excess(a: Snapshot, b: Snapshot, indices: range, plan_pps: float) -> list[float]:
    """Per subscriber in `indices`: datagrams received between snapshots `a` and `b` minus plan x time."""
    expected = plan_pps * (b.t - a.t)
    return [b.counts[i] - a.counts[i] - expected for i in indices]


class ControlScale:
    """The section's measurements on one topology (subscriber routes in place: :func:`bench.scale.subscriber_routes`)."""

    def __init__(self, bench: Bench, params: ControlScaleParams, log: Callable[[str], None] = print) -> None:
        if params.ops % 2:
            raise ValueError(f"ops: expected an even count (PATCHes toggle a rate), got {params.ops}")
        self.b = bench
        self.topo = bench.topo
        self.p = params
        self.log = log

    def requests(self, ops: list[dict[str, Any]], budget_s: float | None = None) -> list[dict[str, Any]]:
        """Run `ops` in order over one keep-alive connection from inside the router namespace; with `budget_s`,
        no further request starts once that many seconds have passed (at least one is made)."""
        res = self.topo.exec(self.topo.router_ns, [sys.executable, "-c", _CLIENT, API_ADDR],
                             input=json.dumps({"ops": ops, "budget_s": budget_s}), timeout=3600)
        return json.loads(res.stdout.strip().splitlines()[-1])

    def at(self, n: int, rep: int) -> dict[str, Any]:
        """Every figure with n subscriber classes."""
        p = self.p
        rows = spread(n)
        if rows[0] < 2 * p.traffic_classes:
            raise ValueError(f"{n} classes: the changed rows start at {rows[0]}, inside the "
                             f"{2 * p.traffic_classes} subscribers that carry traffic")
        changed = frozenset(rows)
        system = Imqd(self.topo, p.workers, control_config(n, p.plan_bps), name=f"imqd x{p.workers}",
                      start_timeout=p.start_timeout_s)
        try:
            rec: dict[str, Any] = {"rep": rep, "classes": n, "workers": p.workers, "changed_rows": len(rows),
                                   **start_timed(system, p.start_timeout_s)}
            last = f"/classes/{leaf_name(n - 1)}"
            budget = p.kind_budget_s
            rec["patch"] = self.requests([{"method": "PATCH", "path": last,
                                           "json": {"rate": p.plan_bps * (2 if j % 2 == 0 else 1)}}
                                          for j in range(p.ops)], budget)
            if len(rec["patch"]) % 2:  # the budget ended on a toggle: the class's rate back to the plan
                self.requests([{"method": "PATCH", "path": last, "json": {"rate": p.plan_bps}}])
            rec["post"] = self.requests([{"method": "POST", "path": "/classes", "json": {
                "name": f"p{j}", "direction": "egress", "parent": PARENT, "rate": p.plan_bps,
                "match": {"dst": f"{address(j, EXTRA)}/32"}}} for j in range(p.ops)], budget)
            rec["delete"] = self.requests([{"method": "DELETE", "path": f"/classes/p{j}"}
                                           for j, a in enumerate(rec["post"]) if a["status"] == 201])
            rec["get_stats"] = self.requests([{"method": "GET", "path": "/stats"}] * p.reads, budget)
            rec["get_metrics"] = self.requests([{"method": "GET", "path": "/metrics"}] * p.reads, budget)
            (rec["put"],) = self.requests([{"method": "PUT", "path": "/classes", "keep": True,
                                            "json": control_config(n, p.plan_bps, changed)}])
            rec["under_load"] = self.under_load(n, rows, put_works=rec["put"]["status"] == 200)
            csv_ops = [{"method": "POST", "path": "/import", "keep": True, "type": "text/csv",
                        "text": shaped_devices_csv(n, first=IMPORT_FIRST, node=NODE, down_mbps=CSV_DOWN_MBPS,
                                                   up_mbps=CSV_DOWN_MBPS / 2, changed=moved)}
                       for moved in ((), rows)]
            rec["import"], rec["reimport"] = self.requests(csv_ops)
        finally:
            system.stop()
        self.log(f"  control  {n:>6} classes: start {rec['healthz_s']:.2f} s; "
                 + "; ".join(f"{k} {_summary(rec[k])}" for k in ("patch", "post", "delete", "get_stats",
                                                                   "get_metrics"))
                 + f"; PUT {_one(rec['put'])}; import {_one(rec['import'])}, re-import {_one(rec['reimport'])}; "
                 f"under load ({rec['under_load']['method']}): lost {rec['under_load']['lost']}, early "
                 f"{early(rec['under_load']['excess_change'])} (quiet {early(rec['under_load']['excess_quiet'])})")
        return rec

    def under_load(self, n: int, rows: list[int], *, put_works: bool) -> dict[str, Any]:
        """Change `rows` (back to the plan by PUT, else to twice it by PATCHes) while traffic flows through
        unchanged subscribers; count at the receiver."""
        p = self.p
        m = p.traffic_classes
        plan_pps = p.plan_bps / 8 / charged_bytes(SMALL_PAYLOAD)
        over, under = range(0, m), range(m, 2 * m)
        if put_works:
            method = "PUT /classes"
            ops = [{"method": "PUT", "path": "/classes", "keep": True,
                    "json": control_config(n, p.plan_bps)}]
        else:  # the rows are still at the plan (the first PUT did not change them): PATCH them to twice it
            ops = [{"method": "PATCH", "path": f"/classes/{leaf_name(i)}", "json": {"rate": 2 * p.plan_bps}}
                   for i in rows]
        popen_server = lambda a, **kw: self.topo.popen(self.topo.server_ns, a, **kw)  # noqa: E731
        with Receiver(popen_server, SUB_PORT, address(0), 2 * m) as rx:
            gens = [self.generator(address(r.start), len(r), share * plan_pps * len(r))
                    for r, share in ((over, 2.0), (under, 0.5))]
            try:
                time.sleep(p.warm_s)
                s0 = rx.snap()
                time.sleep(p.quiet_s)
                s1 = rx.snap()
                time.sleep(0.5)
                t0 = time.monotonic()
                answers = self.requests(ops, None if put_works else p.kind_budget_s)
                t1 = time.monotonic()
                time.sleep(0.5)
                s2 = rx.snap()
            finally:
                for g in gens:
                    if g.poll() is None:
                        g.send_signal(signal.SIGTERM)
                sent = [Bench.finish([g]) for g in gens]
            time.sleep(0.5)  # the last under-plan datagrams cross the router (they are never held)
            s3 = rx.snap()
        under_sent = [udpgen.sent_to(i - under.start, sent[1]["sent"], len(under)) for i in under]
        lost = [want - s3.counts[i] for want, i in zip(under_sent, under)]
        quiet = window_excess(s0, s1, over, plan_pps)
        change = window_excess(s1, s2, over, plan_pps)
        if not put_works:
            method = f"PATCH x {len(answers)}" + (f" of {len(rows)}" if len(answers) < len(rows) else "")
        return {"method": method, "changed": len(rows), "requests": answers, "apply_wall_s": t1 - t0,
                "plan_pps": plan_pps, "over": [over.start, over.stop], "under": [under.start, under.stop],
                "quiet_s": s1.t - s0.t, "change_s": s2.t - s1.t, "excess_quiet": quiet, "excess_change": change,
                "sent_under": sum(under_sent), "lost_each": lost, "lost": sum(lost),
                "snaps": [snapshot_data(s) for s in (s0, s1, s2, s3)]}

    def generator(self, first: str, count: int, pps: float) -> subprocess.Popen[str]:
        """A generator to `count` subscribers from `first` until SIGTERM (one source: one NFQUEUE hash each)."""
        _, argv = udpgen.generator_argv(first, SUB_PORT, SMALL_PAYLOAD, 3600, pps=pps, sources=self.b.sources[:1],
                                        destinations=count)
        return self.topo.popen(self.topo.clients[0].ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)

    def repetition(self, rep: int) -> list[dict[str, Any]]:
        return [self.at(n, rep) for n in self.p.classes]


def _summary(ops: list[dict[str, Any]]) -> str:
    ok = sorted(o["wall_s"] * 1000 for o in ops if 200 <= o["status"] < 300)
    if not ok:
        return f"HTTP {ops[0]['status'] if ops else '-'}"
    return f"{ok[len(ok) // 2]:.1f}/{ok[-1]:.1f} ms"


def _one(op: dict[str, Any]) -> str:
    return f"{op['wall_s']:.2f} s" if 200 <= op["status"] < 300 else f"HTTP {op['status']}"
