"""Retry decisions: how long to wait before the next attempt, or give up.

A `Retrier` is a DLQ policy resolved for one consumer. It answers, for a
failure after `failures` failed attempts, whether to retry and after which
delay (the policy's schedule, or exponential backoff with jitter drawn from an
injectable random source), or to give up and dead-letter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from runner.topology.model import (
    DEFAULT_DLQ_POLICY,
    Delivery,
    DlqPolicy,
    ExponentialBackoff,
)


@dataclass(frozen=True, slots=True)
class Decision:
    """`retry` after `delay_s`, or give up (`reason` says why)."""

    retry: bool
    delay_s: float = 0.0
    reason: str = ""


def exception_matches(exc: BaseException, names: tuple[str, ...]) -> bool:
    """True when the class of `exc` or any base class is named in `names`.

    A bare name matches the class name (`ValueError` also catches
    `JSONDecodeError`); a dotted name matches the full `module.QualName`."""
    if not names:
        return False
    wanted = set(names)
    for cls in type(exc).__mro__:
        if cls.__name__ in wanted or f"{cls.__module__}.{cls.__qualname__}" in wanted:
            return True
    return False


class Retrier:
    """A DLQ policy applied to one consumer's failures."""

    __slots__ = ("policy", "delivery", "_random", "explicit")

    def __init__(
        self, policy: DlqPolicy | None, delivery: Delivery, *,
        random: Callable[[], float],
    ) -> None:
        self.explicit = policy is not None
        self.policy = policy or DEFAULT_DLQ_POLICY
        self.delivery = delivery
        self._random = random

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based), with jitter."""
        base = self.policy.delay_before_retry(retry)
        backoff = self.policy.backoff
        if isinstance(backoff, ExponentialBackoff) and backoff.jitter > 0:
            # jitter shortens or lengthens the delay by up to that fraction
            base *= 1.0 + backoff.jitter * (2.0 * self._random() - 1.0)
        return max(0.0, base)

    def decide(self, exc: BaseException, failures: int) -> Decision:
        """After `failures` failed attempts (>= 1), the last one raising `exc`."""
        if self.delivery is Delivery.AT_MOST_ONCE:
            return Decision(False, reason="at-most-once never retries")
        if exception_matches(exc, self.policy.no_retry_on):
            return Decision(False, reason=f"{type(exc).__name__} is in no_retry_on")
        if failures > self.policy.max_retries:
            return Decision(False, reason=f"{self.policy.max_retries} retries exhausted")
        return Decision(True, delay_s=self.delay(failures))
