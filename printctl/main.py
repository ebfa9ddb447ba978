"""`printctl`: the operator's tool for printd. One module per command group."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer
import typer.main
from typer.core import TyperGroup

from printctl.common import JSON_MODE, emit_json, error_object
from printd import package_version


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """Where a command lives: `module.attr` is a command function or a Typer group."""

    module: str
    attr: str
    #: the click command class to build a function command with (None: Typer's default)
    cls: str | None = None
    #: (name, module, attr): command functions added to the group from other modules
    extra: tuple[tuple[str, str, str], ...] = ()


#: Every command, in the order `printctl --help` lists them. A command's module is imported when
#: that command is looked up (run, or listed by a help or completion), never before: `printctl
#: token` loads what minting a token needs, not the agent's or the cluster tooling's imports.
COMMANDS: dict[str, CommandSpec] = {
    "token": CommandSpec("printctl.token", "token"),
    "health": CommandSpec("printctl.health", "health"),
    "instance": CommandSpec("printctl.health", "instance"),
    "agent": CommandSpec("printctl.agent", "agent"),
    "verify-prints": CommandSpec("printctl.verify", "verify_prints"),
    "deploy": CommandSpec("printctl.deploy", "deploy"),
    "loadtest": CommandSpec("printctl.loadtest", "loadtest", cls="LoadtestCommand"),
    "failover-test": CommandSpec("printctl.failover", "failover_test", cls="LoadtestCommand"),
    "config": CommandSpec("printctl.config_cmd", "app"),
    "circuits": CommandSpec("printctl.circuits", "app"),
    "jobs": CommandSpec("printctl.jobs", "app"),
    "printers": CommandSpec("printctl.printers", "app"),
    "cluster": CommandSpec(
        "printctl.cluster",
        "app",
        extra=(
            ("status", "printctl.cluster_admin", "status"),
            ("rebalance", "printctl.cluster_admin", "rebalance"),
        ),
    ),
}


def build_command(name: str, spec: CommandSpec) -> Any:
    """The click command for `spec`, built the way Typer builds a registered one (through a
    group of its own, with nothing but the public API), so help and options are the same."""
    module = importlib.import_module(spec.module)
    target = getattr(module, spec.attr)
    shadow = typer.Typer(add_completion=False)
    shadow.callback()(_no_options)
    if isinstance(target, typer.Typer):
        shadow.add_typer(target, name=name)
    else:
        cls = getattr(module, spec.cls) if spec.cls is not None else None
        shadow.command(name, cls=cls)(target)
    command = typer.main.get_command(shadow).commands[name]  # type: ignore[attr-defined]
    for sub, sub_module, sub_attr in spec.extra:
        command.add_command(build_command(sub, CommandSpec(sub_module, sub_attr)), sub)
    return command


def _no_options() -> None:
    """A callback only makes the shadow Typer a group."""


class LazyCommands(MutableMapping[str, Any]):
    """The root group's commands: names known up front, each command built on first lookup.

    Looking up one name (what running a command does) loads that command's module only;
    iterating the values (help, completion, the command tree) loads them all."""

    def __init__(self, specs: dict[str, CommandSpec]) -> None:
        self._specs = specs
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            self._built[name] = build_command(name, self._specs[name])
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        raise TypeError("printctl's commands are fixed")

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._specs, *self._built]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*self._specs, *self._built]))

    def __contains__(self, name: object) -> bool:
        return name in self._specs or name in self._built


class PrintctlGroup(TyperGroup):
    """The root command: notes --json for `fail`, and turns what the option parser itself refuses
    (an unknown option, a bad choice) into the JSON error object too, like every other failure.
    Its commands are `COMMANDS`, each loaded when looked up."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(COMMANDS)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # the names alone: nothing is imported to list them

    def main(self, args: Sequence[str] | None = None, *rest: Any, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        mode = JSON_MODE.set("--json" in argv)
        try:
            return super().main(argv, *rest, **extra)
        finally:
            JSON_MODE.reset(mode)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            # click's usage errors carry exit_code and format_message(); typer.Exit has no message
            code = getattr(exc, "exit_code", None)
            if JSON_MODE.get() and isinstance(code, int) and hasattr(exc, "format_message"):
                emit_json(error_object(exc.format_message(), code))
            raise


app = typer.Typer(
    cls=PrintctlGroup,
    help="printctl: operate printd gateways (tokens, health, circuits, jobs, the reference agent).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"printctl {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    """printctl: operate printd gateways (tokens, health, circuits, jobs, the reference agent)."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
