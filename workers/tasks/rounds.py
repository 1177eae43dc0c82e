"""Round orchestration tasks: ``mucode.round_step`` (queue ``control``) and the wrapper jobs of the GPU steps.

``round_step(round_id)`` reads the round's state from the store, asks ``app.rounds.next_action`` what to do,
does it, and loops until it has to wait:

- ``collect`` and ``evaluate`` become collections (workers/collect.py) whose ``then`` is ``round_step`` again;
- ``score_old``, ``score_new`` go to the ``score`` queue as ``mucode.round_score``, ``train_verifier`` and
  ``train_generator`` to the ``train`` queue as ``mucode.round_train``: thin wrappers that run the owners'
  functions (``score_candidates``, ``run_train_verifier``, ``run_train_generator``), record the step's
  outcome, error and timing in ``rounds.steps`` and the ``jobs`` table, and queue ``round_step`` again;
- ``relabel`` is one SQL build, run here.

Idempotent everywhere: a step is started with a compare-and-set on its record (pending -> running, attempt
n+1), so two ``round_step`` messages never start it twice; a wrapper job of an older attempt (a redelivered
message after ``round resume``) finds itself superseded and does nothing; trainers and scorers are themselves
idempotent by name. A failed step records its error and the round stops there; ``resume_round`` puts the
first unfinished step back to pending, and ``round_step`` starts it again (a collection as a new generation:
finished rollouts are kept, only the missing work is queued).

``round_step(evaluation_id=...)`` finishes a standalone evaluation (``mucode eval``): its
``evaluation_results`` rows and metrics.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

from app import liveness
from app import rounds as R
from app.errors import MucodeError, NotFound, clip, first_line, is_transient
from workers.celery_app import celery_app
from workers.healing import ride_out_outages, worker_name

if TYPE_CHECKING:
    from app.store import Store
    from app.store.rollouts import Owner

log = logging.getLogger("mucode.rounds")
MAX_ITERATIONS = 64


def _store() -> Store:
    from workers.stores import worker_store

    return worker_store()


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- facts -----------------------------------------------------------------------------------------------
def load_facts(store: Store, round_id: int) -> R.RoundFacts:
    from app.protocol import ExperimentConfig

    rnd = store.get_round(int(round_id))
    exp = store.get_experiment(int(rnd.experiment_id))
    rounds = store.experiment_rounds(exp.id)
    return R.RoundFacts(
        round_id=rnd.id,
        experiment=exp.name,
        experiment_id=exp.id,
        index=rnd.index,
        config=ExperimentConfig.frozen(exp.config),
        base_model=exp.base_model,
        status=rnd.status,
        steps=dict(rnd.steps or {}),
        generator_id=rnd.generator_id,
        verifier_in_id=rnd.verifier_in_id,
        verifier_out_id=rnd.verifier_out_id,
        generator_out_id=rnd.generator_out_id,
        round_ids_upto=tuple(r.id for r in rounds if r.index <= rnd.index),
        final=bool(rnd.final),
    )


def _then(round_id: int) -> dict[str, Any]:
    return {"task": "mucode.round_step", "kwargs": {"round_id": int(round_id)}}


# -- the state machine's driver ------------------------------------------------------------------------------
def advance(store: Store, round_id: int) -> dict[str, Any]:
    """Do every action that can be done now for the round; returns where it stopped."""
    for _ in range(MAX_ITERATIONS):
        facts = load_facts(store, round_id)
        action = R.next_action(facts)
        if action.kind == "finish":
            if facts.status != "done":
                store.set_round(round_id, status="done", error=None, finished_at=_now())
                log.info("round %s/%d finished", facts.experiment, facts.index)
                _track_round(store, round_id)
            return {"round_id": round_id, "state": "done"}
        if action.kind == "blocked":
            if facts.status != "failed":
                store.set_round(round_id, status="failed", error=f"{action.step}: {action.reason}")
            return {"round_id": round_id, "state": "failed", "step": action.step, "error": action.reason}
        step = action.step
        assert step is not None
        if action.kind == "skip":
            store.update_round_step(round_id, step, expect=("pending",), state="skipped", reason=action.reason,
                                    finished_at=R.utcnow_iso())
            continue
        if action.kind == "start":
            if facts.status != "running":
                store.mark_round_started(round_id)
            if _start(store, facts, step):
                continue
            return {"round_id": round_id, "state": "running", "step": step}
        if action.kind == "check":
            if _check(store, facts, step):
                continue
            return {"round_id": round_id, "state": "running", "step": step}
        raise MucodeError(f"unknown action {action.kind!r}")
    raise MucodeError(f"round {round_id}: no progress after {MAX_ITERATIONS} actions")


def _track_round(store: Store, round_id: int) -> None:
    """The finished round's results to its experiment's tracker; a tracker that fails never fails the round."""
    from app import tracking

    try:
        out = tracking.log_round(tracking.round_facts(store, round_id))
    except Exception as exc:  # noqa: BLE001
        log.warning("round %s: results not sent to the tracker: %s", round_id, _short(exc))
        return
    if out is not None:
        log.info("round %s: %d results logged to %s (%s)", round_id, out["metrics"], out["backend"], out["where"])


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _fail(store: Store, round_id: int, step: str, attempt: int | None, error: str, *,
          seconds: float | None = None) -> None:
    fields: dict[str, Any] = {"state": "failed", "error": clip(error, 4000), "finished_at": R.utcnow_iso()}
    if seconds is not None:
        fields["seconds"] = round(seconds, 3)
    store.update_round_step(round_id, step, expect=("running",), expect_attempt=attempt, **fields)
    store.set_round(round_id, status="failed", error=f"{step}: {error.splitlines()[0] if error else ''}"[:2000],
                    finished_at=_now())


def _done(store: Store, round_id: int, step: str, attempt: int | None, result: dict[str, Any]) -> bool:
    rec = store.update_round_step(round_id, step, expect=("running",), expect_attempt=attempt, state="done",
                                  result=result, error=None, finished_at=R.utcnow_iso())
    if rec is not None:
        secs = R.step_seconds(rec)
        if secs is not None:
            store.update_round_step(round_id, step, seconds=round(secs, 3))
    return rec is not None


def _start(store: Store, facts: R.RoundFacts, step: str) -> bool:
    """Start ``step`` (pending -> running). Returns True when it finished inline (continue the loop)."""
    rid = facts.round_id
    rec = store.update_round_step(rid, step, expect=("pending",), bump_attempt=True, state="running",
                                  started_at=R.utcnow_iso(), finished_at=None, error=None, seconds=None)
    if rec is None:  # another round_step started it first
        return False
    attempt = rec.attempt
    from workers.dispatch import in_process

    if in_process():  # one process runs every step: let go of the models this step does not use
        from workers.memory import release_for_step

        release_for_step(step)
    t0 = time.perf_counter()
    try:
        if step == "collect":
            _start_collect(store, facts, attempt)
            return False
        if step == "evaluate":
            _start_evaluate(store, facts, attempt)
            return False
        if step in R.JOB_TASKS:
            _queue_job(store, facts, step, attempt)
            return False
        if step == "relabel":
            result = _run_relabel(store, facts, attempt)
            _done(store, rid, step, attempt, result)
            return True
        raise MucodeError(f"no runner for step {step!r}")
    except Exception as exc:
        if is_transient(exc):  # the database or the broker went away: start the step again once they are back
            with contextlib.suppress(Exception):
                store.update_round_step(rid, step, expect=("running",), expect_attempt=attempt, state="pending")
            raise
        log.exception("round %s/%d: starting %s failed", facts.experiment, facts.index, step)
        _fail(store, rid, step, attempt, _short(exc) + "\n" + traceback.format_exc(), seconds=time.perf_counter() - t0)
        return True  # the loop sees the failure and stops


def _check(store: Store, facts: R.RoundFacts, step: str) -> bool:
    """A running step: are its outputs complete? (True: marked done, continue.)"""
    rid = facts.round_id
    attempt = facts.record(step).attempt
    if step == "collect":
        from app.store.rollouts import Owner
        from workers import collect

        st = collect.status(store, Owner(round_id=rid))
        if st["done"]:
            return _done(store, rid, step, attempt, {"counts": st["counts"], "generation": st["generation"]})
        return False
    if step in ("score_old", "score_new"):
        vid = R.score_inputs(step, facts)
        total = store.round_candidate_count(rid)
        if total and store.round_scored_count(rid, vid) >= total:
            return _done(store, rid, step, attempt, {"verifier_id": vid, "candidates": total})
        return False
    if step == "train_verifier":
        name = R.verifier_inputs(facts)["name"]
        v = store.get_verifier(name, required=False)
        if v is not None and _verifier_complete(v["uri"]):
            store.set_round(rid, verifier_out_id=v["id"])
            return _done(store, rid, step, attempt, {"verifier_id": v["id"], "name": v["name"]})
        return False
    if step == "train_generator":
        if facts.generator_out_id is not None:
            return _done(store, rid, step, attempt, {"generator_id": facts.generator_out_id})
        return False
    if step == "relabel":  # runs inline in another round_step right now, or died with it (`round resume`)
        return False
    if step == "evaluate":
        return _check_evaluate(store, facts, attempt)
    raise MucodeError(f"no check for step {step!r}")


def _verifier_complete(uri: str) -> bool:
    from trainers.verifier.model import is_complete

    return is_complete(uri)


# -- collect ---------------------------------------------------------------------------------------------------
def _problem_ids(store: Store, datasets, limit) -> list[int]:
    from workers.collect import dataset_problem_ids

    ids: list[int] = []
    for ds, split in datasets:
        ids += dataset_problem_ids(store, ds, split, limit)
    return ids


def _start_collect(store: Store, facts: R.RoundFacts, attempt: int) -> None:
    from app.store.rollouts import Owner
    from workers import collect

    inp = R.collect_inputs(facts)
    problem_ids = _problem_ids(store, inp["datasets"], inp["limit"])
    spec = collect.CollectSpec(**inp["spec"], then=_then(facts.round_id))
    owner = Owner(round_id=facts.round_id)
    created = collect.create_collection(store, owner, problem_ids, spec, generator_id=inp["generator_id"])
    store.update_round_step(facts.round_id, "collect", result={
        "problems": len(problem_ids), "rollouts": created["rollouts"], "generator_id": inp["generator_id"]})
    collect.start(store, owner)  # = resume: a new generation that queues only batches with active rollouts


# -- score and train: wrapper jobs on the GPU queues ------------------------------------------------------------
def _queue_job(store: Store, facts: R.RoundFacts, step: str, attempt: int) -> None:
    from workers.celery_app import TASK_QUEUES
    from workers.dispatch import in_process, submit

    task = R.JOB_TASKS[step]
    key = R.job_key(facts.round_id, step, attempt)
    store.record_job(key, step, TASK_QUEUES[task], {"round_id": facts.round_id, "step": step, "attempt": attempt},
                     round_id=facts.round_id)
    store.update_round_step(facts.round_id, step, job=key)
    try:
        submit(task, round_id=facts.round_id, step=step, attempt=attempt)
    except Exception as exc:
        if not in_process() and not is_transient(exc):
            store.job_failed(key, f"could not queue: {_short(exc)}")
        raise


def run_round_job(store: Store, round_id: int, step: str, attempt: int) -> dict[str, Any]:
    """The body of ``mucode.round_score`` / ``mucode.round_train``: run one attempt of a GPU step."""
    from workers.celery_app import TASK_QUEUES
    from workers.dispatch import submit

    facts = load_facts(store, round_id)
    rec = facts.record(step)
    if rec.state != "running" or rec.attempt != int(attempt):
        log.info("round %s step %s attempt %s superseded (now %s, attempt %s)", round_id, step, attempt,
                 rec.state, rec.attempt)
        return {"superseded": True, "state": rec.state, "attempt": rec.attempt}
    key = R.job_key(round_id, step, attempt)
    store.job_started(key, worker=worker_name(), kind=step, queue=TASK_QUEUES[R.JOB_TASKS[step]],
                      round_id=round_id, payload={"round_id": round_id, "step": step, "attempt": attempt})
    t0 = time.perf_counter()
    try:
        result = _RUNNERS[step](store, facts)
    except Exception as exc:
        if is_transient(exc):  # waited out and run again (workers/healing.py): not the step's failure
            raise
        log.exception("round %s/%d: %s failed", facts.experiment, facts.index, step)
        err = _short(exc)
        store.job_failed(key, err + "\n" + traceback.format_exc())
        _fail(store, round_id, step, attempt, err, seconds=time.perf_counter() - t0)
        return {"error": err}
    result["seconds"] = round(time.perf_counter() - t0, 3)
    store.job_done(key, result)
    _done(store, round_id, step, attempt, result)
    submit("mucode.round_step", round_id=round_id)
    return result


def _run_score(step: str):
    def run(store: Store, facts: R.RoundFacts) -> dict[str, Any]:
        from workers.tasks.score import score_candidates

        vid = R.score_inputs(step, facts)
        stats: dict[str, Any] = {}
        written = score_candidates(store, vid, round_id=facts.round_id, stats=stats)
        total = store.round_candidate_count(facts.round_id)
        scored = store.round_scored_count(facts.round_id, vid)
        if scored < total:
            raise MucodeError(f"{scored} of {total} candidates scored by verifier {vid} after the job")
        return {"verifier_id": vid, "candidates": total, "written": written,
                **{k: v for k, v in stats.items() if k in ("seconds", "candidates_per_s", "truncated")}}

    return run


def _run_train_verifier(store: Store, facts: R.RoundFacts) -> dict[str, Any]:
    from workers.tasks.train_verifier import run_train_verifier

    inp = R.verifier_inputs(facts)
    vid = run_train_verifier(
        store, base_model=inp["base_model"], round_ids=inp["round_ids"], protocol=inp["protocol"],
        config=inp["config"], name=inp["name"], round_id=inp["round_id"], experiment_id=inp["experiment_id"],
        progress=False,
    )  # fmt: skip
    store.set_round(facts.round_id, verifier_out_id=vid)
    v = store.get_verifier(vid)
    train = (v.get("metrics") or {}).get("train") or {}
    return {"verifier_id": vid, "name": v["name"], "training_set_id": v.get("training_set_id"),
            "pairs": train.get("examples") or train.get("pairs"), "final_loss": train.get("final_loss")}


def _run_train_generator(store: Store, facts: R.RoundFacts) -> dict[str, Any]:
    from workers.tasks.train_generator import run_train_generator

    ts_id = facts.record("relabel").result.get("training_set_id")
    if ts_id is None:
        raise MucodeError("the relabel step recorded no training set")
    inp = R.generator_inputs(facts, int(ts_id))
    out = run_train_generator(training_set=inp["training_set"], set_round_output=True, config=inp["config"],
                              store=store)
    gid = out.get("model_version_id")
    if gid is None:
        raise MucodeError(f"generator training registered no model version ({out.get('name')})")
    store.set_round(facts.round_id, generator_out_id=int(gid))
    mv = store.get_model_version(int(gid), required=False)
    metrics = dict(mv.metrics or {}) if mv is not None else {}
    return {"generator_id": int(gid), "name": out.get("name"), "training_set_id": out.get("training_set_id"),
            "train_loss": metrics.get("train_loss"), "steps": metrics.get("global_steps")}


_RUNNERS = {
    "score_old": _run_score("score_old"),
    "score_new": _run_score("score_new"),
    "train_verifier": _run_train_verifier,
    "train_generator": _run_train_generator,
}


# -- relabel (inline) -----------------------------------------------------------------------------------------
def _run_relabel(store: Store, facts: R.RoundFacts, attempt: int) -> dict[str, Any]:
    from trainers.relabel import build_training_set

    key = R.job_key(facts.round_id, "relabel", attempt)
    store.job_started(key, worker=worker_name(), kind="relabel", queue="control", round_id=facts.round_id,
                      payload={"round_id": facts.round_id, "step": "relabel", "attempt": attempt})
    try:
        ts = build_training_set(store, facts.round_id)
    except Exception as exc:
        if not is_transient(exc):
            store.job_failed(key, _short(exc) + "\n" + traceback.format_exc())
        raise
    stats = ts.get("stats") or {}
    result = {"training_set_id": ts["id"], "name": ts["name"], "examples": stats.get("examples"),
              "problems": stats.get("problems"), "trajectories": stats.get("trajectories")}
    store.job_done(key, result)
    return result


# -- evaluate -------------------------------------------------------------------------------------------------
def create_evaluation(store: Store, spec: R.EvalSpec, *, then: dict[str, Any] | str | None,
                      experiment_id: int | None, round_id: int | None) -> int:
    """Create (idempotently) the evaluation and its collection (C chains per problem). ``then="self"``: when
    the chains are done, ``round_step(evaluation_id=...)`` writes the results (a standalone evaluation)."""
    from app.store.rollouts import Owner
    from workers import collect

    problem_ids = _problem_ids(store, [(spec.dataset, spec.split)], spec.limit)
    ev_id = store.create_evaluation(spec.name, experiment_id=experiment_id, round_id=round_id,
                                    config=spec.stored_config(), **spec.evaluation_row())
    if then == "self":
        then = {"task": "mucode.round_step", "kwargs": {"evaluation_id": ev_id}}
    cspec = collect.CollectSpec(**spec.collect_spec(), then=then)
    collect.create_collection(store, Owner(evaluation_id=ev_id), problem_ids, cspec, generator_id=spec.generator_id)
    return ev_id


def start_evaluation(store: Store, evaluation_id: int, *, restart: bool = True) -> bool:
    """Queue the missing work of an unfinished evaluation: its first start (pending -> running, once even when
    two orchestrators race), or with ``restart`` also a running one (a resume: a new generation)."""
    from app.store.rollouts import Owner
    from workers import collect

    states = ("pending", "running", "failed") if restart else ("pending",)
    if not store.claim_evaluation(evaluation_id, from_states=states, to_state="running"):
        return False
    collect.start(store, Owner(evaluation_id=evaluation_id))
    return True


def finalize_evaluation(store: Store, evaluation_id: int) -> dict[str, Any] | None:
    """When every chain is done: write ``evaluation_results`` and the metrics (idempotent). None otherwise."""
    from app import evaluation as E
    from app.store.rollouts import Owner

    ev = store.get_evaluation(evaluation_id)
    if ev.status == "done" and ev.metrics:
        return dict(ev.metrics)
    owner = Owner(evaluation_id=evaluation_id)
    counts = store.collection_counts(owner)
    if not counts["rollouts"] or counts["active"]:
        return None
    picks = store.evaluation_picks(evaluation_id)
    metric = (ev.config or {}).get("metric", "first_public")  # evaluations stored before the setting: first_public
    rows = E.result_rows(picks, metric)
    n = store.write_evaluation_results(evaluation_id, rows)
    if n != len(rows):
        raise MucodeError(f"evaluation {ev.name}: {n} result rows stored for {len(rows)} picks")
    problems = store.evaluation_problem_count(evaluation_id)
    metrics = E.compute_metrics(picks, ev.max_turns, metric=metric, expected_problems=problems,
                                expected_chains=ev.num_chains)
    metrics["results"] = n
    metrics["candidates"] = counts["candidates"]
    metrics["completion_tokens"] = counts["completion_tokens"]
    store.set_evaluation_metrics(evaluation_id, metrics, status="done")
    return metrics


def _start_evaluate(store: Store, facts: R.RoundFacts, attempt: int) -> None:
    specs = R.eval_plan(facts)
    ids = []
    for spec in specs:
        ids.append(create_evaluation(store, spec, then=_then(facts.round_id), experiment_id=facts.experiment_id,
                                     round_id=facts.round_id))
    store.update_round_step(facts.round_id, "evaluate", result={"evaluations": ids})
    _advance_eval_groups(store, ids, restart=True)


def _advance_eval_groups(store: Store, ids: list[int], *, restart: bool) -> bool:
    """Evaluations run one generator at a time (a sampling worker keeps one model loaded: interleaving G0's
    and G1's chains would swap models at every batch). Finalize the finished ones; start the first group with
    unfinished evaluations (``restart``: also those already running, after a crash). True when all are done."""
    groups: dict[int, list] = {}
    for ev_id in ids:
        ev = store.get_evaluation(ev_id)
        groups.setdefault(ev.generator_id, []).append(ev)
    for evs in groups.values():
        unfinished = [ev for ev in evs if finalize_evaluation(store, ev.id) is None]
        if not unfinished:
            continue
        for ev in unfinished:
            start_evaluation(store, ev.id, restart=restart)
        return False
    return True


def _check_evaluate(store: Store, facts: R.RoundFacts, attempt: int) -> bool:
    from app.store.rollouts import Owner
    from workers import collect

    ids = facts.record("evaluate").result.get("evaluations") or []
    if not ids:
        return False
    for ev_id in ids:
        if store.get_evaluation(ev_id).status not in ("running", "failed"):
            continue
        st = collect.status(store, Owner(evaluation_id=ev_id))
        if st["failed_jobs"]:
            f = st["failed_jobs"][0]
            _fail(store, facts.round_id, "evaluate", attempt,
                  f"evaluation {ev_id}: job {f['key']} failed: {f['error']}")
            return True
    if not _advance_eval_groups(store, ids, restart=False):
        return False
    summary = {}
    for ev_id in ids:
        ev = store.get_evaluation(ev_id)
        summary[ev.name] = {"true_success": ev.metrics["true_success"], "any_success": ev.metrics["any_success"]}
    return _done(store, facts.round_id, "evaluate", attempt, {"evaluations": ids, "metrics": summary})


# -- new rounds and resume (called by the CLI) -------------------------------------------------------------------
def base_generator_id(store: Store, base_model: str) -> int:
    """The model version of the experiment's base model (a local folder is named by its absolute path)."""
    from app.model_registry import provenance, resolve_model, version_name

    uri = resolve_model(base_model)
    return store.ensure_model_version(version_name(base_model, uri), "generator", base_model, uri,
                                      config=provenance(uri))


def preflight(store: Store, config) -> None:
    """Clear errors before anything is queued: the base model resolves and every dataset is loaded."""
    from pathlib import Path

    from app.model_registry import check_model_folder, resolve_model

    uri = resolve_model(config.base_model)
    if Path(uri).is_dir():  # damaged since the experiment was created: say so before anything is queued
        check_model_folder(uri)
    for spec in [*config.train_datasets, *config.eval.datasets]:
        ds, split = R.parse_dataset(spec)
        _problem_ids(store, [(ds, split)], 1)


def create_round(store: Store, experiment_name: str, *, final: bool = False) -> int:
    """Create the experiment's next round (not queued yet) with its input models; returns its id. ``final``: the
    experiment's last round (evaluates its generator G_k with RM_k, trains no generator, none follows it)."""
    from app.protocol import ExperimentConfig

    exp = store.get_experiment(experiment_name)
    cfg = ExperimentConfig.frozen(exp.config)
    preflight(store, cfg)
    prior = [R.PriorRound(r.index, r.status, r.generator_out_id, r.verifier_out_id, final=bool(r.final))
             for r in store.experiment_rounds(exp.id)]
    try:
        plan = R.plan_next_round(prior, base_generator_id(store, exp.base_model))
    except ValueError as exc:
        raise MucodeError(str(exc)) from exc
    return store.create_round(exp.id, plan["index"], generator_id=plan["generator_id"],
                              verifier_in_id=plan["verifier_in_id"], final=final)


def queue_round(round_id: int) -> None:
    from workers.dispatch import submit

    submit("mucode.round_step", round_id=int(round_id))


def resume_round(store: Store, round_id: int) -> dict[str, Any]:
    """Put the first unfinished step back to pending (failed, or stuck after a crash) and queue the round.
    Finished steps are kept; a collection resumes as a new generation (its finished rollouts are kept)."""
    facts = load_facts(store, round_id)
    plan = R.resume_plan(facts)
    if plan is None:
        if facts.status != "done":
            store.set_round(round_id, status="done", error=None)
        return {"round_id": round_id, "resumed": None}
    step, how = plan
    if how == "retry":
        from app.store.rollouts import Owner
        from workers import collect

        rec = facts.record(step)
        if step in R.JOB_TASKS or step in R.INLINE_STEPS:  # the lost attempt's job row: no longer running
            old = store.get_job(R.job_key(round_id, step, rec.attempt))
            if old is not None:
                store.supersede_job(old.key, "the round was resumed")
        # The collections' failed jobs go to the new generation: no view may read them as the retry's state.
        owners: list[Owner] = []
        if step == "collect":
            owners = [Owner(round_id=round_id)]
        elif step == "evaluate":
            owners = [Owner(evaluation_id=i) for i in rec.result.get("evaluations") or []]
        for owner in owners:
            collect.supersede_failed(store, owner, "the round was resumed")
        store.update_round_step(round_id, step, expect=("running", "failed"), state="pending", retried=True)
    store.mark_round_started(round_id)
    queue_round(round_id)
    return {"round_id": round_id, "resumed": step, "how": how}


# -- status ------------------------------------------------------------------------------------------------------
def queue_depths(timeout: float = 2.0) -> dict[str, Any] | None:
    """Messages waiting per queue on the broker (None in embedded mode)."""
    from workers.dispatch import in_process

    if in_process():
        return None
    from workers.celery_app import QUEUES, celery_app

    out: dict[str, Any] = {}
    try:
        with celery_app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            ch = conn.default_channel
            for q in QUEUES:
                try:
                    out[q] = int(ch.queue_declare(queue=q, passive=True).message_count)
                except Exception:  # noqa: BLE001 -- a queue nobody declared yet holds nothing
                    out[q] = 0
    except Exception as exc:  # noqa: BLE001
        return {"error": _short(exc)}
    return out


def _model_name(store: Store, mid: int | None) -> str | None:
    if mid is None:
        return None
    try:
        return store.get_model_version(int(mid)).name
    except NotFound:  # deleted since: show its id
        return f"#{mid}"


def _collection_status(store: Store, row: dict[str, Any], rec: R.StepRecord, owner: Owner,
                       failed_jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A collection's status for a step's row (None when it is not created yet). A running step whose
    collection has a job failed for good shows failed, with that job's error; its failed jobs join
    ``failed_jobs``."""
    from workers import collect

    try:
        st = collect.status(store, owner)
    except Exception:  # noqa: BLE001 -- not created yet
        return None
    if rec.state == "running" and st["failed_jobs"]:
        row["state"] = "failed"
        row["error"] = f"job {st['failed_jobs'][0]['key']}: {st['failed_jobs'][0]['error']}"
    failed_jobs += st["failed_jobs"]
    return st


def _step_row(store: Store, facts: R.RoundFacts, round_id: int, step: str, shown: str,
              failed_jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """One step of `mucode round status`: state, attempt, timing, error, progress and a line of detail."""
    from app.store.rollouts import Owner

    rec = facts.record(step)
    row: dict[str, Any] = {
        "step": step, "state": shown, "attempt": rec.attempt, "queue": R.STEP_QUEUES[step],
        "started_at": rec.started_at, "finished_at": rec.finished_at,
        "seconds": rec.seconds if rec.seconds is not None else R.step_seconds(rec),
        "error": rec.error, "reason": rec.reason or (R.skip_reason(step, facts) if shown == "skipped" else None),
        "result": dict(rec.result), "progress": None, "info": "",
    }
    res = rec.result
    if step == "collect" and rec.state != "pending":
        st = _collection_status(store, row, rec, Owner(round_id=round_id), failed_jobs)
        if st is not None:
            c = st["counts"]
            row["progress"] = {"done": c["done"], "total": c["rollouts"], "unit": "rollouts"}
            row["info"] = (f"{c['candidates']} candidates ({c['executed']} executed), solved "
                           f"{c['solved']}/{c['done']}, {c['completion_tokens']} tokens")
            row["counts"] = c
    elif step in ("score_old", "score_new") and shown not in ("skipped", "pending"):
        vid = facts.verifier_in_id if step == "score_old" else facts.verifier_out_id
        total = store.round_candidate_count(round_id)
        done = store.round_scored_count(round_id, vid) if vid is not None else 0
        row["progress"] = {"done": done, "total": total, "unit": "candidates"}
        row["info"] = f"verifier {_model_name(store, vid)}" if vid is not None else ""
    elif step in ("train_verifier", "train_generator") and rec.state != "pending":
        if step == "train_verifier" and res:
            row["info"] = f"{res.get('name')} (loss {_num(res.get('final_loss'))})"
        elif res:
            row["info"] = f"{res.get('name')} (loss {_num(res.get('train_loss'))}, {res.get('steps')} steps)"
        elif rec.job:
            job = store.get_job(rec.job)
            if job is not None:
                row["info"] = f"job {job.state}" + (f" on {job.worker}" if job.worker else "")
    elif step == "relabel" and res:
        row["info"] = f"{res.get('examples')} examples from {res.get('problems')} problems"
    elif step == "evaluate" and rec.state != "pending":
        ids = res.get("evaluations") or []
        done = total = 0
        for ev_id in ids:
            owner = Owner(evaluation_id=ev_id)
            c = store.collection_counts(owner)
            done += c["done"]
            total += c["rollouts"]
            _collection_status(store, row, rec, owner, failed_jobs)
        row["progress"] = {"done": done, "total": total, "unit": "chains"}
        row["info"] = f"{len(ids)} evaluations" + _pairs_text(store.evaluation_pairs(ids).values())
    elif step == "evaluate" and shown == "pending":
        pairs = (f"G{j} with RM{facts.index}" for j, _ in R.eval_generators(facts))
        row["info"] = "will search " + ", ".join(pairs)
    return row


def _failed_step_jobs(store: Store, facts: R.RoundFacts, round_id: int,
                      known: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The failed wrapper jobs of the round's steps (``round/...``) not already in ``known``, for the latest
    attempt of a step that is failed."""
    out = []
    for j in store.list_jobs(round_id=round_id, states=("failed",)):
        if j.key.startswith("round/") and not any(f["key"] == j.key for f in known):
            latest = facts.record(j.key.split("/")[2])
            if f"a{latest.attempt}" == j.key.rsplit("/", 1)[-1] and latest.state == "failed":
                out.append({"key": j.key, "error": first_line(j.error)})
    return out


def _elapsed(rnd) -> float | None:
    """Seconds from the round's start to its end (or now); None before it starts."""
    from datetime import UTC

    if rnd.started_at is None:
        return None
    end = rnd.finished_at or _now()
    start = rnd.started_at if rnd.started_at.tzinfo else rnd.started_at.replace(tzinfo=UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    return max(0.0, (end - start).total_seconds())


def round_status(store: Store, round_id: int, *, queues: bool = False) -> dict[str, Any]:
    """Everything `mucode round status` shows: each step (state, attempt, timing, error, progress), models,
    job counts, failed jobs, queue depths and the round's evaluations."""
    from workers.dispatch import in_process

    facts = load_facts(store, round_id)
    rnd = store.get_round(round_id)
    failed_jobs: list[dict[str, Any]] = []
    steps = [_step_row(store, facts, round_id, step, shown, failed_jobs) for step, shown in R.progress(facts)]
    failed_step = next((row["step"] for row in steps if row["state"] == "failed"), None)
    failed_jobs += _failed_step_jobs(store, facts, round_id, failed_jobs)
    status = rnd.status
    if status == "running" and failed_step is not None:
        status = "failed"
    stalled = _stalled(store, round_id) if status == "running" and queues and not in_process() else None
    evaluations = store.round_evaluations(round_id)
    pairs = store.evaluation_pairs([e.id for e in evaluations])
    error = rnd.error
    if failed_step is not None and not error:
        error = next((s["error"] for s in steps if s["step"] == failed_step), None)
    return {
        "round_id": round_id,
        "experiment": facts.experiment,
        "index": facts.index,
        "method": facts.method,
        "status": status,
        "final": facts.final,
        "verifier_pairing": facts.config.eval.verifier_pairing,
        "error": error,
        "failed_step": failed_step,
        "started_at": rnd.started_at,
        "finished_at": rnd.finished_at,
        "seconds": _elapsed(rnd),
        "models": {
            "generator": _model_name(store, facts.generator_id),
            "verifier_in": _model_name(store, facts.verifier_in_id),
            "verifier_out": _model_name(store, facts.verifier_out_id),
            "generator_out": _model_name(store, facts.generator_out_id),
        },
        "steps": steps,
        "jobs": store.job_counts(round_id=round_id),
        "failed_jobs": failed_jobs,
        "stalled": stalled,
        "queues": queue_depths() if queues else None,
        "embedded": in_process(),
        "evaluations": [
            {"id": e.id, "name": e.name, "status": e.status, "true_success": (e.metrics or {}).get("true_success"),
             **pairs.get(e.id, {})}
            for e in evaluations
        ],
    }


def _stalled(store: Store, round_id: int) -> str | None:
    """Why the round cannot move on by itself (work lost with a worker or a broker), as the healer sees it now;
    None when it can, or when the broker cannot tell."""
    from app.config import get_settings
    from workers.healer import inspect, observe

    settings = get_settings()
    if not (settings.broker_url or "").startswith(("redis://", "rediss://", "unix://")):
        return None  # only a Redis broker carries the workers' heartbeats
    try:
        flight = observe(settings.broker_url)
    except Exception:  # noqa: BLE001 - the broker is down: the queues line says so
        return None
    found = inspect(store, flight, grace=max(settings.healer_grace_s, 3 * settings.heartbeat_s),
                    only=("round", round_id))
    return next((f.reason for f in found if f.reason), None)


def _pairs_text(pairs) -> str:
    """``: G1 with RM1`` -- the distinct (generator, verifier) pairs of a round's evaluations."""
    seen = list(dict.fromkeys((p["generator"], p["verifier"]) for p in pairs))
    return (": " + ", ".join(f"{g} with {v}" if v else g for g, v in seen)) if seen else ""


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else str(x)




# -- tasks -----------------------------------------------------------------------------------------------------
@celery_app.task(name="mucode.round_step")
@ride_out_outages
def round_step(round_id: int | None = None, evaluation_id: int | None = None) -> dict[str, Any]:
    store = _store()
    if evaluation_id is not None:
        liveness.started(f"evaluation/{evaluation_id}/step", evaluation_id=int(evaluation_id))
        try:
            metrics = finalize_evaluation(store, int(evaluation_id))
        finally:
            liveness.finished(f"evaluation/{evaluation_id}/step")
        return {"evaluation_id": evaluation_id, "done": metrics is not None}
    if round_id is None:
        raise MucodeError("round_step needs round_id or evaluation_id")
    liveness.started(f"round/{round_id}/step", round_id=int(round_id))  # the healer leaves the round alone
    try:
        return advance(store, int(round_id))
    finally:
        liveness.finished(f"round/{round_id}/step")


@celery_app.task(name="mucode.round_score")
@ride_out_outages
def round_score(round_id: int, step: str, attempt: int) -> dict[str, Any]:
    liveness.started(R.job_key(int(round_id), step, int(attempt)), round_id=int(round_id))
    return run_round_job(_store(), int(round_id), step, int(attempt))


@celery_app.task(name="mucode.round_train")
@ride_out_outages
def round_train(round_id: int, step: str, attempt: int) -> dict[str, Any]:
    liveness.started(R.job_key(int(round_id), step, int(attempt)), round_id=int(round_id))
    return run_round_job(_store(), int(round_id), step, int(attempt))
