"""How long imqd takes from its start to ``GET /healthz`` answering 200 (every worker bound to its queue).

:class:`imqd.lab.ImqdInstance` polls the health check by running a fresh Python in the router namespace
every 0.2 s: its own start-up (~0.1 s of CPU each) would blur a figure whose target is a few seconds, and on
a 2-CPU machine it takes that CPU from the imqd it is waiting for.  Here the config file is written first
(the benchmark's PyYAML dump of 10,000 classes takes ~1.5 s, which earlier runs counted as imqd's start),
then imqd is only launched, and a poller started in the namespace *before* it
asks every 10 ms over one process and prints the CLOCK_MONOTONIC time of the first 200; the benchmark
compares it with the moment it launched imqd (the same clock in every namespace).
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.systems import Imqd
from imqd.lab import API_ADDR

__all__ = ["start_timed", "POLLER"]

POLLER = r"""
import http.client, sys, time
host, port = sys.argv[1].rsplit(":", 1)
deadline = time.monotonic() + float(sys.argv[2])
print("polling", flush=True)
while time.monotonic() < deadline:
    try:
        c = http.client.HTTPConnection(host, int(port), timeout=2)
        c.request("GET", "/healthz")
        if c.getresponse().status == 200:
            print(f"{time.monotonic():.6f}", flush=True)
            sys.exit(0)
        c.close()
    except OSError:
        pass
    time.sleep(0.01)
sys.exit(1)
"""


def start_timed(system: Imqd, timeout: float) -> dict[str, float]:
    """Start `system` and return ``{"healthz_s": launch -> first /healthz 200, "ready_s": launch -> every worker
    reported its pid in /stats (what the benchmark waits for before measuring)}``."""
    topo = system.topo
    poller = topo.popen(topo.router_ns, [sys.executable, "-c", POLLER, API_ADDR, str(timeout)], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
    try:
        assert poller.stdout is not None
        if poller.stdout.readline().strip() != "polling":
            raise RuntimeError(f"healthz poller did not start: {poller.stderr.read() if poller.stderr else ''}")
        system.prepare()  # the config file is written before the clock starts
        t0 = time.monotonic()
        system.launch()  # nothing else polls meanwhile: a fresh Python per try would take CPU from imqd's start
        out, err = poller.communicate(timeout=timeout)
        system.wait_started()
        ready = time.monotonic() - t0
    finally:
        if poller.poll() is None:
            poller.kill()
            poller.wait()
    if poller.returncode != 0 or not out.strip():
        raise RuntimeError(f"healthz poller saw no 200 within {timeout} s: {err.strip()[-300:]}")
    return {"healthz_s": round(float(out.strip().splitlines()[-1]) - t0, 4), "ready_s": round(ready, 4)}
