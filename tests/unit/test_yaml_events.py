"""imqd.yaml_events (config reading built from libyaml's events) held to PyYAML's full loader, its reference:
same data for every document, and every document it does not build itself goes to the full loader."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from imqd.config_file import YamlError, _Loader, read_yaml
from imqd.yaml_events import Unsupported, load_plain


def reference(text: str) -> Any:
    """What the full loader (node tree, then construction) reads: the path read_yaml took before."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def fast(text: str) -> Any:
    loader = _Loader(text)
    try:
        return load_plain(loader)
    finally:
        loader.dispose()


def same(a: Any, b: Any) -> bool:
    """Equal data, with NaN equal to itself and bool never equal to int (1 == True in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


# Plain texts whose YAML 1.1 meaning PyYAML gives them (and a config may hold): the builder must not guess.
TRICKY = ["yes", "No", "on", "OFF", "y", "~", "null", "Null", "", "0o17", "017", "0x1F", "0b101", "1_000",
          "1:30", "190:20:30", "-1:30", "1.5", "1e3", "1.0e+3", ".inf", "-.Inf", ".NaN", "2001-12-14",
          "2001-12-14t21:59:43.10-05:00", "10mbit", "198.18.0.1/32", "80:90", "0", "-0", "+12", "1,000",
          "true", "False", "=", "3.", "6.8523015e+5", "0.", "-0.0", "!", "a b", "0:0"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(TRICKY),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.dates(), st.datetimes(timezones=st.sampled_from([None, datetime.timezone.utc])),
)
keys = st.one_of(st.text(max_size=8), st.sampled_from(TRICKY), st.integers(-5, 5), st.booleans(), st.none())
data = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(keys, inner, max_size=4)), max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(data, st.sampled_from([None, True, False]), st.booleans(), st.sampled_from([None, "'", '"', "|"]))
def test_every_dumped_document_reads_as_the_full_loader_reads_it(value: Any, flow: bool | None, unicode: bool,
                                                                 style: str | None) -> None:
    text = yaml.safe_dump(value, default_flow_style=flow, allow_unicode=unicode, default_style=style)
    ref = reference(text)
    assert same(read_yaml(text), ref)
    try:
        got = fast(text)
    except Unsupported:
        return  # the full loader took it (a repeated key, an unhashable one...): read_yaml's answer is checked
    assert same(got, ref)


@settings(max_examples=400, deadline=None)
@given(st.text(st.sampled_from(list("ab1:- \n'\"[]{},#&*!|>?%@`~.0x\t")), max_size=40))
def test_any_text_reads_or_fails_as_the_full_loader_does(text: str) -> None:
    try:
        ref = reference(text)
    except yaml.YAMLError as e:
        with pytest.raises(YamlError) as err:
            read_yaml(text)
        mark = getattr(e, "problem_mark", None)
        assert err.value.line == (mark.line + 1 if mark is not None else None)
        return
    except (TypeError, RecursionError):  # what the full loader itself raises (an unhashable key)
        with pytest.raises(TypeError):
            read_yaml(text)
        return
    assert same(read_yaml(text), ref)


@pytest.mark.parametrize("text", [
    "a: &x [1, 2]\nb: *x\n",  # anchors and aliases: one list object twice
    "base: &b {rate: 1mbit}\nleaf:\n  <<: *b\n  ceil: 2mbit\n",  # a merge key
    "a: !!str 123\nb: !!float 1\n",  # explicit tags
    "a: ! 7\n",  # the non-specific tag (libyaml still resolves it as a plain scalar)
    "a: !!binary aGVsbG8=\n",
    "--- 1\n--- 2\n",  # several documents: the full loader refuses them
    "a: 1\na: 2\n",  # a repeated key: an error naming the line
    "? [1, 2]\n: x\n",  # an unhashable key
    "1: a\n1: b\n",  # a repeated non-string key: the full loader lets the last win
    "",
    "# only a comment\n",
])
def test_what_it_does_not_build_goes_to_the_full_loader(text: str) -> None:
    try:
        ref = reference(text)
    except yaml.YAMLError:
        with pytest.raises(YamlError):
            read_yaml(text)
        return
    except TypeError:
        with pytest.raises(TypeError):
            read_yaml(text)
        return
    assert same(read_yaml(text), ref)


def test_a_config_file_is_built_from_events_and_equal_texts_share_one_value() -> None:
    text = "".join(f"- name: s{i}\n  direction: egress\n  rate: 10mbit\n  limit: 1000\n" for i in range(50))
    got = fast(text)  # no Unsupported: a config is plain data
    assert same(got, reference(text))
    assert len({id(c["direction"]) for c in got}) == 1 and len({id(c["limit"]) for c in got}) == 1


def test_a_repeated_key_names_its_line() -> None:
    with pytest.raises(YamlError, match="duplicate key 'rate'") as err:
        read_yaml("classes:\n  - name: a\n    rate: 1mbit\n    rate: 2mbit\n")
    assert err.value.line == 4
