"""Routing: AMQP 0-9-1 exchanges and bindings, resolved to queues and topics.

`direct` matches the key exactly, `fanout` ignores it, `topic` matches
dot-separated words through a trie (`*` one word, `#` zero or more; matched
word by word, never across dots: a fast path of the reference
`runner.topology.matching.topic_matches`, kept equal to it by a property
test), `headers` compares the binding's headers with the message's as
strings (`all` / `any`; binding headers starting with `x-` are ignored).
Exchange-to-exchange bindings are followed once per exchange (a loop stops),
a queue reached twice gets one copy, and an exchange whose own bindings
match nothing hands the message to its `alternate_exchange`. Results of
key-only routes are cached per (exchange, routing key); every binding or
exchange change clears the cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from runner.errors import Forbidden, NotFound
from runner.topology.matching import topic_words
from runner.topology.model import Binding, Exchange, ExchangeType, HeadersMatch

_CACHE_LIMIT = 65536


class Route(NamedTuple):
    """Where one message went: queue names and topic names, in binding order.

    `duplicate`: the message id was published (to the same exchange or queue)
    within the dedup window, so this publish stored nothing; `queues` and
    `topics` are then where that first publish went (the idempotent answer:
    after a restart its queues only) and `stored` is empty."""

    queues: tuple[str, ...]
    topics: tuple[str, ...]
    duplicate: bool = False

    @property
    def stored(self) -> list[str]:
        """The destinations this publish itself wrote to (none for a duplicate)."""
        return [] if self.duplicate else [*self.queues, *self.topics]

    @property
    def destinations(self) -> list[str]:
        return [*self.queues, *self.topics]


NOWHERE = Route((), ())


class Hop(NamedTuple):
    """One exchange a message passed (`Router.explain`): reached by the publish, by
    an exchange-to-exchange binding, or as the alternate of `parent`; and the
    destinations its own bindings matched."""

    exchange: str
    type: str
    via: str  # "publish" | "binding" | "alternate"
    parent: str | None
    matched: tuple[tuple[str, str], ...]  # (kind, name), kind queue | exchange | topic

# A binding destination: ("queue" | "exchange" | "topic", name).
Dest = tuple[str, str]


class _Node:
    __slots__ = ("children", "star", "hash", "dests")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.hash: _Node | None = None
        self.dests: list[Dest] = []


class TopicTrie:
    """Binding patterns of one topic exchange as a trie over words."""

    __slots__ = ("_root", "_order")

    def __init__(self) -> None:
        self._root = _Node()
        self._order: dict[Dest, int] = {}

    def add(self, pattern: str, dest: Dest) -> None:
        node = self._root
        for word in topic_words(pattern):
            if word == "*":
                node.star = node.star or _Node()
                node = node.star
            elif word == "#":
                node.hash = node.hash or _Node()
                node = node.hash
            else:
                nxt = node.children.get(word)
                if nxt is None:
                    nxt = node.children[word] = _Node()
                node = nxt
        self._order.setdefault(dest, len(self._order))
        if dest not in node.dests:
            node.dests.append(dest)

    def match(self, key: str) -> list[Dest]:
        """Destinations whose pattern matches `key`, each once, in binding order."""
        found: dict[Dest, None] = {}
        self._walk(self._root, topic_words(key), 0, found, set())
        if len(found) < 2:
            return list(found)
        return sorted(found, key=self._order.__getitem__)

    def _walk(
        self, node: _Node, words: list[str], i: int, found: dict[Dest, None],
        seen: set[tuple[int, int]],
    ) -> None:
        # `seen` stops the exponential re-walks several `#` would cause.
        mark = (id(node), i)
        if mark in seen:
            return
        seen.add(mark)
        n = len(words)
        if node.hash is not None:
            for j in range(i, n + 1):
                self._walk(node.hash, words, j, found, seen)
        if i == n:
            for d in node.dests:
                found[d] = None
            return
        child = node.children.get(words[i])
        if child is not None:
            self._walk(child, words, i + 1, found, seen)
        if node.star is not None:
            self._walk(node.star, words, i + 1, found, seen)


def header_text(value: object) -> str:
    """A header value as the string binding headers are compared with."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    return str(value)


