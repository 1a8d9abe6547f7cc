"""Which offered load to try next in the packets/s ceiling search.  Pure: the caller measures.

The load rises geometrically until the system loses packets in ``lossy_steps`` steps in a row (one lossy
step may be a noise dip) or the senders cannot offer the step (if the system already lost at a lower load,
that ends the rise by loss; if it lost part of what the senders did offer, that is a loss at that load);
then ``refine_steps`` bisections (geometric midpoints) between the highest lossless load and the lowest lossy
one above it.  Without the
refinement a factor of 1.4 leaves the figure up to 40% under the true ceiling -- coarser than the 10%
the target is about (a faster machine showed imqd at one grid step and the bare loop at the next).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class CeilingSearch:
    start: float
    factor: float
    lossy_steps: int
    refine_steps: int
    loss_stop: float  # a step loses when less than this share of what was offered arrives
    max_pps: float
    stopped: str | None = None  # why the search ended: "loss", "generator" or "bound"
    _next: float | None = None
    _lossy_run: int = 0
    _good: float | None = None  # highest offered load that arrived in full (enough)
    _bad: float | None = None  # lowest lossy offered load above _good
    _refined: int = 0
    _rising: bool = True
    history: list[tuple[float, bool]] = field(default_factory=list)  # (target, lost)

    def __post_init__(self) -> None:
        self._next = self.start

    def next_pps(self) -> float | None:
        """The next target load, or None when the search is over."""
        return self._next

    def record(self, target: float, offered: float, forwarded: float) -> None:
        """The result of the step at ``target``: what the senders managed to offer, what arrived."""
        if offered < self.loss_stop * target and forwarded < self.loss_stop * offered:
            # The senders fell short, but the system lost even what they managed: a loss at that load.  (An
            # overloaded path takes the senders' CPU too -- their packets' softirq work runs on their CPU -- so
            # near the ceiling they fall short *because* the system is overloaded.)
            target = offered
        elif offered < self.loss_stop * target:  # the senders' limit, not the system's
            if self._rising and self._good is not None and self._bad is not None and self.refine_steps > 0:
                # ... but the system already lost at a load the senders could offer: bisect below that
                self._rising = False
                self.stopped = "loss"
                self._next = math.sqrt(self._good * self._bad)
                return
            self._end("generator")
            return
        lost = forwarded < self.loss_stop * offered
        self.history.append((target, lost))
        if lost:
            if self._bad is None or target < self._bad:
                self._bad = target
        elif self._good is None or target > self._good:
            self._good = target
            if self._bad is not None and self._bad <= target:
                self._bad = None
        if self._rising:
            self._lossy_run = self._lossy_run + 1 if lost else 0
            nxt = target * self.factor
            if self._lossy_run < self.lossy_steps and nxt <= self.max_pps:
                self._next = nxt
                return
            if self._lossy_run == 0:  # the bound, and nothing lost at the highest load tried
                self._end("bound")
                return
            self._rising = False  # lost (at the bound too: bisect below it rather than call it a bound)
            self.stopped = "loss"
        else:
            self._refined += 1
        if self._refined >= self.refine_steps or self._good is None or self._bad is None:
            self._next = None
            return
        self._next = math.sqrt(self._good * self._bad)

    def _end(self, why: str) -> None:
        if self._rising:  # during the bisection the rise already ended by loss: that stays the reason
            self.stopped = why
        self._next = None
