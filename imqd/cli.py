"""The ``imqd`` command line: run the shaper, manage its rules, talk to its API.

Every operator mistake (bad flag, bad config, busy queue, no permission)
ends in one line on stderr and a non-zero exit code -- never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from imqd.config import Config, ConfigError
from imqd.kernel_queues import DEFAULT_HELD_MAX, SOCKET_MESSAGES_MAX

EXIT_USAGE = 2
EXIT_FAIL = 1
MIN_IDLE_TICK_US = 100  # below this the "idle" worker would be busy-waiting
MAX_IDLE_TICK_US = 250_000  # the worker wakes that often anyway (MAX_SLEEP_S)


class CliError(Exception):
    """A problem to report to the operator in one line."""


# -- argument types ----------------------------------------------------------
def queues_arg(text: str) -> tuple[int, int]:
    from imqd.rules import parse_queues

    try:
        return parse_queues(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def host_port_arg(text: str) -> tuple[str, int] | None:
    if text.lower() in ("none", "off", ""):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"--api {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8000, or 'none'")
    try:
        port_no = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--api {text!r}: port {port!r} is not a number") from None
    if not 0 < port_no < 65536:
        raise argparse.ArgumentTypeError(f"--api {text!r}: port {port_no} is out of range 1-65535")
    return host.strip("[]"), port_no


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


# -- parser ------------------------------------------------------------------
def add_rule_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queues", type=queues_arg, default=None,
                   help="NFQUEUE numbers, e.g. 0:3 (env IMQD_QUEUES)")
    p.add_argument("--policy", choices=("flow", "cpu"), default="flow",
                   help="flow: --queue-balance by (src,dst,proto) hash; cpu: --queue-cpu-fanout")
    p.add_argument("--in-iface", action="append", default=[], metavar="IF",
                   help="shape ingress only from this interface (repeatable)")
    p.add_argument("--out-iface", action="append", default=[], metavar="IF",
                   help="shape egress only to this interface (repeatable)")
    add_ingress_hook_options(p)
    p.add_argument("--fail-closed", action="store_true",
                   help="drop packets when no worker is bound (default: pass them, --queue-bypass)")
    p.add_argument("--no-ipv6", action="store_true", help="do not install ip6tables rules")


def ingress_hook_arg(text: str) -> str:
    from imqd.rules import parse_ingress_hook

    try:
        return parse_ingress_hook(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_ingress_hook_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ingress-hook", type=ingress_hook_arg, default=None, metavar="after-nat|prerouting",
                   help="where ingress is queued: after-nat (default; mangle FORWARD/INPUT, after de-NAT: a "
                        "masqueraded download is addressed to the internal host, like IMQ's default AB) or "
                        "prerouting (mangle PREROUTING, before de-NAT: IMQ's BA/BB); IMQ's names AB/BB accepted "
                        "(env IMQD_INGRESS_HOOK)")
    p.add_argument("--nat", action="store_true", help="deprecated: ingress after de-NAT is the default now")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imqd", description="IMQ-style traffic shaper (NFQUEUE + HTB)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start one worker per queue (and the API)")
    add_rule_options(run)
    run.add_argument("--config", type=Path, default=None, help="YAML class tree (env IMQD_CONFIG)")
    run.add_argument("--api", default=None, help="HOST:PORT of the REST API, or 'none' (env IMQD_API; "
                                                  "default 127.0.0.1:8000)")
    run.add_argument("--token-file", type=Path, default=None, help="bearer token for writes (env IMQD_TOKEN_FILE)")
    run.add_argument("--open-stats", action="store_true", help="allow reads without a token on a public address")
    run.add_argument("--apply-rules", action="store_true",
                     help="install the NFQUEUE rules at start (only for the interfaces the classes name, "
                          "kept current as classes change) and remove them at exit")
    run.add_argument("--no-address-sets", action="store_true",
                     help="with --apply-rules, queue every packet of a shaped direction (on the interfaces the "
                          "classes name) even when all its classes name addresses (default: only packets to or "
                          "from their prefixes, matched through ipsets)")
    run.add_argument("--max-len", type=int, default=20000,
                     help="kernel queue length per worker: packets it holds plus those not yet read; each pins "
                          "its packet's memory, up to ~64 KB for a GSO super-packet (default 20000)")
    run.add_argument("--max-held", type=int, default=DEFAULT_HELD_MAX, metavar="N",
                     help="packets a worker's classes may hold together; when many are backlogged each may hold "
                          "up to the room left, so the longest queues drop first (default %(default)s: this "
                          "kernel holds at most 65536 per queue, and unread packets count too)")
    run.add_argument("--on-overflow", choices=("drop", "accept"), default="drop",
                     help="a packet that finds its worker's kernel queue or socket full: 'drop' it (default), "
                          "or 'accept' it unshaped (NFQA_CFG_F_FAIL_OPEN)")
    run.add_argument("--no-gso", action="store_true",
                     help="let the kernel cut GSO/GRO super-packets into MTU-sized packets before queueing them "
                          "(one verdict each: much slower; for kernels or NICs where whole super-packets misbehave)")
    run.add_argument("--copy-range", type=int, default=128, help="bytes of each packet copied to the worker")
    run.add_argument("--idle-tick", type=int, default=1000, metavar="USEC",
                     help="while traffic flows, wake an idle worker every USEC microseconds so the next packet "
                          "finds the CPU and the code warm (less latency at light load; 0 = off; default 1000)")
    run.add_argument("--cpu-latency", type=int, default=None, metavar="USEC",
                     help="while running, keep every CPU able to wake within USEC microseconds (a PM QoS "
                          "request on /dev/cpu_dma_latency; 0 = idle CPUs poll): less latency at light load "
                          "for more power (env IMQD_CPU_LATENCY; default: no request)")

    run.add_argument("--realtime", type=int, default=None, metavar="PRIO",
                     help="run the workers SCHED_FIFO at priority PRIO (1-99) so held packets leave on time: "
                          "less jitter, less standing queue under TCP load; needs CAP_SYS_NICE (or RLIMIT_RTPRIO) "
                          "and the kernel's real-time throttling on (env IMQD_REALTIME; default 0: normal "
                          "scheduling)")

    rules = sub.add_parser("rules", help="install, remove or show imqd's iptables rules")
    rules.add_argument("action", choices=("apply", "remove", "show"))
    add_rule_options(rules)

    tok = sub.add_parser("token", help="write a new random API bearer token to FILE (mode 600)")
    tok.add_argument("file", type=Path)

    check = sub.add_parser("check-config", help="validate a config file (and whether the ingress hook can see "
                                                 "the addresses its classes name, given the nat table) and exit")
    check.add_argument("config", type=Path)
    add_ingress_hook_options(check)

    lab = sub.add_parser("lab", help="build client-router-server namespaces and show shaping live")
    lab.add_argument("--seconds", type=int, default=10)
    lab.add_argument("--rate", default="20mbit", help="rate of the demo class")
    lab.add_argument("--queues", type=queues_arg, default=(0, 1))

    for name, helptext in (("class", "list, add, change or delete classes through the API"),):
        cp = sub.add_parser(name, help=helptext)
        cp.add_argument("action", choices=("list", "show", "add", "change", "delete"))
        cp.add_argument("name", nargs="?")
        cp.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="field to set (match.dport=5001 for match fields), repeatable")
        cp.add_argument("--json", dest="body", default=None, help="the whole class as JSON")
        add_client_options(cp)
    st = sub.add_parser("stats", help="per-class and per-worker statistics from the API")
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    st.add_argument("--top", type=positive_int, metavar="N", help="only the N classes with the highest rate now")
    st.add_argument("--parent", metavar="NAME", help="only the children of class NAME")
    st.add_argument("--class", dest="classes", action="append", metavar="NAME",
                    help="only class NAME (repeatable)")
    add_client_options(st)
    en = sub.add_parser("enable", help="switch shaping on (on) or off (off)")
    en.add_argument("state", choices=("on", "off"))
    add_client_options(en)
    imp = sub.add_parser("import", help="import subscribers from a LibreQoS ShapedDevices.csv through the API: "
                                        "one download and one upload class per circuit")
    imp.add_argument("file", type=Path, help="the CSV table")
    imp.add_argument("--prefix", default=None, help="name prefix of the imported classes (default sub-); a "
                                                   "re-import replaces exactly the classes with this prefix")
    imp.add_argument("--parent", default=None, metavar="NODE",
                     help="Parent Node for rows that name none (its classes NODE-down and NODE-up must exist)")
    imp.add_argument("--dry-run", action="store_true", help="check the table and say what would change")
    add_client_options(imp)
    return parser


def positive_int(text: str) -> int:
    """argparse type for ``--top``: a whole number of at least 1, or a message naming what is wrong."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", default=None, help="HOST:PORT of a running imqd (env IMQD_API)")
    p.add_argument("--token-file", type=Path, default=None)


