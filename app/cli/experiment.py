"""CLI: ``mucode experiment create|list|show``, ``mucode round run|status|resume``, ``mucode eval``, ``mucode demo``.

An experiment freezes its whole configuration (``app.protocol.ExperimentConfig``: every protocol default,
sizes, datasets, backend) at creation. ``round run`` queues the next round of expert iteration as
jobs (``workers/tasks/rounds.py``); with a broker it returns once queued (``--wait`` follows it), without one
(the embedded default) it runs every job here, with progress bars. What the commands do lives in
``app/experiments.py`` and what they print in ``app/display.py``; here are the options, the output choices
(tables or ``--json``) and the exit codes. Workers and trainers are imported inside the commands only.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import typer

from app import display, experiments
from app.cli.common import console, get_store, print_json

experiment_app = typer.Typer(help="Experiments: a method, a base model and a frozen protocol.", no_args_is_help=True)
round_app = typer.Typer(help="Expert-iteration rounds: run, follow, resume.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(experiment_app, name="experiment")
    root.add_typer(round_app, name="round")
    root.command("eval")(eval_command)
    root.command("demo")(demo_command)


# -- experiment ---------------------------------------------------------------------------------------------
@experiment_app.command("create")
def experiment_create(
    name: str = typer.Argument(..., help="Experiment name (letters, digits, . _ -)."),
    method: str | None = typer.Option(None, "--method", help="mucode (default) | multi_rft | rft | rft_lv."),
    base_model: str | None = typer.Option(None, "--base-model", help="Hub name, local folder or pulled name."),
    config_file: Path | None = typer.Option(
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

    overrides = experiments.read_config_file(config_file) if config_file else {}
    cfg = experiments.build_config(method, base_model, overrides, preset)
    uri = resolve_model(cfg.base_model)  # a missing model is an error now, not in a worker later
    if Path(uri).is_dir():  # so is a broken folder; a hub name not pulled yet is downloaded where it is loaded
        check_model_folder(uri)
    store = get_store()
    eid, created = experiments.create_experiment(store, name, cfg)
    if as_json:
        print_json({"id": eid, "name": name, "created": created, "preset": closest_preset(cfg)[0],
                    "config": cfg.model_dump(mode="json")})
        return
    verb = "created" if created else "exists (same config)"
    console.print(f"experiment [bold]{name}[/] {verb}: method {cfg.method}, base model {cfg.base_model}",
                  highlight=False)
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
        f"{display.METRIC_NAMES[e.greedy_metric]}), BoN N={e.bon_candidates} C={e.bon_chains} selectors "
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
    rows = get_store().list_experiments()
    if as_json:
        print_json(rows)
        return
    display.print_experiments(console, rows)


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
        display.print_round_status(console, st, brief=True)
    print_eval_tables(evals, pairs=store.evaluation_pairs([e.id for e in evals]))



# -- round ---------------------------------------------------------------------------------------------------
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

    check_broker()
    store = get_store()
    rid = experiments.create_round(store, name, final=final)
    rnd = store.get_round(rid)
    if not as_json:
        console.print(f"{'final ' if final else ''}round {rnd.index} of [bold]{name}[/] (id {rid})",
                      highlight=False)
    run_round(store, rid, wait=wait, as_json=as_json)


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

    check_broker()
    store = get_store()
    rnd = experiments.latest_round(store, name, index)
    if not as_json:
        console.print(f"resuming round {rnd.index} of [bold]{name}[/] (id {rnd.id})", highlight=False)
    run_round(store, rnd.id, resume=True, wait=wait, as_json=as_json)


@round_app.command("status")
def round_status_cmd(
    name: str = typer.Argument(..., help="The experiment."),
    index: int | None = typer.Option(None, "--round", help="Round index (default: the latest)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Each step (state, attempt, timing, error), counts, jobs, queue depths, failures and evaluations."""
    from workers.tasks.rounds import round_status

    store = get_store()
    rnd = experiments.latest_round(store, name, index)
    st = round_status(store, rnd.id, queues=True)
    if as_json:
        print_json(st)
        return
    display.print_round_status(console, st)
    evs = store.round_evaluations(rnd.id)
    print_eval_tables(evs, pairs=store.evaluation_pairs([e.id for e in evs]))


