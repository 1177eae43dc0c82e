"""Running ``mucode`` as a user does (a child process) and waiting for what it starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def run_mucode(args: list[str], env: Mapping[str, str] | None = None, *, ok: bool = False, timeout: float = 300,
               cwd: Path | str | None = None, inherit: bool = True) -> subprocess.CompletedProcess:
    """``python -m app.cli.main ARGS`` with this process's environment (unless ``inherit`` is False) updated by
    ``env``; with ``ok`` a non-zero exit fails the caller with the command's output."""
    full = {**(os.environ if inherit else {}), **(env or {})}
    r = subprocess.run([sys.executable, "-m", "app.cli.main", *args], check=False, env=full, cwd=cwd,
                       capture_output=True, text=True, timeout=timeout)
    if ok and r.returncode != 0:
        raise AssertionError(f"mucode {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, workers: Any = None, *,
             every: float = 0.3) -> Any:
    """The first truthy value of ``predicate`` within ``timeout`` seconds; else fail, with the workers' logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{workers.logs()}" if workers else ""))
