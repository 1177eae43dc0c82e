"""The expert-iteration round as a state machine: pure decisions over its stored state (docs/method.md §6).

A round k of an experiment runs seven steps, in order:

| step              | what                                                                   | runs on   |
|-------------------|------------------------------------------------------------------------|-----------|
| ``collect``       | M rollouts x T turns per train problem with G_k (the base model at k=0) | sample + execute |
| ``score_old``     | score the new candidates with RM_{k-1} (skipped at k=0)                 | score     |
| ``train_verifier``| RM_k, from the base model, on the pairs of rounds 0..k                  | train     |
| ``score_new``     | score the round's candidates with RM_k (the relabel needs them)         | score     |
| ``relabel``       | SFT set: round k relabeled with RM_k + rounds < k with their own RM      | control   |
| ``train_generator``| G_{k+1}, from the base model, on that set (the union of all rounds)   | train     |
| ``evaluate``      | G_k: greedy + multi-turn BoN with RM_k (trained on G_k's rollouts)      | sample, execute, score |

Which generator ``evaluate`` searches with which verifier is ``eval.verifier_pairing``: ``same_round`` (the
default, the paper's G2 searched with RM2) evaluates (G_k, RM_k) in round k, so every generator is searched with
a verifier that has seen its own samples (round 0 evaluates the base model G_0 only with ``eval.baseline``).
``previous_round`` (experiments stored before the setting) evaluates G_{k+1} with RM_k, and G_0 with RM_0 at
k=0. An experiment's last generator is evaluated by a *final* round (``mucode round run --final``): it collects
with G_k, trains RM_k and evaluates (G_k, RM_k); relabel, train_generator and the score steps (they feed the
relabel; score_old, which scores with RM_{k-1}, likewise) are skipped: no generator nobody uses is trained,
and no round can follow it.

Methods (docs/method.md §6) change what a step does, never the order: ``multi_rft`` trains the generator on
successful trajectories only and ``rft`` on correct first turns (no verifier in the loop: both score steps are
skipped, the verifier is still trained every round for the BoN evaluation); ``rft_lv`` keeps the top-K
trajectories by verifier score; ``mucode`` relabels (``relabel.expert`` ``oracle`` needs no scores either).

State. ``rounds.steps`` holds one record per step (``StepRecord``; JSON in the row)::

    {"state": "pending|running|done|skipped|failed", "attempt": n, "started_at": iso, "finished_at": iso,
     "seconds": s, "error": text | None, "result": {...}, "reason": why skipped, "job": key, "heals": n,
     "healed": why}

Everything here is a pure function of that record and the round's facts (``RoundFacts``): which step is next
(``next_action``), why a step is skipped (``skip_reason``), which models a step uses (``verifier_inputs``,
``eval_plan``...) and the deterministic names of what it produces. ``workers/tasks/rounds.py`` reads the facts
from the store, acts, and writes the records back; it never decides anything itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from app.protocol import ExperimentConfig

STEPS: tuple[str, ...] = (
    "collect",
    "score_old",
    "train_verifier",
    "score_new",
    "relabel",
    "train_generator",
    "evaluate",
)
FINISHED = frozenset({"done", "skipped"})
# Where each step's work runs (for status); relabel is one SQL build, run inline by the control worker.
STEP_QUEUES = {
    "collect": "sample",
    "score_old": "score",
    "train_verifier": "train",
    "score_new": "score",
    "relabel": "control",
    "train_generator": "train",
    "evaluate": "sample",
}
# Steps whose work is a wrapper job on a GPU queue (workers/tasks/rounds.py): task name per step.
JOB_TASKS = {
    "score_old": "mucode.round_score",
    "score_new": "mucode.round_score",
    "train_verifier": "mucode.round_train",
    "train_generator": "mucode.round_train",
}
INLINE_STEPS = frozenset({"relabel"})
# Methods whose generator data depends on verifier scores of the round's candidates.
METHODS = ("mucode", "multi_rft", "rft", "rft_lv")
# What a final round leaves out, and why (shown by `round status`).
FINAL_SKIP = {
    "score_old": "final round: nothing is relabeled",
    "score_new": "final round: nothing is relabeled",
    "relabel": "final round: no generator is trained after it",
    "train_generator": "final round: no generator is trained after it",
}


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def uses_round_scores(config: ExperimentConfig) -> bool:
    """Does the method's relabel read the round's verifier scores?"""
    if config.method == "rft_lv":
        return True
    if config.method == "mucode":
        return config.relabel.expert in ("both", "learned")
    return False


# -- facts ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepRecord:
    """One step's record in ``rounds.steps`` (a step not started yet reads as the defaults)."""

    state: str = "pending"  # pending | running | done | skipped | failed
    attempt: int = 0  # starts so far; a job key carries the attempt it belongs to
    started_at: str | None = None  # ISO timestamps
    finished_at: str | None = None
    seconds: float | None = None
    error: str | None = None
    reason: str | None = None  # why it was skipped
    result: Mapping[str, Any] = field(default_factory=dict)  # what it produced (ids, counts)
    job: str | None = None  # the key of the job that runs it, for steps run by one job
    heals: int = 0  # times the healer queued its lost work again
    healed: str | None = None  # why it did, the last time
    retried: bool = False  # reset to pending by a resume

    @classmethod
    def of(cls, raw: Mapping[str, Any] | None) -> StepRecord:
        """From the stored JSON; keys this version does not know are left out, missing ones take defaults."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in (raw or {}).items() if k in known and v is not None}
        values["attempt"] = int(values.get("attempt", 0))
        values["heals"] = int(values.get("heals", 0))
        values["result"] = dict(values.get("result") or {})
        return cls(**values)


@dataclass(frozen=True)
class RoundFacts:
    """What the decisions need to know about one round (read from the store by the worker)."""

    round_id: int
    experiment: str
    experiment_id: int
    index: int
    config: ExperimentConfig
    base_model: str
    status: str = "pending"
    steps: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    generator_id: int | None = None  # G_k: collects
    verifier_in_id: int | None = None  # RM_{k-1}: score_old
    verifier_out_id: int | None = None  # RM_k
    generator_out_id: int | None = None  # G_{k+1}
    round_ids_upto: tuple[int, ...] = ()  # ids of rounds 0..k of the experiment, in index order
    final: bool = False  # the experiment's last round: evaluates G_k, trains no generator

    @property
    def method(self) -> str:
        return self.config.method

    def record(self, step: str) -> StepRecord:
        return StepRecord.of(self.steps.get(step))

    def state(self, step: str) -> str:
        return self.record(step).state


def skip_reason(step: str, facts: RoundFacts) -> str | None:
    """Why ``step`` does not run in this round (None: it runs)."""
    if step not in STEPS:
        raise ValueError(f"unknown round step {step!r}")
    cfg = facts.config
    if facts.final and step in FINAL_SKIP:
        return FINAL_SKIP[step]
    if step == "score_old":
        if facts.verifier_in_id is None:
            return "no earlier verifier (round 0)"
        if not uses_round_scores(cfg):
            return f"method {cfg.method!r} trains without verifier scores"
    if step == "score_new" and not uses_round_scores(cfg):
        if cfg.method == "mucode":
            return f"relabel expert {cfg.relabel.expert!r} needs no verifier scores"
        return f"method {cfg.method!r} trains without verifier scores"
    if step == "evaluate" and not cfg.eval.datasets:
        return "no evaluation datasets in the config"
    if step == "evaluate" and not eval_generators(facts):
        return "eval.baseline is off: round 0 does not evaluate the base model (G0)"
    return None


# -- the next action ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    """``start``: begin ``step``; ``skip``: record it skipped; ``check``: it runs, see whether its outputs are
    complete; ``blocked``: it failed (``round resume`` retries it); ``finish``: every step is done."""

    kind: str
    step: str | None = None
    reason: str | None = None


def next_action(facts: RoundFacts) -> Action:
    """The one thing to do next for this round."""
    for step in STEPS:
        rec = facts.record(step)
        state = rec.state
        if state in FINISHED:
            continue
        if state == "pending":
            reason = skip_reason(step, facts)
            if reason is not None:
                return Action("skip", step, reason)
            return Action("start", step)
        if state == "running":
            return Action("check", step)
        if state == "failed":
            return Action("blocked", step, rec.error)
        raise ValueError(f"round {facts.round_id} step {step}: unknown state {state!r}")
    return Action("finish")


def resume_plan(facts: RoundFacts) -> tuple[str, str] | None:
    """What ``round resume`` does: (step, how) for the first unfinished step; None when the round is done.

    how: ``start`` (never started), ``retry`` (failed, or a job lost with a killed worker: queued again as a
    new attempt; a collection is resumed as a new generation, so finished work is kept)."""
    for step in STEPS:
        state = facts.state(step)
        if state in FINISHED:
            continue
        return (step, "start" if state == "pending" else "retry")
    return None


def progress(facts: RoundFacts) -> list[tuple[str, str]]:
    """(step, state) for every step, with the skips that are already decidable shown as such."""
    out = []
    for step in STEPS:
        state = facts.state(step)
        if state == "pending" and skip_reason(step, facts) is not None:
            state = "skipped"
        out.append((step, state))
    return out


# -- names (deterministic: a redelivered job finds what an earlier attempt made) ------------------------------
def verifier_name(experiment: str, index: int, loss: str) -> str:
    """RM_k's model version name (the verifier trainer's own default for a round)."""
    return f"{experiment}-r{index}-verifier-{loss}"


def job_key(round_id: int, step: str, attempt: int) -> str:
    return f"round/{round_id}/{step}/a{attempt}"


def evaluation_name(experiment: str, index: int, generator_label: str, dataset: str, split: str | None,
                    mode_label: str) -> str:
    where = dataset + (f"-{split}" if split else "")
    return f"{experiment}/r{index}/{generator_label}/{where}/{mode_label}"


# -- step inputs ------------------------------------------------------------------------------------------
def parse_dataset(spec: str) -> tuple[str, str | None]:
    """``mbpp:test`` -> ("mbpp", "test"); ``humaneval`` -> ("humaneval", None)."""
    name, _, split = spec.partition(":")
    return name.strip(), (split.strip() or None)


def collect_inputs(facts: RoundFacts) -> dict[str, Any]:
    """The round's training collection: its generator, datasets and the CollectSpec fields."""
    cfg = facts.config
    if facts.generator_id is None:
        raise ValueError(f"round {facts.index} has no generator to collect with")
    r = cfg.rollout
    return {
        "generator_id": facts.generator_id,
        "datasets": [parse_dataset(d) for d in cfg.train_datasets],
        "limit": cfg.train_limit,
        "spec": {
            "backend": cfg.backend,
            "turns": r.turns,
            "samples_per_problem": r.rollouts_per_problem,
            "candidates": 1,
            "selector": "first",
            "temperature": r.sampling.temperature,
            "top_p": r.sampling.top_p,
            "max_new_tokens": r.sampling.max_new_tokens,
            "stop_after_code": r.sampling.stop_after_code,
            "stop_rule": r.stop_rule,
            "batch_size": r.batch_size,
            "seed": r.seed + facts.index,  # a new draw every round
            "import_prelude": cfg.harness.import_prelude,
            "shown_tests": r.train_shown_tests,
        },
    }


