"""Celery task ``mucode.execute`` (queue ``execute``) and ``execute_candidates``, the plain function behind it.

For a list of candidate ids: read the candidates and their problems in one query, look up which (code hash,
suite hash, suite kind, sandbox version) executions are already stored, run the missing ones (public and
private suites) in one batch through the process's sandbox, write them and the candidates' verdicts in one
transaction. A redelivered job finds everything cached and changes nothing. A ``sandbox_error`` (the sandbox
itself failed) is never stored: the good results are written, then ``InfraError`` makes Celery retry.

The job's ``harness`` (``app.harness``: import prelude, shown tests; frozen in the collection's spec) decides
how the suites run, and its tag is part of the stored sandbox version, so a verdict made without the prelude
is never reused for a run with it. A job queued without a harness (by a version of mucode before it existed)
runs with the legacy harness, as its collection did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app.sandbox.types import InfraError
from workers.celery_app import celery_app
from workers.healing import ride_out_outages
from workers.stores import worker_store

if TYPE_CHECKING:
    from app.store import Store

log = logging.getLogger("mucode.execute")
KINDS = ("public", "private")


def execute_candidates(store: Store, candidate_ids: Sequence[int], *, sandbox=None,
                       stats: dict[str, Any] | None = None, harness: Any = None) -> dict[int, dict[str, Any]]:
    """Execute the public and private suites of each candidate (cached per code and suite) and record the
    verdicts. Returns ``{candidate_id: {"public": Execution, "private": Execution}}`` (stored ORM rows).

    ``sandbox`` overrides the process's shared ``app.sandbox.get_sandbox()``. ``harness`` (a ``Harness`` or its
    dict; None = the default, the reference's) decides the prelude and the public tests. Raises ``InfraError``
    when the sandbox failed for some of them (after storing the others), so a retry runs only what is missing.
    """
    from app.harness import Harness

    harness = Harness.of(harness)
    version = harness.sandbox_version()
    t0 = time.monotonic()
    cands = store.candidates_for_execution(candidate_ids)
    views: dict[int, Any] = {}  # problem id -> the problem as the harness checks it
    want: dict[tuple[str, str, str, str], tuple[Any, str, str]] = {}  # key -> (problem, code, kind)
    for c in cands:
        view = views.get(c.problem.id)
        if view is None:
            view = views[c.problem.id] = harness.view(c.problem)
        for kind in KINDS:
            key = (c.code_hash, c.problem.suite_hash(kind), kind, version)
            want.setdefault(key, (view, c.code, kind))
    cached = store.executions_by_key(want)
    todo = [k for k in want if k not in cached]
    failed: list[str] = []
    rows: list[dict[str, Any]] = []
    if todo:
        if sandbox is None:
            from app.sandbox import get_sandbox

            sandbox = get_sandbox()
        results = sandbox.run_many([want[k] for k in todo], prelude=harness.import_prelude)
        for key, res in zip(todo, results):
            if res.status == "sandbox_error":
                failed.append(res.feedback)
                continue
            rows.append(res.row(code_hash=key[0], suite_hash=key[1], suite_kind=key[2], sandbox_version=key[3]))
    passed = {k: bool(e.passed) for k, e in cached.items()}
    passed.update({(r["code_hash"], r["suite_hash"], r["suite_kind"], r["sandbox_version"]): bool(r["passed"])
                   for r in rows})
    verdicts: dict[int, tuple[bool, bool]] = {}
    for c in cands:
        pub, priv = ((c.code_hash, c.problem.suite_hash(kind), kind, version) for kind in KINDS)
        if pub in passed and priv in passed:  # a candidate whose sandbox failed keeps NULL verdicts (retried)
            verdicts[c.id] = (passed[pub], passed[priv])
    done = dict(cached)
    done.update(store.record_executions(rows, verdicts))
    if stats is not None:
        stats.update(candidates=len(cands), executions=len(want), cached=len(cached), ran=len(rows),
                     failed=len(failed), sandbox_version=version, seconds=round(time.monotonic() - t0, 3))
    if failed:
        raise InfraError(f"the sandbox failed on {len(failed)} of {len(todo)} executions (stored the others); "
                         f"first error: {failed[0][:500]}")
    out: dict[int, dict[str, Any]] = {}
    for c in cands:
        out[c.id] = {kind: done[(c.code_hash, c.problem.suite_hash(kind), kind, version)] for kind in KINDS}
    return out


@celery_app.task(
    name="mucode.execute",
    bind=True,
    acks_late=True,
    autoretry_for=(InfraError,),
    retry_backoff=5,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=8,
)
@ride_out_outages
def execute(self, candidate_ids: list[int], then: dict | None = None, harness: dict | None = None,
            job_key: str | None = None) -> dict[str, Any]:
    from app.harness import Harness
    from workers.collect import chained_job

    store = worker_store()
    stats: dict[str, Any] = {}
    with chained_job(store, job_key,
                     retried=lambda exc: isinstance(exc, InfraError) and self.request.retries < self.max_retries):
        # No harness: queued by a mucode that predates it, for a collection that ran with the legacy harness.
        execute_candidates(store, candidate_ids, stats=stats, harness=Harness.legacy() if harness is None else harness)
    log.info("executed %s", stats)
    if then:
        from workers.dispatch import submit

        submit(then["task"], **(then.get("kwargs") or {}))
    if job_key is not None:
        store.job_done(job_key, stats)
    return stats
