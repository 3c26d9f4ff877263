"""How the command line answers a person: each flag's default in --help, unknown flags and misspelled
MODELSEAL_* variables answered with the closest known name, and the table of every flag's default that
README.md carries (tests/test_first_hour.py compares the two, so the README cannot go stale).

Abbreviations are off (`allow_abbrev=False` on every parser): `--out` is an unknown flag that suggests
`--output`, never a silent `--output`, and a flag added later cannot change what an old pod spec meant.
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Any, Iterable, Iterator

#: MODELSEAL_* variables that are not flags: the stage name backends log under, the termination
#: message's path (tests point it elsewhere).
INTERNAL = ("MODELSEAL_STAGE", "MODELSEAL_TERMINATION_LOG")
#: The project's own tooling (the test suite, the demo, the image scripts) sets these; not the CLI's.
TOOLING = ("MODELSEAL_TEST_", "MODELSEAL_DEMO_", "MODELSEAL_IMAGE", "MODELSEAL_REQUIRE_IMAGES",
           "MODELSEAL_EXAMPLES_DIR")
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


class Help(argparse.HelpFormatter):
    """--help with each flag's default (`off` for a switch; `none` when a flag has no default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "(default" in text:
            return text
        if action.required:
            return f"{text} (required)"
        return f"{text} (default: {default_text(action).replace('%', '%%')})"


def default_text(action: argparse.Action) -> str:
    """A flag's default as --help and README's table show it."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "on" if action.default else "off"
    if action.required:
        return "required"
    if action.default is None or action.default == "":
        return "none"
    return str(action.default)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with abbreviations off, defaults in its help, and "did you mean" on a bad choice."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("allow_abbrev", False)
        kw.setdefault("formatter_class", Help)
        super().__init__(*args, **kw)

    def error(self, message: str) -> Any:
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'([^']*)'", m[2])
            close = difflib.get_close_matches(m[1], choices, n=1, cutoff=0.5)
            if close:
                message += f"; did you mean {close[0]!r}?"
        super().error(message)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Refuse an unknown flag under its subcommand's usage, naming the closest known flag (exit 2).

    Done before argparse parses, so a misspelled `--outptu` is named as such rather than reported
    as a missing `--output`."""
    commands = subcommands(parser)
    if not argv or argv[0] not in commands:
        return  # argparse reports an unknown command (with a suggestion: Parser.error)
    sub = commands[argv[0]]
    known = sub._option_string_actions
    for token in argv[1:]:
        if token == "--":
            return
        if not token.startswith("-") or token == "-" or _NEGATIVE_NUMBER.match(token):
            continue
        name = token.split("=", 1)[0]
        if name in known or (not token.startswith("--") and token[:2] in known):
            continue
        close = difflib.get_close_matches(name, [o for o in known if o.startswith("--")], n=1, cutoff=0.6)
        sub.error(f"unrecognized argument: {name}" + (f"; did you mean {close[0]}?" if close else ""))


def flag_names(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag's destination, over all commands."""
    return {a.dest for sub in subcommands(parser).values() for a in sub._actions
            if a.dest not in ("help", argparse.SUPPRESS)}


def misspelled(parser: argparse.ArgumentParser, environ: dict[str, str]) -> Iterator[tuple[str, str | None]]:
    """(variable, closest known variable or None) for each MODELSEAL_* variable that no flag reads."""
    known = sorted({"MODELSEAL_" + d.upper() for d in flag_names(parser)} | set(INTERNAL))
    for name in sorted(environ):
        if not name.startswith("MODELSEAL_") or name in known or name.startswith(TOOLING):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        yield name, close[0] if close else None


# ---- README's table ------------------------------------------------------------------------------

def flag_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str, str]]:
    """(flag, its commands, default, environment variable) for every flag, in the order README shows them."""
    rows: dict[tuple[str, str, str], list[str]] = {}
    for command, sub in subcommands(parser).items():
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            flags = ", ".join(f"`{o}`" for o in action.option_strings)
            env = f"`MODELSEAL_{action.dest.upper()}`"
            rows.setdefault((flags, default_text(action), env), []).append(command)
    return [(flags, ", ".join(commands), default, env) for (flags, default, env), commands in
            sorted(rows.items(), key=lambda item: item[0][0].lstrip("`-").lower())]


def flag_table(parser: argparse.ArgumentParser) -> str:
    """README's table of every flag's default, as Markdown."""
    lines = ["| flag | commands | default | variable |", "|---|---|---|---|"]
    lines += [f"| {flag} | {commands} | {_cell(default)} | {env} |"
              for flag, commands, default, env in flag_rows(parser)]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return f"`{text}`" if text not in ("none", "off", "on", "required") else text


def words(parser: argparse.ArgumentParser) -> Iterable[tuple[str, list[tuple[list[str], list[str] | None]]]]:
    """Each command with its flags and, for a flag of fixed choices, the choices (for completion.py)."""
    for command, sub in subcommands(parser).items():
        flags = [(list(a.option_strings), [str(c) for c in a.choices] if a.choices else None)
                 for a in sub._actions if a.option_strings]
        yield command, flags
