"""Store queries: relabeling (the µCode expert and the baselines), SFT examples and generator versions.

The relabel build is set-based: one statement chain of common table expressions ranks every finished train-split
trajectory of the rounds in scope with window functions (``ROW_NUMBER() OVER (PARTITION BY round, problem ...)``)
and an ``INSERT ... SELECT`` expands the kept trajectories into one example per turn state. Nothing loops over
rows in Python, and the same SQL runs on Postgres and SQLite (>= 3.30: window functions, ``NULLS LAST``).

Shape of the chain (``_ctes``):
    scope   finished rollouts of the rounds in scope, train split only, with their label and their round's verifier
    final   each trajectory's final-turn chosen candidate and its verifier score under that round's verifier
    traj    one row per trajectory (a guard against a turn with two chosen candidates) with its expert score
    ranked  per (round, problem): y* (FIRST_VALUE by score desc), expert rank, relabel rank (label asc, score
            desc), any correct? -- window functions only, no self-join
``ranked`` is computed once into a temporary table (one row per trajectory); the stats read it, and
``kept`` (the method's trajectories with their target candidate and source, ``_kept_sql``) feeds
``INSERT INTO sft_examples SELECT ... FROM kept JOIN turns`` (state t = the messages shown at turn t).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from app.db import models as m
from app.errors import MucodeError, NotFound
from app.store.base import id_or_name, training_set_dict

SFT_METHODS = ("mucode", "multi_rft", "rft", "rft_lv")
EXPERT_VARIANTS = ("both", "oracle", "learned")
# SftExample.source values.
SOURCE_RELABELED = "relabeled"  # a failed trajectory's state -> y* (mucode)
SOURCE_POSITIVE = "positive"  # a successful trajectory's state -> its own final answer
SOURCE_TOP_LV = "top_lv"  # rft_lv: a verifier-picked trajectory's state -> its own final answer

# Deterministic tie-break everywhere: the lower candidate id (the earlier written response) wins.
_SCORE_SQL = {
    # LV(x, y) + 100 * label: a correct response always beats an incorrect one; LV ranks within each group.
    "both": "f.lv + 100.0 * f.label",
    "oracle": "1.0 * f.label",
    "learned": "f.lv",
}


def _needs_verifier(method: str, expert: str) -> bool:
    return method == "rft_lv" or (method == "mucode" and expert in ("both", "learned"))


class RelabelMixin:
    # -- rounds ---------------------------------------------------------------------------------------
    def sft_resolve_round(self, ref: int | str) -> dict[str, Any]:
        """A round by id (``12``), ``EXPERIMENT/INDEX``, or ``EXPERIMENT`` (its latest round)."""
        with self.session() as s:
            q = (
                select(m.Round, m.Experiment)
                .join(m.Experiment, m.Experiment.id == m.Round.experiment_id)
            )
            ref_s = str(ref).strip()
            row = None
            if ref_s.isdigit():
                row = s.execute(q.where(m.Round.id == int(ref_s))).first()
            if row is None:
                exp_name, _, index = ref_s.rpartition("/")
                if exp_name and index.isdigit():
                    row = s.execute(
                        q.where(m.Experiment.name == exp_name, m.Round.index == int(index))
                    ).first()
            if row is None:
                row = s.execute(
                    q.where(m.Experiment.name == ref_s).order_by(m.Round.index.desc()).limit(1)
                ).first()
            if row is None:
                raise NotFound(
                    f"no round {ref_s!r}: give a round id, EXPERIMENT/INDEX or an experiment name with rounds"
                )
            rnd, exp = row
            return _round_dict(rnd, exp)

    def sft_scope_rounds(self, round_id: int, *, aggregate: bool) -> list[dict[str, Any]]:
        """The rounds whose data a build for ``round_id`` uses: this one, or all of its experiment up to it."""
        with self.session() as s:
            rnd = s.get(m.Round, round_id)
            if rnd is None:
                raise NotFound(f"no round with id {round_id}")
            exp = s.get(m.Experiment, rnd.experiment_id)
            if not aggregate:
                return [_round_dict(rnd, exp)]
            rows = s.scalars(
                select(m.Round)
                .where(m.Round.experiment_id == rnd.experiment_id, m.Round.index <= rnd.index)
                .order_by(m.Round.index)
            ).all()
            return [_round_dict(r, exp) for r in rows]

    # -- the relabel build --------------------------------------------------------------------------
    def sft_build(
        self,
        *,
        round_id: int,
        method: str = "mucode",
        expert: str = "both",
        relabel_failed: int = 3,
        keep_successful: bool = True,
        top_k: int = 3,
        aggregate_rounds: bool = True,
        verifier_id: int | None = None,
        name: str | None = None,
        rebuild: bool = False,
        extra_config: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Build (or return the existing) ``TrainingSet(kind="sft")`` of ``round_id`` in one transaction.

        ``verifier_id`` overrides the verifier of ``round_id`` itself (default: its ``verifier_out_id``); every
        other round in scope is relabeled with its own ``verifier_out_id`` (older relabels are not redone with a
        newer verifier). Returns ``{"id", "name", "config", "stats", "created"}``.
        """
        import time

        t0 = time.perf_counter()
        plan = self._sft_plan(round_id, method, expert, relabel_failed, keep_successful, top_k, aggregate_rounds,
                              verifier_id, extra_config)
        name = name or plan.default_name
        kept = _kept_sql(method, relabel_failed, keep_successful, top_k, source=_RANKED)
        with self.session() as s:
            existing = s.scalars(select(m.TrainingSet).where(m.TrainingSet.name == name)).one_or_none()
            if existing is not None and not rebuild:
                return training_set_dict(existing, created=False)
            phases: dict[str, float] = {}
            tp = time.perf_counter()
            self._rank(s, plan)
            phases["rank"], tp = time.perf_counter() - tp, time.perf_counter()
            per_round, no_correct, excluded = self._scope_stats(s, plan)
            phases["stats"], tp = time.perf_counter() - tp, time.perf_counter()

            if existing is not None:  # rebuild: same row, new examples
                s.execute(delete(m.SftExample).where(m.SftExample.training_set_id == existing.id))
                ts = existing
                ts.config = plan.config
            else:
                ts = m.TrainingSet(name=name, kind="sft", experiment_id=plan.target["experiment_id"],
                                   round_id=round_id, config=plan.config, stats={})
                s.add(ts)
                s.flush()
            inserted = s.execute(text(f"WITH kept AS ({kept}) {_INSERT_SQL}"), {"ts": ts.id}).rowcount
            phases["insert"], tp = time.perf_counter() - tp, time.perf_counter()
            counts, totals = _kept_counts(s, kept, ts.id, inserted)
            s.execute(text(f"DROP TABLE {_RANKED}"))
            phases["counts"] = time.perf_counter() - tp
            stats = _stats(plan.scope, per_round, counts, totals, no_correct, excluded, time.perf_counter() - t0)
            stats["phase_seconds"] = {k: round(v, 3) for k, v in phases.items()}
            ts.stats = stats
            s.flush()
        return training_set_dict(ts, created=True)

    def _sft_plan(self, round_id: int, method: str, expert: str, relabel_failed: int, keep_successful: bool,
                  top_k: int, aggregate_rounds: bool, verifier_id: int | None,
                  extra_config: dict[str, Any] | None) -> _SftPlan:
        """Check the arguments and decide the rounds in scope, their verifiers and the frozen config."""
        if method not in SFT_METHODS:
            raise MucodeError(f"unknown relabel method {method!r}: one of {', '.join(SFT_METHODS)}")
        if expert not in EXPERT_VARIANTS:
            raise MucodeError(f"unknown expert variant {expert!r}: one of {', '.join(EXPERT_VARIANTS)}")
        if relabel_failed < 0 or top_k < 0:
            raise MucodeError("relabel_failed and top_k must be >= 0")
        scope = self.sft_scope_rounds(round_id, aggregate=aggregate_rounds)
        target = next(r for r in scope if r["id"] == round_id)
        verifiers: dict[int, int | None] = {}
        for r in scope:
            v = verifier_id if (r["id"] == round_id and verifier_id is not None) else r["verifier_out_id"]
            verifiers[int(r["id"])] = int(v) if v is not None else None
        uses_lv = _needs_verifier(method, expert)
        if uses_lv:
            missing = [r for r in scope if verifiers[int(r["id"])] is None]
            if missing:
                names = ", ".join(f"{r['experiment']}/{r['index']}" for r in missing)
                raise MucodeError(
                    f"round(s) {names} have no verifier (rounds.verifier_out_id), which method {method!r}"
                    + (f" with expert {expert!r}" if method == "mucode" else "")
                    + " needs: train and score one first, pass a verifier id, or use --expert oracle"
                )
        config: dict[str, Any] = {
            "method": method,
            "expert": expert if method == "mucode" else None,
            "relabel_failed": relabel_failed if method == "mucode" else None,
            "keep_successful": keep_successful if method == "mucode" else None,
            "top_k": top_k if method == "rft_lv" else None,
            "aggregate_rounds": aggregate_rounds,
            "rounds": [
                {"id": r["id"], "index": r["index"], "verifier_id": verifiers[int(r["id"])] if uses_lv else None}
                for r in scope
            ],
            **(extra_config or {}),
        }
        from app.hashing import json_hash

        tag = method + (f"-{expert}" if method == "mucode" else "")
        default_name = f"{target['experiment']}/r{target['index']}/sft-{tag}-{json_hash(config)[:8]}"
        # Methods that use no verifier record none on their examples (and read no scores).
        used = verifiers if uses_lv else dict.fromkeys(verifiers)
        return _SftPlan(scope, target, verifiers, uses_lv, config, default_name, _ctes(method, expert, used))

    def _rank(self, s: Session, plan: _SftPlan) -> None:
        """The ranking runs once, into a temporary table (one row per trajectory in scope) that the stats, the
        insert and the counts read; it is dropped before the transaction ends."""
        if self.is_postgres:
            s.execute(text("SET LOCAL jit = off"))  # compiling costs more than it saves at this size
        s.execute(text(f"DROP TABLE IF EXISTS {_RANKED}"))
        s.execute(text(f"CREATE TEMPORARY TABLE {_RANKED} AS WITH {plan.chain} SELECT * FROM ranked"))
        if self.is_postgres:
            s.execute(text(f"ANALYZE {_RANKED}"))

    @staticmethod
    def _scope_stats(s: Session, plan: _SftPlan) -> tuple[dict[int, dict], list[dict], dict[str, Any]]:
        """Stats of the trajectories in scope, read before anything is written (also the missing-score check)."""
        per_round = {int(r.round_id): dict(r._mapping) for r in s.execute(text(_STATS_SQL)).all()}
        if plan.uses_lv:
            missing_lv = sum(int(v["missing_lv"] or 0) for v in per_round.values())
            if missing_lv:
                raise MucodeError(
                    f"{missing_lv} final-turn responses in scope have no score from their round's verifier "
                    f"({_fmt_verifiers(plan.scope, plan.verifiers)}): run the score step first"
                )
        no_correct = [{"round_index": ri, "problem": ext} for ri, ext in s.execute(text(_NO_CORRECT_SQL)).all()]
        excluded = s.execute(text(_EXCLUDED_SQL.format(rounds=_in_list(plan.verifiers)))).one()._mapping
        return per_round, no_correct, dict(excluded)

    # -- reading ----------------------------------------------------------------------------------------
    def sft_training_set(self, ref: int | str) -> dict[str, Any]:
        """A SFT training set by id or name, with its experiment and round."""
        with self.session() as s:
            ts = s.scalars(select(m.TrainingSet).where(m.TrainingSet.kind == "sft",
                                                       id_or_name(m.TrainingSet.id, m.TrainingSet.name, ref))
                           .order_by(m.TrainingSet.id)).first()
            if ts is None:
                raise NotFound(f"no SFT training set {ref!r} (give its id or name; `mucode relabel` builds one)")
            out = training_set_dict(ts, created=False)
            rnd = s.get(m.Round, ts.round_id) if ts.round_id else None
            exp = s.get(m.Experiment, ts.experiment_id) if ts.experiment_id else None
            out["round"] = _round_dict(rnd, exp) if rnd is not None and exp is not None else None
            out["experiment"] = (
                {"id": exp.id, "name": exp.name, "method": exp.method, "base_model": exp.base_model,
                 "config": exp.config}
                if exp is not None
                else None
            )
            out["num_examples"] = s.scalar(
                select(func.count()).select_from(m.SftExample).where(m.SftExample.training_set_id == ts.id)
            )
            return out

    def sft_example_rows(self, training_set_id: int, *, batch_size: int = 5000) -> Iterator[dict[str, Any]]:
        """Every example of a set with its full lineage, streamed (server-side cursor on Postgres).

        In natural-key order (round, problem, rollout m of M, turn), never id order: ids follow the timing of
        the jobs that wrote the rows, and the trainer's data order (hence the model) must depend on content only.

        Each row: the state (``prompt``: the messages shown at turn ``turn_index``), the ``target`` response,
        the source, the example's rollout/round/generator, the target candidate and the rollout it came from,
        and the verifier that chose it.
        """
        e, t, c, ro, p, rd = m.SftExample, m.Turn, m.Candidate, m.Rollout, m.Problem, m.Round
        tt = m.Turn.__table__.alias("target_turn")
        q = (
            select(
                e.id, e.training_set_id, e.problem_id, p.external_id, e.rollout_id, ro.round_id,
                ro.generator_id, ro.sample_index, e.turn_index, e.source, e.target_candidate_id,
                e.verifier_id, t.messages, c.response, c.private_passed,
                tt.c.rollout_id.label("target_rollout_id"), tt.c.index.label("target_turn_index"),
            )
            .join(t, (t.rollout_id == e.rollout_id) & (t.index == e.turn_index))
            .join(c, c.id == e.target_candidate_id)
            .join(tt, tt.c.id == c.turn_id)
            .join(ro, ro.id == e.rollout_id)
            .join(rd, rd.id == ro.round_id)
            .join(p, p.id == e.problem_id)
            .where(e.training_set_id == training_set_id)
            .order_by(rd.index, p.external_id, ro.sample_index, e.turn_index, e.id)
            .execution_options(yield_per=batch_size)
        )
        with self.session() as s:
            for r in s.execute(q):
                d = dict(r._mapping)
                d["prompt"] = d.pop("messages")
                d["target"] = d.pop("response")
                d["target_correct"] = d.pop("private_passed")
                yield d

    # -- generator versions -------------------------------------------------------------------------
    def sft_register_generator(
        self,
        *,
        name: str,
        base_model: str,
        uri: str,
        parent_id: int | None,
        round_id: int | None,
        training_set_id: int | None,
        config: dict[str, Any],
        metrics: dict[str, Any],
    ) -> int:
        """Insert the generator ``ModelVersion`` (idempotent by name: a second call updates uri/config/metrics)."""
        row = {
            "name": name, "kind": "generator", "base_model": base_model, "uri": uri, "parent_id": parent_id,
            "round_id": round_id, "training_set_id": training_set_id, "config": config, "metrics": metrics,
        }
        with self.session() as s:
            self.upsert(
                s, m.ModelVersion.__table__, [row], conflict=["name"],
                update=["uri", "parent_id", "round_id", "training_set_id", "config", "metrics"],
            )
            return int(s.scalar(select(m.ModelVersion.id).where(m.ModelVersion.name == name)))

    def sft_set_round_generator(self, round_id: int, generator_id: int) -> None:
        """Record a trained generator as the round's ``generator_out_id``."""
        with self.session() as s:
            s.execute(update(m.Round).where(m.Round.id == round_id).values(generator_out_id=generator_id))


