"""Experiments, their rounds and their evaluations, for any caller: the CLI, ``mucode demo``, a script.

Creating an experiment: read a config file, build and check its ``ExperimentConfig`` (protocol defaults <-
preset <- file <- explicit values) and create its row, frozen. Driving a round: queue (or resume) it and, in
embedded mode, run its jobs here; with a broker return once queued or follow it to its end. Evaluating a
generator outside a round: plan the evaluations (``mucode eval``), create them and run or queue them.

Functions take a store and explicit values, return results and raise ``MucodeError``s with a message a user
can act on; printing (``app/display.py``) and exit codes are the caller's. The settings in force
(``app.config.get_settings``, or a block of ``use_settings``) decide embedded versus broker. Round and
evaluation jobs live in ``workers``, imported inside the functions that queue them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from app.errors import ConfigError, MucodeError, NotFound

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ALL_SELECTORS = ("random", "lv", "pt", "pt+lv")


class RoundFailed(MucodeError):
    """The round ended failed (a step's error is recorded in it); ``status`` is its ``round_status``."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        super().__init__(f"round {status.get('index')} of {status.get('experiment')} failed at "
                         f"{status.get('failed_step')}: {status.get('error')}")


# -- configs and experiments --------------------------------------------------------------------------------
def read_config_file(path: Path) -> dict[str, Any]:
    """A JSON, TOML or YAML file holding (part of) an ExperimentConfig."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise ConfigError("reading YAML needs PyYAML (pip install pyyaml); or use JSON/TOML") from exc
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config fields")
    return data


def build_config(method: str | None, base_model: str | None, overrides: dict[str, Any],
                 preset: str | None = None):
    """ExperimentConfig = protocol defaults <- preset (``app.presets``) <- file values <- method and base
    model."""
    from pydantic import ValidationError

    from app import presets
    from app.protocol import ExperimentConfig

    try:
        data = presets.build(preset, overrides)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if method is not None:
        data["method"] = method
    if base_model is not None:
        data["base_model"] = base_model
    if not data.get("base_model"):
        raise ConfigError("an experiment needs a base model: --base-model MODEL (or base_model in the config "
                          "file)")
    try:
        return ExperimentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid experiment config: {_field_errors(exc)}") from exc


def _field_errors(exc) -> str:
    """``train_limit: Input should be greater than 0 (got -1)``: each field, its problem and the value
    given."""
    msgs = []
    for e in exc.errors():
        if not e["loc"]:
            msgs.append(e["msg"])
            continue
        value = e.get("input")
        shown = isinstance(value, (int, float, str)) and not isinstance(value, bool)
        got = f" (got {value!r})" if shown else ""
        msgs.append(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}{got}")
    return "; ".join(msgs)


def create_experiment(store, name: str, config) -> tuple[int, bool]:
    """Create ``name`` with its frozen config; (id, created). The same name with another config is an
    error."""
    if not NAME.match(name):
        raise ConfigError(f"experiment names are letters, digits, '.', '_' and '-' (not {name!r})")
    frozen = config.model_dump(mode="json")
    try:
        existing = store.get_experiment(name)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.config != frozen:
            raise ConfigError(f"experiment {name!r} exists with another config (configs are frozen): pick a "
                              "new name")
        return existing.id, False
    return store.create_experiment(name, config.method, config.base_model, frozen), True


# -- rounds --------------------------------------------------------------------------------------------------
def latest_round(store, name: str, index: int | None = None):
    """Round ``index`` of experiment ``name``, by default its latest."""
    exp = store.get_experiment(name)
    rounds = store.experiment_rounds(exp.id)
    if not rounds:
        raise NotFound(f"experiment {name!r} has no round yet: `mucode round run {name}`")
    if index is None:
        return rounds[-1]
    for r in rounds:
        if r.index == index:
            return r
    raise NotFound(f"experiment {name!r} has no round {index}")


def create_round(store, experiment: str, *, final: bool = False) -> int:
    """Create the experiment's next round with its input models, not queued yet (``drive_round`` starts it).
    ``final``: the last round (evaluates G_k with RM_k, trains no generator, none follows it)."""
    from workers.tasks import rounds as tasks

    return tasks.create_round(store, experiment, final=final)


def drive_round(store, round_id: int, *, resume: bool = False, wait: bool = False, progress=None,
                jobs_stdout: IO[str] | None = None) -> dict[str, Any]:
    """Start the round (queue it; with ``resume`` put its first unfinished step back and queue it), then: in
    embedded mode its jobs run here, to its end; with a broker return once queued, or with ``wait`` follow it
    to its end. Returns its ``round_status``.

    ``progress``: a context manager held while the round runs (a progress display); ``jobs_stdout``: where
    in-process jobs print. Raises RoundFailed when the round ended failed; an error that the round did not
    record (an unreachable broker, say) is raised as it is."""
    from workers.dispatch import in_process
    from workers.tasks import rounds as tasks

    embedded = in_process()
    error: Exception | None = None
    quiet = contextlib.redirect_stdout(jobs_stdout) if jobs_stdout is not None else contextlib.nullcontext()
    with progress or contextlib.nullcontext():
        try:
            with quiet:
                if resume:
                    tasks.resume_round(store, round_id)
                else:
                    tasks.queue_round(round_id)
        except Exception as exc:  # noqa: BLE001 -- in-process jobs raise here; the round records it
            error = exc
        if wait and not embedded and error is None:
            wait_round(store, round_id)
    st = tasks.round_status(store, round_id, queues=not embedded)
    if st["status"] == "failed":
        raise RoundFailed(st) from error
    if error is not None:
        raise error
    return st


def wait_round(store, round_id: int, poll: float = 2.0) -> None:
    """Until the round is done or failed, riding out a database outage."""
    from app.errors import is_transient
    from workers.tasks.rounds import round_status

    while True:
        try:
            st = round_status(store, round_id)
        except Exception as exc:
            if not is_transient(exc):
                raise
            time.sleep(poll * 5)  # the database is down for now: the round waits for it too
            continue
        if st["status"] in ("done", "failed"):
            return
        time.sleep(poll)


# -- evaluations outside rounds ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate (``model``, or ``experiment``'s round) and how; None keeps the experiment's value
    (with ``model``: the preset's, by default the protocol's)."""

    model: str | None = None
    experiment: str | None = None
    round_index: int | None = None
    which: str | None = None  # with experiment: "in" = G_K, "out" = G_K+1 (default: as eval.verifier_pairing)
    verifier: str | None = None
    preset: str | None = None
    name: str | None = None  # name prefix of the evaluations (default: derived)
    datasets: Sequence[str] | None = None
    limit: int | None = None
    turns: int | None = None
    greedy: bool | None = None
    selectors: Sequence[str] | None = None  # "all" stands for every selector
    candidates: int | None = None
    chains: int | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None
    backend: str | None = None
    seed: int | None = None
    prelude: bool | None = None


