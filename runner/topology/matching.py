"""Topic matching: the one reference for AMQP topic patterns (RabbitMQ's rule).

A routing key and a binding pattern are lists of words split at dots; the
empty string has no words at all (so `#` matches the empty key and `*` does
not), and every dot separates words (`a.` is `a` and an empty word). In a
pattern `*` is exactly one word and `#` zero or more; any other word matches
itself. So `a.#` matches `a`, and `#.a.#` matches `a`. These results were
checked against RabbitMQ 3.10 (tests/topology/test_topo_matching.py holds
them). The broker routes through a trie (`runner.broker.routing.TopicTrie`),
a fast path kept equal to `topic_matches` by a property test; the validator's
cycle check and the test fakes call `topic_matches` itself.
"""

from __future__ import annotations

from functools import cache


def topic_words(key: str) -> list[str]:
    """A routing key or binding pattern as words (the empty key has none)."""
    return key.split(".") if key else []


def topic_matches(pattern: str, key: str) -> bool:
    """Whether binding `pattern` matches routing `key` (see the module text)."""
    p = topic_words(pattern)
    k = topic_words(key)

    @cache
    def match(i: int, j: int) -> bool:  # p[i:] matches k[j:]
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return any(match(i + 1, at) for at in range(j, len(k) + 1))
        return j < len(k) and p[i] in ("*", k[j]) and match(i + 1, j + 1)

    return match(0, 0)


def matches_every_key(pattern: str) -> bool:
    """True for a pattern that matches any key at all (`#`, `#.#`, ...)."""
    words = topic_words(pattern)
    return bool(words) and all(w == "#" for w in words)
