"""`python -m runner` is the `runner` console script."""

from __future__ import annotations

from runner.cli import entry

entry()
