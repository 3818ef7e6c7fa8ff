"""The daemon: supervisor, HTTP API, metrics, topology watcher."""
