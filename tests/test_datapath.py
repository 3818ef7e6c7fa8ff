"""Entity names as file names (safe, collision-free on any file system) and deletes
that never leave the data directory; legacy data directories still open."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.datapath import MAX_NAME_BYTES, dir_name, entity_path, remove_tree
from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord
from runner.errors import StorageError
from runner.topology.model import Queue, Topic, Topology

names = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=300)


@given(names, names)
def test_distinct_names_never_share_a_directory_even_ignoring_case(a: str, b: str) -> None:
    if a != b:
        assert dir_name(a).lower() != dir_name(b).lower()


@given(st.text(min_size=0, max_size=400))
def test_a_directory_name_is_always_one_safe_component(name: str) -> None:
    got = dir_name(name)
    assert got not in ("", ".", "..")
    assert "/" not in got and "\0" not in got and "\n" not in got
    assert len(got.encode()) <= MAX_NAME_BYTES + 1 + 40


def test_lower_case_names_are_their_own_directory_names() -> None:
    for name in ("orders", "orders.created", "a_b-c.9", "__replay.g", "__consumer_offsets"):
        assert dir_name(name) == name
    assert dir_name("Orders") == "%4Frders"
    assert dir_name("..") == "%2E%2E" and dir_name(".") == "%2E"
    assert dir_name("x" * 249).startswith("x" * 150 + "~")


def test_remove_tree_refuses_anything_not_strictly_inside_the_data_dir(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "queues" / "q").mkdir(parents=True)
    (root / "queues" / "q" / "keep").write_text("acked")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "queues" / "link").symlink_to(outside)
    for target in (root, root / "queues" / "..", root / "queues" / ".." / "..", outside,
                   root / "queues" / "link"):
        with pytest.raises(StorageError, match="refusing to delete .*: it is not inside"):
            remove_tree(target, root=root)
    assert (root / "queues" / "q" / "keep").read_text() == "acked" and outside.is_dir()
    remove_tree(root / "queues" / "q", root=root)
    assert not (root / "queues" / "q").exists()
    remove_tree(root / "queues" / "gone", root=root)  # missing is fine


def _topology(queues: tuple[tuple[str, Queue], ...],
              topics: tuple[tuple[str, Topic], ...] = ()) -> Topology:
    return Topology(queues=queues, topics=topics)


def test_removing_queues_named_dot_and_dotdot_deletes_only_their_own_data(
    tmp_path: Path
) -> None:
    """The issue's repro, below validation (which now refuses such names): a queue
    named `.` or `..` maps to its own directory, and removing it removes only that."""
    data = tmp_path / "data"
    keep = ("keep", Queue("keep"))
    odd = (keep, (".", Queue(".")), ("..", Queue("..")),
           ("...", Queue("...", durable=False)))
    engine = Engine.open(_topology(odd), data, fsync=FsyncPolicy.NEVER)
    engine.publish_to_queue("keep", [OutMessage(b"acked and kept", routing_key="keep")])
    engine.publish_to_queue(".", [OutMessage(b"x", routing_key=".")])
    engine.ack(".", [engine.pull(".", 1, lease_s=30, consumer_id="c")[0].delivery_id])
    engine.apply(_topology((keep,)))
    engine.close()
    assert sorted(os.listdir(data / "queues")) == ["keep"]
    engine = Engine.open(_topology((keep,)), data, fsync=FsyncPolicy.NEVER)
    try:
        got = engine.pull("keep", 10, lease_s=30, consumer_id="c")
        assert [d.body for d in got] == [b"acked and kept"]
    finally:
        engine.close()


def test_names_differing_only_in_case_keep_separate_data(tmp_path: Path) -> None:
    queues = (("Orders", Queue("Orders")), ("orders", Queue("orders")))
    topics = (("Events", Topic("Events")), ("events", Topic("events")))
    engine = Engine.open(_topology(queues, topics), tmp_path / "d", fsync=FsyncPolicy.NEVER)
    try:
        engine.publish_to_queue("Orders", [OutMessage(b"upper", routing_key="Orders")])
        engine.publish_to_queue("orders", [OutMessage(b"lower", routing_key="orders")])
        engine.append("Events", [OutRecord(b"upper", partition=0)])
        assert engine.read("events", 0, 0)[0] == []
        assert [d.body for d in engine.peek("Orders", 5)] == [b"upper"]
        assert [d.body for d in engine.peek("orders", 5)] == [b"lower"]
    finally:
        engine.close()
    assert sorted(os.listdir(tmp_path / "d" / "queues")) == ["%4Frders", "orders"]
    assert sorted(os.listdir(tmp_path / "d" / "topics")) == ["%45vents-0", "events-0"]


def test_a_legacy_data_dir_with_upper_case_names_opens_and_is_migrated(tmp_path: Path) -> None:
    data = tmp_path / "d"
    topo = _topology((("Orders", Queue("Orders")),), (("Events", Topic("Events")),))
    engine = Engine.open(topo, data, fsync=FsyncPolicy.NEVER)
    engine.publish_to_queue("Orders", [OutMessage(b"kept", routing_key="Orders")])
    engine.append("Events", [OutRecord(b"rec", partition=0)])
    engine.close()
    # the layout written before names were encoded: the name as it is
    os.rename(data / "queues" / "%4Frders", data / "queues" / "Orders")
    os.rename(data / "topics" / "%45vents-0", data / "topics" / "Events-0")
    engine = Engine.open(topo, data, fsync=FsyncPolicy.NEVER)
    try:
        assert [d.body for d in engine.peek("Orders", 5)] == [b"kept"]
        assert [r.value for r in engine.read("Events", 0, 0)[0]] == [b"rec"]
    finally:
        engine.close()
    assert os.listdir(data / "queues") == ["%4Frders"]
    assert os.listdir(data / "topics") == ["%45vents-0"]


def test_entity_path_never_moves_a_dot_name(tmp_path: Path) -> None:
    assert entity_path(tmp_path, "..") == tmp_path / "%2E%2E"
    assert tmp_path.is_dir()
