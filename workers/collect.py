"""The collection pipeline: rollouts of a round or an evaluation, pipelined per batch (docs/design.md).

Shape. A *collection* is every rollout of one owner (a round, or an evaluation: greedy/BoN chains or a
standalone ``mucode rollouts collect``). ``create_collection`` writes the rollouts (problem x M, a seed each)
and a ``collect/<owner>`` job row whose payload is the frozen ``CollectSpec``. The rollouts are cut into
fixed batches (consecutive chunks of ``batch_size`` in (problem, sample index) order), and each batch is an
independent chain of jobs::

    sample(batch) -> execute(candidates) [-> score(candidates)] -> sample(batch) -> ... until no rollout is active

``sample`` is the *advance* step (``advance_batch``), and it derives everything from the store:

1. every active rollout whose last turn is fully executed (and scored, when the selector needs scores) gets its
   pick (``app.selection``), the pick's public feedback on the turn, and then either finishes (stop rule or T
   reached: ``final_label`` = the pick's private verdict) or gets turn t+1 with the exact messages
   (``append_turn`` of turn t's messages) -- one transaction for the whole batch;
2. every open turn without candidates is sampled in ONE backend call (one seed per rollout and turn,
   ``turn_seed(rollout.seed, t)``), and the N candidates per turn are written in one batch (code extracted,
   code hash), ``chosen`` already true when N = 1;
3. the successor is queued: ``mucode.execute`` for every candidate still without verdicts (with ``then`` =
   score, when needed, then this batch's next ``sample``), or ``mucode.score`` for executed but unscored ones;
   a batch with no active rollout left checks whether the whole collection is done.

Because each step reads its inputs from the store and writes with natural keys, a redelivered or repeated job
changes nothing: sampled candidates are never sampled again (a crash between sample and execute re-queues
only the execution), and executions are cached per code. Batches are never synchronised with each other, so
with several batches in flight the sampling worker always has a queued job while the sandbox executes
another batch.

Resume. ``resume`` increments the collection's *generation* (the ``attempts`` of its ``collect/`` job) and
queues a ``sample`` job for every batch that still has active rollouts. A job carries the generation it was
queued in; a job of an older generation finds it superseded and returns at once, so chains that survived the
crash stop at their next step instead of running twice beside the new ones. ``start`` is the first ``resume``.

Jobs. Every sample, execute and score job is recorded in the ``jobs`` table under a deterministic key
``collect/<owner>/g<generation>/b<batch>/<kind>/t<turn>``: state, attempts, worker, timings, error.
With no broker configured, ``workers.dispatch.submit`` runs the same tasks in-process (a FIFO), so the embedded
mode runs exactly this code.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.errors import ConfigError, MucodeError, NotFound, clip, first_line, is_transient
from app.store.rollouts import Owner, RolloutState
from workers.healing import worker_name

if TYPE_CHECKING:
    from app.store import Store

log = logging.getLogger("mucode.collect")

SEED_MASK = (1 << 63) - 1
MAX_RESUBMITS = 3  # the same execute/score step queued again this many times in a generation -> failed


class CollectError(MucodeError):
    pass


# What a collection created before a setting existed did (its stored spec lacks the field).
LEGACY_SPEC: dict[str, Any] = {"import_prelude": False, "shown_tests": "all"}


class CollectSpec(BaseModel):
    """Everything that decides what a collection does; frozen into its ``collect/`` job at creation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["transformers", "vllm", "server"] = "transformers"
    turns: int = Field(3, ge=1, description="T: turns per trajectory / chain")
    samples_per_problem: int = Field(1, ge=1, description="M rollouts (or C chains) per problem")
    candidates: int = Field(1, ge=1, description="N candidates per turn (Best-of-N)")
    selector: Literal["first", "random", "lv", "pt", "pt+lv", "oracle"] = "first"
    verifier_id: int | None = None  # scores for the lv and pt+lv selectors
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(1000, gt=0)
    stop_after_code: bool = False  # end a response where its first code block closes
    stop_rule: Literal["public", "public_and_private"] = "public"
    batch_size: int = Field(32, ge=1, description="rollouts per batch (one backend call per turn)")
    seed: int = 0
    # The harness (app.harness): the reference's import prelude before every program; "first" shows and checks
    # only a problem's first public test (MBPP train shows all 3 in the reference, the test split 1).
    import_prelude: bool = True
    shown_tests: Literal["all", "first"] = "all"
    # Queued once when the whole collection is done, e.g. {"task": "mucode.round_step", "kwargs": {...}}.
    then: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> CollectSpec:
        from app.selection import needs_scores

        if self.candidates > 1 and self.selector == "first":
            raise ValueError("N > 1 candidates per turn needs a selector (random, lv, pt, pt+lv or oracle)")
        if needs_scores(self.selector) and self.verifier_id is None:
            raise ValueError(f"the {self.selector} selector needs a verifier (verifier_id)")
        if self.then is not None and "task" not in self.then:
            raise ValueError("then must be {'task': name, 'kwargs': {...}}")
        return self

    @classmethod
    def stored(cls, data: dict[str, Any]) -> CollectSpec:
        """The spec of a collection as stored: a setting added since it was created takes its legacy value
        (``LEGACY_SPEC``), so resuming it never changes how it runs."""
        return cls(**{**LEGACY_SPEC, **data})

    @property
    def harness(self):
        from app.harness import Harness

        return Harness(import_prelude=self.import_prelude, shown_tests=self.shown_tests)

    @classmethod
    def from_rollout_config(cls, rollout: Any, *, backend: str = "transformers", **extra: Any) -> CollectSpec:
        """The spec of a training collection from an experiment's ``RolloutConfig``."""
        return cls(
            backend=backend,
            turns=rollout.turns,
            samples_per_problem=rollout.rollouts_per_problem,
            stop_rule=rollout.stop_rule,
            temperature=rollout.sampling.temperature,
            top_p=rollout.sampling.top_p,
            max_new_tokens=rollout.sampling.max_new_tokens,
            stop_after_code=rollout.sampling.stop_after_code,
            batch_size=rollout.batch_size,
            seed=rollout.seed,
            shown_tests=rollout.train_shown_tests,
            **extra,
        )

    @property
    def scored(self) -> bool:
        from app.selection import needs_scores

        return needs_scores(self.selector)


