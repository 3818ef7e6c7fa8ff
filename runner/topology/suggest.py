"""Suggestions: the `; did you mean "x"?` for a word that is not known.

One place for the wording and the closeness rule (difflib, ratio >= 0.6),
used for unknown keys and enum values (schema) and for missing references
(rules). A `Suggester` bounds the work of one validation: difflib compares
the word with every candidate, so thousands of misspelt references against
thousands of names would take minutes; past the budget, problems simply come
without a suggestion.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection

CUTOFF = 0.6
MAX_COMPARISONS = 100_000  # word-candidate comparisons of one validation (~1 s)


def closest(word: str, candidates: Collection[str]) -> str | None:
    """The known candidate closest to `word`, when close enough."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=CUTOFF)
    return close[0] if close else None


def did_you_mean(word: str, candidates: Collection[str]) -> str:
    """`; did you mean "x"?` for the closest candidate, or nothing."""
    found = closest(word, candidates)
    return f'; did you mean "{found}"?' if found is not None else ""


class Suggester:
    """`did_you_mean` within a budget of comparisons."""

    def __init__(self, budget: int = MAX_COMPARISONS) -> None:
        self.left = budget

    def __call__(self, word: str, candidates: Collection[str]) -> str:
        if len(candidates) > self.left:
            self.left = 0
            return ""
        self.left -= len(candidates)
        return did_you_mean(word, candidates)
