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
}
QUEUES = ("sample", "execute", "score", "train", "control")

# Longest job we expect (a generator training on a big round) plus margin: a task running longer than the
# broker's visibility timeout would be redelivered to a second worker while the first still runs.
LONGEST_JOB_S = 24 * 3600
VISIBILITY_TIMEOUT_S = LONGEST_JOB_S + 3600

TASK_MODULES = [
    "workers.tasks.execute",
    "workers.tasks.sample",
    "workers.tasks.score",
    "workers.tasks.train",
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
        task_soft_time_limit=LONGEST_JOB_S - 300,
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
