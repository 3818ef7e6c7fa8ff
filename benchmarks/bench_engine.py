"""Benchmark of the engine's durable write path (issue 10), side by side in one run.

Run: .venv/bin/python benchmarks/bench_engine.py [--quick]

1. Single messages under `--fsync always`: 16 HTTP clients (threads, keep-alive),
   each POSTing one 200-byte message per request to a durable queue of the real
   daemon, against 16 pika publishers (threads, one connection each) publishing
   persistent messages one at a time with publisher confirms to a durable
   RabbitMQ queue (127.0.0.1:5672 guest/guest). Each side runs for the same
   wall time; msgs/s acknowledged. For scale, in the same run: a bare aiohttp app
   behind the daemon's server, and a bare socket server with no HTTP stack that
   answers at once and stores nothing (what these clients get from a server that
   costs next to nothing: on 2 cores their own CPU, 16 threads on one GIL, is
   the limit); `--ceiling` adds more, and the daemon under `--fsync never`.
   Printed with each row: the server's CPU per request (RabbitMQ's: its Erlang
   VM) and the clients' (this process).
2. Exactly-once vs at-least-once through the daemon (`--fsync always`): a
   backlog in a durable queue drained by an `async def` handler that publishes
   each message onward to a second durable queue, concurrency 32; msgs/s from
   the first publish until the onward queue holds them all.
3. In process, `fsync=always`: exactly-once steps (pull one message, ack it and
   publish one onward as one `commit_step`) per second, and the fsyncs each
   step costs (counted through the `runner.fs` seam).

Every number is the median of the repeats (3).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RUNNER = ROOT / ".venv" / "bin" / "runner"
CLIENTS = 16
BODY = "x" * 186  # {"b": BODY} is 200 bytes of JSON
PAYLOAD = b'{"b":"' + BODY.encode() + b'"}'

SINGLE_TOPOLOGY = """\
version: 1
name: bench-engine
queues:
  single-q: {durable: true}
topics:
  single-t: {partitions: 4}
"""

DRAIN_TOPOLOGY = """\
version: 1
name: bench-drain
exchanges:
  onward: {type: direct}
queues:
  in-q: {durable: true}
  out-q: {durable: true}
bindings:
  - {exchange: onward, queue: out-q, routing_key: out}
consumers:
  forward: {queue: in-q, handler: "bench_engine_handler:forward", concurrency: 32,
            delivery: DELIVERY}
"""

HANDLER = '''\
async def forward(msg, ctx):
    ctx.publish("onward", "out", msg.body)
'''


class Served:
    """A server process started from `argv` in `workdir` that logs `listening on
    http://HOST:PORT`; stopped with its whole process group."""

    def __init__(self, workdir: Path, argv: list[str]) -> None:
        self.workdir = workdir
        self.log = workdir / "daemon.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(r"listening on http://[^:]+:(\d+)", self.log.read_text())
            if match:
                self.port = int(match.group(1))
                break
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited:\n{self.log.read_text()}")
            time.sleep(0.05)
        else:
            raise SystemExit("server did not start")

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the server's processes: a cost per
        request that other work on a shared machine disturbs far less than a rate."""
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            fields = _stat_fields(stat)
            if fields is not None and int(fields[2]) == self.proc.pid:  # its process group
                ticks += int(fields[11]) + int(fields[12])  # (forks included)
        return ticks / os.sysconf("SC_CLK_TCK")

    def threads(self) -> dict[int, tuple[int, int, int]]:
        """Per thread of the server's main process: (user + system ticks, system ticks,
        voluntary context switches) so far."""
        out: dict[int, tuple[int, int, int]] = {}
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            fields = _stat_fields(task / "stat")
            try:
                status = (task / "status").read_text()
            except OSError:  # a thread that ended meanwhile
                continue
            if fields is None:
                continue
            switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
            out[int(task.name)] = (int(fields[11]) + int(fields[12]), int(fields[12]), switches)
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):  # a multi-process ceiling's forks
                os.killpg(self.proc.pid, signal.SIGTERM)