def headers_match(binding: Binding, headers: Mapping[str, Any]) -> bool:
    wanted = [(k, v) for k, v in binding.headers if not k.startswith("x-")]
    if binding.match is HeadersMatch.ALL:
        return all(k in headers and header_text(headers[k]) == v for k, v in wanted)
    return any(k in headers and header_text(headers[k]) == v for k, v in wanted)


class _ExchangeState:
    __slots__ = ("spec", "bindings", "direct", "fanout", "trie", "published", "unroutable")

    def __init__(self, spec: Exchange) -> None:
        self.spec = spec
        self.bindings: list[Binding] = []
        self.direct: dict[str, list[Dest]] = {}
        self.fanout: list[Dest] = []
        self.trie = TopicTrie()
        self.published = 0
        self.unroutable = 0

    def rebuild(self) -> None:
        self.direct = {}
        self.fanout = []
        self.trie = TopicTrie()
        for b in self.bindings:
            dest = (b.destination_kind, b.destination)
            if self.spec.type is ExchangeType.DIRECT:
                lst = self.direct.setdefault(b.routing_key, [])
                if dest not in lst:
                    lst.append(dest)
            elif self.spec.type is ExchangeType.FANOUT:
                if dest not in self.fanout:
                    self.fanout.append(dest)
            elif self.spec.type is ExchangeType.TOPIC:
                self.trie.add(b.routing_key, dest)

    def match(self, key: str, headers: Mapping[str, Any]) -> list[Dest]:
        t = self.spec.type
        if t is ExchangeType.DIRECT:
            return self.direct.get(key, [])
        if t is ExchangeType.FANOUT:
            return self.fanout
        if t is ExchangeType.TOPIC:
            return self.trie.match(key)
        out: list[Dest] = []
        for b in self.bindings:
            dest = (b.destination_kind, b.destination)
            if dest not in out and headers_match(b, headers):
                out.append(dest)
        return out


