"""The Kafka side of the embedded engine: segmented logs, partitions, groups."""