def _stat_fields(stat: Path) -> list[str] | None:
    """The fields of a /proc .../stat file after the command name (None: the process
    or thread ended meanwhile)."""
    try:
        return stat.read_text().rpartition(")")[2].split()
    except OSError:
        return None


RUN_ARGS = ["run", "topology.yaml", "--data-dir", "data", "--fsync", "always",
            "--listen", "127.0.0.1:0"]


class Daemon(Served):
    """`runner run --fsync always` in a tmp dir (`event_loop`: its --event-loop; the
    `runner` package of the source tree `source` when given, for before/after runs)."""

    def __init__(self, workdir: Path, topology: str, *, event_loop: str | None = None,
                 source: Path | None = None, fsync: str = "always") -> None:
        (workdir / "topology.yaml").write_text(topology)
        (workdir / "bench_engine_handler.py").write_text(HANDLER)
        args = [fsync if a == "always" else a for a in RUN_ARGS]
        args += ["--event-loop", event_loop] if event_loop else []
        if source is not None:
            argv = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(source)!r}); "
                    "from runner.cli import entry; sys.argv[0] = 'runner'; sys.exit(entry())",
                    *args]
        else:
            argv = [str(RUNNER), *args]
        super().__init__(workdir, argv)


def ceiling(workdir: Path, *flags: str) -> Served:
    """The bare aiohttp app of ceiling_server.py (see there), with `flags`."""
    script = Path(__file__).resolve().parent / "ceiling_server.py"
    return Served(workdir, [sys.executable, str(script), *flags])


def call(conn: http.client.HTTPConnection, method: str, path: str,
         body: bytes | None = None) -> Any:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
    return orjson.loads(data) if data else None


def timed_clients(seconds: float, work: Any) -> float:
    """Run `work(stop_event) -> count` in CLIENTS threads; total count / seconds."""
    stop = threading.Event()
    counts: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            counts.append(work(stop))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}")
    return sum(counts) / elapsed


def http_single_cost(d: Served, seconds: float, *, append: bool = False,
                     ) -> tuple[float, float]:
    """(requests/s, server CPU microseconds per request) of `http_single`."""
    cpu0 = d.cpu_s()
    t0 = time.perf_counter()
    rate = http_single(d, seconds, append=append)
    count = rate * (time.perf_counter() - t0)
    return rate, (d.cpu_s() - cpu0) * 1e6 / max(count, 1.0)


def thread_split(d: Served, seconds: float) -> list[tuple[str, float, float, float]]:
    """One more `http_single` run: where the server's CPU went, per thread using more than
    1 us a request: (thread, CPU us a request, of it in the kernel, voluntary context
    switches a request). The thread whose id is the process id is the event loop's."""
    before = d.threads()
    t0 = time.perf_counter()
    count = http_single(d, seconds) * (time.perf_counter() - t0)
    after = d.threads()
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    out = []
    for tid, (cpu, kernel, switches) in sorted(after.items()):
        cpu0, kernel0, switches0 = before.get(tid, (0, 0, 0))
        per = (cpu - cpu0) * tick_us / max(count, 1.0)
        if per > 1.0:
            name = "loop thread" if tid == d.proc.pid else f"thread {tid}"
            out.append((name, per, (kernel - kernel0) * tick_us / max(count, 1.0),
                        (switches - switches0) / max(count, 1.0)))
    return out


def http_single(d: Served, seconds: float, *, append: bool = False) -> float:
    """16 clients each sending one 200-byte message a request to the durable queue
    (`append`: one record a request to the 4-partition topic)."""
    if append:
        path, body = "/v1/topics/single-t/records", orjson.dumps({"value": {"b": BODY}})
    else:
        path, body = ("/v1/queues/single-q/messages",
                      orjson.dumps({"messages": [{"body": {"b": BODY}}]}))

    def work(stop: threading.Event) -> int:
        conn = d.connect()
        n = 0
        while not stop.is_set():
            call(conn, "POST", path, body)
            n += 1
        conn.close()
        return n

    return timed_clients(seconds, work)


