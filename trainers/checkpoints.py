"""Checkpoints that let a killed training job continue where it stopped instead of at step 0.

Both trainers (verifier, generator SFT) write Hugging Face Trainer checkpoints (model, optimizer, scheduler,
RNG states, trainer state) every ``checkpoint_steps`` optimizer steps into
``<output_dir>.checkpoints/checkpoint-N``, beside the model's folder in the artifacts storage. A new run with
the same output (a redelivered Celery job, ``mucode round resume``, the same train command again) resumes from
the last complete one; the Trainer then skips the batches already seen, so the data order and the step count
are those of an uninterrupted run.

The Trainer writes a checkpoint in place, file after file, and rotates old ones before it returns: a process
killed half way leaves a folder that looks like a checkpoint. ``CheckpointCallback.on_save`` therefore flushes
the files to disk, waits for every process, and only then writes ``MARKER``; a folder without it is deleted
before resuming, never loaded. The last ``KEEP`` checkpoints are kept: two, so that while one is being written
(and rotation runs, before its marker exists) a complete one is always on disk.

The main process holds ``mucode_run.lock`` (``flock``) while it trains: a second run on the same output (a
job redelivered while an orphaned ``accelerate launch`` still trains) stops with an error instead of deleting
the first one's checkpoint in progress. ``mucode_run.json`` in the folder records what the run trains
(config, data, base model, processes); checkpoints of a different run under the same output (changed settings,
``--overwrite`` with a new learning rate) are deleted rather than resumed. The folder is removed once the final
model is saved and registered.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MARKER = "mucode_checkpoint_complete.json"
RUN_FILE = "mucode_run.json"
LOCK_FILE = "mucode_run.lock"
KEEP = 2
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints_dir(output_dir: str | os.PathLike) -> Path:
    out = Path(output_dir)
    return out.with_name(out.name + ".checkpoints")


def _step_dirs(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _CHECKPOINT.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def is_complete(checkpoint: str | os.PathLike) -> bool:
    return (Path(checkpoint) / MARKER).is_file()


def complete_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of ``folder``, oldest (lowest step) first."""
    return [p for _, p in _step_dirs(Path(folder)) if is_complete(p)]


def last_complete_checkpoint(folder: str | os.PathLike) -> Path | None:
    done = complete_checkpoints(folder)
    return done[-1] if done else None


def checkpoint_step(checkpoint: str | os.PathLike | None) -> int:
    if checkpoint is None:
        return 0
    m = _CHECKPOINT.match(Path(checkpoint).name)
    return int(m.group(1)) if m else 0


def training_args(checkpoint_steps: int) -> dict[str, Any]:
    """``TrainingArguments`` values to checkpoint every ``checkpoint_steps`` optimizer steps (0: never)."""
    if checkpoint_steps < 0:
        raise ValueError(f"checkpoint_steps must be >= 0 (0 turns checkpoints off), not {checkpoint_steps}")
    if checkpoint_steps == 0:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": checkpoint_steps, "save_total_limit": KEEP,
            "save_only_model": False}


def _fsync_tree(folder: Path) -> None:
    # A node that reboots loses what is still in its page cache: the marker must not reach the disk before the
    # files it vouches for.
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _callback_class():
    from transformers import TrainerCallback

    class CheckpointCallback(TrainerCallback):
        """Marks each checkpoint complete once every process has written and flushed its part; skips the
        Trainer's extra checkpoint after the last step (the final model is saved right after, and a checkpoint
        with the optimizer states of a large model costs minutes and several times the model's size)."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_save = False
            return control

        def on_save(self, args, state, control, **kwargs):
            from accelerate import PartialState

            ps = PartialState()
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ps.is_local_main_process and folder.is_dir():
                _fsync_tree(folder)
            ps.wait_for_everyone()
            if ps.is_main_process:
                _write_json(folder / MARKER, {"step": state.global_step, "epoch": state.epoch,
                                              "max_steps": state.max_steps})
                log.info("checkpoint %s complete (step %d of %d)", folder, state.global_step, state.max_steps)
            ps.wait_for_everyone()
            return control

    return CheckpointCallback


def callback():
    return _callback_class()()


_LOCKS: dict[str, int] = {}  # folder -> the descriptor holding its lock, for as long as this process trains


def _lock(folder: Path) -> None:
    import fcntl

    key = str(folder.resolve())
    old = _LOCKS.pop(key, None)
    if old is not None:  # an earlier run in this process (a job that failed) left it: take it afresh
        os.close(old)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        from app.errors import MucodeError

        raise MucodeError(
            f"another process is training into {folder} (it holds {LOCK_FILE}): wait for it to end or stop "
            "it; two runs on one output would delete each other's checkpoints"
        ) from exc
    _LOCKS[key] = fd


def _unlock(folder: Path) -> None:
    fd = _LOCKS.pop(str(folder.resolve()), None)
    if fd is not None:
        os.close(fd)


def _normalized(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def prepare_resume(accelerator, folder: str | os.PathLike, run: dict[str, Any]) -> str | None:
    """Before ``trainer.train``: the checkpoint to resume from (None: start at step 0), on every process.

    The main process deletes incomplete checkpoints, and every checkpoint when the folder belongs to a
    different run (``run`` differs from the recorded one), then records ``run``; the others wait for it.
    """
    folder = Path(folder)
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        _lock(folder)  # before anything is deleted: a live run's checkpoint in progress looks incomplete
        run = _normalized(run)
        recorded = None
        try:
            recorded = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        dirs = _step_dirs(folder)
        if dirs and recorded != run:
            old = recorded or {}
            changed = sorted(k for k in set(run) | set(old) if old.get(k) != run.get(k))
            log.warning("checkpoints in %s were written by a different run (%s differ): starting from step 0",
                        folder, ", ".join(changed) if recorded else "no run record")
            for _, p in dirs:
                shutil.rmtree(p, ignore_errors=True)
        else:
            for step, p in dirs:
                if not is_complete(p):
                    log.warning("deleting incomplete checkpoint %s (the run stopped while writing step %d)",
                                p, step)
                    shutil.rmtree(p, ignore_errors=True)
        _write_json(folder / RUN_FILE, run)
    accelerator.wait_for_everyone()
    last = last_complete_checkpoint(folder)
    if last is not None:
        log.info("resuming from %s (step %d)", last, checkpoint_step(last))
    return str(last) if last is not None else None


def remove(folder: str | os.PathLike) -> None:
    """Delete the checkpoints once the final model is saved (they hold several times its size)."""
    _unlock(Path(folder))
    shutil.rmtree(folder, ignore_errors=True)
