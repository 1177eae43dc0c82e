"""CLI: ``mucode experiment create|list|show``, ``mucode round run|status|resume``, ``mucode eval``, ``mucode demo``.

An experiment freezes its whole configuration (``app.protocol.ExperimentConfig``: every protocol default,
sizes, datasets, backend) at creation. ``round run`` queues the next round of expert iteration as
jobs (``workers/tasks/rounds.py``); with a broker it returns once queued (``--wait`` follows it), without one
(the embedded default) it runs every job here, with progress bars. Workers and trainers are imported inside
the commands only.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer

from app.cli.common import console, get_store, print_json

experiment_app = typer.Typer(help="Experiments: a method, a base model and a frozen protocol.", no_args_is_help=True)
round_app = typer.Typer(help="Expert-iteration rounds: run, follow, resume.", no_args_is_help=True)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ALL_SELECTORS = ("random", "lv", "pt", "pt+lv")


def register(root: typer.Typer) -> None:
    root.add_typer(experiment_app, name="experiment")
    root.add_typer(round_app, name="round")
    root.command("eval")(eval_command)
    root.command("demo")(demo_command)


# -- config files -------------------------------------------------------------------------------------------
def read_config_file(path: Path) -> dict[str, Any]:
    """A JSON, TOML or YAML file holding (part of) an ExperimentConfig."""
    from app.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise ConfigError("reading YAML needs PyYAML (pip install pyyaml); or use JSON/TOML") from exc
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config fields")
    return data


def build_config(method: str | None, base_model: str | None, overrides: dict[str, Any], preset: str | None = None):
    """ExperimentConfig = protocol defaults <- preset (``app.presets``) <- file values <- --method/--base-model."""
    from pydantic import ValidationError

    from app import presets
    from app.errors import ConfigError
    from app.protocol import ExperimentConfig

    try:
        data = presets.build(preset, overrides)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if method is not None:
        data["method"] = method
    if base_model is not None:
        data["base_model"] = base_model
    if not data.get("base_model"):
        raise ConfigError("an experiment needs a base model: --base-model MODEL (or base_model in the config file)")
    try:
        return ExperimentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid experiment config: {_field_errors(exc)}") from exc


def _field_errors(exc) -> str:
    """``train_limit: Input should be greater than 0 (got -1)``: each field, its problem and the value given."""
    msgs = []
    for e in exc.errors():
        if not e["loc"]:
            msgs.append(e["msg"])
            continue
        value = e.get("input")
        got = f" (got {value!r})" if isinstance(value, (int, float, str)) and not isinstance(value, bool) else ""
        msgs.append(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}{got}")
    return "; ".join(msgs)


def create_experiment(store, name: str, config) -> tuple[int, bool]:
    """Create ``name`` with its frozen config; (id, created). The same name with another config is an error."""
    from app.errors import ConfigError, NotFound

    if not _NAME.match(name):
        raise ConfigError(f"experiment names are letters, digits, '.', '_' and '-' (not {name!r})")
    frozen = config.model_dump(mode="json")
    try:
        existing = store.get_experiment(name)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.config != frozen:
            raise ConfigError(f"experiment {name!r} exists with another config (configs are frozen): pick a new name")
        return existing.id, False
    return store.create_experiment(name, config.method, config.base_model, frozen), True


# -- experiment ---------------------------------------------------------------------------------------------
@experiment_app.command("create")
def experiment_create(
    name: str = typer.Argument(..., help="Experiment name (letters, digits, . _ -)."),
    method: str | None = typer.Option(None, "--method", help="mucode (default) | multi_rft | rft | rft_lv."),
    base_model: str | None = typer.Option(None, "--base-model", help="Hub name, local folder or pulled name."),
    config_file: Path | None = typer.Option(  # noqa: B008
        None, "--config", help="JSON/TOML/YAML with ExperimentConfig fields (applied over the preset)."
    ),
    preset: str = typer.Option(
        "mucode", "--preset", help="mucode: the paper's protocol with the reference code's bugs fixed (default); "
        "reference: the µCode reference code's protocol. See docs/protocol.md.",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create an experiment; its config (protocol, sizes, datasets, backend) is frozen into it: the preset's
    protocol, then the config file's fields, then --method and --base-model."""
    from app.model_registry import check_model_folder, resolve_model
    from app.presets import closest_preset

    overrides = read_config_file(config_file) if config_file else {}
    cfg = build_config(method, base_model, overrides, preset)
    uri = resolve_model(cfg.base_model)  # a missing model is an error now, not in a worker later
    if Path(uri).is_dir():  # so is a broken folder; a hub name not pulled yet is downloaded where it is loaded
        check_model_folder(uri)
    store = get_store()
    eid, created = create_experiment(store, name, cfg)
    if as_json:
        print_json({"id": eid, "name": name, "created": created, "preset": closest_preset(cfg)[0],
                    "config": cfg.model_dump(mode="json")})
        return
    verb = "created" if created else "exists (same config)"
    console.print(f"experiment [bold]{name}[/] {verb}: method {cfg.method}, base model {cfg.base_model}", highlight=False)
    console.print(_config_summary(cfg), highlight=False)
    console.print(f"next: [bold]mucode round run {name}[/]", highlight=False)