# -- commands ----------------------------------------------------------------
def ingress_hook(args: argparse.Namespace) -> str:
    """The ingress placement from ``--ingress-hook``, IMQD_INGRESS_HOOK or the deprecated ``--nat``."""
    from imqd.rules import DEFAULT_INGRESS_HOOK, parse_ingress_hook

    hook = args.ingress_hook
    if hook is None and (text := env("IMQD_INGRESS_HOOK")) is not None:
        try:
            hook = parse_ingress_hook(text, "IMQD_INGRESS_HOOK")
        except ValueError as exc:
            raise CliError(str(exc)) from None
    if args.nat:
        if hook not in (None, "after-nat"):
            raise CliError(f"--nat (ingress after de-NAT) contradicts --ingress-hook {hook}: drop --nat")
        print("imqd: notice: --nat is deprecated: ingress after de-NAT is the default now "
              "(--ingress-hook after-nat); drop the flag", file=sys.stderr)
    return hook or DEFAULT_INGRESS_HOOK


def rule_options(args: argparse.Namespace) -> Any:
    from imqd.rules import RuleOptions

    queues = args.queues
    if queues is None:
        text = env("IMQD_QUEUES")
        if text is None:
            raise CliError("--queues is required (or set IMQD_QUEUES), e.g. --queues 0:3")
        try:
            queues = queues_arg(text)
        except argparse.ArgumentTypeError as exc:
            raise CliError(f"IMQD_QUEUES: {exc}") from None
    try:
        return RuleOptions(queues=queues, policy=args.policy, bypass=not args.fail_closed,
                           in_ifaces=tuple(args.in_iface), out_ifaces=tuple(args.out_iface),
                           ingress_hook=ingress_hook(args), ipv6=not args.no_ipv6)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def load_run_store(path: Path | None) -> tuple[Config, Any]:
    """The configuration ``imqd run`` starts with and the store it was read from (None without a file)."""
    if path is None:
        return Config(), None
    from imqd.journal import ConfigStore
    from imqd.memtrim import trim

    store = ConfigStore(path)
    config = store.load(missing_ok=True)
    trim()  # what parsing the file freed (imqd.memtrim)
    return config, store


