"""Celery task ``mucode.score`` (queue ``score``) and ``score_candidates``, the plain function behind it.

Writes one ``verifier_scores`` row per (candidate, verifier version): only candidates without a score from that
verifier are read, in id order and in chunks, scored in batches by the process's scorer (the model stays
loaded between jobs, ``trainers.verifier.scorer.get_scorer``, until ``release_models()``) and written with
``ON CONFLICT DO NOTHING`` — so a redelivered or repeated job writes nothing new, and a job killed half-way
resumes where it stopped. Nothing is loaded when there is nothing to score.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from workers.celery_app import celery_app
from workers.healing import ride_out_outages
from workers.stores import worker_store

if TYPE_CHECKING:
    from app.store import Store

log = logging.getLogger("mucode.score")


def release_models() -> None:
    """Drop the process's loaded verifier (the next scoring job loads it again) and return its memory to the OS."""
    from trainers.verifier.scorer import clear_scorer
    from workers.memory import trim

    clear_scorer()
    trim()


def score_candidates(
    store: Store,
    verifier_id: int,
    candidate_ids: Sequence[int] | None = None,
    *,
    round_id: int | None = None,
    evaluation_id: int | None = None,
    all_candidates: bool = False,
    scorer=None,
    chunk_size: int = 512,
    batch_size: int | None = None,
    progress: bool = False,
    stats: dict[str, Any] | None = None,
) -> int:
    """Score the selected candidates that ``verifier_id`` has not scored yet; returns the rows written.

    Select with ``candidate_ids``, ``round_id``, ``evaluation_id`` (combinable) or ``all_candidates``.
    ``scorer`` (a ``VerifierScorer``) overrides the process's cached one (e.g. a model still in memory).
    ``stats``, when given, receives counts and timing (candidates/s).
    """
    if candidate_ids is not None and not candidate_ids:
        return 0
    v = store.get_verifier(verifier_id)
    todo = store.unscored_candidate_ids(
        v["id"],
        candidate_ids=candidate_ids,
        round_id=round_id,
        evaluation_id=evaluation_id,
        all_candidates=all_candidates,
    )
    if stats is not None:
        stats.update({"todo": len(todo), "written": 0, "seconds": 0.0, "model_seconds": 0.0})
    if not todo:
        return 0
    t0 = time.perf_counter()
    if scorer is None:
        from trainers.verifier.scorer import get_scorer

        max_length = int((v["config"] or {}).get("max_length") or 2048)
        scorer = get_scorer(v["uri"], batch_size=batch_size, max_length=max_length)
    elif batch_size:
        scorer.batch_size = batch_size
    t_model = time.perf_counter()
    written = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"scoring with {v['name']}", unit="cand")
    model_seconds = 0.0
    cpu0 = time.process_time()
    try:
        for i in range(0, len(todo), chunk_size):
            chunk = todo[i : i + chunk_size]
            texts = store.verifier_candidate_texts(chunk)
            t1 = time.perf_counter()
            scores = scorer.score([texts[c] for c in chunk])
            model_seconds += time.perf_counter() - t1
            written += store.add_verifier_scores(v["id"], zip(chunk, scores))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    if stats is not None:
        stats.update(
            {
                "written": written,
                "seconds": round(seconds, 3),
                "load_seconds": round(t_model - t0, 3),
                "model_seconds": round(model_seconds, 3),
                "candidates_per_s": round(len(todo) / model_seconds, 2) if model_seconds else None,
                "cpu_seconds": round(time.process_time() - cpu0, 3),
                "truncated": getattr(scorer, "truncated", 0),
            }
        )
    log.info("verifier %s scored %d candidates (%d new) in %.1f s", v["name"], len(todo), written, seconds)
    return written


def follow(then: dict[str, Any] | list[dict[str, Any]] | None, **values: Any) -> None:
    """Queue the continuation(s) ``{"task": name, "kwargs": {...}}``. A kwarg value ``"{name}"`` naming one of
    ``values`` is replaced by it (e.g. ``"{verifier_id}"`` after a training)."""
    if not then:
        return
    from workers.dispatch import submit

    for step in then if isinstance(then, list) else [then]:
        if "task" not in step:
            raise ValueError("then must be {'task': name, 'kwargs': {...}}")
        kwargs = {}
        for k, val in (step.get("kwargs") or {}).items():
            if isinstance(val, str) and val.startswith("{") and val.endswith("}") and val[1:-1] in values:
                val = values[val[1:-1]]
            kwargs[k] = val
        submit(step["task"], **kwargs)


@celery_app.task(name="mucode.score")
@ride_out_outages
def score(
    verifier_id: int,
    candidate_ids: list[int] | None = None,
    round_id: int | None = None,
    evaluation_id: int | None = None,
    then: dict[str, Any] | list[dict[str, Any]] | None = None,
    all_candidates: bool = False,
    batch_size: int | None = None,
    job_key: str | None = None,
) -> dict[str, Any]:
    from workers.collect import chained_job

    store = worker_store()
    stats: dict[str, Any] = {}
    with chained_job(store, job_key):
        written = score_candidates(
            store,
            verifier_id,
            candidate_ids,
            round_id=round_id,
            evaluation_id=evaluation_id,
            all_candidates=all_candidates,
            batch_size=batch_size,
            stats=stats,
        )
        follow(then)
    if job_key is not None:
        store.job_done(job_key, {k: v for k, v in stats.items() if k != "truncated"})
    return {"verifier_id": verifier_id, **stats, "written": written}