# -- SQL -----------------------------------------------------------------------------------------------
def _in_list(verifiers: dict[int, int | None]) -> str:
    return ", ".join(str(int(r)) for r in verifiers)


def _ctes(method: str, expert: str, verifiers: dict[int, int | None]) -> str:
    """The CTE chain up to ``ranked``. Only integers from the database and fixed fragments are inlined."""
    rounds = _in_list(verifiers)
    whens = " ".join(
        f"WHEN {int(r)} THEN {int(v)}" for r, v in verifiers.items() if v is not None
    )
    verifier_expr = f"CASE ro.round_id {whens} END" if whens else "CAST(NULL AS BIGINT)"
    # rft reads the turn-1 response; every other method the final turn's.
    turn_expr = "1" if method == "rft" else "s.num_turns"
    label_expr = (
        "CASE WHEN c.private_passed THEN 1 ELSE 0 END" if method == "rft" else "s.label"
    )
    score = _SCORE_SQL["learned" if method == "rft_lv" else expert]
    if method == "rft":
        score = "1.0 * f.label"
    chain = f"""
scope AS (
    SELECT ro.id AS rollout_id, ro.problem_id, ro.round_id, ro.num_turns, ro.sample_index AS rollout_index,
           CASE WHEN ro.final_label THEN 1 ELSE 0 END AS label,
           {verifier_expr} AS verifier_id
    FROM rollouts ro
    JOIN problems p ON p.id = ro.problem_id
    WHERE ro.round_id IN ({rounds})
      AND p.split = 'train'
      AND ro.status = 'done'
      AND ro.final_label IS NOT NULL
      AND ro.num_turns > 0
),
final AS (
    SELECT s.rollout_id, s.problem_id, s.round_id, s.num_turns, s.verifier_id, s.rollout_index,
           {label_expr} AS label, c.id AS final_id, c.sample_index AS final_index, vs.score AS lv
    FROM scope s
    JOIN turns t ON t.rollout_id = s.rollout_id AND t."index" = {turn_expr}
    JOIN candidates c ON c.turn_id = t.id AND c.chosen
    LEFT JOIN verifier_scores vs ON vs.candidate_id = c.id AND vs.verifier_id = s.verifier_id
),
traj AS (
    SELECT x.* FROM (
        SELECT f.*, {score} AS score,
               ROW_NUMBER() OVER (PARTITION BY f.rollout_id ORDER BY f.final_index, f.final_id) AS dup
        FROM final f
    ) x WHERE x.dup = 1
),
ranked AS (
    SELECT r.*,
           ROW_NUMBER() OVER expert_order AS expert_rank,
           FIRST_VALUE(r.final_id) OVER expert_order AS expert_id,
           ROW_NUMBER() OVER (PARTITION BY r.round_id, r.problem_id
                              ORDER BY r.label, r.score DESC NULLS LAST, r.rollout_index) AS fail_rank,
           MAX(r.label) OVER (PARTITION BY r.round_id, r.problem_id) AS any_correct
    FROM traj r
    -- Ties (equal scores: the same program in two rollouts) go to the lower rollout index, a fact of the content,
    -- never to the lower row id, which follows the order in which batches happened to be sampled.
    WINDOW expert_order AS (PARTITION BY r.round_id, r.problem_id
                            ORDER BY r.score DESC NULLS LAST, r.rollout_index)
)"""
    return chain


