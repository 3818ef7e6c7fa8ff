"""Edited handler code is picked up: a module whose source changed since it was
imported is re-imported when handlers are resolved (check_handlers, a reload),
and Pipeline.apply restarts the consumers whose handler changed."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.pipeline.handler import check_handlers, resolve
from runner.topology.model import Consumer, Queue, Topology
from tests.pipeline.harness import running, topology, wait_until

V1 = '''
def handle(msg):
    with open({out!r}, "a") as fh:
        fh.write("v1\\n")
'''

V2 = V1.replace('"v1', '"v2') + '''

def added(msg):
    pass
'''


@pytest.fixture()
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    name = f"reloadable_{uuid.uuid4().hex[:8]}"
    src = tmp_path / "mods" / f"{name}.py"
    src.parent.mkdir()
    out = tmp_path / "out.txt"
    src.write_text(V1.format(out=str(out)))
    monkeypatch.syspath_prepend(str(src.parent))
    yield name, src
    sys.modules.pop(name, None)


def _edit(src: Path, out: Path) -> None:
    src.write_text(V2.format(out=str(out)))
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_a_changed_module_is_re_imported_when_resolved(module: tuple[str, Path]) -> None:
    name, src = module
    first = resolve(f"{name}:handle")
    topo = Topology(consumers=(("c", Consumer("c", "q", f"{name}:added")),))
    assert check_handlers(topo)[0][2].endswith(f"module '{name}' has no attribute 'added'")
    _edit(src, src.parent.parent / "out.txt")
    assert check_handlers(topo) == []
    assert resolve(f"{name}:handle") is not first
    assert resolve(f"{name}:handle") is resolve(f"{name}:handle")  # unchanged: no re-import


def test_apply_restarts_a_consumer_whose_handler_code_changed(
    module: tuple[str, Path], tmp_path: Path,
) -> None:
    name, src = module
    out = tmp_path / "out.txt"
    topo: Topology = topology(queues=(Queue("work"),),
                              consumers=(Consumer("c", "work", f"{name}:handle"),))

    def lines() -> list[str]:
        return out.read_text().split() if out.exists() else []

    async def go() -> None:
        async with running(topo, tmp_path / "data") as r:
            r.publish("work", {"n": 1})
            await wait_until(lambda: lines() == ["v1"])
            _edit(src, out)
            await r.pipeline.apply(topo)
            r.publish("work", {"n": 2})
            await wait_until(lambda: lines() == ["v1", "v2"])

    asyncio.run(go())
