"""`modelseal completion bash|zsh|fish`: shell completion scripts, written from the parser itself.

Hand-written rather than shtab: shtab writes bash, zsh and tcsh but not fish,
and a script made from the same parser the CLI runs cannot fall behind a new
flag. zsh loads the bash script through bashcompinit (zsh's own module for
bash completions), so two generators cover the three shells.
"""

from __future__ import annotations

import argparse

from .usage import subcommands, words

SHELLS = ("bash", "zsh", "fish")


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    if shell == "fish":
        return _fish(parser)
    text = _bash(parser)
    if shell == "zsh":
        return "#compdef modelseal\nautoload -U +X bashcompinit && bashcompinit\n" + text
    return text


def _bash(parser: argparse.ArgumentParser) -> str:
    commands = list(subcommands(parser))
    choices, flags = [], []
    for command, options in words(parser):
        flags.append(f"        {command}) opts={_q(' '.join(o for names, _ in options for o in names))} ;;")
        for names, values in options:
            for name in names:
                if values:
                    listed = _q(" ".join(values))
                    choices.append(f"        {_q(command + ' ' + name)}) COMPREPLY=($(compgen -W {listed} "
                                   '-- "$cur")); return ;;')
    return "\n".join([
        "# modelseal completion for bash: eval \"$(modelseal completion bash)\", or save it under",
        "# /etc/bash_completion.d/ (or ~/.local/share/bash-completion/completions/modelseal).",
        "_modelseal() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="${COMP_WORDS[1]}" opts=""',
        '    if [ "$COMP_CWORD" -eq 1 ]; then',
        f'        COMPREPLY=($(compgen -W {_q(" ".join(commands + ["--help", "--version"]))} -- "$cur")); return',
        "    fi",
        '    case "$cmd $prev" in',
        *choices,
        "    esac",
        '    case "$cmd" in',
        *flags,
        "    esac",
        '    if [[ "$cur" == -* ]]; then',
        '        COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        "    else",
        '        COMPREPLY=($(compgen -f -- "$cur"))',
        "    fi",
        "}",
        "complete -o filenames -o bashdefault -F _modelseal modelseal",
        "",
    ])


def _fish(parser: argparse.ArgumentParser) -> str:
    lines = ["# modelseal completion for fish: modelseal completion fish > ~/.config/fish/completions/modelseal.fish",
             "complete -c modelseal -f -n __fish_use_subcommand -l help -s h -d 'show the help'",
             "complete -c modelseal -f -n __fish_use_subcommand -l version -d 'print the version'"]
    for command, sub in subcommands(parser).items():
        lines.append(f"complete -c modelseal -f -n __fish_use_subcommand -a {command} -d {_fq(sub.description or '')}")
        for action in sub._actions:
            if not action.option_strings:
                continue
            parts = [f"complete -c modelseal -n '__fish_seen_subcommand_from {command}'"]
            for name in action.option_strings:
                parts.append(f"-l {name[2:]}" if name.startswith("--") else f"-s {name[1:]}")
            if action.choices:
                parts.append(f"-x -a {_fq(' '.join(str(c) for c in action.choices))}")
            elif action.nargs != 0:
                parts.append("-r")
            parts.append(f"-d {_fq((action.help or '').split(' [$')[0])}")
            lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    """A bash single-quoted word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _fq(text: str) -> str:
    """A fish single-quoted word, cut to a short description."""
    text = text if len(text) <= 80 else text[:77] + "..."
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