# -- seeds ---------------------------------------------------------------------------------------------
def _hash_seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & SEED_MASK


def rollout_seed(collection_seed: int, external_id: str, sample_index: int) -> int:
    """A rollout's seed: a function of the collection seed, the problem's external id and the sample index
    (not of database ids), so the same collection on another database samples the same responses."""
    return _hash_seed(f"rollout/{int(collection_seed)}/{external_id}/{int(sample_index)}")


def turn_seed(rollout_seed_: int, turn_index: int) -> int:
    """The seed of one backend request: one rollout at one turn (its N samples derive from it)."""
    return _hash_seed(f"turn/{int(rollout_seed_)}/{int(turn_index)}")


# -- keys -------------------------------------------------------------------------------------------------
def collect_key(owner: Owner) -> str:
    return f"collect/{owner.key}"


def step_key(owner: Owner, generation: int, batch: int, kind: str, turn: int) -> str:
    return f"{collect_key(owner)}/g{generation}/b{batch}/{kind}/t{turn}"


# -- backends ---------------------------------------------------------------------------------------------------
def load_backend(kind: str, uri: str):
    """The process's backend for (kind, uri): ``workers.backends.get_backend`` loads a model once and keeps it
    between jobs (another model replaces it) until ``workers.tasks.sample.release_models()``."""
    from workers.backends import get_backend

    return get_backend(kind, uri)


# -- the spec and the batches of a collection ---------------------------------------------------------------
def get_spec(store: Store, owner: Owner) -> tuple[CollectSpec, int, str]:
    """(spec, current generation, state of the collect job) of a collection."""
    job = store.get_job(collect_key(owner))
    if job is None:
        raise NotFound(f"no collection for {owner.as_dict()} (create_collection was never called)")
    return CollectSpec.stored(job.payload["spec"]), int(job.attempts), job.state


