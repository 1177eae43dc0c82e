"""CLI: ``mucode report`` (the paper's Table 1 with confidence intervals and paired comparisons) and
``mucode export`` (an experiment's tables as Parquet or CSV files). The numbers are built by ``app.report``
from the stored evaluation results; this module only renders them."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import typer

from app.cli.common import console, get_store

FORMATS = ("table", "markdown", "latex", "csv", "json")


def register(root: typer.Typer) -> None:
    root.command("report")(report_command)
    root.command("export")(export_command)


def report_command(
    experiments: list[str] = typer.Argument(..., help="Experiments (or an experiment group: its members)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | markdown | latex | csv | json."),
    per_turn: bool = typer.Option(False, "--per-turn", help="A column per turn t = 1..T (cumulative)."),
    metric: str = typer.Option("true", "--metric", help="true (problems solved, the paper's number) | public | "
                               "any (any of the C chains)."),
    compare: tuple[str, str] | None = typer.Option(
        None, "--compare", help="A B: the paired difference A - B, each EXPERIMENT (its last generator), "
        "EXPERIMENT:G1 or EXPERIMENT:G1:RM1. Default: the first experiment against each other one (one "
        "experiment: its last generator against its first)."),
    no_compare: bool = typer.Option(False, "--no-compare", help="No comparison rows."),
    level: float = typer.Option(0.95, "--level", help="Confidence level of the intervals."),
    resamples: int = typer.Option(10_000, "--resamples", help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed (the same seed gives the same intervals)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write to this file instead of stdout."),
) -> None:
    """The paper's Table 1 over one or more experiments: a row per method and generator (Instruct = the base
    model G0), a column per dataset and search (greedy; Best-of-N with each selector), every cell with its
    bootstrap confidence interval over problems, and paired differences between experiments evaluated on the
    same problems. Read from the stored evaluation results: run the rounds (or `mucode eval`) first."""
    from app import report as RP
    from app.errors import ConfigError

    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r} (one of: {', '.join(FORMATS)})")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"--level must be between 0 and 1, not {level}")
    if resamples < 1:
        raise ConfigError("--resamples must be at least 1")
    pair = tuple(compare) if compare and all(compare) else None
    store = get_store()
    exps = RP.resolve_experiments(store, experiments)
    rep = RP.build_report(store, exps, metric=metric, per_turn=per_turn, level=level, resamples=resamples,
                          seed=seed, compare=[pair] if pair else None, auto_compare=not no_compare)
    if fmt == "table":
        if out is not None:
            raise ConfigError("--out writes markdown, latex, csv or json: add --format")
        print_table(rep)
        return
    text = {"markdown": to_markdown, "latex": to_latex, "csv": to_csv, "json": to_json}[fmt](rep)
    if out is not None:
        out.write_text(text)
        console.print(f"wrote {out}", highlight=False)
    else:
        print(text, end="" if text.endswith("\n") else "\n")


# -- rendering ----------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{100.0 * x:.1f}"


def _cell(iv, signed: bool = False) -> tuple[str, str]:
    est = f"{100.0 * iv.estimate:+.1f}" if signed else _pct(iv.estimate)
    return est, f"[{_pct(iv.low)}, {_pct(iv.high)}]"


def _header(rep, col, t: int) -> str:
    turn = f" t={t}" if rep.per_turn else ""
    return f"{rep.search_label(col)}{turn}"


def _grid(rep):
    """(column headers, body rows, comparison rows): body cells as (estimate, interval) pairs."""
    heads = [(col, t) for col in rep.columns for t in rep.turns_of(col)]
    body = []
    for row in rep.rows:
        cells = []
        for col, t in heads:
            c = row.cells.get(col)
            cells.append(_cell(c.intervals[t]) if c is not None and t in c.intervals else None)
        body.append((row.label, row.key.generator, row.key.verifier or "–", cells))
    comps = []
    for cmp in rep.comparisons:
        cells = [(_cell(cmp.cells[col], signed=True) if col in cmp.cells and t == col.turns else None)
                 for col, t in heads]
        comps.append((cmp.label, cells))
    return heads, body, comps


def print_table(rep) -> None:
    from rich.table import Table

    heads, body, comps = _grid(rep)
    t = Table(title=f"{', '.join(rep.experiments)}: {rep.metric} success", title_justify="left", show_lines=False)
    t.add_column("method")
    t.add_column("gen.")
    t.add_column("verifier")
    for col, turn in heads:
        t.add_column(f"{col.dataset_label}\n{_header(rep, col, turn)}", justify="right")
    for label, gen, ver, cells in body:
        t.add_row(label, gen, ver, *[f"{c[0]}\n{c[1]}" if c else "" for c in cells])
    if comps:
        t.add_section()
        for label, cells in comps:
            t.add_row(f"Δ {label}", "", "", *[f"{c[0]}\n{c[1]}" if c else "" for c in cells])
    t.caption, t.caption_justify = rep.caption(), "left"
    if not body:
        console.print("no finished evaluation in " + ", ".join(rep.experiments), highlight=False)
    else:
        console.print(t)
    for note in rep.notes:
        console.print(f"  note: {note}", highlight=False)


def to_markdown(rep) -> str:
    heads, body, comps = _grid(rep)
    cols = ["method", "gen.", "verifier"] + [f"{c.dataset_label} {_header(rep, c, t)}" for c, t in heads]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * 3 + "---:|" * len(heads)]
    for label, gen, ver, cells in body:
        lines.append("| " + " | ".join([label, gen, ver] + [f"{c[0]} {c[1]}" if c else "" for c in cells]) + " |")
    for label, cells in comps:
        lines.append("| " + " | ".join([f"Δ {label}", "", ""] + [f"{c[0]} {c[1]}" if c else "" for c in cells])
                     + " |")
    lines += ["", rep.caption()]
    lines += [f"Note: {n}" for n in rep.notes]
    return "\n".join(lines) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s: str) -> str:
    s = "".join(_LATEX.get(ch, ch) for ch in s)
    return s.replace("µ", r"$\mu$").replace("Δ", r"$\Delta$").replace("−", "$-$")


def to_latex(rep) -> str:
    """A booktabs table (``\\usepackage{booktabs}``): a header row per dataset over its searches."""
    heads, body, comps = _grid(rep)
    spans: list[tuple[str, int]] = []
    for col, _ in heads:
        if spans and spans[-1][0] == col.dataset_label:
            spans[-1] = (spans[-1][0], spans[-1][1] + 1)
        else:
            spans.append((col.dataset_label, 1))
    out = [r"\begin{table}[t]", r"\centering", r"\small",
           r"\begin{tabular}{lll" + "r" * len(heads) + "}", r"\toprule"]
    out.append(" & & & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_tex(ds)}}}" for ds, n in spans) + r" \\")
    start = 4
    rules = []
    for _, n in spans:
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    out.append(" ".join(rules))
    out.append("Method & Gen. & Verifier & " + " & ".join(_tex(_header(rep, c, t)) for c, t in heads) + r" \\")
    out.append(r"\midrule")

    def fmt(c):
        return rf"{_tex(c[0])} {{\scriptsize {c[1]}}}" if c else ""

    for label, gen, ver, cells in body:
        out.append(" & ".join([_tex(label), _tex(gen), _tex(ver)] + [fmt(c) for c in cells]) + r" \\")
    if comps:
        out.append(r"\midrule")
        for label, cells in comps:
            out.append(" & ".join([_tex(f"Δ {label}"), "", ""] + [fmt(c) for c in cells]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex(rep.caption())}}}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_csv(rep) -> str:
    from app.report import records

    recs = records(rep)
    fields = ["kind", "experiment", "method", "row", "generator", "verifier", "other_experiment",
              "other_generator", "other_verifier", "dataset", "split", "column", "mode", "selector", "candidates",
              "chains", "turns", "chain_metric", "turn", "metric", "estimate", "low", "high", "n", "level",
              "evaluation", "evaluation_id"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in recs:
        w.writerow(r)
    return buf.getvalue()


def to_json(rep) -> str:
    from app.report import as_json

    return json.dumps(as_json(rep), indent=2, ensure_ascii=False) + "\n"


# -- export -----------------------------------------------------------------------------------------------
def export_command(
    experiment: str = typer.Argument(..., help="The experiment."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write one file per table into."),
    fmt: str = typer.Option("parquet", "--format", "-f", help="parquet | csv."),
    tables: list[str] = typer.Option(
        None, "--table", "-t", help="Only these tables (repeat): rollouts, turns, candidates, executions, "
        "verifier_scores, evaluations, evaluation_results. Default: all."),
    text: bool = typer.Option(True, "--text/--no-text", help="Include the long text columns (messages, "
                              "responses, code, execution output)."),
) -> None:
    """Write an experiment's rollouts, turns, candidates, executions, verifier scores, evaluations and
    evaluation results as Parquet (or CSV) files, one per table: the same tables as ``app.frames``."""
    from app import frames

    store = get_store()
    written = frames.export(experiment, out, fmt=fmt, tables=tables or None, text=text, store=store)
    for table, (path, n) in written.items():
        console.print(f"{table:<20} {n:>10,} rows  {path}", highlight=False)
