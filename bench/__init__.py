"""imqd's benchmark suite: imqd side by side with plain forwarding, kernel HTB and a bare NFQUEUE loop.

Run ``python -m bench [--quick] [--out docs/]`` as root.  Modules, one job each: :mod:`bench.udpgen` (packet
generator and sink), :mod:`bench.bare_loop` (the accept-everything NFQUEUE loop), :mod:`bench.systems` (the
systems under test), :mod:`bench.figures` (the measurements), :mod:`bench.report` (statistics, ratios, the
markdown page; pure), :mod:`bench.chart` (the PNG), :mod:`bench.runner` (one run end to end).
"""
