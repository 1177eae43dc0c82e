"""CLI: ``mucode rollouts collect|resume|status`` -- a standalone rollout collection.

A standalone collection is stored as an ``evaluations`` row with mode ``collect`` (its rollouts hang off that
evaluation, so they never enter a round's training tables); rounds and evaluations run the same pipeline
(workers/collect.py) for their own rollouts. With a broker configured (``MUCODE_BROKER_URL``) the jobs go to
the ``sample`` and ``execute`` workers and ``collect`` returns once they are queued (``--wait`` follows
progress until the end); without one, the command runs every job in-process and returns when done.
"""

from __future__ import annotations

import typer

from app.cli.common import console, get_store, print_json

app = typer.Typer(
    help="Collect multi-turn rollouts (sample -> execute -> feedback -> next turn).", no_args_is_help=True
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="rollouts")


def _collection(store, name: str):
    from app.store.rollouts import Owner

    ev = store.get_evaluation(name)
    return ev, Owner(evaluation_id=ev.id)


def _print_status(st: dict, as_json: bool) -> None:
    if as_json:
        print_json(st)
        return
    c = st["counts"]
    spec = st["spec"]
    state = "done" if st["done"] else st["state"]
    console.print(
        f"[bold]{st.get('name', '')}[/] {state} (generation {st['generation']}): "
        f"{c['done']}/{c['rollouts']} rollouts done, {c['active']} active; "
        f"turns {c['turns']}, candidates {c['candidates']} ({c['executed']} executed), "
        f"{c['completion_tokens']} completion tokens",
        highlight=False,
    )
    if c["done"]:
        console.print(
            f"  solved (private) {c['solved']}/{c['done']}, public pass {c['public_passed']}/{c['done']}; "
            f"finished after k turns: {c['done_by_turns']} (T={spec['turns']}, M={spec['samples_per_problem']}, "
            f"N={spec['candidates']})",
            highlight=False,
        )
    jobs = ", ".join(
        f"{k}: " + " ".join(f"{s}={n}" for s, n in v.items()) for k, v in sorted(st["jobs"].items())
    )
    if jobs:
        console.print(f"  jobs: {jobs}", highlight=False)
    for f in st["failed_jobs"]:
        console.print(f"  [red]failed[/] {f['key']}: {f['error']}", highlight=False)


@app.command()
def collect(
    model: str = typer.Option(
        ..., "--model", "-m", help="Generator: a model folder, a pulled name or a hub name."
    ),
    dataset: str = typer.Option("mbpp:train", "--dataset", "-d", help="DATASET[:SPLIT], e.g. mbpp:train."),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="Only the first N problems (by external id order)."
    ),
    rollouts: int = typer.Option(4, "-M", "--rollouts", min=1, help="M: rollouts per problem."),
    turns: int = typer.Option(3, "-T", "--turns", min=1, help="T: turns per rollout."),
    candidates: int = typer.Option(
        1, "-N", "--candidates", min=1, help="N: candidates per turn (needs --selector)."
    ),
    selector: str = typer.Option("first", "--selector", help="first | random | pt | lv | pt+lv | oracle."),
    verifier: str | None = typer.Option(
        None, "--verifier", help="Verifier version (name or id) for lv, pt+lv."
    ),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="In (0, 1]."),
    max_new_tokens: int = typer.Option(1000, "--max-new-tokens", min=1),
    stop_after_code: bool = typer.Option(
        False, "--stop-after-code", help="End a response where its first code block closes."
    ),
    stop_rule: str = typer.Option("public", "--stop-rule", help="public | public_and_private."),
    prelude: bool = typer.Option(
        True, "--prelude/--no-prelude",
        help="Run the reference's 16 import lines (math, re, numpy as np, typing *, ...) before every program.",
    ),
    shown_tests: str = typer.Option(
        "all", "--shown-tests",
        help="all | first: show and check every public test (MBPP train: 3 asserts) or only the first.",
    ),
    batch_size: int = typer.Option(
        32, "--batch-size", min=1, help="Rollouts per batch (one backend call per turn)."
    ),
    backend: str = typer.Option(
        "transformers", "--backend",
        help="transformers | vllm | server (an OpenAI-compatible server at MUCODE_SERVER_URL, e.g. vllm serve).",
    ),
    seed: int = typer.Option(0, "--seed"),
    name: str | None = typer.Option(None, "--name", help="Name of the collection (default: derived)."),
    wait: bool = typer.Option(
        False, "--wait", help="With a broker: follow progress until every rollout is done."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the final status as JSON."),
) -> None:
    """Create a collection (problem x M rollouts) and queue it; in embedded mode it runs to the end here."""
    from app.model_registry import resolve_model
    from app.rounds import parse_dataset
    from workers import collect as pipeline
    from workers.dispatch import check_broker, in_process

    check_broker()  # an unreachable broker is an error before anything is written
    uri = resolve_model(model)  # a missing model is an error before anything is written
    store = get_store()
    verifier_id = None
    if verifier is not None:
        verifier_id = store.get_model_version(int(verifier) if verifier.isdigit() else verifier).id
    spec = _collect_spec(
        backend=backend, turns=turns, samples_per_problem=rollouts, candidates=candidates, selector=selector,
        verifier_id=verifier_id, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        stop_after_code=stop_after_code, stop_rule=stop_rule, batch_size=batch_size, seed=seed,
        import_prelude=prelude, shown_tests=shown_tests,
    )  # fmt: skip
    ds_name, split = parse_dataset(dataset)
    problem_ids = pipeline.dataset_problem_ids(store, ds_name, split, limit)
    name = (
        name
        or f"collect-{ds_name}{'-' + split if split else ''}-{len(problem_ids)}x{rollouts}-T{turns}-s{seed}"
    )
    owner, created = _create_collection(store, name, model, uri, (ds_name, split), problem_ids, spec)
    if not as_json:
        console.print(
            f"collection [bold]{name}[/]: {created['rollouts']} rollouts ({len(problem_ids)} problems x "
            f"{rollouts}), {created['created']} new; model {uri}",
            highlight=False,
        )
    queued = pipeline.start(store, owner)
    if not in_process() and not as_json:
        console.print(f"queued {queued['queued_batches']} batches (generation {queued['generation']})")
    _follow(store, owner, name, wait=wait, as_json=as_json)


