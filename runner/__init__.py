"""topology-runner: a declarative pipeline runner for asynchronous messaging."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
