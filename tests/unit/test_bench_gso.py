"""The TCP/GSO benchmark section's pure parts: rule-shape configs, flow splitting, window rates from kernel queue
ids and worker counters; its figures paired within repetitions, target verdicts, notes and markdown."""

from __future__ import annotations

from typing import Any

import dataclasses
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import report
from bench.gso import (FULL_GSO, QUICK_GSO, SHAPES, QueueTable, run_counts, shape_config, split_flows,
                       tcp_systems, window_rates)
from bench.report_gso import GSO_TARGETS
from imqd import rules
from imqd.config import parse_config
from imqd.netns import Topology

TOPO = Topology(clients=1, extra_client_addrs=7, prefix="unit", ipv6=False)  # not started: names and addresses


# -- configs, systems, flows ----------------------------------------------------------------------------------------
def test_rule_shapes_give_valid_configs_whose_rules_differ_as_named() -> None:
    wan = rules.for_config(rules.RuleOptions(queues=(0, 1)), parse_config(shape_config(TOPO, "wan", 40 * 10**9)))
    assert wan.in_ifaces == (TOPO.wan_iface,) and wan.out_ifaces == (TOPO.wan_iface,)
    cfg = shape_config(TOPO, "address", 40 * 10**9)
    parsed = parse_config(cfg)
    assert {c.name: (c.direction, c.rate) for c in parsed.classes} == {"up": ("egress", 40 * 10**9),
                                                                          "down": ("ingress", 40 * 10**9)}
    assert [c["match"] for c in cfg["classes"]] == [{"dst": f"{TOPO.server_addr4}/32"},
                                                     {"src": f"{TOPO.server_addr4}/32"}]
    addr = rules.for_config(rules.RuleOptions(queues=(0, 1)), parsed)
    assert addr.ingress and addr.egress  # whatever main makes of address-only classes, both directions queue
    with pytest.raises(ValueError, match="expected one of wan, address, got 'vlan'"):
        shape_config(TOPO, "vlan", 1)


def test_every_system_once_with_a_unique_name_and_imqd_under_every_shape() -> None:
    systems = list(tcp_systems(TOPO, FULL_GSO))
    names = [s.name for _, s in systems]
    assert len(names) == len(set(names)) == 4 + 2 * len(FULL_GSO.shapes) * 2
    imqd = {(f["workers"], f["shape"], f["gso"]) for f, _ in systems if f["kind"] == "imqd"}
    assert imqd == {(w, sh, g) for w in (1, 2) for sh in FULL_GSO.shapes for g in (True, False)}
    no_gso = [s for f, s in systems if f["gso"] is False]
    assert all("--no-gso" in s.name for s in no_gso)
    assert all("--no-gso" in getattr(s, "extra_args", ()) for f, s in systems if f["kind"] == "imqd" and not f["gso"])
    assert [getattr(s, "extra", None) for f, s in systems if f["kind"] == "bare-loop"] == [("--gso",), ()]
    assert set(QUICK_GSO.shapes) <= set(SHAPES) and set(FULL_GSO.shapes) <= set(SHAPES)


@given(st.integers(1, 64), st.lists(st.text(min_size=1), min_size=1, max_size=4, unique=True))
def test_flows_split_evenly_over_the_sources(flows: int, sources: list[str]) -> None:
    parts = split_flows(flows, sources)
    counts = [n for _, n in parts]
    assert sum(counts) == flows and min(counts) >= 1 and max(counts) - min(counts) <= 1
    assert [s for s, _ in parts] == sources[:len(parts)] and len(parts) == min(flows, len(sources))


def test_split_flows_refuses_nothing_to_split() -> None:
    with pytest.raises(ValueError, match="flows"):
        split_flows(0, ["a"])
    with pytest.raises(ValueError, match="source"):
        split_flows(1, [])


