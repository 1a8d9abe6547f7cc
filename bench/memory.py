"""``python -m bench.memory`` -- memory per class of a worker and of the API process, without namespaces or root.

Issue 15 asks for at most 2 KB per class in each worker and in the API/supervisor process with 10,000 subscriber
classes (one parent, N /32 leaves: :func:`bench.subscribers.subscriber_config`).  The Scale section of the
benchmark measures RSS of a running ``imqd run``; this script finds *where* the bytes go, quickly and repeatably:
each figure comes from a fresh Python process that builds what that process builds for N classes, the same way:

* ``worker``: the parent builds the supervisor's config message (:func:`imqd.supervisor.config_message`) and
  pickles it; the child, which never saw the configuration, unpickles those bytes as ``Connection.recv`` does,
  a :class:`~imqd.shaper.Shaper` over shared token and counter segments applies it (as ``worker_main`` /
  ``QueueWorker.handle_message``), the message is dropped and the heap trimmed.
* ``api``: the config file is loaded as ``imqd run`` does (:func:`imqd.cli.load_run_store`), a
  :class:`~imqd.supervisor.Supervisor` (workers not started), the :class:`~imqd.controller.Controller` and the
  FastAPI app are built, one counter sample is taken and ``/stats``, ``/metrics``, ``/classes`` and
  ``/classes/NAME`` are asked once (each may keep caches).

Bytes per class = (figure at N - figure at 1) / (N - 1), for the heap Python allocated and still holds after a
garbage collection (tracemalloc: the objects themselves) and for RSS (what the kernel counts: also freed memory
the allocator kept, shared-memory pages touched; measured in a run without tracemalloc).  ``--top K`` lists the
K largest allocation sites at N (grouped by traceback), which is how every per-class copy was found.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROLES = ("worker", "api")


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def make_config_data(n: int) -> dict[str, Any]:
    from bench.subscribers import ABOVE_CAPACITY_BPS, subscriber_config

    return subscriber_config(n, max(1, ABOVE_CAPACITY_BPS // n), ceil_bps=ABOVE_CAPACITY_BPS,
                             parent_bps=ABOVE_CAPACITY_BPS)


class Probe:
    """Heap (tracemalloc, if on) and RSS from a baseline to now."""

    def __init__(self, trace: bool, frames: int) -> None:
        self.trace = trace
        if trace:
            tracemalloc.start(frames)
        gc.collect()
        self.base_snap = tracemalloc.take_snapshot() if trace else None
        self.base_heap = tracemalloc.get_traced_memory()[0] if trace else 0
        self.base_rss = rss_kib()

    def result(self, top: int) -> dict[str, Any]:
        gc.collect()
        out: dict[str, Any] = {"rss_kib": rss_kib() - self.base_rss}
        if self.trace:
            out["heap"] = tracemalloc.get_traced_memory()[0] - self.base_heap
            if top:
                snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
                stats = snap.compare_to(self.base_snap, "traceback")
                stats.sort(key=lambda s: -s.size_diff)
                out["top"] = [{"bytes": s.size_diff, "count": s.count_diff,
                               "where": [f"{f.filename.split('/site-packages/')[-1].split('/memory/')[-1]}:"
                                         f"{f.lineno}" for f in s.traceback][-8:]}
                              for s in stats[:top]]
        return out


def worker_message(n: int) -> bytes:
    """The pickled config message the supervisor sends a worker for ``n`` subscriber classes (the parent's
    part: the child must not build the configuration, which a worker never holds)."""
    from imqd.config import parse_config
    from imqd.qdisc.tokens import LocalTokenStore, SlotMap
    from imqd.shared_tokens import DEFAULT_SLOTS
    from imqd.supervisor import config_message

    config = parse_config(make_config_data(n))
    slots = SlotMap(LocalTokenStore(), DEFAULT_SLOTS).assign(c.name for c in config.classes)
    return pickle.dumps(config_message(1, config, slots, True), protocol=pickle.HIGHEST_PROTOCOL)


def _worker(message: Path, warm: Path, trace: bool, top: int, frames: int) -> dict[str, Any]:
    import multiprocessing

    from imqd.memtrim import trim
    from imqd.qdisc.counters import LocalCounters
    from imqd.shaper import Shaper
    from imqd.shared_counters import SharedCounters
    from imqd.shared_tokens import SharedTokenStore

    lock = multiprocessing.get_context("spawn").Lock()
    store = SharedTokenStore.create(lock)
    counters = SharedCounters.create(1, store.slots)
    try:
        msg = pickle.loads(warm.read_bytes())
        first = Shaper(tokens=SharedTokenStore.attach(store.name, None), counters=LocalCounters())
        first.apply(msg[4], 0.0, msg[3], msg[1])  # lazy imports, code objects: not per class
        del msg, first
        probe = Probe(trace, frames)
        shaper = Shaper(tokens=SharedTokenStore.attach(store.name, None), counters=counters.block(0))
        msg = pickle.loads(message.read_bytes())  # Connection.recv: the bytes, then pickle.loads
        shaper.apply(msg[4], 1.0, msg[3], msg[1])
        del msg
        trim()  # as QueueWorker does after a whole configuration
        out = probe.result(top)
        out["classes"] = sum(len(t.htb) for t in shaper.trees.values() if t is not None)
        shaper.tokens.close()
        return out
    finally:
        counters.close()
        store.close()


def _api(n: int, trace: bool, top: int, frames: int, workdir: Path) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from imqd.api import create_app
    from imqd.cli import load_run_store
    from imqd.config import dump_config, parse_config
    from imqd.controller import Controller
    from imqd.supervisor import Supervisor

    path = workdir / f"imqd-{n}.yaml"
    path.write_text(dump_config(parse_config(make_config_data(n))))
    warm_path = workdir / "warm.yaml"
    warm_path.write_text(dump_config(parse_config(make_config_data(2))))
    warm_cfg, warm_store = load_run_store(warm_path)
    warm_sup = Supervisor([0], warm_cfg)
    warm_ctl = Controller(warm_cfg, None, warm_sup)
    with TestClient(create_app(warm_ctl, token=None, open_reads=True)) as c:  # imports, routes, openapi
        for url in ("/stats", "/metrics", "/classes", "/classes/s0"):
            c.get(url)
    warm_sup.stop()
    del warm_cfg, warm_store, warm_sup, warm_ctl, c
    gc.collect()
    probe = Probe(trace, frames)
    config, store = load_run_store(path)
    sup = Supervisor([0], config)
    controller = Controller(config, path, sup, store=store)
    del config, store
    app = create_app(controller, token=None, open_reads=True)
    sup.sample()
    with TestClient(app) as client:
        for url in ("/stats", "/metrics", "/classes", f"/classes/s{n - 1}"):
            r = client.get(url)
            assert r.status_code == 200, (url, r.status_code, r.text[:200])
        deadline = time.monotonic() + 10
        while controller.store is not None and controller.store.parsed and time.monotonic() < deadline:
            time.sleep(0.1)  # the compactor keeps the parsed file in the journal, then drops it
        out = probe.result(top)
    out["classes"] = len(controller.config.classes)
    controller.close()
    sup.stop()
    return out


def child_main(args: argparse.Namespace) -> None:
    from imqd.memtrim import mmap_large_blocks

    mmap_large_blocks()  # as worker_main and imqd run do
    if args.role == "worker":
        out = _worker(Path(args.message), Path(args.warm), args.trace, args.top, args.frames)
    else:
        with tempfile.TemporaryDirectory(prefix="imqd-memory-") as d:
            out = _api(args.classes, args.trace, args.top, args.frames, Path(d))
    print(json.dumps(out))


def measure(role: str, n: int, trace: bool, top: int = 0, frames: int = 12) -> dict[str, Any]:
    """One figure from a fresh process."""
    argv = [sys.executable, "-m", "bench.memory", "--child", role, "--classes", str(n), "--top", str(top),
            "--frames", str(frames)]
    if trace:
        argv.append("--trace")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory(prefix="imqd-memory-") as d:
        if role == "worker":
            message, warm = Path(d) / "message", Path(d) / "warm"
            message.write_bytes(worker_message(n))
            warm.write_bytes(worker_message(2))
            argv += ["--message", str(message), "--warm", str(warm)]
        res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600,
                             cwd=Path(__file__).resolve().parent.parent)
    if res.returncode != 0:
        raise RuntimeError(f"{role} with {n} classes failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def per_class(role: str, n: int, top: int = 0) -> dict[str, Any]:
    """Bytes per class of `role` at `n` classes: heap (tracemalloc) and RSS, each against 1 class."""
    small_t, big_t = measure(role, 1, True), measure(role, n, True, top)
    small_r, big_r = measure(role, 1, False), measure(role, n, False)
    k = big_t["classes"] - small_t["classes"]
    return {"role": role, "classes": big_t["classes"],
            "heap_per_class": (big_t["heap"] - small_t["heap"]) / k,
            "rss_per_class": (big_r["rss_kib"] - small_r["rss_kib"]) * 1024 / k,
            "heap_mib": big_t["heap"] / 2**20, "rss_mib": big_r["rss_kib"] / 1024, "top": big_t.get("top", [])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=10_000)
    p.add_argument("--roles", default=",".join(ROLES), help="worker,api")
    p.add_argument("--top", type=int, default=0, help="list the K largest allocation sites")
    p.add_argument("--frames", type=int, default=12, help="traceback depth of --top")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.add_argument("--child", choices=ROLES, dest="role", help=argparse.SUPPRESS)
    p.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--message", help=argparse.SUPPRESS)
    p.add_argument("--warm", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        child_main(args)
        return 0
    records = []
    for role in args.roles.split(","):
        rec = per_class(role, args.classes, args.top)
        records.append(rec)
        if args.json:
            continue
        print(f"{role:>6} {rec['classes']:>6} classes: heap {rec['heap_per_class']:7.0f} B/class "
              f"({rec['heap_mib']:.1f} MiB), RSS {rec['rss_per_class']:7.0f} B/class ({rec['rss_mib']:.1f} MiB "
              f"above the baseline)")
        for s in rec["top"]:
            print(f"    {s['bytes'] / rec['classes']:7.1f} B/class {s['count']:>7} blocks  " + " <- ".join(
                reversed(s["where"][-4:])))
    if args.json:
        print(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
