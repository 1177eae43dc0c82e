"""CLI: mucode data load|list — benchmark files into the store."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from app.cli.common import console, err_console, get_store, print_json
from app.cli.problems import fit_columns

data_app = typer.Typer(
    help="Benchmark datasets (MBPP, HumanEval, their EvalPlus versions).", no_args_is_help=True
)

DATA_DIR_OPTION = typer.Option(
    None,
    "--data-dir",
    help="Folder with the benchmark files (default: MUCODE_DATA_DIR, else shared/data).",
    file_okay=False,
)


def _splits(splits: dict[str, int]) -> str:
    order = {"prompt": 0, "train": 1, "validation": 2, "test": 3}
    return " ".join(f"{k} {v}" for k, v in sorted(splits.items(), key=lambda kv: order.get(kv[0], 9)))


@data_app.command("load")
def load(
    names: list[str] = typer.Argument(
        ..., help="mbpp, mbpp_sanitized, humaneval, humaneval_plus, mbpp_plus, or all.", show_default=False
    ),
    data_dir: Path | None = DATA_DIR_OPTION,
    force: bool = typer.Option(False, "--force", help="Update problems whose content changed since loading."),
    as_json: bool = typer.Option(False, "--json", help="Print the load reports as JSON."),
) -> None:
    """Load datasets; idempotent. A changed file is reported (exit 1) unless --force updates it."""
    from dataclasses import asdict

    from app.datasets import load_dataset, resolve_names

    names = resolve_names(names)
    store = get_store()
    results = [load_dataset(store, name, data_dir, force=force) for name in names]
    if as_json:
        print_json([asdict(r) for r in results])
    else:
        rows = []
        for r in results:
            if r.blocked:
                status = "[bold red]not written[/]"
            elif r.updated:
                status = "[yellow]updated[/]"
            else:
                status = "[green]loaded[/]" if r.inserted else "unchanged"
            rows.append(
                (
                    r.dataset,
                    str(r.total),
                    str(r.inserted),
                    str(r.unchanged),
                    str(len(r.changed)),
                    status,
                    _splits(r.splits),
                )
            )
        table = Table(title="mucode data load")
        fit_columns(
            table,
            ("dataset", "problems", "new", "unchanged", "changed", "status", "splits"),
            rows,
            flexible={"splits"},
            right={"problems", "new", "unchanged", "changed"},
        )
        for row in rows:
            table.add_row(*row)
        console.print(table)
        for r in results:
            if r.changed:
                _print_changes(r)
            if r.missing:
                err_console.print(
                    f"[yellow]warning:[/] {r.dataset}: {len(r.missing)} problem(s) in the database "
                    f"are no longer in the file and were kept: {', '.join(r.missing[:10])}"
                )
    blocked = [r.dataset for r in results if r.blocked]
    if blocked:
        err_console.print(
            f"[bold red]error:[/] the content of {', '.join(blocked)} changed since it was loaded; nothing "
            "was written for it. Rerun with --force to update those problems (executions are cached by suite "
            "hash, so old verdicts are not reused)."
        )
        raise typer.Exit(1)


def _print_changes(r) -> None:  # r: a store LoadResult
    table = Table(title=f"{r.dataset}: {len(r.changed)} changed problem(s)", title_justify="left")
    table.add_column("problem")
    table.add_column("changed fields")
    table.add_column("suite hash (stored → file)")
    for c in r.changed[:50]:
        same = c.old_suite_hash == c.new_suite_hash
        table.add_row(
            c.external_id,
            ", ".join(c.fields),
            c.old_suite_hash[:12] + (" (same)" if same else " → " + c.new_suite_hash[:12]),
        )
    if len(r.changed) > 50:
        table.caption = f"… and {len(r.changed) - 50} more (--json lists all)"
    console.print(table)


@data_app.command("list")
def list_(data_dir: Path | None = DATA_DIR_OPTION, as_json: bool = typer.Option(False, "--json")) -> None:
    """The datasets mucode knows, whether their files are present and what is loaded."""
    from app.datasets import DATASETS, file_sha256

    store = get_store()
    loaded = {d.name: d for d in store.list_datasets()}
    counts = store.split_counts()
    rows = []
    for name, info in DATASETS.items():
        sha, ds = file_sha256(name, data_dir), loaded.get(name)
        if ds is None:
            state = "not loaded" if sha else "file missing"
        else:
            state = (
                "loaded" if sha == ds.source_sha256 else ("file missing" if sha is None else "file changed")
            )
        rows.append(
            {
                "name": name,
                "files": list(info.files),
                "description": info.description,
                "state": state,
                "problems": sum(counts.get(name, {}).values()),
                "splits": counts.get(name, {}),
            }
        )
    if as_json:
        print_json(rows)
        return
    colors = {"loaded": "green", "not loaded": "dim", "file changed": "yellow", "file missing": "red"}
    cells = [
        (
            r["name"],
            f"[{colors[r['state']]}]{r['state']}[/]",
            str(r["problems"]),
            _splits(r["splits"]),
            r["description"],
        )
        for r in rows
    ]
    table = Table(title="datasets")
    fit_columns(
        table,
        ("name", "state", "problems", "splits", "description"),
        cells,
        flexible={"splits", "description"},
        right={"problems"},
    )
    for row in cells:
        table.add_row(*row)
    console.print(table)


def register(root: typer.Typer) -> None:
    root.add_typer(data_app, name="data")