def _collect_spec(**fields):
    """The collection's ``CollectSpec``; invalid settings are a ConfigError naming each problem."""
    from pydantic import ValidationError

    from app.errors import ConfigError
    from workers.collect import CollectSpec

    try:
        return CollectSpec(**fields)
    except ValidationError as exc:
        raise ConfigError(
            "invalid collection settings: " + "; ".join(e["msg"] for e in exc.errors())
        ) from exc


def _create_collection(store, name: str, model: str, uri: str, dataset: tuple[str, str | None],
                       problem_ids: list[int], spec):
    """The collection's evaluation row (mode ``collect``) and its rollouts: (owner, what was created). A
    name that belongs to another kind of evaluation is an error."""
    from app.errors import ConfigError
    from app.model_registry import provenance, version_name
    from app.store.rollouts import Owner
    from workers import collect as pipeline

    generator_id = store.ensure_model_version(version_name(model, uri), "generator", model, uri,
                                              config=provenance(uri))
    existing = store.find_evaluation(name)
    if existing is not None and existing.mode != "collect":
        raise ConfigError(f"{name!r} is the name of a {existing.mode} evaluation, not of a collection")
    ev_id = store.create_evaluation(
        name, generator_id=generator_id, dataset=dataset[0], split=dataset[1], mode="collect",
        selector=spec.selector, verifier_id=spec.verifier_id, num_candidates=spec.candidates,
        num_chains=spec.samples_per_problem, max_turns=spec.turns, config=spec.model_dump(mode="json"),
    )  # fmt: skip
    owner = Owner(evaluation_id=ev_id)
    return owner, pipeline.create_collection(store, owner, problem_ids, spec, generator_id=generator_id)


def _follow(store, owner, name: str, *, wait: bool, as_json: bool) -> None:
    """With a broker and ``wait``: until every rollout is done. Then the collection's status."""
    from workers import collect as pipeline
    from workers.dispatch import in_process

    if wait and not in_process():
        pipeline.wait(store, owner, timeout=7 * 24 * 3600, poll=2.0)
    st = pipeline.status(store, owner)
    st["name"] = name
    _print_status(st, as_json)


@app.command()
def resume(
    name: str = typer.Argument(..., help="The collection's name."),
    wait: bool = typer.Option(
        False, "--wait", help="With a broker: follow progress until every rollout is done."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Queue exactly the missing work of a collection (after a crash, a killed worker, a failed job)."""
    from workers import collect as pipeline
    from workers.dispatch import check_broker

    check_broker()
    store = get_store()
    _, owner = _collection(store, name)
    queued = pipeline.resume(store, owner)
    if not as_json:
        console.print(
            f"resumed {name}: {queued['queued_batches']} batches queued (generation {queued['generation']})",
            highlight=False,
        )
    _follow(store, owner, name, wait=wait, as_json=as_json)


@app.command()
def status(
    name: str = typer.Argument(..., help="The collection's name."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Progress of a collection: rollouts, turns, candidates, executions, tokens, jobs and their errors."""
    from workers import collect as pipeline

    store = get_store()
    _, owner = _collection(store, name)
    st = pipeline.status(store, owner)
    st["name"] = name
    _print_status(st, as_json)
