"""Give freed heap memory back to the kernel (glibc): 10,000 classes make big one-off builds and big answers.

* ``trim()`` (``malloc_trim(0)``) after a big, one-off build: loading 10,000 classes, or a worker applying
  them, frees far more than it keeps (parsed YAML, the pickled configuration); glibc keeps what was freed
  inside its heap for reuse, counted in the process's RSS (~7 MB in a worker, ~12 MB in the API process).
* ``mmap_large_blocks()`` once at start: glibc serves a block above 128 KiB with its own mmap, given back
  when freed -- until the first such block is freed, after which it raises that threshold (up to 32 MB) and
  serves large blocks from its heap, which it rarely shrinks.  A ``/metrics`` answer for 10,000 classes is a
  few MB of text: each scrape then left ~15 MB of RSS behind.  Fixing the threshold keeps large blocks in
  mmaps (an mmap and munmap per block above 128 KiB: a few per stats sample or scrape, none per packet).

Measured with ``python -m bench.memory``.  Elsewhere than glibc both do nothing and say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

__all__ = ["trim", "mmap_large_blocks", "MMAP_THRESHOLD"]

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's initial (default) threshold

_libc: Any = None
_looked = False


def _c() -> Any:
    global _libc, _looked
    if not _looked:
        _looked = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim, libc.mallopt  # noqa: B018 - both or neither (not glibc)
            _libc = libc
        except (OSError, AttributeError):
            _libc = None
    return _libc


def trim() -> bool:
    """Return freed heap pages to the kernel; whether the C library could be asked (a few ms)."""
    libc = _c()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def mmap_large_blocks() -> bool:
    """Serve every block above ``MMAP_THRESHOLD`` with its own mmap for the life of the process; whether the C
    library took it."""
    libc = _c()
    return libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