def batches(store: Store, owner: Owner, batch_size: int) -> list[tuple[list[int], bool]]:
    """[(rollout ids, has active rollouts)] for each batch of the collection, in batch order."""
    rows = store.collection_rollouts(owner)
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        out.append(([rid for rid, _ in chunk], any(st == "active" for _, st in chunk)))
    return out


def dataset_problem_ids(store: Store, dataset: str, split: str | None, limit: int | None = None) -> list[int]:
    """The ids of a loaded dataset's problems (file order), the first ``limit`` of them."""
    problems = store.list_problems(dataset, split, limit=limit)
    if not problems:
        where = f"{dataset}:{split}" if split else dataset
        raise NotFound(f"no problems in {where}: load the dataset with `mucode data load {dataset}`")
    return [p.id for p in problems]


def check_generators(store: Store, generator_ids: Sequence[int]) -> dict[int, str]:
    """{generator id: uri}, checking that each model can be found (a clear error before anything is queued)."""
    from app.model_registry import resolve_model

    uris: dict[int, str] = {}
    for gid in sorted(set(generator_ids)):
        mv = store.get_model_version(int(gid))
        resolve_model(mv.uri)  # raises a clear error for a missing local path or an unknown name
        uris[gid] = mv.uri
    return uris


def create_collection(
    store: Store,
    owner: Owner | dict[str, int],
    problem_ids: Sequence[int],
    spec: CollectSpec | dict[str, Any],
    *,
    generator_id: int,
) -> dict[str, Any]:
    """Create the rollouts (problem x M, one seed each) and the collection's job row. Idempotent: a second
    call creates nothing and keeps the first spec (it raises if the spec differs)."""
    owner = Owner.of(owner)
    spec = spec if isinstance(spec, CollectSpec) else CollectSpec(**spec)
    check_generators(store, [generator_id])
    if spec.verifier_id is not None:
        store.get_model_version(int(spec.verifier_id))
    problems = store.collection_problems(problem_ids)
    missing = sorted(set(problem_ids) - set(problems))
    if missing:
        raise NotFound(f"problems not in the store: {missing[:10]}")
    if not problem_ids:
        raise ConfigError("a collection needs at least one problem")
    payload = {"spec": spec.model_dump(mode="json"), "generator_id": generator_id, "problems": len(problems)}
    key = collect_key(owner)
    existing = store.get_job(key)
    old_spec = CollectSpec.stored(existing.payload.get("spec") or {}).model_dump(mode="json") if existing else None
    if old_spec is not None and old_spec != payload["spec"]:
        differ = sorted(k for k in set(old_spec) | set(payload["spec"]) if old_spec.get(k) != payload["spec"].get(k))
        raise ConfigError(f"collection {owner.as_dict()} already exists with another spec (differs in: "
                          f"{', '.join(differ)})")
    rows = [
        {
            "problem_id": pid,
            "sample_index": m,
            "seed": rollout_seed(spec.seed, problems[pid].external_id, m),
            "generator_id": generator_id,
        }
        for pid in sorted(set(problem_ids))
        for m in range(spec.samples_per_problem)
    ]
    created = store.create_rollouts(owner, rows)
    store.record_job(key, "collect", "control", payload, requeue=False, **owner.as_dict())
    return {"owner": owner.as_dict(), "rollouts": len(rows), "created": created}


def start(store: Store, owner: Owner | dict[str, int]) -> dict[str, Any]:
    """Queue the collection (the first generation). The same as ``resume``."""
    return resume(store, owner)


