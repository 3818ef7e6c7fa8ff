"""`runner run` (the pipeline daemon) and `runner alerts` (Prometheus rules)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from runner.cli import pythonpath
from runner.errors import RunnerError

if TYPE_CHECKING:
    from runner.daemon.supervisor import DaemonConfig, Loaded, Parts

    Failures = list[tuple[str, str, str]]

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
}


def _size(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1048576 or 1MiB)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def _budget(text: str) -> int | None:
    """A budget size for argparse (`runner.topology.units.parse_size`); None: unlimited."""
    from runner.topology.units import parse_size

    try:
        return parse_size(text.strip(), allow_unlimited=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _memory_budget(text: str) -> int:
    value = _budget(text)
    if value is None:
        raise argparse.ArgumentTypeError(
            '"unlimited" is not allowed for the memory budget; give a size such as "256MiB"'
        )
    if value < 1024 * 1024:
        raise argparse.ArgumentTypeError(
            f"the memory budget must be at least 1MiB, got {value} bytes"
        )
    return value


def _duration(text: str) -> float:
    """A duration option (`runner.topology.units.parse_duration`, at most 100 years)."""
    from runner.topology.units import DURATION_RE, parse_duration

    if not DURATION_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30s or 500ms)")
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    assert seconds is not None
    return seconds


def _timeout(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"a timeout must be longer than 0s, got {text!r}")
    return seconds


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def _count(text: str) -> int:
    """A whole number of records, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _ratio(text: str) -> float:
    """A share between 0 and 1 (exclusive of 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (try 0.05)") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 1, got {text}")
    return value


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r} (try 127.0.0.1:8080)")
    return host.strip("[]") or "127.0.0.1", int(port)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run the pipeline daemon for a topology")
    run.add_argument("path", type=Path, help="topology file or directory")
    run.add_argument("--data-dir", type=Path, default=Path("data"), help="default ./data")
    run.add_argument(
        "--listen", type=_listen, default=("127.0.0.1", 8080), help="HOST:PORT (127.0.0.1:8080)"
    )
    run.add_argument("--fsync", choices=("always", "interval", "never"), default="always")
    run.add_argument("--token-file", type=Path, help="bearer token for /v1/ (or RUNNER_TOKEN)")
    run.add_argument(
        "--metrics-token-file", type=Path, metavar="FILE",
        help="bearer token /metrics then needs (default: /metrics is open; the API token "
        "is accepted too)",
    )
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument(
        "--max-message-bytes", type=_size, default=1024 * 1024, help="default 1MiB"
    )
    run.add_argument(
        "--max-request-bytes", type=_size, default=64 * 1024 * 1024,
        help="largest HTTP request body (default 64MiB)",
    )
    run.add_argument(
        "--max-fanout", type=_positive, default=100_000, metavar="N",
        help="message copies one publish request may create (messages x the queues and "
        "topics each reaches; default 100000; more is a 413)",
    )
    run.add_argument(
        "--memory-budget", type=_memory_budget, default=256 * 1024 * 1024,
        help="memory for queue messages before they spill to disk (default 256MiB)",
    )
    run.add_argument(
        "--disk-budget", type=_budget, default=None,
        help="disk for queue logs; publishes get 429 once it is used (default unlimited)",
    )
    run.add_argument(
        "--kafka-listen", type=_listen, default=None, metavar="HOST:PORT",
        help="also serve the topics over the Kafka protocol (off by default; try "
             "127.0.0.1:9092)",
    )
    run.add_argument(
        "--kafka-advertise", type=_listen, default=None, metavar="HOST:PORT",
        help="the address Kafka clients are told to connect to (default: the address "
             "each client reached)",
    )
    run.add_argument(
        "--header-timeout", type=_timeout, default=10.0,
        help="a request header must arrive within this time of its first byte, else 408 (10s)",
    )
    run.add_argument(
        "--load-timeout", type=_timeout, default=30.0,
        help="start-up gives up (exit 1) when reading the topology and importing its "
        "handlers takes longer; a reload gives up reading the topology files after this "
        "long, keeping the running topology (30s)",
    )
    run.add_argument(
        "--body-timeout", type=_timeout, default=30.0,
        help="longest pause while a request body arrives, else 408 (30s)",
    )
    run.add_argument(
        "--idle-timeout", type=_timeout, default=60.0,
        help="close a connection with no request for this long (60s)",
    )
    run.add_argument(
        "--write-timeout", type=_timeout, default=30.0,
        help="close a connection whose client reads nothing of its answer for this long (30s)",
    )
    run.add_argument(
        "--max-connections", type=_positive, default=1024,
        help="HTTP connections served at once; one more is answered 503 (1024)",
    )
    run.add_argument("--grace", type=_duration, default=30.0, help="drain time on stop (30s)")
    run.add_argument("--no-watch", action="store_true", help="do not reload on file changes")
    run.add_argument(
        "--no-follow-symlinks", action="store_true",
        help="refuse topology files that are symbolic links (at start and reload)",
    )
    run.add_argument(
        "--console", choices=("read-write", "read-only", "off"), default="read-write",
        help="the web console at / and /ui/: read-write (default), read-only, or off",
    )
    run.add_argument(
        "--allow-unsafe", action="store_true",
        help="start although the topology's plan against the one recorded in the data dir "
        "has unsafe changes (or names another topology)",
    )
    run.add_argument(
        "--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto",
        help="the event loop: uvloop when it is installed (auto, the default; it answers "
        "small requests ~20%% faster), or asyncio's own",
    )
    run.add_argument(
        "--backend", metavar="URL", default=None,
        help="run the handlers over a RabbitMQ vhost (amqp://user:pass@host[:port]/vhost) "
        "instead of the embedded engine; several daemons may share it (docs/rabbitmq.md)",
    )
    pythonpath.add_option(run)
    run.set_defaults(func=cmd_run)

    alerts = sub.add_parser("alerts", help="Prometheus alerting rules for a topology")
    alerts.add_argument("path", type=Path, help="topology file or directory")
    alerts.add_argument(
        "--lag-threshold", type=_count, default=10_000,
        help="alert when a group lags by more records than this (default 10000)",
    )
    alerts.add_argument("--lag-for", default="10m", help="for how long (default 10m)")
    alerts.add_argument(
        "--error-ratio", type=_ratio, default=0.05,
        help="alert when a handler fails more than this share of its messages over 5 "
        "minutes (default 0.05)",
    )
    alerts.set_defaults(func=cmd_alerts)


def _print_problems(problems: object) -> None:
    from runner.daemon.reload import problem_line

    for p in problems:  # type: ignore[attr-defined]
        print(problem_line(p), file=sys.stderr)


def _token_file(path: Path, flag: str) -> str:
    """The token in a token file; SystemExit when it cannot be read or is blank. A file
    other users may read or change is used, with a warning (it is as good as public)."""
    try:
        token = path.read_text().strip()
        mode = stat.S_IMODE(path.stat().st_mode)
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"runner run: cannot read {flag}: {exc}") from exc
    if not token:
        raise SystemExit(f"runner run: {flag} {path} is empty")
    if mode & 0o077:
        logging.getLogger("runner.daemon").warning(
            "%s %s can be read or changed by other users (mode %04o); anyone who can read "
            "it has the token: chmod 600 %s", flag, path, mode, path,
            extra={"event": "token_file_mode", "path": str(path), "mode": f"{mode:04o}"},
        )
    return token


def _token(args: argparse.Namespace) -> str | None:
    """The API token: --token-file, else RUNNER_TOKEN (unset: no authentication; set
    but blank is refused, as an empty token file is: it would silently turn auth off)."""
    if args.token_file is not None:
        return _token_file(Path(args.token_file), "--token-file")
    env = os.environ.get("RUNNER_TOKEN")
    if env is None:
        return None
    if not env.strip():
        raise SystemExit(
            "runner run: RUNNER_TOKEN is set but blank; set it to the token, or unset it "
            "to run without authentication"
        )
    return env.strip()


def _metrics_token(args: argparse.Namespace) -> str | None:
    """The token /metrics needs (--metrics-token-file); None: /metrics is open."""
    path = getattr(args, "metrics_token_file", None)
    return None if path is None else _token_file(Path(path), "--metrics-token-file")


def cmd_run(args: argparse.Namespace) -> int:
    from runner.cli.report import plan_text
    from runner.daemon import logs
    from runner.daemon.connections import ConnectionLimits
    from runner.daemon.console import ConsoleMode
    from runner.daemon.recorded import StartRefused
    from runner.daemon.reload import problem_line
    from runner.daemon.supervisor import DaemonConfig, Supervisor, real_parts
    from runner.engine import FsyncPolicy
    from runner.pipeline.handler import handler_problems

    logs.configure(args.log_format)
    if not args.path.exists():
        print(f"runner run: {args.path}: no such file or directory", file=sys.stderr)
        return 2
    try:
        token = _token(args)
        metrics_token = _metrics_token(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    refused = pythonpath.apply(args, "run")
    if refused is not None:
        print(refused, file=sys.stderr)
        return 2
    try:
        loop_factory = event_loop(args.event_loop)
    except LookupError as exc:
        print(f"runner run: {exc}", file=sys.stderr)
        return 2
    parts = real_parts(follow_symlinks=not args.no_follow_symlinks)
    first = _first_load(parts, args.path, args.load_timeout)
    if isinstance(first, str):
        print(first, file=sys.stderr)
        return 1
    loaded, failures = first
    errors = [p for p in loaded.problems if p.is_error]
    if errors or loaded.topology is None:
        _print_problems(errors)
        print(f"runner run: {args.path} is invalid ({len(errors)} error(s))", file=sys.stderr)
        return 1
    for problem in loaded.problems:
        if not problem.is_error:
            logging.getLogger("runner.daemon").warning(
                "%s", problem_line(problem), extra={"event": "topology_warning"}
            )
    if failures:
        _print_problems(handler_problems(loaded.topology, failures))
        print("runner run: handlers could not be imported", file=sys.stderr)
        return 1
    host, port = args.listen
    # before the data dir is touched: a taken port is a clear error, not a half-made dir
    for option, address in (("--listen", args.listen), ("--kafka-listen", args.kafka_listen)):
        busy = _port_taken(*address) if address is not None else None
        if busy is not None:
            print(f"runner run: cannot listen on {address[0]}:{address[1]}: {busy}; is another "
                  f"daemon running there? Choose another address with {option} HOST:PORT",
                  file=sys.stderr)
            return 1
    config = DaemonConfig(
        path=args.path,
        data_dir=args.data_dir,
        host=host,
        port=port,
        fsync=FsyncPolicy(args.fsync),
        token=token,
        metrics_token=metrics_token,
        max_message_bytes=args.max_message_bytes,
        max_request_bytes=args.max_request_bytes,
        max_fanout=args.max_fanout,
        load_timeout_s=args.load_timeout,
        grace_s=args.grace,
        watch=not args.no_watch,
        memory_budget_bytes=args.memory_budget,
        disk_budget_bytes=args.disk_budget,
        kafka_listen=args.kafka_listen,
        kafka_advertise=args.kafka_advertise,
        console=ConsoleMode(args.console),
        connections=ConnectionLimits(
            header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
            idle_timeout_s=args.idle_timeout, max_connections=args.max_connections,
            write_timeout_s=args.write_timeout,
        ),
        allow_unsafe=args.allow_unsafe,
    )
    if args.backend is not None:
        return _run_remote(args.backend, config, loaded, parts.load, loop_factory)
    try:
        supervisor = Supervisor(config, loaded, parts)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(supervisor.serve(ready=freeze_startup_heap))
    except StartRefused as exc:
        if exc.plan is not None:
            sys.stderr.write(plan_text(exc.plan))
        print(f"runner run: {exc}", file=sys.stderr)
        return 1
    except (RunnerError, OSError) as exc:
        print(f"runner run: {exc}", file=sys.stderr)
        return 1


def freeze_startup_heap(host: str = "", port: int = 0) -> None:
    """Once the daemon serves (its `ready`): collect, then move every object alive now
    -- the topology, the handlers' modules, aiohttp, the engine's indexes -- out of the
    cyclic collector's generations (`gc.freeze`), so that its collections stop scanning
    them again and again under load (they were ~4% of a small publish's CPU). Objects
    made later are collected as before; a frozen one that later becomes cyclic garbage
    (a topology a reload replaced) stays, bounded by what was alive at the start."""
    started = time.perf_counter()
    gc.collect()  # (a pause of the loop once, right after the start: logged)
    gc.freeze()
    took_ms = round((time.perf_counter() - started) * 1000, 1)
    frozen = gc.get_freeze_count()
    logging.getLogger("runner.daemon").info(
        "startup heap frozen: %d objects the garbage collector no longer scans "
        "(collected in %.1f ms)", frozen, took_ms,
        extra={"event": "heap_frozen", "objects": frozen, "ms": took_ms})


def event_loop(choice: str) -> LoopFactory | None:
    """The loop `runner run --event-loop CHOICE` runs on: uvloop's when it is installed
    (`auto`) or asked for (`uvloop`: LookupError when it is not installed), else
    asyncio's own (None, asyncio.Runner's default). uvloop does the sockets, timers and
    polling of the loop in C (libuv): the daemon's single-message HTTP path costs
    ~15% less CPU a request on it (docs/engine.md)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise LookupError("--event-loop uvloop: uvloop is not installed "
                              "(pip install uvloop, or --event-loop asyncio)") from None
        return None
    return uvloop.new_event_loop


