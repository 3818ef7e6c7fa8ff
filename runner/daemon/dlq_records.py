"""Dead letters of a dead-letter topic replayed or purged one by one (issue 13).

A selection names records by partition and offset (`{"records": [{"partition":
0, "offset": 5}]}`). Each one is settled in one engine step with its replay:
where it is the partition's next pending record the replay position moves past
it (and past the records settled before it); further on, a marker goes to the
hidden queue `__dlq.<topic>` so it is no longer pending, is never replayed
again by "replay all", and the position skips it when it gets there. A record
that cannot go back (no dead letter, its queue or group gone) stays pending and
is counted in `skipped` by reason. Unknown offsets answer 404 and records
already replayed or purged 409, before anything changes.

The selection is parsed here; the replay and purge are on the engine contract
in `runner.daemon.dlq_ops` (`replay_records`, `purge_records`).
"""

from __future__ import annotations

from typing import Any

from runner.daemon import codec
from runner.daemon.dlq_ops import Chosen
from runner.errors import NotFound
from runner.topology.model import Topology

__all__ = ["MAX_RECORDS", "RECORD_FIELDS", "Chosen", "chosen_records"]

MAX_RECORDS = 1000  # records named in one request
RECORD_FIELDS = frozenset({"partition", "offset"})


def chosen_records(body: dict[str, Any], topology: Topology, topic: str) -> Chosen:
    """The `records` field: a non-empty list of `{"partition", "offset"}`, each
    partition of `topic`, at most MAX_RECORDS, no record twice."""
    items = body.get("records")
    if not isinstance(items, list) or not items:
        raise codec.BadInput("'records' must be a non-empty list of "
                             '{"partition": P, "offset": O}')
    if len(items) > MAX_RECORDS:
        raise codec.BadInput(f"'records' names {len(items)} records; at most {MAX_RECORDS} "
                             "a request")
    partitions = topology.topic_map()[topic].partitions
    out: Chosen = []
    for i, item in enumerate(items):
        where = f"records[{i}]"
        if not isinstance(item, dict):
            raise codec.BadInput(f"'{where}' must be an object "
                                 '{"partition": P, "offset": O}')
        codec.check_fields(item, RECORD_FIELDS)
        for name in ("partition", "offset"):
            if item.get(name) is None:
                raise codec.BadInput(f"'{where}.{name}' is missing")
        p = codec.check_int(item["partition"], f"{where}.partition")
        off = codec.check_int(item["offset"], f"{where}.offset")
        if p >= partitions:
            raise NotFound(f"topic '{topic}' has no partition {p} "
                           f"(it has {partitions}: 0..{partitions - 1})")
        if (p, off) in out:
            raise codec.BadInput(f"'{where}' names partition {p} offset {off} twice")
        out.append((p, off))
    return out