def resume(store: Store, owner: Owner | dict[str, int]) -> dict[str, Any]:
    """Queue exactly the missing work: a ``sample`` job (new generation) for every batch with active rollouts;
    when nothing is active, finish the collection (and queue its ``then`` again)."""
    from workers.dispatch import check_broker

    owner = Owner.of(owner)
    check_broker()
    spec, _, _ = get_spec(store, owner)
    job = store.get_job(collect_key(owner))
    check_generators(store, [job.payload["generator_id"]])
    todo = [(b, ids) for b, (ids, active) in enumerate(batches(store, owner, spec.batch_size)) if active]
    generation = store.bump_job_attempts(collect_key(owner))
    # Jobs of older generations that never finished (a killed worker's) are marked superseded, not left
    # "running" and not "failed": a status read between here and the bump above must not see a failure.
    for j in store.unfinished_jobs(key_prefix=collect_key(owner) + "/"):
        if j.state in ("queued", "running") and not j.key.startswith(f"{collect_key(owner)}/g{generation}/"):
            store.supersede_job(j.key, f"resumed as generation {generation}")
    if not todo:
        finished = _finish_collection(store, owner, spec, force=True)
        return {"generation": generation, "queued_batches": 0, "finished": finished}
    store.update_job(collect_key(owner), state="running", error=None, finished_at=None)
    if owner.evaluation_id is not None and spec.then is None:
        store.set_evaluation_status(owner.evaluation_id, "running")
    jobs = []
    for b, ids in todo:
        jobs.append(_sample_job(owner, generation, b, ids, step=0))
    for name, kwargs, key in jobs:
        _queue(store, owner, name, kwargs, key)
    return {"generation": generation, "queued_batches": len(todo), "finished": False}


def _sample_job(owner: Owner, generation: int, batch: int, rollout_ids: Sequence[int], step: int):
    kwargs = {
        "owner": owner.as_dict(),
        "batch": batch,
        "rollout_ids": list(rollout_ids),
        "generation": generation,
        "step": step,
    }
    return "mucode.sample", kwargs, step_key(owner, generation, batch, "sample", step)


def _queue(store: Store, owner: Owner, name: str, kwargs: dict[str, Any], key: str) -> None:
    from workers.celery_app import TASK_QUEUES
    from workers.dispatch import in_process, submit

    kind = name.split(".", 1)[1]
    if name in ("mucode.execute", "mucode.score"):  # the job marks its row running and done itself
        kwargs = {**kwargs, "job_key": key}
    store.record_job(key, kind, TASK_QUEUES[name], _brief(kwargs), **owner.as_dict())
    try:
        submit(name, **kwargs)
    except Exception as exc:
        # In-process, the error is the job's own and already recorded by it; a broker outage is not a failure
        # of the job (the job that queues it waits and runs again, see workers/healing.py).
        if not in_process() and not is_transient(exc):
            store.job_failed(key, f"could not queue: {type(exc).__name__}: {exc}")
        raise


