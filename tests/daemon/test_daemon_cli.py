"""CLI pieces that need no daemon: argument errors, `runner bench` selection, renderings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.cli import main
from runner.cli.client import render_dead_letter, render_status


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "localhost"], "not HOST:PORT: 'localhost' (try 127.0.0.1:8080)"),
        (["--grace", "30"], "not a duration: '30' (try 30s or 500ms)"),
        (["--max-message-bytes", "1 MB!"], "not a size: '1 MB!' (try 1048576 or 1MiB)"),
        (["--fsync", "sometimes"], "invalid choice: 'sometimes'"),
    ],
)
def test_run_refuses_bad_options_with_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "t.yaml").write_text("version: 1\n")
    assert main(["run", str(tmp_path / "t.yaml"), *args]) == 2
    assert message in capsys.readouterr().err


def test_run_refuses_an_empty_token_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t.yaml").write_text("version: 1\n")
    (tmp_path / "token").write_text("\n")
    code = main(["run", str(tmp_path / "t.yaml"), "--token-file", str(tmp_path / "token")])
    assert code == 2
    assert f"--token-file {tmp_path / 'token'} is empty" in capsys.readouterr().err


def test_bench_says_when_nothing_matches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--only", "no-such-bench-xyz"]) == 1
    err = capsys.readouterr().err
    assert "no benchmarks/bench_*.py under" in err and "matches --only no-such-bench-xyz" in err
    assert "(there are: bench_assignors, bench_broker," in err


def test_a_client_command_that_cannot_reach_the_daemon_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["status", "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach the daemon at http://127.0.0.1:9" in capsys.readouterr().err


def test_publish_needs_exactly_one_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", "--queue", "a", "--topic", "b", "1"]) == 2
    assert "give exactly one of --exchange, --queue or --topic" in capsys.readouterr().err


def test_a_dead_letter_is_rendered_for_a_person() -> None:
    death = {
        "reason": "handler_error",
        "error": {"type": "shop.errors.ValidationError", "message": "Invalid order_id",
                  "stack_trace": "Traceback...\n  File x\nValidationError"},
        "retry_count": 4, "first_attempt": "2024-01-15T10:00:00Z",
        "last_attempt": "2024-01-15T10:00:30Z", "original_queue": "orders.process",
        "original_exchange": "orders", "original_routing_key": "orders.created",
        "consumer_id": "worker-3@host", "death_count": 2,
    }
    text = render_dead_letter({"message_id": "m-1", "body": {"order_id": "x"},
                               "headers": {"x-dead-letter": json.dumps(death), "k": "v"}})
    assert text.splitlines() == [
        "--- message m-1",
        "reason:        handler_error",
        "error:         shop.errors.ValidationError: Invalid order_id",
        "retries:       4  (deaths: 2)",
        "first attempt: 2024-01-15T10:00:00Z",
        "last attempt:  2024-01-15T10:00:30Z",
        "origin:        queue orders.process (exchange orders, routing key 'orders.created')",
        "consumer:      worker-3@host",
        "stack trace:",
        "    Traceback...",
        "      File x",
        "    ValidationError",
        'headers:       {"k": "v"}',
        'body:          {"order_id": "x"}',
    ]


def test_status_tables() -> None:
    text = render_status({
        "topology": {"name": "shop", "hash": "abcdef0123456789", "generation": 3,
                     "last_reload_result": "refused", "last_reload_error": "refused: x"},
        "topics": [{"name": "t", "partitions": [
            {"partition": 0, "log_start_offset": 0, "log_end_offset": 12, "size_bytes": 900}]}],
        "queues": [{"name": "q", "ready": 5, "unacked": 1, "delayed": 0,
                    "oldest_ready_age_s": 2.5}],
        "groups": [{"name": "g", "topics": ["t"], "members": ["m1"], "lag": 7, "handler": None}],
        "consumers": [{"name": "c", "queue": "q", "concurrency": 2, "delivery": "at-least-once",
                       "errors": 1, "retries": 3}],
    })
    assert text.splitlines()[:2] == [
        "topology shop  hash abcdef012345  generation 3",
        "last reload refused: refused: x",
    ]
    assert "q      5      1        0        2.5s" in text
    assert "g      t       1        7    (external)" in text


def test_the_token_comes_from_the_file_else_from_runner_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from runner.cli.daemon import _token

    monkeypatch.setenv("RUNNER_TOKEN", " from-env \n")
    assert _token(argparse.Namespace(token_file=None)) == "from-env"
    (tmp_path / "tok").write_text("from-file\n")
    assert _token(argparse.Namespace(token_file=tmp_path / "tok")) == "from-file"
    monkeypatch.delenv("RUNNER_TOKEN")
    assert _token(argparse.Namespace(token_file=None)) is None
