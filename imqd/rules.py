"""imqd's NFQUEUE rules: its own chains in table mangle, for iptables and ip6tables.

Layout (per family)::

    mangle IMQD_INGRESS   NFQUEUE rule(s), one per input interface when restricted (else ``! -i lo``)
    mangle IMQD_EGRESS    NFQUEUE rule(s), one per output interface when restricted (else ``! -o lo``)
                          with address sets (`RuleOptions.ingress_sets` / ``egress_sets``): each of those once per
                          address field, ``-m set --match-set imqd-q<N>-<direction>-<dst|src><4|6> <dst|src>``
    FORWARD     -m comment --comment imqd -j IMQD_INGRESS      (ingress_hook after-nat, the default: forwarded)
    INPUT       -m comment --comment imqd -j IMQD_INGRESS      (after-nat: traffic to the router itself)
    PREROUTING  -m comment --comment imqd -j IMQD_INGRESS      (ingress_hook prerouting: before de-NAT)
    POSTROUTING -m comment --comment imqd -j IMQD_EGRESS       (always: mangle -150 runs before SNAT at 100)

Where ingress is taken decides which addresses a class sees (docs/architecture.md, "Hook placement").  The IMQ
patch registered its hook at PREROUTING priority NF_IP_PRI_NAT_DST + 1 (-99) in its default behaviour AB ("after
NAT on PREROUTING, before NAT on POSTROUTING"), and at NF_IP_PRI_MANGLE + 1 (-149) with BA/BB; egress at
POSTROUTING NF_IP_PRI_NAT_SRC - 1 (99) with AB/BB, NF_IP_PRI_LAST with AA/BA.  iptables cannot place a chain at
PREROUTING after nat (-100): its tables there are raw (-300), mangle (-150) and nat (-100, whose chains are walked
only until a connection has its NAT binding, normally its first packet).  The chains that run after de-NAT for every packet are mangle FORWARD and INPUT,
so ``after-nat`` jumps from there: a masqueraded download is addressed to the internal host, as under IMQ's AB.
``prerouting`` is IMQ's BA/BB: the reply is still addressed to the router's public address.  Egress after SNAT
(IMQ's AA/BA) cannot be built: no iptables table sees every packet at POSTROUTING after nat (100), see
`IMQ_BEHAVIOURS`.

The worker tells ingress from egress by netfilterqueue's ``packet.hook`` (the NF_INET_* number):
0 PREROUTING, 1 INPUT, 2 FORWARD = ingress; 3 OUTPUT, 4 POSTROUTING = egress (`INGRESS_HOOKS`, `EGRESS_HOOKS`).

Loopback is excluded when no interface is named: shaping ``lo`` is never wanted and would delay imqd's own API.
Jumps are appended to the built-in chains, so the router's own mangle rules (e.g. MARKs used for
classification) run first.  NFQUEUE is terminal: a re-injected packet continues at the next hook, not at the next
rule, so rules appended after imqd's jump in the same chain do not see queued packets.

`apply` is idempotent and atomic per family: it reads ``iptables-save -t mangle`` and feeds one
``iptables-restore --noflush`` transaction that declares the two chains (which flushes them if they exist),
refills them, deletes stale imqd jumps (those with the ``imqd`` comment) and appends missing ones.  With the
nf_tables backend that is one netlink transaction, with the legacy backend one table replacement: packets never
see a half-built chain, and nothing that is not imqd's is touched (jumps into imqd's chains without the comment
are left alone).  `remove` deletes imqd's chains and every jump into them the same way.  `read_nat` reads the
nat table (never changes it) for the placement checks of :mod:`imqd.hook_checks`.

Every function that runs tools takes a ``runner`` with ``subprocess.run``'s signature (called with
``input=, capture_output=True, text=True, check=False``), so the same code works in a namespace
(``Topology.runner(ns)``) and in unit tests.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imqd.address_sets import FIELDS, SetKey, SetPlan, set_name, set_prefix

if TYPE_CHECKING:
    from imqd.config import Config

__all__ = [
    "RuleOptions",
    "RulesError",
    "parse_queues",
    "parse_ingress_hook",
    "installed_ingress_hook",
    "read_nat",
    "build_rules",
    "for_config",
    "render_restore",
    "apply",
    "remove",
    "show",
    "INGRESS_CHAIN",
    "EGRESS_CHAIN",
    "INGRESS_HOOKS",
    "EGRESS_HOOKS",
    "HOOK_NAMES",
    "INGRESS_PLACEMENTS",
    "FAMILIES",
]

TABLE = "mangle"
INGRESS_CHAIN = "IMQD_INGRESS"
EGRESS_CHAIN = "IMQD_EGRESS"
CHAINS = (INGRESS_CHAIN, EGRESS_CHAIN)
COMMENT = "imqd"
POLICIES = ("flow", "cpu")
# netfilter NF_INET_* hook numbers as reported by netfilterqueue's packet.hook
HOOK_PREROUTING, HOOK_INPUT, HOOK_FORWARD, HOOK_OUTPUT, HOOK_POSTROUTING = range(5)
INGRESS_HOOKS = frozenset({HOOK_PREROUTING, HOOK_INPUT, HOOK_FORWARD})
EGRESS_HOOKS = frozenset({HOOK_OUTPUT, HOOK_POSTROUTING})
HOOK_NAMES = ("prerouting", "input", "forward", "output", "postrouting")  # by NF_INET_* number
# Where the ingress jump is taken: after-nat (the default, IMQ's AB) or prerouting (IMQ's BA/BB): built-in chains.
INGRESS_PLACEMENTS: dict[str, tuple[str, ...]] = {"after-nat": ("FORWARD", "INPUT"), "prerouting": ("PREROUTING",)}
DEFAULT_INGRESS_HOOK = "after-nat"
# IMQ's CONFIG_IMQ_BEHAVIOR_XY: X = ingress (PREROUTING) after (A) or before (B) NAT, Y = egress (POSTROUTING).
# imqd's egress is always before SNAT (mangle POSTROUTING, -150): after SNAT (NF_IP_PRI_LAST) no iptables table sees
# every packet -- nat POSTROUTING (100) is walked only until a connection has its NAT binding, and an NFQUEUE there
# before MASQUERADE keeps the binding from being made (tests/integration/test_rules.py) -- so AA and BA are refused.
IMQ_BEHAVIOURS: dict[str, str | None] = {"AB": "after-nat", "BB": "prerouting", "AA": None, "BA": None}
# family -> (iptables, iptables-save, iptables-restore)
FAMILIES: dict[str, tuple[str, str, str]] = {
    "ipv4": ("iptables", "iptables-save", "iptables-restore"),
    "ipv6": ("ip6tables", "ip6tables-save", "ip6tables-restore"),
}
_IFACE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]*\+?")
_JUMP_FLAGS = frozenset({"-j", "--jump", "-g", "--goto"})
_INSTALL_HINT = "install the iptables package (Debian: apt-get install iptables)"
_CAP_HINT = "managing imqd's rules needs CAP_NET_ADMIN (run as root)"

Runner = Callable[..., Any]


class RulesError(RuntimeError):
    """iptables is missing, the kernel lacks support, or permissions are insufficient; the message is one line."""


def _check_queue(flag: str, value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError(f"{flag}: queue number {value} out of range 0..65535")
    return value


def parse_queues(text: str, flag: str = "--queues") -> tuple[int, int]:
    """``"0:3"`` -> (0, 3), ``"2"`` -> (2, 2); ValueError naming `flag` on anything else."""
    if not isinstance(text, str):
        raise ValueError(f"{flag}: expected 'N' or 'FIRST:LAST', got {text!r}")
    parts = text.strip().split(":")
    if len(parts) > 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"{flag}: expected 'N' or 'FIRST:LAST' with numbers 0..65535, got {text!r}")
    first, last = (int(parts[0]), int(parts[-1]))
    _check_queue(flag, first)
    _check_queue(flag, last)
    if first > last:
        raise ValueError(f"{flag}: first queue {first} is greater than last {last} in {text!r}")
    return first, last


def parse_ingress_hook(text: str, flag: str = "--ingress-hook") -> str:
    """``after-nat`` / ``prerouting`` (or IMQ's behaviour names ``AB`` / ``BB``) -> the placement; ValueError
    naming `flag` otherwise, and saying why for IMQ's ``AA`` / ``BA`` (egress after SNAT)."""
    value = text.strip().lower() if isinstance(text, str) else text
    if value in INGRESS_PLACEMENTS:
        return value
    if isinstance(value, str) and value.upper() in IMQ_BEHAVIOURS:
        placement = IMQ_BEHAVIOURS[value.upper()]
        if placement is None:
            raise ValueError(
                f"{flag} {text}: IMQ's behaviour {value.upper()} shapes egress after SNAT, which iptables cannot "
                "do (no table sees every packet at POSTROUTING after nat; nat POSTROUTING is walked only until a "
                "connection has its NAT binding); imqd's egress is always before SNAT: use AB (after-nat) or BB "
                "(prerouting)")
        return placement
    raise ValueError(f"{flag}: expected one of {', '.join(INGRESS_PLACEMENTS)} (or IMQ's AB, BB), got {text!r}")


def _check_ifaces(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise ValueError(f"{name}: expected a tuple of interface names, got {value!r}")
    for iface in value:
        if not isinstance(iface, str) or not 1 <= len(iface) <= 15 or not _IFACE_RE.fullmatch(iface):
            raise ValueError(
                f"{name}: bad interface name {iface!r} (1-15 chars, letters/digits/_.:@-, '+' wildcard at end)"
            )
    if len(set(value)) != len(value):
        raise ValueError(f"{name}: duplicate interface names in {tuple(value)!r}")
    return tuple(value)


@dataclass(frozen=True)
class RuleOptions:
    """What to queue where.  `policy` flow = ``--queue-balance`` (hash of src, dst, proto: a host pair stays on one
    queue), cpu = ``--queue-balance A:B --queue-cpu-fanout`` (queue by CPU; iptables requires the balance range).
    A single queue always becomes ``--queue-num N``.  `bypass` = fail open when no worker listens."""

    queues: tuple[int, int]
    policy: str = "flow"
    bypass: bool = True
    in_ifaces: tuple[str, ...] = ()
    out_ifaces: tuple[str, ...] = ()
    ingress_hook: str = DEFAULT_INGRESS_HOOK  # after-nat: mangle FORWARD + INPUT; prerouting: mangle PREROUTING
    ipv6: bool = True
    ingress: bool = True  # False: queue nothing for the ingress tree (it has no classes); its chain stays empty
    egress: bool = True
    # match the classes' prefixes through ipsets (imqd.address_sets): queue only what a class can take
    ingress_sets: bool = False
    egress_sets: bool = False

    def __post_init__(self) -> None:
        q = self.queues
        if (
            not isinstance(q, (tuple, list))
            or len(q) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in q)
        ):
            raise ValueError(f"queues: expected (first, last) ints, got {q!r}")
        _check_queue("queues", q[0])
        _check_queue("queues", q[1])
        if q[0] > q[1]:
            raise ValueError(f"queues: first {q[0]} is greater than last {q[1]}")
        object.__setattr__(self, "queues", (q[0], q[1]))
        if self.policy not in POLICIES:
            raise ValueError(f"policy: expected one of {POLICIES}, got {self.policy!r}")
        if self.ingress_hook not in INGRESS_PLACEMENTS:
            raise ValueError(f"ingress_hook: expected one of {tuple(INGRESS_PLACEMENTS)}, got {self.ingress_hook!r}")
        for name in ("bypass", "ipv6", "ingress", "egress", "ingress_sets", "egress_sets"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "in_ifaces", _check_ifaces("in_ifaces", self.in_ifaces))
        object.__setattr__(self, "out_ifaces", _check_ifaces("out_ifaces", self.out_ifaces))


def _nfqueue_target(opts: RuleOptions) -> list[str]:
    """The NFQUEUE target in iptables-save's own option order (so saved rules compare equal)."""
    first, last = opts.queues
    if first == last:
        argv = ["-j", "NFQUEUE", "--queue-num", str(first)]
    else:
        argv = ["-j", "NFQUEUE", "--queue-balance", f"{first}:{last}"]
    if opts.bypass:
        argv.append("--queue-bypass")
    if opts.policy == "cpu" and first != last:
        argv.append("--queue-cpu-fanout")
    return argv


def _jump_hooks(opts: RuleOptions) -> list[tuple[str, str]]:
    ingress = INGRESS_PLACEMENTS[opts.ingress_hook]
    return [(hook, INGRESS_CHAIN) for hook in ingress] + [("POSTROUTING", EGRESS_CHAIN)]


def _family_rules(opts: RuleOptions, family: str = "ipv4") -> list[list[str]]:
    """Rules without ``-t mangle``: chain creation, chain contents, then the jumps."""
    target = _nfqueue_target(opts)
    rules: list[list[str]] = [["-N", INGRESS_CHAIN], ["-N", EGRESS_CHAIN]]
    fam = 6 if family == "ipv6" else 4
    for direction, chain, flag, ifaces, wanted, sets in (
            ("ingress", INGRESS_CHAIN, "-i", opts.in_ifaces, opts.ingress, opts.ingress_sets),
            ("egress", EGRESS_CHAIN, "-o", opts.out_ifaces, opts.egress, opts.egress_sets)):
        if not wanted:
            continue
        where = [[flag, iface] for iface in ifaces] or [["!", flag, "lo"]]
        matches = [["-m", "set", "--match-set", set_name(set_prefix(opts.queues[0]), SetKey(direction, f, fam)), f]
                   for f in FIELDS] if sets else [[]]
        rules += [["-A", chain, *w, *m, *target] for w in where for m in matches]
    rules += [["-A", hook, "-m", "comment", "--comment", COMMENT, "-j", chain] for hook, chain in _jump_hooks(opts)]
    return rules


def for_config(base: RuleOptions, config: Config, plans: dict[str, SetPlan] | None = None) -> RuleOptions:
    """``base`` narrowed to the packets ``config``'s classes can take -- what ``imqd run --apply-rules`` installs.

    A packet no class can match would only cross the NFQUEUE path to be accepted unshaped, so it is not
    queued: like IMQ's ``iptables ... -i eth0 -j IMQ``, only the interfaces the classes name are.  Per
    direction: no classes -> nothing queued; a default class, or a matching class that names no interface
    (``iif`` for ingress, ``oif`` for egress) -> every interface but lo; else exactly the named interfaces.
    Interfaces given in ``base`` (``--in-iface``/``--out-iface``) are the operator's choice and kept.
    A forwarded packet shaped in one direction then crosses the queue once instead of twice.
    With `plans` (:func:`imqd.address_sets.plan` per direction), a direction whose plan has members also
    matches the classes' prefixes through its address sets.
    """
    changes: dict[str, Any] = {}
    for direction, field, given in (("ingress", "iif", base.in_ifaces), ("egress", "oif", base.out_ifaces)):
        ifaces_key = "in_ifaces" if direction == "ingress" else "out_ifaces"
        matching = config.matching_leaves(direction)
        has_default = config.default_class(direction) is not None
        if not matching and not has_default:
            changes[direction] = changes[f"{direction}_sets"] = False
            changes[ifaces_key] = ()
            continue
        plan = (plans or {}).get(direction)
        changes[direction] = True
        changes[f"{direction}_sets"] = plan is not None and plan.members is not None
        if given or has_default:
            continue
        names = [getattr(c.match, field) for c in matching]
        if all(names):
            changes[ifaces_key] = tuple(dict.fromkeys(n for n in names if n))
    return dataclasses.replace(base, **changes)


def build_rules(opts: RuleOptions) -> dict[str, list[list[str]]]:
    """Per family (``"ipv4"``, and ``"ipv6"`` unless disabled): argv lists (without the binary) that, run in order
    on a table without imqd's chains, install imqd's rules."""
    families = ["ipv4", "ipv6"] if opts.ipv6 else ["ipv4"]
    return {fam: [["-t", TABLE, *r] for r in _family_rules(opts, fam)] for fam in families}


def _line(argv: Sequence[str]) -> str:
    """One argv as an iptables-save line (iptables quotes with double quotes)."""
    return " ".join(a if a and not re.search(r"[\s\"'\\]", a) else '"' + a.replace('"', '\\"') + '"' for a in argv)


def render_restore(opts: RuleOptions, family: str = "ipv4") -> str:
    """imqd's rules in iptables-restore format, with comments; loaded with ``iptables-restore --noflush``."""
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {tuple(FAMILIES)}, got {family!r}")
    tool, _, restore = FAMILIES[family]
    first, last = opts.queues
    where_in = ", ".join(opts.in_ifaces) or "all but lo" if opts.ingress else "none"
    where_out = ", ".join(opts.out_ifaces) or "all but lo" if opts.egress else "none"
    other = next(h for h in INGRESS_PLACEMENTS if h != opts.ingress_hook)
    pri = "NF_IP6_PRI" if family == "ipv6" else "NF_IP_PRI"
    out = [
        f"# imqd NFQUEUE rules for {tool} (table mangle).",
        "# Generated by imqd.rules.render_restore -- do not edit; regenerate instead.",
        f"# Options: queues {first}:{last}, policy {opts.policy}, "
        f"bypass {'on (fail open)' if opts.bypass else 'off (fail closed)'},",
        f"#          ingress interfaces {where_in}, egress interfaces {where_out}, ingress hook {opts.ingress_hook}.",
        "#",
        f"# Load:   {restore} --noflush < this-file   (adds to the existing rules, flushes nothing else)",
        "# Better: `imqd rules apply` -- idempotent; loading this file twice would add the jumps twice.",
        "# Remove: `imqd rules remove` -- deletes only imqd's jumps and chains.",
        "#",
        "# Which addresses each direction sees (IMQ's default behaviour AB: ingress after NAT on PREROUTING,",
        f"# priority {pri}_NAT_DST + 1 = -99; egress before NAT on POSTROUTING, {pri}_NAT_SRC - 1 = 99):",
        "# * ingress after-nat (default, IMQ's AB): mangle FORWARD and INPUT (-150) run after the de-NAT of",
        "#   replies (nat PREROUTING, -100) and after routing: a masqueraded download is addressed to the",
        "#   internal host, a port-forwarded (DNAT) connection to the internal server, traffic to the router",
        "#   itself to the router.  mangle FORWARD runs before filter FORWARD (0): a packet the firewall drops",
        "#   later has been shaped (and charged) first, as under IMQ.",
        "# * ingress prerouting (IMQ's BA/BB, `--ingress-hook prerouting`): mangle PREROUTING (-150) runs before",
        "#   de-NAT: a masqueraded download is still addressed to the router's public address there.",
        "# * egress: mangle POSTROUTING (-150) runs before SNAT (nat POSTROUTING, 100): an upload still carries",
        "#   the internal source address; the router's own packets (OUTPUT) are queued here too.  Egress after",
        "#   SNAT (IMQ's AA/BA) cannot be built with iptables: no table sees every packet at POSTROUTING after",
        "#   nat (nat POSTROUTING is walked only until a connection has its NAT binding).",
        "# The worker tells the direction by packet.hook: 0 PREROUTING, 1 INPUT, 2 FORWARD = ingress;",
        "# 3 OUTPUT, 4 POSTROUTING = egress.",
        "*mangle",
    ]
    rules = _family_rules(opts, family)
    jumps = [r for r in rules if r[0] == "-A" and r[1] not in CHAINS]
    alt = _family_rules(dataclasses.replace(opts, ingress_hook=other), family)
    out += [f":{r[1]} - [0:0]" for r in rules if r[0] == "-N"]
    out += [_line(r) for r in rules if r[0] == "-A" and r[1] in CHAINS]
    out += [_line(r) for r in jumps if r[-1] == INGRESS_CHAIN]
    out.append(f"# Ingress hook {other} instead: replace the line(s) above with")
    out += ["# " + _line(r) for r in alt if r[0] == "-A" and r[1] not in CHAINS and r[-1] == INGRESS_CHAIN]
    out += [_line(r) for r in jumps if r[-1] == EGRESS_CHAIN]
    out.append("COMMIT")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- running iptables
def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Try `")]
    return lines[0] if lines else "(no message)"


def _explain(tool: str, stderr: str, returncode: int) -> str:
    """Turn iptables' stderr into one actionable line."""
    low = stderr.lower()
    if "exec of" in low and "no such file" in low:
        return f"{tool} not found: {_INSTALL_HINT}"
    if "permission denied" in low or "operation not permitted" in low or "must be root" in low:
        return f"{tool}: permission denied -- {_CAP_HINT}"
    if "nfqueue" in low and any(
        s in low for s in ("couldn't load", "not supported", "no such file", "unknown", "missing kernel module")
    ):
        return (
            f"{tool}: the kernel lacks NFQUEUE support (needs CONFIG_NETFILTER_XT_TARGET_NFQUEUE and "
            "CONFIG_NETFILTER_NETLINK_QUEUE, or modprobe xt_NFQUEUE nfnetlink_queue)"
        )
    if "address family not supported" in low:
        return f"{tool}: this kernel has no IPv6 netfilter support -- disable IPv6 rules (ipv6=False)"
    if "table does not exist" in low or "can't initialize" in low:
        return f"{tool}: the kernel lacks the mangle table (CONFIG_IP_NF_MANGLE / iptable_mangle): {_one_line(stderr)}"
    return f"{tool} failed (exit {returncode}): {_one_line(stderr)}"


def _run(runner: Runner, argv: list[str], stdin: str | None = None) -> str:
    try:
        res = runner(argv, input=stdin, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RulesError(f"{argv[0]} not found: {_INSTALL_HINT}") from None
    except PermissionError as e:
        raise RulesError(f"{argv[0]}: {e.strerror} -- {_CAP_HINT}") from None
    if res.returncode != 0:
        raise RulesError(_explain(argv[0], res.stderr or "", res.returncode))
    return res.stdout or ""


def _jump_target(line: str) -> str | None:
    """The imqd chain a saved ``-A`` rule in another chain jumps/goes to, if any."""
    if not line.startswith("-A ") or line.split(None, 2)[1] in CHAINS:
        return None
    try:
        tokens = shlex.split(line)
    except ValueError:
        return None
    for flag, arg in zip(tokens, tokens[1:]):
        if flag in _JUMP_FLAGS and arg in CHAINS:
            return arg
    return None


def _is_imqds(line: str) -> bool:
    """A jump imqd made itself: it carries ``-m comment --comment imqd``."""
    tokens = shlex.split(line)
    return any(a == "--comment" and b == COMMENT for a, b in zip(tokens, tokens[1:]))


def _state(saved: str) -> tuple[list[str], list[str]]:
    """(imqd chains present, lines of rules in other chains that jump to them) from ``iptables-save -t mangle``."""
    chains = [ln[1:].split()[0] for ln in saved.splitlines() if ln.startswith(":") and ln[1:].split()[0] in CHAINS]
    jumps = [ln for ln in saved.splitlines() if _jump_target(ln)]
    return chains, jumps


def _restore(runner: Runner, family: str, lines: list[str]) -> None:
    _, _, restore = FAMILIES[family]
    _run(runner, [restore, "--noflush"], "\n".join(["*" + TABLE, *lines, "COMMIT", ""]))


def _save(runner: Runner, family: str, counters: bool = False) -> str:
    _, save, _ = FAMILIES[family]
    return _run(runner, [save, *(["-c"] if counters else []), "-t", TABLE])


def _plan_apply(runner: Runner, family: str, opts: RuleOptions) -> list[str]:
    """restore lines that turn the current table into `opts`: declare (= flush) our chains, fix jumps, refill."""
    # only jumps imqd made are managed here; someone's own jump into imqd's chains stays (remove deletes it)
    jumps = [j for j in _state(_save(runner, family))[1] if _is_imqds(j)]
    rules = _family_rules(opts, family)
    wanted = [_line(r) for r in rules if r[0] == "-A" and r[1] not in CHAINS]
    lines = [f":{chain} - [0:0]" for chain in CHAINS]  # declaring an existing user chain flushes it
    kept: set[str] = set()
    for jump in jumps:
        if jump in wanted and jump not in kept:
            kept.add(jump)
        else:
            lines.append("-D" + jump[2:])
    lines += [_line(r) for r in rules if r[0] == "-A" and r[1] in CHAINS]
    lines += [w for w in wanted if w not in kept]
    return lines


def _remove_family(runner: Runner, family: str) -> bool:
    chains, jumps = _state(_save(runner, family))
    if not chains and not jumps:
        return False  # nothing of ours: run nothing, so not even an empty table gets created
    lines = ["-D" + j[2:] for j in jumps]
    lines += [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains]
    _restore(runner, family, lines)
    return True


def _tolerable_v6(err: RulesError) -> bool:
    """ip6tables missing or IPv6 off in the kernel: nothing of ours can be there, so remove may skip it."""
    msg = str(err)
    return "not found" in msg or "no IPv6" in msg


def apply(opts: RuleOptions, runner: Runner = subprocess.run) -> None:
    """Make imqd's rules exactly match `opts` (idempotent, atomic per family; see the module docstring).

    With ``opts.ipv6`` False, imqd rules left in ip6tables are removed (skipped if ip6tables is unavailable).
    """
    families = ["ipv4", "ipv6"] if opts.ipv6 else ["ipv4"]
    plans = [(family, _plan_apply(runner, family, opts)) for family in families]  # both readable before any change
    for family, lines in plans:
        _restore(runner, family, lines)
    if not opts.ipv6:
        try:
            _remove_family(runner, "ipv6")
        except RulesError as e:
            if not _tolerable_v6(e):
                raise


def remove(runner: Runner = subprocess.run, *, ipv6: bool = True) -> None:
    """Delete imqd's jumps and chains (nothing else); IPv6 is skipped if ip6tables or kernel IPv6 is missing."""
    _remove_family(runner, "ipv4")
    if ipv6:
        try:
            _remove_family(runner, "ipv6")
        except RulesError as e:
            if not _tolerable_v6(e):
                raise


def show(runner: Runner = subprocess.run, *, ipv6: bool = True) -> str:
    """imqd's chains, rules and jumps per family as ``iptables-save -c`` lines (``[packets:bytes] -A ...``)."""
    out: list[str] = []
    for family in ("ipv4", "ipv6") if ipv6 else ("ipv4",):
        tool = FAMILIES[family][0]
        try:
            saved = _save(runner, family, counters=True)
        except RulesError as e:
            if family == "ipv6" and _tolerable_v6(e):
                out += [f"# {family} ({tool}): unavailable -- {e}"]
                continue
            raise
        mine = []
        for ln in saved.splitlines():
            rule = ln.split("] ", 1)[1] if ln.startswith("[") and "] " in ln else ln
            if (ln.startswith(":") and ln[1:].split()[0] in CHAINS) or _jump_target(rule) or (
                rule.startswith("-A ") and rule.split()[1] in CHAINS
            ):
                mine.append(ln)
        out.append(f"# {family} ({tool} -t {TABLE})")
        out += mine or ["# (no imqd rules)"]
    return "\n".join(out) + "\n"


def installed_ingress_hook(runner: Runner = subprocess.run) -> str | None:
    """Where the IPv4 mangle table jumps to IMQD_INGRESS now: ``prerouting``, ``after-nat``, or None (no jump).

    For ``imqd run`` without ``--apply-rules``, whose placement is whatever ``imqd rules apply`` (or the operator)
    installed.  A jump from PREROUTING wins: packets are queued there before de-NAT, whatever else exists."""
    chains = {ln.split()[1] for ln in _state(_save(runner, "ipv4"))[1] if _jump_target(ln) == INGRESS_CHAIN}
    if "PREROUTING" in chains:
        return "prerouting"
    return "after-nat" if chains & set(INGRESS_PLACEMENTS["after-nat"]) else None


def _table_section(saved: str, table: str) -> str:
    """The ``*table`` ... ``COMMIT`` block of an ``iptables-save`` dump ("" if the table is not there)."""
    lines = saved.splitlines()
    try:
        start = lines.index("*" + table)
    except ValueError:
        return ""
    end = next((i for i in range(start, len(lines)) if lines[i] == "COMMIT"), len(lines))
    return "\n".join(lines[start:end + 1]) + "\n"


def read_nat(runner: Runner = subprocess.run, *, ipv6: bool = True) -> dict[str, str]:
    """Per family, the nat table as ``iptables-save`` prints it ("" when there is none); read-only.

    Runs ``iptables-save`` without ``-t``: that lists the tables that exist, whereas ``-t nat`` would, with the
    legacy backend, load iptable_nat and create an empty nat table just by asking.  A missing ip6tables or an
    IPv6-less kernel gives "" for ipv6."""
    out: dict[str, str] = {}
    for family in ("ipv4", "ipv6") if ipv6 else ("ipv4",):
        try:
            saved = _run(runner, [FAMILIES[family][1]])
        except RulesError as e:
            if family == "ipv6" and _tolerable_v6(e):
                out[family] = ""
                continue
            raise
        out[family] = _table_section(saved, "nat")
    return out