def _brief(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The payload recorded with a job (long id lists summarised)."""
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if k == "then":
            out[k] = {"task": v.get("task")} if isinstance(v, dict) else v
        elif isinstance(v, list) and len(v) > 16:
            out[k] = {"count": len(v), "first": v[:4]}
        else:
            out[k] = v
    return out


# -- the sample (advance) job -------------------------------------------------------------------------------------
def run_sample_job(
    store: Store,
    *,
    owner: dict[str, int],
    batch: int,
    rollout_ids: Sequence[int],
    generation: int,
    step: int = 0,
    backend_loader: Callable[[str, str], Any] | None = None,
) -> dict[str, Any]:
    """The body of ``mucode.sample``: advance one batch and queue its successor. Idempotent."""
    owner = Owner.of(owner)
    spec, current, _state = get_spec(store, owner)
    key = step_key(owner, generation, batch, "sample", step)
    if generation < current:  # a message of a generation that a resume replaced (or redelivered late)
        log.info("%s superseded by generation %d", key, current)
        store.supersede_job(key, f"superseded by generation {current}")
        return {"superseded_by": current}
    store.job_started(
        key,
        worker=worker_name(),
        kind="sample",
        queue="sample",
        payload=_brief(
            {"batch": batch, "rollout_ids": list(rollout_ids), "generation": generation, "step": step}
        ),
        **owner.as_dict(),
    )
    if step > 0:  # the execute (and score) step this job follows has finished
        for kind in ("execute", "score"):
            store.claim_job(
                step_key(owner, generation, batch, kind, step),
                from_states=("queued", "running"),
                to_state="done",
            )
    t0 = time.perf_counter()
    try:
        result = advance_batch(
            store,
            owner,
            spec,
            batch=batch,
            rollout_ids=rollout_ids,
            generation=generation,
            backend_loader=backend_loader or load_backend,
        )
    except Exception as exc:
        if not is_transient(exc):  # an outage is waited out and the job runs again (workers/healing.py)
            store.job_failed(key, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            owner_failed(store, owner, f"job {key}: {type(exc).__name__}: {exc}")
        raise
    result["seconds"] = round(time.perf_counter() - t0, 3)
    store.job_done(key, result)
    return result


@contextlib.contextmanager
def chained_job(store: Store, key: str | None, *,
                retried: Callable[[BaseException], bool] = lambda exc: False):
    """The body of an execute or score step of a collection (``key``: its job row; None when queued by a mucode
    that predates it). The row says running and this worker's beacon lists it from the first instant, even while
    the job waits out an outage (workers/healer.py). A failure that neither an outage nor a Celery retry
    (``retried``) explains fails the row and its owner; the caller marks the row done."""
    if key is None:
        yield
        return
    from app import liveness

    liveness.started(key)
    store.job_started(key, worker=worker_name())
    try:
        yield
    except Exception as exc:
        if not is_transient(exc) and not retried(exc):
            job_failed_for_good(store, key, f"{type(exc).__name__}: {exc}")
        raise


def job_failed_for_good(store: Store, key: str, error: str) -> None:
    """A job of a collection failed and will not be retried: its row and its owner say so."""
    store.job_failed(key, error)
    job = store.get_job(key)
    if job is not None and (job.round_id is not None or job.evaluation_id is not None):
        owner_failed(store, Owner(round_id=job.round_id, evaluation_id=job.evaluation_id), f"job {key}: {error}")


def owner_failed(store: Store, owner: Owner, error: str) -> None:
    """A job of the collection failed for good: its round (or evaluation) is failed too, in its own row, so that
    every view of it says so (``round resume`` or running the evaluation again picks it up)."""
    from datetime import UTC, datetime

    from app.rounds import utcnow_iso

    line = first_line(error, 2000)
    if owner.evaluation_id is not None:
        store.set_evaluation_status(owner.evaluation_id, "failed")
        ev = store.get_evaluation(owner.evaluation_id)
        round_id, step = ev.round_id, "evaluate"
    else:
        round_id, step = owner.round_id, "collect"
    if round_id is not None:
        store.update_round_step(round_id, step, expect=("running",), state="failed", error=clip(error, 4000),
                                finished_at=utcnow_iso())
        store.set_round(round_id, status="failed", error=f"{step}: {line}", finished_at=datetime.now(UTC))


def supersede_failed(store: Store, owner: Owner | dict[str, int], reason: str) -> int:
    """Before a resume: the collection's failed jobs are handed to the new generation (superseded, their error
    kept), so that no view counts them as the collection's current state. Returns how many."""
    owner = Owner.of(owner)
    jobs = store.list_jobs(key_prefix=collect_key(owner) + "/", states=("failed",))
    return sum(store.supersede_job(j.key, reason, failed_too=True) for j in jobs)


