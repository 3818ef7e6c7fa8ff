"""Disk full on a real small file system: the real daemon on an 8 MB tmpfs. Fill it,
get a clean 503 naming the file, free space, go on, restart on a full disk,
nothing acknowledged lost and nothing refused kept. Needs root to mount; skips
with one line otherwise (fails when `CI` is set)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon, make_daemon

TOPOLOGY = """\
version: 1
name: full
queues:
  q: {}
"""


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        _unavailable("disk-full test needs root to mount an 8 MB tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        _unavailable(f"disk-full test cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path) -> Path:
    """Write a filler file until the file system is full."""
    filler = mnt / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(chunk)
    return filler


def _daemon(tmp_path: Path, mnt: Path) -> Daemon:
    d = make_daemon(tmp_path / "d", TOPOLOGY)
    d.data_dir = mnt / "data"
    return d


def test_a_full_disk_refuses_cleanly_and_loses_nothing_acknowledged(
        tmp_path: Path, small_fs: Path) -> None:
    d = _daemon(tmp_path, small_fs)
    d.start()
    try:
        assert d.post("/v1/queues/q/messages", {"body": "first"}).status == 202
        filler = _fill(small_fs)
        # bigger than the 256 KiB of zeros the queue's log holds ahead of its end:
        # those were reserved before the disk filled, and a message fitting them is
        # stored
        refused = d.post("/v1/queues/q/messages", {"body": "Y" * 600_000})
        assert refused.status == 503, refused.body
        assert refused.headers.get("Retry-After")
        assert refused.body["error"].startswith(f"storage error: cannot write to {d.data_dir}/")
        assert refused.body["error"].endswith(": No space left on device")
        filler.unlink()
        assert d.post("/v1/queues/q/messages", {"body": "X"}).status == 202
        pulled = d.ok("POST", "/v1/queues/q/pull", {"max": 10})["messages"]
        assert [m["body"] for m in pulled] == ["first", "X"]
        assert len({m["delivery_id"] for m in pulled}) == 2
        d.ok("POST", "/v1/queues/q/ack", {"delivery_ids": [pulled[0]["delivery_id"]]})
        d.stop()
        _fill(small_fs)  # the restart itself happens on a full disk
        d.start()
        assert [m["body"] for m in d.ok("GET", "/v1/queues/q/peek?n=10")["messages"]] == ["X"]
        (small_fs / "filler").unlink()
        assert d.post("/v1/queues/q/messages", {"body": "Z"}).status == 202
    finally:
        if d.running:
            d.stop()
