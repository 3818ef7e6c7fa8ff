"""The JSON Schema check: a topology file's plain data against topology.schema.json.

The validator is compiled once per process (`validator()` is cached). Each
jsonschema error becomes a `Problem` at the offending node's position with a
plain sentence instead of jsonschema's repr: unknown keys get a "did you mean"
suggestion, bare numbers where a duration is expected get the unit form, and
`anyOf` / `oneOf` failures report the one branch that fits the value's type,
so a node is never reported twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from runner.topology.model import Position
from runner.topology.partial import KINDS, SECTIONS
from runner.topology.problems import Problem, Severity
from runner.topology.source import SourceDocument, core_scalar
from runner.topology.suggest import did_you_mean
from runner.topology.units import DURATION_EXAMPLES, RATE_EXAMPLES, suggest_duration

_JSON_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "a number",
    "number": "a number",
    "boolean": "true or false",
    "null": "nothing",
}


def schema_text() -> str:
    """The JSON Schema shipped with the package, as text."""
    return (resources.files("runner.topology") / "topology.schema.json").read_text("utf-8")


@lru_cache(maxsize=1)
def schema() -> Mapping[str, Any]:
    """The JSON Schema as data (parsed once)."""
    loaded: dict[str, Any] = json.loads(schema_text())
    return loaded


@lru_cache(maxsize=1)
def validator() -> Draft202012Validator:
    """The compiled validator, built once per process.

    Local `$ref`s are inlined first (the schema has no recursion): resolving a
    reference per node made validation of a large topology about twice as slow.
    """
    whole = schema()
    return Draft202012Validator(_inline(whole, whole.get("$defs", {})))


# `if` a value is (a name: holds) a `${...}` string `then` a placeholder `else` the field
_PLACEHOLDER_IFS = (
    {"type": "string", "pattern": "^\\$\\{"},
    {"type": "string", "pattern": "\\$\\{"},
)


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    """The schema with local `$ref`s inlined and the placeholder branches removed.

    Numeric, boolean, duration and size fields, and names, are `if: a ${...}
    string, then: a placeholder, else: the field` in the shipped schema, for
    editors, which see the file before substitution (an `if` rather than an
    `anyOf`, so that a wrong value gets the field's own message there). The
    loader validates after substitution, where a `${...}` string is only ever
    a literal (`$${P}`) and must stay an error: only the `else` is kept.
    """
    if isinstance(node, dict):
        if node.get("if") in _PLACEHOLDER_IFS and "else" in node:
            plain = {k: v for k, v in node.items() if k not in ("if", "then", "else")}
            plain.update(node["else"])
            node = plain
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            merged = dict(_inline(defs[ref[len("#/$defs/") :]], defs))
            merged.update({k: _inline(v, defs) for k, v in node.items() if k != "$ref"})
            return merged
        return {
            k: _end_of_input(v) if k == "pattern" and isinstance(v, str) else _inline(v, defs)
            for k, v in node.items()
            if k != "$defs"
        }
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def _end_of_input(pattern: str) -> str:
    """A schema pattern with JSON Schema's (ECMA-262) meaning of a final `$`, the end of
    the input, in Python's `re` (where `$` also matches before a final newline, so
    `"orders\\n"` would pass `^[a-z]+$`): the final `$` becomes `\\Z`."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        return pattern[:-1] + "\\Z"
    return pattern


def check(document: SourceDocument) -> list[Problem]:
    """Every schema problem of one file, one per offending node, in document order."""
    return [problem for _, problem in check_subjects(document)]


def check_subjects(document: SourceDocument) -> list[tuple[str, Problem]]:
    """Every schema problem with the document path it makes invalid.

    That path is the problem's own path, except for a missing required key,
    where it is the key's path (`consumers.c.queue`): the entity stays usable.
    """
    problems: dict[tuple[str, str], Problem] = {}
    for error in validator().iter_errors(document.data):
        for key, problem in _explain(error, document):
            problems.setdefault(key, problem)
    return [(subject, problem) for (subject, _), problem in problems.items()]


# ---------------------------------------------------------------- explaining errors


_Found = Iterator[tuple[tuple[str, str], Problem]]