def advance_batch(
    store: Store,
    owner: Owner,
    spec: CollectSpec,
    *,
    batch: int,
    rollout_ids: Sequence[int],
    generation: int,
    backend_loader: Callable[[str, str], Any],
) -> dict[str, Any]:
    """Finish executed turns, open next turns, sample open turns, and queue what comes next (see module doc)."""
    verifier_id = spec.verifier_id if spec.scored else None

    def active_rollouts() -> list[RolloutState]:
        return [r for r in store.batch_state(rollout_ids, verifier_id=verifier_id) if r.status == "active"]

    active = active_rollouts()
    result: dict[str, Any] = {"finished": 0, "opened": 0, "sampled": 0, "tokens": 0}

    # 1. decisions on executed turns, and first turns -----------------------------------------------------------
    executed = [r for r in active if r.last_turn is not None and _turn_complete(r.last_turn, spec)]
    chosen, feedback, finish, open_turns = _decide_executed_turns(store, spec, executed)
    open_turns += _first_turns(store, spec, [r for r in active if r.last_turn is None])
    if chosen or feedback or finish or open_turns:
        store.advance_batch(chosen=chosen, feedback=feedback, finish=finish, open_turns=open_turns)
        result["finished"] = len(finish)
        result["opened"] = len(open_turns)
        active = active_rollouts()

    # 2. sample every open turn that has fewer than N candidates: one backend call per generator --------------
    to_sample = [
        r for r in active if r.last_turn is not None and len(r.last_turn.candidates) < spec.candidates
    ]
    if to_sample:
        result.update(sample_open_turns(store, spec, to_sample, backend_loader))
        active = active_rollouts()

    # 3. the successor ----------------------------------------------------------------------------------------
    result["active"] = len(active)
    queued = _queue_successor(store, owner, spec, active, batch=batch, rollout_ids=rollout_ids,
                              generation=generation)
    if queued is not None:
        result["queued"] = queued
        return result
    if active:  # active rollouts with nothing to do would stall the chain: say so
        raise CollectError(
            f"batch {batch} of {owner.as_dict()} has {len(active)} active rollouts but no work"
        )
    result["queued"] = None
    result["collection_finished"] = _finish_collection(store, owner, spec)
    return result


def _decide_executed_turns(store: Store, spec: CollectSpec, rollouts: list[RolloutState]):
    """For rollouts whose last turn is executed (and scored): the pick, its feedback, and whether the rollout
    finishes or opens its next turn. Returns (chosen, feedback, finish, open_turns) as ``store.advance_batch``
    takes them."""
    from app.env import append_turn, feedback_text, is_done
    from app.selection import select, selection_seed

    chosen: dict[int, int] = {}
    feedback: dict[int, str] = {}
    finish: list[dict[str, Any]] = []
    open_turns: list[dict[str, Any]] = []
    if not rollouts:
        return chosen, feedback, finish, open_turns
    picks = {
        r.id: select(spec.selector, r.last_turn.candidates, seed=selection_seed(r.seed, r.last_turn.index))
        for r in rollouts
    }
    executions = store.public_feedback([c.id for c in picks.values()], harness_tag=spec.harness.tag)
    for r in rollouts:
        t, c = r.last_turn, picks[r.id]
        if c.id not in executions:
            raise CollectError(f"candidate {c.id} has verdicts but no public execution in the store")
        fb = feedback[t.id] = feedback_text(executions[c.id])
        if spec.candidates > 1 or not c.chosen or any(o.chosen for o in t.candidates if o.id != c.id):
            chosen[t.id] = c.id
        if is_done(t.index, spec.turns, c.public_passed, c.private_passed, rule=spec.stop_rule):
            finish.append({"rollout_id": r.id, "final_label": bool(c.private_passed),
                           "public_passed": bool(c.public_passed)})
        else:
            messages = append_turn(t.messages, c.response, fb)
            open_turns.append({"rollout_id": r.id, "index": t.index + 1, "messages": messages})
    return chosen, feedback, finish, open_turns


def _first_turns(store: Store, spec: CollectSpec, fresh: list[RolloutState]) -> list[dict[str, Any]]:
    """The first turn of each rollout that has none yet: the problem's prompt as the harness shows it."""
    from app.env import initial_messages

    if not fresh:
        return []
    problems = store.collection_problems(r.problem_id for r in fresh)
    view = spec.harness.view
    return [{"rollout_id": r.id, "index": 1, "messages": initial_messages(view(problems[r.problem_id]))}
            for r in fresh]