def score_inputs(step: str, facts: RoundFacts) -> int:
    """The verifier a score step uses: RM_{k-1} for ``score_old``, RM_k for ``score_new``."""
    vid = facts.verifier_in_id if step == "score_old" else facts.verifier_out_id
    if vid is None:
        raise ValueError(f"round {facts.index}: {step} has no verifier")
    return vid


def verifier_inputs(facts: RoundFacts) -> dict[str, Any]:
    """RM_k: from the base model, on the pairs of rounds 0..k (the aggregated data, docs/method.md §6)."""
    cfg = facts.config
    if not facts.round_ids_upto or facts.round_ids_upto[-1] != facts.round_id:
        raise ValueError(f"round ids up to round {facts.index} must end with it: {facts.round_ids_upto}")
    return {
        "base_model": facts.base_model,
        "round_ids": list(facts.round_ids_upto),
        "protocol": cfg.verifier.model_dump(mode="json"),
        "config": dict(cfg.trainer_overrides.get("verifier") or {}),
        "name": verifier_name(facts.experiment, facts.index, cfg.verifier.loss),
        "round_id": facts.round_id,
        "experiment_id": facts.experiment_id,
    }


def generator_inputs(facts: RoundFacts, training_set_id: int) -> dict[str, Any]:
    """G_{k+1}: from the base model (``from_base_each_round``) on the relabeled union of rounds 0..k."""
    return {
        "training_set": training_set_id,
        "set_round_output": True,
        "config": dict(facts.config.trainer_overrides.get("generator") or {}),
    }


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation of one generator on one dataset: greedy, or BoN with one selector."""

    name: str
    generator_label: str  # G1, G0 ...
    generator_id: int
    verifier_id: int | None
    dataset: str
    split: str | None
    mode: str  # greedy | bon
    selector: str  # first (greedy) | random | lv | pt | pt+lv
    candidates: int  # N
    chains: int  # C
    turns: int  # T
    temperature: float
    top_p: float
    max_new_tokens: int
    stop_after_code: bool
    stop_rule: str
    batch_size: int
    seed: int
    backend: str
    limit: int | None
    import_prelude: bool = True  # the experiment's harness.import_prelude
    # How a chain counts (app.evaluation): greedy follows eval.greedy_metric, Best-of-N counts the first public pass.
    metric: str = "first_public"

    def collect_spec(self) -> dict[str, Any]:
        """CollectSpec fields (without ``then``)."""
        from app.selection import needs_scores

        return {
            "backend": self.backend,
            "turns": self.turns,
            "samples_per_problem": self.chains,
            "candidates": self.candidates,
            "selector": self.selector,
            "verifier_id": self.verifier_id if needs_scores(self.selector) else None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "stop_after_code": self.stop_after_code,
            "stop_rule": self.stop_rule,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "import_prelude": self.import_prelude,
        }

    def stored_config(self) -> dict[str, Any]:
        """The evaluation row's ``config``: the collection's settings and the chain metric its results use."""
        return {**self.collect_spec(), "metric": self.metric}

    def evaluation_row(self) -> dict[str, Any]:
        """Arguments of ``store.create_evaluation`` (besides name, experiment and round)."""
        return {
            "generator_id": self.generator_id,
            "dataset": self.dataset,
            "split": self.split,
            "mode": self.mode,
            "selector": self.selector if self.mode == "bon" else None,
            "verifier_id": self.verifier_id,
            "num_candidates": self.candidates,
            "num_chains": self.chains,
            "max_turns": self.turns,
        }


def mode_label(mode: str, selector: str, n: int, c: int) -> str:
    return "greedy" if mode == "greedy" else f"bon-{selector}-N{n}-C{c}"


def eval_specs(
    config: ExperimentConfig,
    *,
    name_prefix: str,
    generator_label: str,
    generator_id: int,
    verifier_id: int | None,
    datasets: Sequence[str] | None = None,
) -> list[EvalSpec]:
    """Greedy (temperature 0, one chain) and BoN (N per turn, C chains, one evaluation per selector) of one
    generator on every evaluation dataset, as the config says."""
    from app.selection import needs_scores

    ev = config.eval
    max_new = ev.max_new_tokens or config.rollout.sampling.max_new_tokens
    common = {
        "generator_label": generator_label,
        "generator_id": generator_id,
        "turns": ev.turns,
        "top_p": config.rollout.sampling.top_p,
        "max_new_tokens": max_new,
        "stop_after_code": config.rollout.sampling.stop_after_code,
        "stop_rule": config.rollout.stop_rule,
        "batch_size": config.rollout.batch_size,
        "seed": ev.seed,
        "backend": config.backend,
        "limit": ev.limit,
        "import_prelude": config.harness.import_prelude,
    }
    out: list[EvalSpec] = []
    for spec in datasets if datasets is not None else ev.datasets:
        ds, split = parse_dataset(spec)
        where = ds + (f"-{split}" if split else "")
        if ev.greedy:
            out.append(EvalSpec(
                name=f"{name_prefix}/{generator_label}/{where}/greedy", verifier_id=verifier_id, dataset=ds,
                split=split, mode="greedy", selector="first", candidates=1, chains=1, temperature=0.0,
                metric=ev.greedy_metric, **common,
            ))  # fmt: skip
        for sel in ev.selectors:
            if needs_scores(sel) and verifier_id is None:
                raise ValueError(f"the {sel} selector needs a verifier")
            label = mode_label("bon", sel, ev.bon_candidates, ev.bon_chains)
            out.append(EvalSpec(
                name=f"{name_prefix}/{generator_label}/{where}/{label}", verifier_id=verifier_id, dataset=ds,
                split=split, mode="bon", selector=sel, candidates=ev.bon_candidates, chains=ev.bon_chains,
                temperature=ev.temperature, **common,
            ))  # fmt: skip
    return out


def eval_generators(facts: RoundFacts) -> list[tuple[int, str]]:
    """Which generators the round evaluates, all with its verifier RM_k: (index j of G_j, ``in`` = the round's
    generator G_k / ``out`` = the one it trains, G_{k+1}), in order. ``same_round`` and a final round: G_k;
    ``previous_round``: G_{k+1}, and G_0 first at k=0. G_0 (the base model) only with ``eval.baseline``."""
    k, ev = facts.index, facts.config.eval
    if facts.final or ev.verifier_pairing == "same_round":
        plan = [(k, "in")]
    else:
        plan = [(0, "in"), (k + 1, "out")] if k == 0 else [(k + 1, "out")]
    return [(j, which) for j, which in plan if j > 0 or ev.baseline]


def eval_plan(facts: RoundFacts) -> list[EvalSpec]:
    """The round's evaluations: each generator of ``eval_generators`` searched with RM_k."""
    prefix = f"{facts.experiment}/r{facts.index}"
    specs: list[EvalSpec] = []
    for j, which in eval_generators(facts):
        gid = facts.generator_id if which == "in" else facts.generator_out_id
        if gid is None:
            what = "generator" if which == "in" else "trained generator"
            raise ValueError(f"round {facts.index} has no {what} to evaluate (G{j})")
        specs += eval_specs(
            facts.config, name_prefix=prefix, generator_label=f"G{j}", generator_id=gid,
            verifier_id=facts.verifier_out_id,
        )  # fmt: skip
    return specs


