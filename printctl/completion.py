"""Static shell completions for bash, zsh and fish, generated from printctl's command tree.

Static, unlike Typer's `--install-completion` scripts (which start printctl, a Python process, on
every Tab): the tree is written into the script, so completion is instant and works where
printctl's environment is not set up. The price is that the scripts go stale when a command or
option changes; tests/unit/test_completions.py regenerates them and fails when they differ.

Regenerate: python -m printctl.completion completions/
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, get_args

import typer.main

PROG = "printctl"
HELP_OPTION = ("-h", "--help")
SHELLS = {"bash": "printctl.bash", "zsh": "printctl.zsh", "fish": "printctl.fish"}
HEADER = "generated from printctl's command tree by `python -m printctl.completion`; do not edit"


@dataclass(frozen=True, slots=True)
class OptionSpec:
    names: tuple[str, ...]
    help: str
    takes_value: bool
    path: bool = False
    choices: tuple[str, ...] = ()
    repeat: bool = False  # may be given more than once


@dataclass(frozen=True, slots=True)
class CommandSpec:
    path: tuple[str, ...]  # () for printctl itself
    help: str
    options: tuple[OptionSpec, ...]
    children: tuple[tuple[str, str], ...]  # (name, short help)
    path_argument: bool  # a positional argument that is a file or directory


def _short(text: str | None) -> str:
    line = (text or "").strip().split("\n")[0].strip()
    first = line.split(". ")[0].rstrip(".")
    return first[:80]


def _value_kind(param: Any) -> tuple[bool, tuple[str, ...], bool]:
    """(is a path, choices, may repeat), from Typer's type descriptor (click's type on older Typer)."""
    desc = getattr(param, "type_descriptor", None)
    many = bool(getattr(param, "multiple", False))
    if desc is None:
        kind = getattr(param, "type", None)
        return type(kind).__name__ == "Path", tuple(getattr(kind, "choices", ()) or ()), many
    inner = get_args(desc.annotation)[0] if desc.is_list and get_args(desc.annotation) else desc.annotation
    is_path = bool(desc.is_path) or (isinstance(inner, type) and issubclass(inner, PurePath))
    choices = tuple(str(c.value if isinstance(c, enum.Enum) else c) for c in desc.choices or ())
    return is_path, choices, many or bool(desc.is_list)


def command_tree() -> list[CommandSpec]:
    from printctl.main import app

    root = typer.main.get_command(app)
    out: list[CommandSpec] = []

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        options = []
        path_argument = False
        for param in cmd.params:
            if getattr(param, "hidden", False):
                continue
            is_path, choices, repeat = _value_kind(param)
            if param.param_type_name == "argument":
                path_argument = path_argument or is_path
                continue
            names = tuple(param.opts) + tuple(param.secondary_opts)
            takes_value = not getattr(param, "is_flag", False)
            options.append(OptionSpec(names, _short(param.help), takes_value, is_path, choices, repeat))
        options.append(OptionSpec(HELP_OPTION, "Show the help and exit", False))
        commands = getattr(cmd, "commands", {})
        children = tuple(
            (name, _short(sub.get_short_help_str(limit=200)))
            for name, sub in sorted(commands.items())
            if not getattr(sub, "hidden", False)
        )
        out.append(CommandSpec(path, _short(cmd.help), tuple(options), children, path_argument))
        for name, sub in sorted(commands.items()):
            if not getattr(sub, "hidden", False):
                walk(sub, (*path, name))

    walk(root, ())
    return out


# ------------------------------------------------------------------------------------------ bash


def bash(tree: list[CommandSpec]) -> str:
    def key(cmd: CommandSpec) -> str:
        return " ".join((PROG, *cmd.path))

    children = "".join(
        f'        "{key(c)}") echo "{" ".join(n for n, _ in c.children)}" ;;\n' for c in tree if c.children
    )
    options = "".join(
        f'        "{key(c)}") echo "{" ".join(n for o in c.options for n in o.names)}" ;;\n' for c in tree
    )
    values = ""
    for c in tree:
        for o in c.options:
            if o.takes_value:
                kind = "file" if o.path else (f"choice {' '.join(o.choices)}" if o.choices else "any")
                values += "".join(f'        "{key(c)}|{name}") echo "{kind}" ;;\n' for name in o.names)
    arguments = "".join(f'        "{key(c)}") return 0 ;;\n' for c in tree if c.path_argument)
    return f"""# bash completion for printctl: {HEADER}.
# Install: cp completions/printctl.bash /etc/bash_completion.d/printctl (or source it from ~/.bashrc).

_printctl_children() {{
    case "$1" in
{children}    esac
}}

_printctl_options() {{
    case "$1" in
{options}    esac
}}

# what an option's value is: file, choice A B..., any; nothing for a flag
_printctl_value() {{
    case "$1|$2" in
{values}    esac
}}

_printctl_path_argument() {{
    case "$1" in
{arguments}    esac
    return 1
}}