def _queue_successor(store: Store, owner: Owner, spec: CollectSpec, active: list[RolloutState], *, batch: int,
                     rollout_ids: Sequence[int], generation: int) -> str | None:
    """Queue the batch's next step: execute (then score) the new candidates, then sample again. Returns what
    was queued (``execute``, ``score``, ``execute+score``), None when no candidate waits for a verdict or a
    score."""
    unexecuted = [c.id for r in active for c in r.last_turn.candidates if not c.executed]
    unscored = (
        [c.id for r in active for c in r.last_turn.candidates if c.score is None] if spec.scored else []
    )
    if not (unexecuted or unscored):
        return None
    turn = max((r.last_turn.index for r in active), default=0)
    then = _sample_job(owner, generation, batch, rollout_ids, step=turn)
    then_ref = {"task": then[0], "kwargs": then[1]}
    execute_key = step_key(owner, generation, batch, "execute", turn)
    harness = spec.harness.as_dict()
    if not (spec.scored and unscored):
        _resubmit_guard(store, owner, execute_key)
        execute = {"candidate_ids": unexecuted, "then": then_ref, "harness": harness}
        _queue(store, owner, "mucode.execute", execute, execute_key)
        return "execute"
    score_key = step_key(owner, generation, batch, "score", turn)
    score_kwargs = {"verifier_id": spec.verifier_id, "candidate_ids": unscored, "then": then_ref,
                    "job_key": score_key}
    if not unexecuted:
        _resubmit_guard(store, owner, score_key)
        _queue(store, owner, "mucode.score", score_kwargs, score_key)
        return "score"
    score_ref = {"task": "mucode.score", "kwargs": score_kwargs}
    _resubmit_guard(store, owner, execute_key)
    store.record_job(score_key, "score", "score", _brief(score_kwargs), **owner.as_dict())
    execute = {"candidate_ids": unexecuted, "then": score_ref, "harness": harness}
    _queue(store, owner, "mucode.execute", execute, execute_key)
    return "execute+score"


def _turn_complete(t, spec: CollectSpec) -> bool:
    if len(t.candidates) < spec.candidates:
        return False
    if not all(c.executed for c in t.candidates):
        return False
    return not (spec.scored and any(c.score is None for c in t.candidates))


def _resubmit_guard(store: Store, owner: Owner, key: str) -> None:
    """An execute/score step queued again in the same generation means its job ran without giving every
    candidate a verdict (or a score); after MAX_RESUBMITS the chain stops with a clear error."""
    job = store.get_job(key)
    if job is None:
        return
    n = int((job.result or {}).get("resubmits", 0)) + 1
    if n > MAX_RESUBMITS:
        raise CollectError(
            f"{key} was queued {n} times and its candidates still have no verdict/score: "
            "check the execute/score workers (`mucode rollouts status` shows their errors)"
        )
    store.update_job(key, result={"resubmits": n})