def cmd_run(args: argparse.Namespace) -> int:
    from imqd.controller import Controller
    from imqd.rules_follow import RulesFollower
    from imqd.supervisor import Supervisor, SupervisorError

    opts = rule_options(args)  # checks --queues / IMQD_QUEUES and the rule flags
    args.queues = opts.queues
    config_path = args.config or (Path(p) if (p := env("IMQD_CONFIG")) else None)
    try:
        api = host_port_arg(args.api if args.api is not None else env("IMQD_API", "127.0.0.1:8000") or "")
    except argparse.ArgumentTypeError as exc:
        raise CliError(str(exc)) from None
    token_file = args.token_file or (Path(p) if (p := env("IMQD_TOKEN_FILE")) else None)
    from imqd.supervisor import start_forkserver

    start_forkserver()  # the workers' modules load in the fork server meanwhile (no worker starts yet)
    from imqd.memtrim import mmap_large_blocks

    mmap_large_blocks()  # a /metrics answer for 10,000 classes leaves no RSS behind (imqd.memtrim)
    config, store = load_run_store(config_path)  # validated before any rule or worker starts
    if args.max_len < 1:
        raise CliError(f"--max-len {args.max_len}: must be at least 1")
    if args.max_held < 1:
        raise CliError(f"--max-held {args.max_held}: must be at least 1")
    if not 20 <= args.copy_range <= 65535:
        raise CliError(f"--copy-range {args.copy_range}: must be between 20 and 65535 bytes")
    if args.idle_tick != 0 and not MIN_IDLE_TICK_US <= args.idle_tick <= MAX_IDLE_TICK_US:
        raise CliError(f"--idle-tick {args.idle_tick}: must be 0 (off) or between {MIN_IDLE_TICK_US} and "
                       f"{MAX_IDLE_TICK_US:,} microseconds")
    cpu_latency = cpu_latency_arg(args.cpu_latency, env("IMQD_CPU_LATENCY"))
    realtime = realtime_arg(args.realtime, env("IMQD_REALTIME"))
    token = read_token(token_file) if token_file else None
    if api is not None and not is_loopback(api[0]) and token is None:
        raise CliError(f"--api {api[0]}:{api[1]} is not a loopback address: writes need --token-file")

    from imqd.bind_errors import has_net_admin

    if not has_net_admin():
        raise CliError("imqd run needs CAP_NET_ADMIN (NFQUEUE and iptables): run as root or grant the capability")
    checks = start_checks(config, opts, applying=args.apply_rules)  # before the workers: their counters start at 0
    with hold_cpu_latency(cpu_latency):  # released however this ends
        first, last = args.queues
        fail_open = args.on_overflow == "accept"
        sup = Supervisor(list(range(first, last + 1)), config,
                         max_len=kernel_queue_len(config, args.max_len, args.max_held),
                         copy_range=args.copy_range,
                         idle_tick=args.idle_tick / 1e6, gso=not args.no_gso, fail_open=fail_open,
                         held_max=args.max_held, realtime=realtime)
        stop = threading.Event()
        try:
            sup.start()
        except SupervisorError as exc:
            raise CliError(str(exc)) from None
        controller = None
        follow_rules = None
        try:
            if args.apply_rules:  # rules (and address sets) follow every change of the classes
                follow_rules = RulesFollower(opts, address_sets=not args.no_address_sets)
                follow_rules.start(config)

            from imqd.qdisc.htb import ACCELERATED

            logging.getLogger("imqd").info(
                "imqd running: queues %d:%d, %d classes; HTB fast path in %s; GSO super-packets %s; on overflow %s",
                first, last, len(config.classes),
                "C" if ACCELERATED else "Python (the C extension imqd.qdisc._htbfast was not built: slower)",
                "off (--no-gso)" if args.no_gso else "asked for", args.on_overflow)
            controller = Controller(config, config_path, sup, on_change=follow_rules, store=store)
            controller.stats_hook = checks
            if api is None:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, lambda *_: stop.set())
                stop.wait()
            else:
                serve_api(controller, api, token=token, open_stats=args.open_stats)
        finally:
            if follow_rules is not None:
                try:
                    follow_rules.stop()
                except Exception as exc:  # noqa: BLE001 - report, keep shutting down
                    print(f"imqd: removing rules failed: {exc}", file=sys.stderr)
            sup.stop()
            if controller is not None:
                controller.close()  # the journal's changes into the YAML file
        return 0


