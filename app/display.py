"""Terminal displays of rounds and evaluations (rich): a round's status table, the paper's accuracy tables and
live progress bars. Presentation only, shared by the CLI and ``mucode demo``; each caller passes the console
it prints on, so a Python caller can print anywhere (or record the output).
"""

from __future__ import annotations

import re
import threading
from typing import Any

METRIC_NAMES = {"last_turn": "last turn", "first_public": "first public pass"}


class RoundProgress:
    """Progress bars for a round, fed by polling the store from a thread (so it works while the jobs run
    in-process in the main thread, and while workers elsewhere run them)."""

    def __init__(self, database_url: str, round_id: int, *, console, enabled: bool = True,
                 poll: float = 2.0) -> None:
        self.url = database_url
        self.console = console
        self.round_id = round_id
        self.enabled = enabled
        self.poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RoundProgress:
        if not self.enabled:
            return self
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description:<16}"), BarColumn(bar_width=28),
            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, transient=False, refresh_per_second=4,
        )  # fmt: skip
        self._progress.start()
        self._thread = threading.Thread(target=self._run, name="round-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self._update(final=True)
        except Exception:  # noqa: BLE001, S110 -- a display problem never hides the round's outcome
            pass
        self._progress.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self._update()
            except Exception:  # noqa: BLE001, S112 -- e.g. the database briefly locked: try again next tick
                continue

    def _store(self):
        if not hasattr(self, "_st"):
            from app.store import Store

            self._st = Store(self.url)
        return self._st

    def _update(self, final: bool = False) -> None:
        from workers.tasks.rounds import round_status

        st = round_status(self._store(), self.round_id)
        p = self._progress
        for s in st["steps"]:
            step, state = s["step"], s["state"]
            prog = s.get("progress") or {}
            total, done = prog.get("total"), prog.get("done")
            info = state + (f" · {s['info']}" if s.get("info") else "")
            if state == "failed":
                error = (s.get("error") or "").splitlines()
                info = f"[red]failed[/] · {error[0][:80] if error else ''}"
            if step not in self._tasks:
                if state == "pending" and not final:
                    continue
                self._tasks[step] = p.add_task(step, total=None, info=info, start=state != "pending")
            tid = self._tasks[step]
            if state in ("done", "skipped"):
                t = total or 1
                p.update(tid, total=t, completed=t, info=info)
                p.stop_task(tid)
            else:
                if state == "running":
                    p.start_task(tid)
                p.update(tid, total=total, completed=done or 0, info=info)
                if state == "failed":
                    p.stop_task(tid)


class EvalProgress(RoundProgress):
    """One bar per evaluation: chains done / chains."""

    def __init__(self, database_url: str, evaluation_ids: list[int], *, console,
                 enabled: bool = True) -> None:
        super().__init__(database_url, -1, console=console, enabled=enabled)
        self.ids = evaluation_ids

    def _update(self, final: bool = False) -> None:
        from app.store.rollouts import Owner

        store = self._store()
        for ev_id in self.ids:
            ev = store.get_evaluation(ev_id)
            c = store.collection_counts(Owner(evaluation_id=ev_id))
            label = ev.name.split("/", 2)[-1]
            if ev_id not in self._tasks:
                self._tasks[ev_id] = self._progress.add_task(label[:40], total=c["rollouts"] or None, info="")
            self._progress.update(self._tasks[ev_id], total=c["rollouts"] or None, completed=c["done"],
                                  info=f"{c['candidates']} candidates, solved {c['solved']}")


# -- status rendering ----------------------------------------------------------------------------------------
def print_experiments(console, rows: list[dict[str, Any]], *, name_column: str = "name") -> None:
    """One row per experiment (``store.list_experiments``): method, base model, rounds done and the latest."""
    from rich.table import Table

    t = Table(name_column, "method", "base model", "rounds", "latest")
    for r in rows:
        latest = "–" if r["latest_round"] is None else f"r{r['latest_round']} {r['latest_status']}"
        t.add_row(r["name"], r["method"], str(r["base_model"]), f"{r['rounds_done']}/{r['rounds']}", latest)
    console.print(t)


def print_round_status(console, st: dict[str, Any], *, brief: bool = False) -> None:
    """A round's head line, its models and one row per step; unless ``brief`` also its jobs, queues, failed
    jobs and whether it stalled."""
    from rich.table import Table

    secs = st.get("seconds")
    head = (
        f"[bold]{st['experiment']}[/] {'final ' if st.get('final') else ''}round {st['index']}: "
        f"{st['status']}"
        + (f" in {fmt_secs(secs)}" if secs else "")
    )
    console.print(head, highlight=False)
    m = st["models"]
    console.print(
        f"  generator {m.get('generator') or '–'} -> {m.get('generator_out') or '–'}; "
        f"verifier {m.get('verifier_in') or '–'} -> {m.get('verifier_out') or '–'}",
        highlight=False,
    )
    t = Table("step", "state", "try", "time", "progress", "details", show_edge=False, pad_edge=False)
    for s in st["steps"]:
        prog = s.get("progress") or {}
        pr = f"{prog.get('done')}/{prog.get('total')} {prog.get('unit', '')}" if prog.get("total") else ""
        detail = s.get("info") or s.get("reason") or ""
        if s.get("error"):
            detail = f"[red]{_first_line(s['error'])}[/]"
        state = {"done": "[green]done[/]", "failed": "[red]failed[/]", "running": "[yellow]running[/]"}.get(
            s["state"], s["state"])
        t.add_row(s["step"], state, str(s.get("attempt") or ""), fmt_secs(s.get("seconds")), pr, detail)
    console.print(t)
    if brief:
        return
    if st.get("jobs"):
        jobs = ", ".join(f"{k}: " + " ".join(f"{s}={n}" for s, n in sorted(v.items()))
                         for k, v in sorted(st["jobs"].items()))
        console.print(f"  jobs  {jobs}", highlight=False)
    q = st.get("queues")
    if q is not None:
        if "error" in q:
            console.print(f"  queues: broker unreachable ({q['error']})", highlight=False)
        else:
            console.print("  queues " + ", ".join(f"{k}={v if v is not None else '?'}" for k, v in q.items()),
                          highlight=False)
    elif st.get("embedded"):
        console.print("  queues: none (embedded mode: jobs run in-process)", highlight=False)
    for f in st.get("failed_jobs") or []:
        console.print(f"  [red]failed job[/] {f['key']}: {_first_line(f.get('error') or '')}",
                      highlight=False)
    if st.get("stalled"):
        console.print(f"  [yellow]stalled[/]: {st['stalled']}; a control worker queues the lost work again "
                      "within a few minutes", highlight=False)


def _first_line(text: str) -> str:
    from app.errors import first_line

    return first_line(text, 160)


def fmt_secs(secs: float | None) -> str:
    """12.3s, 4m05s, 2h07m."""
    if secs is None:
        return ""
    secs = float(secs)
    if secs < 60:
        return f"{secs:.1f}s"
    m, s = divmod(round(secs), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def generator_label(ev) -> str:
    """G0, G1, ... from an evaluation's name (``eval/EXP/r0/G1/...``)."""
    parts = ev.name.split("/")
    for p in parts:
        if re.fullmatch(r"G\d+", p):
            return p
    return parts[-3] if len(parts) >= 3 else ""


def _pairs_caption(evs, pairs: dict[int, dict]) -> str | None:
    """``verifier: G0 searched with RM0, G1 searched with RM1`` (the verifier ranks the lv and pt+lv
    picks)."""
    seen = dict.fromkeys((pairs[e.id]["generator"], pairs[e.id]["verifier"]) for e in evs
                         if pairs.get(e.id, {}).get("verifier"))
    return ("verifier: " + ", ".join(f"{g} searched with {v}" for g, v in seen)) if seen else None


def print_eval_tables(console, evaluations, *, title: str | None = None,
                      pairs: dict[int, dict] | None = None) -> None:
    """The paper's tables: per dataset, one row per (generator, greedy / BoN selector): true success per
    turn (cumulative), public success and any-of-C at T. ``pairs`` (``store.evaluation_pairs``): a caption
    names the verifier each generator was searched with."""
    from rich.table import Table

    from app.evaluation import CHAIN_METRICS, label, percent

    done = [e for e in evaluations if e.metrics and e.metrics.get("per_turn")]
    pending = [e for e in evaluations if e not in done]
    by_ds: dict[str, list] = {}
    for e in done:
        by_ds.setdefault(e.dataset + (f":{e.split}" if e.split else ""), []).append(e)
    for ds, evs in by_ds.items():
        T = max(e.max_turns for e in evs)
        n = max(e.metrics.get("problems", 0) for e in evs)
        head = f"{ds} ({n} problems): % solved, cumulative per turn"
        t = Table(title=(title + " — " if title else "") + head, show_edge=False, title_justify="left")
        t.add_column("generator")
        t.add_column("search")
        for k in range(1, T + 1):
            t.add_column(f"turn {k}", justify="right")
        t.add_column("public@T", justify="right")
        t.add_column("any-of-C", justify="right")
        t.add_column("false pub.", justify="right")
        t.caption, t.caption_justify = _pairs_caption(evs, pairs or {}), "left"
        for e in sorted(evs, key=lambda e: (generator_label(e), e.mode != "greedy", e.selector or "")):
            mt = e.metrics
            per = {row["turn"]: row for row in mt["per_turn"]}
            cells = [percent(per[k]["true_success"]) if k in per else "" for k in range(1, T + 1)]
            anyc = percent(mt["any_success"]) if e.num_chains > 1 else "–"
            search = label(e.mode, e.selector, e.num_candidates, e.num_chains)
            metric = mt.get("metric")
            # Greedy rows name how their chains were counted, and give the other count when it differs.
            if e.mode == "greedy" and metric:
                other = next(m for m in CHAIN_METRICS if m != metric)
                alt = [percent(per[k].get(f"{other}_success")) if k in per else "" for k in range(1, T + 1)]
                t.add_row(generator_label(e), f"{search}, {METRIC_NAMES[metric]}", *cells,
                          percent(mt["public_success"]), anyc, str(mt.get("false_public", 0)))
                if alt != cells and f"{other}_success" in mt:
                    t.add_row("", f"{search}, {METRIC_NAMES[other]}", *alt, "", "", "")
                continue
            t.add_row(generator_label(e), search, *cells,
                      percent(mt["public_success"]), anyc, str(mt.get("false_public", 0)))
        console.print(t)
    for e in pending:
        console.print(f"  evaluation {e.name}: {e.status}", highlight=False)


def print_round_failure(console, st: dict[str, Any]) -> None:
    console.print(
        f"[bold red]round failed[/] at {st.get('failed_step')}: {st.get('error')}\n"
        f"fix the cause, then: mucode round resume {st['experiment']}",
        highlight=False,
    )
