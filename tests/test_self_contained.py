"""The repository alone is enough: a copy of the tree, installed as a wheel in a fresh environment, loads MBPP
and HumanEval from the benchmark files it ships, checks their sha256 and refuses a missing or altered file.

The tree is what git would commit from this checkout (tracked files plus untracked files git does not ignore),
copied to a temporary folder with nothing beside it. The copy is installed non-editable (the files the package
needs must really be package data); its dependencies come from the environment running the tests, added to the
fresh environment's path without being copied.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from app.config import PACKAGED_DATA_DIR, get_settings
from app.datasets import check_dataset_files, parse_dataset
from app.datasets.base import read_checksums
from app.doctor import check_data_dir
from app.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {
    "mbpp/mbpp.jsonl": "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
    "mbpp/sanitized-mbpp.json": "ca95deaa9a01ef0a6f439f88bcf0dd3db3563d22f22aad6cae04ebb9a8d8c8e9",
    "humaneval/HumanEval.jsonl.gz": "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
    "evalplus/HumanEvalPlus-OriginFmt-v0.1.10.jsonl.gz": (
        "daa7661c8189924068069b0872a440b491edb60f8bdf431d5957adc88d18bae5"
    ),
    "evalplus/MbppPlus-OriginFmt-v0.2.0.jsonl.gz": (
        "7a5aec547b134fa297ee6c45f829298aa3f58de02547b8d8a5c3d85d9cb10efc"
    ),
}
HE = "humaneval/HumanEval.jsonl.gz"


def _tree_files() -> list[str]:
    """What a commit of this checkout would hold: tracked and untracked-but-not-ignored files that exist."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"needs a git checkout of the repository ({exc})")
    names = sorted({n for n in out.decode().split("\0") if n})
    return [n for n in names if (ROOT / n).is_file() or (ROOT / n).is_symlink()]


def _copy_tree(dest: Path) -> None:
    for name in _tree_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target, follow_symlinks=False)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUCODE_") and k != "PYTHONPATH"}
    env.update(COLUMNS="200", **extra)
    return env


