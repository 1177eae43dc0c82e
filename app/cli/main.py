"""The ``mucode`` command. Sub-commands live in one module each; heavy imports stay inside commands."""

from __future__ import annotations

import sys

import typer

from app.cli import (
    dashboard,
    data,
    db,
    experiment,
    group,
    models,
    ops,
    problems,
    relabel,
    report,
    rollouts,
    sandbox,
    verifier,
)

root = typer.Typer(
    name="mucode",
    help="µCode-style multi-turn code generation: store, sandbox, rollouts, verifier, relabeling, rounds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@root.callback()
def _options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level (default: MUCODE_LOG_LEVEL, "
                                 "else INFO)."),
) -> None:
    from app.logs import setup_logging

    setup_logging("DEBUG" if verbose else None)


for _module in (db, data, problems, sandbox, models, rollouts, verifier, relabel, experiment, group, report,
                dashboard, ops):
    _module.register(root)


def main() -> None:
    from app.errors import MucodeError

    try:
        root()
    except MucodeError as exc:
        from rich.console import Console

        Console(stderr=True, emoji=False).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
