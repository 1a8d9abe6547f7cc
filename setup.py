"""Build hook for the one C extension (everything else is in pyproject.toml).

imqd.qdisc._htbfast speeds up HTB's per-packet fast path; it is optional: if it cannot be compiled (no C
compiler or Python headers), imqd runs the pure-Python reference instead (`imqd run` logs which one).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("imqd.qdisc._htbfast", ["imqd/qdisc/_htbfast.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration",
                                                 # no fused multiply-add: the C must round as Python does
                                                 "-ffp-contract=off"])])