def _run_remote(url: str, config: DaemonConfig, loaded: Loaded,
                load: Callable[[str], Loaded], loop_factory: LoopFactory | None) -> int:
    """`runner run --backend amqp://...`: the pipeline over RabbitMQ (runner.daemon.remote)."""
    from runner.backends.rabbitmq.mapping import problems as backend_problems
    from runner.backends.rabbitmq.url import BadURL, parse
    from runner.daemon.remote import RemoteDaemon

    try:
        target = parse(url)
    except BadURL as exc:
        print(f"runner run: --backend {exc}", file=sys.stderr)
        return 2
    if config.kafka_listen is not None:
        print("runner run: --kafka-listen serves the embedded engine's topics; it cannot be "
              "used with --backend", file=sys.stderr)
        return 2
    topology = loaded.topology
    assert topology is not None
    errors = [p for p in backend_problems(topology) if p.is_error]
    if errors:
        _print_problems(errors)
        print(f"runner run: {config.path} cannot run on the RabbitMQ backend "
              f"({len(errors)} error(s))", file=sys.stderr)
        return 1
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(RemoteDaemon(config, topology, loaded.content_hash, target,
                                           load=load).serve(ready=freeze_startup_heap))
    except (RunnerError, OSError) as exc:
        print(f"runner run: {exc}", file=sys.stderr)
        return 1


