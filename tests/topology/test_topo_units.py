"""Durations and sizes: parsing, formatting and the bare-number suggestion."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.topology.units import (
    format_duration,
    parse_duration,
    parse_size,
    suggest_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("0s", 0.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        ("1h30m", 5400.0),
        ("1d12h", 129600.0),
        ("1m500ms", 60.5),
        ("1.5h", 5400.0),
        ("0.25s", 0.25),
    ],
)
def test_parse_duration_reads_units_and_compounds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_forever_is_none_only_where_allowed() -> None:
    assert parse_duration("forever", allow_forever=True) is None
    with pytest.raises(ValueError) as caught:
        parse_duration("forever")
    assert str(caught.value) == '"forever" is not allowed here; give a duration such as "30s"'


@pytest.mark.parametrize(
    "text", ["", "10", "10 minutes", "1h 30m", "5M", "-5s", "1.s", "h", "5sec"]
)
def test_parse_duration_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert str(caught.value) == (
        f'invalid duration "{text}"; use a number and a unit: '
        '"250ms", "30s", "5m", "24h", "7d", "2w" or "1h30m"'
    )


def test_parse_duration_refuses_a_bare_number() -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(30)  # type: ignore[arg-type]
    assert str(caught.value) == 'a duration must be a string with a unit, e.g. "30s"; got 30'


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1048576, 1048576),
        ("12B", 12),
        ("1KB", 1000),
        ("1MB", 1000**2),
        ("1GB", 1000**3),
        ("2TB", 2 * 1000**4),
        ("1KiB", 1024),
        ("64MiB", 64 * 1024**2),
        ("1GiB", 1024**3),
        ("1TiB", 1024**4),
        ("1.5KB", 1500),
        ("0.5KiB", 512),
        ("1 GiB", 1024**3),
    ],
)
def test_parse_size_reads_bytes_and_units(value: int | str, size: int) -> None:
    assert parse_size(value) == size


def test_unlimited_is_none_only_where_allowed() -> None:
    assert parse_size("unlimited", allow_unlimited=True) is None
    with pytest.raises(ValueError) as caught:
        parse_size("unlimited")
    assert str(caught.value) == '"unlimited" is not allowed here; give a size such as "64MiB"'


@pytest.mark.parametrize("value", ["lots", "1gb", "1 G", "GiB", "1.5", "1KiBs", ""])
def test_parse_size_refuses_unknown_units(value: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)
    assert str(caught.value) == (
        f'invalid size "{value}"; use bytes or a number with a unit: '
        "B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
    )


def test_parse_size_refuses_fractions_of_a_byte_and_negatives() -> None:
    with pytest.raises(ValueError) as caught:
        parse_size("1.5B")
    assert str(caught.value) == 'size "1.5B" is not a whole number of bytes (1.5)'
    with pytest.raises(ValueError) as caught:
        parse_size(-1)
    assert str(caught.value) == "a size cannot be negative; got -1"
    with pytest.raises(ValueError) as caught:
        parse_size(True)
    assert str(caught.value) == (
        "a size must be a number of bytes or a string with a unit; got True"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (1.5, "1s500ms"),
        (30, "30s"),
        (300, "5m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (86400, "24h"),
        (90000, "25h"),
        (172800, "2d"),
        (604800, "7d"),
        (694800, "8d1h"),
    ],
)
def test_format_duration_gives_the_unit_form(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (86400000, "24h"),  # the TOPOLOGY.md example: Kafka's retention.ms habit
        (604800000, "7d"),
        (1000, "1s"),
        (5400000, "1h30m"),
        (30, "30s"),  # small numbers are read as seconds
        (999, "16m39s"),
        (0, "0s"),
        (1.5, "1s500ms"),
    ],
)
def test_suggest_duration_reads_big_numbers_as_milliseconds(number: float, text: str) -> None:
    assert suggest_duration(number) == text


@given(st.integers(min_value=0, max_value=10**12))
def test_format_duration_round_trips_through_parse(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) == pytest.approx(ms / 1000, abs=1e-9)
