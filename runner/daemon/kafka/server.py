"""The Kafka listener: accepts connections and answers their requests in order.

Each connection is read frame by frame (`int32 size`, then the request) and
answered in the order its requests came, as a Kafka broker does; many
connections are served side by side on the daemon's loop. What cannot be
answered in the protocol closes the connection with one log line saying why:
a frame over `--max-request-bytes`, a malformed header or body, a request
before SASL authentication when a token is configured, an API key no message
definition knows. An API or version this listener does not serve but the
protocol defines is answered with UNSUPPORTED_VERSION (ApiVersions of an
unknown version in v0, as Kafka does). Nothing one client sends stops the
listener serving the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Mapping

from runner.daemon.kafka import cluster_api, groups_api, records_api, sasl_api
from runner.daemon.kafka.protocol import (
    API_VERSIONS,
    SUPPORTED,
    ErrorCode,
    Frame,
    ProtocolError,
    build,
    decode_request,
    encode_response,
    error_response,
    read_frame_start,
    response_class,
    supported,
    unsupported_api_versions,
)
from runner.daemon.kafka.session import Broker, Handler, Session

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")
SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36
CHECK_EVERY_S = 0.1  # group member expiry and rebalance timeouts
_OPEN_BEFORE_AUTH = frozenset({API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE})

HANDLERS: Mapping[int, Handler] = {
    0: records_api.produce_api,
    1: records_api.fetch_api,
    2: records_api.list_offsets_api,
    3: cluster_api.metadata_api,
    8: groups_api.offset_commit_api,
    9: groups_api.offset_fetch_api,
    10: cluster_api.find_coordinator_api,
    11: groups_api.join_group_api,
    12: groups_api.heartbeat_api,
    13: groups_api.leave_group_api,
    14: groups_api.sync_group_api,
    15: groups_api.describe_groups_api,
    16: groups_api.list_groups_api,
    17: sasl_api.handshake_api,
    18: cluster_api.api_versions_api,
    22: cluster_api.init_producer_id_api,
    36: sasl_api.authenticate_api,
}
assert set(HANDLERS) == set(SUPPORTED)


class Closing(Exception):
    """The connection must close; the message says why (logged once)."""


class KafkaListener:
    """One TCP listener serving `broker` over the Kafka protocol."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._checker: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Bind and listen; the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._accept, host, port,
                                                  limit=1024 * 1024)
        self._checker = asyncio.create_task(self._check_groups())
        return int(self._server.sockets[0].getsockname()[1])

    def members(self, group: str) -> list[str]:
        """The member ids of the Kafka clients in `group` now."""
        return [m.member_id for m in self.broker.coordinator.members(group)]

    def member_counts(self) -> dict[str, int]:
        """Per group, how many Kafka clients are its members now."""
        return self.broker.coordinator.member_counts()

    async def _check_groups(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            try:
                self.broker.coordinator.check()
            except Exception:
                log.exception("kafka: checking group members failed")

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            await asyncio.gather(self._checker, return_exceptions=True)
            self._checker = None
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer_addr = writer.get_extra_info("peername") or ("?", 0)
        local = writer.get_extra_info("sockname") or ("127.0.0.1", 0)
        session = Session(self.broker, peer=f"{peer_addr[0]}:{peer_addr[1]}",
                          host=str(local[0]), port=int(local[1]),
                          authenticated=self.broker.token is None)
        try:
            await self._serve(session, reader, writer)
        except Closing as exc:
            log.warning("kafka: closing the connection from %s: %s", session.peer, exc,
                        extra={"event": "kafka_connection_closed", "peer": session.peer})
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("kafka: connection from %s failed", session.peer)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, session: Session, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        limit = self.broker.max_request_bytes
        while True:
            head = await reader.readexactly(4)
            (size,) = _SIZE.unpack(head)
            if size < 0 or size > limit:
                raise Closing(f"a request of {size} bytes is over --max-request-bytes "
                              f"({limit})")
            data = await reader.readexactly(size)
            out = await self._answer(session, data)
            if out is not None:
                if writer.is_closing():  # the client went away meanwhile (uvloop's
                    return  # transports raise on a write after close, asyncio's drop it)
                writer.write(out)
                await writer.drain()

    async def _answer(self, session: Session, data: bytes) -> bytes | None:
        if session.raw_sasl_next:
            session.raw_sasl_next = False
            problem = sasl_api.check_plain(session, data)
            if problem is not None:
                raise Closing(f"SASL/PLAIN authentication failed: {problem}")
            return b"\0\0\0\0"
        try:
            frame = read_frame_start(data)
        except ProtocolError as exc:
            raise Closing(str(exc)) from None
        if not session.authenticated and frame.api_key not in _OPEN_BEFORE_AUTH:
            raise Closing(f"api key {frame.api_key} before SASL authentication (a token is "
                          f"configured: use SASL/PLAIN with the token as password)")
        if not supported(frame.api_key, frame.api_version):
            return self._unsupported(session, frame)
        try:
            request = decode_request(data, frame)
        except ProtocolError as exc:
            raise Closing(str(exc)) from None
        session.extra["client_id"] = request.client_id or ""
        handler = HANDLERS[frame.api_key]
        try:
            values = await handler(session, request.body, frame.api_version)
            if values is None:
                return None
            body = build(response_class(frame.api_key, frame.api_version), values)
            return encode_response(frame, body)
        except Closing:
            raise
        except Exception:
            log.exception("kafka: %s v%d from %s failed", SUPPORTED[frame.api_key][0],
                          frame.api_version, session.peer)
            out = error_response(frame, ErrorCode.unknown_server_error)
            if out is None:
                raise Closing("the request failed in the listener") from None
            return out

    @staticmethod
    def _unsupported(session: Session, frame: Frame) -> bytes:
        if frame.api_key == API_VERSIONS:
            return unsupported_api_versions(frame)
        entry = SUPPORTED.get(frame.api_key)
        what = (f"{entry[0]} v{frame.api_version} (served: v{entry[1]}-v{entry[2]})"
                if entry else f"api key {frame.api_key} v{frame.api_version}")
        out = error_response(frame, ErrorCode.unsupported_version)
        if out is None:
            raise Closing(f"{what} is not part of the Kafka protocol this listener knows")
        log.warning("kafka: %s from %s is not supported: answered UNSUPPORTED_VERSION", what,
                    session.peer, extra={"event": "kafka_unsupported", "peer": session.peer})
        return out
