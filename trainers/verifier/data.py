"""Verifier datasets from the store: labelled rows, seeded hold-out split, Bradley-Terry pairs, tokenization.

What a verifier trains on (docs/method.md §4):
- one row per chosen response of every turn of the finished training rollouts of the given rounds, with the
  *first* user message (the problem prompt) as its context — the history is never shown: R(x, y);
- label = the final turn's oracle verdict (private tests), 0 for every intermediate turn;
- BT, ``pair_sampling="per_round"`` (the default, as the reference's ``merge_datasets``): for each round and
  each problem with both classes among that round's rows, ``pairs_per_problem`` (correct, incorrect) pairs
  drawn with replacement from ``Random(f"{seed}:r{round_index}:{external_id}")``; the rounds' pair sets are
  concatenated, so RM_k sees about k+1 times the pairs of RM_0 and RM_k's set extends RM_{k-1}'s.
  ``"pooled"``: ``pairs_per_problem`` pairs per problem drawn once from every round's rows together, from
  ``Random(f"{seed}:{external_id}")``. Pairs are stored (``verifier_pairs``) so a run repeats exactly;
- BCE: the labelled rows themselves (stored as candidate ids in the training set's config).
Draws depend only on the store's content (rows ordered by problem, round index, sample index and turn), never
on ids or insertion order. A seeded share of train problems (``holdout_fraction``, 0 by default: the paper
trains on all of them) can be held out of training for the metrics.

Split hygiene lives in the store query (train split of training datasets only); this module never builds a
query of its own. No heavy import at module level: the round orchestrator builds training sets without torch.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.env.chat import render_chat
from app.errors import MucodeError
from app.hashing import json_hash
from trainers.verifier.config import VerifierTrainingConfig

if TYPE_CHECKING:
    from app.store import Store


@dataclass(frozen=True)
class BTExample:
    problem_id: int
    prompt: str
    chosen: str
    rejected: str
    chosen_candidate_id: int
    rejected_candidate_id: int


@dataclass(frozen=True)
class BCEExample:
    prompt: str
    response: str
    label: int
    candidate_id: int


# ---------------------------------------------------------------------------------------------- pure helpers
def split_holdout(problem_keys: dict[int, str], fraction: float, seed: int) -> set[int]:
    """Problem ids held out of training: the ``round(fraction * n)`` problems with the smallest
    ``sha256(f"{seed}:{external_id}")``. Stable across databases and independent of which rounds are used."""
    if fraction <= 0 or not problem_keys:
        return set()
    k = round(fraction * len(problem_keys))
    ranked = sorted(
        problem_keys,
        key=lambda pid: hashlib.sha256(f"{seed}:{problem_keys[pid]}".encode()).hexdigest(),
    )
    return set(ranked[:k])


def draw_pairs(
    rows: Sequence[dict[str, Any]], pairs_per_problem: int, seed: int, *, round_index: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Draw BT pairs as the reference (convert_multiturn_preference.py): per problem with at least one correct
    and one incorrect response, ``pairs_per_problem`` (random correct, random incorrect) pairs, with
    replacement. ``rows`` are store rows (candidate_id, problem_id, external_id, label) in a deterministic
    order. ``round_index`` (the rows of one round) is part of the random key, so that every round draws anew.
    Returns (pairs, stats); ``pair_index`` counts from 0 per problem."""
    by_problem: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_problem[r["problem_id"]].append(r)
    pairs: list[dict[str, Any]] = []
    only_pos = only_neg = used = 0
    prefix = f"{seed}:" if round_index is None else f"{seed}:r{round_index}:"
    for pid in sorted(by_problem):
        prows = by_problem[pid]
        pos = [r["candidate_id"] for r in prows if r["label"]]
        neg = [r["candidate_id"] for r in prows if not r["label"]]
        if not pos or not neg:
            only_pos += bool(pos)
            only_neg += bool(neg)
            continue
        used += 1
        rng = random.Random(prefix + prows[0]["external_id"])
        for i in range(pairs_per_problem):
            pairs.append(
                {
                    "problem_id": pid,
                    "pair_index": i,
                    "chosen_candidate_id": rng.choice(pos),
                    "rejected_candidate_id": rng.choice(neg),
                }
            )
    stats = {
        "problems_with_pairs": used,
        "problems_all_correct": only_pos,
        "problems_all_incorrect": only_neg,
        "pairs": len(pairs),
    }
    return pairs, stats


