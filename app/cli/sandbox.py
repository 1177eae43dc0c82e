"""CLI: ``mucode sandbox run PROBLEM FILE`` — run one program against one suite, for debugging a verdict."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from app.cli.common import console, print_json

sandbox_app = typer.Typer(help="The code sandbox: run a program against a problem's tests.", no_args_is_help=True)

# External-id prefix -> dataset name, to read a problem from the data files when it is not in the database.
_DATASET_OF_PREFIX = {
    "mbpp": "mbpp",
    "mbpp_sanitized": "mbpp_sanitized",
    "HumanEval": "humaneval",
    "HumanEvalPlus": "humaneval_plus",
    "MbppPlus": "mbpp_plus",
}


def _problem(external_id: str, data_dir: Path | None) -> tuple[Any, str]:
    """The problem from the database, or else from the benchmark files; (problem_like, where it came from)."""
    from app.errors import MucodeError, NotFound

    try:
        from app.cli.common import get_store

        store = get_store()
        found = store.sandbox_problem(external_id)
        store.dispose()
        if found is not None:
            return found, "database"
    except MucodeError:
        pass  # no database (or not migrated): the data files may still have it
    except Exception as exc:  # noqa: BLE001 - an unreachable database
        console.print(f"[yellow]database not available ({type(exc).__name__}); reading the data files[/]")
    prefix = external_id.split("/", 1)[0]
    name = _DATASET_OF_PREFIX.get(prefix)
    if name is None:
        raise NotFound(f"unknown problem {external_id!r}: ids look like HumanEval/0, mbpp/601, MbppPlus/2")
    from app.datasets import parse_dataset

    for p in parse_dataset(name, data_dir).problems:
        if p.external_id == external_id:
            return p, f"data files ({name})"
    raise NotFound(f"problem {external_id!r} is neither in the database nor in the {name} data files")


DATA_DIR = typer.Option(None, "--data-dir", help="Benchmark files, when not in the database.")


def register(root: typer.Typer) -> None:
    root.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("run")
def run(
    problem: str = typer.Argument(..., help="Problem id, e.g. HumanEval/0 or mbpp/601."),
    file: str = typer.Argument(..., help="The program (a .py file; - reads standard input)."),
    suite: str = typer.Option("public", "--suite", "-s", help="public or private."),
    timeout: float | None = typer.Option(None, "--timeout", help="Seconds for the whole suite (default 10)."),
    prelude: bool = typer.Option(True, "--prelude/--no-prelude", help="Run the reference's 16 import lines "
                                 "(math, re, numpy as np, typing *, ...) first, as experiments do by default."),
    data_dir: Path | None = DATA_DIR,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Run FILE against PROBLEM's public (or private) tests with every protection on, and print the verdict,
    each test's outcome, the feedback the model would see, and the captured output. Exit status 1 when the
    program does not pass."""
    from app.errors import MucodeError
    from app.sandbox import SANDBOX_VERSION, Limits, Sandbox

    if suite not in ("public", "private"):
        raise MucodeError(f"--suite must be public or private, not {suite!r}")
    try:
        code = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise MucodeError(f"cannot read {file}: {exc.strerror}") from exc
    prob, source = _problem(problem, data_dir)
    limits = Limits(timeout_s=timeout) if timeout else Limits()
    with Sandbox(workers=1, limits=limits) as sb:
        result = sb.run(prob, code, suite, prelude=prelude)
        strong = not sb.weak
    if as_json:
        print_json({
            "problem": problem,
            "suite": suite,
            "source": source,
            "sandbox_version": SANDBOX_VERSION,
            "import_prelude": prelude,
            "isolation": "strong" if strong else "weak",
            **result.to_dict(),
        })
    else:
        from rich.table import Table

        colour = "green" if result.passed else "red"
        console.print(f"[bold]{problem}[/] {suite} suite ({len(result.tests)} tests, from {source}"
                      f"{', import prelude' if prelude else ', no prelude'}): "
                      f"[bold {colour}]{result.status}[/] in {result.duration_ms:.0f} ms"
                      + ("" if strong else " [yellow](weak isolation)[/]"))
        table = Table(show_header=True, header_style="bold", expand=False)
        table.add_column("#", justify="right")
        table.add_column("outcome")
        table.add_column("test", overflow="fold", max_width=70)
        table.add_column("message", overflow="fold", max_width=60)
        for i, t in enumerate(result.tests, 1):
            c = {"pass": "green", "fail": "red"}.get(t["outcome"], "yellow")
            table.add_row(str(i), f"[{c}]{t['outcome']}[/]", t["test"][:300], t["message"])
        console.print(table)
        console.print("[bold]feedback[/] (what the model sees after a public run):")
        console.print(result.feedback, markup=False, highlight=False)
        for name in ("stdout", "stderr"):
            text = getattr(result, name)
            if text:
                console.print(f"[bold]{name}[/]:")
                console.print(text, markup=False, highlight=False)
    if result.status == "sandbox_error":
        raise MucodeError(f"the sandbox failed: {result.feedback}")
    if not result.passed:
        raise typer.Exit(1)
