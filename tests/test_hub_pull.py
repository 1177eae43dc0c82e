"""Pulling a model from a hub, through huggingface_hub's real download code, against a local HTTP endpoint.

No network here: a small server on 127.0.0.1 speaks the parts of the hub's protocol that ``snapshot_download``
uses (repo info, tree listing, HEAD and ranged GET of files), and ``HF_ENDPOINT`` points the real client at it.
The CLI runs in a subprocess because huggingface_hub reads its environment when it is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from app.model_registry import MANIFEST, hub_folder_name, provenance, resolve_model, version_name

REPO = "acme/tiny-chat"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROOT = Path(__file__).resolve().parents[1]


class FakeHub:
    """Serves one model repository at one commit; records what the client asked."""

    def __init__(self, folder: Path, *, cut_first_download_of: str | None = None) -> None:
        self.files = {p.relative_to(folder).as_posix(): p.read_bytes()
                      for p in sorted(folder.rglob("*")) if p.is_file()}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.cut = cut_first_download_of
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _json(self, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _file(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                prefix = f"/{REPO}/resolve/"
                rev, _, name = path[len(prefix):].partition("/")
                if not path.startswith(prefix) or name not in hub.files or rev not in (COMMIT, "main"):
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                data = hub.files[name]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0] or 0)
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if head:
                    return
                if hub.cut == name:  # the connection drops halfway through the first download
                    hub.cut = None
                    self.wfile.write(data[start: start + (len(data) - start) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(data[start:])

            def do_HEAD(self) -> None:
                hub.requests.append(("HEAD", self.path, dict(self.headers)))
                self._file(head=True)

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path, dict(self.headers)))
                path = unquote(urlparse(self.path).path)
                if path.startswith(f"/api/models/{REPO}/revision/"):
                    rev = path.rsplit("/", 1)[1]
                    if rev not in (COMMIT, "main"):
                        self.send_response(404)
                        self.send_header("X-Error-Code", "RevisionNotFound")
                        self.end_headers()
                        return
                    self._json({"id": REPO, "modelId": REPO, "sha": COMMIT, "private": False,
                                "siblings": [{"rfilename": f} for f in hub.files]})
                elif path.startswith(f"/api/models/{REPO}/tree/"):
                    self._json([{"type": "file", "path": f, "size": len(d),
                                 "oid": hashlib.sha1(d).hexdigest()} for f, d in hub.files.items()])  # noqa: S324 - a git blob id
                elif path.startswith("/api/models/"):
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.end_headers()
                else:
                    self._file(head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def pull_cli(*args: str, cache: Path, hf_home: Path, endpoint: str | None, offline: bool = False,
             token: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(MUCODE_MODEL_CACHE_DIR=str(cache), HF_HOME=str(hf_home), HF_HUB_DISABLE_XET="1",
               HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5")
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "app.cli.main", "models", "pull", *args], capture_output=True,
                          text=True, check=False, env=env, cwd=ROOT, timeout=300)


def test_pull_a_hub_model_records_its_commit_and_file_hashes_and_resumes(tiny_model_dir, tmp_path):
    cache, hf_home = tmp_path / "models", tmp_path / "hf"
    weights = next(p.name for p in tiny_model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    with FakeHub(tiny_model_dir, cut_first_download_of=weights) as hub:
        first = pull_cli(REPO, cache=cache, hf_home=hf_home, endpoint=hub.url, token="hf_secret_for_test")
        assert first.returncode == 0, first.stderr + first.stdout
        # The connection dropped halfway through the weights: the download was tried again, not given up.
        assert [v for v, path, _ in hub.requests if path.endswith("/" + weights)].count("GET") == 2
        # A second pull of the same model fetches no file again: what is downloaded stays downloaded.
        seen = len(hub.requests)
        again = pull_cli(REPO, "--force", cache=cache, hf_home=hf_home, endpoint=hub.url)
        assert again.returncode == 0, again.stderr
        assert not [p for v, p, _ in hub.requests[seen:] if v == "GET" and "/resolve/" in p]
    # The token from the environment went to the hub.
    assert any(h.get("Authorization", h.get("authorization")) == "Bearer hf_secret_for_test"
               for _, _, h in hub.requests)

    folder = cache / hub_folder_name(REPO)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["revision"] == COMMIT and manifest["source"] == f"hub:{REPO}"
    expected = {p.relative_to(tiny_model_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in tiny_model_dir.rglob("*") if p.is_file()}
    assert manifest["files"] == expected
    # The hub name now means the pulled folder, and its model version traces to the exact commit and files.
    assert resolve_model(REPO, cache_dir=cache) == str(folder)
    assert version_name(REPO, str(folder)) == f"{REPO}@{COMMIT[:12]}"
    assert provenance(str(folder))["weights"]["files"] == expected
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(folder).num_parameters() > 0


def test_pinned_revision_and_clear_errors(tiny_model_dir, tmp_path):
    cache, hf_home = tmp_path / "models", tmp_path / "hf"
    with FakeHub(tiny_model_dir) as hub:
        ok = pull_cli(REPO, "--revision", COMMIT, cache=cache, hf_home=hf_home, endpoint=hub.url)
        assert ok.returncode == 0, ok.stderr
        bad_rev = pull_cli(REPO, "--revision", "v9", "--force", cache=cache, hf_home=hf_home, endpoint=hub.url)
        assert bad_rev.returncode != 0 and "no revision 'v9'" in bad_rev.stderr + bad_rev.stdout
        missing = pull_cli("acme/nothing-here", cache=cache, hf_home=hf_home, endpoint=hub.url)
        assert missing.returncode != 0 and "no model acme/nothing-here" in missing.stderr + missing.stdout
    # Offline with nothing cached: says so, names the switch, writes nothing.
    off = pull_cli("acme/other", cache=cache, hf_home=tmp_path / "empty", endpoint=None, offline=True)
    assert off.returncode != 0 and "HF_HUB_OFFLINE" in off.stderr + off.stdout
    assert not (cache / "acme--other").exists()
    # Unreachable endpoint: a clear error, not a traceback.
    down = pull_cli("acme/other", cache=cache, hf_home=tmp_path / "empty", endpoint="http://127.0.0.1:9")
    out = down.stderr + down.stdout
    assert down.returncode != 0 and "unreachable" in out and "Traceback" not in out
    # Offline but already in the hub cache: the pull works from the cache.
    cached = pull_cli(REPO, "--revision", COMMIT, "--force", cache=cache, hf_home=hf_home, endpoint=None,
                      offline=True)
    assert cached.returncode == 0, cached.stderr
    assert json.loads((cache / hub_folder_name(REPO) / MANIFEST).read_text())["revision"] == COMMIT


@pytest.mark.parametrize("name", ["not-a-model", "a/b/c"])
def test_pull_refuses_what_is_neither_known_nor_a_hub_name(name, tmp_path):
    from app.errors import NotFound
    from app.model_registry import pull

    with pytest.raises(NotFound, match="hub name"):
        pull(name, cache_dir=tmp_path)


def test_the_model_version_row_traces_to_the_pulled_commit(tiny_model_dir, tmp_path, store, monkeypatch):
    from app.config import get_settings
    from workers.tasks.rounds import base_generator_id

    cache = tmp_path / "models"
    with FakeHub(tiny_model_dir) as hub:
        assert pull_cli(REPO, cache=cache, hf_home=tmp_path / "hf", endpoint=hub.url).returncode == 0
    monkeypatch.setenv("MUCODE_MODEL_CACHE_DIR", str(cache))
    get_settings.cache_clear()
    try:
        row = store.get_model_version(base_generator_id(store, REPO))
    finally:
        get_settings.cache_clear()
    assert row.name == f"{REPO}@{COMMIT[:12]}" and row.uri == str(cache / hub_folder_name(REPO))
    weights = row.config["weights"]
    assert weights["revision"] == COMMIT and weights["source"] == f"hub:{REPO}"
    assert weights["files"]["config.json"] == hashlib.sha256((tiny_model_dir / "config.json").read_bytes()).hexdigest()