def rabbit_single(seconds: float) -> float:
    import pika

    params = pika.ConnectionParameters("127.0.0.1", 5672, credentials=pika.PlainCredentials(
        "guest", "guest"), connection_attempts=5, retry_delay=1)  # a broker busy with tests
    setup = pika.BlockingConnection(params)
    ch = setup.channel()
    ch.queue_delete("bench-engine-single")
    ch.queue_declare("bench-engine-single", durable=True)
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")

    def work(stop: threading.Event) -> int:
        conn = pika.BlockingConnection(params)
        c = conn.channel()
        c.confirm_delivery()
        n = 0
        while not stop.is_set():
            c.basic_publish("", "bench-engine-single", PAYLOAD, props, mandatory=True)
            n += 1
        conn.close()
        return n

    try:
        return timed_clients(seconds, work)
    finally:
        ch.queue_delete("bench-engine-single")
        setup.close()


def drain(delivery: str, n: int) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    d = Daemon(workdir, DRAIN_TOPOLOGY.replace("DELIVERY", delivery))
    try:
        conn = d.connect()
        batches = [orjson.dumps({"messages": [{"body": {"b": BODY, "i": i}}
                                              for i in range(s, min(n, s + 500))]})
                   for s in range(0, n, 500)]
        t0 = time.perf_counter()
        for b in batches:
            call(conn, "POST", "/v1/queues/in-q/messages", b)
        deadline = time.monotonic() + 300
        while True:
            queues = {q["name"]: q for q in call(conn, "GET", "/v1/queues")["queues"]}
            if queues["out-q"]["ready"] >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{delivery}: not drained in 300 s: {queues}")
            time.sleep(0.01)
        rate = n / (time.perf_counter() - t0)
        conn.close()
        return rate
    finally:
        d.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def in_process_steps(n: int) -> tuple[float, float]:
    """(steps/s, fsyncs per step) of queue -> queue exactly-once steps, fsync=always."""
    from runner.engine import Engine, FsyncPolicy, OutMessage, Step
    from runner.fs import LOCAL, FileSystem
    from runner.topology.model import Binding, Exchange, ExchangeType, Queue, Topology

    class Counting:
        """The real file system, counting fsyncs."""

        def __init__(self, inner: FileSystem) -> None:
            self.inner = inner
            self.syncs = 0

        def sync(self, fd: int) -> None:
            self.syncs += 1
            self.inner.sync(fd)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    topo = Topology(
        exchanges=(("onward", Exchange("onward", ExchangeType.DIRECT)),),
        queues=(("in", Queue("in")), ("out", Queue("out"))),
        bindings=(Binding("onward", queue="out", routing_key="out"),),
    )
    data = Path(tempfile.mkdtemp(prefix="bench-engine-steps-"))
    fs = Counting(LOCAL)
    try:
        engine = Engine.open(topo, data, fsync=FsyncPolicy.ALWAYS, fs=fs)  # type: ignore[arg-type]
        engine.publish_to_queue("in", [OutMessage(body=PAYLOAD) for _ in range(n)])
        fs.syncs = 0
        t0 = time.perf_counter()
        for _ in range(n):
            (d,) = engine.pull("in", 1, lease_s=60.0, consumer_id="c")
            engine.commit_step(Step(acks=[("in", d.delivery_id)],
                                    publishes=[("onward", [OutMessage(body=d.body,
                                                                      routing_key="out")])]))
        rate = n / (time.perf_counter() - t0)
        per_step = fs.syncs / n
        engine.close()
        return rate, per_step
    finally:
        shutil.rmtree(data, ignore_errors=True)


def rabbit_available() -> str | None:
    try:
        import pika
    except ModuleNotFoundError:
        return "pika is not installed: pip install -e '.[bench]' (make install does)"
    try:
        pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=1, socket_timeout=3)).close()
    except Exception as exc:  # any connection failure means: no floor to compare with
        return f"{type(exc).__name__}: {exc}"
    return None


CLIENT_US: dict[str, list[float]] = {}  # row -> the clients' CPU us per request, each repeat


