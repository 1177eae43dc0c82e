"""The Celery app. Results live in the store, not in a result backend; settings are made for long jobs."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from app.config import get_settings

# Task name -> queue. GPU work (sample, score, train) and CPU work (execute, control) never share a queue.
TASK_QUEUES: dict[str, str] = {
    "mucode.sample": "sample",
    "mucode.execute": "execute",
    "mucode.score": "score",
    "mucode.train_verifier": "train",
    "mucode.train_generator": "train",
    "mucode.round_step": "control",
    "mucode.round_score": "score",  # a round's score steps (workers/tasks/rounds.py)
    "mucode.round_train": "train",  # a round's verifier and generator trainings
}
QUEUES = ("sample", "execute", "score", "train", "control")
# Queues whose jobs hold a GPU: their workers use the solo pool (one process, model kept loaded, no fork after
# CUDA is initialised) and never share a worker with the CPU queues (see `mucode worker`).
GPU_QUEUES = frozenset({"sample", "score", "train"})

# Longest job we expect (a generator training on a big round) plus margin: a task running longer than the
# broker's visibility timeout would be redelivered to a second worker while the first still runs.
LONGEST_JOB_S = 24 * 3600
VISIBILITY_TIMEOUT_S = LONGEST_JOB_S + 3600

# Hard time limit per task (seconds); the soft limit (an exception inside the job, which then fails cleanly)
# comes SOFT_MARGIN_S earlier. Enforced by Celery in prefork pools and by `mucode worker`'s watchdog in the solo
# and thread pools. Every limit stays below the visibility timeout.
TASK_TIME_LIMITS: dict[str, int] = {
    "mucode.sample": 6 * 3600,  # one batch of trajectories
    "mucode.execute": 3600,  # one batch of candidates; each candidate has its own sandbox wall-time limit
    "mucode.score": 6 * 3600,
    "mucode.train_verifier": LONGEST_JOB_S,
    "mucode.train_generator": LONGEST_JOB_S,
    "mucode.round_step": 3600,  # orchestration: queues other jobs
    "mucode.round_score": 6 * 3600,
    "mucode.round_train": LONGEST_JOB_S,
}
SOFT_MARGIN_S = 300
assert max(TASK_TIME_LIMITS.values()) < VISIBILITY_TIMEOUT_S

TASK_MODULES = [
    "workers.tasks.execute",
    "workers.tasks.sample",
    "workers.tasks.score",
    "workers.tasks.train_verifier",
    "workers.tasks.train_generator",
    "workers.tasks.rounds",
]


def make_celery(broker_url: str | None = None) -> Celery:
    broker = broker_url or get_settings().broker_url or "memory://"
    app = Celery("mucode", broker=broker, include=TASK_MODULES)
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # a killed worker's job goes back to the queue
        worker_prefetch_multiplier=1,
        task_acks_on_failure_or_timeout=True,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_time_limit=LONGEST_JOB_S,
        task_soft_time_limit=LONGEST_JOB_S - SOFT_MARGIN_S,
        task_annotations={
            name: {"time_limit": limit, "soft_time_limit": max(limit - SOFT_MARGIN_S, limit * 0.9)}
            for name, limit in TASK_TIME_LIMITS.items()
        },
        # A worker that loses the broker connection cannot acknowledge its running jobs any more: the broker
        # redelivers them, so stop them instead of finishing twice. Retry the broker forever (it restarts).
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_max_retries=None,
        # SIGTERM: let the running job finish for this long, then stop it and put its message back on the
        # queue at once (without this a Redis broker only redelivers after the visibility timeout).
        # `mucode worker --shutdown-timeout` sets it per worker.
        worker_soft_shutdown_timeout=60.0,
        worker_enable_soft_shutdown_on_idle=True,
        task_queues=[Queue(q) for q in QUEUES],
        task_default_queue="control",
        task_routes={name: {"queue": q} for name, q in TASK_QUEUES.items()},
        task_serializer="json",
        accept_content=["json"],
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return app


celery_app = make_celery()