class _LocalTopo:
    """Runs a Topology's popen here (the reader's namespace does not matter to it)."""

    router_ns = "here"

    @staticmethod
    def popen(_ns: str, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(argv, **kw)


def test_queue_table_reader_answers_each_read_with_its_time_and_the_table(tmp_path: Path) -> None:
    table = tmp_path / "nfnetlink_queue"
    table.write_text("    0  12345     3     2   128     0     0     1000  1\n    1  12346     0     2   128     4     5"
                     "       77  1\n")
    reader = QueueTable(_LocalTopo(), str(table))  # type: ignore[arg-type]
    try:
        t0 = time.monotonic()
        t, queues = reader.read()
        assert t0 <= t <= time.monotonic()
        assert {q: v["last_id"] for q, v in queues.items()} == {0: 1000, 1: 77} and queues[1]["user_dropped"] == 5
        table.write_text("    0  12345     0     2   128     0     0     1500  1\n")
        assert reader.read()[1][0]["last_id"] == 1500  # read afresh each time
        table.unlink()
        assert reader.read()[1] == {}  # no table (module not loaded): no queue
    finally:
        reader.close()
    assert reader.proc.returncode == 0


# -- window rates -----------------------------------------------------------------------------------------------
def _w(t: float, verdicts: int, restarts: int = 0, gso: int = 0) -> dict[str, Any]:
    return {"time": t, "verdicts": verdicts, "packets": verdicts, "gso_packets": gso, "gso_segments": 10 * gso,
            "gso_bytes": 1000 * gso, "restarts": restarts}


def test_window_rates_from_kernel_ids() -> None:
    r = window_rates({"t": 10.0, "last_id": {0: 2**32 - 100, 1: 50}}, {"t": 12.0, "last_id": {0: 300, 1: 250}})
    assert r == {"window_s": 2.0, "queued": 400 + 200, "queued_per_s": pytest.approx(300.0)}  # queue 0 wrapped
    assert window_rates({"t": 0.0, "last_id": {}}, {"t": 1.0, "last_id": {}}) == {
        "window_s": 1.0, "queued": 0, "queued_per_s": 0.0}


def test_run_counts_sum_the_workers_and_keep_the_kernels_count() -> None:
    before = {"t": 0.0, "last_id": {0: 10, 1: 20}, "workers": {0: _w(5.0, 1000), 1: _w(5.2, 0)}}
    after = {"t": 9.0, "last_id": {0: 410, 1: 120}, "workers": {0: _w(8.0, 1400, gso=3), 1: _w(8.2, 100)}}
    r = run_counts(before, after)
    assert r["run_queued"] == 500 and r["verdicts"] == 500 and r["packets"] == 500
    assert r["gso_packets"] == 3 and r["gso_bytes"] == 3000 and r["reports"] == [before["workers"], after["workers"]]
    assert run_counts({"t": 0.0, "last_id": {0: 1}}, {"t": 1.0, "last_id": {0: 5}}) == {"run_queued": 4}


@pytest.mark.parametrize("late", [_w(5.0, 1000), _w(6.0, 10, restarts=1)], ids=["no new report", "restarted"])
def test_a_worker_without_a_fresh_report_makes_imqds_counts_unknown(late: dict[str, Any]) -> None:
    before = {"t": 0.0, "last_id": {0: 0, 1: 0}, "workers": {0: _w(5.0, 1000), 1: _w(5.0, 0)}}
    after = {"t": 1.0, "last_id": {0: 700, 1: 300}, "workers": {0: late, 1: _w(6.0, 300)}}
    r = run_counts(before, after)
    assert r["run_queued"] == 1000 and r["verdicts"] is None and r["gso_packets"] is None


# -- figures and verdicts ----------------------------------------------------------------------------------------
def _tcp(rep: int, system: str, kind: str, bps: float, *, workers: int | None = None, gso: bool | None = None,
         shape: str | None = None, direction: str = "upload", flows: int = 8, queued: float | None = None,
         stats: float | None = None) -> dict[str, Any]:
    """`queued`: the kernel's packets/s in the window; `stats`: imqd's verdicts over the run / the kernel's."""
    rec: dict[str, Any] = {"rep": rep, "system": system, "kind": kind, "workers": workers, "gso": gso,
                           "shape": shape, "direction": direction, "flows": flows, "bps": bps,
                           "queued_per_s": queued, "run_queued": 1000}
    if kind == "imqd":
        rec.update(verdicts=None if stats is None else round(1000 * stats), packets=100,
                   gso_packets=70 if gso else 0, gso_status=["on" if gso else "off: --no-gso"])
    return rec


def gso_raw() -> dict[str, Any]:
    """Two repetitions, two cases; imqd x1 wan meets 0.5, x1 address and x2 wan miss; latency and UDP."""
    tcp = []
    for rep, plain in ((0, 20e9), (1, 25e9)):
        for direction, flows in (("upload", 8), ("download", 1)):
            case = {"direction": direction, "flows": flows}
            tcp += [_tcp(rep, "plain", "plain", plain, **case),
                    _tcp(rep, "kernel-htb", "kernel-htb", 0.6 * plain, **case),
                    _tcp(rep, "bare-loop x1", "bare-loop", 0.3 * plain, workers=1, gso=True, shape="wan",
                         queued=0.3 * plain / 8 / 40_000, **case),
                    _tcp(rep, "imqd x1 wan", "imqd", 0.6 * plain, workers=1, gso=True, shape="wan",
                         queued=0.6 * plain / 8 / 50_000, stats=1.0, **case),
                    _tcp(rep, "imqd x1 wan --no-gso", "imqd", 0.05 * plain, workers=1, gso=False, shape="wan",
                         queued=0.05 * plain / 8 / 1448, stats=None, **case),
                    _tcp(rep, "imqd x1 address", "imqd", (0.45 if flows == 8 else 0.55) * plain, workers=1, gso=True,
                         shape="address", queued=1e5, stats=0.99, **case),
                    _tcp(rep, "imqd x2 wan", "imqd", (0.8 if flows == 8 else 0.6) * plain, workers=2, gso=True,
                         shape="wan", queued=1e5, stats=1.0, **case)]
    latency = []
    win = {"flows": 4, "cwnd_bytes": 120_000, "cc": ["bbr"]}
    for rep in (0, 1):
        latency.append({"rep": rep, "system": "kernel HTB + pfifo", "rtts_ms": [50.0], "bps": 95e6,
                        "rate_bps": 100_000_000, "round": 0, "windows": win, "warm_up": True})  # not counted
        again = [12.0, 13.0, 14.0] if rep == 0 else [10.0, 11.0, 12.0]  # A/A: 13/11 and 11/11
        latency += [{"rep": rep, "system": "kernel HTB + pfifo", "rtts_ms": [10.0, 11.0, 12.0], "bps": 95e6,
                     "rate_bps": 100_000_000, "round": 0, "windows": win},
                    {"rep": rep, "system": "imqd x1 FIFO", "rtts_ms": [5.0, 5.5, 6.0], "bps": 96e6,
                     "rate_bps": 100_000_000, "round": 0, "windows": {**win, "cwnd_bytes": 60_000}},
                    {"rep": rep, "system": "kernel HTB + pfifo", "rtts_ms": again, "bps": 95e6,
                     "rate_bps": 100_000_000, "round": 1, "windows": win},
                    {"rep": rep, "system": "imqd x1 fq_codel", "rtts_ms": [0.5, 0.6, 0.7], "bps": 95e6,
                     "rate_bps": 100_000_000, "round": 0, "windows": None},
                    {"rep": rep, "system": "kernel HTB + pfifo, tc's default burst", "rtts_ms": [9.0, 10.0],
                     "bps": 95e6, "rate_bps": 100_000_000, "round": 0, "windows": win}]
    ceiling = [{"rep": 0, "system": "imqd x1", "pps": 370_000.0, "gso": True, "stopped": "loss"},
               {"rep": 0, "system": "imqd x1 --no-gso", "pps": 400_000.0, "gso": False, "stopped": "loss"}]
    return {"tcp": tcp, "latency": latency, "ceiling": ceiling}


META = {"command": "python -m bench --sections gso", "params": {}, "sections_run": ["gso"],
        "gso_params": {"class_bps": 40_000_000_000, "tcp_seconds": 2, "omit": 1, "load_seconds": 4.0,
                       "shapes": ["wan", "address"]},
        "sources": {"0": "198.18.10.2", "1": "198.18.10.3"}}


def _summary() -> dict[str, Any]:
    return report.summarize({"meta": META, "gso": gso_raw()})


def test_throughput_ratios_are_paired_per_repetition_and_verdicts_come_from_the_kernel() -> None:
    s = _summary()["gso"]
    assert s["cases"] == ["upload x8", "download x1"]
    rows = {r["system"]: r for r in s["rows"]}
    up = rows["imqd x1 wan"]["cases"]["upload x8"]
    assert up["of_plain"] == {"min": pytest.approx(0.6), "median": pytest.approx(0.6), "max": pytest.approx(0.6), "n": 2}
    assert up["gbps"]["min"] == pytest.approx(12.0) and up["gbps"]["max"] == pytest.approx(15.0)
    assert up["bytes_per_verdict"]["median"] == pytest.approx(50_000)
    assert rows["bare-loop x1"]["cases"]["upload x8"]["bytes_per_verdict"]["median"] == pytest.approx(40_000)
    assert rows["plain"]["cases"]["upload x8"]["verdicts_per_s"] is None  # nothing crosses a queue
    assert rows["imqd x1 wan"]["gso_share"]["median"] == pytest.approx(0.7)
    assert rows["imqd x1 wan"]["stats_over_kernel"]["median"] == pytest.approx(1.0)
    assert rows["imqd x1 wan --no-gso"]["stats_missing"] == 4 and rows["imqd x1 wan --no-gso"]["stats_over_kernel"] is None


def test_targets_judge_imqd_with_gso_in_every_case() -> None:
    targets = {t["figure"]: t for t in _summary()["targets"]}
    x1 = targets["TCP imqd x1 wan / plain forwarding (GSO, every case: least shown)"]
    assert x1["met"] and x1["value"] == pytest.approx(0.6) and x1["target"] == f">= {GSO_TARGETS['x1']:.2f}"
    addr = targets["TCP imqd x1 address / plain forwarding (GSO, every case: least shown)"]
    assert not addr["met"] and addr["misses"] == ["upload x8: 0.450"]
    x2 = targets["TCP imqd x2 wan / plain forwarding (GSO, every case: least shown)"]
    assert not x2["met"] and x2["value"] == pytest.approx(0.6) and x2["misses"] == ["download x1: 0.600"]
    assert not any("--no-gso /" in f or "bare-loop" in f or "kernel" in f.split(" / ")[0] for f in targets)
    lat = targets["median RTT under a saturating TCP load in a 100 Mbit/s class, imqd x1 FIFO (GSO) / kernel HTB + "
                  "pfifo, the same 1000-packet queue"]
    # each repetition: imqd over the mean of the kernel runs around it (12 and 11 ms)
    assert lat["met"] and lat["value"] == pytest.approx((5.5 / 12 + 5.5 / 11) / 2)
    assert lat["target"] == "<= 1.00"
    fq = targets["median RTT under a saturating TCP load in a 100 Mbit/s class, imqd x1 fq_codel (GSO) / kernel HTB "
                 "+ pfifo (this kernel has no fq_codel)"]
    assert fq["met"] and fq["value"] == pytest.approx((0.6 / 12 + 0.6 / 11) / 2) and fq["target"] == "<= 1.00"
    udp = targets["64-byte UDP peak packets/s, imqd x1 with GSO / --no-gso"]
    assert not udp["met"] and udp["value"] == pytest.approx(0.925)
    assert not any(f == "accuracy" for f in targets), "the core was not run"


def test_notes_name_what_limits_each_missed_throughput_target() -> None:
    notes = report.limits(_summary(), {**META, "machine": {"nproc": 2}})
    addr = next(n for n in notes if n.startswith("imqd x1 address"))
    assert "upload x8 carries" in addr and "bare accept loop with GSO 0.300" in addr
    assert "the verdicts per goodput byte of the wan rules" in addr
    x2 = next(n for n in notes if n.startswith("imqd x2 wan"))
    assert "one flow hashes to one queue" in x2


def test_markdown_of_the_gso_section() -> None:
    md = report.render_markdown(_summary(), META, png=None)
    assert "## TCP with whole GSO super-packets" in md and "## Accuracy" not in md
    assert "every class at 40 Gbit/s" in md and "198.18.10.2, 198.18.10.3" in md
    assert "| imqd x1 wan | 13.50 (12.00–15.00) | 13.50 (12.00–15.00) |" in md
    assert "| imqd x1 address | >= 0.5 | 0.450 **miss** | 0.550 pass |" in md
    assert "| imqd x1 wan | 0.70 (0.70–0.70) | 1.000 (1.000–1.000) | 0 |" in md
    assert "| imqd x1 FIFO | 5.5 (5.5–5.5) | 6.0 (6.0–6.0) | 96.0 (96.0–96.0) | 60 (60–60) | 0.479 (0.458–0.500) |" in md
    assert "| kernel HTB + pfifo | 11.0 (11.0–13.0) |" in md and "| 1.091 (1.000–1.182) (A/A: second run / first) |" in md
    assert "four TCP uploads (bbr) saturate a 100 Mbit/s upload class" in md
    assert "*kernel HTB + pfifo* has imqd's class: its default burst and cburst" in md
    assert "Each repetition starts with one load through kernel HTB that is not counted" in md
    assert "| kernel HTB + pfifo, tc's default burst | 9.5 (9.5–9.5) |" in md
    assert "imqd x1 GSO / --no-gso (each side's mean within each repetition): 0.925." in md
    assert "| TCP imqd x1 wan / plain forwarding (GSO, every case: least shown) | >= 0.50 | 0.600 | met |" in md


def test_accuracy_text_says_whether_imqd_had_gso() -> None:
    raw = {"meta": {"command": "x", "params": {}, "imqd_gso_status": ["on"]}}
    md = report.render_markdown(report.summarize(raw), raw["meta"], png=None)
    assert "imqd ran with its defaults, GSO on (its workers' `gso_status`: `on`)" in md
    raw["meta"]["imqd_gso_status"] = ["off: the kernel refused NFQA_CFG_F_GSO (EOPNOTSUPP: x)"]
    md = report.render_markdown(report.summarize(raw), raw["meta"], png=None)
    assert "GSO not on" in md and "MTU-sized packets" in md


def _lat_target(latency: list[dict[str, Any]]) -> dict[str, Any]:
    raw = gso_raw()
    raw["latency"] = latency
    s = report.summarize({"meta": META, "gso": raw})
    return next(t for t in s["targets"] if "imqd x1 FIFO (GSO)" in t["figure"])


def _load(rep: int, system: str, rtt: float, rnd: int = 0) -> dict[str, Any]:
    return {"rep": rep, "system": system, "rtts_ms": [rtt], "bps": 95e6, "rate_bps": 100_000_000, "round": rnd}


def test_latency_target_is_strict_and_the_notes_set_a_miss_against_the_references_own_spread() -> None:
    # kernel 10 then 10.4 (A/A 1.04); imqd 10.3 over a mean of 10.2: 1.0098, a miss inside the kernel's noise
    lat = [_load(0, "kernel HTB + pfifo", 10.0), _load(0, "imqd x1 FIFO", 10.3), _load(0, "kernel HTB + pfifo", 10.4, 1)]
    t = _lat_target(lat)
    assert not t["met"] and t["value"] == pytest.approx(10.3 / 10.2) and t["target"] == "<= 1.00"
    raw = gso_raw()
    raw["latency"] = lat
    notes = report.limits(report.summarize({"meta": META, "gso": raw}), {**META, "machine": {"nproc": 2}})
    note = next(n for n in notes if n.startswith("Latency under load"))
    assert "land 1.040x apart (spread 0.040: the difference is inside the reference's own run-to-run noise)" in note
    # the same imqd against a reference that repeats itself exactly: outside the noise
    lat[2] = _load(0, "kernel HTB + pfifo", 10.0, 1)
    raw["latency"] = lat
    notes = report.limits(report.summarize({"meta": META, "gso": raw}), {**META, "machine": {"nproc": 2}})
    assert "larger than the reference's own run-to-run noise" in next(n for n in notes if n.startswith("Latency"))


def test_latency_records_of_older_runs_have_no_ab_figure() -> None:
    """Published runs before the A/A run: one kernel record per repetition, no ``round``: target as it was."""
    old = [{"rep": 0, "system": "kernel HTB + pfifo", "rtts_ms": [9.7], "bps": 95e6, "rate_bps": 100_000_000},
           {"rep": 0, "system": "imqd x1 FIFO", "rtts_ms": [10.5], "bps": 95e6, "rate_bps": 100_000_000}]
    t = _lat_target(old)
    assert not t["met"] and t["value"] == pytest.approx(10.5 / 9.7) and t["target"] == "<= 1.00"


def test_udp_ceiling_ratio_takes_each_sides_mean_of_its_abba_searches() -> None:
    raw = gso_raw()
    raw["ceiling"] = [{"rep": 0, "system": "imqd x1", "pps": 235_000.0, "gso": True, "stopped": "loss", "round": 0},
                      {"rep": 0, "system": "imqd x1 --no-gso", "pps": 245_000.0, "gso": False, "stopped": "loss",
                       "round": 0},
                      {"rep": 0, "system": "imqd x1 --no-gso", "pps": 222_000.0, "gso": False, "stopped": "loss",
                       "round": 1},
                      {"rep": 0, "system": "imqd x1", "pps": 243_000.0, "gso": True, "stopped": "loss", "round": 1}]
    s = report.summarize({"meta": META, "gso": raw})
    assert s["gso"]["ceiling"]["gso_over_no_gso"]["median"] == pytest.approx(239_000 / 233_500)
    udp = next(t for t in s["targets"] if t["figure"].startswith("64-byte UDP"))
    assert udp["met"]


def test_each_imqd_load_meets_the_kernel_loads_around_it() -> None:
    """K I K I K in one repetition: imqd's rounds 0 and 1 sit between kernel rounds 0-1 and 1-2."""
    lat = [_load(0, "kernel HTB + pfifo", 10.0), _load(0, "imqd x1 FIFO", 10.5), _load(0, "kernel HTB + pfifo", 11.0, 1),
           _load(0, "imqd x1 FIFO", 10.0, 1), _load(0, "kernel HTB + pfifo", 9.0, 2)]
    raw = gso_raw()
    raw["latency"] = lat
    s = report.summarize({"meta": META, "gso": raw})
    per = s["gso"]["latency"]["per_load"]["imqd x1 FIFO"]
    assert per["n"] == 2 and per["mean"] == pytest.approx((10.5 / 10.5 + 10.0 / 10.0) / 2)
    t = next(t for t in s["targets"] if "imqd x1 FIFO (GSO)" in t["figure"])
    assert t["value"] == pytest.approx(10.25 / 10.0)  # the repetition's means: (10.5 + 10) / 2 over 30 / 3
    md = report.render_markdown(s, {**META, "gso_params": {**META["gso_params"], "load_rounds": 2}}, png=None)
    assert "in turn, 2 loads of each imqd between two kernel loads" in md and "--realtime 10" not in md
    assert ("Each imqd load over the mean of the two kernel HTB loads around it: *imqd x1 FIFO*: mean 1.000, "
            "sd 0.000 over 2 loads") in md
    note = next(n for n in report.limits(s, {**META, "machine": {"nproc": 2}}) if n.startswith("Latency under load"))
    assert "each imqd load over the kernel loads around it: 1.000 on average over 2 loads" in note
    assert "1.00 inside it" in note


def test_full_run_alternates_enough_loads_to_see_a_few_per_cent() -> None:
    assert FULL_GSO.load_rounds >= 5 and QUICK_GSO.load_rounds == 1


class _FakeSystem:
    def __init__(self, topo: Any, *args: Any, **kw: Any) -> None:
        self.name = kw.get("name", "kernel")

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class _FakeBench:
    topo = object()

    def __init__(self) -> None:
        self.labels: list[str] = []

    def latency_loaded(self, system: Any, rep: int, label: str, **kw: Any) -> dict[str, Any]:
        self.labels.append(label)
        return {"rep": rep, "system": label, "rtts_ms": [10.0]}


def test_latency_alternates_the_reference_around_every_imqd_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warm-up, then K I R K I R K I R K, then the other variants; rounds number each label's loads."""
    import bench.gso as gso_mod
    monkeypatch.setattr(gso_mod, "KernelHtb", _FakeSystem)
    monkeypatch.setattr(gso_mod, "Imqd", _FakeSystem)
    monkeypatch.setattr(gso_mod, "fq_codel_leaf", lambda: {"qdisc": {"kind": "fq_codel"}})
    monkeypatch.setattr(gso_mod, "imqd_config", lambda topo, **kw: {})
    fake = _FakeBench()
    recs = gso_mod.Gso(fake, dataclasses.replace(FULL_GSO, load_rounds=3), log=lambda m: None).latency(0)  # type: ignore[arg-type]
    K, I, R = "kernel HTB + pfifo", "imqd x1 FIFO", "imqd x1 FIFO --realtime 10"
    assert fake.labels == [K, K, I, R, K, I, R, K, I, R, K, "imqd x1 --no-gso FIFO", "imqd x1 fq_codel",
                           "kernel HTB + pfifo, tc's default burst"]
    assert recs[0]["warm_up"] and not any(r.get("warm_up") for r in recs[1:])
    assert [r["round"] for r in recs[1:] if r["system"] == K] == [0, 1, 2, 3]
    assert [r["round"] for r in recs[1:] if r["system"] == I] == [0, 1, 2]
    assert [r["round"] for r in recs[1:] if r["system"] == R] == [0, 1, 2]


def test_real_time_workers_get_their_own_row_target_and_interval() -> None:
    """K I R K I R K: the --realtime loads meet the same kernel loads around them as the plain ones."""
    I, R, K = "imqd x1 FIFO", "imqd x1 FIFO --realtime 10", "kernel HTB + pfifo"
    lat = [_load(0, K, 10.0), _load(0, I, 10.6), _load(0, R, 9.9), _load(0, K, 10.0, 1),
           _load(0, I, 10.4, 1), _load(0, R, 9.7, 1), _load(0, K, 10.0, 2)]
    raw = gso_raw()
    raw["latency"] = lat
    s = report.summarize({"meta": META, "gso": raw})
    per = s["gso"]["latency"]["per_load"]
    assert per[I]["mean"] == pytest.approx(1.05) and per[R]["mean"] == pytest.approx(0.98)
    targets = {t["figure"]: t for t in s["targets"]}
    rt = targets["median RTT under a saturating TCP load in a 100 Mbit/s class, imqd x1 FIFO (GSO) with real-time "
                 "workers (--realtime 10) / kernel HTB + pfifo"]
    assert rt["met"] and rt["value"] == pytest.approx(0.98)
    assert not next(t for t in s["targets"] if "imqd x1 FIFO (GSO) / kernel" in t["figure"])["met"]
    md = report.render_markdown(s, {**META, "gso_params": {**META["gso_params"], "load_rounds": 2}}, png=None)
    assert "(with normal and with real-time workers, `--realtime 10`) in turn" in md
    assert "*imqd x1 FIFO --realtime 10*: mean 0.980" in md
    note = next(n for n in report.limits(s, {**META, "machine": {"nproc": 2}}) if n.startswith("Latency under load"))
    assert "with real-time workers (--realtime 10: held packets leave on time, steadier gaps between departures) " \
           "0.980x" in note
