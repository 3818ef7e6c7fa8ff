"""`runner completion bash|zsh|fish`: shell completion scripts made from the parser itself.

The script is generated from the argparse tree (`build_parser`), so a new
command or option completes without editing anything here: subcommands
(nested ones too: `runner dlq replay`), long options, the choices of options
that have them (`--format`, `--fsync`), and file names where a path is
expected. zsh reuses the bash function through `bashcompinit`.

    eval "$(runner completion bash)"      # in ~/.bashrc
    eval "$(runner completion zsh)"       # in ~/.zshrc
    runner completion fish | source       # in ~/.config/fish/config.fish
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field

SHELLS = ("bash", "zsh", "fish")


@dataclass(frozen=True, slots=True)
class Option:
    flags: tuple[str, ...]  # long and short spellings
    takes_value: bool
    choices: tuple[str, ...] = ()
    is_path: bool = False
    help: str = ""


@dataclass(slots=True)
class Command:
    """One (sub)command: its words from the top (`("dlq", "replay")`), options, children."""

    path: tuple[str, ...]
    help: str = ""
    options: list[Option] = field(default_factory=list)
    children: dict[str, Command] = field(default_factory=dict)
    takes_paths: bool = False  # a positional argument is a file or directory


def _is_path(action: argparse.Action) -> bool:
    from pathlib import Path

    if action.type is Path:
        return True
    names = {action.dest, *(action.metavar if isinstance(action.metavar, tuple) else
                            (action.metavar or "",))}
    return bool({n.lower() for n in names} & {"path", "paths", "old", "new", "file", "dir"})


def tree(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help: str = "") -> Command:
    """The commands and options of `parser`, as data."""
    command = Command(path, help)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                command.children[name] = tree(sub, (*path, name), helps.get(name, ""))
        elif action.option_strings:
            command.options.append(Option(
                flags=tuple(action.option_strings),
                takes_value=action.nargs != 0,
                choices=tuple(str(c) for c in action.choices or ()),
                is_path=_is_path(action),
                help=action.help if isinstance(action.help, str) else "",
            ))
        elif _is_path(action):
            command.takes_paths = True
    return command


def _walk(command: Command) -> list[Command]:
    out = [command]
    for child in command.children.values():
        out.extend(_walk(child))
    return out


def _words(command: Command) -> str:
    flags = [f for o in command.options for f in o.flags if f.startswith("--")]
    return " ".join([*command.children, *flags])


def bash(root: Command) -> str:
    """A bash completion function `_runner`, registered with `complete -F`."""
    steps = []  # "parent/word" -> the key becomes "parent word"
    for command in _walk(root)[1:]:
        parent = " ".join(command.path[:-1])
        steps.append(shlex.quote(f"{parent}/{command.path[-1]}"))
    values = []  # "key:--option" -> what its value completes to
    for command in _walk(root):
        key = " ".join(command.path)
        for option in command.options:
            if not option.takes_value:
                continue
            patterns = "|".join(shlex.quote(f"{key}:{flag}") for flag in option.flags)
            if option.choices:
                action = f"COMPREPLY=($(compgen -W {shlex.quote(' '.join(option.choices))} " \
                         '-- "$cur")); return 0;;'
            elif option.is_path:
                action = 'COMPREPLY=($(compgen -f -- "$cur")); return 0;;'
            else:
                action = "return 0;;"  # a free value (a number, a name): nothing to offer
            values.append(f"        {patterns}) {action}")
    words = []
    for command in _walk(root):
        key = shlex.quote(" ".join(command.path))
        files = '; COMPREPLY+=($(compgen -f -- "$cur"))' if command.takes_paths else ""
        words.append(
            f"        {key}) COMPREPLY=($(compgen -W {shlex.quote(_words(command))} "
            f'-- "$cur")){files};;'
        )
    return "\n".join([
        "# bash completion for runner (eval \"$(runner completion bash)\")",
        "_runner() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" key="" i',
        '    [[ $COMP_CWORD -gt 0 ]] && prev="${COMP_WORDS[COMP_CWORD-1]}"',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "$key/${COMP_WORDS[i]}" in',
        f"            {'|'.join(steps)}) key=\"${{key:+$key }}${{COMP_WORDS[i]}}\";;",
        "        esac",
        "    done",
        '    case "$key:$prev" in',
        *values,
        "    esac",
        '    case "$key" in',
        *words,
        "    esac",
        "    return 0",
        "}",
        "complete -o filenames -F _runner runner",
        "",
    ])


def zsh(root: Command) -> str:
    """zsh: the bash function through zsh's bashcompinit."""
    return "\n".join([
        "# zsh completion for runner (eval \"$(runner completion zsh)\")",
        "autoload -U +X compinit && compinit",
        "autoload -U +X bashcompinit && bashcompinit",
        bash(root),
    ])


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish(root: Command) -> str:
    """fish: `complete -c runner` lines, conditioned on the subcommand words seen."""
    lines = ["# fish completion for runner (runner completion fish | source)",
             "complete -c runner -f"]
    for command in _walk(root):
        if command.path:
            seen = " ".join(command.path)
            cond = f"__runner_at {seen}"
        else:
            cond = "__runner_at"
        for name, child in command.children.items():
            lines.append(f"complete -c runner -n {_fish_quote(cond)} -a {_fish_quote(name)} "
                         f"-d {_fish_quote(child.help)}")
        for option in command.options:
            longs = [f[2:] for f in option.flags if f.startswith("--")]
            shorts = [f[1:] for f in option.flags if len(f) == 2 and f[0] == "-"]
            if not longs and not shorts:
                continue
            spec = " ".join([*(f"-l {x}" for x in longs), *(f"-s {x}" for x in shorts)])
            if option.choices:
                spec += f" -x -a {_fish_quote(' '.join(option.choices))}"
            elif option.is_path:
                spec += " -r -F"
            elif option.takes_value:
                spec += " -x"
            lines.append(f"complete -c runner -n {_fish_quote(cond)} {spec} "
                         f"-d {_fish_quote(option.help)}")
        if command.takes_paths:
            lines.append(f"complete -c runner -n {_fish_quote(cond)} -F")
    return "\n".join([
        *lines[:2],
        "# true when the subcommand words typed so far are exactly the arguments",
        "function __runner_at",
        "    set -l words (commandline -opc)",
        "    set -e words[1]",
        "    set -l path",
        "    for w in $words",
        "        if string match -q -- '-*' $w",
        "            continue",
        "        end",
        "        set -l next (string trim -- \"$path $w\")",
        "        if contains -- $next $__runner_commands",
        "            set path $next",
        "        end",
        "    end",
        "    test \"$path\" = \"$argv\"",
        "end",
        "set -g __runner_commands " + " ".join(
            _fish_quote(" ".join(c.path)) for c in _walk(root)[1:]
        ),
        *lines[2:],
        "",
    ])


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh, fish)",
        description='Print a completion script: eval "$(runner completion bash)" in ~/.bashrc, '
        'eval "$(runner completion zsh)" in ~/.zshrc, or `runner completion fish | source` '
        "in ~/.config/fish/config.fish.",
    )
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=completion_command)


def completion_command(args: argparse.Namespace) -> int:
    from runner.cli import build_parser

    root = tree(build_parser())
    sys.stdout.write({"bash": bash, "zsh": zsh, "fish": fish}[args.shell](root))
    return 0
