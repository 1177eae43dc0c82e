"""CLI: mucode problems list|show."""

from __future__ import annotations

import typer
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from app.cli.common import console, get_store, print_json

problems_app = typer.Typer(help="Browse the loaded problems.", no_args_is_help=True)


def model_prompt(problem) -> str:  # problem: a Problem row
    """The first user message as the environment builds it; the bare problem text until app.env exists."""
    try:
        from app.env.prompt import build_prompt
    except ModuleNotFoundError as exc:
        if exc.name not in ("app.env", "app.env.prompt"):
            raise
        return problem.prompt
    return build_prompt(problem)


@problems_app.command("list")
def list_(
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Dataset name, e.g. mbpp."),
    split: str | None = typer.Option(None, "--split", "-s", help="prompt, train, validation or test."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="Rows to show."),
    offset: int = typer.Option(0, "--offset", min=0, help="Rows to skip."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Problems in file order, filtered by dataset and split."""
    from app.db.models import SPLITS
    from app.errors import MucodeError

    if split is not None and split not in SPLITS:
        raise MucodeError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    store = get_store()
    total = store.count_problems(dataset, split)
    problems = store.list_problems(dataset, split, limit=limit, offset=offset)
    if as_json:
        print_json(
            {
                "total": total,
                "offset": offset,
                "problems": [
                    {
                        "id": p.id,
                        "external_id": p.external_id,
                        "dataset": p.dataset.name,
                        "split": p.split,
                        "entry_point": p.entry_point,
                        "prompt": p.prompt,
                        "public_tests": p.public_tests,
                        "meta": p.meta,
                    }
                    for p in problems
                ],
            }
        )
        return
    if total == 0:
        console.print("no problems match; load a dataset with `mucode data load NAME`")
        return
    # Columns a filter makes constant are left out, to leave room for the text.
    headers = ("id", "problem", "dataset", "split", "entry point", "tests s/p/p", "text")
    keep = [i for i, h in enumerate(headers) if not ((h == "dataset" and dataset) or (h == "split" and split))]
    rows = [
        tuple(
            (
                str(p.id),
                p.external_id,
                p.dataset.name,
                p.split,
                p.entry_point or "",
                f"{len(p.shown_tests)}/{len(p.public_tests)}/{len(p.private_tests)}",
                " ".join(p.prompt.split())[:200],
            )[i]
            for i in keep
        )
        for p in problems
    ]
    title = " · ".join(x for x in (dataset, split) if x) or None
    table = Table(
        title=title, caption=f"{offset + 1}–{offset + len(problems)} of {total}" if problems else None
    )
    fit_columns(table, tuple(headers[i] for i in keep), rows, flexible={"text"}, right={"id"})
    for row in rows:
        table.add_row(*row[:-1], Text(row[-1]))
    console.print(table)


def fit_columns(
    table: Table,
    headers: tuple[str, ...],
    rows: list[tuple[str, ...]],
    *,
    flexible: set[str],
    right: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Columns that keep their content's width; the ``flexible`` ones share what is left of the terminal."""
    widths = [
        max([len(h), *(len(Text.from_markup(r[i]).plain) for r in rows)]) for i, h in enumerate(headers)
    ]
    fixed = sum(w + 3 for h, w in zip(headers, widths) if h not in flexible) + 1
    share = max(1, (console.width - fixed) // max(1, len(flexible)) - 3)
    for h, w in zip(headers, widths):
        if h in flexible:
            table.add_column(h, max_width=share, overflow="ellipsis", no_wrap=h == "text")
        else:
            table.add_column(h, min_width=w, no_wrap=True, justify="right" if h in right else "left")


def _clip(code: str, limit: int | None) -> str:
    if limit is None or len(code) <= limit:
        return code
    return code[:limit] + f"\n# … {len(code) - limit} more characters (--full shows everything)"


@problems_app.command("show")
def show(
    ref: str = typer.Argument(..., help="External id (mbpp/601, HumanEval/0) or numeric id."),
    full: bool = typer.Option(False, "--full", help="Do not shorten long tests and setup code."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A problem: the prompt as the model sees it, its code prefix, setup code and tests."""
    p = get_store().get_problem(ref)
    prompt = model_prompt(p)
    if as_json:
        print_json(
            {
                "id": p.id,
                "external_id": p.external_id,
                "dataset": p.dataset.name,
                "split": p.split,
                "entry_point": p.entry_point,
                "model_prompt": prompt,
                "prompt": p.prompt,
                "code_prefix": p.code_prefix,
                "setup_code": p.setup_code,
                "shown_tests": p.shown_tests,
                "public_tests": p.public_tests,
                "private_tests": p.private_tests,
                "public_suite_hash": p.public_suite_hash,
                "private_suite_hash": p.private_suite_hash,
                "suite_hash": p.suite_hash,
                "reference_solution": p.reference_solution,
                "meta": p.meta,
            }
        )
        return
    limit = None if full else 1500
    console.rule(
        f"[bold]{p.external_id}[/]  {p.dataset.name} · {p.split} · entry point {p.entry_point or '?'}"
    )
    console.print(Panel(Text(prompt), title="prompt (as the model sees it)", title_align="left"))

    def code(title: str, text: str) -> None:
        console.print(
            Panel(Syntax(_clip(text, limit), "python", word_wrap=True), title=title, title_align="left")
        )

    if p.code_prefix.strip():
        code("code prefix (runs before the candidate's code)", p.code_prefix)
    if p.setup_code.strip():
        code("setup code (runs after the candidate's code, before the tests)", p.setup_code)
    suites = [("public tests", p.public_tests), ("private tests", p.private_tests)]
    if p.shown_tests != p.public_tests:
        suites.insert(0, ("shown tests (in the prompt)", p.shown_tests))
    for title, tests in suites:
        code(f"{title} ({len(tests)})", "\n".join(tests))
    notes = {k: v for k, v in p.meta.items() if k != "task_id"}
    console.print(
        f"suite hashes: public {p.public_suite_hash[:12]} · private {p.private_suite_hash[:12]}"
        + (f" · meta {notes}" if notes else ""),
        style="dim",
        markup=False,
    )


def register(root: typer.Typer) -> None:
    root.add_typer(problems_app, name="problems")