# -- a new round -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PriorRound:
    index: int
    status: str
    generator_out_id: int | None
    verifier_out_id: int | None
    final: bool = False


def plan_next_round(prior: Sequence[PriorRound], base_generator_id: int) -> dict[str, Any]:
    """Index and input models of the next round: G_k = G_{k-1}'s output (base at k=0), RM_{k-1} = the last
    round's verifier. Raises ValueError when the last round is not finished (resume it instead) or was the
    experiment's final one."""
    if not prior:
        return {"index": 0, "generator_id": base_generator_id, "verifier_in_id": None}
    last = max(prior, key=lambda r: r.index)
    if last.status != "done":
        raise ValueError(
            f"round {last.index} is {last.status}, not done: `mucode round resume` finishes it before a new one"
        )
    if last.final:
        raise ValueError(
            f"round {last.index} was the experiment's final round: no round follows it (it evaluated the last "
            f"generator, G{last.index}); create a new experiment to go on"
        )
    if last.generator_out_id is None:
        raise ValueError(f"round {last.index} is done but produced no generator")
    return {"index": last.index + 1, "generator_id": last.generator_out_id, "verifier_in_id": last.verifier_out_id}


def step_seconds(rec: StepRecord) -> float | None:
    """Wall time of a step record: finished - started (or so far, when running)."""
    if not rec.started_at:
        return None
    try:
        t0 = datetime.fromisoformat(rec.started_at)
        t1 = datetime.fromisoformat(rec.finished_at) if rec.finished_at else datetime.now(UTC)
    except (TypeError, ValueError):
        return None
    return max(0.0, (t1 - t0).total_seconds())
