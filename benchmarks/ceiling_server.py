"""The ceiling of an aiohttp daemon: a bare app that stores nothing (bench_engine.py).

Run: .venv/bin/python benchmarks/ceiling_server.py [--plain] [--uvloop] [--processes N]
     .venv/bin/python benchmarks/ceiling_server.py --raw

Serves `POST /v1/queues/{name}/messages` on 127.0.0.1 (a free port, printed as
`listening on http://127.0.0.1:PORT`) with a handler that reads the whole body
and answers 202 with the same small JSON our daemon answers a single publish
with. By default the app sits behind the daemon's own server (`HttpServer`:
the guarded protocol handler, the connection cap, no access log, the same
request size limit); `--plain` uses aiohttp's own TCP site instead,
`--uvloop` runs the loop on uvloop (when installed), `--processes N` shares one
listening socket among N processes (plain sites). Nothing here parses, routes
or stores: it is the most any aiohttp-based daemon could answer on this machine.

`--raw` has no HTTP framework at all: a uvloop protocol that parses each request
with httptools and writes the same answer when it is whole: a server that costs
next to nothing, to show what the benchmark's clients themselves allow (the
daemon's fast lane answers single publishes without aiohttp, so the aiohttp app
is no longer its ceiling).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import cast

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ANSWER = b'{"routed":["single-q"]}'
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # `runner run --max-request-bytes` default


async def publish(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, status=202, content_type="application/json")


def app() -> web.Application:
    served = web.Application(client_max_size=MAX_REQUEST_BYTES)
    served.router.add_post("/v1/queues/{name}/messages", publish)
    return served


RAW_ANSWER = (b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))


class RawConnection(asyncio.Protocol):
    """One keep-alive connection: each whole request gets RAW_ANSWER."""

    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is one, unsubclassed

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        assert self._transport is not None
        self._transport.write(RAW_ANSWER)


async def serve_raw() -> None:
    server = await asyncio.get_running_loop().create_server(RawConnection, "127.0.0.1", 0)
    print(f"listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


async def serve_guarded() -> None:
    from runner.daemon.http import HttpServer

    server = HttpServer(app())
    port = await server.start("127.0.0.1", 0)
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


async def serve_socket(sock: socket.socket, announce: bool) -> None:
    runner = web.AppRunner(app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    if announce:
        print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", action="store_true", help="aiohttp's own TCP site")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--processes", type=int, default=1, help="processes (plain sites)")
    parser.add_argument("--raw", action="store_true",
                        help="no HTTP framework: httptools on a bare uvloop protocol")
    args = parser.parse_args()
    if args.uvloop or args.raw:
        import uvloop

        uvloop.install()
    if args.raw:
        asyncio.run(serve_raw())
        return 0
    if not args.plain and args.processes == 1:
        asyncio.run(serve_guarded())
        return 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    for _ in range(args.processes - 1):
        if os.fork() == 0:
            asyncio.run(serve_socket(sock, announce=False))
            return 0
    asyncio.run(serve_socket(sock, announce=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
