"""The YAML source: one topology file read safely into plain data with positions.

PyYAML (libyaml when available) composes the node graph; we convert the nodes
ourselves instead of using a constructor, which lets us

- keep the line and column of every node, keyed by document path
  (`queues.email_queue.dead_letter.exchange`, `bindings[2].routing_key`);
- type plain scalars by the YAML 1.2 core schema (only true/false are
  booleans; no sexagesimal numbers, no timestamps);
- refuse duplicate keys, every tag (nothing is ever constructed from a tag),
  and alias expansion past a budget (an alias bomb fails in milliseconds);
- replace `${VAR}` / `${VAR:-default}` from the environment and re-type
  unquoted scalars after the replacement (`$${` is a literal `${`).

Problems are collected as data; nothing here raises for bad input.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from runner.topology.model import Position
from runner.topology.problems import Problem, Severity

# Bounds that keep the worst case of one validation to a few seconds: YAML
# nodes are what parsing and the schema check cost (tens of microseconds each).
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_NODES = 100_000  # values, keys, lists and mappings of one file, aliases not expanded
MAX_ALIAS_EXPANSION = 100_000  # nodes converted again because an alias points at them
MAX_DEPTH = 64

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_PLAIN = "?plain"
_QUOTED = "?quoted"
_IMPLICIT_TAGS = frozenset({_PLAIN, _QUOTED, "?seq", "?map"})
# Explicit tags that only restate what the node already is; all others are refused.
_HARMLESS_TAGS = frozenset(
    {"tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"}
)

_INT10 = re.compile(r"[-+]?[0-9]+")
_INT8 = re.compile(r"0o[0-7]+")
_INT16 = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)")
_NAN = re.compile(r"\.(?:nan|NaN|NAN)")
_MAX_NUMBER_CHARS = 400
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _SafeNodeLoader(_Loader):  # type: ignore[misc]
    """Composes nodes only; marks every untagged node so tags can be told apart."""

    def resolve(self, kind: type[Any], value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode:
            return _PLAIN if implicit[0] else _QUOTED
        return "?seq" if kind is yaml.SequenceNode else "?map"


@dataclass(frozen=True, slots=True)
class SourceDocument:
    """One file as plain data, with where every node came from."""

    file: str
    data: Any
    # document path -> position of the node (for a mapping or list under a key:
    # of its key, the line a person looks for)
    positions: Mapping[str, Position] = field(repr=False)
    # document path of a mapping entry -> position of its key
    key_positions: Mapping[str, Position] = field(repr=False)


@dataclass(frozen=True, slots=True)
class SourceResult:
    """The document (None when the file could not be read at all) and its problems."""

    document: SourceDocument | None
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not any(p.is_error for p in self.problems)


def core_scalar(text: str) -> Any:
    """Type an unquoted scalar by the YAML 1.2 core schema."""
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    first = text[0]
    if not (first.isdigit() or first in "+-."):
        return text
    if len(text) > _MAX_NUMBER_CHARS:
        # Absurdly long numbers stay strings: Python refuses to print such ints
        # (sys.get_int_max_str_digits), which would break every error message.
        return text
    if _INT10.fullmatch(text):
        return int(text, 10)
    if _INT8.fullmatch(text):
        return int(text[2:], 8)
    if _INT16.fullmatch(text):
        return int(text[2:], 16)
    if _FLOAT.fullmatch(text):
        return float(text)
    if _INF.fullmatch(text):
        return float("-inf") if first == "-" else float("inf")
    if _NAN.fullmatch(text):
        return float("nan")
    return text


def read_file(
    path: str, *, file: str | None = None, env: Mapping[str, str] | None = None,
    follow_symlinks: bool = True,
) -> tuple[SourceResult, bytes | None]:
    """Read and parse one file; also return its bytes (None when not read: too large).

    Only a regular file is read: it is opened without blocking (`O_NONBLOCK`, so a
    FIFO put in its place cannot hang the reader) and checked with `fstat` on the
    open descriptor; anything else (FIFO, socket, device, directory) is a
    `not-a-regular-file` problem. With `follow_symlinks=False` a symbolic link is a
    `symlink` problem instead of being followed. `file` is the name used in problems
    (default: `path`). Raises OSError when the file cannot be opened.
    """
    name = path if file is None else file
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks and os.path.islink(path):
            message = (
                f"the file is a symbolic link (to {os.readlink(path)!r}) and symbolic links "
                "are not followed (--no-follow-symlinks); put the file itself here"
            )
            return SourceResult(None, (_problem(name, 0, 0, "", "symlink", message),)), b""
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            message = (
                f"not a regular file but {_file_kind(info.st_mode)}; a topology is read "
                "from regular files only"
            )
            problem = _problem(name, 0, 0, "", "not-a-regular-file", message)
            return SourceResult(None, (problem,)), b""
        size = info.st_size
        if size > MAX_FILE_BYTES:
            message = (
                f"file is too large: {_human(size)} ({size} bytes); "
                f"the limit is {_human(MAX_FILE_BYTES)}"
            )
            return SourceResult(None, (_problem(name, 0, 0, "", "file-too-large", message),)), None
        raw = _read_fd(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    return read_bytes(raw, file=name, env=env), raw


def _read_fd(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes of an open regular file."""
    parts: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _file_kind(mode: int) -> str:
    """`a FIFO`, `a directory`... for a file that is not regular."""
    kinds = (
        (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((text for test, text in kinds if test(mode)), "a special file")


def read_bytes(raw: bytes, *, file: str, env: Mapping[str, str] | None = None) -> SourceResult:
    """Parse raw file content: refuses oversize, binary and non-UTF-8 input."""
    if len(raw) > MAX_FILE_BYTES:
        message = (
            f"file is too large: {_human(len(raw))} ({len(raw)} bytes); "
            f"the limit is {_human(MAX_FILE_BYTES)}"
        )
        return SourceResult(None, (_problem(file, 0, 0, "", "file-too-large", message),))
    nul = raw.find(b"\x00")
    if nul >= 0:
        message = f"this is a binary file, not YAML text: NUL byte at offset {nul}"
        return SourceResult(None, (_problem(file, 0, 0, "", "encoding", message),))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        message = (
            f"file is not UTF-8 text: invalid byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        )
        return SourceResult(None, (_problem(file, line, column, "", "encoding", message),))
    return read_text(text, file=file, env=env)


def read_text(text: str, *, file: str, env: Mapping[str, str] | None = None) -> SourceResult:
    """Parse YAML text into a `SourceDocument`, collecting every problem."""
    if len(text) > MAX_FILE_BYTES:
        message = f"file is too large: more than {_human(MAX_FILE_BYTES)}"
        return SourceResult(None, (_problem(file, 0, 0, "", "file-too-large", message),))
    if "\x00" in text:
        nul = text.index("\x00")
        message = f"this is a binary file, not YAML text: NUL character at offset {nul}"
        return SourceResult(None, (_problem(file, 0, 0, "", "encoding", message),))
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        nodes = _count_nodes(text, MAX_NODES)
        if nodes > MAX_NODES:
            message = (
                f"file is too large to validate: more than {MAX_NODES:,} YAML nodes "
                "(keys, values, lists and mappings); the limit is "
                f"{MAX_NODES:,} nodes a file"
            )
            return SourceResult(None, (_problem(file, 0, 0, "", "too-many-nodes", message),))
        loader = _SafeNodeLoader(text)
        try:
            if not loader.check_node():
                message = "file is empty: a topology file needs at least `version: 1`"
                return SourceResult(None, (_problem(file, 0, 0, "", "empty-file", message),))
            root = loader.get_node()
            if loader.check_node():
                second = loader.get_node()
                mark = second.start_mark if second is not None else None
                line = _document_start(text, mark.line) + 1 if mark is not None else 0
                message = (
                    "file holds more than one YAML document (`---`); "
                    "a topology file holds exactly one"
                )
                col = 1 if line else 0
                return SourceResult(
                    None, (_problem(file, line, col, "", "multiple-documents", message),)
                )
        finally:
            loader.dispose()
    except UnicodeEncodeError as exc:  # lone surrogates: only text that did not come from a file
        line = text.count("\n", 0, exc.start) + 1
        column = exc.start - (text.rfind("\n", 0, exc.start) + 1) + 1
        message = f"text is not valid Unicode: lone surrogate {_char_name(text[exc.start])}"
        return SourceResult(None, (_problem(file, line, column, "", "encoding", message),))
    except yaml.MarkedYAMLError as exc:
        return SourceResult(None, (_syntax_problem(file, exc, text),))
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        message = f"character {_char_name(exc.character)} is not allowed in YAML text"
        return SourceResult(None, (_problem(file, line, column, "", "yaml-syntax", message),))
    except yaml.YAMLError as exc:  # pragma: no cover - libyaml reports every error marked
        return SourceResult(None, (_problem(file, 0, 0, "", "yaml-syntax", f"YAML error: {exc}"),))
    converter = _Converter(file, os.environ if env is None else env, text)
    data = converter.convert(root, "", None, 0)
    problems = tuple(sorted(converter.problems, key=Problem.sort_key))
    if data is None and not problems:
        message = "file is empty: a topology file needs at least `version: 1`"
        return SourceResult(None, (_problem(file, 0, 0, "", "empty-file", message),))
    if not isinstance(data, dict) and not any(p.is_error for p in problems):
        start = root.start_mark
        message = (
            "the top level of a topology file must be a mapping of sections "
            f"(version, topics, exchanges, ...); got {_kind(data)}"
        )
        problems += (
            _problem(file, start.line + 1, start.column + 1, "", "top-level-type", message),
        )
    document = SourceDocument(file, data, converter.positions, converter.key_positions)
    return SourceResult(document, problems)


class _Converter:
    """Turns a composed node graph into plain data, positions and problems."""

    def __init__(self, file: str, env: Mapping[str, str], text: str) -> None:
        self.file = file
        self.env = env
        self.text = text
        self.positions: dict[str, Position] = {}
        self.key_positions: dict[str, Position] = {}
        self.problems: list[Problem] = []
        self._seen: set[int] = set()
        self._active: set[int] = set()
        self._expanded = 0
        self._budget_spent = False

    def convert(self, node: Any, path: str, key_pos: Position | None, depth: int) -> Any:
        mark = node.start_mark
        pos = Position(self.file, mark.line + 1, mark.column + 1)
        node_id = id(node)
        if node_id in self._seen:
            if node_id in self._active:
                message = "an alias refers to itself (recursive data)"
                self._error(pos, path, "alias-recursive", message)
                return None
            self._expanded += 1
            if self._expanded > MAX_ALIAS_EXPANSION:
                if not self._budget_spent:
                    self._budget_spent = True
                    self._error(
                        pos,
                        path,
                        "alias-limit",
                        f"aliases expand to more than {MAX_ALIAS_EXPANSION} nodes "
                        "(an alias bomb?); write the data out or use fewer aliases",
                    )
                return None
        else:
            self._seen.add(node_id)
        tag = node.tag
        if tag not in _IMPLICIT_TAGS and tag not in _HARMLESS_TAGS:
            self._error(pos, path, "yaml-tag", _tag_message(tag))
            return None
        if isinstance(node, yaml.ScalarNode):
            self.positions[path] = pos
            return self._scalar(node, path, pos)
        self.positions[path] = key_pos if key_pos is not None else pos
        if depth >= MAX_DEPTH:
            message = f"data is nested deeper than {MAX_DEPTH} levels"
            self._error(pos, path, "nesting-depth", message)
            return None
        self._active.add(node_id)
        try:
            if isinstance(node, yaml.SequenceNode):
                return [
                    self.convert(item, f"{path}[{index}]", None, depth + 1)
                    for index, item in enumerate(node.value)
                ]
            return self._mapping(node, path, depth)
        finally:
            self._active.discard(node_id)

    def _mapping(self, node: Any, path: str, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        prefix = f"{path}." if path else ""
        where = path or "the top level"
        entries: list[tuple[Any, Any, Position, str]] = []
        for key_node, value_node in node.value:
            mark = key_node.start_mark
            key_pos = Position(self.file, mark.line + 1, mark.column + 1)
            key = self._key(key_node, key_pos, path, where)
            if key is None:
                continue
            if key == "<<" and key_node.tag == _PLAIN:
                # merged first, so explicit keys (values and positions) win
                self._merge(value_node, key_pos, path, depth, result)
                continue
            entries.append((key_node, value_node, key_pos, key))
        for _key_node, value_node, key_pos, key in entries:
            child = prefix + key
            if key in first_line:
                self._error(
                    key_pos,
                    child,
                    "duplicate-key",
                    f'duplicate key "{key}" in {where}: first at line {first_line[key]}, '
                    f"again at line {key_pos.line}",
                )
                continue
            first_line[key] = key_pos.line
            self.key_positions[child] = key_pos
            result[key] = self.convert(value_node, child, key_pos, depth + 1)
        return result

    def _key(self, key_node: Any, key_pos: Position, path: str, where: str) -> str | None:
        if not isinstance(key_node, yaml.ScalarNode):
            shape = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
            message = f"a key in {where} must be a plain name, not a {shape}"
            self._error(key_pos, path, "complex-key", message)
            return None
        if key_node.tag not in _IMPLICIT_TAGS and key_node.tag not in _HARMLESS_TAGS:
            self._error(key_pos, path, "yaml-tag", _tag_message(key_node.tag))
            return None
        key: str = key_node.value
        if "$" in key:
            substituted = self._substitute(key, key_node, key_pos, path)
            key = key if substituted is None else substituted
        return key

    def _merge(
        self, value_node: Any, key_pos: Position, path: str, depth: int, into: dict[str, Any]
    ) -> None:
        """Apply a `<<: *defaults` merge key: copy entries not set explicitly.

        Merge keys are YAML 1.1, not 1.2, but common in configuration files; as
        in YAML 1.1, explicit keys win and earlier merge sources win over later.
        """
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                message = "a merge key (<<) takes a mapping or a list of mappings: <<: *defaults"
                self._error(key_pos, path, "merge-key", message)
                return
            if id(source) in self._active:
                message = "an alias refers to itself (recursive data)"
                self._error(key_pos, path, "alias-recursive", message)
                return
            self._active.add(id(source))
            try:
                merged = self._mapping(source, path, depth)
            finally:
                self._active.discard(id(source))
            for key, value in merged.items():
                into.setdefault(key, value)  # an earlier source wins

    def _scalar(self, node: Any, path: str, pos: Position) -> Any:
        text: str = node.value
        plain = node.tag == _PLAIN
        if "$" in text:
            substituted = self._substitute(text, node, pos, path)
            if substituted is None:
                return None
            text = substituted
        return core_scalar(text) if plain else text

    def _substitute(self, text: str, node: Any, pos: Position, path: str) -> str | None:
        """Replace `${VAR}` / `${VAR:-default}`; None (after reporting) on an error.

        Errors point at the reference itself when it can be found in the
        source, else at the start of the scalar.
        """
        out: list[str] = []
        index = 0
        failed = False
        while True:
            start = text.find("$", index)
            if start < 0:
                out.append(text[index:])
                break
            if text.startswith("$${", start):
                out.append(text[index:start] + "${")
                index = start + 3
                continue
            if not text.startswith("${", start):
                out.append(text[index : start + 1])
                index = start + 1
                continue
            out.append(text[index:start])
            end = _closing_brace(text, start + 2)
            if end < 0:
                message = f'unclosed "${{" in "{text}"; write "$${{" for a literal "${{"'
                self._error(self._locate(node, text[start:], pos), path, "env-syntax", message)
                return None
            inner = text[start + 2 : end]
            name, sep, default = inner.partition(":-")
            if not _VAR_NAME.fullmatch(name):
                self._error(
                    self._locate(node, f"${{{inner}}}", pos),
                    path,
                    "env-syntax",
                    f'invalid variable reference "${{{inner}}}"; '
                    "write ${NAME} or ${NAME:-default}",
                )
                return None
            value = self.env.get(name)
            if sep and not value:
                value = default.replace("$${", "${")  # escapes work inside a default too
            if value is None:
                self._error(
                    self._locate(node, f"${{{inner}}}", pos),
                    path,
                    "env-unset",
                    f"environment variable {name} is not set "
                    f"(write ${{{name}:-default}} to give a default)",
                )
                failed = True
                value = ""
            out.append(value)
            index = end + 1
        return None if failed else "".join(out)

    def _locate(self, node: Any, needle: str, fallback: Position) -> Position:
        """Where `needle` first appears inside `node`'s source text."""
        start, end = node.start_mark, node.end_mark
        found = self.text.find(needle, start.index, max(end.index, start.index + len(needle)))
        if found < 0:
            return fallback  # e.g. written with escapes inside a double-quoted string
        line = start.line + self.text.count("\n", start.index, found)
        column = found - (self.text.rfind("\n", 0, found) + 1)
        return Position(self.file, line + 1, column + 1)

    def _error(self, pos: Position, path: str, rule: str, message: str) -> None:
        self.problems.append(
            Problem(pos.file, pos.line, pos.column, path, rule, Severity.ERROR, message)
        )


_NODE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent, yaml.AliasEvent)


def _count_nodes(text: str, limit: int) -> int:
    """The number of nodes in `text`, counting no further than `limit + 1`.

    Parsing events is much cheaper than composing and converting nodes, so a
    file too large to validate quickly is refused before that work starts.
    Raises what the parser raises (syntax errors), like composing would.
    """
    parser = _Loader(text)
    count = 0
    try:
        while count <= limit and parser.check_event():
            if isinstance(parser.get_event(), _NODE_EVENTS):
                count += 1
    finally:
        parser.dispose()
    return count


def _closing_brace(text: str, index: int) -> int:
    """The `}` closing a `${...}` whose content starts at `index` (-1: none).

    A `$${...}` inside (an escaped literal in a default) is passed over whole.
    """
    while index < len(text):
        if text.startswith("$${", index):
            inner = text.find("}", index + 3)
            if inner < 0:
                return -1
            index = inner + 1
        elif text[index] == "}":
            return index
        else:
            index += 1
    return -1


def _problem(file: str, line: int, column: int, path: str, rule: str, message: str) -> Problem:
    return Problem(file, line, column, path, rule, Severity.ERROR, message)


def _syntax_problem(file: str, exc: yaml.MarkedYAMLError, text: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 0
    column = mark.column + 1 if mark is not None else 0
    problem = exc.problem or "invalid YAML"
    if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
        problem = "a tab character; YAML is indented with spaces, never tabs"
    message = f"YAML syntax error: {problem}"
    if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
        message += f" ({exc.context} started at line {exc.context_mark.line + 1})"
    elif exc.context:
        message += f" ({exc.context})"
    return _problem(file, line, column, "", "yaml-syntax", message)


def _char_at(text: str, line: int, column: int) -> str:
    lines = text.split("\n", line + 1)
    if line >= len(lines):
        return ""
    return lines[line][column : column + 1]


def _document_start(text: str, node_line: int) -> int:
    """The 0-based line of the `---` that opens the document holding `node_line`."""
    lines = text.split("\n", node_line + 1)[: node_line + 1]
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("---"):
            return index
    return node_line


def _tag_message(tag: str) -> str:
    return f"tag {_tag_name(tag)} is not allowed: tags are never executed or constructed"


def _tag_name(tag: str) -> str:
    if tag.startswith("tag:yaml.org,2002:"):
        return "!!" + tag[len("tag:yaml.org,2002:") :]
    return tag


def _char_name(char: str | int) -> str:
    code = char if isinstance(char, int) else ord(char[:1] or "?")
    return f"#x{code:04x}"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def _human(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB" if size >= 1024 * 1024 else f"{size} bytes"
