"""imqd: an IMQ-style traffic shaper for Linux routers (NFQUEUE + HTB in userspace)."""

__version__ = "0.1.0"