def start_checks(config: Config, opts: Any, *, applying: bool) -> Any:
    """The /stats warnings of a run (imqd.run_checks), and the placement warnings logged now, at start.

    The placement checked is the one ``--apply-rules`` installs, else the one imqd's rules already have (put there
    by ``imqd rules apply`` or the operator), else the flag's."""
    from imqd import rules as rules_mod
    from imqd.run_checks import RunChecks

    hook = opts.ingress_hook
    if not applying:
        try:
            hook = rules_mod.installed_ingress_hook() or hook
        except rules_mod.RulesError:
            pass
    checks = RunChecks(config, hook, read_nat=lambda: read_nat_rules(ipv6=opts.ipv6))
    for line in checks.placement(config):
        logging.getLogger("imqd").warning("%s", line)
    return checks


def read_nat_rules(*, ipv6: bool = True) -> list[Any]:
    from imqd.run_checks import read_nat_rules as read

    return read(ipv6=ipv6)


def int_flag_or_env(flag: int | None, env_value: str | None, flag_name: str, env_name: str,
                    unit: str) -> tuple[int, str] | None:
    """A whole-number option that the flag sets, else the environment: (value, its source as the messages name
    it, e.g. ``"--realtime "`` or ``"IMQD_REALTIME="``), or None when neither is given."""
    if flag is not None:
        return flag, f"{flag_name} "
    if env_value is None:
        return None
    try:
        return int(env_value), f"{env_name}="
    except ValueError:
        raise CliError(f"{env_name}={env_value!r}: not a whole number{unit}") from None