class Installed:
    """The copy installed in a fresh environment, run from a working directory outside any source tree."""

    def __init__(self, root: Path):
        self.root = root
        self.python = root / "venv" / "bin" / "python"
        self.mucode = root / "venv" / "bin" / "mucode"
        self.cwd = root / "work"
        self.env = _clean_env(MUCODE_DATABASE_URL=f"sqlite:///{root / 'work' / 'fresh.db'}")

    def run(self, *args: str | Path, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(a) for a in args],
            cwd=self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def site_packages(self) -> Path:
        out = self.run(self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        assert out.returncode == 0, out.stderr
        return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.mktemp("fresh-clone")
    src = base / "mucode"
    _copy_tree(src)
    assert (src / "pyproject.toml").is_file() and not (base / "shared").exists()
    started = time.monotonic()
    # A bare environment; the running environment's packages are reachable through a .pth line (not copied).
    # Its .pth files are not processed, so an editable install of this checkout does not leak in.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base / "venv")], check=True)
    inst = Installed(base)
    inst.cwd.mkdir()
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (inst.site_packages() / "_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    pip = inst.run(
        inst.python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--ignore-installed",
        "--no-warn-script-location", str(src),
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    print(f"copy + non-editable install: {time.monotonic() - started:.1f} s")
    shutil.rmtree(src)  # the installed package must not need its source
    return inst


@pytest.mark.slow
def test_a_fresh_install_loads_mbpp_and_humaneval_from_the_packaged_files(installed):
    site = installed.site_packages()
    where = installed.run(
        installed.python, "-c",
        "import app, app.config; print(app.__file__); print(app.config.get_settings().data_dir)",
    )
    assert where.returncode == 0, where.stderr
    module_file, data_dir = (Path(p) for p in where.stdout.split())
    assert module_file.is_relative_to(site) and data_dir == site / "app" / "data" / "benchmarks"
    for name in ("README.md", "SHA256SUMS", "LICENSES/CC-BY-4.0.txt", "LICENSES/MIT-HumanEval.txt",
                 "LICENSES/Apache-2.0.txt"):
        assert (data_dir / name).is_file(), name
    assert read_checksums(data_dir / "SHA256SUMS") == SHIPPED

    assert installed.run(installed.mucode, "db", "upgrade").returncode == 0
    load = installed.run(installed.mucode, "data", "load", "mbpp", "humaneval", "--json")
    assert load.returncode == 0, load.stderr
    reports = {r["dataset"]: r for r in json.loads(load.stdout)}
    assert reports["mbpp"]["inserted"] == 974 and reports["humaneval"]["inserted"] == 164
    for r in reports.values():
        assert Path(r["source_path"]).is_relative_to(data_dir) and "shared" not in r["source_path"]
    listed = installed.run(installed.mucode, "data", "list", "--json")
    listed = {d["name"]: d for d in json.loads(listed.stdout)}
    assert listed["mbpp"]["problems"] == 974 and listed["humaneval"]["problems"] == 164
    assert listed["mbpp"]["splits"] == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    assert listed["humaneval"]["splits"] == {"test": 164}
    assert listed["mbpp"]["state"] == listed["humaneval"]["state"] == "loaded"

    verify = installed.run(installed.mucode, "data", "verify", "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True


@pytest.mark.slow
def test_an_altered_or_missing_installed_file_is_refused(installed):
    data_dir = installed.site_packages() / "app" / "data" / "benchmarks"
    original = (data_dir / HE).read_bytes()
    altered = bytearray(original)
    altered[len(altered) // 2] ^= 0x01
    try:
        (data_dir / HE).write_bytes(bytes(altered))
        # A new database: nothing may be written, not even the dataset whose file is intact.
        env = {"MUCODE_DATABASE_URL": f"sqlite:///{installed.cwd / 'altered.db'}"}
        assert installed.run(installed.mucode, "db", "upgrade", **env).returncode == 0
        load = installed.run(installed.mucode, "data", "load", "mbpp", "humaneval", **env)
        assert load.returncode == 2 and "Traceback" not in load.stderr
        message = " ".join(load.stderr.split())
        assert f"{data_dir / HE} does not match its checksum" in message
        assert f"expected sha256 {SHIPPED[HE]}" in message and "reinstall mucode" in message
        assert re.search(r"actual [0-9a-f]{64}", message)
        listed = json.loads(installed.run(installed.mucode, "data", "list", "--json", **env).stdout)
        assert all(d["problems"] == 0 for d in listed)
        verify = installed.run(installed.mucode, "data", "verify", "--json")
        assert verify.returncode == 1
        states = {f["file"]: f["status"] for f in json.loads(verify.stdout)["files"]}
        assert states[HE] == "mismatch" and states["mbpp/mbpp.jsonl"] == "ok"

        (data_dir / HE).unlink()
        missing = installed.run(installed.mucode, "data", "load", "humaneval", **env)
        assert missing.returncode == 2
        assert f"dataset file {data_dir / HE} is missing (expected sha256 {SHIPPED[HE]})" in " ".join(
            missing.stderr.split()
        )
    finally:
        (data_dir / HE).write_bytes(original)
    assert installed.run(installed.mucode, "data", "verify").returncode == 0


# -- checksums on load, in this environment -----------------------------------------------------------------
def _copy_data(dest: Path, *files: str) -> Path:
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGED_DATA_DIR / f, dest / f)
    return dest


def test_the_default_data_is_the_packaged_copy_and_matches_upstream():
    assert get_settings().data_dir == PACKAGED_DATA_DIR == ROOT / "app" / "data" / "benchmarks"
    assert read_checksums(PACKAGED_DATA_DIR / "SHA256SUMS") == SHIPPED
    assert [c.status for c in check_dataset_files(["all"])] == ["ok"] * len(SHIPPED)


def test_an_override_folder_is_checked_against_the_upstream_checksums(tmp_path):
    data = _copy_data(tmp_path, HE)
    assert len(parse_dataset("humaneval", data).problems) == 164
    with gzip.open(data / HE, "rt") as f:
        lines = f.read().splitlines()
    with gzip.open(data / HE, "wt") as f:  # same records, re-compressed: other bytes
        f.write("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        parse_dataset("humaneval", data)
    message = str(err.value)
    assert f"{data / HE} does not match its checksum: expected sha256 {SHIPPED[HE]}" in message
    assert "--allow-modified" in message and str(data / "SHA256SUMS") in message
    assert len(parse_dataset("humaneval", data, allow_modified=True).problems) == 164
    # Declaring the revision in the folder's own SHA256SUMS is the other deliberate way.
    actual = re.search(r"actual ([0-9a-f]{64})", message).group(1)
    (data / "SHA256SUMS").write_text(f"{actual} *{HE}\n")
    assert len(parse_dataset("humaneval", data).problems) == 164
    (data / "SHA256SUMS").write_text(f"{actual[:20]}  {HE}\n")
    with pytest.raises(DataError, match=r"SHA256SUMS, line 1: expected '<sha256>  <file>'"):
        parse_dataset("humaneval", data)


def test_a_missing_file_names_its_checksum(tmp_path):
    with pytest.raises(DataError) as err:
        parse_dataset("humaneval_plus", _copy_data(tmp_path, HE))
    plus = "evalplus/HumanEvalPlus-OriginFmt-v0.1.10.jsonl.gz"
    assert str(err.value) == f"dataset file {tmp_path / plus} is missing (expected sha256 {SHIPPED[plus]})"


def _verify(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", "data", "verify", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
        check=False,
    )


def test_data_verify_prints_a_table_and_exits_1_on_a_difference(tmp_path):
    good = _verify(PACKAGED_DATA_DIR)
    assert good.returncode == 0, good.stderr
    for f, digest in SHIPPED.items():
        assert re.search(rf"{re.escape(f)}\s*│ ok\s*│ {digest[:16]}… │ same", good.stdout), f
    assert f"5 file(s) match {PACKAGED_DATA_DIR / 'SHA256SUMS'}" in good.stdout

    data = _copy_data(tmp_path, "mbpp/mbpp.jsonl", "mbpp/sanitized-mbpp.json")
    with open(data / "mbpp" / "sanitized-mbpp.json", "ab") as f:
        f.write(b"\n")
    bad = _verify(data)
    assert bad.returncode == 1
    assert re.search(r"mbpp/mbpp\.jsonl\s*│ ok", bad.stdout)
    mismatch = r"mbpp/sanitized-mbpp\.json\s*│ mismatch\s*│ ca95deaa9a01ef0a… │ [0-9a-f]{16}…"
    assert re.search(mismatch, bad.stdout)
    assert re.search(r"evalplus/MbppPlus-OriginFmt-v0\.2\.0\.jsonl\.gz\s*│ missing", bad.stdout)
    errors = " ".join(bad.stderr.split())
    assert f"expected sha256 {SHIPPED['mbpp/sanitized-mbpp.json']}" in errors
    assert f"dataset file {data / HE} is missing" in errors

    only_mbpp = _verify(data, "mbpp", "--json")
    assert only_mbpp.returncode == 0
    report = json.loads(only_mbpp.stdout)
    assert report["ok"] is True and [f["file"] for f in report["files"]] == ["mbpp/mbpp.jsonl"]
    assert report["files"][0]["actual"] == report["files"][0]["expected"] == SHIPPED["mbpp/mbpp.jsonl"]
    absent = _verify(tmp_path / "absent")
    assert absent.returncode == 2 and "does not exist" in absent.stderr and "Traceback" not in absent.stderr


def test_doctor_reports_the_data_checksums(tmp_path):
    ok = check_data_dir(PACKAGED_DATA_DIR)
    assert ok.ok and "5 benchmark files match their sha256" in ok.detail
    data = _copy_data(tmp_path, *SHIPPED)
    (data / HE).write_bytes(b"")
    bad = check_data_dir(data)
    assert not bad.ok and not bad.required and f"{HE} mismatch" in bad.detail


# -- nothing points outside the repository ------------------------------------------------------------------
def _lines_matching(pattern: re.Pattern, *, skip: tuple[str, ...] = ()) -> list[str]:
    offenders = []
    for name in _tree_files():
        path = ROOT / name
        if (name.startswith(("app/data/benchmarks/", *skip)) or path.suffix in (".gz", ".png")
                or path.is_symlink()):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    return offenders


def test_no_reference_to_a_folder_beside_the_checkout():
    assert _lines_matching(re.compile(r"\.\./shared|shared/(data|DESIGN|METHOD)")) == []


def test_code_and_docs_speak_of_the_project_not_of_its_issue_tracker():
    # "issue 4", "issues 4, 7", "(#12)": the history holds those, not the code
    pattern = re.compile(r"\bissues? #?\d|\(#\d+\)", re.IGNORECASE)
    assert _lines_matching(pattern, skip=("tests/test_self_contained.py",)) == []


def test_documentation_links_stay_inside_the_repository():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert {"design.md", "method.md"} <= {p.name for p in docs}
    for doc in docs:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://", target):
                continue
            resolved = (doc.parent / target).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{doc.name}: {target}"


def test_the_compose_stack_loads_the_packaged_data_without_a_host_folder():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    load = compose["services"]["load-data"]
    assert load["command"][:3] == ["mucode", "data", "load"]
    assert "volumes" not in load and "MUCODE_DATA_DIR" not in load.get("environment", {})
    for dockerfile in ("cpu", "gpu"):
        assert "COPY app ./app" in (ROOT / "docker" / f"{dockerfile}.Dockerfile").read_text()
        assert "!app" in (ROOT / "docker" / f"{dockerfile}.Dockerfile.dockerignore").read_text().split()
