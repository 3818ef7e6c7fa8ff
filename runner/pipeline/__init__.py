"""The pipeline: handlers, workers, retries, dead letters, idempotency."""