def _explain(error: ValidationError, doc: SourceDocument) -> _Found:
    path = _path(error.absolute_path)
    keyword = error.validator
    instance = error.instance
    where_schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    rule_value: Any = error.validator_value
    if keyword in ("anyOf", "oneOf") and isinstance(rule_value, list):
        branches: list[Any] = rule_value
        exclusive = _exclusive_keys(branches)
        if exclusive is not None:
            yield (path, "value"), _exclusive(path, instance, exclusive, doc)
            return
        chosen = _branch_for(branches, instance)
        if chosen is not None:
            inner = [e for e in error.context or () if e.relative_schema_path[0] == chosen]
            for sub in inner:
                yield from _explain(sub, doc)
            if inner:
                return
        yield (path, "value"), _at(doc, path, _describe_branches(path, error, instance))
        return
    if keyword == "additionalProperties" and isinstance(instance, dict):
        properties = where_schema.get("properties", {})
        patterns = [re.compile(p) for p in where_schema.get("patternProperties", {})]
        known = sorted(properties)
        where = path or "the top level"
        for key in instance:
            if key in properties or any(p.search(key) for p in patterns):
                continue
            child = f"{path}.{key}" if path else key
            hint = did_you_mean(key, known)
            if not hint and known:
                hint = "; known keys: " + ", ".join(known)
            message = f'unknown key "{key}" in {where}{hint}'
            yield (child, "key"), _at(doc, child, message, rule="unknown-key", key=True)
        return
    if keyword == "required":
        where = path or "the top level"
        for key in rule_value:
            if isinstance(instance, dict) and key in instance:
                continue
            message = f'missing required key "{key}" in {where}'
            subject = f"{path}.{key}" if path else key
            yield (subject, "required"), _at(doc, path, message, rule="missing-key")
        return
    if "propertyNames" in error.relative_schema_path and isinstance(instance, str):
        child = f"{path}.{instance}" if path else instance
        kind = KINDS.get(path, "")
        message = _bad_name(instance, kind)
        yield (child, "name"), _at(doc, child, message, rule="invalid-name", key=True)
        return
    yield (path, "value"), _at(doc, path, _value_message(path, error))


def _value_message(path: str, error: ValidationError) -> str:
    keyword = error.validator
    value = error.instance
    label = _label(path)
    title = error.schema.get("title") if isinstance(error.schema, dict) else None
    rule_value: Any = error.validator_value
    if title in ("duration", "duration-or-forever"):
        forever = ' or "forever"' if title == "duration-or-forever" else ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (
                f'{label} must be a duration with a unit, e.g. "24h"; got the bare number '
                f'{_number(value)}; did you mean "{suggest_duration(value)}"?'
            )
        return (
            f"{label} must be a duration such as {DURATION_EXAMPLES}{forever}; got {_show(value)}"
        )
    if title in ("size", "size-or-unlimited") and keyword in ("type", "pattern"):
        unlimited = ' or "unlimited"' if title == "size-or-unlimited" else ""
        return (
            f'{label} must be a size in bytes or with a unit, e.g. "64MiB" or "1GB" '
            f"(units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB){unlimited}; got {_show(value)}"
        )
    if title == "rate" and keyword in ("type", "pattern"):
        hint = ""
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            hint = f'; did you mean "{_number(value)}/s"?'
        return f"{label} must be a rate such as {RATE_EXAMPLES}; got {_show(value)}{hint}"
    if title == "name" and keyword in ("pattern", "type"):
        hint = _type_hint(["string"], value) if keyword == "type" else ""
        return f"{label}: {_bad_name(value)}{hint}"
    if title == "handler" and keyword == "pattern":
        return (
            f"{label} must be a Python reference module:callable, "
            f'e.g. "shop.orders:process"; got {_show(value)}'
        )
    if title == "exception-name" and keyword == "pattern":
        return f"{label} must be an exception class name such as ValueError; got {_show(value)}"
    if keyword == "type":
        expected = rule_value
        types = expected if isinstance(expected, list) else [expected]
        if "integer" in types and isinstance(value, float):
            return f"{label}: expected a whole number, got {_number(value)}"
        names = [_JSON_TYPES.get(str(t), str(t)) for t in types if t != "null"]
        if len(names) > 1:
            names = ["a boolean" if n == "true or false" else n for n in names]
        wanted = _or_list(names)
        return f"{label}: expected {wanted}, got {_show(value)}{_type_hint(types, value)}"
    if keyword == "enum":
        options = ", ".join(str(v) for v in rule_value)
        message = f"{label} must be one of {options}; got {_short(value)}"
        if isinstance(value, str):
            message += did_you_mean(value, [str(v) for v in rule_value])
        return message
    if keyword == "const":
        if path == "version":
            return f"version must be 1 (the only version of this format); got {_show(value)}"
        return f"{label} must be {json.dumps(rule_value)}; got {_show(value)}"
    if keyword in ("minimum", "exclusiveMinimum"):
        return f"{label} must be at least {_number(rule_value)}, got {_number(value)}"
    if keyword in ("maximum", "exclusiveMaximum"):
        return f"{label} must be at most {_number(rule_value)}, got {_number(value)}"
    if keyword == "minItems" and path.endswith(".backoff"):
        return "backoff needs at least one delay (write [0s] to retry at once)"
    if keyword == "minItems":
        return (
            f"{label} must not be empty"
            if rule_value == 1
            else (f"{label} needs at least {rule_value} items")
        )
    if keyword == "uniqueItems":
        twice = _first_repeat(value)
        return f"{label} lists {_short(twice)} twice"
    if keyword == "maxLength":
        return f"{label} is longer than {rule_value} characters"
    if keyword == "minLength":
        return f"{label} must not be empty"
    if keyword == "pattern":
        return f"{label} has an invalid value {_show(value)}"
    return f"{label}: {error.message}"  # pragma: no cover - every keyword we use is handled above


