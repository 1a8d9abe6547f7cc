"""Running the ``ipset`` command for imqd's address sets (:mod:`imqd.address_sets` decides their members).

Why the command and not pyroute2's ``IPSet`` (already a dependency): pyroute2 0.9 works here (protocol 7,
``hash:net`` inet/inet6, swap), but sends one netlink request per element through its synchronous wrapper:
10,000 prefixes took 6.3 s, where one ``ipset restore`` took 0.06 s.  A subscriber import changes thousands at
once.  So every change is one ``ipset restore`` transaction script:

* incremental: ``add ... -exist`` for new prefixes first, then ``del ... -exist``, each atomic in the kernel
  (a packet sees a prefix either in the set or not, and a prefix that stays is never missing);
* whole rebuild (start, or after a failed update): fill ``<name>-tmp``, ``swap`` it with the live set, destroy
  it: packets see the old members until the swap and the new ones after it.

Every function takes a ``runner`` with ``subprocess.run``'s signature, as :mod:`imqd.rules` does.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable

from imqd.rules import RulesError, Runner

__all__ = ["rebuild", "update", "names", "destroy", "destroy_stale", "MAXELEM"]

MAXELEM = 1 << 20  # the kernel's hash grows as needed; this only caps it (ipset's default is 65536)
_INSTALL_HINT = "install the ipset package (Debian: apt-get install ipset) or run with --no-address-sets"


def _explain(stderr: str, returncode: int) -> str:
    low = stderr.lower()
    line = next((ln.strip() for ln in stderr.splitlines() if ln.strip()), "(no message)")
    if "operation not permitted" in low or "permission denied" in low:
        return f"ipset: permission denied -- managing address sets needs CAP_NET_ADMIN: {line}"
    if "protocol" in low or "cannot open session" in low or "kernel" in low and "support" in low:
        return f"ipset: the kernel lacks ip_set / hash:net support (modprobe ip_set_hash_net): {line}"
    return f"ipset failed (exit {returncode}): {line}"


def _run(runner: Runner, argv: list[str], script: str | None = None) -> str:
    try:
        res = runner(["ipset", *argv], input=script, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RulesError(f"ipset not found: {_INSTALL_HINT}") from None
    except PermissionError as e:
        raise RulesError(f"ipset: {e.strerror} -- managing address sets needs CAP_NET_ADMIN") from None
    if res.returncode != 0:
        raise RulesError(_explain(res.stderr or "", res.returncode))
    return res.stdout or ""


def _restore(runner: Runner, lines: list[str]) -> None:
    if lines:
        _run(runner, ["restore"], "\n".join(lines) + "\n")


def _create(name: str, family: int) -> str:
    return f"create {name} hash:net family {'inet6' if family == 6 else 'inet'} maxelem {MAXELEM} -exist"


def rebuild(runner: Runner, sets: Iterable[tuple[str, int, Iterable[str]]]) -> None:
    """Make each (name, family 4|6, prefixes) set hold exactly those prefixes: created if missing, else
    replaced whole by ``swap`` (one transaction script for all of them)."""
    lines: list[str] = []
    for name, family, members in sets:
        tmp = f"{name}-tmp"
        lines += [_create(name, family), _create(tmp, family), f"flush {tmp}"]
        lines += [f"add {tmp} {cidr} -exist" for cidr in sorted(members)]
        lines += [f"swap {tmp} {name}", f"destroy {tmp}"]
    _restore(runner, lines)


def update(runner: Runner, changes: Iterable[tuple[str, Iterable[str], Iterable[str]]]) -> None:
    """Per (name, prefixes to add, prefixes to delete): the adds of every set, then the deletes."""
    changes = list(changes)
    lines = [f"add {name} {cidr} -exist" for name, add, _ in changes for cidr in sorted(add)]
    lines += [f"del {name} {cidr} -exist" for name, _, dele in changes for cidr in sorted(dele)]
    _restore(runner, lines)


def names(runner: Runner) -> list[str]:
    """Every set's name (``ipset list -n``)."""
    return _run(runner, ["list", "-n"]).split()


def destroy(runner: Runner, doomed: Iterable[str]) -> None:
    """Destroy these sets (no rule may reference them any more)."""
    _restore(runner, [f"destroy {name}" for name in doomed])


def destroy_stale(runner: Runner, pattern: str, keep: Iterable[str] = ()) -> list[str]:
    """Destroy every set whose whole name matches `pattern`, except `keep`; the names destroyed."""
    keep = set(keep)
    doomed = [n for n in names(runner) if re.fullmatch(pattern, n) and n not in keep]
    destroy(runner, doomed)
    return doomed


def available(runner: Runner = subprocess.run) -> str | None:
    """None when the ``ipset`` command works here, else why not (one line)."""
    try:
        names(runner)
    except RulesError as e:
        return str(e)
    return None
