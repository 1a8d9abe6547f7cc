"""imqd.rules without root: option validation, rule building, restore rendering, and apply/remove/show driven
against a small in-memory model of iptables-save / iptables-restore --noflush."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imqd import rules
from imqd.config import Config, parse_config
from imqd.rules import RuleOptions, RulesError, build_rules, parse_queues, render_restore

REPO = Path(__file__).resolve().parents[2]
BUILTIN = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


# ---------------------------------------------------------------- parse_queues
@pytest.mark.parametrize(
    ("text", "expected"),
    [("0:3", (0, 3)), ("2", (2, 2)), (" 7:7 ", (7, 7)), ("65535", (65535, 65535)), ("0:65535", (0, 65535))],
)
def test_parse_queues_valid(text: str, expected: tuple[int, int]) -> None:
    assert parse_queues(text) == expected


@pytest.mark.parametrize(
    "text", ["", ":", "3:1", "a", "1:2:3", "65536", "0:70000", "-1", "0x1", "1.5", "1:", ":2", "١"]
)
def test_parse_queues_invalid_names_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match="--queues"):
        parse_queues(text)


def test_parse_queues_custom_flag_name() -> None:
    with pytest.raises(ValueError, match="--nfqueue"):
        parse_queues("x", flag="--nfqueue")


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_parse_queues_range_property(a: int, b: int) -> None:
    if a <= b:
        assert parse_queues(f"{a}:{b}") == (a, b)
    else:
        with pytest.raises(ValueError, match="greater than"):
            parse_queues(f"{a}:{b}")


@given(st.text(max_size=12))
def test_parse_queues_never_crashes(text: str) -> None:
    try:
        first, last = parse_queues(text)
    except ValueError as e:
        assert "--queues" in str(e)
    else:
        assert 0 <= first <= last <= 65535


# ---------------------------------------------------------------- RuleOptions validation
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"queues": (3, 1)}, "queues"),
        ({"queues": (0, 70000)}, "queues"),
        ({"queues": (0,)}, "queues"),
        ({"queues": (True, 2)}, "queues"),
        ({"queues": "0:3"}, "queues"),
        ({"queues": (0, 1), "policy": "random"}, "policy"),
        ({"queues": (0, 1), "bypass": 1}, "bypass"),
        ({"queues": (0, 1), "ingress_hook": "forward"}, "ingress_hook"),
        ({"queues": (0, 1), "ingress_hook": "AB"}, "ingress_hook"),  # aliases are the CLI's, not RuleOptions'
        ({"queues": (0, 1), "ingress_hook": None}, "ingress_hook"),
        ({"queues": (0, 1), "ipv6": None}, "ipv6"),
        ({"queues": (0, 1), "in_ifaces": "eth0"}, "in_ifaces"),
        ({"queues": (0, 1), "in_ifaces": ("-j",)}, "in_ifaces"),
        ({"queues": (0, 1), "in_ifaces": ("a" * 16,)}, "in_ifaces"),
        ({"queues": (0, 1), "out_ifaces": ("eth 0",)}, "out_ifaces"),
        ({"queues": (0, 1), "out_ifaces": ("eth0", "eth0")}, "out_ifaces"),
        ({"queues": (0, 1), "out_ifaces": ("et+h",)}, "out_ifaces"),
    ],
)
def test_rule_options_reject_bad_values_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RuleOptions(**kwargs)


def test_rule_options_normalise_lists_to_tuples() -> None:
    opts = RuleOptions(queues=[1, 2], in_ifaces=["eth0", "ppp+"])  # type: ignore[arg-type]
    assert opts.queues == (1, 2) and opts.in_ifaces == ("eth0", "ppp+")
    hash(opts)  # frozen and hashable


# ---------------------------------------------------------------- build_rules
def rules_of(opts: RuleOptions, family: str = "ipv4") -> list[list[str]]:
    built = build_rules(opts)[family]
    assert all(r[:2] == ["-t", "mangle"] for r in built)
    return [r[2:] for r in built]


def nfqueue_rules(opts: RuleOptions, chain: str) -> list[list[str]]:
    return [r for r in rules_of(opts) if r[:2] == ["-A", chain]]


def jumps(opts: RuleOptions) -> list[tuple[str, str]]:
    return [(r[1], r[-1]) for r in rules_of(opts) if r[0] == "-A" and r[1] in BUILTIN]


def test_default_rules_exactly() -> None:
    assert rules_of(RuleOptions(queues=(0, 3))) == [
        ["-N", "IMQD_INGRESS"],
        ["-N", "IMQD_EGRESS"],
        ["-A", "IMQD_INGRESS", "!", "-i", "lo", "-j", "NFQUEUE", "--queue-balance", "0:3", "--queue-bypass"],
        ["-A", "IMQD_EGRESS", "!", "-o", "lo", "-j", "NFQUEUE", "--queue-balance", "0:3", "--queue-bypass"],
        ["-A", "FORWARD", "-m", "comment", "--comment", "imqd", "-j", "IMQD_INGRESS"],
        ["-A", "INPUT", "-m", "comment", "--comment", "imqd", "-j", "IMQD_INGRESS"],
        ["-A", "POSTROUTING", "-m", "comment", "--comment", "imqd", "-j", "IMQD_EGRESS"],
    ]


def test_chains_created_before_use_and_jumps_last() -> None:
    r = rules_of(RuleOptions(queues=(0, 3), ingress_hook="prerouting", in_ifaces=("a", "b")))
    kinds = [x[0] for x in r]
    assert kinds[:2] == ["-N", "-N"] and "-N" not in kinds[2:]
    first_jump = next(i for i, x in enumerate(r) if x[0] == "-A" and x[1] in BUILTIN)
    assert all(x[1] in BUILTIN for x in r[first_jump:])


def test_single_queue_uses_queue_num_for_both_policies() -> None:
    for policy in ("flow", "cpu"):
        (rule,) = nfqueue_rules(RuleOptions(queues=(5, 5), policy=policy), "IMQD_INGRESS")
        assert rule[rule.index("NFQUEUE") + 1:] == ["--queue-num", "5", "--queue-bypass"]


def test_cpu_policy_fans_out_over_the_balance_range() -> None:
    (rule,) = nfqueue_rules(RuleOptions(queues=(2, 5), policy="cpu"), "IMQD_EGRESS")
    assert rule[rule.index("NFQUEUE") + 1:] == ["--queue-balance", "2:5", "--queue-bypass", "--queue-cpu-fanout"]
    (flow,) = nfqueue_rules(RuleOptions(queues=(2, 5), policy="flow"), "IMQD_EGRESS")
    assert "--queue-cpu-fanout" not in flow


def test_bypass_false_fails_closed() -> None:
    for chain in ("IMQD_INGRESS", "IMQD_EGRESS"):
        (rule,) = nfqueue_rules(RuleOptions(queues=(0, 1), bypass=False), chain)
        assert "--queue-bypass" not in rule and rule[-2:] == ["--queue-balance", "0:1"]


def test_interface_restriction_gives_one_rule_per_interface() -> None:
    opts = RuleOptions(queues=(0, 1), in_ifaces=("wan0", "ppp+"), out_ifaces=("wan0",))
    ingress = nfqueue_rules(opts, "IMQD_INGRESS")
    egress = nfqueue_rules(opts, "IMQD_EGRESS")
    assert [r[2:4] for r in ingress] == [["-i", "wan0"], ["-i", "ppp+"]]
    assert [r[2:4] for r in egress] == [["-o", "wan0"]]
    assert not any("lo" in r for r in ingress + egress)


def test_unrestricted_excludes_loopback() -> None:
    opts = RuleOptions(queues=(0, 1))
    assert nfqueue_rules(opts, "IMQD_INGRESS")[0][2:5] == ["!", "-i", "lo"]
    assert nfqueue_rules(opts, "IMQD_EGRESS")[0][2:5] == ["!", "-o", "lo"]


def _cfg(*classes: dict) -> Config:
    return parse_config({"classes": list(classes)})


UP_WAN = {"name": "up", "direction": "egress", "rate": "1mbit", "match": {"oif": "wan0"}}
DOWN_WAN = {"name": "down", "direction": "ingress", "rate": "1mbit", "match": {"iif": "wan0"}}


def test_rules_for_config_queue_only_the_interfaces_classes_name() -> None:
    base = RuleOptions(queues=(0, 1))
    opts = rules.for_config(base, _cfg(UP_WAN, DOWN_WAN, {**DOWN_WAN, "name": "ppp", "match": {"iif": "ppp+"}}))
    assert [r[2:4] for r in nfqueue_rules(opts, "IMQD_INGRESS")] == [["-i", "wan0"], ["-i", "ppp+"]]
    assert [r[2:4] for r in nfqueue_rules(opts, "IMQD_EGRESS")] == [["-o", "wan0"]]
    assert jumps(opts) == jumps(base), "the jumps stay: only the chains' contents follow the classes"


def test_rules_for_config_leave_a_direction_without_classes_unqueued() -> None:
    opts = rules.for_config(RuleOptions(queues=(0, 0)), _cfg(UP_WAN))
    assert nfqueue_rules(opts, "IMQD_INGRESS") == [] and len(nfqueue_rules(opts, "IMQD_EGRESS")) == 1
    none = rules.for_config(RuleOptions(queues=(0, 0)), _cfg())
    assert nfqueue_rules(none, "IMQD_INGRESS") == nfqueue_rules(none, "IMQD_EGRESS") == []


@pytest.mark.parametrize("extra", [
    {"name": "web", "direction": "egress", "rate": "1mbit", "match": {"dport": 443}},  # any interface
    {"name": "rest", "direction": "egress", "rate": "1mbit", "default": True},  # takes what nothing else does
])
def test_rules_for_config_queue_everything_when_a_class_can_match_any_interface(extra: dict) -> None:
    opts = rules.for_config(RuleOptions(queues=(0, 0)), _cfg(UP_WAN, extra))
    assert nfqueue_rules(opts, "IMQD_EGRESS")[0][2:5] == ["!", "-o", "lo"]


def test_rules_for_config_keep_interfaces_the_operator_named() -> None:
    base = RuleOptions(queues=(0, 0), out_ifaces=("eth9",))
    assert rules.for_config(base, _cfg(UP_WAN)).out_ifaces == ("eth9",)


def test_rules_for_config_ignore_matching_inner_classes_and_unmatched_leaves() -> None:
    parent = {"name": "all", "direction": "egress", "rate": "10mbit"}
    kid = {**UP_WAN, "parent": "all"}
    idle = {"name": "idle", "direction": "egress", "rate": "1mbit", "parent": "all"}  # no match, not default
    opts = rules.for_config(RuleOptions(queues=(0, 0)), _cfg(parent, kid, idle))
    assert [r[2:4] for r in nfqueue_rules(opts, "IMQD_EGRESS")] == [["-o", "wan0"]]


def test_ingress_is_after_de_nat_by_default_and_at_prerouting_when_asked() -> None:
    """IMQ's default AB: ingress after de-NAT (mangle FORWARD + INPUT); prerouting = IMQ's BA/BB."""
    after = [("FORWARD", "IMQD_INGRESS"), ("INPUT", "IMQD_INGRESS"), ("POSTROUTING", "IMQD_EGRESS")]
    assert jumps(RuleOptions(queues=(0, 1))) == after
    assert jumps(RuleOptions(queues=(0, 1), ingress_hook="after-nat")) == after
    assert jumps(RuleOptions(queues=(0, 1), ingress_hook="prerouting")) == [
        ("PREROUTING", "IMQD_INGRESS"), ("POSTROUTING", "IMQD_EGRESS")]


@pytest.mark.parametrize(("text", "placement"), [
    ("after-nat", "after-nat"), ("prerouting", "prerouting"), (" prerouting ", "prerouting"),
    ("PREROUTING", "prerouting"), ("After-NAT", "after-nat"),
    ("AB", "after-nat"), ("ab", "after-nat"), ("BB", "prerouting"), ("bb", "prerouting"),
])
def test_parse_ingress_hook_accepts_names_and_imq_aliases(text: str, placement: str) -> None:
    assert rules.parse_ingress_hook(text) == placement


@pytest.mark.parametrize("text", ["AA", "ba", "Ba"])
def test_parse_ingress_hook_refuses_egress_after_snat_and_says_why(text: str) -> None:
    with pytest.raises(ValueError, match="--ingress-hook") as info:
        rules.parse_ingress_hook(text)
    msg = str(info.value)
    assert "egress after SNAT" in msg and "nat POSTROUTING is walked only until" in msg and "\n" not in msg


@pytest.mark.parametrize("text", ["", "forward", "after_nat", "A", "ABC", "postrouting", "nat"])
def test_parse_ingress_hook_rejects_anything_else_naming_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match="--ingress-hook: expected one of after-nat, prerouting"):
        rules.parse_ingress_hook(text)


@given(st.text(max_size=12))
def test_parse_ingress_hook_never_crashes(text: str) -> None:
    try:
        assert rules.parse_ingress_hook(text) in rules.INGRESS_PLACEMENTS
    except ValueError as e:
        assert "--ingress-hook" in str(e)


def test_jumps_carry_the_imqd_comment() -> None:
    for hook in rules.INGRESS_PLACEMENTS:
        for r in rules_of(RuleOptions(queues=(0, 1), ingress_hook=hook)):
            if r[0] == "-A" and r[1] in BUILTIN:
                assert r[2:6] == ["-m", "comment", "--comment", "imqd"]


def test_ipv6_family_toggle() -> None:
    assert set(build_rules(RuleOptions(queues=(0, 1)))) == {"ipv4", "ipv6"}
    assert set(build_rules(RuleOptions(queues=(0, 1), ipv6=False))) == {"ipv4"}
    both = build_rules(RuleOptions(queues=(0, 1)))
    assert both["ipv4"] == both["ipv6"] and both["ipv4"] is not both["ipv6"]


def test_hook_sets_split_all_five_hooks() -> None:
    assert rules.INGRESS_HOOKS | rules.EGRESS_HOOKS == set(range(5))
    assert not rules.INGRESS_HOOKS & rules.EGRESS_HOOKS
    assert rules.INGRESS_HOOKS == {0, 1, 2}


# ---------------------------------------------------------------- render_restore
@pytest.mark.parametrize("hook", ["after-nat", "prerouting"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_render_restore_holds_exactly_the_built_rules(hook: str, family: str) -> None:
    opts = RuleOptions(queues=(1, 4), policy="cpu", in_ifaces=("eth0",), ingress_hook=hook)
    text = render_restore(opts, family)
    active = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert active[0] == "*mangle" and active[-1] == "COMMIT"
    built = rules_of(opts, family)
    assert active[1:-1] == [f":{r[1]} - [0:0]" for r in built if r[0] == "-N"] + [
        " ".join(r) for r in built if r[0] == "-A" and r[1] in ("IMQD_INGRESS", "IMQD_EGRESS")
    ] + [" ".join(r) for r in built if r[0] == "-A" and r[1] in BUILTIN]
    # the commented variant is the other placement's ingress jumps
    alt = next(h for h in rules.INGRESS_PLACEMENTS if h != hook)
    other = rules_of(RuleOptions(queues=(1, 4), policy="cpu", in_ifaces=("eth0",), ingress_hook=alt), family)
    assert f"ingress hook {hook}." in text and f"# Ingress hook {alt} instead" in text
    commented = [ln[2:] for ln in text.splitlines() if ln.startswith("# -A ")]
    assert commented == [" ".join(r) for r in other if r[0] == "-A" and r[1] in BUILTIN and r[-1] == "IMQD_INGRESS"]


def test_render_restore_rejects_unknown_family() -> None:
    with pytest.raises(ValueError, match="family"):
        render_restore(RuleOptions(queues=(0, 1)), "ipx")


@pytest.mark.parametrize(("path", "family"), [("deploy/iptables.rules", "ipv4"), ("deploy/ip6tables.rules", "ipv6")])
def test_committed_deploy_files_match_the_generator(path: str, family: str) -> None:
    committed = (REPO / path).read_text()
    assert committed == render_restore(RuleOptions(queues=(0, 3)), family), (
        f"{path} drifted; regenerate with: python -c \"from imqd.rules import *; "
        f"open('{path}','w').write(render_restore(RuleOptions(queues=(0, 3)), '{family}'))\""
    )


# ---------------------------------------------------------------- apply / remove / show against a model
class FakeIptables:
    """Just enough of iptables-save -t mangle / iptables-restore --noflush to check what apply/remove send."""

    def __init__(self, missing: tuple[str, ...] = ()) -> None:
        self.tables = {fam: {c: [] for c in BUILTIN} for fam in ("ipv4", "ipv6")}
        self.user = {fam: [] for fam in ("ipv4", "ipv6")}
        self.restores: list[tuple[str, str]] = []
        self.missing = missing

    def __call__(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess:
        tool = argv[0]
        if tool in self.missing:
            raise FileNotFoundError(2, "No such file or directory", tool)
        fam = "ipv6" if tool.startswith("ip6") else "ipv4"
        if tool.endswith("-save"):
            assert argv[-2:] == ["-t", "mangle"]
            return subprocess.CompletedProcess(argv, 0, self.save(fam, counters="-c" in argv), "")
        assert tool.endswith("-restore") and argv[1:] == ["--noflush"]
        self.restores.append((fam, str(kw["input"])))
        try:
            self.restore(fam, str(kw["input"]))
        except KeyError as e:
            return subprocess.CompletedProcess(argv, 1, "", f"{tool}: line failed: {e}\n")
        return subprocess.CompletedProcess(argv, 0, "", "")

    def save(self, fam: str, counters: bool = False) -> str:
        t = self.tables[fam]
        out = ["# Generated by fake", "*mangle"] + [f":{c} ACCEPT [0:0]" for c in BUILTIN]
        out += [f":{c} - [0:0]" for c in self.user[fam]]
        pre = "[3:180] " if counters else ""
        out += [f"{pre}-A {c} {r}" for c in [*BUILTIN, *self.user[fam]] for r in t[c]]
        return "\n".join([*out, "COMMIT", "# Completed", ""])

    def restore(self, fam: str, text: str) -> None:
        t = {c: list(r) for c, r in self.tables[fam].items()}  # transaction: all or nothing
        user = list(self.user[fam])
        lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
        assert lines[0] == "*mangle" and lines[-1] == "COMMIT"
        for ln in lines[1:-1]:
            if ln.startswith(":"):
                chain = ln[1:].split()[0]
                if chain not in t:
                    user.append(chain)
                t[chain] = []
                continue
            cmd, chain, *rest = shlex.split(ln)
            spec = ln.split(None, 2)[2] if rest else ""
            if cmd == "-A":
                t[chain].append(spec)
            elif cmd == "-D":
                if spec not in t[chain]:
                    raise KeyError(ln)
                t[chain].remove(spec)
            elif cmd == "-F":
                t[chain] = []
            elif cmd == "-X":
                if any(chain in r.split() for c, rs in t.items() for r in rs) or t[chain]:
                    raise KeyError(f"chain {chain} busy")
                del t[chain]
                user.remove(chain)
            else:
                raise AssertionError(ln)
        self.tables[fam], self.user[fam] = t, user


def other_rules(fake: FakeIptables) -> None:
    for fam in ("ipv4", "ipv6"):
        fake.restore(fam, "*mangle\n:MINE - [0:0]\n-A PREROUTING -p tcp -j MARK --set-xmark 0x1/0xffffffff\n"
                          "-A POSTROUTING -j MINE\n-A MINE -m comment --comment \"not imqd\" -j ACCEPT\nCOMMIT\n")


def test_apply_then_apply_again_changes_nothing() -> None:
    fake = FakeIptables()
    other_rules(fake)
    opts = RuleOptions(queues=(0, 3))
    rules.apply(opts, runner=fake)
    once = {f: fake.save(f) for f in ("ipv4", "ipv6")}
    rules.apply(opts, runner=fake)
    assert {f: fake.save(f) for f in ("ipv4", "ipv6")} == once
    assert fake.tables["ipv4"]["PREROUTING"] == ["-p tcp -j MARK --set-xmark 0x1/0xffffffff"]
    assert fake.tables["ipv4"]["FORWARD"] == fake.tables["ipv4"]["INPUT"] == [
        "-m comment --comment imqd -j IMQD_INGRESS"]


def test_apply_switches_ingress_hook_both_ways_and_drops_duplicate_jumps() -> None:
    fake = FakeIptables()
    rules.apply(RuleOptions(queues=(0, 3), ingress_hook="prerouting"), runner=fake)
    assert rules.installed_ingress_hook(runner=fake) == "prerouting"
    fake.tables["ipv4"]["POSTROUTING"].append("-m comment --comment imqd -j IMQD_EGRESS")  # a stray duplicate
    rules.apply(RuleOptions(queues=(0, 3), in_ifaces=("wan",)), runner=fake)
    t = fake.tables["ipv4"]
    assert t["PREROUTING"] == []
    assert t["FORWARD"] == t["INPUT"] == ["-m comment --comment imqd -j IMQD_INGRESS"]
    assert t["POSTROUTING"] == ["-m comment --comment imqd -j IMQD_EGRESS"]
    assert t["IMQD_INGRESS"] == ["-i wan -j NFQUEUE --queue-balance 0:3 --queue-bypass"]
    assert rules.installed_ingress_hook(runner=fake) == "after-nat"
    rules.apply(RuleOptions(queues=(0, 3), ingress_hook="prerouting"), runner=fake)
    assert t is not fake.tables["ipv4"] and fake.tables["ipv4"]["FORWARD"] == fake.tables["ipv4"]["INPUT"] == []
    assert fake.tables["ipv4"]["PREROUTING"] == ["-m comment --comment imqd -j IMQD_INGRESS"]
    rules.remove(runner=fake)
    assert rules.installed_ingress_hook(runner=fake) is None


def test_apply_is_one_restore_per_family() -> None:
    fake = FakeIptables()
    rules.apply(RuleOptions(queues=(0, 3)), runner=fake)
    assert [f for f, _ in fake.restores] == ["ipv4", "ipv6"]


def test_remove_leaves_other_rules_exactly() -> None:
    fake = FakeIptables()
    other_rules(fake)
    before = {f: fake.save(f) for f in ("ipv4", "ipv6")}
    rules.apply(RuleOptions(queues=(0, 1)), runner=fake)
    fake.tables["ipv4"]["MINE"].append("-j IMQD_EGRESS")  # someone else's jump into imqd's chain goes too
    assert fake.save("ipv4") != before["ipv4"]
    rules.remove(runner=fake)
    assert {f: fake.save(f) for f in ("ipv4", "ipv6")} == before


def test_apply_keeps_foreign_jumps_into_imqd_chains() -> None:
    fake = FakeIptables()
    other_rules(fake)
    rules.apply(RuleOptions(queues=(0, 1), ingress_hook="prerouting"), runner=fake)
    fake.tables["ipv4"]["MINE"].append("-p udp -j IMQD_EGRESS")
    fake.tables["ipv4"]["FORWARD"].append("-i ppp0 -j IMQD_INGRESS")
    rules.apply(RuleOptions(queues=(0, 1)), runner=fake)
    t = fake.tables["ipv4"]
    assert "-p udp -j IMQD_EGRESS" in t["MINE"] and "-i ppp0 -j IMQD_INGRESS" in t["FORWARD"]
    assert t["PREROUTING"] == ["-p tcp -j MARK --set-xmark 0x1/0xffffffff"]
    rules.remove(runner=fake)
    assert "IMQD" not in fake.save("ipv4")


def test_remove_with_nothing_installed_runs_no_restore() -> None:
    fake = FakeIptables()
    rules.remove(runner=fake)
    assert fake.restores == []


def test_apply_without_ipv6_removes_old_ipv6_rules() -> None:
    fake = FakeIptables()
    rules.apply(RuleOptions(queues=(0, 1)), runner=fake)
    rules.apply(RuleOptions(queues=(0, 1), ipv6=False), runner=fake)
    assert "IMQD" in fake.save("ipv4") and "IMQD" not in fake.save("ipv6")


def test_remove_and_show_tolerate_missing_ip6tables() -> None:
    fake = FakeIptables(missing=("ip6tables-save", "ip6tables-restore"))
    rules.apply(RuleOptions(queues=(0, 1), ipv6=False), runner=fake)
    rules.remove(runner=fake)
    assert "unavailable" in rules.show(runner=fake)
    with pytest.raises(RulesError, match="ip6tables-save not found"):
        rules.apply(RuleOptions(queues=(0, 1)), runner=fake)
    assert fake.restores[-1][0] == "ipv4" and len(fake.restores) == 2  # apply + remove of v4; failed v6 changed nothing


def test_show_lists_only_imqd_lines_with_counters() -> None:
    fake = FakeIptables()
    other_rules(fake)
    assert rules.show(runner=fake).count("(no imqd rules)") == 2
    rules.apply(RuleOptions(queues=(0, 1)), runner=fake)
    text = rules.show(runner=fake)
    assert "[3:180] -A FORWARD -m comment --comment imqd -j IMQD_INGRESS" in text
    assert "[3:180] -A IMQD_EGRESS ! -o lo -j NFQUEUE --queue-balance 0:1 --queue-bypass" in text
    assert ":IMQD_INGRESS - [0:0]" in text
    assert "MARK" not in text and "MINE" not in text


# ---------------------------------------------------------------- errors: one clear line
def failing(stderr: str, rc: int = 1):
    def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(argv, rc, "", stderr)

    return run


@pytest.mark.parametrize(
    ("runner", "needle"),
    [
        (FakeIptables(missing=("iptables-save",)), "not found"),
        (failing('exec of "iptables-save" failed: No such file or directory\n', 255), "not found"),
        (failing("iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: "
                 "Permission denied (you must be root)\n", 4), "CAP_NET_ADMIN"),
        (failing("iptables-restore v1.8.9 (legacy): Couldn't load target `NFQUEUE':No such file or directory\n\n"
                 "Error occurred at line: 4\nTry `iptables-restore -h' or 'iptables-restore --help'\n", 2),
         "NFQUEUE support"),
        (failing("Warning: Extension NFQUEUE revision 0 not supported, missing kernel module?\n"
                 "iptables-restore: line 4 failed\n"), "NFQUEUE support"),
        (failing("iptables-save: something odd happened\nsecond line\n", 3), "something odd happened"),
    ],
)
def test_failures_become_one_line_rules_errors(runner, needle: str) -> None:
    with pytest.raises(RulesError) as info:
        rules.apply(RuleOptions(queues=(0, 1)), runner=runner)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_permission_error_from_exec_is_a_rules_error() -> None:
    def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess:
        raise PermissionError(13, "Permission denied", argv[0])

    with pytest.raises(RulesError, match="CAP_NET_ADMIN"):
        rules.remove(runner=run)


# ---------------------------------------------------------------- read_nat: the nat table, read-only
DUMP = """# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o wan0 -j MASQUERADE
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
COMMIT
"""


def test_read_nat_returns_the_nat_section_of_a_plain_save_and_changes_nothing() -> None:
    calls: list[list[str]] = []

    def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess:
        calls.append(argv)
        out = DUMP if argv[0] == "iptables-save" else "*filter\nCOMMIT\n"
        return subprocess.CompletedProcess(argv, 0, out, "")

    nat = rules.read_nat(runner=run)
    assert nat["ipv4"] == "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n" \
                          "-A POSTROUTING -o wan0 -j MASQUERADE\nCOMMIT\n"
    assert nat["ipv6"] == "", "no nat table: nothing"
    # no -t nat: with the legacy backend that would load iptable_nat and create the table just by asking
    assert calls == [["iptables-save"], ["ip6tables-save"]]
    assert rules.read_nat(runner=run, ipv6=False) == {"ipv4": nat["ipv4"]}


def test_read_nat_tolerates_missing_ip6tables_but_not_iptables() -> None:
    def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess:
        if argv[0] == "ip6tables-save":
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        return subprocess.CompletedProcess(argv, 0, DUMP, "")

    assert rules.read_nat(runner=run)["ipv6"] == ""

    def denied(argv: list[str], **kw: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(argv, 1, "", "iptables-save: Permission denied (you must be root)\n")

    with pytest.raises(RulesError, match="CAP_NET_ADMIN"):
        rules.read_nat(runner=denied)
