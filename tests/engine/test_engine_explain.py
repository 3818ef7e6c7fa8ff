"""`EmbeddedBackend.explain` (the contract's optional RouteExplainer): the engine's
own router shows a publish hop by hop, without making it; `runner route` uses it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.engine.contract import RouteExplainer, RouteHop
from runner.engine.embedded import EmbeddedBackend, open_embedded
from runner.engine.values import FsyncPolicy
from runner.errors import Forbidden, NotFound
from runner.topology.model import Binding, Exchange, ExchangeType, Queue, Topic, Topology

TOPOLOGY = Topology(
    topics=(("ev", Topic("ev")),),
    exchanges=(("in", Exchange("in", ExchangeType.TOPIC, alternate_exchange="lost")),
               ("int", Exchange("int", ExchangeType.FANOUT, internal=True)),
               ("lost", Exchange("lost", ExchangeType.FANOUT))),
    queues=(("q", Queue("q")), ("deep", Queue("deep")), ("nowhere", Queue("nowhere"))),
    bindings=(Binding("in", queue="q", routing_key="a.#"),
              Binding("in", to_exchange="int", routing_key="a.b"),
              Binding("in", topic="ev", routing_key="a.*"),
              Binding("int", queue="deep"),
              Binding("lost", queue="nowhere")),
)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[EmbeddedBackend]:
    b = open_embedded(TOPOLOGY, tmp_path, fsync=FsyncPolicy.NEVER)
    yield b
    b.close()


def test_hops_through_bindings_and_the_alternate_exchange(backend: EmbeddedBackend) -> None:
    explainer: RouteExplainer = backend
    assert explainer.explain("in", "a.b") == (
        RouteHop("in", "topic", "publish", None,
                 (("queue", "q"), ("exchange", "int"), ("topic", "ev"))),
        RouteHop("int", "fanout", "binding", "in", (("queue", "deep"),)),
    )
    assert explainer.explain("in", "zzz") == (
        RouteHop("in", "topic", "publish", None, ()),
        RouteHop("lost", "fanout", "alternate", "in", (("queue", "nowhere"),)),
    )


def test_nothing_is_published_or_counted(backend: EmbeddedBackend) -> None:
    backend.explain("in", "a.b")
    assert [backend.queue_info(q).ready for q in ("q", "deep", "nowhere")] == [0, 0, 0]
    assert backend.partitions("ev")[0].log_end_offset == 0
    assert backend.stats().exchange_published.get("in", 0) == 0


def test_unknown_and_internal_exchanges_are_refused_as_a_publish_is(
    backend: EmbeddedBackend,
) -> None:
    with pytest.raises(NotFound) as unknown:
        backend.explain("nope", "")
    with pytest.raises(Forbidden) as internal:
        backend.explain("int", "")
    assert str(unknown.value) == "exchange 'nope' not found"
    assert str(internal.value) == (
        "exchange 'int' is internal: only other exchanges may publish to it")
