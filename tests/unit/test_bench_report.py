"""The benchmark's pure parts: statistics, paired ratios, target verdicts, parsers and the markdown page."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import report, udpgen
from bench.report import NO_TICK, median, paired, percentile, summarize, three, top_frames
from imqd.kernel_queues import parse_nfqueue_table

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


# -- statistics ----------------------------------------------------------------------------------------------
@given(st.lists(finite, min_size=1, max_size=50))
def test_three_orders_min_median_max(values: list[float]) -> None:
    t = three(values)
    assert t is not None
    assert t["min"] == min(values) and t["max"] == max(values) and t["n"] == len(values)
    assert t["min"] <= t["median"] <= t["max"]
    below = sum(v <= t["median"] for v in values)
    assert below >= len(values) / 2  # at least half the values are at or below the median


def test_three_drops_missing_and_non_finite_values() -> None:
    assert three([None, math.nan, math.inf]) is None
    assert three([]) is None
    assert three([3.0, None, 1.0, math.nan, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3}


def test_median_even_and_odd() -> None:
    assert median([5, 1, 3]) == 3
    assert median([4, 1, 3, 2]) == 2.5
    assert math.isnan(median([]))


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 90) == 90
    assert percentile(values, 100) == 100
    assert percentile([7.0], 50) == 7.0
    with pytest.raises(ValueError, match="q"):
        percentile(values, 101)


def test_paired_uses_only_repetitions_on_both_sides() -> None:
    num = {0: 2.0, 1: 3.0, 2: 9.0}
    den = {0: 1.0, 1: 0.0, 3: 5.0}
    assert paired(num, den) == [2.0]  # rep 1 has a zero denominator, reps 2/3 are unpaired
    assert paired(num, den, "-") == [1.0, 3.0]
    with pytest.raises(ValueError, match="op"):
        paired(num, den, "*")


@given(st.dictionaries(st.integers(0, 5), st.floats(0.1, 1e6)), st.dictionaries(st.integers(0, 5),
                                                                                  st.floats(0.1, 1e6)))
def test_paired_ratio_matches_each_repetition(num: dict[int, float], den: dict[int, float]) -> None:
    ratios = paired(num, den)
    common = sorted(set(num) & set(den))
    assert ratios == [num[r] / den[r] for r in common]


def test_top_frames_counts_own_by_line_and_function_and_total_by_function() -> None:
    collapsed = "\n".join([
        "run (w.py:1);drain (w.py:2);_on_packet (w.py:3) 6",
        "run (w.py:1);drain (w.py:2);_on_packet (w.py:4) 2",
        "run (w.py:1);drain (w.py:2);accept (nfq) 3",
        "run (w.py:1);release (w.py:9) 1",
        "garbage line without count",
    ])
    out = top_frames(collapsed, n=2)
    assert out["samples"] == 12
    assert out["own"] == [("_on_packet (w.py:3)", 6), ("accept (nfq)", 3)]
    assert out["own_by_function"] == [("_on_packet (w.py)", 8), ("accept (nfq)", 3)]
    assert out["total"] == [("run (w.py)", 12), ("drain (w.py)", 11)]


def test_top_frames_counts_a_recursive_function_once_per_sample() -> None:
    out = top_frames("f (a.py:1);f (a.py:2);g (a.py:5) 4")
    assert dict(out["total"]) == {"f (a.py)": 4, "g (a.py)": 4}


# -- parsers ---------------------------------------------------------------------------------------------------
def test_parse_counter_finds_the_drop_rule_of_the_port() -> None:
    listing = """Chain PREROUTING (policy ACCEPT 12 packets, 900 bytes)
    pkts      bytes target     prot opt in     out     source               destination
     412    18952 DROP       17   --  *      *       0.0.0.0/0            0.0.0.0/0            udp dpt:19
  123456  5679000 DROP       17   --  *      *       0.0.0.0/0            0.0.0.0/0            udp dpt:9