_printctl() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local path="printctl" i word
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        if [[ " $(_printctl_children "$path") " == *" $word "* ]]; then
            path="$path $word"
        fi
    done
    local kind
    kind="$(_printctl_value "$path" "$prev")"
    case "$kind" in
        file) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")); return ;;
        choice*) COMPREPLY=($(compgen -W "${{kind#choice }}" -- "$cur")); return ;;
        any) COMPREPLY=(); return ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$(_printctl_options "$path")" -- "$cur"))
        return
    fi
    local children
    children="$(_printctl_children "$path")"
    if [[ -n "$children" ]]; then
        COMPREPLY=($(compgen -W "$children" -- "$cur"))
    elif _printctl_path_argument "$path"; then
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}

complete -F _printctl printctl
"""


# ------------------------------------------------------------------------------------------- zsh


def _zsh_text(text: str) -> str:
    """Text inside an _arguments spec or a _describe entry: no brackets, colons escaped."""
    return text.replace("'", "").replace("[", "(").replace("]", ")").replace(":", "\\:")


def zsh(tree: list[CommandSpec]) -> str:
    def fn(path: tuple[str, ...]) -> str:
        return "_" + "_".join((PROG, *path)).replace("-", "_")

    continued = " \\\n        "
    parts = []
    for c in tree:
        specs = []
        for o in c.options:
            action = "_files" if o.path else (f"({' '.join(o.choices)})" if o.choices else " ")
            value = f":{o.names[-1].lstrip('-')}:{action}" if o.takes_value else ""
            exclusive = f"({' '.join(o.names)})" if len(o.names) > 1 and not o.repeat else ""
            for name in o.names:
                specs.append(f"'{'*' if o.repeat else ''}{exclusive}{name}[{_zsh_text(o.help)}]{value}'")
        if c.children:
            specs += ["'1: :->command'", "'*:: :->args'"]
            described = " ".join(f"'{n}:{_zsh_text(h)}'" for n, h in c.children)
            cases = "".join(f"                {n}) {fn((*c.path, n))} ;;\n" for n, _ in c.children)
            body = (
                f"    _arguments -C{continued}{continued.join(specs)}\n"
                "    case $state in\n"
                f"        command) local -a commands; commands=({described}); _describe command commands ;;\n"
                "        args)\n"
                "            case $words[1] in\n"
                f"{cases}"
                "            esac ;;\n"
                "    esac\n"
            )
        else:
            if c.path_argument:
                specs.append("'*:file:_files'")
            body = f"    _arguments{continued}{continued.join(specs)}\n"
        parts.append(f'{fn(c.path)}() {{\n    local curcontext="$curcontext" state line\n{body}}}\n')
    head = (
        f"#compdef printctl\n# zsh completion for printctl: {HEADER}.\n"
        "# Install: copy it as _printctl into a directory of $fpath "
        "(e.g. /usr/local/share/zsh/site-functions/_printctl).\n\n"
    )
    return head + "\n".join(parts) + '\n_printctl "$@"\n'


# ------------------------------------------------------------------------------------------ fish


def _fish_text(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish(tree: list[CommandSpec]) -> str:
    cases = "".join(
        f"        case {_fish_text(' '.join(c.path))}\n"
        f"            printf '%s\\n' {' '.join(n for n, _ in c.children)}\n"
        for c in tree
        if c.children
    )
    lines = []
    for c in tree:
        cond = f"-n '__printctl_at {' '.join(c.path)}'" if c.path else "-n '__printctl_at'"
        for name, help_text in c.children:
            lines.append(f"complete -c printctl {cond} -a {name} -d {_fish_text(help_text)}")
        for o in c.options:
            flags = " ".join(f"-s {n[1:]}" if len(n) == 2 else f"-l {n[2:]}" for n in o.names)
            value = ""
            if o.takes_value:
                value = (
                    " -r -F"
                    if o.path
                    else (f" -x -a {_fish_text(' '.join(o.choices))}" if o.choices else " -x")
                )
            lines.append(f"complete -c printctl {cond} {flags}{value} -d {_fish_text(o.help)}")
        if c.path_argument:
            lines.append(f"complete -c printctl {cond} -F")
    return f"""# fish completion for printctl: {HEADER}.
# Install: cp completions/printctl.fish ~/.config/fish/completions/
# (or /usr/share/fish/vendor_completions.d/ for every user).

function __printctl_children
    switch "$argv[1]"
{cases}    end
end

# the subcommand path typed so far, e.g. "config init"
function __printctl_path
    set -l path
    for word in (commandline -opc)[2..-1]
        if contains -- $word (__printctl_children "$path")
            set path (string trim -- "$path $word")
        end
    end
    echo "$path"
end

function __printctl_at
    test (__printctl_path) = "$argv"
end

complete -c printctl -f
{chr(10).join(lines)}
"""


RENDERERS = {"bash": bash, "zsh": zsh, "fish": fish}


def render_all() -> dict[str, str]:
    tree = command_tree()
    return {SHELLS[shell]: RENDERERS[shell](tree) for shell in SHELLS}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "completions")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (out / name).write_text(text)
        print(out / name)


if __name__ == "__main__":
    main()
