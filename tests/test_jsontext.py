"""runner.jsontext: integers of any size read and written exactly; non-finite numbers refused."""

from __future__ import annotations

import json
import tracemalloc

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner import jsontext

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))  # JSON has no lone surrogates
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_what_is_written_reads_back_the_same(value: object) -> None:
    text = jsontext.dumps(value)
    assert jsontext.loads(text) == value
    assert json.loads(text) == value  # the standard library agrees: it is plain JSON


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**40, -(10**40)])
def test_integers_past_64_bits_are_exact(number: int) -> None:
    assert jsontext.dumps({"n": [number]}) == f'{{"n":[{number}]}}'.encode()
    assert jsontext.loads(f"[{number}]") == [number]
    assert isinstance(jsontext.loads(str(number)), int)


def test_the_64_bit_bounds_stay_on_the_fast_path() -> None:
    assert jsontext.dumps([2**64 - 1, -(2**63)]) == orjson.dumps([2**64 - 1, -(2**63)])


@pytest.mark.parametrize("text", [
    "1e400", "[1e400, 12345678901234567890123]", "[NaN, 12345678901234567890123]",
    "[-Infinity, 12345678901234567890123]", "{", "",
])
def test_non_finite_and_broken_text_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        jsontext.loads(text)


def test_deep_values_with_wide_integers_are_an_encode_error_not_a_crash() -> None:
    value: object = 2**70
    for _ in range(300):
        value = [value]
    with pytest.raises(orjson.JSONEncodeError):
        jsontext.dumps(value)


def test_a_default_still_applies_on_the_wide_path() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    assert jsontext.dumps([2**70, Odd()], default=str) == f'[{2**70},"odd"]'.encode()


def test_small_results_hold_no_more_memory_than_their_text() -> None:
    # orjson's bytes kept the 4 KiB buffer they were written into: a queue of tiny
    # JSON bodies cost ~4.4 KB a message of RSS (issue 17 item 3)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [jsontext.dumps([i, "x"]) for i in range(2000)]
        per_item = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_item < 200, per_item
    big = jsontext.dumps("x" * (2 << 20))  # past 1 MiB: not copied, still right
    assert big == b'"' + b"x" * (2 << 20) + b'"'
