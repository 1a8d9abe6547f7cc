"""One benchmark run: build the topology, measure every system in the same run, write JSON, markdown and PNG.

Order: repetitions are the outer loop and every system is measured once per repetition, so slow drifts in
the machine's load (other users of these 2 cores) spread over all systems instead of biasing one.  A system is
started, measured, and stopped before the next one starts; nothing else shapes or queues meanwhile.

Sections (``report.SECTIONS``, all by default): the core (:func:`run_core`), TCP with GSO super-packets
(:mod:`bench.gso`, its own repetitions), then the Scale section (:mod:`bench.scale`, its own repetitions) and
the control plane at scale (:mod:`bench.control_scale`, once), both with the subscriber prefixes routed to the
server namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import report
from bench.control_scale import FULL_CONTROL_SCALE, QUICK_CONTROL_SCALE, ControlScale, ControlScaleParams
from bench.figures import TCP_PORTS, Bench, Params
from bench.gso import FULL_GSO, QUICK_GSO, Gso, GsoParams
from bench.scale import FULL_SCALE, QUICK_SCALE, Scale, ScaleParams, subscriber_routes
from bench.systems import BareLoop, Imqd, KernelHtb, Plain, fq_codel_leaf, imqd_config
from imqd.config import BURST_TIME_US
from imqd.cpu_latency import CpuLatencyError, CpuLatencyRequest
from imqd.netns import Topology

__all__ = ["run", "machine", "LoadSampler", "api_classes"]

API_CLASSES = 1000


class LoadSampler:
    """Samples the 1-minute load average every `interval` seconds in a thread (the run's noise indicator)."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        self.samples.append((round(time.monotonic() - self._t0, 1), os.getloadavg()[0]))

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return


def machine() -> dict[str, Any]:
    """nproc, CPU model, kernel, Python, tool versions: what the page must say the numbers came from."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        iperf = ""
    try:
        from importlib.metadata import version

        import netfilterqueue  # noqa: F401

        nfq = version("NetfilterQueue")
    except Exception:  # noqa: BLE001
        nfq = "unknown"
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "iperf3": iperf.split("\n")[0].strip(), "netfilterqueue": nfq,
            "hypervisor": _hypervisor()}


def _hypervisor() -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    for line in out.splitlines():
        if line.startswith("Hypervisor vendor:"):
            return line.split(":", 1)[1].strip()
    return None


def api_classes(topo: Topology, n: int = API_CLASSES) -> dict[str, Any]:
    """A config with `n` egress leaves under one root (each matching one UDP port) plus the up/down classes."""
    extra: list[dict[str, Any]] = [{"name": "root", "direction": "egress", "rate": "10gbit",
                                    "match": None}]
    extra += [{"name": f"c{i}", "direction": "egress", "parent": "root", "rate": "1mbit", "ceil": "100mbit",
               "match": {"proto": "udp", "dport": 20000 + i}} for i in range(n)]
    cfg = imqd_config(topo)
    cfg["classes"] = [c for c in cfg["classes"] if c["name"] == "down"] + extra
    return cfg


def run(params: Params, *, command: str, quick: bool, log: Callable[[str], None] = print,
        sections: Sequence[str] = report.SECTIONS, scale: ScaleParams | None = None,
        control_scale: ControlScaleParams | None = None, gso: GsoParams | None = None) -> dict[str, Any]:
    """Measure the chosen sections (report.SECTIONS); returns the raw results (``report.summarize`` turns them
    into figures).  `scale` / `control_scale` / `gso` default to the quick or full variant, as `quick` says."""
    unknown = set(sections) - set(report.SECTIONS)
    if unknown or not sections:
        raise ValueError(f"sections: expected some of {', '.join(report.SECTIONS)}, got {list(sections)}")
    scale = scale or (QUICK_SCALE if quick else FULL_SCALE)
    control_scale = control_scale or (QUICK_CONTROL_SCALE if quick else FULL_CONTROL_SCALE)
    gso = gso or (QUICK_GSO if quick else FULL_GSO)
    raw: dict[str, Any] = {"meta": {"command": command, "quick": quick, "params": params.as_dict(),
                                    "scale_params": scale.as_dict(), "control_scale_params": control_scale.as_dict(),
                                    "gso_params": gso.as_dict(),
                                    "sections_run": [s for s in report.SECTIONS if s in sections],
                                    "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")},
                           "accuracy": [], "ceiling": [], "latency_idle": [], "latency_load": [],
                           "memory": None, "control": [], "profile": None, "sections": {}}
    raw["meta"]["default_burst_us"] = BURST_TIME_US  # the report explains accuracy misses with it
    t_start = time.monotonic()
    prefix = f"bench{os.getpid() % 100000}"
    with LoadSampler() as load, Topology(clients=1, extra_client_addrs=7, prefix=prefix, ipv6=False) as topo:
        b = Bench(topo, params, log)
        raw["meta"]["generator"] = b.generator
        raw["meta"]["topology"] = topo.describe()
        sections_s: dict[str, float] = raw["sections"]

        def timed(name: str, fn: Callable[..., Any], *args: Any) -> Any:
            t = time.monotonic()
            try:
                return fn(*args)
            finally:
                sections_s[name] = round(sections_s.get(name, 0.0) + time.monotonic() - t, 1)

        if report.CORE in sections:
            run_core(raw, b, quick, timed)
        if "gso" in sections:
            run_gso(raw, b, gso, timed)
        if {"scale", "control-scale"} & set(sections):
            with subscriber_routes(topo):
                if "scale" in sections:
                    raw["scale"] = {"pps": [], "backlog": []}
                    for rep in range(scale.reps):
                        log(f"scale: repetition {rep + 1}/{scale.reps}")
                        for key, recs in timed("scale", Scale(b, scale, log).repetition, rep).items():
                            raw["scale"][key] += recs
                if "control-scale" in sections:
                    log("control plane at scale")
                    raw["control_scale"] = timed("control-scale", ControlScale(b, control_scale, log).repetition, 0)
    raw["meta"]["duration_s"] = round(time.monotonic() - t_start, 1)
    raw["meta"]["loadavg"] = load.samples
    return raw


def run_core(raw: dict[str, Any], b: Bench, quick: bool, timed: Callable[..., Any]) -> None:
    """Accuracy, ceiling, latency, cost, control plane and profile: every system once per repetition."""
    topo, params, log = b.topo, b.p, b.log
    leaf = fq_codel_leaf()
    raw["meta"]["fq_codel_leaf"] = leaf
    with topo.iperf3_server(5201), topo.iperf3_server(5202):
        with BareLoop(topo, (0, 1)):
            raw["meta"]["sources"] = {str(q): a for q, a in b.pick_sources().items()}
        log(f"sources by queue: {raw['meta']['sources']}; generator {b.generator}")
        kernel_fq: bool | None = None
        for rep in range(params.reps):
            log(f"repetition {rep + 1}/{params.reps}")
            # Idle latency first, on a fresh process: after a flood a worker's heap and caches are not
            # what a lightly loaded router's are, and `imqd x1 idle-tick 0` is measured fresh too.
            for system in (Plain(topo), BareLoop(topo, (0, 0)), BareLoop(topo, (0, 1))):
                with system:
                    if system.name != "bare-loop x2":
                        raw["latency_idle"] += timed("latency", b.latency_idle, system, rep)
                    raw["ceiling"].append(timed("ceiling", b.ceiling_udp, system, rep))
                    raw["ceiling"].append(timed("ceiling", b.ceiling_tcp, system, rep))
            with held_cpu_latency(log) as held:  # the same, with idle CPUs polling (see report.LOW_LATENCY)
                for system in (Plain(topo), BareLoop(topo, (0, 0))) if held else ():
                    with system:
                        raw["latency_idle"] += timed("latency", b.latency_idle, system, rep,
                                                     system.name + report.LOW_LATENCY)
            with BareLoop(topo, (0, 0), batch=True) as batched:  # reference only: what batching alone gives
                raw["ceiling"].append(timed("ceiling", b.ceiling_udp, batched, rep))
                raw["ceiling"].append(timed("ceiling", b.ceiling_tcp, batched, rep))
            with KernelHtb(topo) as htb:
                raw["accuracy"] += timed("accuracy", b.accuracy, htb, rep)
                raw["latency_load"].append(timed("latency", b.latency_loaded, htb, rep, "kernel HTB + pfifo"))
            if kernel_fq is None:
                kernel_fq = kernel_has_fq_codel(topo)
                raw["meta"]["kernel_fq_codel"] = kernel_fq
            if kernel_fq:
                with KernelHtb(topo, leaf="fq_codel") as htbfq:
                    raw["latency_load"].append(timed("latency", b.latency_loaded, htbfq, rep,
                                                     "kernel HTB + fq_codel"))
            with Imqd(topo, 1) as one:
                raw["latency_idle"] += timed("latency", b.latency_idle, one, rep)
                udp1 = timed("ceiling", b.ceiling_udp, one, rep)
                raw["ceiling"].append(udp1)
                raw["ceiling"].append(timed("ceiling", b.ceiling_tcp, one, rep))
                raw["latency_load"].append(timed("latency", b.latency_loaded, one, rep, "imqd FIFO"))
                if rep == 0:
                    raw["memory"] = timed("memory", b.held_memory, one)
                    if params.profile_seconds:
                        raw["profile"] = timed("profile", b.profile, one, params.profile_seconds,
                                               udp1["pps"] * 1.2)
            with Imqd(topo, 1, extra_args=("--idle-tick", "0")) as untick:  # what the idle tick buys
                raw["latency_idle"] += timed("latency", b.latency_idle, untick, rep,
                                              report.NO_TICK)
            if held:  # the request could be held for the references above: imqd can hold it too
                with Imqd(topo, 1, extra_args=("--cpu-latency", "0")) as polled:
                    raw["latency_idle"] += timed("latency", b.latency_idle, polled, rep,
                                                  "imqd x1" + report.LOW_LATENCY)
            if len(os.sched_getaffinity(0)) > 1 and not quick:  # packets to the local worker: no cross-CPU wake
                with Imqd.per_cpu(topo) as per_cpu:
                    raw["latency_idle"] += timed("latency", b.latency_idle, per_cpu, rep)
            if leaf is not None:
                with Imqd(topo, 1, imqd_config(topo, leaf=leaf)) as fq:
                    raw["latency_load"].append(timed("latency", b.latency_loaded, fq, rep, "imqd fq_codel"))
            with Imqd(topo, 2) as two:
                # the accuracy table says whether imqd had whole GSO packets (its default): the kernel's answer
                raw["meta"]["imqd_gso_status"] = sorted({str(w.get("gso_status")) for w in two.stats()["workers"]})
                raw["ceiling"].append(timed("ceiling", b.ceiling_udp, two, rep))
                raw["ceiling"].append(timed("ceiling", b.ceiling_tcp, two, rep))
                raw["accuracy"] += timed("accuracy", b.accuracy, two, rep)
                raw["control"].append(timed("control", control_small, b, two, rep))
            with Imqd(topo, 2, api_classes(topo)) as big:
                raw["control"].append(timed("control", control_big, b, big, rep))


def run_gso(raw: dict[str, Any], b: Bench, params: GsoParams, timed: Callable[..., Any]) -> None:
    """The TCP/GSO section (:mod:`bench.gso`): its own repetitions, on the core's source addresses if it ran."""
    topo = b.topo
    with topo.iperf3_server(TCP_PORTS[0]), topo.iperf3_server(TCP_PORTS[1]):
        if "sources" not in raw["meta"]:  # x2 systems need one client address per queue
            with BareLoop(topo, (0, 1)):
                raw["meta"]["sources"] = {str(q): a for q, a in b.pick_sources().items()}
        raw["gso"] = {"tcp": [], "latency": [], "ceiling": []}
        for rep in range(params.reps):
            b.log(f"gso: repetition {rep + 1}/{params.reps}")
            for key, recs in timed("gso", Gso(b, params, b.log).repetition, rep).items():
                raw["gso"][key] += recs


@contextlib.contextmanager
def held_cpu_latency(log: Callable[[str], None]) -> Iterator[bool]:
    """Hold what `imqd run --cpu-latency 0` holds, for the references; yields False where the kernel has none."""
    try:
        request = CpuLatencyRequest(0).open()
    except CpuLatencyError as exc:
        log(f"no low-latency reference figures: {exc}")
        yield False
        return
    try:
        yield True
    finally:
        request.close()


def kernel_has_fq_codel(topo: Topology) -> bool:
    """Whether this kernel has sch_fq_codel (many router kernels do not; this machine's may not)."""
    dev = topo.wan_iface
    res = topo.exec(topo.router_ns, ["tc", "qdisc", "replace", "dev", dev, "root", "fq_codel"], check=False)
    topo.clear_tc(topo.router_ns, dev)
    return res.returncode == 0


def _median_ms(apply_s: list[float | None]) -> str:
    """The median apply time of the PATCHes that changed something (a PATCH that set a class to what it
    already had applies nothing and has no X-Imqd-Apply-Seconds: None)."""
    applied = sorted(a for a in apply_s if a is not None)
    if not applied:
        return "n/a (no PATCH changed anything)"
    return f"{applied[len(applied) // 2] * 1000:.1f} ms ({len(applied)} of {len(apply_s)} changed something)"


def control_small(b: Bench, system: Imqd, rep: int) -> dict[str, Any]:
    """Apply time of a rate change with 3 classes, 2 workers."""
    rates = ["9gbit", "10gbit"]
    plan = {"apply": [["/classes/up", {"rate": rates[i % 2]}] for i in range(b.p.apply_count)]}
    res = b.api(system, plan)
    b.log(f"  control  {len(system.config['classes'])} classes: apply median {_median_ms(res['apply_s'])}")
    return {"rep": rep, "classes": len(system.config["classes"]), "workers": system.workers, **res}


def control_big(b: Bench, system: Imqd, rep: int) -> dict[str, Any]:
    """Apply time and requests/s of GET /stats and PATCH /classes/{name} with API_CLASSES classes."""
    # c7 starts at 1mbit (api_classes): alternate 2mbit, 1mbit so that every PATCH changes something
    plan = {"apply": [["/classes/c7", {"rate": f"{2 - i % 2}mbit"}] for i in range(b.p.apply_count)],
            "rps": {"seconds": b.p.api_seconds, "get": "/stats",
                    "patch": ["/classes/c7", [{"rate": "2mbit"}, {"rate": "1mbit"}]]}}
    res = b.api(system, plan)
    n = len(system.config["classes"])
    b.log(f"  control  {n} classes: apply median {_median_ms(res['apply_s'])},"
          f" GET /stats {res['get_rps']:.1f}/s, PATCH {res['patch_rps']:.1f}/s")
    return {"rep": rep, "classes": n, "workers": system.workers, **res}


def write_outputs(raw: dict[str, Any], out_dir: Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    """docs/benchmarks.{json,md,png} (names fixed, so the README can link them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = report.summarize(raw)
    paths = {"json": out_dir / "benchmarks.json", "md": out_dir / "benchmarks.md", "png": out_dir / "benchmarks.png"}
    paths["json"].write_text(json.dumps({"raw": raw, "summary": summary}, indent=1, default=float) + "\n")
    png: str | None = None
    if report.CORE in report.sections_run(raw["meta"]):  # the chart shows the core's accuracy and ceiling
        try:
            from bench.chart import draw

            draw(summary, paths["png"])
            png = paths["png"].name
        except ImportError as e:
            log(f"chart skipped: {e} (pip install matplotlib)")
    if png is None:
        del paths["png"]
    paths["md"].write_text(report.render_markdown(summary, raw["meta"], png=png, json_name=paths["json"].name))
    return paths


if __name__ == "__main__":  # pragma: no cover - use python -m bench
    sys.exit("use: python -m bench [--quick] [--out docs/]")
