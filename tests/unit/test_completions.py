"""Shell completions in completions/ are generated from printctl's command tree: stale files fail
here, and the bash and fish scripts complete what a person types (the zsh one is syntax-checked)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from printctl.completion import render_all
from tests.tools import tool

COMPLETIONS = Path(__file__).resolve().parents[2] / "completions"

#: what a person types, and what the completion offers
CASES = [
    ("printctl clu", "cluster"),
    ("printctl cluster ", "down ls rebalance status up"),
    ("printctl jobs submit --k", "--kind"),
    ("printctl jobs submit --kind ", "print test"),
    ("printctl deploy --restart ", "all changed none"),
    ("printctl circuits l", "list"),
]


def test_the_completion_files_match_the_command_tree() -> None:
    for name, text in render_all().items():
        current = (COMPLETIONS / name).read_text() if (COMPLETIONS / name).exists() else ""
        assert current == text, (
            f"completions/{name} is stale (a command or option changed): "
            "regenerate with `.venv/bin/python -m printctl.completion completions/` and commit it"
        )


def test_bash_completes_commands_options_and_values(tmp_path: Path) -> None:
    script = [f"source {COMPLETIONS / 'printctl.bash'}"]
    script.append(
        'c() { COMP_WORDS=($1); [[ "$1" == *" " ]] && COMP_WORDS+=(""); '
        "COMP_CWORD=$((${#COMP_WORDS[@]}-1)); COMPREPLY=(); _printctl; "
        'printf "%s\\n" "$(printf "%s\\n" "${COMPREPLY[@]}" | sort | tr "\\n" " " | sed "s/ $//")"; }'
    )
    script += [f'c "{line}"' for line, _ in CASES]
    (tmp_path / "printctl.b").touch()
    script.append(f'c "printctl deploy --config {tmp_path}/printctl."')
    done = subprocess.run([tool("bash"), "-c", "\n".join(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [expected for _, expected in CASES] + [f"{tmp_path}/printctl.b"]


def test_fish_completes_commands_options_and_values() -> None:
    lines = [f"source {COMPLETIONS / 'printctl.fish'}"]
    lines += [f"complete -C '{line}' | string split -f1 \\t | sort | string join ' '" for line, _ in CASES]
    done = subprocess.run([tool("fish"), "-c", "\n".join(lines)], capture_output=True, text=True, timeout=30)
    assert done.stderr == ""  # the exit status is `string join`'s, 1 for a single item
    assert done.stdout.splitlines() == [expected for _, expected in CASES]


def test_the_zsh_script_parses() -> None:
    script = str(COMPLETIONS / "printctl.zsh")
    done = subprocess.run([tool("zsh"), "-n", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
