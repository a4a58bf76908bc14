"""--namespace-mapping: where an upper namespace lives downstairs, and the way back."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tensile import conventions as c
from tensile import namespacing
from tensile.namespacing import SAME_NAMESPACES, NamespaceMapping

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
namespaces = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)


def test_same_is_the_identity_and_records_nothing() -> None:
    assert SAME_NAMESPACES.lower("web") == "web"
    assert SAME_NAMESPACES.annotations("web") == {}
    assert SAME_NAMESPACES.upper_key({"metadata": {"namespace": "web", "name": "p"}}) == "web/p"


def test_suffixed_appends_the_upper_cluster_and_records_the_upper_namespace() -> None:
    m = NamespaceMapping("suffixed", "east")
    assert m.lower("web") == "web-east"
    assert m.lower_key("web/p") == "web-east/p"
    assert m.annotations("web") == {c.UPPER_NAMESPACE_ANNOTATION: "web"}
    copy = {"metadata": {"namespace": "web-east", "name": "p", "annotations": m.annotations("web")}}
    assert m.upper_key(copy) == "web/p"
    ns = {"metadata": {"name": "web-east", "annotations": m.annotations("web")}}
    assert m.upper_of_namespace(ns) == "web"


@given(namespaces, namespaces)
def test_suffixed_names_are_dns_labels_and_never_collide(a: str, b: str) -> None:
    m = NamespaceMapping("suffixed", "0123456789abcdef-cluster")
    for ns in (a, b):
        lower = m.lower(ns)
        assert len(lower) <= 63 and DNS_LABEL.match(lower), lower
        assert lower.endswith("-0123456789abcdef-cluster")
    if a != b:
        assert m.lower(a) != m.lower(b)


def test_a_long_namespace_is_cut_with_a_hash() -> None:
    m = NamespaceMapping("suffixed", "upper1")
    long = "a" * 60
    lower = m.lower(long)
    assert len(lower) == 63 and lower.startswith("a" * 20) and lower.endswith("-upper1")
    assert m.lower("a" * 60) != m.lower("a" * 59 + "b")


@pytest.mark.parametrize("suffix", ["", "Upper", "-x", "x" * 40, "a_b"])
def test_a_bad_suffix_is_refused(suffix: str) -> None:
    with pytest.raises(ValueError, match="namespace suffix"):
        NamespaceMapping("suffixed", suffix)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown namespace mapping"):
        namespacing.mapping("prefixed", "x")


def test_default_suffix_is_the_uid_prefix() -> None:
    assert namespacing.default_suffix("3F2A9C1E-0000-4000-8000-000000000000") == "3f2a9c1e"
