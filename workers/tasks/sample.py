"""Celery task ``mucode.sample`` (queue ``sample``): the advance step of one batch of a collection.

It finishes the executed turns of its batch, opens the next ones, samples every open turn in one backend call
and queues the batch's execution (see workers/collect.py). The backend is loaded once per worker process and
kept between jobs (``workers.collect.load_backend``) until ``release_models()``; run the worker with ``-P solo``
on a GPU.
"""

from __future__ import annotations

from typing import Any

from workers.celery_app import celery_app
from workers.healing import ride_out_outages
from workers.stores import worker_store


def release_models() -> None:
    """Drop the sampler's loaded model (``workers.collect.load_backend`` loads it again when a job needs it)
    and return its memory to the OS."""
    from workers.backends import release
    from workers.memory import trim

    release()
    trim()


@celery_app.task(name="mucode.sample")
@ride_out_outages
def sample(
    owner: dict[str, int],
    batch: int,
    rollout_ids: list[int],
    generation: int,
    step: int = 0,
) -> dict[str, Any]:
    from app import liveness
    from app.store.rollouts import Owner
    from workers.collect import run_sample_job, step_key

    # In flight from its first instant, even while it waits for the database (see workers/healer.py).
    liveness.started(step_key(Owner.of(owner), generation, batch, "sample", step), **Owner.of(owner).as_dict())
    return run_sample_job(
        worker_store(), owner=owner, batch=batch, rollout_ids=rollout_ids, generation=generation, step=step
    )