def realtime_arg(flag: int | None, env_value: str | None) -> int:
    """The workers' --realtime priority (the flag wins over IMQD_REALTIME, which may be empty; 0: off), checked
    before anything starts (imqd.realtime)."""
    from imqd.realtime import RealtimeError, check_priority, check_throttled

    given = int_flag_or_env(flag, env_value or None, "--realtime", "IMQD_REALTIME", " (a SCHED_FIFO priority)")
    if given is None:
        return 0
    value, source = given
    try:
        if check_priority(value, source):
            check_throttled(source=source)
    except RealtimeError as exc:
        raise CliError(str(exc)) from None
    return value


def cpu_latency_arg(flag: int | None, env_value: str | None) -> int | None:
    """The --cpu-latency limit in microseconds (the flag wins over IMQD_CPU_LATENCY), or None for no request."""
    from imqd.cpu_latency import CpuLatencyError, check_latency_us

    given = int_flag_or_env(flag, env_value, "--cpu-latency", "IMQD_CPU_LATENCY", " of microseconds")
    if given is None:
        return None
    try:
        return check_latency_us(*given)
    except CpuLatencyError as exc:
        raise CliError(str(exc)) from None


def hold_cpu_latency(us: int | None) -> contextlib.AbstractContextManager[Any]:
    """The PM QoS request, already open (so a failure stops imqd before any worker starts), as a context
    that closes it; a no-op context when ``us`` is None (no request)."""
    from imqd.cpu_latency import CpuLatencyError, CpuLatencyRequest

    if us is None:
        return contextlib.nullcontext()
    try:
        request = CpuLatencyRequest(us).open()
    except CpuLatencyError as exc:
        raise CliError(str(exc)) from None
    logging.getLogger("imqd").info("holding a CPU wake-up latency limit of %d us (%s)", us, request.device)
    return request


def kernel_queue_len(config: Config, requested: int, held_max: int = DEFAULT_HELD_MAX) -> int:
    """The kernel queue must hold every packet a worker may hold -- all leaf limits, at most ``held_max``
    (what they may hold together) -- plus everything its socket buffer can hold unread, and some slack.

    So the socket always overflows before the queue does: the kernel then gives every packet it drops
    (``user_dropped``) or, with ``--on-overflow accept``, passes unshaped an id the worker can count
    (``unshaped_overflow``); a packet that finds the queue full would be passed uncounted.  It costs no
    memory the socket would not let the kernel pin anyway (queued = unread, at most the socket's worth, +
    held).  The default ``held_max`` and the socket's worth add up to this kernel's bound of a queue
    (:data:`imqd.kernel_queues.KERNEL_QUEUE_MAX`)."""
    held = min(held_max, sum(c.limit for c in config.classes if config.is_leaf(c.name)))
    return max(requested, held + 1024 + SOCKET_MESSAGES_MAX)