"""
    assert udpgen.parse_counter(listing, 9) == 123456
    assert udpgen.parse_counter(listing, 19) == 412
    with pytest.raises(ValueError, match="dpt:7"):
        udpgen.parse_counter(listing, 7)


def test_parse_output_takes_the_json_line() -> None:
    assert udpgen.parse_output('noise\n{"sent": 5, "errors": 0, "seconds": 0.5}\n')["sent"] == 5
    with pytest.raises(ValueError, match="no result"):
        udpgen.parse_output("udpgen: bind: Cannot assign requested address\n")


def test_generator_argv_validates_and_python_fallback_has_same_arguments() -> None:
    argv = udpgen.python_argv("198.19.0.2", 9, 18, 2, pps=1000, count=5, sources=["198.18.10.2", "198.18.10.3"])
    assert argv[-7:] == ["198.19.0.2", "9", "18", "2", "1000", "5", "198.18.10.2,198.18.10.3"]
    with pytest.raises(ValueError, match="sources"):
        udpgen.python_argv("198.19.0.2", 9, 18, 2)
    with pytest.raises(ValueError, match="size"):
        udpgen.python_argv("198.19.0.2", 9, 0, 2, sources=["198.18.10.2"])
    assert udpgen.frame_bytes(18) == 64


def test_parse_nfqueue_table() -> None:
    text = "    0  25091 17267 2   128 92943     0   201963  1\n    1  25092     0 2   128     0     4       77  1\n"
    q = parse_nfqueue_table(text)
    assert q[0] == {"portid": 25091, "waiting": 17267, "queue_dropped": 92943, "user_dropped": 0,
                    "last_id": 201963}
    assert q[1]["user_dropped"] == 4 and q[1]["last_id"] == 77
    assert parse_nfqueue_table("") == {}


# -- summary and page ------------------------------------------------------------------------------------------
def _raw(imqd_factor: dict[tuple[str, int], list[float]], *, leaf: bool = False, kernel_share: float = 0.95
         ) -> dict[str, Any]:
    """A synthetic run: 3 repetitions; imqd's accuracy factor (relative to kernel HTB, which delivers
    `kernel_share` of the configured rate) per (direction, rate) and repetition."""
    acc, ceil, idle, load, control = [], [], [], [], []
    for rep in range(3):
        for (direction, rate), factors in imqd_factor.items():
            kernel = rate * kernel_share
            acc.append({"rep": rep, "system": "kernel-htb", "direction": direction, "rate_bps": rate, "flows": 1,
                        "bps": kernel})
            acc.append({"rep": rep, "system": "imqd x2", "direction": direction, "rate_bps": rate, "flows": 1,
                        "bps": kernel * factors[rep]})
        for system, pps in (("plain", 150_000), ("bare-loop x1", 30_000), ("bare-loop x2", 50_000),
                            ("imqd x1", 24_000), ("imqd x2", 45_000)):
            step = {"cpu_s": 0.3, "packets": 10_000, "target_pps": 10_000}
            ceil.append({"rep": rep, "system": system, "traffic": "udp64", "pps": pps * (1 + rep / 100),
                         "overload_pps": pps / 5, "cost_step": step})
            ceil.append({"rep": rep, "system": system, "traffic": "tcp1500", "pps": pps * 2, "bps": pps * 2 * 8 * 1448})
        for system, base in (("plain", 25.0), ("bare-loop x1", 75.0), ("imqd x1", 100.0), (NO_TICK, 150.0)):
            for cpu, slower in (("other", 20.0), ("same", 0.0)):  # out of order: the summary sorts them
                for direction, skew in (("upload", -1.0), ("download", 1.0)):  # pooled: the median is between
                    idle.append({"rep": rep, "system": system, "interval_s": 0.01, "sender_cpu": cpu,
                                 "direction": direction,
                                 "delays_us": [base + slower * (system != "plain") + rep + skew] * 5})
                    idle.append({"rep": rep, "system": system, "interval_s": 0.001, "sender_cpu": cpu,
                                 "direction": direction,
                                 "delays_us": [base / 5 + slower * (system != "plain") + skew] * 5})
        load.append({"rep": rep, "system": "kernel HTB + pfifo", "rtts_ms": [400.0, 500.0, 600.0], "bps": 19e6})
        load.append({"rep": rep, "system": "imqd FIFO", "rtts_ms": [200.0, 250.0, 300.0], "bps": 19e6})
        if leaf:
            load.append({"rep": rep, "system": "imqd fq_codel", "rtts_ms": [1.0, 2.0, 3.0], "bps": 18e6})
        control.append({"rep": rep, "classes": 3, "workers": 2, "apply_s": [0.002, 0.003]})
        control.append({"rep": rep, "classes": 1002, "workers": 2, "apply_s": [0.2], "get_rps": 20.0 + rep,
                        "patch_rps": 2.0})
    memory = {"held": 10_240, "processes": 4, "before_kib": {"rss": 100_000, "hwm": 100_000, "pss": 60_000},
              "at_peak_kib": {"rss": 104_000, "hwm": 104_000, "pss": 64_000}, "hwm_kib": 104_100}
    meta = {"command": "python -m bench --out docs", "quick": False, "params": {"reps": 3, "ping_count": 200,
            "step_factor": 1.3}, "machine": {"nproc": 2, "cpu_model": "Test CPU", "kernel": "6.1", "python": "3.11.7"},
            "loadavg": [[0.0, 1.0], [5.0, 3.0]], "generator": "c-sendmmsg", "sources": {"0": "a", "1": "b"}}
    return {"meta": meta, "accuracy": acc, "ceiling": ceil, "latency_idle": idle, "latency_load": load,
            "memory": memory, "control": control, "profile": {"pid": 7, "seconds": 4, "offered_pps": 30000,
                                                                 **top_frames("a;b 8\na;c 2")}}


def test_accuracy_ratios_are_paired_per_repetition_and_misses_named() -> None:
    raw = _raw({("upload", 1_000_000): [0.99, 1.00, 1.01], ("download", 20_000_000): [0.95, 0.96, 0.97]})
    s = summarize(raw)
    rows = {(r["direction"], r["rate_bps"]): r for r in s["accuracy"]["rows"]}
    assert rows[("upload", 1_000_000)]["ratio"] == pytest.approx({"min": 0.99, "median": 1.0, "max": 1.01, "n": 3})
    assert rows[("download", 20_000_000)]["ratio"]["median"] == pytest.approx(0.96)
    verdict = next(t for t in s["targets"] if t["figure"] == "accuracy")
    assert not verdict["met"]
    assert verdict["misses"] == ["download 20 Mbit/s x1: 0.960"]
    # uploads sort first
    assert [r["direction"] for r in s["accuracy"]["rows"]] == ["upload", "download"]


def test_accuracy_met_when_every_row_within_target() -> None:
    s = summarize(_raw({("upload", 5_000_000): [0.985, 1.0, 1.015]}))
    assert next(t for t in s["targets"] if t["figure"] == "accuracy")["met"]


def test_ceiling_scaling_latency_cost_control_figures() -> None:
    s = summarize(_raw({("upload", 5_000_000): [1.0, 1.0, 1.0]}))
    udp = s["ceiling"]["udp64"]
    assert udp["ratios"]["imqd x1 / bare-loop x1"]["median"] == pytest.approx(0.8)
    assert udp["ratios"]["bare-loop x1 / plain"]["median"] == pytest.approx(0.2)
    assert udp["overload_pps"]["plain"]["median"] == pytest.approx(150_000 / 5)
    assert s["ceiling"]["tcp1500"]["gbps"]["plain"]["median"] == pytest.approx(300_000 * 8 * 1448 / 1e9)
    assert s["scaling"]["udp64"]["imqd x2 / imqd x1"]["median"] == pytest.approx(45 / 24)
    assert list(s["latency_idle"]) == ["100/s same CPU", "100/s other CPU", "1000/s same CPU", "1000/s other CPU"]
    slow, fast = s["latency_idle"]["100/s same CPU"], s["latency_idle"]["1000/s same CPU"]
    assert slow["median_us"]["imqd x1"] == {"min": 100.0, "median": 101.0, "max": 102.0, "n": 3}
    assert slow["added_us"]["imqd x1 - plain"]["median"] == pytest.approx(75.0)
    assert slow["added_us"]["imqd x1 - bare-loop x1"]["median"] == pytest.approx(25.0)
    assert slow["added_us"][f"{NO_TICK} - plain"]["median"] == pytest.approx(125.0)
    assert fast["added_us"]["imqd x1 - plain"]["median"] == pytest.approx(15.0)
    assert s["latency_idle"]["1000/s other CPU"]["added_us"]["imqd x1 - plain"]["median"] == pytest.approx(35.0)
    verdicts = {t["figure"].split(" (one-way")[0]: t["met"] for t in s["targets"] if "latency" in t["figure"]}
    assert verdicts == {"added latency per packet at 100 packets/s from the worker's CPU": False,  # 75 us
                        "added latency per packet at 100 packets/s from another CPU": False,
                        "added latency per packet at 1,000 packets/s from the worker's CPU": True,  # 15 us
                        "added latency per packet at 1,000 packets/s from another CPU": True}  # 35 us
    assert s["latency_load"]["imqd_fifo_over_kernel"]["median"] == pytest.approx(0.5)
    assert s["latency_load"]["rows"]["imqd FIFO"]["p90_ms"]["median"] == 300.0
    assert s["cost"]["cpu_s_per_mpkt"]["imqd x1"]["median"] == pytest.approx(30.0)
    assert "plain" not in s["cost"]["cpu_s_per_mpkt"]
    assert s["cost"]["memory"]["bytes_per_held"] == pytest.approx(4000 * 1024 / 10_240)
    big = s["control"]["by_classes"][1002]
    assert big["get_stats_rps"] == {"min": 20.0, "median": 21.0, "max": 22.0, "n": 3}
    assert s["control"]["by_classes"][3]["apply_ms"]["median"] == pytest.approx(2.5)
    verdicts = {t["figure"]: t["met"] for t in s["targets"]}
    assert verdicts["ceiling udp64 imqd x1 / bare-loop x1"] is False  # 0.80
    assert verdicts["ceiling udp64 imqd x2 / bare-loop x2"] is True  # 0.90
    assert verdicts["scaling udp64 imqd x2 / imqd x1"] is True  # 1.875


def test_markdown_page_has_machine_command_tables_and_limits() -> None:
    raw = _raw({("upload", 5_000_000): [1.0, 1.0, 1.0]})
    md = report.render_markdown(summarize(raw), raw["meta"])
    assert "`python -m bench --out docs`" in md
    assert "2 CPUs, Test CPU" in md and "Linux 6.1" in md and "Python 3.11.7" in md
    assert "mean 2.00, max 3.00" in md
    assert "| upload | 5 Mbit/s | 1 |" in md
    assert "| imqd x1 / bare-loop x1 | 0.800 (0.800–0.800) |" in md
    assert "n/a: leaf not available" in md  # no fq_codel row measured
    assert ("Added latency above 50 µs per packet at 100 packets/s from the worker's CPU: the bare loop alone "
            "adds 50 µs per packet") in md
    assert "plain kernel forwarding takes 26 µs one way (at 1,000 packets/s: 5 µs)" in md
    assert "at 1,000 packets/s from the worker's CPU: the bare" not in md, "a met target gets no limits note"
    assert f"| {NO_TICK} | 151 (150–152) | 171 (170–172) | 30 (30–30) | 50 (50–50) |" in md, \
        "median one-way delays per system, probe rate and sender CPU"
    assert "Ceiling below 0.90 of the bare loop for udp64 imqd x1 / bare-loop x1 (0.80)" in md
    assert "`b` 80%" in md  # profile frames quoted in the limits
    assert "| 80.0% | `b` |" in md  # and in the profile tables
    assert "![accuracy and ceiling](benchmarks.png)" in md


def test_markdown_shows_fq_codel_row_when_measured() -> None:
    raw = _raw({("upload", 5_000_000): [1.0, 1.0, 1.0]}, leaf=True)
    md = report.render_markdown(summarize(raw), raw["meta"], png=None)
    assert "| imqd fq_codel | 2.0 (2.0–2.0) |" in md
    assert "leaf not available" not in md
    assert "benchmarks.png" not in md


def test_summary_of_an_empty_run_renders() -> None:
    raw = {"meta": {"command": "x", "params": {}}}
    s = summarize(raw)
    assert s["accuracy"]["overall"] is None
    assert all(not t["met"] for t in s["targets"])
    md = report.render_markdown(s, raw["meta"])
    assert "| accuracy | 0.98-1.02 of kernel HTB | n/a |" in md


def test_scaling_note_blames_the_machine_only_when_the_bare_loop_does_not_scale_either() -> None:
    raw = _raw({("upload", 5_000_000): [1.0, 1.0, 1.0]})
    for r in raw["ceiling"]:
        if r["system"] == "imqd x2":
            r["pps"] = 30_000.0  # imqd x2 / x1 = 1.25
    notes = " ".join(report.limits(summarize(raw), raw["meta"]))
    assert "Scaling below 1.6 for udp64 (1.24) while the bare loop scales 1.67" in notes
    for r in raw["ceiling"]:
        if r["system"] == "bare-loop x2":
            r["pps"] = r["pps"] * 0.5  # bare-loop x2 / x1 < 1
    notes = " ".join(report.limits(summarize(raw), raw["meta"]))
    assert "even the bare loop scales only 0.83" in notes


def test_accuracy_notes_tell_whose_error_a_miss_is() -> None:
    ideal = report.GOODPUT_FACTOR
    # kernel HTB 6% under the ideal goodput, imqd exactly at it: the reference is off
    raw = _raw({("upload", 1_000_000): [1 / 0.94] * 3}, kernel_share=0.94 * ideal)
    s = summarize(raw)
    row = s["accuracy"]["rows"][0]
    assert row["kernel_of_ideal"]["median"] == pytest.approx(0.94)
    assert row["imqd_of_ideal"]["median"] == pytest.approx(1.0)
    notes = " ".join(report.limits(s, raw["meta"]))
    assert "kernel HTB is further from its configured rate than imqd: upload 1 Mbit/s x1" in notes
    assert "imqd is further" not in notes
    # kernel at the ideal, imqd 5% under: imqd is off
    raw = _raw({("upload", 1_000_000): [0.95] * 3}, kernel_share=ideal)
    notes = " ".join(report.limits(summarize(raw), raw["meta"]))
    assert "imqd is further from its configured rate: upload 1 Mbit/s x1 (imqd 0.950, kernel 1.000 of ideal)" in notes
    assert "one MTU plus 4 ms of rate" in notes  # a run that did not record its burst time used 4 ms
    raw["meta"]["default_burst_us"] = 10_000
    assert "one MTU plus 10 ms of rate" in " ".join(report.limits(summarize(raw), raw["meta"]))


def test_fq_codel_leaf_probe_finds_a_spelling_the_config_turns_into_an_fq_codel_leaf() -> None:
    from bench.systems import fq_codel_leaf
    from imqd.config import parse_config
    from imqd.shaper import leaf_spec_for

    fields = fq_codel_leaf()
    if fields is None:  # this imqd has no fq_codel leaf: then no class field may accept one
        pytest.skip("imqd's class config has no fq_codel leaf")
    cfg = parse_config({"classes": [{"name": "x", "rate": "1mbit", "limit": 50, **fields}]})
    spec = leaf_spec_for(cfg.classes[0])
    assert spec.kind == "fq_codel"
    assert spec.get("limit") == 50  # the class's limit still applies to the leaf


def test_low_latency_figures_get_their_own_target_rows_and_limits_note() -> None:
    raw = _raw({("upload", 5_000_000): [1.0, 1.0, 1.0]})
    for rep in range(3):  # at 100 packets/s: plain 5 us, imqd 35 us one way with idle CPUs polling
        for system, delay in (("plain", 5.0), ("bare-loop x1", 15.0), ("imqd x1", 35.0)):
            raw["latency_idle"].append({"rep": rep, "system": system + report.LOW_LATENCY, "interval_s": 0.01,
                                        "sender_cpu": "same", "direction": "upload", "delays_us": [delay] * 5})
    s = summarize(raw)
    slow = s["latency_idle"]["100/s same CPU"]["added_us"]
    assert slow[f"imqd x1{report.LOW_LATENCY} - plain{report.LOW_LATENCY}"]["median"] == pytest.approx(30.0)
    assert slow[f"bare-loop x1{report.LOW_LATENCY} - plain{report.LOW_LATENCY}"]["median"] == pytest.approx(10.0)
    rows = {t["figure"].split(" (one-way")[0]: (t["value"], t["met"]) for t in s["targets"]
            if "latency" in t["figure"]}
    assert rows["added latency per packet at 100 packets/s from the worker's CPU with --cpu-latency 0"] == \
        (pytest.approx(30.0), True)
    assert rows["added latency per packet at 100 packets/s from the worker's CPU"] == (pytest.approx(75.0), False)
    assert not any("another CPU with --cpu-latency" in f for f in rows), "no row where nothing was measured"
    md = report.render_markdown(s, raw["meta"])
    assert "With idle CPUs kept polling (`--cpu-latency 0`) imqd adds 30 µs per packet at this rate" in md
    assert f"| imqd x1{report.LOW_LATENCY} | 35 (35–35) |" in md
    assert "imqd adds 30 µs per packet at this rate (the bare loop 10 µs)" in md


def test_latency_note_blames_the_worker_wake_up_when_plain_forwarding_is_fast() -> None:
    raw = _raw({("upload", 5_000_000): [1.0, 1.0, 1.0]})
    for r in raw["latency_idle"]:
        if r["system"] == "plain":
            r["delays_us"] = [3.0] * 5  # a machine whose CPUs wake fast: plain forwarding 3 us one way
    md = report.render_markdown(summarize(raw), raw["meta"])
    assert "every wake-up is cold" not in md, "not true where plain forwarding is as fast at 100/s as at 1,000/s"
    assert ("the worker's CPU is asleep when a packet comes: plain forwarding wakes no other process (3 µs one "
            "way), an NFQUEUE pass must wake the worker, from another CPU") in md


def test_ceiling_page_says_why_each_udp_search_ended() -> None:
    raw = _raw({("upload", 5_000_000): [1.0, 1.0, 1.0]})
    for r in raw["ceiling"]:
        if r["traffic"] == "udp64" and r["system"] != "plain":
            r["stopped"] = "generator" if r["system"] == "bare-loop x2" else "loss"
    s = summarize(raw)
    assert s["ceiling"]["udp64"]["stopped"]["bare-loop x2"] == {"generator": 3}
    assert s["ceiling"]["udp64"]["stopped"]["plain"] == {}, "plain runs at full speed only"
    md = report.render_markdown(s, raw["meta"])
    assert "UDP searches ended by: bare-loop x1: loss ×3; bare-loop x2: generator ×3;" in md
