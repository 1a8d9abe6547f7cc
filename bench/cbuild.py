"""Compile the benchmark's small C helpers once, cached by a hash of their source.

Why C at all: Python senders and receivers top out near 50-100 k packets/s on a 2-core machine, below what
the systems under test forward, so they would measure themselves.  The binaries live in a cache directory
(``IMQD_BENCH_CACHE``, default ``/tmp/imqd-bench-cache``) named ``NAME-HASH``: a changed source builds a new
binary, an unchanged one is reused across runs and processes (written to a temporary name, then renamed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["CACHE_DIR", "compiler", "compile_cached", "require", "CompilerMissing"]

CACHE_DIR = Path(os.environ.get("IMQD_BENCH_CACHE", "/tmp/imqd-bench-cache"))


class CompilerMissing(RuntimeError):
    """No C compiler on PATH: the helper that needs one cannot be built."""


def compiler(cc: str | None = None) -> str | None:
    """`cc` if given, else gcc or cc from PATH, else None."""
    return cc or shutil.which("gcc") or shutil.which("cc")


def compile_cached(name: str, source: str, cc: str | None = None) -> Path | None:
    """The path of `source` compiled with -O2 (built on first use); None when there is no C compiler.

    RuntimeError with the compiler's message when the source does not compile."""
    cc = compiler(cc)
    if cc is None:
        return None
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    binary = CACHE_DIR / f"{name}-{digest}"
    if binary.exists():
        return binary
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    src = CACHE_DIR / f"{name}-{digest}.c"
    src.write_text(source)
    tmp = binary.with_suffix(f".tmp{os.getpid()}")
    res = subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(src)], capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{name}: {cc} failed: {res.stderr.strip()[:500]}")
    os.replace(tmp, binary)
    return binary


def require(name: str, source: str, cc: str | None = None) -> Path:
    """Like :func:`compile_cached`, but a helper with no Python fallback: CompilerMissing says what to install."""
    binary = compile_cached(name, source, cc)
    if binary is None:
        raise CompilerMissing(f"{name}: no C compiler (gcc or cc) on PATH; install gcc (apt-get install gcc) to "
                              "run the benchmark sections that need it")
    return binary
