"""GSO super-packets against small buckets (issue 16, item 3), through HTB's public API on a fake clock.

A 64 KB packet in a class whose burst is 12 KB must neither wait for ever nor starve its siblings.  HTB
already does what the kernel's does (``htb_class_mode``: a class may send while its tokens are >= 0,
whatever the packet's size; ``htb_accnt_tokens``: the charge may take the tokens below zero, down to
``-mbuffer``): the packet goes, the class is in debt, and it sends again once the debt is paid.
"""

from __future__ import annotations

import pytest

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.htb import HTB, HTBClassParams

BIG = 65_536
BURST = 12_000


def params(name: str, parent: str | None, rate: float, ceil: float) -> HTBClassParams:
    return HTBClassParams(name, parent, rate, ceil, BURST, BURST)


def run(htb: HTB, sizes: dict[str, int], until: float, backlog: int = 3) -> list[tuple[float, str, int]]:
    """Keep each leaf of ``sizes`` backlogged with packets of that size; release at every next_event."""
    now, log = 0.0, []
    queued = dict.fromkeys(sizes, 0)
    for _ in range(100_000):
        for leaf, size in sizes.items():
            while queued[leaf] < backlog:
                assert htb.enqueue(QueuedPacket(size, handle=leaf, enqueued_at=now), leaf, now) == []
                queued[leaf] += 1
        t = htb.next_event(now)
        assert t is not None and t >= now, "a backlogged tree always names its next event"
        if t > until:
            return log
        now = t
        pkt = htb.dequeue(now)
        assert pkt is not None, f"next_event said {t} but dequeue gave nothing"
        queued[pkt.handle] -= 1
        log.append((now, pkt.handle, pkt.size))
    pytest.fail("the clock did not get to the end")


def test_a_packet_larger_than_the_burst_goes_at_once_and_the_class_pays_the_debt() -> None:
    rate = 1e6  # 125,000 bytes/s
    htb = HTB([params("c", None, rate, rate)], 0.0)
    log = run(htb, {"c": BIG}, until=2.0, backlog=1)
    times = [t for t, _, _ in log]
    assert times[0] == 0.0, "a full bucket lets it go at once"
    debt = (BIG - BURST) / 125_000  # tokens went from +burst to burst - 64 KB: back to 0 after this long
    assert times[1] == pytest.approx(debt)
    assert times[2] - times[1] == pytest.approx(BIG / 125_000), "then one packet per 64 KB of rate"


@pytest.mark.parametrize("rate", [1e6, 5e6, 20e6, 100e6])
def test_a_sibling_of_small_packets_keeps_its_rate_next_to_super_packets(rate: float) -> None:
    """Parent = 2 x rate; child A sends only 64 KB packets, child B only 1,500-byte ones; both may borrow up to
    the parent.  Each gets its rate (within 2 %), B is never held up longer than a few of its own packets
    take, and the total never exceeds what the two rates allow plus the bursts and one packet each."""
    htb = HTB([params("p", None, 2 * rate, 2 * rate), params("a", "p", rate, 2 * rate),
               params("b", "p", rate, 2 * rate)], 0.0)
    seconds = 200 * BIG * 8 / rate  # 200 super-packets of A
    log = run(htb, {"a": BIG, "b": 1500}, until=seconds)
    sent = {leaf: sum(s for _, n, s in log if n == leaf) * 8 / seconds for leaf in "ab"}
    assert sent["a"] == pytest.approx(rate, rel=0.02) and sent["b"] == pytest.approx(rate, rel=0.02), sent
    b_times = [t for t, n, _ in log if n == "b"]
    gap = max(y - x for x, y in zip(b_times, b_times[1:]))
    assert gap <= 4 * 1500 * 8 / rate, f"B waited {gap * 1e3:.1f} ms between packets"
    total = 0
    for t, _, size in log:
        total += size
        assert total <= 2 * rate / 8 * t + 2 * BURST + BIG + 1500, "the rates held"


@pytest.mark.parametrize("accelerate", [True, False])
def test_the_fast_path_lets_a_super_packet_through_a_full_bucket_and_then_waits_out_the_debt(accelerate: bool
                                                                                              ) -> None:
    """send_now (the worker's path for a packet no one waits before; in C when compiled) does the same."""
    htb = HTB([params("c", None, 1e6, 1e6)], 0.0, accelerate=accelerate)
    assert htb.send_now("c", BIG, 0.0)
    debt = (BIG - BURST) / 125_000
    assert not htb.send_now("c", 1500, debt * 0.999)
    assert htb.send_now("c", 1500, debt)