def _config_summary(cfg) -> str:
    from app import presets

    r, v, g, e = cfg.rollout, cfg.verifier, cfg.generator, cfg.eval
    train = ", ".join(cfg.train_datasets) + (f" (first {cfg.train_limit})" if cfg.train_limit else "")
    evals = ", ".join(e.datasets) + (f" (first {e.limit})" if e.limit else "")
    return (
        f"  train {train}: M={r.rollouts_per_problem} T={r.turns} temperature {r.sampling.temperature} "
        f"top_p {r.sampling.top_p} max {r.sampling.max_new_tokens} tokens"
        f"{' (stop after code)' if r.sampling.stop_after_code else ''}, stop rule {r.stop_rule}\n"
        f"  verifier {v.loss}: {v.pairs_per_problem} pairs/problem drawn {_words(v.pair_sampling)}, "
        f"lr {v.learning_rate:g}, {v.epochs:g} epochs, batch {v.effective_batch_size}; relabel expert "
        f"{cfg.relabel.expert}, K={cfg.relabel.relabel_failed}\n"
        f"  generator: lr {g.learning_rate:g}, {g.epochs:g} epochs, batch {g.effective_batch_size}, "
        f"{'from base each round' if g.from_base_each_round else 'warm start'}\n"
        f"  eval {evals}: T={e.turns}, greedy={'yes' if e.greedy else 'no'} (counted on the "
        f"{METRIC_NAMES[e.greedy_metric]}), BoN N={e.bon_candidates} C={e.bon_chains} selectors "
        f"{', '.join(e.selectors)} (verifier of the {_words(e.verifier_pairing)}); backend {cfg.backend}\n"
        f"  harness: import prelude {'on' if cfg.harness.import_prelude else 'off'}, MBPP train shows "
        f"{r.train_shown_tests} tests\n"
        + "\n".join(f"  {line}" for line in presets.describe(cfg))
    )


def _words(value: str) -> str:
    return value.replace("_", " ")


