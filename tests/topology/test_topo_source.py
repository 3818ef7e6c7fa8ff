"""The YAML source: safe reading, core-schema typing, positions, env vars, limits."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from runner.topology.load import load, load_text, topology_files
from runner.topology.model import Position
from runner.topology.problems import Problem
from runner.topology.source import (
    MAX_FILE_BYTES,
    MAX_NODES,
    SourceDocument,
    SourceResult,
    core_scalar,
    read_bytes,
    read_file,
    read_text,
)


def _read(text: str, env: dict[str, str] | None = None) -> SourceResult:
    return read_text(text, file="t.yaml", env=env or {})


def _data(text: str, env: dict[str, str] | None = None) -> Any:
    result = _read(text, env)
    assert result.problems == ()
    assert result.document is not None
    return result.document.data


def _one(result: SourceResult) -> tuple[int, int, str]:
    assert len(result.problems) == 1, result.problems
    problem = result.problems[0]
    return problem.line, problem.column, problem.message


# ---------------------------------------------------------------- typing


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("false", False),
        ("True", True),
        ("FALSE", False),
        ("yes", "yes"),
        ("no", "no"),
        ("on", "on"),
        ("off", "off"),
        ("y", "y"),
        ("~", None),
        ("null", None),
        ("", None),
        ("10", 10),
        ("-7", -7),
        ("+3", 3),
        ("010", 10),  # YAML 1.2: no octal from a leading zero
        ("0o17", 15),
        ("0x1F", 31),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("1:30", "1:30"),  # no sexagesimal numbers
        ("2024-01-15", "2024-01-15"),  # no timestamps
        ("1_000", "1_000"),
        ("0b101", "0b101"),
        ("24h", "24h"),
    ],
)
def test_plain_scalars_are_typed_by_the_yaml_1_2_core_schema(text: str, value: Any) -> None:
    assert core_scalar(text) == value
    assert type(core_scalar(text)) is type(value)
    assert _data(f"v: {text}\n") == {"v": value}


def test_absurdly_long_numbers_stay_strings() -> None:
    # Python cannot print ints of more than 4300 digits; they must not reach messages
    long = "1" + "0" * 5000
    assert _data(f"a: {long}\nb: 0x{'f' * 100}\n") == {"a": long, "b": 16**100 - 1}
    result = load_text(f"version: 1\ntopics: {{t: {{partitions: {long}}}}}\n", env={})
    assert [p.message for p in result.problems] == [
        'partitions: expected a number, got the string "' + long[:57] + '..."'
    ]


def test_infinity_and_nan_are_floats() -> None:
    data = _data("a: .inf\nb: -.Inf\nc: .nan\n")
    assert data["a"] == float("inf") and data["b"] == float("-inf")
    assert data["c"] != data["c"]


def test_quoted_scalars_stay_strings() -> None:
    assert _data("a: '10'\nb: \"true\"\nc: 'null'\n") == {"a": "10", "b": "true", "c": "null"}


def test_an_explicit_str_tag_is_allowed() -> None:
    assert _data("a: !!str 10\n") == {"a": "10"}


def test_keys_are_kept_as_written() -> None:
    assert _data("1: a\ntrue: b\n~: c\n") == {"1": "a", "true": "b", "~": "c"}


# ---------------------------------------------------------------- positions


def test_every_node_has_a_position_by_document_path() -> None:
    text = (
        "version: 1\n"
        "queues:\n"
        "  email_queue:\n"
        "    dead_letter:\n"
        "      exchange: email_dlx\n"
        "bindings:\n"
        "  - exchange: a\n"
        "    queue: b\n"
        "  - {exchange: c, routing_key: 'x.#'}\n"
    )
    doc = _read(text).document
    assert doc is not None
    pos = doc.positions
    assert pos[""] == Position("t.yaml", 1, 1)
    assert pos["version"] == Position("t.yaml", 1, 10)
    assert pos["queues"] == Position("t.yaml", 2, 1)  # a mapping under a key: its key
    assert pos["queues.email_queue"] == Position("t.yaml", 3, 3)
    assert pos["queues.email_queue.dead_letter.exchange"] == Position("t.yaml", 5, 17)
    assert pos["bindings[0]"] == Position("t.yaml", 7, 5)
    assert pos["bindings[0].queue"] == Position("t.yaml", 8, 12)
    assert pos["bindings[1]"] == Position("t.yaml", 9, 5)
    assert pos["bindings[1].routing_key"] == Position("t.yaml", 9, 32)
    assert doc.key_positions["queues.email_queue.dead_letter.exchange"] == Position("t.yaml", 5, 7)
    assert doc.key_positions["bindings[1].routing_key"] == Position("t.yaml", 9, 19)


# ---------------------------------------------------------------- refused YAML


def test_duplicate_keys_are_errors_naming_both_lines() -> None:
    result = _read("queues:\n  jobs: {}\n  mail: {}\n  jobs: {durable: false}\n")
    assert _one(result) == (
        4,
        3,
        'duplicate key "jobs" in queues: first at line 2, again at line 4',
    )
    assert result.problems[0].rule == "duplicate-key"


def test_python_tags_are_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f'version: 1\nname: !!python/object/apply:os.system ["touch {marker}"]\n'
    result = _read(text)
    assert _one(result) == (
        2,
        7,
        "tag !!python/object/apply:os.system is not allowed: tags are never executed or "
        "constructed",
    )
    assert not marker.exists()


def test_unknown_tags_on_keys_and_collections_are_refused() -> None:
    result = _read("!!binary a: 1\nb: !custom [1]\n? [x]\n: 1\n")
    assert [p.message for p in result.problems] == [
        "tag !!binary is not allowed: tags are never executed or constructed",
        "tag !custom is not allowed: tags are never executed or constructed",
        "a key in the top level must be a plain name, not a list",
    ]


def test_an_alias_bomb_fails_fast_with_a_clear_error() -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    # CPU time, not wall time (a loaded CI machine took 1.08 s of wall time); expanding
    # the bomb's 10**10 nodes would take hours, refusing it takes milliseconds.
    started = time.process_time()
    result = _read("\n".join(lines) + "\n")
    assert time.process_time() - started < 5.0
    assert [p.message for p in result.problems] == [
        "aliases expand to more than 100000 nodes (an alias bomb?); "
        "write the data out or use fewer aliases"
    ]


def test_a_few_aliases_are_fine() -> None:
    data = _data("base: &b {max_length: 10}\nq1: *b\nq2: *b\n")
    assert data == {"base": {"max_length": 10}, "q1": {"max_length": 10}, "q2": {"max_length": 10}}


def test_merge_keys_copy_entries_that_are_not_set_explicitly() -> None:
    text = (
        "defaults: &d {max_length: 5, durable: false}\n"
        "more: &m {durable: true, overflow: reject-publish, max_length: 9}\n"
        "q: {durable: true, <<: *d}\n"
        "r:\n  <<: [*d, *m]\n  delivery_limit: 2\n"
    )
    result = _read(text)
    assert result.problems == ()
    doc = result.document
    assert doc is not None
    assert doc.data["q"] == {"max_length": 5, "durable": True}
    assert doc.data["r"] == {
        "max_length": 5,
        "durable": False,
        "overflow": "reject-publish",
        "delivery_limit": 2,
    }
    # explicit keys keep their own position; merged ones point at the anchor's entry
    assert doc.positions["q.durable"] == Position("t.yaml", 3, 14)
    assert doc.positions["q.max_length"] == Position("t.yaml", 1, 27)


def test_a_merge_key_needs_mappings() -> None:
    assert _one(_read("q: {<<: 5}\n")) == (
        1,
        5,
        "a merge key (<<) takes a mapping or a list of mappings: <<: *defaults",
    )


def test_a_quoted_merge_key_is_an_ordinary_key() -> None:
    assert _data("q: {'<<': 5}\n") == {"q": {"<<": 5}}


def test_a_recursive_alias_is_an_error() -> None:
    # reported where the anchored node starts
    assert _one(_read("a: &x\n  b: *x\n")) == (1, 4, "an alias refers to itself (recursive data)")


def test_syntax_errors_carry_line_and_column() -> None:
    result = _read("a: [1, 2\nb: 3\n")
    line, column, message = _one(result)
    assert (line, column) == (2, 2)
    assert message == (
        "YAML syntax error: did not find expected ',' or ']' "
        "(while parsing a flow sequence started at line 1)"
    )
    assert result.document is None


def test_tab_indentation_is_a_syntax_error() -> None:
    line, column, message = _one(_read("a:\n\tb: 1\n"))
    assert (line, column) == (2, 1)
    assert message == (
        "YAML syntax error: a tab character; YAML is indented with spaces, never tabs "
        "(while scanning for the next token started at line 2)"
    )


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_file_is_an_error(text: str) -> None:
    assert _one(_read(text)) == (
        0,
        0,
        "file is empty: a topology file needs at least `version: 1`",
    )


def test_several_documents_are_an_error_at_the_second_one() -> None:
    assert _one(_read("version: 1\n---\nversion: 1\n")) == (
        2,
        1,
        "file holds more than one YAML document (`---`); a topology file holds exactly one",
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [("- a\n- b\n", "a list"), ("42\n", "the number 42"), ("hello\n", 'the string "hello"')],
)
def test_the_top_level_must_be_a_mapping(text: str, shown: str) -> None:
    assert _one(_read(text)) == (
        1,
        1,
        "the top level of a topology file must be a mapping of sections "
        f"(version, topics, exchanges, ...); got {shown}",
    )


def test_nul_bytes_mean_a_binary_file() -> None:
    result = read_bytes(b"version: 1\n\x00\x01", file="t.yaml")
    assert _one(result) == (0, 0, "this is a binary file, not YAML text: NUL byte at offset 11")


def test_non_utf8_input_is_refused_with_its_position() -> None:
    result = read_bytes(b"version: 1\nname: caf\xe9\n", file="t.yaml")
    assert _one(result) == (
        2,
        10,
        "file is not UTF-8 text: invalid byte 0xe9 at offset 20",
    )


def test_a_utf8_byte_order_mark_is_accepted() -> None:
    result = read_bytes("\ufeffversion: 1\n".encode(), file="t.yaml")
    assert result.problems == ()
    assert result.document is not None and result.document.data == {"version": 1}


def test_lone_surrogates_in_text_are_refused() -> None:
    assert _one(_read("version: 1\nname: a\ud800b\n")) == (
        2,
        8,
        "text is not valid Unicode: lone surrogate #xd800",
    )


def test_control_characters_are_refused() -> None:
    assert _one(_read("a: 1\nb: \x07\n")) == (2, 4, "character #x0007 is not allowed in YAML text")


def test_nesting_is_bounded() -> None:
    text = "a: " + "[" * 70 + "]" * 70 + "\n"
    assert _one(_read(text)) == (1, 67, "data is nested deeper than 64 levels")


def test_a_file_over_the_size_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk and no time
    result, raw = read_file(str(big), file="big.yaml")
    assert raw is None
    assert _one(result) == (
        0,
        0,
        "file is too large: 4.0 MiB (4194305 bytes); the limit is 4.0 MiB",
    )
    loaded = load(str(big))
    assert [p.message for p in loaded.problems] == [result.problems[0].message]
    assert loaded.topology is None


def test_a_file_just_under_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    body = "version: 1\n"
    path.write_text(body + "#" * (MAX_FILE_BYTES - len(body) - 1) + "\n")
    result, raw = read_file(str(path))
    assert raw is not None and len(raw) == MAX_FILE_BYTES
    assert result.problems == ()


def test_a_file_with_too_many_nodes_is_refused_before_it_is_composed(tmp_path: Path) -> None:
    # the top mapping, version, 1, queues, the list and its items: one node over the limit
    items = MAX_NODES - 4
    path = tmp_path / "wide.yaml"
    path.write_text("version: 1\nqueues: [" + "1," * (items - 1) + "1]\n")
    result = load(str(path))
    assert [(p.file, p.line, p.column, p.rule, p.message) for p in result.problems] == [
        (
            str(path),
            0,
            0,
            "too-many-nodes",
            "file is too large to validate: more than 100,000 YAML nodes (keys, values, "
            "lists and mappings); the limit is 100,000 nodes a file",
        )
    ]
    at_the_limit = "version: 1\nqueues: [" + "1," * (items - 2) + "1]\n"
    assert [p.rule for p in load_text(at_the_limit).problems] == ["schema"]


# ---------------------------------------------------------------- environment


def test_env_vars_are_replaced_and_unquoted_values_retyped() -> None:
    env = {"PARTS": "12", "FLAG": "false", "NAME": "orders"}
    data = _data(
        "a: ${PARTS}\nb: '${PARTS}'\nc: ${FLAG}\nd: q-${NAME}-1\ne: ${MISSING:-6}\n"
        'f: ${MISSING:-}\ng: "${MISSING:-x y}"\n',
        env,
    )
    assert data == {
        "a": 12,
        "b": "12",
        "c": False,
        "d": "q-orders-1",
        "e": 6,
        "f": None,
        "g": "x y",
    }


def test_an_empty_variable_takes_its_default_like_the_shell() -> None:
    assert _data("a: ${EMPTY:-5}\nb: x${EMPTY}y\n", {"EMPTY": ""}) == {"a": 5, "b": "xy"}


def test_double_dollar_is_a_literal() -> None:
    assert _data("a: $${HOME}\nb: cost $5\nc: a$$b\n", {"HOME": "/root"}) == {
        "a": "${HOME}",
        "b": "cost $5",
        "c": "a$$b",
    }


def test_double_dollar_is_a_literal_inside_a_default_too() -> None:
    text = "a: ${U:-d$${e}}\nb: ${U:-$${x}}-${U:-y}\nc: ${SET:-d$${e}}\n"
    assert _data(text, {"SET": "v"}) == {"a": "d${e}", "b": "${x}-y", "c": "v"}


def test_env_vars_work_in_keys() -> None:
    assert _data("queues:\n  ${P}-jobs: {}\n", {"P": "eu"}) == {"queues": {"eu-jobs": {}}}


def test_an_unset_variable_is_an_error_at_its_line() -> None:
    result = _read("a: 1\nb: ${NOPE}\n")
    assert _one(result) == (
        2,
        4,
        "environment variable NOPE is not set (write ${NOPE:-default} to give a default)",
    )
    assert result.problems[0].rule == "env-unset"
    assert result.problems[0].path == "b"


def test_env_errors_point_at_the_reference_itself() -> None:
    text = "a: x-${NOPE}\nb: >\n  folded\n  text ${SET} ${GONE}\nc: 'q ${1x}'\n"
    result = _read(text, {"SET": "1"})
    assert [(p.line, p.column, p.rule) for p in result.problems] == [
        (1, 6, "env-unset"),
        (4, 15, "env-unset"),
        (5, 7, "env-syntax"),
    ]


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_SOURCE_TEST_PARTS", "3")
    result = read_text("a: ${RUNNER_SOURCE_TEST_PARTS}\n", file="t.yaml")
    assert result.document is not None and result.document.data == {"a": 3}


# ---------------------------------------------------------------- files and directories


def test_a_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load(str(tmp_path / "nope.yaml"))


def test_directories_list_yaml_files_sorted_without_editor_files(tmp_path: Path) -> None:
    for name in ["b.yml", "a.yaml", ".hidden.yaml", "#a.yaml#", "a.yaml~", "notes.txt", "c.YAML"]:
        (tmp_path / name).write_text("version: 1\n")
    (tmp_path / "sub.yaml").mkdir()
    (tmp_path / "sub.yaml" / "x.yaml").write_text("version: 1\n")
    arg = str(tmp_path) + "/"
    assert topology_files(arg) == [arg + "a.yaml", arg + "b.yml"]


def test_files_in_problems_are_named_as_the_argument_was_given(tmp_path: Path) -> None:
    folder = tmp_path / "topo"
    folder.mkdir()
    (folder / "a.yaml").write_text("version: 1\nqueues: {q: {max_length: -1}}\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = load("topo")
    finally:
        os.chdir(cwd)
    assert [(p.file, p.line, p.column) for p in result.problems] == [("topo/a.yaml", 2, 26)]


def test_load_text_never_needs_a_file() -> None:
    result = load_text("version: 1\nqueues: {jobs: {}}\n", filename="inline.yaml", env={})
    assert result.problems == ()
    assert result.topology is not None
    assert result.topology.files == ("inline.yaml",)


def test_problems_are_values() -> None:
    result = _read("a: ${X}\n")
    assert result.problems == (
        Problem(
            "t.yaml",
            1,
            4,
            "a",
            "env-unset",
            result.problems[0].severity,
            "environment variable X is not set (write ${X:-default} to give a default)",
        ),
    )
    assert isinstance(result.document, SourceDocument)
