"""The store: every topic partition, consumer group and committed offset of a data dir.

Layout under `data_dir`::

    topics/<topic>-<p>/        one SegmentedLog per partition (<topic>: datapath.dir_name)
    __consumer_offsets/        committed offsets and reset positions (OffsetStore)

Single owner: every method is called from one thread, except that the store
itself runs a compaction thread (`Cleaner`) and, for `Fsync.INTERVAL`, a
`Flusher`. `tick()` runs the time-driven work: retention, scheduling
compaction, expiring silent group members.

Growing a topic's partitions moves keys (`murmur2(key) % n` changes), as in
Kafka; records already written stay where they are.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Protocol

from runner.clock import Clock, now_ms
from runner.datapath import entity_path, remove_tree
from runner.errors import (
    InvalidRequest,
    LogFailed,
    NotFound,
    OffsetOutOfRange,
    TooLarge,
    UnsafeChange,
)
from runner.fs import LOCAL, FileSystem, make_dirs
from runner.log.cache import ReadCache
from runner.log.commits import GroupCommit
from runner.log.compaction import Cleaner, compact
from runner.log.flusher import Flusher
from runner.log.groups import Groups
from runner.log.offsets import OffsetStore
from runner.log.partition import Partition, TopicPartition
from runner.log.partitioner import Partitioner, key_from_json
from runner.log.record import Fsync, Item, LogRecord
from runner.timestamps import check_timestamp_ms
from runner.topology.diff import field_change, removal, unsafe_sentence
from runner.topology.model import ConsumerGroup, Topic

log = logging.getLogger(__name__)


class IdMemory(Protocol):
    """Where remembered message ids are counted (the broker's MemoryBudget is one)."""

    def hold(self, nbytes: int, ids: int = 0) -> None: ...


# What one message id remembered for deduplication costs (issue 17: a flood of
# distinct ids took ~550 B each, up to 1,000,000 of them, outside the memory
# budget): its dict entry, key and value, plus the id's text. Measured with
# tracemalloc: ~240 B for an 18-character id sent to a queue; counted on the high
# side (a route of its own per message through an exchange, a topic's entry).
ID_MEMORY = 384


def id_memory(message_id: str) -> int:
    """What a memory budget counts for one remembered message id (the broker's
    ids of queues and exchanges, the store's of topics)."""
    return ID_MEMORY + (len(message_id) if message_id.isascii() else 4 * len(message_id))


@dataclass(frozen=True, slots=True)
class AppendRecord:
    """A record to append (the engine maps its OutRecord onto this)."""

    value: bytes | None
    key: bytes | None = None  # None: the topic's `key` field of a JSON value, else keyless
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None
    timestamp_ms: int | None = None
    producer_id: str | None = None
    sequence: int | None = None
    message_id: str | None = None  # dedup within the store's `dedup_window_s`


@dataclass(frozen=True, slots=True)
class PartitionCounters:
    partition: int
    log_start_offset: int
    log_end_offset: int
    size_bytes: int
    oldest_timestamp_ms: int | None = None  # first record at the log start; None: empty


@dataclass(slots=True)
class _Topic:
    config: Topic
    partitions: list[Partition]
    records_appended: int = 0
    cleaned: dict[int, tuple[int, ...]] = field(default_factory=dict)  # partition -> bases
    cleaned_at: dict[int, float] = field(default_factory=dict)
    compacting: set[int] = field(default_factory=set)  # partitions queued or running


def producer_number(producer_id: str) -> int:
    """A stable non-negative int64 for a producer id string."""
    digest = hashlib.blake2b(producer_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def record_size(key: bytes | None, value: bytes | None,
                headers: Sequence[tuple[str, bytes]]) -> int:
    return (len(key or b"") + len(value or b"")
            + sum(len(n.encode()) + len(v) for n, v in headers))


class Store:
    """The Kafka side of the engine for one data directory."""

    def __init__(
        self, data_dir: Path, *, fsync: Fsync = Fsync.ALWAYS, clock: Clock,
        cache_bytes_total: int = 64 * 1024 * 1024,
        session_timeout_s: float = 10.0, fsync_interval_ms: float = 5.0,
        compaction_interval_s: float = 600.0, dedup_window_s: float | None = None,
        dedup_max_entries: int = 1_000_000, background: bool = True,
        gapped_producers: Collection[str] = (), fs: FileSystem = LOCAL,
        group: GroupCommit | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.fs = fs
        self.fsync = Fsync(fsync)
        self.clock = clock
        self.read_cache = ReadCache(cache_bytes_total)  # shared by every partition
        self.fsync_interval_ms = fsync_interval_ms
        self.compaction_interval_s = compaction_interval_s
        self.dedup_window_ms = None if dedup_window_s is None else int(dedup_window_s * 1000)
        self._topics: dict[str, _Topic] = {}
        self._partitioners: dict[str, Partitioner] = {}  # per topic: keyless spreading
        # (topic, message id) -> (partition, offset, first seen ms); insertion order ~ time
        self._dedup: OrderedDict[tuple[str, str], tuple[int, int, int]] = OrderedDict()
        self.dedup_max_entries = dedup_max_entries
        self.dedup_memory: IdMemory | None = None  # see `count_ids_in`
        # producers whose sequences may jump forward (the engine's exactly-once steps)
        self.gapped_producers = frozenset(gapped_producers)
        self.group = group
        make_dirs(fs, self.data_dir / "topics")
        self.flusher = Flusher(fsync_interval_ms) if fsync is Fsync.INTERVAL else None
        self.cleaner = Cleaner() if background else None
        self.offsets = OffsetStore(self.data_dir / "__consumer_offsets", fsync=self.fsync,
                                   clock=clock, fs=fs, group=group)
        if self.flusher:
            self.flusher.add(self.offsets)
        self.groups = Groups(self.offsets, self, clock, session_timeout_s=session_timeout_s)

    # ------------------------------------------------------------ PartitionView
    def partition_count(self, topic: str) -> int:
        t = self._topics.get(topic)
        return len(t.partitions) if t else 0

    def log_start(self, tp: TopicPartition) -> int:
        return self.partition(tp.topic, tp.partition).log_start_offset

    def log_end(self, tp: TopicPartition) -> int:
        return self.partition(tp.topic, tp.partition).log_end_offset

    def offset_for_timestamp(self, tp: TopicPartition, ts_ms: int) -> int:
        return self.partition(tp.topic, tp.partition).log.offset_for_timestamp(ts_ms)

    # ------------------------------------------------------------ topology
    def unsafe_changes(self, topics: Mapping[str, Topic]) -> list[str]:
        """What `apply(topics)` refuses, one sentence each, as `runner plan` says it
        (`runner.topology.diff`, the rule's one home; the engine checks a reload
        with it before touching anything): shrinking partitions, turning
        compaction off, removing a topic that holds records."""
        problems = []
        for name, new in topics.items():
            old = self._topics.get(name)
            if old is None:
                continue
            for change in (
                field_change("topic", name, "partitions", len(old.partitions), new.partitions),
                field_change("topic", name, "cleanup_policy", old.config.cleanup_policy,
                             new.cleanup_policy),
            ):
                if not change.safe:
                    problems.append(unsafe_sentence(change))
        for name, old in self._topics.items():
            if name not in topics and any(p.log_end_offset > p.log_start_offset
                                          for p in old.partitions):
                problems.append(unsafe_sentence(removal("topic", name, empty=False)))
        return problems

    def apply(
        self, topics: Mapping[str, Topic], groups: Mapping[str, ConsumerGroup] | None = None,
    ) -> list[str]:
        """Bring topics (and groups, when given) to `topics`; a line per change.
        Raises UnsafeChange, applying nothing, for shrinking partitions, turning
        compaction off, or removing a topic that holds records."""
        problems = self.unsafe_changes(topics)
        if problems:
            raise UnsafeChange("; ".join(problems))
        for gname, cg in (groups or {}).items():
            missing = [t for t in cg.topics if t not in topics]
            if missing:
                raise NotFound(f"group {gname!r} reads unknown topic {missing[0]!r}")
        changes: list[str] = []
        for name in [n for n in self._topics if n not in topics]:
            self._drop_topic(name)
            changes.append(f"removed topic {name}")
        for name, new in topics.items():
            old = self._topics.get(name)
            if old is None:
                self._topics[name] = _Topic(new, [self._open(new, p)
                                                  for p in range(new.partitions)])
                changes.append(f"added topic {name} ({new.partitions} partitions)")
                continue
            if new.partitions > len(old.partitions):
                changes.append(f"topic {name}: partitions {len(old.partitions)} -> "
                               f"{new.partitions} (keys may move to other partitions)")
                old.partitions.extend(self._open(new, p)
                                      for p in range(len(old.partitions), new.partitions))
            if new != old.config:
                changes.extend(self._describe(old.config, new))
                for part in old.partitions:
                    part.configure(new)
                old.config = new
        if groups is not None:
            for name in [n for n in self.groups.names() if n not in groups]:
                self.groups.remove(name)
                changes.append(f"removed group {name}")
            for name, cg in groups.items():
                known = name in self.groups.names()
                self.groups.declare(cg)
                if not known:
                    changes.append(f"added group {name}")
        else:
            for name in self.groups.names():
                self.groups.refresh(name)
        return changes

    @staticmethod
    def _describe(old: Topic, new: Topic) -> list[str]:
        out = []
        for attr in ("retention", "compact", "delete", "segment_bytes", "max_message_bytes",
                     "key", "delete_retention_s"):
            if getattr(old, attr) != getattr(new, attr):
                out.append(f"topic {new.name}: {attr} {getattr(old, attr)!r} -> "
                           f"{getattr(new, attr)!r}")
        return out

    def _open(self, topic: Topic, number: int) -> Partition:
        directory = entity_path(self.data_dir / "topics", topic.name, f"-{number}", fs=self.fs)
        part = Partition(directory, topic, number,
                         fsync=self.fsync, clock=self.clock, cache=self.read_cache,
                         fsync_interval_ms=self.fsync_interval_ms, fs=self.fs,
                         group=self.group)
        if self.flusher:
            self.flusher.add(part.log)
        if self.dedup_window_ms is not None:
            self._load_dedup(topic.name, part)
        return part

    def _drop_topic(self, name: str) -> None:
        t = self._topics.pop(name)
        self._partitioners.pop(name, None)
        for part in t.partitions:
            if self.flusher:
                self.flusher.remove(part.log)
            with part.maintenance:
                part.close()
            remove_tree(part.directory, root=self.data_dir, fs=self.fs)

    def topic(self, name: str) -> Topic:
        return self._topic(name).config

    def topic_names(self) -> list[str]:
        return sorted(self._topics)

    def _topic(self, name: str) -> _Topic:
        t = self._topics.get(name)
        if t is None:
            raise NotFound(f"unknown topic {name!r}")
        return t

    def partition(self, topic: str, number: int) -> Partition:
        t = self._topic(topic)
        if not 0 <= number < len(t.partitions):
            raise NotFound(f"topic {topic!r} has no partition {number}")
        return t.partitions[number]

    # ------------------------------------------------------------ producing
    def resolve(self, topic: str, records: Sequence[AppendRecord], *, advance: bool = True,
                ) -> list[tuple[int, Item]]:
        """Check records and choose their partitions, without writing: (partition, item).
        Raises NotFound, InvalidRequest (keyless on a compacted topic), TooLarge.
        `advance=False`: a check only, the round robin stays where it is (the append
        that follows chooses again)."""
        parts, items = self._resolve(topic, records, advance=advance)
        return list(zip(parts, items, strict=True))

    def _resolve(self, topic: str, records: Sequence[AppendRecord], *, sticky: bool = False,
                 advance: bool = True) -> tuple[list[int], list[Item]]:
        """`resolve` as two lists (the hot path: no per-record method calls for the
        common case). `sticky`: the keyless records all go to one partition, the next
        of the sticky calls' own round robin. `advance=False`: the round robins are
        left where they were."""
        t = self._topic(topic)
        cfg = t.config
        now = now_ms(self.clock)
        n = len(t.partitions)
        limit = cfg.max_message_bytes
        json_key = cfg.key
        compact = cfg.compact
        with_ids = self.dedup_window_ms is not None
        partitioner = self._partitioner(topic)
        hashes = partitioner.hashes
        rr = partitioner.next
        st = partitioner.sticky
        together = -1  # sticky: the keyless records' partition, once chosen
        parts: list[int] = []
        items: list[Item] = []
        add_part = parts.append
        add_item = items.append
        for rec in records:
            key = rec.key
            value = rec.value
            headers = rec.headers
            if key is None and json_key:
                key = key_from_json(value, json_key)
            size = 0 if value is None else len(value)
            if key is not None:
                size += len(key)
            elif compact:
                raise InvalidRequest(f"topic {topic!r} is compacted: every record needs a key")
            if headers:
                size += sum(len(h.encode()) + len(v) for h, v in headers)
            if size > limit:
                raise TooLarge(f"record of {size} bytes is over the max_message_bytes "
                               f"({limit}) of topic {topic!r}")
            p = rec.partition
            if p is not None:
                if not 0 <= p < n:
                    raise NotFound(f"topic {topic!r} has no partition {p}")
            elif key is None:
                if not sticky:
                    p = rr % n
                    rr = p + 1
                elif together >= 0:
                    p = together
                else:
                    p = together = st % n
                    st = p + 1
            else:
                h = hashes.get(key)
                if h is None:
                    h = partitioner.hash(key)
                p = h % n
            if with_ids and rec.message_id is not None:
                headers = (*headers, ("x-message-id", rec.message_id.encode()))
            ts = rec.timestamp_ms
            if ts is not None:
                check_timestamp_ms(ts, f"record {len(parts)}: timestamp")
            add_part(p)
            add_item((key, value, headers, now if ts is None else ts))
        if advance:
            partitioner.next = rr
            partitioner.sticky = st
        return parts, items

    def _partitioner(self, topic: str) -> Partitioner:
        part = self._partitioners.get(topic)
        if part is None:
            part = self._partitioners[topic] = Partitioner()
        return part

    def producer_sequence(self, topic: str, partition: int, producer_id: str) -> int:
        """The last sequence `producer_id` appended to the partition, -1 when unknown.
        NotFound for an unknown topic or partition."""
        log = self.partition(topic, partition).log
        return log.last_sequence(producer_number(producer_id))

    def append(self, topic: str, records: Sequence[AppendRecord], *,
               allow_gap: bool = False, restart: bool = False,
               sticky: bool = False) -> list[tuple[int, int]]:
        """Append records; (partition, offset) per record, in order.

        Records with a producer id and sequence follow Kafka's idempotent producer,
        per producer and partition: an exact retry of one of its last 8 batches
        (same records, so the same first sequence and count per partition) is not
        stored again and gets the original offsets; otherwise the sequence must be
        the last one + 1 (producers in `gapped_producers`, and every producer with
        `allow_gap`, may jump forward), else
        InvalidRequest "producer 'p' on t/0: out of order sequence S: expected N
        (...)", raised before anything of the call is written. With a dedup
        window, records with a message id seen in the window are stored once too.
        `restart`: the caller (the Kafka listener, at a producer's sequence
        wrap-around) checked that each producer's first run continues its sequence,
        which may be lower than the last: it is appended (unless an exact retry).
        `sticky`: the call's keyless records go to one partition (Kafka's sticky
        partitioner, KIP-480: one batch, one partition), the next of a round robin the
        sticky calls keep apart from the record-by-record one (so each spreads evenly
        however the two alternate), and a batch of many producers' records is one log
        to sync, not one per partition."""
        parts, items = self._resolve(topic, records, sticky=sticky)
        t = self._topics[topic]
        if self.dedup_window_ms is None and all(r.producer_id is None for r in records):
            return self._append_plain(t, parts, items)
        resolved = list(zip(parts, items, strict=True))
        result: list[tuple[int, int]] = [(-1, -1)] * len(records)
        runs: dict[int, list[int]] = {}
        skip = set()
        if self.dedup_window_ms is not None:
            for i, rec in enumerate(records):
                seen = self._dedup.get((topic, rec.message_id or "")) if rec.message_id else None
                if seen is not None and seen[2] >= now_ms(self.clock) - self.dedup_window_ms:
                    result[i] = (seen[0], seen[1])
                    skip.add(i)
        for i, (p, _item) in enumerate(resolved):
            if i not in skip:
                runs.setdefault(p, []).append(i)
        # partition, run, producer, seq, restart (the producer's first run only)
        plan: list[tuple[int, list[int], int, int, bool]] = []
        seen_producers: set[tuple[int, int]] = set()
        for p, idxs in runs.items():
            for run in _producer_runs(records, idxs):
                rec0 = records[run[0]]
                pid = producer_number(rec0.producer_id) if rec0.producer_id is not None else -1
                seq = rec0.sequence if rec0.sequence is not None and pid >= 0 else -1
                first_run = seq >= 0 and (p, pid) not in seen_producers
                if first_run:
                    # refuse an out-of-order batch before anything of the call is written
                    seen_producers.add((p, pid))
                    self._check_sequence(topic, p, rec0, pid, seq, len(run), allow_gap,
                                         restart)
                plan.append((p, run, pid, seq, restart and first_run))
        for p, run, pid, seq, again in plan:
            part = t.partitions[p]
            end = part.log_end_offset
            gap = pid >= 0 and (allow_gap
                                or records[run[0]].producer_id in self.gapped_producers)
            try:
                first = part.append([resolved[i][1] for i in run], producer_id=pid,
                                    sequence=seq, allow_gap=gap, restart=again)
            except InvalidRequest as exc:
                raise self._sequence_error(topic, p, records[run[0]], exc) from None
            for k, i in enumerate(run):
                result[i] = (p, first + k)
            t.records_appended += part.log_end_offset - end
        if self.dedup_window_ms is not None:
            now = now_ms(self.clock)
            for i, rec in enumerate(records):
                if rec.message_id is not None and i not in skip:
                    self._set_id((topic, rec.message_id), (*result[i], now))
            self._prune_dedup(now)
        return result

    @staticmethod
    def _append_plain(t: _Topic, parts: list[int], items: list[Item]) -> list[tuple[int, int]]:
        """Records without producer ids or message ids: one batch per partition."""
        n = len(t.partitions)
        if n == 1 or all(p == parts[0] for p in parts):
            p = parts[0] if parts else 0
            if not items:
                return []
            part = t.partitions[p]
            first = part.append(items)
            t.records_appended += len(items)
            return [(p, off) for off in range(first, first + len(items))]
        groups: list[list[Item]] = [[] for _ in range(n)]
        adds = [g.append for g in groups]
        for p, item in zip(parts, items, strict=True):
            adds[p](item)
        # per partition, its (partition, offset) pairs in append order; the records
        # take them in their order, so the i-th record of partition p gets p's i-th
        taken: list[Iterator[tuple[int, int]]] = [iter(())] * n
        for p, group in enumerate(groups):
            if group:
                first = t.partitions[p].append(group)
                taken[p] = zip(repeat(p), range(first, first + len(group)))
        t.records_appended += len(items)
        return [next(taken[p]) for p in parts]

    def _check_sequence(self, topic: str, p: int, rec: AppendRecord, pid: int, seq: int,
                        count: int, allow_gap: bool, restart: bool = False) -> None:
        gap = allow_gap or rec.producer_id in self.gapped_producers
        try:
            self._topics[topic].partitions[p].log.check_sequence(pid, seq, count,
                                                                 allow_gap=gap,
                                                                 restart=restart)
        except InvalidRequest as exc:
            raise self._sequence_error(topic, p, rec, exc) from None

    @staticmethod
    def _sequence_error(topic: str, p: int, rec: AppendRecord,
                        exc: InvalidRequest) -> InvalidRequest:
        return InvalidRequest(f"producer {rec.producer_id!r} on {topic}/{p}: {exc}")

    def _prune_dedup(self, now: int) -> None:
        """Forget message ids older than the window (and the oldest beyond the cap)."""
        assert self.dedup_window_ms is not None
        horizon = now - self.dedup_window_ms
        dedup = self._dedup
        memory = self.dedup_memory
        while dedup and (len(dedup) > self.dedup_max_entries
                         or next(iter(dedup.values()))[2] < horizon):
            key, _ = dedup.popitem(last=False)
            if memory is not None:
                memory.hold(-id_memory(key[1]), -1)

    def count_ids_in(self, memory: IdMemory) -> None:
        """Count the remembered message ids (those of now and from now on) in
        `memory`: the engine's memory budget, shared with the queues."""
        self.dedup_memory = memory
        memory.hold(sum(id_memory(key[1]) for key in self._dedup), len(self._dedup))

    def _set_id(self, key: tuple[str, str], value: tuple[int, int, int]) -> None:
        dedup = self._dedup
        if key not in dedup and self.dedup_memory is not None:
            self.dedup_memory.hold(id_memory(key[1]), 1)
        dedup[key] = value

    def _load_dedup(self, topic: str, part: Partition) -> None:
        """Rebuild the message ids of the window from the records' `x-message-id`
        headers (reads the partition's records of the last `dedup_window_s`, at
        most `dedup_max_entries` of them)."""
        assert self.dedup_window_ms is not None
        now = now_ms(self.clock)
        offset = max(part.log.offset_for_timestamp(now - self.dedup_window_ms),
                     part.log_end_offset - self.dedup_max_entries, part.log_start_offset)
        while offset < part.log_end_offset:
            recs = part.read(offset, max_records=5000, max_bytes=8 * 1024 * 1024)
            for r in recs:
                for name, value in r.headers:
                    if name == "x-message-id":
                        self._set_id((topic, value.decode()),
                                     (part.number, r.offset, r.timestamp_ms))
            offset = recs[-1].offset + 1
        self._prune_dedup(now)

    # ------------------------------------------------------------ reading
    def read(
        self, topic: str, partition: int, offset: int, *, max_records: int = 100,
        max_bytes: int = 1024 * 1024,
    ) -> list[LogRecord]:
        """Records from `offset`; OffsetOutOfRange below the log start."""
        return self.read_from(topic, partition, offset, max_records=max_records,
                              max_bytes=max_bytes)[0]

    def read_from(
        self, topic: str, partition: int, offset: int, *, max_records: int = 100,
        max_bytes: int = 1024 * 1024,
    ) -> tuple[list[LogRecord], int]:
        """Records from `offset` and the offset to read next: after the last record
        returned, or the visible log end when the read reached it (so offsets
        compaction removed at the end are passed over, not read forever).
        OffsetOutOfRange below the log start or above the log end."""
        part = self.partition(topic, partition)
        try:
            return part.read_from(offset, max_records=max_records, max_bytes=max_bytes)
        except OffsetOutOfRange as exc:
            raise OffsetOutOfRange(f"{topic}/{partition}: {exc}", log_start=exc.log_start,
                                   log_end=exc.log_end) from None

    def partitions(self, topic: str) -> list[PartitionCounters]:
        return [PartitionCounters(p.number, p.log_start_offset, p.log_end_offset, p.size_bytes,
                                  p.oldest_timestamp_ms)
                for p in self._topic(topic).partitions]

    def failed_logs(self) -> list[LogFailed]:
        """Logs refusing every read and write after a failed fsync (until restart)."""
        out = [self.offsets.failed] if self.offsets.failed is not None else []
        for t in self._topics.values():
            out.extend(p.log.failed for p in t.partitions if p.log.failed is not None)
        return out

    def records_appended(self) -> dict[str, int]:
        """Per topic, records appended since the store opened (a plain counter)."""
        return {name: t.records_appended for name, t in self._topics.items()}

    # ------------------------------------------------------------ time-driven work
    def tick(self) -> None:
        """Retention, compaction scheduling, member expiry (call every ~100 ms)."""
        now = now_ms(self.clock)
        mono = self.clock.monotonic()
        for t in self._topics.values():
            for part in t.partitions:
                part.enforce_retention(now)
                if t.config.compact:
                    self._maybe_compact(t, part, mono)
        self.groups.expire()
        if self.dedup_window_ms is not None:
            self._prune_dedup(now)
        if self.fsync is Fsync.INTERVAL and self.flusher is None:
            self.flush()

    def _maybe_compact(self, t: _Topic, part: Partition, mono: float) -> None:
        """Queue a compaction when closed segments changed since the last one, or
        `compaction_interval_s` passed (tombstones may have expired); never two
        at once for one partition."""
        key = part.number
        if key in t.compacting:
            return
        bases = tuple(s.base for s in part.log.closed_segments())
        if not bases:
            return
        last = t.cleaned_at.get(key)
        if t.cleaned.get(key) == bases and (
                last is not None and mono - last < self.compaction_interval_s):
            return
        t.compacting.add(key)
        t.cleaned_at[key] = mono

        def job() -> None:
            try:
                with part.maintenance:
                    compact(part.log, now_ms=now_ms(self.clock),
                            delete_retention_ms=int(t.config.delete_retention_s * 1000))
                    t.cleaned[key] = tuple(s.base for s in part.log.closed_segments())
            finally:
                t.compacting.discard(key)

        if self.cleaner is not None:
            self.cleaner.submit(job)
        else:
            job()

    def wait_for_compaction(self, timeout: float = 30.0) -> bool:
        return self.cleaner.idle(timeout) if self.cleaner else True

    def flush(self) -> None:
        """fsync every log (except ones failed by an fsync: see `failed_logs`)."""
        for t in self._topics.values():
            for part in t.partitions:
                if part.log.failed is None:
                    part.log.sync()
        if self.offsets.failed is None:
            self.offsets.sync()

    def close(self) -> None:
        if self.flusher:
            self.flusher.close()
        if self.cleaner:
            self.cleaner.close()
        for t in self._topics.values():
            for part in t.partitions:
                part.close()
        self.offsets.close()


def _producer_runs(records: Sequence[AppendRecord], idxs: list[int]) -> list[list[int]]:
    """Split a partition's records into runs that can share one batch: keyed by the
    same producer with consecutive sequences, or all without a producer."""
    runs: list[list[int]] = []
    for i in idxs:
        rec = records[i]
        if runs:
            prev = records[runs[-1][-1]]
            if rec.producer_id is None and prev.producer_id is None and (
                    rec.sequence is None):
                runs[-1].append(i)
                continue
            if (rec.producer_id is not None and rec.producer_id == prev.producer_id
                    and rec.sequence is not None and prev.sequence is not None
                    and rec.sequence == prev.sequence + 1):
                runs[-1].append(i)
                continue
        runs.append([i])
    return runs