@experiment_app.command("list")
def experiment_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Experiments with their rounds."""
    from rich.table import Table

    rows = get_store().list_experiments()
    if as_json:
        print_json(rows)
        return
    t = Table("name", "method", "base model", "rounds", "latest")
    for r in rows:
        latest = "–" if r["latest_round"] is None else f"r{r['latest_round']} {r['latest_status']}"
        t.add_row(r["name"], r["method"], str(r["base_model"]), f"{r['rounds_done']}/{r['rounds']}", latest)
    console.print(t)


@experiment_app.command("show")
def experiment_show(
    name: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The frozen config (the preset it follows, what differs from it and from the defaults), every round
    (steps, models) and every evaluation's accuracy per turn."""
    from app.presets import closest_preset, differences
    from app.protocol import ExperimentConfig
    from workers.tasks.rounds import round_status

    store = get_store()
    exp = store.get_experiment(name)
    statuses = [round_status(store, r.id) for r in store.experiment_rounds(exp.id)]
    evals = store.experiment_evaluations(exp.id)
    if as_json:
        cfg = ExperimentConfig.frozen(exp.config)
        preset, own = closest_preset(cfg)
        print_json({"id": exp.id, "name": exp.name, "method": exp.method, "base_model": exp.base_model,
                    "config": exp.config, "preset": preset,
                    "changed_from_preset": [{"setting": p, "value": a, "preset": b} for p, a, b in own],
                    "changed_from_defaults": [{"setting": p, "value": a, "default": b}
                                              for p, a, b in differences(cfg)],
                    "rounds": statuses, "evaluations": [_eval_dict(e) for e in evals]})
        return
    cfg = ExperimentConfig.frozen(exp.config)
    console.print(f"[bold]{exp.name}[/]: method {exp.method}, base model {exp.base_model}", highlight=False)
    console.print(_config_summary(cfg), highlight=False)
    for st in statuses:
        print_round_status(st, brief=True)
    print_eval_tables(evals, pairs=store.evaluation_pairs([e.id for e in evals]))


# -- round ---------------------------------------------------------------------------------------------------
def _latest_round(store, name: str, index: int | None = None):
    from app.errors import NotFound

    exp = store.get_experiment(name)
    rounds = store.experiment_rounds(exp.id)
    if not rounds:
        raise NotFound(f"experiment {name!r} has no round yet: `mucode round run {name}`")
    if index is None:
        return rounds[-1]
    for r in rounds:
        if r.index == index:
            return r
    raise NotFound(f"experiment {name!r} has no round {index}")


@round_app.command("run")
def round_run(
    name: str = typer.Argument(..., help="The experiment."),
    wait: bool = typer.Option(False, "--wait", help="With a broker: follow the round with progress to the end."),
    final: bool = typer.Option(
        False, "--final", help="The experiment's last round: collect with its generator G_k, train RM_k and "
        "evaluate G_k with RM_k; no generator is trained and no round follows it."),
    as_json: bool = typer.Option(False, "--json", help="Print the final status as JSON."),
) -> None:
    """Queue the next round (collect -> score -> train verifier -> score -> relabel -> train generator ->
    evaluate). Round k evaluates its generator G_k with the verifier RM_k trained on G_k's rollouts (the config's
    eval.verifier_pairing); the last generator is evaluated by a --final round. Embedded mode runs it here to
    the end."""
    from workers.dispatch import check_broker
    from workers.tasks import rounds as tasks

    check_broker()
    store = get_store()
    rid = tasks.create_round(store, name, final=final)
    rnd = store.get_round(rid)
    if not as_json:
        console.print(f"{'final ' if final else ''}round {rnd.index} of [bold]{name}[/] (id {rid})",
                      highlight=False)
    _drive(store, rid, lambda: tasks.queue_round(rid), wait=wait, as_json=as_json)