def run_round(store, round_id: int, *, resume: bool = False, wait: bool = False,
              as_json: bool = False) -> dict[str, Any]:
    """``experiments.drive_round`` as the commands show it: progress bars while it runs here (or is followed),
    then its status and its evaluations' tables (or the status as JSON). A failed round is reported and exits
    1."""
    from workers.dispatch import in_process
    from workers.tasks.rounds import round_status

    embedded = in_process()
    url = store.engine.url.render_as_string(hide_password=False)
    shown = not as_json and (embedded or wait)
    progress = display.RoundProgress(url, round_id, console=console, enabled=shown)
    try:
        # With --json, stdout is the JSON document only: in-process trainers' prints go to stderr.
        st = experiments.drive_round(store, round_id, resume=resume, wait=wait, progress=progress,
                                     jobs_stdout=sys.stderr if as_json else None)
    except experiments.RoundFailed as exc:
        _show_round(store, exc.status, as_json=as_json, tables=embedded or wait)
        if not as_json:
            display.print_round_failure(console, exc.status)
        raise typer.Exit(1) from None
    except Exception:
        # Not recorded by the round (e.g. the broker went away): show where the round stands, then the error.
        with contextlib.suppress(Exception):
            _show_round(store, round_status(store, round_id, queues=not embedded), as_json=as_json,
                        tables=embedded or wait)
        raise
    _show_round(store, st, as_json=as_json, tables=st["status"] == "done" or embedded or wait)
    if not embedded and not wait and not as_json:
        console.print(f"queued; follow it with: mucode round status {st['experiment']} (or --wait)",
                      highlight=False)
    return st


def _show_round(store, st: dict[str, Any], *, as_json: bool, tables: bool) -> None:
    if as_json:
        print_json(st)
        return
    display.print_round_status(console, st)
    if tables:
        evs = store.round_evaluations(st["round_id"])
        print_eval_tables(evs, pairs=store.evaluation_pairs([e.id for e in evs]))


def print_eval_tables(evaluations, *, title: str | None = None, pairs: dict[int, dict] | None = None) -> None:
    """The paper's tables (``app.display.print_eval_tables``) on the CLI's console."""
    display.print_eval_tables(console, evaluations, title=title, pairs=pairs)


def _eval_dict(ev) -> dict[str, Any]:
    return {"id": ev.id, "name": ev.name, "dataset": ev.dataset, "split": ev.split, "mode": ev.mode,
            "selector": ev.selector, "num_candidates": ev.num_candidates, "num_chains": ev.num_chains,
            "max_turns": ev.max_turns, "status": ev.status, "metrics": ev.metrics, "round_id": ev.round_id,
            "generator_id": ev.generator_id, "verifier_id": ev.verifier_id}


# -- eval ------------------------------------------------------------------------------------------------------
def eval_command(
    model: str | None = typer.Option(None, "--model", "-m", help="Generator: model folder, pulled or hub name."),
    experiment: str | None = typer.Option(None, "--experiment", "-e", help="Evaluate this experiment's round."),
    round_index: int | None = typer.Option(None, "--round", help="With --experiment: round K (default latest)."),
    which: str | None = typer.Option(None, "--generator", help="With --experiment: 'in' = G_K, 'out' = G_{K+1} "
                                     "(default: as the experiment's eval.verifier_pairing pairs RM_K: same_round "
                                     "G_K, previous_round G_{K+1})."),
    verifier: str | None = typer.Option(None, "--verifier", help="Verifier (name or id) for lv and pt+lv."),
    datasets: list[str] = typer.Option(None, "--dataset", "-d", help="DATASET[:SPLIT]; repeat. "
                                       "Default mbpp:test, humaneval:test (or the experiment's)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N problems of each dataset."),
    turns: int | None = typer.Option(None, "-T", "--turns", min=1, help="T turns per chain (default 3)."),
    greedy: bool | None = typer.Option(None, "--greedy/--no-greedy", help="Greedy multi-turn (temperature 0)."),
    selectors: list[str] = typer.Option(
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
    from workers.dispatch import check_broker, in_process

    check_broker()
    store = get_store()
    req = experiments.EvalRequest(
        model=model, experiment=experiment, round_index=round_index, which=which, verifier=verifier,
        preset=preset, name=name, datasets=datasets, limit=limit, turns=turns, greedy=greedy,
        selectors=selectors, candidates=candidates, chains=chains, temperature=temperature,
        max_new_tokens=max_new_tokens, batch_size=batch_size, backend=backend, seed=seed, prelude=prelude,
    )  # fmt: skip
    plan = experiments.plan_evaluations(store, req)
    ids = experiments.create_evaluations(store, plan)
    if not as_json:
        console.print(f"{len(ids)} evaluation(s): " + ", ".join(s.name for s in plan.specs), highlight=False)
    embedded = in_process()
    url = store.engine.url.render_as_string(hide_password=False)
    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with display.EvalProgress(url, ids, console=console, enabled=not as_json and (embedded or wait)), quiet:
        evs = experiments.run_evaluations(store, ids, wait=wait)
    if as_json:
        print_json([_eval_dict(e) for e in evs])
        return
    print_eval_tables(evs)
    if not embedded and not wait:
        console.print("queued; run the same command again (or add --wait) to see the results", highlight=False)


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
    from app.experiments import RoundFailed

    settings = DemoSettings(
        model=model, train_problems=train_problems, test_problems=test_problems, rollouts=rollouts, turns=turns,
        candidates=candidates, chains=chains, max_new_tokens=max_new_tokens, stop_after_code=stop_after_code, name=name,
        trainer_steps=trainer_steps,
    )  # fmt: skip
    try:
        run_demo(settings, console=console)
    except RoundFailed:  # the demo has said where it stopped and how to go on
        raise typer.Exit(1) from None