def _kept_sql(method: str, relabel_failed: int, keep_successful: bool, top_k: int, *, source: str) -> str:
    """The kept trajectories (target candidate, source, last state) of a method, read from ``source``."""
    cols = "r.rollout_id, r.problem_id, r.round_id"
    if method == "mucode":
        keep = f"(r.label = 0 AND r.fail_rank <= {int(relabel_failed)})"
        if keep_successful:
            keep += " OR r.label = 1"
        return f"""
    SELECT {cols}, r.num_turns AS last_turn, r.verifier_id,
           CASE WHEN r.label = 1 THEN r.final_id ELSE r.expert_id END AS target_id,
           CASE WHEN r.label = 1 THEN '{SOURCE_POSITIVE}' ELSE '{SOURCE_RELABELED}' END AS source
    FROM {source} r
    WHERE {keep}"""
    if method == "multi_rft":
        return f"""
    SELECT {cols}, r.num_turns AS last_turn, CAST(NULL AS BIGINT) AS verifier_id,
           r.final_id AS target_id, '{SOURCE_POSITIVE}' AS source
    FROM {source} r WHERE r.label = 1"""
    if method == "rft":
        return f"""
    SELECT {cols}, 1 AS last_turn, CAST(NULL AS BIGINT) AS verifier_id,
           r.final_id AS target_id, '{SOURCE_POSITIVE}' AS source
    FROM {source} r WHERE r.label = 1"""
    if method == "rft_lv":
        return f"""
    SELECT {cols}, r.num_turns AS last_turn, r.verifier_id,
           r.final_id AS target_id, '{SOURCE_TOP_LV}' AS source
    FROM {source} r WHERE r.expert_rank <= {int(top_k)}"""
    raise MucodeError(f"unknown relabel method {method!r}")


