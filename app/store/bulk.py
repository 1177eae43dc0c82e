"""Bulk idempotent writes of the high-volume rows: rollouts, turns, candidates and executions.

Every method takes a list of dicts keyed by the model's column names, writes them with
``copy_insert_ignore`` (COPY + ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` on Postgres, multi-row
``INSERT ... ON CONFLICT DO NOTHING`` on SQLite) and returns ``{natural key: id}`` for every row given,
inserted now or already there, so a redelivered job gets the same ids and changes nothing. Columns a row
leaves out take the model's defaults. Pass ``s`` to write inside the caller's transaction; otherwise each call
is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import Candidate, Execution, Rollout, Turn

CANDIDATE_KEY = ("turn_id", "sample_index")
EXECUTION_KEY = ("code_hash", "suite_hash", "suite_kind", "sandbox_version")
TURN_KEY = ("rollout_id", "index")

Rows = Sequence[dict[str, Any]]


class BulkMixin:
    def add_candidates(self, rows: Rows, *, s: Session | None = None) -> dict[tuple[int, int], int]:
        """Candidates: ``turn_id, sample_index, response, code, code_hash`` (required), ``prompt_tokens,
        completion_tokens, finish_reason, sampling (dict), chosen (default True), public_passed,
        private_passed``. Key ``(turn_id, sample_index)``; an existing candidate is kept as it is."""
        with self._tx(s) as tx:
            return self.copy_insert_ignore(tx, Candidate.__table__, rows, CANDIDATE_KEY, return_ids=True)

    def add_executions(self, rows: Rows, *, s: Session | None = None) -> dict[tuple[str, str, str, str], int]:
        """Executions: ``code_hash, suite_hash, suite_kind ('public'|'private'), sandbox_version, status,
        passed`` (required), ``tests (list), feedback, stdout, stderr, duration_ms``.
        Key ``(code_hash, suite_hash, suite_kind, sandbox_version)``: the first verdict stored wins."""
        with self._tx(s) as tx:
            return self.copy_insert_ignore(tx, Execution.__table__, rows, EXECUTION_KEY, return_ids=True)

    def add_turns(self, rows: Rows, *, s: Session | None = None) -> dict[tuple[int, int], int]:
        """Turns: ``rollout_id, index (1-based), messages (list)``, optional ``feedback``.
        Key ``(rollout_id, index)``."""
        with self._tx(s) as tx:
            return self.copy_insert_ignore(tx, Turn.__table__, rows, TURN_KEY, return_ids=True)

    def add_rollouts(
        self, rows: Rows, *, s: Session | None = None
    ) -> dict[tuple[int | None, int | None, int, int], int]:
        """Rollouts: exactly one of ``round_id`` / ``evaluation_id``, ``problem_id, sample_index, seed``,
        optional ``generator_id, status, num_turns``. Key ``(round_id, evaluation_id, problem_id,
        sample_index)`` (the owner not set is None), matching the two partial unique indexes."""
        out: dict[tuple[int | None, int | None, int, int], int] = {}
        with self._tx(s) as tx:
            for owner in ("round_id", "evaluation_id"):
                part = [r for r in rows if r.get(owner) is not None]
                ids = self.copy_insert_ignore(
                    tx,
                    Rollout.__table__,
                    part,
                    (owner, "problem_id", "sample_index"),
                    conflict_where=f"{owner} IS NOT NULL",
                    return_ids=True,
                )
                for (owner_id, problem_id, sample_index), id_ in ids.items():
                    key = (owner_id, None) if owner == "round_id" else (None, owner_id)
                    out[(*key, problem_id, sample_index)] = id_
        return out
