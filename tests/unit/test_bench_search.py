"""The ceiling search against model systems: it finds the ceiling to within a few percent, and says why it ended."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.search import CeilingSearch


def search(refine: int = 3, max_pps: float = 10e6) -> CeilingSearch:
    return CeilingSearch(10_000, 1.4, lossy_steps=2, refine_steps=refine, loss_stop=0.9, max_pps=max_pps)


def run(s: CeilingSearch, forwards: Callable[[float], float], senders_max: float = 1e9) -> float:
    """Drive the search like Bench.ceiling_udp; return the best forwarded rate of any step."""
    best = 0.0
    while (pps := s.next_pps()) is not None:
        offered = min(pps, senders_max)
        got = forwards(offered)
        best = max(best, got)
        s.record(pps, offered, got)
    return best


def collapsing(capacity: float) -> Callable[[float], float]:
    """A Python NFQUEUE path: forwards up to `capacity`, collapses to half of it beyond (receive livelock)."""
    return lambda offered: offered if offered <= capacity else capacity / 2


@given(st.floats(20_000, 3_000_000))
def test_finds_a_collapsing_ceiling_within_5_percent(capacity: float) -> None:
    s = search()
    best = run(s, collapsing(capacity))
    assert s.stopped == "loss"
    assert 0.95 * capacity <= best <= capacity


def test_without_refinement_the_grid_step_is_all_it_can_tell() -> None:
    best = run(search(refine=0), collapsing(400_000))
    assert best < 0.75 * 400_000, "10k x 1.4^10 = 289k is the last grid point below 400k"


def test_ends_at_the_senders_limit_when_the_system_keeps_up() -> None:
    s = search()
    best = run(s, lambda offered: offered, senders_max=550_000)
    assert s.stopped == "generator"
    assert best > 0.7 * 550_000


def test_bound_ends_a_search_that_never_loses() -> None:
    s = search(max_pps=100_000)
    run(s, lambda offered: offered)
    assert s.stopped == "bound"
    assert max(t for t, _ in s.history) <= 100_000


def test_one_noise_dip_does_not_end_the_rise() -> None:
    dips = {10_000 * 1.4 ** 3}
    s = search(refine=0)
    best = run(s, lambda o: o * 0.5 if any(abs(o - d) < 1 for d in dips) else min(o, 200_000))
    assert best > 150_000, "the search rose past the dip"


@pytest.mark.parametrize("refine", [0, 1, 3])
def test_refinement_stays_between_the_last_good_and_first_bad_load(refine: int) -> None:
    s = search(refine=refine)
    run(s, collapsing(400_000))
    h = s.history
    # the rise ends at the second lossy step in a row (lossy_steps=2); what follows is the bisection
    end = next(i for i in range(1, len(h)) if h[i - 1][1] and h[i][1]) + 1
    good = max(t for t, lost in h[:end] if not lost)
    bad = min(t for t, lost in h[:end] if lost and t > good)
    refined = h[end:]
    assert len(refined) == refine, "one step per bisection asked for"
    assert all(good < t < bad for t, _ in refined)


def test_a_bisection_step_the_senders_miss_ends_the_search_but_loss_stays_the_reason() -> None:
    s = CeilingSearch(100_000, 2.0, lossy_steps=1, refine_steps=3, loss_stop=0.9, max_pps=10e6)
    s.record(100_000, 100_000, 100_000)
    s.record(200_000, 200_000, 50_000)  # lost: the rise ends, bisection starts
    assert s.stopped == "loss" and s.next_pps() == pytest.approx(141_421, rel=1e-3)
    s.record(141_421, 60_000, 60_000)  # the senders stalled on this one
    assert s.next_pps() is None and s.stopped == "loss"


def test_a_loss_at_the_bound_is_a_loss_not_a_bound() -> None:
    s = search(max_pps=30_000)
    run(s, collapsing(25_000))
    assert s.stopped == "loss"


def test_a_loss_before_the_senders_limit_is_bisected() -> None:
    """The published 2-worker run: lossless at 286k, lossy at 400k, and the senders could not offer 560k.
    The rise ended at the senders' limit, but the system had already lost below it: bisect there."""
    s = search()
    best = run(s, collapsing(330_000), senders_max=450_000)
    assert s.stopped == "loss"
    assert 0.95 * 330_000 <= best <= 330_000


def test_the_senders_limit_without_a_loss_is_still_the_generator() -> None:
    s = search()
    run(s, lambda offered: offered, senders_max=310_000)
    assert s.stopped == "generator", "the system forwarded all the senders could offer: it may do more"


def test_a_loss_of_what_the_senders_did_offer_is_a_loss_at_that_load() -> None:
    """The published 10,000-class run: lossless at 206k; at 289k the senders offered only 247k (the overloaded
    path took their CPU) and 169k arrived.  That is a loss at 247k, to bisect below, not the senders' limit."""
    s = search()
    best = run(s, lambda offered: offered if offered < 300_000 else offered * 0.5, senders_max=310_000)
    assert s.stopped == "loss"
    assert (310_000, True) in s.history, "the loss is recorded at what was offered"
    assert 0.95 * 300_000 <= best <= 300_000