class Router:
    """The exchanges and bindings of a broker; `route` says where a message goes."""

    def __init__(self) -> None:
        self._exchanges: dict[str, _ExchangeState] = {}
        self._cache: dict[tuple[str, str], Route] = {}

    # ------------------------------------------------------------ declaring
    def declare_exchange(self, spec: Exchange) -> None:
        state = self._exchanges.get(spec.name)
        if state is None:
            self._exchanges[spec.name] = _ExchangeState(spec)
        else:
            state.spec = spec
            state.rebuild()
        self._cache.clear()

    def delete_exchange(self, name: str) -> None:
        self._exchanges.pop(name, None)
        self._cache.clear()

    def bind(self, binding: Binding) -> None:
        state = self._state(binding.exchange)
        if binding not in state.bindings:
            state.bindings.append(binding)
            state.rebuild()
        self._cache.clear()

    def unbind(self, binding: Binding) -> None:
        state = self._exchanges.get(binding.exchange)
        if state is not None and binding in state.bindings:
            state.bindings.remove(binding)
            state.rebuild()
        self._cache.clear()

    def unbind_destination(self, kind: str, name: str) -> list[Binding]:
        """Remove every binding to a queue / exchange / topic; returns them."""
        gone: list[Binding] = []
        for state in self._exchanges.values():
            keep = [b for b in state.bindings
                    if not (b.destination_kind == kind and b.destination == name)]
            if len(keep) != len(state.bindings):
                gone.extend(b for b in state.bindings if b not in keep)
                state.bindings = keep
                state.rebuild()
        self._cache.clear()
        return gone

    # ------------------------------------------------------------ reading
    def exchange(self, name: str) -> Exchange:
        return self._state(name).spec

    def exchanges(self) -> list[Exchange]:
        return [s.spec for s in self._exchanges.values()]

    def bindings(self) -> list[Binding]:
        return [b for s in self._exchanges.values() for b in s.bindings]

    def has_exchange(self, name: str) -> bool:
        return name in self._exchanges

    def counters(self) -> dict[str, tuple[int, int]]:
        """exchange -> (published, unroutable)."""
        return {n: (s.published, s.unroutable) for n, s in self._exchanges.items()}

    def _state(self, name: str) -> _ExchangeState:
        state = self._exchanges.get(name)
        if state is None:
            raise NotFound(f"exchange '{name}' not found")
        return state

    # ------------------------------------------------------------ routing
    def check_publish(self, exchange: str) -> None:
        """NotFound for an unknown exchange, Forbidden for an internal one."""
        state = self._state(exchange)
        if state.spec.internal:
            raise Forbidden(
                f"exchange '{exchange}' is internal: only other exchanges may publish to it"
            )

    def route(
        self, exchange: str, routing_key: str, headers: Mapping[str, Any] | None = None,
        *, count: bool = True,
    ) -> Route:
        """Where a message published to `exchange` goes (counted when `count`)."""
        state = self._state(exchange)
        cache_key = (exchange, routing_key)
        route = self._cache.get(cache_key)
        if route is None:
            route, uses_headers = self._resolve(state, routing_key, headers or {})
            if not uses_headers:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[cache_key] = route
        if count:
            state.published += 1
            if not route.queues and not route.topics:
                state.unroutable += 1
        return route

    def count(self, exchange: str, published: int, unroutable: int) -> None:
        """Add to an exchange's counters (for callers that reuse a route in a batch)."""
        state = self._state(exchange)
        state.published += published
        state.unroutable += unroutable

    def explain(
        self, exchange: str, routing_key: str, headers: Mapping[str, Any] | None = None,
    ) -> tuple[Route, list[Hop]]:
        """Where a message published to `exchange` goes, and every exchange it passed
        (never cached, never counted): for `runner route`."""
        hops: list[Hop] = []
        route, _ = self._resolve(self._state(exchange), routing_key, headers or {}, hops)
        return route, hops

    def _resolve(
        self, start: _ExchangeState, key: str, headers: Mapping[str, Any],
        hops: list[Hop] | None = None,
    ) -> tuple[Route, bool]:
        queues: dict[str, None] = {}
        topics: dict[str, None] = {}
        visited: set[str] = set()
        uses_headers = False
        # (exchange, how it was reached, from which exchange)
        pending: list[tuple[_ExchangeState, str, str | None]] = [(start, "publish", None)]
        while pending:
            state, via, parent = pending.pop(0)
            if state.spec.name in visited:
                continue
            visited.add(state.spec.name)
            if state.spec.type is ExchangeType.HEADERS:
                uses_headers = True
            matched = state.match(key, headers)
            if hops is not None:
                hops.append(Hop(state.spec.name, state.spec.type.value, via, parent,
                                tuple(matched)))
            if not matched and state.spec.alternate_exchange:
                alt = self._exchanges.get(state.spec.alternate_exchange)
                if alt is not None:
                    pending.append((alt, "alternate", state.spec.name))
                continue
            for kind, name in matched:
                if kind == "queue":
                    queues[name] = None
                elif kind == "topic":
                    topics[name] = None
                else:
                    nxt = self._exchanges.get(name)
                    if nxt is not None:
                        pending.append((nxt, "binding", state.spec.name))
        return Route(tuple(queues), tuple(topics)), uses_headers


def declare_all(router: Router, exchanges: Iterable[Exchange], bindings: Iterable[Binding]) -> None:
    """Declare exchanges, then bindings (a convenience for building from a topology)."""
    for ex in exchanges:
        router.declare_exchange(ex)
    for b in bindings:
        router.bind(b)