def _type_hint(types: list[Any], value: Any) -> str:
    """Why a value that looks right has the wrong type (YAML 1.2 typing, quotes)."""
    if types == ["string"] and isinstance(value, (bool, int, float)):
        text = json.dumps(value)
        return f" (quote it to make it a string: '{text}')"
    if not isinstance(value, str):
        return ""
    if "boolean" in types and value.lower() in ("yes", "no", "on", "off", "y", "n"):
        return " (only true and false are booleans)"
    if "boolean" in types and value in ("true", "false"):
        return " (quoted values stay strings; remove the quotes)"
    if ("integer" in types or "number" in types) and not isinstance(core_scalar(value), str):
        return " (quoted values stay strings; remove the quotes)"
    return ""


def _first_repeat(values: Any) -> Any:
    seen: list[Any] = []
    for item in values if isinstance(values, list) else ():
        if item in seen:
            return item
        seen.append(item)
    return None  # pragma: no cover - uniqueItems only fails with a repeat


def _exclusive_keys(branches: list[Any]) -> list[str] | None:
    """The keys of a `oneOf: [{required: [a]}, {required: [b]}]` (exactly one of)."""
    keys: list[str] = []
    for branch in branches:
        if not isinstance(branch, dict) or set(branch) != {"required"}:
            return None
        if len(branch["required"]) != 1:
            return None
        keys.append(branch["required"][0])
    return keys


def _exclusive(path: str, instance: Any, keys: list[str], doc: SourceDocument) -> Problem:
    what = _entity(path)
    options = _or_list(keys)
    present = [k for k in keys if isinstance(instance, dict) and k in instance]
    if not present:
        return _at(doc, path, f"{what} needs one of {options}", rule="exactly-one")
    listed = _and_list(present)
    return _at(doc, path, f"{what} has {listed}; give exactly one of {options}", rule="exactly-one")


def _branch_for(branches: list[Any], instance: Any) -> int | None:
    kind = _json_type(instance)
    for index, branch in enumerate(branches):
        wanted = branch.get("type") if isinstance(branch, dict) else None
        types = wanted if isinstance(wanted, list) else [wanted]
        if kind in types or (kind == "integer" and "number" in types):
            return index
    return None


def _describe_branches(path: str, error: ValidationError, instance: Any) -> str:
    title = error.schema.get("title") if isinstance(error.schema, dict) else None
    label = _label(path)
    if title == "cleanup-policy":
        return f"{label} must be delete, compact or a list of them; got {_show(instance)}"
    if title == "backoff":
        return (
            f"{label} must be a list of durations or a mapping "
            f"{{initial, multiplier, max, jitter}}; got {_show(instance)}"
        )
    return f"{label} has an invalid value {_show(instance)}"  # pragma: no cover


# ---------------------------------------------------------------- wording helpers


def _at(
    doc: SourceDocument, path: str, message: str, *, rule: str = "schema", key: bool = False
) -> Problem:
    pos = _position(doc, path, key=key)
    return Problem(pos.file, pos.line, pos.column, path, rule, Severity.ERROR, message)


def _position(doc: SourceDocument, path: str, *, key: bool) -> Position:
    if key:
        found = doc.key_positions.get(path)
        if found is not None:
            return found
    while True:
        found = doc.positions.get(path)
        if found is not None:
            return found
        if not path:
            return Position(doc.file, 1, 1)
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""


def _path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _label(path: str) -> str:
    """The field's name inside its entity: `topics.x.retention.time` -> `retention.time`."""
    for section in SECTIONS:
        if path.startswith(section + "."):
            rest = path[len(section) + 1 :]
            dot = rest.find(".")
            return rest[dot + 1 :] if dot >= 0 else path
    if path.startswith("bindings["):
        end = path.find("]")
        rest = path[end + 2 :]
        return rest if rest else path
    return path or "the file"


def _entity(path: str) -> str:
    if path.startswith("bindings["):
        return f"binding {path}"
    if path.startswith("consumer_groups."):
        return f'consumer group "{path[len("consumer_groups.") :]}"'
    return path


def _bad_name(value: Any, kind: str = "") -> str:
    what = f"{kind} name" if kind else "name"
    if not isinstance(value, str):
        return f"a {what} must be a string, got {_show(value)}"
    if not value:
        return f"a {what} must not be empty"
    if len(value) > 249:
        return f"{what} is {len(value)} characters long; the limit is 249"
    if value in (".", ".."):
        return f'{what} "{value}" is not allowed: "." and ".." name directories (as in Kafka)'
    if value.endswith("\n"):
        return f"{what} {_short(value)} ends with a line break; names are one line"
    return (
        f"invalid {what} {_short(value)}: use only letters, digits, '.', '_' and '-' "
        "(1 to 249 characters)"
    )


def _and_list(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _or_list(items: list[str]) -> str:
    if len(items) <= 2:
        return " or ".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _number(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit number"  # str() refuses very long ints
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value)


def _short(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
    return _show(value)


def _show(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {_number(value)}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f'the string "{shown}"'
    if isinstance(value, list):
        return "a list"
    return "a mapping"
