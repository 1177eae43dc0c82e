"""Experiment tracking: training curves and each round's results in TensorBoard, MLflow or W&B.

Which tracker, and where it writes, comes from (first that is set):

1. a trainer's own ``tracking`` / ``tracking_uri`` settings (``--config-json``, ``trainer_overrides``, the SFT
   command line);
2. the experiment's ``tracking`` (``ExperimentConfig.tracking``: ``{"backend": ..., "uri": ...}``);
3. the environment: ``MUCODE_TRACKING`` (none | tensorboard | mlflow | wandb) and ``MUCODE_TRACKING_URI``.

Without a URI, TensorBoard writes under ``<artifacts_dir>/tracking/tensorboard``, MLflow to the SQLite store
``<artifacts_dir>/tracking/mlflow.db`` and W&B keeps its local files in ``<artifacts_dir>/tracking`` (its project
is the experiment). One experiment is one group: a TensorBoard folder ``<uri>/<experiment>/`` holding one
folder per trained model plus ``rounds``, an MLflow experiment, a W&B project. The trainers hand the choice to
Hugging Face's own integrations (``report_to``), which log the loss curves; ``log_round`` adds the round's own
results to the same group, one point per round (step = round index): accuracy per turn of every evaluation,
the verifier's ranking metrics, relabel counts and step timings.

Nothing heavy is imported here: a tracker's package is imported when it is used, and a missing one is an
error that names it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import MucodeError, NotFound
from app.rounds import StepRecord

BACKENDS = ("none", "tensorboard", "mlflow", "wandb")
ROUNDS_RUN = "rounds"  # the run (TensorBoard folder, MLflow run, W&B run name) that holds the rounds' results
_PACKAGE = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


@dataclass(frozen=True)
class Tracking:
    backend: str  # one of BACKENDS
    uri: str | None = None  # TensorBoard: a folder; MLflow: a tracking URI; W&B: the folder of its local files
    experiment: str | None = None  # the group: TensorBoard subfolder, MLflow experiment, W&B project

    @property
    def enabled(self) -> bool:
        return self.backend != "none"

    def run_dir(self, run_name: str) -> Path:
        """TensorBoard: the folder of one run's event files."""
        base = Path(self.uri or ".")
        if self.experiment:
            base = base / safe_name(self.experiment)
        return base / safe_name(run_name)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "run"


def _check_backend(backend: str, where: str) -> str:
    b = str(backend).strip().lower()
    if b not in BACKENDS:
        raise MucodeError(f"unknown tracking backend {backend!r} ({where}); choose one of {', '.join(BACKENDS)}")
    return b


def _default_uri(backend: str, settings) -> str | None:
    root = Path(settings.artifacts_dir).expanduser().resolve() / "tracking"
    if backend == "tensorboard":
        return str(root / "tensorboard")
    if backend == "mlflow":  # MLflow 3 refuses its old file store by default; SQLite works with 2 and 3
        return "sqlite:///" + str(root / "mlflow.db")
    if backend == "wandb":
        return str(root)
    return None


def resolve(
    experiment_config: Mapping[str, Any] | None = None,
    *,
    experiment: str | None = None,
    backend: str | None = None,
    uri: str | None = None,
    settings=None,
) -> Tracking:
    """The tracker of a run: ``backend``/``uri`` (a trainer's own settings) over the experiment's stored
    ``tracking`` over ``MUCODE_TRACKING``/``MUCODE_TRACKING_URI``. A URI set beside one backend is not reused
    for another (an MLflow URI is no TensorBoard folder), except ``MUCODE_TRACKING_URI`` with tracking off: a
    site's default for whichever backend an experiment picks."""
    if settings is None:
        from app.config import get_settings

        settings = get_settings()
    chosen = _check_backend(settings.tracking, "MUCODE_TRACKING")
    chosen_uri = settings.tracking_uri
    layers: list[tuple[str, str | None, str]] = []
    own = (experiment_config or {}).get("tracking") if experiment_config else None
    if isinstance(own, Mapping) and own.get("backend"):
        layers.append((own["backend"], own.get("uri"), "the experiment's tracking"))
    if backend:
        layers.append((backend, uri, "the trainer's tracking setting"))
    for b, u, where in layers:
        b = _check_backend(b, where)
        if b != chosen and chosen != "none":  # MUCODE_TRACKING_URI alone (tracking off) is a site default
            chosen_uri = None
        chosen, chosen_uri = b, u or chosen_uri
    if chosen == "none":
        return Tracking("none", None, experiment)
    return Tracking(chosen, chosen_uri or _default_uri(chosen, settings), experiment)


