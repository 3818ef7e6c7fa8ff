"""The pipeline: handlers, workers, retries, dead letters, idempotency."""

from __future__ import annotations

from runner.pipeline.runtime import Pipeline
from runner.pipeline.stats import ConsumerStats, PipelineStats

__all__ = ["ConsumerStats", "Pipeline", "PipelineStats"]
