from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tensile import quantity


@pytest.mark.parametrize(("text", "value"), [
    ("100m", Fraction(1, 10)), ("2", Fraction(2)), ("1.5", Fraction(3, 2)), ("1Ki", Fraction(1024)),
    ("1.5Gi", Fraction(3 * 2**29)), ("1k", Fraction(1000)), ("2e3", Fraction(2000)), ("1E-3", Fraction(1, 1000)),
    ("500u", Fraction(1, 2000)), ("3M", Fraction(3 * 10**6)), ("-20Gi", Fraction(-20 * 2**30)),
])
def test_parse_accepts_every_serialised_form(text: str, value: Fraction) -> None:
    assert quantity.parse(text) == value


@pytest.mark.parametrize("bad", ["", "abc", "1.2.3Gi", "1Zi", "Gi"])
def test_parse_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        quantity.parse(bad)


def test_format_is_exact_whole_or_milli_rounded_up() -> None:
    assert quantity.format(Fraction(12)) == "12"
    assert quantity.format(Fraction(5, 2)) == "2500m"
    assert quantity.format(Fraction(1, 3000)) == "1m"


@given(st.integers(min_value=0, max_value=10**15))
def test_format_parse_round_trip_for_integers(n: int) -> None:
    assert quantity.parse(quantity.format(Fraction(n))) == n


def test_parse_list_skips_unparsable_values() -> None:
    assert quantity.parse_list({"cpu": "1", "memory": "bogus"}) == {"cpu": Fraction(1)}