@dataclass(frozen=True)
class _Target:
    base: Any  # the ExperimentConfig evaluated under, or None (the protocol's defaults)
    generator_id: int
    generator_label: str
    verifier_id: int | None
    prefix: str


@dataclass(frozen=True)
class EvalPlan:
    """The evaluations to create (``app.rounds.EvalSpec``) and the experiment they belong to."""

    specs: list
    experiment_id: int | None


def _eval_target(store, req: EvalRequest) -> _Target:
    """The generator evaluated (with its round's verifier), the config evaluated under and the evaluations'
    name prefix."""
    from app.protocol import ExperimentConfig
    from workers.tasks import rounds as tasks

    if req.experiment is not None and req.preset is not None:
        raise ConfigError("--preset is for --model: an experiment's protocol was frozen when it was created")
    if req.experiment is not None:
        base = ExperimentConfig.frozen(store.get_experiment(req.experiment).config)
        rnd = latest_round(store, req.experiment, req.round_index)
        which = req.which or ("in" if base.eval.verifier_pairing == "same_round" else "out")
        if which not in ("in", "out"):
            raise ConfigError(f"--generator is 'in' (G_K) or 'out' (G_K+1), not {which!r}")
        gen_id = rnd.generator_out_id if which == "out" else rnd.generator_id
        if gen_id is None:
            raise ConfigError(f"round {rnd.index} of {req.experiment} has no "
                              f"{'trained ' if which == 'out' else ''}generator yet")
        return _Target(base, gen_id, f"G{rnd.index + 1}" if which == "out" else f"G{rnd.index}",
                       rnd.verifier_out_id, req.name or f"eval/{req.experiment}/r{rnd.index}")
    if req.model is None:
        raise ConfigError("give --model MODEL or --experiment NAME")
    gen_id = tasks.base_generator_id(store, req.model)
    prefix = req.name or f"eval/{slug(store.get_model_version(gen_id).name)}"
    base = None
    if req.preset is not None:
        from app import presets

        try:
            base = ExperimentConfig(**presets.build(req.preset, {"base_model": req.model}))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if req.preset != presets.DEFAULT_PRESET and req.name is None:
            prefix += f"-{req.preset}"  # another protocol: other evaluations, never a clash with the default
    return _Target(base, gen_id, "model", None, prefix)