def require(backend: str) -> None:
    """Fail now, naming the package, when the tracker's package is not installed (not after an hour of
    training, when the first log line would need it)."""
    import importlib.util

    pkg = _PACKAGE.get(backend)
    if pkg is not None and importlib.util.find_spec(pkg) is None:
        raise MucodeError(
            f"tracking backend {backend!r} needs the {pkg} package, which is not installed: "
            f"pip install {pkg} (or mucode's 'tracking' extra), or set MUCODE_TRACKING=none"
        )


def trainer_args(backend: str | None, run_name: str | None) -> dict[str, Any]:
    """``TrainingArguments`` values of a run: ``report_to`` and ``run_name``. On transformers 4.x, which reads
    the TensorBoard folder from ``logging_dir``, also that (from ``environment``, which must be active)."""
    if not backend or backend == "none":
        return {"report_to": "none"}
    out: dict[str, Any] = {"report_to": [backend]}
    if run_name:
        out["run_name"] = run_name
    folder = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if backend == "tensorboard" and folder:
        import dataclasses

        from transformers import TrainingArguments

        if "logging_dir" in {f.name for f in dataclasses.fields(TrainingArguments)}:
            out["logging_dir"] = folder
    return out


@contextlib.contextmanager
def environment(tracking: Tracking, run_name: str, tags: Mapping[str, Any] | None = None) -> Iterator[None]:
    """The environment Hugging Face's integrations read (where to write, which experiment), for the time of a
    run: set around creating the Trainer and training, then put back (a worker runs many jobs)."""
    if not tracking.enabled:
        yield
        return
    require(tracking.backend)
    env: dict[str, str] = {}
    group = tracking.experiment or "mucode"
    if tracking.backend == "tensorboard":
        run_dir = tracking.run_dir(run_name)
        run_dir.mkdir(parents=True, exist_ok=True)
        env["TENSORBOARD_LOGGING_DIR"] = str(run_dir)
    elif tracking.backend == "mlflow":
        env["MLFLOW_TRACKING_URI"] = _mlflow_uri(tracking.uri)
        env["MLFLOW_EXPERIMENT_NAME"] = group
        env["MLFLOW_TAGS"] = json.dumps({f"mucode.{k}": str(v) for k, v in (tags or {}).items() if v is not None})
    elif tracking.backend == "wandb":
        if tracking.uri:
            Path(tracking.uri).mkdir(parents=True, exist_ok=True)
            env["WANDB_DIR"] = tracking.uri
        if not os.environ.get("WANDB_PROJECT"):
            env["WANDB_PROJECT"] = group
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _mlflow_uri(uri: str | None) -> str:
    """A URI (http://, sqlite:///, file:, databricks) as is; a bare ``*.db`` path is a SQLite store, another
    bare path a file store (which MLflow 3 accepts only with MLFLOW_ALLOW_FILE_STORE=true)."""
    if not uri:
        return ""
    if "://" in uri or uri.startswith(("file:", "databricks")):
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return uri
    path = Path(uri).expanduser().resolve()
    if path.suffix == ".db":
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return path.as_uri()


