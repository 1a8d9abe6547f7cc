"""The senders' congestion windows during a loaded run, from ``ss -tin`` in the client namespace.

Under a saturating TCP load the standing queue of a FIFO that never fills is what the senders keep in
flight beyond the path's BDP: the sum of their congestion windows.  With BBR (this machine's default) that
window is its estimate of the BDP times two plus allowances for TSO bursts and ACK aggregation -- set by the
senders' view of the path, not by the queue limit.  Sampling it next to the ping RTTs shows which of the two
a latency-under-load figure measures.
"""

from __future__ import annotations

import re
from typing import Any

from imqd.netns import Topology

__all__ = ["parse_ss", "sample_windows"]

_FLOW_RE = re.compile(r"^ESTAB\s+\d+\s+\d+\s+\S+\s+(\S+)", re.M)


def parse_ss(text: str, port: int | None = None) -> dict[str, Any]:
    """Sum of ``cwnd x mss`` (bytes) over the established flows of `text` (``ss -tin`` output), flows to `port`
    only when given, and the congestion control they run; flows still at their initial window (iperf3's
    control connection) are left out."""
    flows = []
    cc: set[str] = set()
    for block in re.split(r"\n(?=ESTAB)", text):
        head = _FLOW_RE.search(block)
        cwnd = re.search(r"\bcwnd:(\d+)", block)
        mss = re.search(r"\bmss:(\d+)", block)
        if head is None or cwnd is None or mss is None:
            continue
        if port is not None and not head.group(1).endswith(f":{port}"):
            continue
        segs = re.search(r"\bdata_segs_out:(\d+)", block)
        if segs is None or int(segs.group(1)) < 100:
            continue  # the control connection (a few segments)
        name = re.search(r"^\s+(\w+)\s+wscale", block, re.M)
        if name:
            cc.add(name.group(1))
        flows.append(int(cwnd.group(1)) * int(mss.group(1)))
    return {"flows": len(flows), "cwnd_bytes": sum(flows), "cc": sorted(cc)}


def sample_windows(topo: Topology, port: int) -> dict[str, Any]:
    """:func:`parse_ss` of the first client's flows to `port` now (empty figures if ss fails)."""
    res = topo.exec(topo.clients[0].ns, ["ss", "-tin"], check=False)
    if res.returncode != 0:
        return {"flows": 0, "cwnd_bytes": 0, "cc": []}
    return parse_ss(res.stdout, port)