_INSERT_SQL = """
INSERT INTO sft_examples
    (training_set_id, problem_id, rollout_id, turn_index, target_candidate_id, source, verifier_id)
SELECT :ts, k.problem_id, k.rollout_id, t."index", k.target_id, k.source, k.verifier_id
FROM kept k
JOIN turns t ON t.rollout_id = k.rollout_id AND t."index" <= k.last_turn
"""

_RANKED = "mucode_relabel_ranked"  # a temporary table, private to the build's connection

_STATS_SQL = f"""
SELECT r.round_id,
       COUNT(*) AS trajectories,
       COUNT(DISTINCT r.problem_id) AS problems,
       SUM(r.label) AS successful,
       SUM(CASE WHEN r.lv IS NULL THEN 1 ELSE 0 END) AS missing_lv,
       SUM(CASE WHEN r.expert_rank = 1 AND r.any_correct = 0 THEN 1 ELSE 0 END) AS problems_without_correct,
       SUM(CASE WHEN r.expert_rank = 1 AND r.label = 0 THEN 1 ELSE 0 END) AS expert_incorrect
FROM {_RANKED} r
GROUP BY r.round_id
"""

_NO_CORRECT_SQL = f"""
SELECT rd."index", p.external_id
FROM {_RANKED} r
JOIN problems p ON p.id = r.problem_id
JOIN rounds rd ON rd.id = r.round_id
WHERE r.expert_rank = 1 AND r.any_correct = 0
ORDER BY rd."index", p.external_id
LIMIT 1000
"""

