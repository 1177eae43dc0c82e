"""One logging setup: mucode's loggers reach stderr at MUCODE_LOG_LEVEL (or -v), as plain lines off a terminal."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from app.logs import OURS, setup_logging

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MUCODE_LOG")}
    return subprocess.run([sys.executable, "-m", "app.cli.main", *args], capture_output=True, text=True,
                          check=False, cwd=ROOT, env={**base, **env}, timeout=120)


def test_cli_logs_at_the_level_asked_in_plain_lines():
    quiet = cli("models", "resolve", "acme/x")
    assert quiet.returncode == 0 and quiet.stdout.strip() == "acme/x" and quiet.stderr == ""
    line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG mucode\.models: model acme/x: a hub name",
                      re.MULTILINE)
    assert line.search(cli("-v", "models", "resolve", "acme/x").stderr)
    assert line.search(cli("models", "resolve", "acme/x", MUCODE_LOG_LEVEL="debug").stderr)
    bad = cli("models", "resolve", "acme/x", MUCODE_LOG_LEVEL="chatty")
    assert bad.returncode == 2 and "unknown log level 'chatty'" in bad.stderr


def test_setup_installs_one_handler_and_leaves_other_libraries_at_warning(tmp_path):
    root = logging.getLogger()
    installed = [h for h in root.handlers if h.get_name() == "mucode"]  # by an in-process CLI test before
    for h in installed:
        root.removeHandler(h)
    before = list(root.handlers)
    try:
        with open(tmp_path / "log.txt", "w") as stream:
            setup_logging("INFO", stream=stream)
            setup_logging("DEBUG", stream=stream)  # again: the level changes, no second handler
            assert len(root.handlers) == len(before) + 1
            assert all(logging.getLogger(n).level == logging.DEBUG for n in OURS)
            logging.getLogger("workers.tasks.rounds").debug("ours %d", 1)
            logging.getLogger("urllib3.connectionpool").info("theirs")
        text = (tmp_path / "log.txt").read_text()
        assert "DEBUG workers.tasks.rounds: ours 1" in text and "theirs" not in text
    finally:
        for h in root.handlers[len(before):]:
            root.removeHandler(h)
        for h in installed:
            root.addHandler(h)
        for n in OURS:
            logging.getLogger(n).setLevel(logging.NOTSET)
