"""Every relative link in README.md and docs/ leads somewhere: the file exists and, with
an `#anchor`, the heading does too (GitHub's slugs); a bare `NAME.md` in prose names
a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
BARE_MD = re.compile(r"(?<![\w/.(-])([\w-]+\.md)\b")


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code."""
    out = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", out)


def slug(heading: str) -> str:
    text = re.sub(r"[`*_]", "", heading.strip().lower()).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in prose_lines(path.read_text()):
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            base = slug(match.group(1))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def prose_lines(text: str) -> list[str]:
    return re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M).splitlines()


def links(doc: Path) -> list[str]:
    return [a or b for a, b in LINK.findall(prose(doc.read_text()))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert broken == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_a_markdown_file_named_in_prose_exists(doc: Path) -> None:
    text = prose(doc.read_text())
    text = LINK.sub("", text)
    missing = [name for name in BARE_MD.findall(text)
               if not (doc.parent / name).exists() and not (REPO / name).exists()
               and not (REPO / "docs" / name).exists()]
    assert missing == []


def test_the_checker_finds_what_is_broken(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## The `x` header\n")
    assert anchors(tmp_path / "a.md") == {"title", "the-x-header"}
    doc = tmp_path / "b.md"
    doc.write_text("[ok](a.md#the-x-header) [gone](c.md) `[code](z.md)`\n"
                   "```\n[in a block](y.md)\n```\nsee TOPOLOGY.md\n")
    assert links(doc) == ["a.md#the-x-header", "c.md"]
    assert BARE_MD.findall(LINK.sub("", prose(doc.read_text()))) == ["TOPOLOGY.md"]


def test_every_command_and_option_of_the_cli_is_in_docs() -> None:
    """docs/ (not only the README) names every `runner COMMAND` and each shell of
    `runner completion`; docs/testing.md every option of `runner test` and `runner route`."""
    import argparse

    from runner.cli import build_parser

    docs = "\n".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [f"runner {name}" for name in sub.choices if f"runner {name}" not in docs]
    testing = (REPO / "docs" / "testing.md").read_text()
    for command in ("test", "route"):  # their page, docs/testing.md, has every option
        for action in sub.choices[command]._actions:
            missing += [f"{command} {o}" for o in action.option_strings
                        if o.startswith("--") and o != "--help" and o not in testing]
    for shell in ("bash", "zsh", "fish"):
        if f"runner completion {shell}" not in docs:
            missing.append(f"runner completion {shell}")
    assert missing == [], missing
