"""imqd's benchmark suite: imqd side by side with plain forwarding, kernel HTB and a bare NFQUEUE loop.

Run ``python -m bench [--quick] [--sections core,scale,control-scale] [--out docs/]`` as root.  Modules, one
job each: :mod:`bench.udpgen` (packet generator, to one or many destinations, and sink), :mod:`bench.udprecv`
(per-destination counter), :mod:`bench.cbuild` (compiles those C helpers), :mod:`bench.bare_loop` (the
accept-everything NFQUEUE loop), :mod:`bench.systems` (the systems under test), :mod:`bench.figures` (the core
measurements), :mod:`bench.subscribers` (many subscribers: addresses, configs, kernel reference, load plan,
fairness; pure), :mod:`bench.scale` and :mod:`bench.control_scale` (the measurements at subscriber scale),
:mod:`bench.startup` (time to a healthy imqd), :mod:`bench.stats` (statistics and table cells),
:mod:`bench.report` with :mod:`bench.report_scale` and :mod:`bench.report_control_scale` (figures, verdicts, the
markdown page; pure), :mod:`bench.chart` (the PNG), :mod:`bench.runner` (one run end to end).
"""