def _eval_config(req: EvalRequest, target: _Target):
    """(the ExperimentConfig the evaluations run under, their name prefix): the target's config with the
    request's values over it."""
    from app.protocol import EvalConfig, ExperimentConfig

    base, prefix = target.base, target.prefix
    sels = [s for x in (req.selectors or []) for s in (ALL_SELECTORS if x == "all" else [x])]
    ev0 = base.eval if base is not None else EvalConfig()
    ev_fields = {
        "datasets": list(req.datasets) if req.datasets else ev0.datasets,
        "turns": req.turns or ev0.turns,
        "bon_candidates": req.candidates or ev0.bon_candidates,
        "bon_chains": req.chains or ev0.bon_chains,
        "selectors": sels or (ev0.selectors if target.verifier_id is not None else ["pt"]),
        "greedy": ev0.greedy if req.greedy is None else req.greedy,
        "temperature": ev0.temperature if req.temperature is None else req.temperature,
        "limit": ev0.limit if req.limit is None else req.limit,
        "max_new_tokens": req.max_new_tokens or ev0.max_new_tokens,
        "seed": ev0.seed if req.seed is None else req.seed,
    }
    try:
        cfg_data = base.model_dump() if base is not None else {"base_model": req.model or "unused"}
        cfg_data["eval"] = {**ev0.model_dump(), **ev_fields}
        if req.backend is not None:
            cfg_data["backend"] = req.backend
        if req.batch_size is not None:
            cfg_data["rollout"] = {**(cfg_data.get("rollout") or {}), "batch_size": req.batch_size}
        if req.prelude is not None:
            own = base.harness.import_prelude if base is not None else True
            cfg_data["harness"] = {**(cfg_data.get("harness") or {}), "import_prelude": req.prelude}
            if req.prelude != own and req.name is None:  # other verdicts: other evaluations, never a clash
                prefix += "-prelude" if req.prelude else "-no-prelude"
        return ExperimentConfig(**cfg_data), prefix
    except Exception as exc:
        raise ConfigError(f"invalid evaluation settings: {exc}") from exc


def plan_evaluations(store, req: EvalRequest) -> EvalPlan:
    """The evaluations ``req`` asks for, checked (models, datasets loaded, a verifier where a selector needs
    one) before anything is written."""
    from app import rounds as R
    from workers.collect import dataset_problem_ids

    target = _eval_target(store, req)
    if req.verifier is not None:
        target = dataclasses.replace(target, verifier_id=store.get_verifier(req.verifier)["id"])
    cfg, prefix = _eval_config(req, target)
    for ds in cfg.eval.datasets:
        dataset_problem_ids(store, *R.parse_dataset(ds), 1)  # loaded? (a clear error before anything queued)
    try:
        specs = R.eval_specs(cfg, name_prefix=prefix, generator_label=target.generator_label,
                             generator_id=target.generator_id, verifier_id=target.verifier_id)
    except ValueError as exc:
        raise ConfigError(f"{exc}: pass --verifier NAME (or --selector pt / random)") from exc
    exp_id = store.get_experiment(req.experiment).id if req.experiment else None
    return EvalPlan(specs, exp_id)


def create_evaluations(store, plan: EvalPlan) -> list[int]:
    """Create (idempotently) the planned evaluations, each finishing itself when its chains are done."""
    from workers.tasks import rounds as tasks

    return [tasks.create_evaluation(store, s, then="self", experiment_id=plan.experiment_id, round_id=None)
            for s in plan.specs]


def run_evaluations(store, ids: Sequence[int], *, wait: bool = False) -> list:
    """Start (or resume) the evaluations: in embedded mode they run here to their end and their results are
    written; with a broker they are queued, and ``wait`` follows them to their results. Returns their rows."""
    from workers.dispatch import in_process
    from workers.tasks import rounds as tasks

    for ev_id in ids:
        tasks.start_evaluation(store, ev_id)
    if in_process():  # every job ran in-process: finish what is complete
        for ev_id in ids:
            tasks.finalize_evaluation(store, ev_id)
    elif wait:
        wait_evaluations(store, ids)
    return [store.get_evaluation(i) for i in ids]


def wait_evaluations(store, ids: Sequence[int], poll: float = 2.0) -> None:
    """Until every evaluation is finished (results written); a failed job is an error."""
    from app.store.rollouts import Owner
    from workers import collect
    from workers.tasks import rounds as tasks

    while True:
        if all(tasks.finalize_evaluation(store, i) is not None for i in ids):
            return
        for i in ids:
            failed = collect.status(store, Owner(evaluation_id=i))["failed_jobs"]
            if failed:
                raise MucodeError(f"evaluation {store.get_evaluation(i).name}: job {failed[0]['key']} "
                                  f"failed: {failed[0]['error']} (run the same command again to resume it)")
        time.sleep(poll)


def slug(text: str) -> str:
    """A name part from a model's name or path: its last component, only letters, digits, '.', '_', '-'."""
    tail = Path(text).name or text
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-")[:60] or "model"
