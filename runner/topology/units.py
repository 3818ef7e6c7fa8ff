"""Units: durations and sizes as people write them in a topology.

Durations are strings with a unit — `250ms`, `30s`, `5m`, `24h`, `7d`, `2w` —
or compounds like `1h30m`; they resolve to float seconds. Sizes are an int
(bytes) or a string with a unit — `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000),
`KiB`/`MiB`/`GiB`/`TiB` (powers of 1024) — and resolve to int bytes. Fields
that allow it also take `forever` (durations) or `unlimited` (sizes), which
resolve to None.

A bare integer where a duration is expected is refused; `suggest_duration`
turns it into the unit form for the error message (see its docstring for the
rule).
"""

from __future__ import annotations

import re
from fractions import Fraction

_DURATION_UNITS: dict[str, Fraction] = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
    "w": Fraction(7 * 86400),
}
_SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d|w))+")
DURATION_RE = _DURATION  # fullmatch: a duration without "forever"
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)")

DURATION_PATTERN = "^" + _DURATION.pattern + "$"
SIZE_PATTERN = "^" + _SIZE.pattern + "$"
DURATION_EXAMPLES = '"250ms", "30s", "5m", "24h", "7d", "2w" or "1h30m"'
SIZE_UNITS_TEXT = "B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"


_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)/(s|m|h)")
_RATE_UNITS: dict[str, int] = {"s": 1, "m": 60, "h": 3600}
RATE_EXAMPLES = '"200/s", "1000/m" or "0.5/s"'
MAX_RATE = 1e9  # per second; beyond it a limit limits nothing


MAX_DURATION_S = 36500 * 86400  # a topology's durations: at most 100 years ("forever" aside)
MAX_REQUEST_DURATION_S = 365 * 86400  # an HTTP request's `lease` and `ttl`: at most 1 year


def parse_duration(
    text: str, *, allow_forever: bool = False, max_s: float = MAX_DURATION_S
) -> float | None:
    """Seconds in a duration string; None for `forever` when `allow_forever`;
    ValueError past `max_s` (a 400-digit number is not "forever").

    >>> parse_duration("1h30m")
    5400.0
    >>> parse_duration("250ms")
    0.25
    """
    if not isinstance(text, str):
        raise ValueError(f'a duration must be a string with a unit, e.g. "30s"; got {text!r}')
    if text == "forever":
        if allow_forever:
            return None
        raise ValueError('"forever" is not allowed here; give a duration such as "30s"')
    if not _DURATION.fullmatch(text):
        raise ValueError(f'invalid duration "{text}"; use a number and a unit: {DURATION_EXAMPLES}')
    total = sum(
        (Fraction(num) * _DURATION_UNITS[unit] for num, unit in _DURATION_PART.findall(text)),
        Fraction(0),
    )
    if total > max_s:
        raise ValueError(
            f'duration "{_clip(text)}" is longer than the limit of {format_duration(max_s)}'
        )
    return float(total)


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def parse_size(value: int | str, *, allow_unlimited: bool = False) -> int | None:
    """Bytes in a size (an int, or a string with a unit); None for `unlimited`.

    >>> parse_size("1GiB")
    1073741824
    >>> parse_size("1.5KB")
    1500
    """
    if isinstance(value, bool):
        raise ValueError(f"a size must be a number of bytes or a string with a unit; got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative; got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"a size must be a number of bytes or a string with a unit; got {value!r}")
    if value == "unlimited":
        if allow_unlimited:
            return None
        raise ValueError('"unlimited" is not allowed here; give a size such as "64MiB"')
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(
            f'invalid size "{value}"; use bytes or a number with a unit: {SIZE_UNITS_TEXT}'
        )
    exact = Fraction(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if exact.denominator != 1:
        raise ValueError(f'size "{value}" is not a whole number of bytes ({float(exact)})')
    return int(exact)


def parse_rate(text: object) -> float:
    """Events per second in a rate string `N/s`, `N/m` or `N/h`; ValueError for
    anything else, for 0 and for more than a billion a second.

    >>> parse_rate("200/s")
    200.0
    >>> parse_rate("30/m")
    0.5
    """
    match = _RATE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"invalid rate {text!r}; use a number, a slash and s, m or h: {RATE_EXAMPLES}"
        )
    per_second = float(Fraction(match.group(1)) / _RATE_UNITS[match.group(2)])
    if per_second <= 0:
        raise ValueError(f'rate "{text}" must be more than 0')
    if per_second > MAX_RATE:
        raise ValueError(f'rate "{_clip(str(text))}" is more than the limit of 1000000000/s')
    return per_second


def format_rate(per_second: float) -> str:
    """The unit form of a rate: whole numbers per second, else per minute or hour.

    >>> format_rate(200.0), format_rate(0.5), format_rate(1 / 3600)
    ('200/s', '30/m', '1/h')
    """
    for unit, factor in (("s", 1), ("m", 60), ("h", 3600)):
        count = per_second * factor
        if abs(count - round(count)) < 1e-9 * max(1.0, count):
            return f"{round(count)}/{unit}"
    return f"{per_second:g}/s"


def format_duration(seconds: float) -> str:
    """The unit form of a duration, exact to the millisecond, largest unit first.

    `3600` -> `1h`, `5400` -> `1h30m`, `1.5` -> `1s500ms`. Days are used from
    two days up (`604800` -> `7d`), so one day reads `24h`; weeks are not used.
    """
    ms = round(Fraction(seconds).limit_denominator(1_000_000) * 1000)
    if ms == 0:
        return "0s"
    units = [("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)]
    if ms >= 2 * 86_400_000:
        units.insert(0, ("d", 86_400_000))
    parts: list[str] = []
    rest = ms
    for name, size in units:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{name}")
    return "".join(parts)


def suggest_duration(number: float) -> str:
    """The unit form to suggest for a bare number where a duration is expected.

    Numbers of 1000 and above are read as milliseconds (Kafka's `retention.ms`
    habit: `86400000` -> `24h`); smaller numbers are read as seconds
    (`30` -> `30s`).
    """
    number = abs(number)
    seconds = number / 1000 if number >= 1000 else number
    return format_duration(seconds)