@contextlib.contextmanager
def client_cpu(label: str) -> Any:
    """Adds the CPU this process (the clients' threads) spent per request inside the
    block to CLIENT_US[label]; the block appends its request count to the yielded list."""
    count: list[float] = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    yield count
    after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    CLIENT_US.setdefault(label, []).append(used * 1e6 / max(count[0] if count else 1.0, 1.0))


def rabbit_cpu_s() -> float | None:
    """CPU seconds RabbitMQ's Erlang VM (beam.smp) has used, None when not found."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"beam.smp" in cmdline.read_bytes().split(b"\0")[0]:
                fields = _stat_fields(cmdline.parent / "stat")
                if fields is not None:
                    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return None


def single_rows(args: argparse.Namespace, repeats: int, seconds: float) -> list[
        tuple[str, list[float], list[float]]]:
    """The single-message rows: (label, msgs/s of each repeat, server CPU microseconds
    per request of each repeat, none for RabbitMQ); the repeats interleaved, in
    alternating order (every server is up at once, so a busy moment of the shared
    machine falls on each alike)."""
    servers: list[tuple[str, Any]] = []
    rows: list[tuple[str, Any, bool]] = []  # label, server, one record a request
    dirs: list[Path] = []

    def start(label: str, make: Any) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="bench-engine-"))
        dirs.append(workdir)
        servers.append((label, make(workdir)))
        rows.append((label, servers[-1][1], False))

    try:
        start("runner daemon", lambda w: Daemon(w, SINGLE_TOPOLOGY))
        if args.baseline is not None:
            start(f"runner daemon of {args.baseline}",
                  lambda w: Daemon(w, SINGLE_TOPOLOGY, source=args.baseline))
        # the daemon runs on uvloop (runner run --event-loop auto): so do the ceilings
        start("bare aiohttp app, our server", lambda w: ceiling(w, "--uvloop"))
        start("bare socket server, no HTTP stack", lambda w: ceiling(w, "--raw"))
        if args.ceiling:
            start("runner daemon, --fsync never",
                  lambda w: Daemon(w, SINGLE_TOPOLOGY, fsync="never"))
            start("bare aiohttp app, our server, asyncio's loop", lambda w: ceiling(w))
            start("bare aiohttp app, aiohttp's own site", lambda w: ceiling(w, "--plain"))
            start("bare aiohttp app, uvloop", lambda w: ceiling(w, "--plain", "--uvloop"))
            start("bare aiohttp app, 2 processes", lambda w: ceiling(w, "--processes", "2"))
            start("bare aiohttp app, 2 processes, uvloop",
                  lambda w: ceiling(w, "--processes", "2", "--uvloop"))
            start("runner daemon on asyncio's loop",
                  lambda w: Daemon(w, SINGLE_TOPOLOGY, event_loop="asyncio"))
        if args.appends:  # the daemons again, one record a request to a topic
            rows += [(f"{label}, 1 record/request to a topic", server, True)
                     for label, server in servers if label.startswith("runner daemon")]
        rates: dict[str, list[float]] = {label: [] for label, _, _ in rows}
        costs: dict[str, list[float]] = {label: [] for label, _, _ in rows}
        rates["RabbitMQ, 16 pika publishers"] = []
        costs["RabbitMQ, 16 pika publishers"] = []
        for repeat in range(repeats):
            # alternate the order: no row always runs right after RabbitMQ's
            for label, server, append in rows if repeat % 2 == 0 else rows[::-1]:
                with client_cpu(label) as count:
                    rate, cost = http_single_cost(server, seconds, append=append)
                    count.append(rate * seconds)
                rates[label].append(rate)
                costs[label].append(cost)
            beam = rabbit_cpu_s()
            t0 = time.perf_counter()
            with client_cpu("RabbitMQ, 16 pika publishers") as count:
                rate = rabbit_single(seconds)
                count.append(rate * seconds)
            rates["RabbitMQ, 16 pika publishers"].append(rate)
            if beam is not None:
                done = rate * (time.perf_counter() - t0)
                after = rabbit_cpu_s()
                assert after is not None
                costs["RabbitMQ, 16 pika publishers"].append(
                    (after - beam) * 1e6 / max(done, 1.0))
        if args.threads:
            print("server CPU per request by thread (one more run of each daemon row):")
            for label, server in servers:
                if label.startswith("runner daemon"):
                    split = thread_split(server, seconds)
                    print(f"  {label}: " + "; ".join(
                        f"{name} {cpu:.0f} us ({kernel:.0f} in the kernel, "
                        f"{switches:.2f} sleeps)" for name, cpu, kernel, switches in split))
    finally:
        for _, server in servers:
            server.stop()
        for workdir in dirs:
            shutil.rmtree(workdir, ignore_errors=True)
    return [(label, rates[label], costs[label]) for label in rates]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 60 s)")
    parser.add_argument("--ceiling", action="store_true",
                        help="more rows: the daemon and the bare app on asyncio's loop, aiohttp's "
                             "own site, uvloop, 2 processes")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also a daemon running the runner package of source tree DIR")
    parser.add_argument("--appends", action="store_true",
                        help="also rows of the daemons with one record a request to a "
                             "4-partition topic (merged appends)")
    parser.add_argument("--threads", action="store_true",
                        help="also split each daemon's CPU per request by thread (the "
                             "event loop's, the flusher's...) with its voluntary sleeps")
    parser.add_argument("--single-only", action="store_true",
                        help="only the single-message rows")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each row (3)")
    args = parser.parse_args()
    repeats = args.repeats
    seconds = 2.0 if args.quick else 5.0
    n_drain = 1500 if args.quick else 5000
    n_steps = 300 if args.quick else 2000
    missing = rabbit_available()
    if missing:
        print(f"RabbitMQ at 127.0.0.1:5672 is not reachable ({missing}); start it to compare.")
        return 1
    rows = single_rows(args, repeats, seconds)
    medians = {label: statistics.median(r) for label, r, _ in rows}
    cpu = {label: statistics.median(c) for label, _, c in rows if c}
    mine = medians["runner daemon"]
    rabbit = medians["RabbitMQ, 16 pika publishers"]
    print(f"median of {repeats}; --fsync always; 200-byte messages; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'':52}{'msgs/s':>10}{'vs':>12}{'ratio':>8}")
    print(f"{'16 HTTP clients, 1 msg/request (runner)':52}{mine:10,.0f}"
          f"{rabbit:12,.0f}{mine / rabbit:7.2f}x  (vs 16 pika publishers, confirms)")
    for label, rate in medians.items():
        if label in ("runner daemon", "RabbitMQ, 16 pika publishers"):
            continue
        print(f"{'  ' + label:52}{rate:10,.0f}{rabbit:12,.0f}{rate / rabbit:7.2f}x"
              f"  (runner daemon: {mine / rate:.2f}x of it)")
    print("server CPU per request (user + system, all its threads and processes; RabbitMQ: "
          "its Erlang VM), the clients' CPU per request (this process), and each repeat's "
          "msgs/s:")
    for label, runs, costs in rows:
        cost = f"{cpu[label]:6.0f} us" if label in cpu else f"{'':9}"
        client = statistics.median(CLIENT_US.get(label, [0.0]))
        print(f"  {label:50}{cost} {client:6.0f} us  " + ", ".join(f"{r:,.0f}" for r in runs)
              + (" (us: " + ", ".join(f"{c:.0f}" for c in costs) + ")" if costs else ""))
    if args.single_only:
        return 0
    eo = [drain("exactly-once", n_drain) for _ in range(repeats)]
    alo = [drain("at-least-once", n_drain) for _ in range(repeats)]
    steps = [in_process_steps(n_steps) for _ in range(repeats)]
    e, a = statistics.median(eo), statistics.median(alo)
    srate = statistics.median(s for s, _ in steps)
    syncs = statistics.median(f for _, f in steps)
    print(f"{'exactly-once drain, async handler, concurrency 32':52}{e:10,.0f}"
          f"{a:12,.0f}{e / a:7.2f}x  (vs at-least-once)")
    print(f"{'in-process exactly-once steps/s (queue -> queue)':52}{srate:10,.0f}"
          f"{'':12}{'':8}  ({syncs:.2f} fsyncs per step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
