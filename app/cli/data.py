"""CLI: mucode data load|list|verify — benchmark files into the store, and their checksums."""

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
    help="Folder with the benchmark files (default: MUCODE_DATA_DIR, else the copy installed with mucode).",
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
    allow_modified: bool = typer.Option(
        False,
        "--allow-modified",
        help="Load files whose sha256 differs from SHA256SUMS (another revision, on purpose); the "
        "differences are listed.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the load reports as JSON."),
) -> None:
    """Load datasets; idempotent. Each file's sha256 is checked first (a missing or altered file is an error).
    A changed file is reported (exit 1) unless --force updates it."""
    from dataclasses import asdict

    from app.datasets import load_dataset, resolve_names
    from app.datasets.registry import verify_dataset_files

    names = resolve_names(names)
    store = get_store()
    # Every file of every named dataset is checked before the first one is written.
    for c in verify_dataset_files(names, data_dir, allow_modified=allow_modified):
        if not c.ok:
            err_console.print(f"[yellow]warning:[/] {c.problem()} (loaded anyway: --allow-modified)")
    results = [
        load_dataset(store, name, data_dir, force=force, allow_modified=allow_modified) for name in names
    ]
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


@data_app.command("verify")
def verify(
    names: list[str] = typer.Argument(
        None, help="Datasets whose files to check (default: all).", show_default=False
    ),
    data_dir: Path | None = DATA_DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
) -> None:
    """Recompute the sha256 of the benchmark files and compare with SHA256SUMS; exit 1 on any difference."""
    from app.datasets import check_dataset_files
    from app.datasets.registry import data_dir_or_default

    root = data_dir_or_default(data_dir)
    checks = check_dataset_files(names or ["all"], root)
    bad = [c for c in checks if not c.ok]
    if as_json:
        print_json(
            {
                "data_dir": str(root),
                "ok": not bad,
                "files": [
                    {
                        "file": c.relative,
                        "status": c.status,
                        "expected": c.expected,
                        "actual": c.actual,
                        "listed_in": str(c.listed_in) if c.listed_in else None,
                    }
                    for c in checks
                ],
            }
        )
    else:
        colors = {"ok": "green", "mismatch": "bold red", "missing": "bold red", "unlisted": "yellow"}
        # Short checksums keep the table readable; the errors below and --json give them in full.
        table = Table(title=f"mucode data verify: {root}", title_justify="left")
        table.add_column("file", overflow="fold")
        table.add_column("status", no_wrap=True, min_width=8)
        table.add_column("expected sha256", no_wrap=True)
        table.add_column("actual sha256", no_wrap=True)
        for c in checks:
            table.add_row(
                c.relative,
                f"[{colors[c.status]}]{c.status}[/]",
                f"{c.expected[:16]}…" if c.expected else "-",
                "same" if c.ok else (f"{c.actual[:16]}…" if c.actual else "-"),
            )
        console.print(table)
        for c in bad:
            err_console.print(f"[bold red]error:[/] {c.problem()}")
        if not bad:
            sources = sorted({str(c.listed_in) for c in checks if c.listed_in})
            console.print(f"{len(checks)} file(s) match {', '.join(sources)}")
    if bad:
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    root.add_typer(data_app, name="data")