@round_app.command("resume")
def round_resume(
    name: str = typer.Argument(..., help="The experiment."),
    index: int | None = typer.Option(None, "--round", help="Round index (default: the latest)."),
    wait: bool = typer.Option(False, "--wait", help="With a broker: follow the round with progress to the end."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Pick a round up after a crash or a failed step: finished steps are kept, the first unfinished one is
    queued again (a collection as a new generation, keeping its finished rollouts)."""
    from workers.dispatch import check_broker
    from workers.tasks import rounds as tasks

    check_broker()
    store = get_store()
    rnd = _latest_round(store, name, index)
    holder: dict[str, Any] = {}

    def go() -> None:
        holder["plan"] = tasks.resume_round(store, rnd.id)

    if not as_json:
        console.print(f"resuming round {rnd.index} of [bold]{name}[/] (id {rnd.id})", highlight=False)
    _drive(store, rnd.id, go, wait=wait, as_json=as_json)


@round_app.command("status")
def round_status_cmd(
    name: str = typer.Argument(..., help="The experiment."),
    index: int | None = typer.Option(None, "--round", help="Round index (default: the latest)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Each step (state, attempt, timing, error), counts, jobs, queue depths, failures and evaluations."""
    from workers.tasks.rounds import round_status

    store = get_store()
    rnd = _latest_round(store, name, index)
    st = round_status(store, rnd.id, queues=True)
    if as_json:
        print_json(st)
        return
    print_round_status(st)
    evs = store.round_evaluations(rnd.id)
    print_eval_tables(evs, pairs=store.evaluation_pairs([e.id for e in evs]))


def _drive(store, round_id: int, start, *, wait: bool, as_json: bool, show_progress: bool = True,
           show_tables: bool = True) -> dict[str, Any]:
    """Start the round (``start()``), then: in-process, run it here under a progress display; with a broker,
    return (or follow it with ``wait``). Exits 1 when the round ends failed."""
    from workers.dispatch import in_process
    from workers.tasks.rounds import round_status

    embedded = in_process()
    progress = show_progress and not as_json and (embedded or wait)
    error: BaseException | None = None
    # With --json, stdout is the JSON document only: in-process trainers' prints go to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with RoundProgress(store.engine.url.render_as_string(hide_password=False), round_id, enabled=progress):
        try:
            with quiet:
                start()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 -- in-process jobs raise here; the round records it
            error = exc
        if wait and not embedded and error is None:
            _wait_round(store, round_id)
    st = round_status(store, round_id, queues=not embedded)
    if as_json:
        print_json(st)
    else:
        print_round_status(st)
        if show_tables and (st["status"] == "done" or embedded or wait):
            evs = store.round_evaluations(round_id)
            print_eval_tables(evs, pairs=store.evaluation_pairs([e.id for e in evs]))
    if error is not None and st["status"] != "failed":
        raise error
    if st["status"] == "failed":
        if not as_json:
            console.print(
                f"[bold red]round failed[/] at {st.get('failed_step')}: {st.get('error')}\n"
                f"fix the cause, then: mucode round resume {st['experiment']}",
                highlight=False,
            )
        raise typer.Exit(1)
    if not embedded and not wait and not as_json:
        console.print(f"queued; follow it with: mucode round status {st['experiment']} (or --wait)", highlight=False)
    return st


def _wait_round(store, round_id: int, poll: float = 2.0) -> None:
    from app.errors import is_transient
    from workers.tasks.rounds import round_status

    while True:
        try:
            st = round_status(store, round_id)
        except Exception as exc:
            if not is_transient(exc):
                raise
            time.sleep(poll * 5)  # the database is down for now: the round waits for it too
            continue
        if st["status"] in ("done", "failed"):
            return
        time.sleep(poll)


class RoundProgress:
    """Progress bars for a round, fed by polling the store from a thread (so it works while the jobs run
    in-process in the main thread, and while workers elsewhere run them)."""

    def __init__(self, database_url: str, round_id: int, *, enabled: bool = True, poll: float = 2.0) -> None:
        self.url = database_url
        self.round_id = round_id
        self.enabled = enabled
        self.poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RoundProgress:  # noqa: PYI034
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
            SpinnerColumn(), TextColumn("{task.description:<16}"), BarColumn(bar_width=28), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console, transient=False,
            refresh_per_second=4,
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
                info = f"[red]failed[/] · {(s.get('error') or '').splitlines()[0][:80] if s.get('error') else ''}"
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


# -- status rendering ----------------------------------------------------------------------------------------
def print_round_status(st: dict[str, Any], *, brief: bool = False) -> None:
    from rich.table import Table

    secs = st.get("seconds")
    head = (
        f"[bold]{st['experiment']}[/] {'final ' if st.get('final') else ''}round {st['index']}: {st['status']}"
        + (f" in {_fmt_secs(secs)}" if secs else "")
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
        t.add_row(s["step"], state, str(s.get("attempt") or ""), _fmt_secs(s.get("seconds")), pr, detail)
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
        console.print(f"  [red]failed job[/] {f['key']}: {_first_line(f.get('error') or '')}", highlight=False)
    if st.get("stalled"):
        console.print(f"  [yellow]stalled[/]: {st['stalled']}; a control worker queues the lost work again "
                      "within a few minutes", highlight=False)


def _first_line(text: str) -> str:
    from app.errors import first_line

    return first_line(text, 160)


def _fmt_secs(secs: float | None) -> str:
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


def _eval_dict(ev) -> dict[str, Any]:
    return {"id": ev.id, "name": ev.name, "dataset": ev.dataset, "split": ev.split, "mode": ev.mode,
            "selector": ev.selector, "num_candidates": ev.num_candidates, "num_chains": ev.num_chains,
            "max_turns": ev.max_turns, "status": ev.status, "metrics": ev.metrics, "round_id": ev.round_id,
            "generator_id": ev.generator_id, "verifier_id": ev.verifier_id}


def _generator_label(ev) -> str:
    parts = ev.name.split("/")
    for p in parts:
        if re.fullmatch(r"G\d+", p):
            return p
    return parts[-3] if len(parts) >= 3 else ""


METRIC_NAMES = {"last_turn": "last turn", "first_public": "first public pass"}


def _pairs_caption(evs, pairs: dict[int, dict]) -> str | None:
    """``verifier: G0 searched with RM0, G1 searched with RM1`` (the verifier ranks the lv and pt+lv picks)."""
    seen = dict.fromkeys((pairs[e.id]["generator"], pairs[e.id]["verifier"]) for e in evs
                         if pairs.get(e.id, {}).get("verifier"))
    return ("verifier: " + ", ".join(f"{g} searched with {v}" for g, v in seen)) if seen else None


def print_eval_tables(evaluations, *, title: str | None = None, pairs: dict[int, dict] | None = None) -> None:
    """The paper's tables: per dataset, one row per (generator, greedy / BoN selector): true success per turn
    (cumulative), public success and any-of-C at T. ``pairs`` (``store.evaluation_pairs``): a caption names the
    verifier each generator was searched with."""
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
        t = Table(title=(title + " — " if title else "") + f"{ds} ({n} problems): % solved, cumulative per turn",
                  show_edge=False, title_justify="left")
        t.add_column("generator")
        t.add_column("search")
        for k in range(1, T + 1):
            t.add_column(f"turn {k}", justify="right")
        t.add_column("public@T", justify="right")
        t.add_column("any-of-C", justify="right")
        t.add_column("false pub.", justify="right")
        t.caption, t.caption_justify = _pairs_caption(evs, pairs or {}), "left"
        for e in sorted(evs, key=lambda e: (_generator_label(e), e.mode != "greedy", e.selector or "")):
            mt = e.metrics
            per = {row["turn"]: row for row in mt["per_turn"]}
            cells = [percent(per[k]["true_success"]) if k in per else "" for k in range(1, T + 1)]
            anyc = percent(mt["any_success"]) if e.num_chains > 1 else "–"
            search = label(e.mode, e.selector, e.num_candidates, e.num_chains)
            metric = mt.get("metric")
            if e.mode == "greedy" and metric:  # name how greedy chains were counted; the other count when it differs
                other = next(m for m in CHAIN_METRICS if m != metric)
                alt = [percent(per[k].get(f"{other}_success")) if k in per else "" for k in range(1, T + 1)]
                t.add_row(_generator_label(e), f"{search}, {METRIC_NAMES[metric]}", *cells,
                          percent(mt["public_success"]), anyc, str(mt.get("false_public", 0)))
                if alt != cells and f"{other}_success" in mt:
                    t.add_row("", f"{search}, {METRIC_NAMES[other]}", *alt, "", "", "")
                continue
            t.add_row(_generator_label(e), search, *cells,
                      percent(mt["public_success"]), anyc, str(mt.get("false_public", 0)))
        console.print(t)
    for e in pending:
        console.print(f"  evaluation {e.name}: {e.status}", highlight=False)


# -- eval ------------------------------------------------------------------------------------------------------
def eval_command(
    model: str | None = typer.Option(None, "--model", "-m", help="Generator: model folder, pulled or hub name."),
    experiment: str | None = typer.Option(None, "--experiment", "-e", help="Evaluate this experiment's round."),
    round_index: int | None = typer.Option(None, "--round", help="With --experiment: round K (default latest)."),
    which: str | None = typer.Option(None, "--generator", help="With --experiment: 'in' = G_K, 'out' = G_{K+1} "
                                     "(default: as the experiment's eval.verifier_pairing pairs RM_K: same_round "
                                     "G_K, previous_round G_{K+1})."),
    verifier: str | None = typer.Option(None, "--verifier", help="Verifier (name or id) for lv and pt+lv."),
    datasets: list[str] = typer.Option(None, "--dataset", "-d", help="DATASET[:SPLIT]; repeat. "  # noqa: B008
                                       "Default mbpp:test, humaneval:test (or the experiment's)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N problems of each dataset."),
    turns: int | None = typer.Option(None, "-T", "--turns", min=1, help="T turns per chain (default 3)."),
    greedy: bool | None = typer.Option(None, "--greedy/--no-greedy", help="Greedy multi-turn (temperature 0)."),
    selectors: list[str] = typer.Option(  # noqa: B008
        None, "--selector", "-s", help="random | lv | pt | pt+lv | all; repeat."
    ),
    candidates: int | None = typer.Option(None, "-N", "--candidates", min=1,
                                         help="N candidates per turn (default 5)."),
    chains: int | None = typer.Option(None, "-C", "--chains", min=1, help="C chains per problem (default 10)."),
    temperature: float | None = typer.Option(None, "--temperature", min=0.0,
                                             help="BoN sampling temperature (0.7)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Chains per batch."),
    backend: str | None = typer.Option(None, "--backend", help="transformers | vllm."),
    seed: int | None = typer.Option(None, "--seed"),
    prelude: bool | None = typer.Option(None, "--prelude/--no-prelude", help="Run the reference's 16 import "
                                        "lines before every program (default: on, or the experiment's)."),
    preset: str | None = typer.Option(None, "--preset", help="With --model: the protocol to evaluate under, "
                                      "mucode (default) or reference (e.g. the paper's Instruct rows)."),
    name: str | None = typer.Option(None, "--name", help="Name prefix of the evaluations (default: derived)."),
    wait: bool = typer.Option(False, "--wait", help="With a broker: wait for the results and print them."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Greedy multi-turn and multi-turn Best-of-N (N per turn, C chains per problem; selectors random, lv, pt,
    pt+lv). A Best-of-N chain is solved when its first public-passing pick also passes the private tests; a
    greedy chain as eval.greedy_metric says (default: its last turn passes the public and private tests, as the
    paper counts N=1; the other count is stored beside it). Results are stored per problem, chain and turn and
    printed as the paper's tables. Running the same command again resumes the unfinished evaluations and prints
    the results."""
    from app.errors import ConfigError
    from app.protocol import EvalConfig, ExperimentConfig
    from workers.dispatch import check_broker, in_process
    from workers.tasks import rounds as tasks

    check_broker()
    store = get_store()
    base: ExperimentConfig | None = None
    verifier_id = None
    if experiment is not None and preset is not None:
        raise ConfigError("--preset is for --model: an experiment's protocol was frozen when it was created")
    if experiment is not None:
        exp = store.get_experiment(experiment)
        base = ExperimentConfig.frozen(exp.config)
        rnd = _latest_round(store, experiment, round_index)
        if which is None:
            which = "in" if base.eval.verifier_pairing == "same_round" else "out"
        if which not in ("in", "out"):
            raise ConfigError(f"--generator is 'in' (G_K) or 'out' (G_K+1), not {which!r}")
        gen_id = rnd.generator_out_id if which == "out" else rnd.generator_id
        if gen_id is None:
            raise ConfigError(f"round {rnd.index} of {experiment} has no {'trained ' if which == 'out' else ''}"
                              "generator yet")
        verifier_id = rnd.verifier_out_id
        gen_label = f"G{rnd.index + 1}" if which == "out" else f"G{rnd.index}"
        prefix = name or f"eval/{experiment}/r{rnd.index}"
    elif model is not None:
        gen_id = tasks.base_generator_id(store, model)
        gen_label = "model"
        prefix = name or f"eval/{_slug(store.get_model_version(gen_id).name)}"
        if preset is not None:
            from app import presets

            try:
                base = ExperimentConfig(**presets.build(preset, {"base_model": model}))
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
            if preset != presets.DEFAULT_PRESET and name is None:
                prefix += f"-{preset}"  # another protocol: other evaluations, never a clash with the default's
    else:
        raise ConfigError("give --model MODEL or --experiment NAME")
    if verifier is not None:
        verifier_id = store.get_verifier(verifier)["id"]
    sels = [s for x in (selectors or []) for s in (ALL_SELECTORS if x == "all" else [x])]
    ev0 = base.eval if base is not None else EvalConfig()
    ev_fields = {
        "datasets": list(datasets) if datasets else ev0.datasets,
        "turns": turns or ev0.turns,
        "bon_candidates": candidates or ev0.bon_candidates,
        "bon_chains": chains or ev0.bon_chains,
        "selectors": sels or (ev0.selectors if verifier_id is not None else ["pt"]),
        "greedy": ev0.greedy if greedy is None else greedy,
        "temperature": ev0.temperature if temperature is None else temperature,
        "limit": ev0.limit if limit is None else limit,
        "max_new_tokens": max_new_tokens or ev0.max_new_tokens,
        "seed": ev0.seed if seed is None else seed,
    }
    try:
        cfg_data = (base.model_dump() if base is not None else {"base_model": model or "unused"})
        cfg_data["eval"] = {**ev0.model_dump(), **ev_fields}
        if backend is not None:
            cfg_data["backend"] = backend
        if batch_size is not None:
            cfg_data.setdefault("rollout", {})
            cfg_data["rollout"] = {**(cfg_data.get("rollout") or {}), "batch_size": batch_size}
        if prelude is not None:
            own = base.harness.import_prelude if base is not None else True
            cfg_data["harness"] = {**(cfg_data.get("harness") or {}), "import_prelude": prelude}
            if prelude != own and name is None:  # other verdicts: other evaluations, never a clash
                prefix += "-prelude" if prelude else "-no-prelude"
        cfg = ExperimentConfig(**cfg_data)
    except Exception as exc:
        raise ConfigError(f"invalid evaluation settings: {exc}") from exc
    from app import rounds as R

    for ds in cfg.eval.datasets:
        tasks._problem_ids(store, [R.parse_dataset(ds)], 1)  # loaded? (a clear error before anything is queued)
    try:
        specs = R.eval_specs(cfg, name_prefix=prefix, generator_label=gen_label, generator_id=gen_id,
                             verifier_id=verifier_id)
    except ValueError as exc:
        raise ConfigError(f"{exc}: pass --verifier NAME (or --selector pt / random)") from exc
    exp_id = store.get_experiment(experiment).id if experiment else None
    ids = [tasks.create_evaluation(store, s, then="self", experiment_id=exp_id, round_id=None) for s in specs]
    if not as_json:
        console.print(f"{len(ids)} evaluation(s): " + ", ".join(s.name for s in specs), highlight=False)
    embedded = in_process()
    url = store.engine.url.render_as_string(hide_password=False)
    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with EvalProgress(url, ids, enabled=not as_json and (embedded or wait)), quiet:
        for ev_id in ids:
            tasks.start_evaluation(store, ev_id)
        if embedded:  # every job ran in-process: finish what is complete
            for ev_id in ids:
                tasks.finalize_evaluation(store, ev_id)
        elif wait:
            _wait_evaluations(store, ids)
    evs = [store.get_evaluation(i) for i in ids]
    if as_json:
        print_json([_eval_dict(e) for e in evs])
        return
    print_eval_tables(evs)
    if not embedded and not wait:
        console.print("queued; run the same command again (or add --wait) to see the results", highlight=False)


def _wait_evaluations(store, ids: list[int], poll: float = 2.0) -> None:
    """Until every evaluation is finished (results written); a failed job is an error."""
    from app.errors import MucodeError
    from app.store.rollouts import Owner
    from workers import collect
    from workers.tasks import rounds as tasks

    while True:
        if all(tasks.finalize_evaluation(store, i) is not None for i in ids):
            return
        for i in ids:
            failed = collect.status(store, Owner(evaluation_id=i))["failed_jobs"]
            if failed:
                raise MucodeError(f"evaluation {store.get_evaluation(i).name}: job {failed[0]['key']} failed: "
                                  f"{failed[0]['error']} (run the same command again to resume it)")
        time.sleep(poll)


def _slug(text: str) -> str:
    tail = Path(text).name or text
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-")[:60] or "model"


class EvalProgress(RoundProgress):
    """One bar per evaluation: chains done / chains."""

    def __init__(self, database_url: str, evaluation_ids: list[int], *, enabled: bool = True) -> None:
        super().__init__(database_url, -1, enabled=enabled)
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


# -- demo ------------------------------------------------------------------------------------------------------
def demo_command(
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="Base model (pulled if it is the default)."),
    train_problems: int = typer.Option(8, "--train-problems", help="First N MBPP train problems."),
    test_problems: int = typer.Option(8, "--test-problems", help="First N MBPP test problems."),
    rollouts: int = typer.Option(4, "-M", "--rollouts", help="M rollouts per train problem."),
    turns: int = typer.Option(2, "-T", "--turns", help="T turns."),
    candidates: int = typer.Option(3, "-N", "--candidates", help="N candidates per turn (BoN)."),
    chains: int = typer.Option(1, "-C", "--chains", help="C chains per problem (BoN)."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", help="Per response (paper: 1000)."),
    stop_after_code: bool = typer.Option(
        True, "--stop-after-code/--full-responses",
        help="End responses where their code block closes (paper: full responses).",
    ),
    name: str | None = typer.Option(None, "--name", help="Experiment name (default: demo, demo-2, ...)."),
    trainer_steps: int | None = typer.Option(
        None, "--trainer-steps", help="Optimizer steps of each training (default: verifier 2, generator 3)."
    ),
) -> None:
    """One whole round on a small slice, on this machine (SQLite, jobs in-process): before/after accuracy."""
    from app.demo import DemoSettings, run_demo

    settings = DemoSettings(
        model=model, train_problems=train_problems, test_problems=test_problems, rollouts=rollouts, turns=turns,
        candidates=candidates, chains=chains, max_new_tokens=max_new_tokens, stop_after_code=stop_after_code, name=name,
        trainer_steps=trainer_steps,
    )  # fmt: skip
    run_demo(settings, console=console)