def draw_pairs_per_round(
    rows: Sequence[dict[str, Any]], pairs_per_problem: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The reference's per-iteration draw: ``draw_pairs`` on each round's rows (``round_index``) on its own,
    the rounds' sets concatenated in round order (a problem's ``pair_index`` runs on across its rounds).
    A problem counts in a round only when that round's rows hold both classes. Returns (pairs, stats): totals,
    the problems with at least one pair, and the same counts per round (``by_round``)."""
    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_round[int(r["round_index"])].append(r)
    pairs: list[dict[str, Any]] = []
    next_index: dict[int, int] = defaultdict(int)
    per_round: dict[str, dict[str, int]] = {}
    for ri in sorted(by_round):
        drawn, st = draw_pairs(by_round[ri], pairs_per_problem, seed, round_index=ri)
        for p in drawn:
            p["pair_index"] = next_index[p["problem_id"]]
            next_index[p["problem_id"]] += 1
        pairs += drawn
        per_round[str(ri)] = st
    problems = {r["problem_id"] for r in rows}
    stats: dict[str, Any] = {
        "problems_with_pairs": len(next_index),
        "problems_without_pairs": len(problems) - len(next_index),
        "pairs": len(pairs),
        "by_round": per_round,
    }
    return pairs, stats


def default_training_set_name(round_ids: Sequence[int], config: VerifierTrainingConfig) -> str:
    key = {"round_ids": sorted(round_ids), **config.data_config()}
    # pooled is the one draw there was before the option, and BCE draws no pair: those sets keep their names
    if key["pair_sampling"] == "pooled" or config.loss == "bce":
        del key["pair_sampling"]
    return f"verifier-{config.loss}-{json_hash(key)[:12]}"


# ---------------------------------------------------------------------------------------------- store side
def build_training_set(
    store: Store,
    round_ids: Sequence[int],
    config: VerifierTrainingConfig | None = None,
    *,
    name: str | None = None,
    experiment_id: int | None = None,
    round_id: int | None = None,
) -> int:
    """Build (or find) the frozen verifier training set of ``round_ids``; returns its id.

    Idempotent: a set with the same name (by default a hash of the rounds and the data config) is reused as
    stored, so a training run can be repeated exactly from its pairs.
    """
    config = config or VerifierTrainingConfig()
    round_ids = sorted({int(r) for r in round_ids})
    name = name or default_training_set_name(round_ids, config)
    existing = store.get_verifier_training_set(name, required=False)
    if existing is not None:
        if existing["kind"] != config.loss:
            raise MucodeError(f"training set {name!r} is a {existing['kind']} set, not {config.loss}")
        return existing["id"]

    rows = store.verifier_training_rows(round_ids)
    keys = {r["problem_id"]: r["external_id"] for r in rows}
    holdout = split_holdout(keys, config.holdout_fraction, config.seed)
    train_rows = [r for r in rows if r["problem_id"] not in holdout]
    n_pos = sum(1 for r in train_rows if r["label"])
    stats: dict[str, Any] = {
        "rows": len(rows),
        "train_rows": len(train_rows),
        "train_positive": n_pos,
        "train_negative": len(train_rows) - n_pos,
        "intermediate_rows": sum(1 for r in train_rows if not r["is_final"]),
        "problems": len(keys),
        "holdout_problems": len(holdout),
        "train_problems": len(keys) - len(holdout),
    }
    cfg: dict[str, Any] = {
        "round_ids": round_ids,
        **config.data_config(),
        "holdout_problem_ids": sorted(holdout),
    }
    pairs: list[dict[str, Any]] = []
    if config.loss == "bt":
        if config.pair_sampling == "per_round":
            pairs, pstats = draw_pairs_per_round(train_rows, config.pairs_per_problem, config.seed)
        else:
            pairs, pstats = draw_pairs(train_rows, config.pairs_per_problem, config.seed)
        stats.update(pstats)
        if not pairs:
            raise MucodeError(
                f"no training pairs: of {stats['train_problems']} train-split problem(s) in rounds {round_ids}, "
                "none has both a correct and an incorrect response"
                + (" within one round" if config.pair_sampling == "per_round" else "")
                + " (finished rollouts of train-split MBPP "
                "problems only; test, validation and HumanEval problems never count)"
            )
    else:
        if not train_rows:
            raise MucodeError(
                f"no labelled rows: rounds {round_ids} hold no finished rollout of a train-split MBPP problem "
                "outside the hold-out"
            )
        if n_pos == 0 or n_pos == len(train_rows):
            raise MucodeError("BCE needs both correct and incorrect responses; the rows hold one class only")
        cfg["rows"] = [[r["candidate_id"], int(r["label"])] for r in train_rows]
    ts_id, _ = store.create_verifier_training_set(
        name=name,
        kind=config.loss,
        config=cfg,
        stats=stats,
        pairs=pairs,
        experiment_id=experiment_id,
        round_id=round_id,
    )
    return ts_id


def load_bt_examples(store: Store, training_set_id: int) -> list[BTExample]:
    pairs = store.verifier_pairs(training_set_id)
    ids = {p["chosen_candidate_id"] for p in pairs} | {p["rejected_candidate_id"] for p in pairs}
    texts = store.verifier_candidate_texts(sorted(ids))
    out = []
    for p in pairs:
        prompt, chosen = texts[p["chosen_candidate_id"]]
        prompt_r, rejected = texts[p["rejected_candidate_id"]]
        if prompt_r != prompt:
            raise MucodeError(
                f"pair {p['problem_id']}/{p['pair_index']}: chosen and rejected have different first prompts"
            )
        out.append(
            BTExample(p["problem_id"], prompt, chosen, rejected, p["chosen_candidate_id"], p["rejected_candidate_id"])
        )
    return out


def load_bce_examples(store: Store, training_set_id: int) -> list[BCEExample]:
    ts = store.get_verifier_training_set(training_set_id)
    rows = ts["config"].get("rows") or []
    texts = store.verifier_candidate_texts(sorted({int(c) for c, _ in rows}))
    return [BCEExample(texts[int(c)][0], texts[int(c)][1], int(lab), int(c)) for c, lab in rows]


# ---------------------------------------------------------------------------------------------- tokenization
def encode(tokenizer, prompt: str, response: str) -> list[int]:
    """Token ids of the chat template applied to [first user message, assistant response] — never the history.

    Whitespace the template appends after the final end-of-turn token (ChatML's trailing newline) is dropped so
    the score is read at the end-of-turn token, as the reference reads it at Llama-3's ``<|eot_id|>``.
    """
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    if getattr(tokenizer, "chat_template", None):
        ids = render_chat(tokenizer, messages, add_generation_prompt=False, tokenize=True).input_ids  # as sampling
    else:  # a base model without a template: plain text, as TRL does for non-conversational data
        text = f"{prompt}\n\n{response}"
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids:
        last = len(ids) - 1 - ids[::-1].index(eos)
        tail = ids[last + 1 :]
        if tail and tokenizer.decode(tail).strip() == "":
            ids = ids[: last + 1]
    return ids


def tokenize_bt(tokenizer, examples: Sequence[BTExample], max_length: int) -> tuple[list[dict[str, Any]], int]:
    """[{"chosen_ids", "rejected_ids"}], dropping pairs with a side longer than ``max_length`` (TRL's rule);
    returns (rows, number dropped)."""
    out, dropped = [], 0
    cache: dict[tuple[str, str], list[int]] = {}  # pairs are drawn with replacement: encode each text once

    def enc(prompt: str, response: str) -> list[int]:
        key = (prompt, response)
        if key not in cache:
            cache[key] = encode(tokenizer, prompt, response)
        return cache[key]

    for ex in examples:
        c = enc(ex.prompt, ex.chosen)
        r = enc(ex.prompt, ex.rejected)
        if len(c) > max_length or len(r) > max_length:
            dropped += 1
            continue
        out.append({"chosen_ids": c, "rejected_ids": r})
    return out, dropped


def tokenize_bce(tokenizer, examples: Sequence[BCEExample], max_length: int) -> tuple[list[dict[str, Any]], int]:
    out, dropped = [], 0
    for ex in examples:
        ids = encode(tokenizer, ex.prompt, ex.response)
        if len(ids) > max_length:
            dropped += 1
            continue
        out.append({"input_ids": ids, "label": float(ex.label)})
    return out, dropped