_COUNTS_SQL = """
SELECT ro.round_id, e.source, COUNT(*) AS n, COUNT(DISTINCT e.rollout_id) AS traj,
       COUNT(DISTINCT e.problem_id) AS problems
FROM sft_examples e JOIN rollouts ro ON ro.id = e.rollout_id
WHERE e.training_set_id = :ts GROUP BY ro.round_id, e.source
"""

_TOTALS_SQL = """
SELECT COUNT(*), COUNT(DISTINCT problem_id), COUNT(DISTINCT rollout_id) FROM sft_examples WHERE training_set_id = :ts
"""

# What the train-split and finished-rollout filters left out (reported, never used).
_EXCLUDED_SQL = """
SELECT
    SUM(CASE WHEN p.split <> 'train' THEN 1 ELSE 0 END) AS non_train_rollouts,
    SUM(CASE WHEN p.split = 'train' AND (ro.status <> 'done' OR ro.final_label IS NULL OR ro.num_turns = 0)
             THEN 1 ELSE 0 END) AS unfinished_rollouts
FROM rollouts ro JOIN problems p ON p.id = ro.problem_id
WHERE ro.round_id IN ({rounds})
"""


# -- shaping -----------------------------------------------------------------------------------------
def _round_dict(rnd: m.Round, exp: m.Experiment) -> dict[str, Any]:
    return {
        "id": rnd.id,
        "index": rnd.index,
        "status": rnd.status,
        "experiment_id": exp.id,
        "experiment": exp.name,
        "method": exp.method,
        "base_model": exp.base_model,
        "experiment_config": exp.config or {},
        "generator_id": rnd.generator_id,
        "verifier_in_id": rnd.verifier_in_id,
        "verifier_out_id": rnd.verifier_out_id,
        "generator_out_id": rnd.generator_out_id,
    }


