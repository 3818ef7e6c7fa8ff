"""Issue 8 item 9: the data dir records the applied topology; a start is planned
against it like a reload (unsafe changes and a foreign data dir are refused
unless --allow-unsafe), with the real daemon."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon, make_daemon

pytestmark = pytest.mark.e2e

SHOP = """\
version: 1
name: shop
topics:
  orders: {partitions: PARTS}
queues:
  work: {}
"""


def _shop(parts: int, extra: str = "") -> str:
    return SHOP.replace("PARTS", str(parts)) + extra


def _refused(d: Daemon) -> str:
    """Start `d`, which must refuse: exit 1, nothing listening; its output."""
    d.start(expect_ready=False)
    assert d.wait(60) == 1, d.log()
    d.proc = None
    out = d.log()
    assert "listening on" not in out and "Traceback" not in out, out
    return out


def _record(d: Daemon) -> dict[str, object]:
    return dict(json.loads((d.data_dir / "topology.json").read_text()))


def test_fewer_partitions_at_restart_is_refused_with_the_plan_unless_allowed(
    tmp_path: Path,
) -> None:
    d = make_daemon(tmp_path / "shop", _shop(10))
    d.start()
    d.ok("POST", "/v1/topics/orders/records", {"value": {"id": 9}, "partition": 9}, 202)
    d.stop()
    assert _record(d)["name"] == "shop"

    d.topology.write_text(_shop(4))
    out = _refused(d)
    assert ("~ topic orders: partitions 10 -> 4  ! UNSAFE: fewer partitions (10 -> 4): "
            "a topic can only grow") in out, out
    assert (f"runner run: refused to start: 1 unsafe change(s) against the topology recorded "
            f"in {d.data_dir} (the plan is above); revert them, or pass --allow-unsafe") in out
    # nothing changed: the old topology still starts and still has its record
    d.topology.write_text(_shop(10))
    d.start()
    got = d.ok("GET", "/v1/topics/orders/partitions/9/records?offset=0")
    assert [r["value"] for r in got["records"]] == [{"id": 9}]
    d.stop()

    d.topology.write_text(_shop(4))
    d.args.append("--allow-unsafe")
    d.start()
    assert "starting with 1 unsafe change(s)" in d.log()
    d.stop()
    assert _record(d)["topology"]["topics"][0][1]["partitions"] == 4  # type: ignore[index]


def test_a_data_dir_of_another_topology_is_refused_naming_both(tmp_path: Path) -> None:
    d = make_daemon(tmp_path / "one", _shop(1))
    d.start()
    d.stop()
    d.topology.write_text(_shop(1).replace("name: shop", "name: newsletter"))
    out = _refused(d)
    assert (f"runner run: data directory {d.data_dir} holds topology 'shop', not "
            f"'newsletter': give this topology its own --data-dir (or --allow-unsafe to take "
            f"the directory over)") in out, out


def test_safe_changes_start_and_a_reload_updates_the_record(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon(_shop(2))
    d.stop()
    first = _record(d)
    d.topology.write_text(_shop(3, "  more: {}\n"))
    d.start()
    assert "2 change(s) since the topology recorded" in d.log()
    second = _record(d)
    assert second["hash"] != first["hash"]
    d.topology.write_text(_shop(3, "  more: {}\n  evenmore: {}\n"))
    d.ok("POST", "/v1/admin/reload")  # 200: applied (or already, by the file watcher)
    queues = [name for name, _ in _record(d)["topology"]["queues"]]  # type: ignore[union-attr]
    assert queues == ["evenmore", "more", "work"]


def test_a_damaged_record_refuses_the_start_saying_what_to_do(tmp_path: Path) -> None:
    d = make_daemon(tmp_path / "bad", _shop(1))
    d.data_dir.mkdir(parents=True)
    (d.data_dir / "topology.json").write_text('{"format": 1, "topology": {"topics": 7}}')
    out = _refused(d)
    assert (f"runner run: {d.data_dir / 'topology.json'} is not a topology record") in out, out
    assert "move it away to start without the check" in out