# -- a round's results ------------------------------------------------------------------------------------------
def round_facts(store, round_id: int) -> dict[str, Any]:
    """What ``log_round`` reads, as plain JSON-ready values from the store:

    ``experiment``, ``experiment_config`` (its stored config; its ``tracking`` decides the tracker), ``index``,
    ``round_id``, ``status``, ``seconds`` (the round's wall time), ``steps`` ({step: {state, seconds, attempt,
    result}}), ``evaluations`` ([{name, mode, selector, dataset, split, status, metrics}]: ``metrics`` as
    ``app.evaluation.compute_metrics`` writes them), ``verifier`` ({name, metrics: {train, eval}} of the verifier
    trained this round, or None), ``generator`` ({name, metrics} of the generator trained this round, or None),
    ``relabel`` (the SFT training set's stats, or None).
    """
    rnd = store.get_round(int(round_id))
    exp = store.get_experiment(int(rnd.experiment_id))
    seconds = None
    if rnd.started_at is not None and rnd.finished_at is not None:
        seconds = max(0.0, (rnd.finished_at - rnd.started_at).total_seconds())
    records = {name: StepRecord.of(raw) for name, raw in dict(rnd.steps or {}).items() if isinstance(raw, Mapping)}
    steps = {name: {"state": r.state, "seconds": r.seconds, "attempt": r.attempt, "result": dict(r.result)}
             for name, r in records.items()}
    evaluations = [
        {"name": e.name, "mode": e.mode, "selector": e.selector, "dataset": e.dataset, "split": e.split,
         "status": e.status, "metrics": dict(e.metrics or {})}
        for e in store.round_evaluations(rnd.id)
    ]
    verifier = None
    if rnd.verifier_out_id is not None:
        v = store.get_verifier(int(rnd.verifier_out_id), required=False)
        if v is not None:
            verifier = {"name": v["name"], "metrics": dict(v.get("metrics") or {})}
    generator = None
    if rnd.generator_out_id is not None:
        g = store.get_model_version(int(rnd.generator_out_id), required=False)
        if g is not None:
            generator = {"name": g.name, "metrics": dict(g.metrics or {})}
    relabel = None
    ts_id = records.get("relabel", StepRecord()).result.get("training_set_id")
    if ts_id is not None:
        with contextlib.suppress(NotFound):  # a deleted set: the step's own counts remain in ``steps``
            relabel = dict(store.sft_training_set(int(ts_id)).get("stats") or {})
    return {
        "experiment": exp.name, "experiment_id": exp.id, "experiment_config": dict(exp.config or {}),
        "round_id": rnd.id, "index": rnd.index, "status": rnd.status, "seconds": seconds, "steps": steps,
        "evaluations": evaluations, "verifier": verifier, "generator": generator, "relabel": relabel,
    }


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _key(*parts: Any) -> str:
    # MLflow accepts letters, digits, _ - . / and spaces in a metric name: one spelling for every tracker
    return "/".join(re.sub(r"[^A-Za-z0-9_./\-]+", "_", str(p)) for p in parts if p not in (None, ""))


def _eval_label(name: str, experiment: str, index: int) -> str:
    """An evaluation's name without what changes every round, so that round k and k+1 share a curve:
    ``exp/r1/G1/mbpp-test/greedy`` -> ``G_in/mbpp-test/greedy`` (G_in: the round's generator, G_out: the one
    it trained)."""
    prefix = f"{experiment}/r{index}/"
    rest = name.removeprefix(prefix)
    head, sep, tail = rest.partition("/")
    if head == f"G{index}":
        head = "G_in"
    elif head == f"G{index + 1}":
        head = "G_out"
    return head + sep + tail


_VERIFIER_EVAL = ("roc_auc", "pair_accuracy", "bon_accuracy", "bon_random_baseline", "bon_oracle_rate")
_VERIFIER_TRAIN = ("first_loss", "final_loss", "steps", "seconds", "examples", "pairs", "rows")
_GENERATOR_TRAIN = ("train_loss", "train_loss_first", "train_loss_last", "global_steps", "train_seconds",
                    "data_kept", "data_too_long", "data_tokens")


