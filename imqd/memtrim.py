"""Give freed heap memory back to the kernel after a big, one-off build (glibc's ``malloc_trim``).

Loading 10,000 classes, or a worker applying them, frees far more than it keeps (parsed YAML, the pickled
configuration); glibc keeps what was freed inside its heap for reuse, counted in the process's RSS.
``malloc_trim(0)`` returns those pages (~7 MB in a worker, ~12 MB in the API process at 10,000 classes,
``python -m bench.memory``).  Elsewhere than glibc, or if the call is not there, it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

__all__ = ["trim"]

_trim: Any = None
_looked = False


def trim() -> bool:
    """Return freed heap pages to the kernel; whether the C library could be asked (a few ms)."""
    global _trim, _looked
    if not _looked:
        _looked = True
        try:
            _trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = None
    if _trim is None:
        return False
    _trim(0)
    return True
