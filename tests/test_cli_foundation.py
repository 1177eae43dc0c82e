"""The foundation commands as a user runs them (a real process): db upgrade, data load|list,
problems list|show, and the errors a user can act on, printed without a stack trace."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from app.config import get_settings

DATA = get_settings().data_dir


def mucode(db_url: str, *args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MUCODE_DATABASE_URL": db_url,
        "MUCODE_DATA_DIR": str(data_dir or DATA),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture
def url(store) -> str:
    return make_url(str(store.engine.url)).render_as_string(hide_password=False)


def test_load_list_show(url):
    assert mucode(url, "db", "upgrade").returncode == 0
    first = mucode(url, "data", "load", "mbpp", "humaneval")
    assert first.returncode == 0, first.stderr
    assert "974" in first.stdout and "loaded" in first.stdout and "train 374" in first.stdout
    again = mucode(url, "data", "load", "mbpp", "humaneval", "--json")
    assert [(r["inserted"], r["unchanged"]) for r in json.loads(again.stdout)] == [(0, 974), (0, 164)]

    listed = mucode(url, "data", "list")
    assert listed.returncode == 0 and "not loaded" in listed.stdout and "mbpp_plus" in listed.stdout

    rows = mucode(
        url, "problems", "list", "--dataset", "mbpp", "--split", "train", "-n", "3", "--offset", "1"
    )
    assert rows.returncode == 0
    assert "mbpp/602" in rows.stdout and "mbpp/604" in rows.stdout and "mbpp/601" not in rows.stdout
    assert "2–4 of 374" in rows.stdout
    assert mucode(url, "problems", "list", "--split", "bogus").returncode == 2

    shown = json.loads(mucode(url, "problems", "show", "mbpp/11", "--json").stdout)
    assert len(shown["public_tests"]) == 1 and len(shown["private_tests"]) == 5
    assert "Write a python function to remove first and last occurrence" in shown["model_prompt"]
    he = mucode(url, "problems", "show", "HumanEval/32")
    assert he.returncode == 0 and "private tests (1)" in he.stdout and "check(find_zero)" in he.stdout
    assert "xs[0] + xs[1] * x" in he.stdout  # brackets in the prompt are text, not rich markup
    missing = mucode(url, "problems", "show", "mbpp/9999")
    assert missing.returncode == 2 and "no problem 'mbpp/9999'" in missing.stderr


def test_changed_file_exits_nonzero_until_forced(url, tmp_path):
    assert mucode(url, "data", "load", "mbpp").returncode == 0
    (tmp_path / "mbpp").mkdir()
    lines = (DATA / "mbpp" / "mbpp.jsonl").read_text().splitlines()
    rec = json.loads(lines[700])
    rec["test_list"][0] = rec["test_list"][0].replace("==", "!=", 1)
    lines[700] = json.dumps(rec)
    (tmp_path / "mbpp" / "mbpp.jsonl").write_text("\n".join(lines) + "\n")
    # Another revision is loaded only on purpose, then its changed problems still wait for --force.
    refused = mucode(url, "data", "load", "mbpp", data_dir=tmp_path)
    assert refused.returncode == 2 and "does not match its checksum" in refused.stderr
    blocked = mucode(url, "data", "load", "mbpp", "--allow-modified", data_dir=tmp_path)
    assert blocked.returncode == 1 and "mbpp/701" in blocked.stdout and "--force" in blocked.stderr
    assert (
        "!="
        not in json.loads(mucode(url, "problems", "show", "mbpp/701", "--json").stdout)["public_tests"][0]
    )
    forced = mucode(url, "data", "load", "mbpp", "--force", "--allow-modified", data_dir=tmp_path)
    assert forced.returncode == 0 and "updated" in forced.stdout
    assert "!=" in json.loads(mucode(url, "problems", "show", "mbpp/701", "--json").stdout)["public_tests"][0]


def test_clear_errors_without_a_trace(sqlite_store, tmp_path):
    url = str(sqlite_store.engine.url)
    down = mucode("postgresql://postgres@127.0.0.1:9/mucode", "data", "load", "mbpp")
    assert down.returncode == 2 and "cannot connect to the database" in down.stderr
    no_dir = mucode(url, "data", "load", "mbpp", data_dir=tmp_path / "absent")
    assert no_dir.returncode == 2 and "data directory" in no_dir.stderr and "does not exist" in no_dir.stderr
    unknown = mucode(url, "data", "load", "mbbp")
    assert unknown.returncode == 2 and "unknown dataset 'mbbp'" in unknown.stderr
    bad = tmp_path / "bad"
    (bad / "humaneval").mkdir(parents=True)
    with gzip.open(bad / "humaneval" / "HumanEval.jsonl.gz", "wt") as f:
        f.write('{"task_id": "HumanEval/0"}\n{oops\n')
    malformed = mucode(url, "data", "load", "humaneval", "--allow-modified", data_dir=bad)
    assert malformed.returncode == 2 and "HumanEval.jsonl.gz, line 1: missing field 'prompt'" in malformed.stderr
    unmigrated = mucode(f"sqlite:///{tmp_path / 'empty.db'}", "problems", "list")
    assert unmigrated.returncode == 2 and "mucode db upgrade" in unmigrated.stderr
    for r in (down, no_dir, unknown, malformed, unmigrated):
        assert "Traceback" not in r.stderr + r.stdout