def round_metrics(facts: Mapping[str, Any]) -> dict[str, float]:
    """{metric name: value} of one round, from ``round_facts``' dict (absent or non-numeric values left out)."""
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        v = _num(value)
        if v is not None:
            out[key] = v

    experiment, index = str(facts.get("experiment") or ""), int(facts.get("index") or 0)
    for ev in facts.get("evaluations") or []:
        m = ev.get("metrics") or {}
        if not m:
            continue
        label = _eval_label(str(ev.get("name") or ""), experiment, index)
        for row in m.get("per_turn") or []:
            put(_key("accuracy", label, f"turn_{row.get('turn')}"), row.get("true_success"))
        put(_key("accuracy", label, "final"), m.get("true_success"))
        put(_key("accuracy", label, "any_success"), m.get("any_success"))
        put(_key("accuracy", label, "mean_turns"), m.get("mean_turns"))
    v = facts.get("verifier") or {}
    vm = v.get("metrics") or {}
    for part in ("holdout", "mbpp_test"):
        for k in _VERIFIER_EVAL:
            put(_key("verifier", part, k), ((vm.get("eval") or {}).get(part) or {}).get(k))
    for k in _VERIFIER_TRAIN:
        put(_key("verifier", "train", k), (vm.get("train") or {}).get(k))
    gm = (facts.get("generator") or {}).get("metrics") or {}
    for k in _GENERATOR_TRAIN:
        put(_key("generator", "train", k), gm.get(k))
    relabel = facts.get("relabel")
    if not relabel:  # the step's own counts
        relabel = ((facts.get("steps") or {}).get("relabel") or {}).get("result") or {}
    for k, val in relabel.items():
        if k not in ("training_set_id", "id"):
            put(_key("relabel", k), val)
    for step, rec in (facts.get("steps") or {}).items():
        put(_key("seconds", step), (rec or {}).get("seconds"))
    put(_key("seconds", "round"), facts.get("seconds"))
    return out


def log_round(facts: Mapping[str, Any], settings=None) -> dict[str, Any] | None:
    """Log one round's results (``round_facts``' dict) to the experiment's tracker, at step = round index.
    Returns where they went ({backend, where, metrics}), or None when tracking is off. Logging a round again
    writes its points again (TensorBoard and W&B show the last, MLflow keeps both)."""
    tracking = resolve(facts.get("experiment_config"), experiment=facts.get("experiment"), settings=settings)
    if not tracking.enabled:
        return None
    require(tracking.backend)
    metrics = round_metrics(facts)
    step = int(facts.get("index") or 0)
    if tracking.backend == "tensorboard":
        where = _tensorboard_scalars(tracking.run_dir(ROUNDS_RUN), metrics, step)
    elif tracking.backend == "mlflow":
        where = _mlflow_metrics(tracking, metrics, step, facts)
    else:
        where = _wandb_metrics(tracking, metrics, step)
    return {"backend": tracking.backend, "where": where, "metrics": len(metrics)}


def _tensorboard_scalars(run_dir: Path, metrics: Mapping[str, float], step: int) -> str:
    # tensorboard's own event writer (the one torch.utils.tensorboard wraps): no torch in a control worker
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(run_dir))
    try:
        now = time.time()
        for tag, value in metrics.items():
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
            writer.add_event(event_pb2.Event(wall_time=now, step=step, summary=summary))
    finally:
        writer.close()
    return str(run_dir)


def _mlflow_metrics(tracking: Tracking, metrics: Mapping[str, float], step: int, facts: Mapping[str, Any]) -> str:
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=_mlflow_uri(tracking.uri))
    name = tracking.experiment or "mucode"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
    runs = client.search_runs([exp_id], filter_string=f"tags.`mlflow.runName` = '{ROUNDS_RUN}'", max_results=1)
    if runs:
        run_id = runs[0].info.run_id
    else:
        run_id = client.create_run(exp_id, run_name=ROUNDS_RUN,
                                   tags={"mucode.experiment": str(facts.get("experiment"))}).info.run_id
    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=items[i:i + 1000],
                         tags=[RunTag("mucode.last_round", str(step))] if i == 0 else [])
    return f"{_mlflow_uri(tracking.uri)} experiment {name!r} run {run_id}"


def _wandb_metrics(tracking: Tracking, metrics: Mapping[str, float], step: int) -> str:
    import wandb

    project = os.environ.get("WANDB_PROJECT") or tracking.experiment or "mucode"
    run_id = safe_name(f"{project}-{ROUNDS_RUN}")
    if tracking.uri:
        Path(tracking.uri).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, name=ROUNDS_RUN, id=run_id, resume="allow", dir=tracking.uri)
    try:
        run.define_metric("round")
        run.define_metric("*", step_metric="round")  # rounds logged again or out of order still plot by index
        run.log({**metrics, "round": step})
    finally:
        run.finish()
    return f"project {project!r} run {run_id}"