def sample_open_turns(
    store: Store, spec: CollectSpec, rollouts: list[RolloutState], backend_loader: Callable[[str, str], Any]
) -> dict[str, Any]:
    """Sample N candidates for each rollout's open turn (one backend call per generator) and write them."""
    from app.env import extract_code
    from app.hashing import code_hash
    from workers.backends.base import SamplingParams

    params = SamplingParams(
        temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_new_tokens, n=spec.candidates,
        stop_after_code=spec.stop_after_code,
    )
    by_gen: dict[int | None, list[RolloutState]] = {}
    for r in rollouts:
        by_gen.setdefault(r.generator_id, []).append(r)
    written = tokens = 0
    generate_seconds = 0.0
    for gid, group in by_gen.items():
        if gid is None:
            raise CollectError(f"rollouts {[r.id for r in group][:5]} have no generator")
        uri = store.get_model_version(int(gid)).uri
        backend = backend_loader(spec.backend, uri)
        conversations = [r.last_turn.messages for r in group]
        seeds = [turn_seed(r.seed, r.last_turn.index) for r in group]
        t0 = time.perf_counter()
        outputs = backend.generate(conversations, params, seeds)
        generate_seconds += time.perf_counter() - t0
        if len(outputs) != len(group):
            raise CollectError(f"the backend returned {len(outputs)} results for {len(group)} conversations")
        rows = []
        for r, seed, samples in zip(group, seeds, outputs, strict=True):
            for j, s in enumerate(samples):
                text = storable_text(s.text)
                code = extract_code(text)
                rows.append(
                    {
                        "turn_id": r.last_turn.id,
                        "sample_index": j,
                        "response": text,
                        "code": code,
                        "code_hash": code_hash(code),
                        "prompt_tokens": s.prompt_tokens,
                        "completion_tokens": s.completion_tokens,
                        "finish_reason": s.finish_reason,
                        "sampling": {
                            "backend": spec.backend,
                            "model": uri,
                            "temperature": spec.temperature,
                            "top_p": spec.top_p,
                            "max_new_tokens": spec.max_new_tokens,
                            "n": spec.candidates,
                            "seed": seed,
                            "sample_seed": s.seed,
                        },
                        "chosen": spec.candidates == 1,
                    }
                )
                tokens += int(s.completion_tokens or 0)
        store.add_candidates(rows)
        written += len(rows)
    return {"sampled": written, "tokens": tokens, "generate_seconds": round(generate_seconds, 3)}


def storable_text(text: str) -> str:
    """A response as stored (and fed back in later turns): NUL characters, which Postgres text and JSONB
    cannot hold, become U+FFFD. Real models practically never emit them; random test models do."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _finish_collection(store: Store, owner: Owner, spec: CollectSpec, *, force: bool = False) -> bool:
    """When no rollout of the collection is active: mark it done and queue its ``then`` (once; ``force``
    queues it again, for resume). Returns whether the collection is finished."""
    counts = store.collection_counts(owner)
    if counts["active"]:
        return False
    key = collect_key(owner)
    won = store.claim_job(key, from_states=("queued", "running", "failed"), to_state="done")
    if won or force:
        store.update_job(key, state="done", result=counts)
        if spec.then is not None:
            from workers.dispatch import submit

            submit(spec.then["task"], **(spec.then.get("kwargs") or {}))
        elif owner.evaluation_id is not None:
            store.set_evaluation_status(owner.evaluation_id, "done", finished=True)
    return True


# -- status ---------------------------------------------------------------------------------------------------------
def status(store: Store, owner: Owner | dict[str, int]) -> dict[str, Any]:
    owner = Owner.of(owner)
    spec, generation, state = get_spec(store, owner)
    counts = store.collection_counts(owner)
    prefix = collect_key(owner) + "/"
    jobs = store.job_counts(key_prefix=prefix)
    failed = [
        {"key": j.key, "error": ((j.error or "").strip().splitlines() or [""])[0]}
        for j in store.list_jobs(key_prefix=f"{prefix}g{generation}/", states=("failed",), limit=20)
    ]
    return {
        "owner": owner.as_dict(),
        "state": state,
        "generation": generation,
        "spec": spec.model_dump(mode="json"),
        "counts": counts,
        "jobs": jobs,
        "failed_jobs": failed,
        "done": counts["rollouts"] > 0 and counts["active"] == 0,
    }


def wait(
    store: Store,
    owner: Owner | dict[str, int],
    *,
    timeout: float = 3600.0,
    poll: float = 1.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll the store until every rollout is done (or a job failed, or ``timeout``)."""
    owner = Owner.of(owner)
    deadline = time.monotonic() + timeout
    while True:
        st = status(store, owner)
        if on_progress is not None:
            on_progress(st)
        if st["done"]:
            return st
        if st["failed_jobs"]:
            raise CollectError(f"collection {owner.as_dict()} has failed jobs: {st['failed_jobs'][:3]}")
        if time.monotonic() > deadline:
            raise CollectError(f"collection {owner.as_dict()} not done after {timeout:.0f} s: {st['counts']}")
        time.sleep(poll)