@dataclass(frozen=True)
class _SftPlan:
    scope: list[dict[str, Any]]  # the rounds whose trajectories are relabeled
    target: dict[str, Any]  # the round the set is built for
    verifiers: dict[int, int | None]  # round id -> the verifier that ranks its trajectories
    uses_lv: bool
    config: dict[str, Any]
    default_name: str
    chain: str  # the ranking CTEs


def _kept_counts(s: Session, kept: str, ts_id: int, inserted: int | None) -> tuple[Any, Any]:
    """Counts from the kept trajectories (k turns -> k examples), checked against the insert's row count."""
    counts = s.execute(text(
        f"WITH kept AS ({kept}) SELECT round_id, source, SUM(last_turn) AS n, COUNT(*) AS traj, "
        "COUNT(DISTINCT problem_id) AS problems FROM kept GROUP BY round_id, source"
    )).all()
    totals = s.execute(text(
        f"WITH kept AS ({kept}) SELECT SUM(last_turn), COUNT(DISTINCT problem_id), COUNT(*) FROM kept"
    )).one()
    if inserted is not None and inserted >= 0 and int(totals[0] or 0) != inserted:
        # A trajectory with a missing turn row: count what was written instead.
        counts = s.execute(text(_COUNTS_SQL), {"ts": ts_id}).all()
        totals = s.execute(text(_TOTALS_SQL), {"ts": ts_id}).one()
    return counts, totals


