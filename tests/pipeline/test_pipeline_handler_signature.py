"""Handlers must be callable as handler(msg) or handler(msg, ctx): checked when
they are resolved (so `check_handlers` and a reload see it, not the first message)."""

from __future__ import annotations

import pytest

from runner.errors import HandlerImportError
from runner.pipeline.handler import check_handlers, resolve
from runner.topology.model import Consumer, ConsumerGroup, Topology

H = "tests.pipeline.pipeline_handlers"
TAIL = "; it must take (msg) or (msg, ctx)"


@pytest.mark.parametrize(("name", "problem"), [
    ("bad_sig", "takes 3 required parameters"),
    ("no_params", "takes no positional parameter"),
    ("kw_needed", "has the required keyword-only parameter tenant"),
])
def test_a_wrong_signature_is_refused_when_resolved(name: str, problem: str) -> None:
    with pytest.raises(HandlerImportError) as info:
        resolve(f"{H}:{name}", consumer="c")
    assert str(info.value) == f"consumer 'c': handler '{H}:{name}' {problem}{TAIL}"


@pytest.mark.parametrize("name", ["ok", "with_ctx", "async_with_ctx", "optional_extras",
                                  "star_args", "INSTANCE", "Holder.method"])
def test_callables_taking_msg_or_msg_ctx_are_accepted(name: str) -> None:
    assert callable(resolve(f"{H}:{name}", consumer="c"))


def test_a_builtin_without_a_signature_is_accepted() -> None:
    assert resolve("builtins:print") is print


def test_check_handlers_reports_a_wrong_signature() -> None:
    topo = Topology(
        consumers=(("c", Consumer("c", "q", f"{H}:bad_sig")),),
        consumer_groups=(("g", ConsumerGroup("g", ("t",), handler=f"{H}:ok")),),
    )
    assert check_handlers(topo) == [
        ("c", f"{H}:bad_sig", f"consumer 'c': handler '{H}:bad_sig' takes 3 required "
                              f"parameters{TAIL}"),
    ]
