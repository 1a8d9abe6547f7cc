"""Queueing disciplines: pure, clock-free cores (``now`` is always passed in)."""

from imqd.qdisc.base import Qdisc, QueuedPacket
from imqd.qdisc.fifo import Fifo
from imqd.qdisc.htb import HTB, HTBClassParams
from imqd.qdisc.leaves import LeafSpec, change_leaf, make_leaf, register_leaf
from imqd.qdisc.tbf import Tbf, TokenBucket
from imqd.qdisc.tokens import LocalTokenStore, TokenStore

__all__ = [
    "HTB",
    "Fifo",
    "HTBClassParams",
    "LeafSpec",
    "LocalTokenStore",
    "Qdisc",
    "QueuedPacket",
    "Tbf",
    "TokenBucket",
    "TokenStore",
    "change_leaf",
    "make_leaf",
    "register_leaf",
]