def serve_api(controller: Any, api: tuple[str, int], *, token: str | None, open_stats: bool) -> None:
    import uvicorn

    from imqd.api import create_app

    app = create_app(controller, token=token, open_reads=open_stats or is_loopback(api[0]))
    server = uvicorn.Server(uvicorn.Config(app, host=api[0], port=api[1], log_level="warning", access_log=False))
    # uvicorn captures SIGINT/SIGTERM while serving, and re-raises them with the handlers that were in
    # place before once it has shut down.  Install harmless handlers first, so that re-raise returns
    # here and the caller's cleanup (release held packets, remove rules) runs.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if not server.started:
        raise CliError(f"--api {api[0]}:{api[1]}: the API server could not start (address in use?)")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as exc:
        raise CliError(f"--token-file {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise CliError(f"--token-file {path}: readable by group or others (mode {mode & 0o777:o}); "
                       f"chmod 600 {path}")
    if len(token) < 16:
        raise CliError(f"--token-file {path}: the token must be at least 16 characters")
    return token


def cmd_token(args: argparse.Namespace) -> int:
    """Write a new random API token to a file only its owner can read."""
    import secrets

    path: Path = args.file
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{path}: exists already (remove it first to make a new token)") from None
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    print(f"{path}: new token written (mode 600); start imqd with --token-file {path}")
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    from imqd import rules as rules_mod

    if args.action == "remove":
        rules_mod.remove()
        remove_address_sets()
    elif args.action == "show":
        print(rules_mod.show(), end="")
    else:
        rules_mod.apply(rule_options(args))
    return 0


def remove_address_sets() -> None:
    """Destroy the address sets an ``imqd run`` left behind (its rules are gone: nothing references them)."""
    import subprocess

    from imqd import address_sets, ipsets

    if ipsets.available() is None:  # no ipset command: imqd made no sets
        for name in ipsets.destroy_stale(subprocess.run, address_sets.IMQD_SET_RE):
            print(f"imqd: destroyed address set {name}")


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config (with the changes the API journalled); then warn about every class the ingress hook
    cannot see, given the nat table."""
    from imqd.hook_checks import placement_warnings
    from imqd.journal import ConfigStore
    from imqd.rules import RulesError

    store = ConfigStore(args.config)
    config = store.load()
    pending = (f"; {store.replayed} changes made through the API are in {store.journal_path} and not yet in the "
               "file (imqd run writes them there)") if store.replayed else ""
    hook = ingress_hook(args)
    try:
        warnings = placement_warnings(config, hook, read_nat_rules())
    except RulesError as exc:
        warnings = []
        print(f"imqd: note: NAT placement checks skipped, the nat table is unreadable: {exc}", file=sys.stderr)
    for line in warnings:
        print(f"imqd: warning: {line}", file=sys.stderr)
    extra = f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''} (ingress hook {hook})" if warnings else ""
    print(f"{args.config}: OK ({len(config.classes)} classes{extra}{pending})")
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from imqd.lab import run_lab

    return run_lab(seconds=args.seconds, rate=args.rate, queues=args.queues)


def cmd_client(args: argparse.Namespace) -> int:
    from imqd.client import run_client

    return run_client(args)


COMMANDS = {"run": cmd_run, "rules": cmd_rules, "token": cmd_token, "check-config": cmd_check_config, "lab": cmd_lab,
            "class": cmd_client, "stats": cmd_client, "enable": cmd_client, "import": cmd_client}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="imqd: %(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except CliError as exc:
        print(f"imqd: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except ConfigError as exc:
        print(f"imqd: invalid config: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except Exception as exc:  # known one-line errors from rules/supervisor
        from imqd.rules import RulesError

        if isinstance(exc, RulesError):
            print(f"imqd: {exc}", file=sys.stderr)
            return EXIT_FAIL
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