def _fmt_verifiers(scope: list[dict[str, Any]], verifiers: dict[int, int | None]) -> str:
    return ", ".join(f"round {r['index']}: verifier {verifiers[int(r['id'])]}" for r in scope)


def _stats(
    scope: list[dict[str, Any]],
    per_round: dict[int, dict[str, Any]],
    counts: list[Any],
    totals: Any,
    no_correct: list[dict[str, Any]],
    excluded: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    by_source: dict[str, int] = {}
    by_round: dict[str, dict[str, Any]] = {}
    for r in scope:
        pr = per_round.get(int(r["id"]), {})
        by_round[str(r["index"])] = {
            "round_id": r["id"],
            "trajectories": int(pr.get("trajectories") or 0),
            "successful_trajectories": int(pr.get("successful") or 0),
            "problems": int(pr.get("problems") or 0),
            "problems_without_correct": int(pr.get("problems_without_correct") or 0),
            "expert_incorrect": int(pr.get("expert_incorrect") or 0),
            "examples": 0,
            "examples_by_source": {},
            "trajectories_kept": 0,
        }
    index_of = {int(r["id"]): str(r["index"]) for r in scope}
    for round_id, source, n, traj, _problems in counts:
        br = by_round[index_of[int(round_id)]]
        br["examples"] += int(n)
        br["trajectories_kept"] += int(traj)
        br["examples_by_source"][source] = br["examples_by_source"].get(source, 0) + int(n)
        by_source[source] = by_source.get(source, 0) + int(n)
    examples, problems_with_examples, kept = (int(x or 0) for x in totals)
    return {
        "examples": examples,
        "examples_by_source": by_source,
        "trajectories_kept": kept,
        "problems_with_examples": problems_with_examples,
        "problems": sum(v["problems"] for v in by_round.values()),  # (round, problem) pairs in scope
        "trajectories": sum(v["trajectories"] for v in by_round.values()),
        "successful_trajectories": sum(v["successful_trajectories"] for v in by_round.values()),
        # y* is the verifier's best *incorrect* response for these (paper behaviour): said here, not hidden.
        "problems_without_correct": sum(v["problems_without_correct"] for v in by_round.values()),
        "problems_without_correct_list": no_correct,
        "expert_incorrect": sum(v["expert_incorrect"] for v in by_round.values()),
        "excluded_non_train_rollouts": int(excluded.get("non_train_rollouts") or 0),
        "excluded_unfinished_rollouts": int(excluded.get("unfinished_rollouts") or 0),
        "rounds": by_round,
        "build_seconds": round(seconds, 3),
    }