def _first_load(parts: Parts, path: Path, limit_s: float) -> tuple[Loaded, Failures] | str:
    """The topology at start-up and its handler imports' failures, within `limit_s`
    (--load-timeout, as a reload's read); past it, the sentence to exit with.

    Both run in a daemon thread of their own: a read on a hung file system or a
    handler module that blocks at import cannot be interrupted, and such a thread
    must not hold up the exit (issue 17: the first load had no timeout)."""
    result: list[tuple[Loaded, Failures]] = []
    error: list[BaseException] = []
    stage = ["reading the topology files"]

    def run() -> None:
        try:
            loaded = parts.load(str(path))
            failures: Failures = []
            if loaded.topology is not None and not any(p.is_error for p in loaded.problems):
                stage[0] = "importing the handler modules"
                failures = parts.check_handlers(loaded.topology)
            result.append((loaded, failures))
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name="topology-first-load", daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        return (
            f"runner run: loading {path} did not finish within {limit_s:g}s "
            f"(--load-timeout): {stage[0]} hangs (a hung file system, or a handler module "
            "that blocks at import?); not started"
        )
    if error:
        raise error[0]
    return result[0]


def _port_taken(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on (None when it can): bound and closed again
    at once, with SO_REUSEADDR as the HTTP server binds (port 0 is always free)."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"unknown host ({exc.strerror})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return (exc.strerror or str(exc)).lower()
    return None


def cmd_alerts(args: argparse.Namespace) -> int:
    from runner.daemon.alerts import Limits, render_yaml, rules
    from runner.topology.load import load

    if not args.path.exists():
        print(f"runner alerts: {args.path}: no such file or directory", file=sys.stderr)
        return 2
    try:
        _duration(args.lag_for)
    except argparse.ArgumentTypeError as exc:
        print(f"runner alerts: --lag-for: {exc}", file=sys.stderr)
        return 2
    loaded = load(str(args.path))
    errors = [p for p in loaded.problems if p.is_error]
    if errors or loaded.topology is None:
        _print_problems(errors)
        print(f"runner alerts: {args.path} is invalid ({len(errors)} error(s))", file=sys.stderr)
        return 1
    topology = loaded.topology
    limits = Limits(
        lag_threshold=args.lag_threshold, lag_for=args.lag_for, error_ratio=args.error_ratio
    )
    rule_list = rules(topology, limits)
    sys.stdout.write(render_yaml(topology, rule_list))
    return 0
