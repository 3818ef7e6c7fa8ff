"""Semantic rules over a built Topology (placeholder until the rules land)."""

from __future__ import annotations

from runner.topology.model import Topology
from runner.topology.problems import Problem


def check(topology: Topology) -> list[Problem]:
    """Every semantic problem of `topology` (references, cycles, warnings...)."""
    return []
