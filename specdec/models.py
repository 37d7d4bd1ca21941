"""Loading a causal LM and its tokenizer for serving; dtype, device and CPU bf16 safety."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from . import fp16_weights, quantize_cuda, token_map
from .config import default_cache_dir
from .errors import InvalidArgument
from .fetch import resolve_model, resolve_tokenizer_dir
from .quantize import calibrate, quantize, use_fp16_dense_paths
from .wide_rows import WIDE_ROWS, upcast_wide_passes

log = structlog.get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# oneDNN ISA cap that keeps bf16 kernels off AMX. Some VMs advertise AMX but trap its
# instructions (SIGILL kills the process), so on CPU we cap the ISA unless the user chose one.
SAFE_ONEDNN_ISA = "AVX512_CORE_BF16"
_BF16_PROBE = (
    "import torch\n"
    "a = torch.randn(64, 96, dtype=torch.bfloat16)\n"
    "l = torch.nn.Linear(96, 128, dtype=torch.bfloat16)\n"
    "torch.nn.functional.scaled_dot_product_attention(*(l(a)[None, None],) * 3)\n"
)


@dataclass
class LoadedModel:
    """A model ready to serve, with the facts services report in GetInfo."""

    name: str
    model: PreTrainedModel
    tokenizer: object
    dtype: torch.dtype
    device: torch.device
    vocab_size: int
    max_context_length: int
    eos_token_ids: list[int]
    tokenizer_fingerprint: str
    quantization: str = "none"  # weight-only scheme of the linear layers (specdec.quantize)
    # the token id of each logit column when the head is restricted (specdec.token_map)
    head_ids: torch.Tensor | None = None

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def cpu_bf16_usable(cpuinfo: str | None = None, probe: str = _BF16_PROBE) -> bool:
    """Make bf16 safe on this CPU and prove it in a throw-away process.

    Caps oneDNN below AMX when the CPU advertises AMX and ONEDNN_MAX_CPU_ISA is unset; the
    variable must be set before the first oneDNN kernel runs, so call this before loading.
    Then runs bf16 linear + attention in a subprocess: a crash there (SIGILL) costs nothing.
    """
    if cpuinfo is None:
        info = Path("/proc/cpuinfo")
        cpuinfo = info.read_text() if info.exists() else ""
    if "amx" in cpuinfo and "ONEDNN_MAX_CPU_ISA" not in os.environ:
        os.environ["ONEDNN_MAX_CPU_ISA"] = SAFE_ONEDNN_ISA
        log.info("capping oneDNN ISA below AMX for bf16", ONEDNN_MAX_CPU_ISA=SAFE_ONEDNN_ISA)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=300)
    if done.returncode != 0:
        log.warning("bf16 probe failed on this CPU", returncode=done.returncode,
                    stderr=done.stderr.decode(errors="replace")[-500:])
    return done.returncode == 0


def cpu_bf16_fast() -> bool:
    """Whether oneDNN has bf16 matrix kernels on this CPU (AVX-512 or AMX); without them a
    bf16 product costs about as much per row as a 1-token step (specdec.wide_rows)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # (a torch without it: assume the kernels exist)
        return True


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over the token->id map and the special tokens."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": sorted(map(str, tokenizer.all_special_tokens)),
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


def load_tokenizer(spec: str, cache_dir: str):
    """spec's tokenizer alone: reads (and fetches) no weights (specdec.fetch)."""
    return AutoTokenizer.from_pretrained(resolve_tokenizer_dir(spec, cache_dir))


def eos_token_ids(model: PreTrainedModel, tokenizer) -> list[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None),
                  getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            ids.update([value] if isinstance(value, int) else value)
    return sorted(ids)


GGUF_REPACK = "+gguf-blocks-v1"  # in the cache key: which layers keep a GGUF's own blocks


def gguf_blocks(gguf: Path | None, model, head_ids: torch.Tensor | None
                ) -> Callable[[], dict] | None:
    """For int4 from a GGUF file: what reads the layers it holds as 4-bit blocks (specdec.
    gguf.int4_blocks), so that they keep the file's own weights (None: not a GGUF)."""
    if gguf is None:
        return None
    from .gguf import int4_blocks
    return lambda: int4_blocks(gguf, model, head_ids)


def quantized_cache_file(path, cache_dir: str | None, scheme: str, dtype: torch.dtype,
                         head_ids: torch.Tensor | None) -> Path | None:
    """Where the packed low-bit layers of this model are cached: keyed by the weight files
    (path, size, modification time), scheme, dtype, restricted head and torch version."""
    if not cache_dir:
        return None
    files = sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin"))
    key = json.dumps([str(Path(path).resolve()), scheme, str(dtype), torch.__version__,
                      [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files],
                      None if head_ids is None else head_ids.tolist()])
    return Path(cache_dir) / "quantized" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"


def load_model(spec: str, dtype: str = "auto", device: str = "auto",
               cache_dir: str | None = None, quantization: str = "none",
               head_vocab: str = "") -> LoadedModel:
    """Load a model and its tokenizer. cache_dir: where fetched and converted weights go
    (None = the services' default, specdec.config.default_cache_dir); quantization: "none",
    "int8" or "int4" weight-only linear layers (specdec.quantize; int4 only on CUDA,
    specdec.quantize_cuda), or "fp16" weights with
    float32 activations (specdec.fp16_weights; chosen by itself for bf16 with no other scheme
    on a CPU without bf16 matrix kernels), applied after loading;
    head_vocab: restrict the output head to these tokens (a draft's --draft-vocab,
    specdec.token_map), before quantizing."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if dt == torch.bfloat16 and dev.type == "cpu" and not cpu_bf16_usable():
        log.warning("bfloat16 is not usable on this CPU; falling back to float32", model=spec)
        dt = torch.float32
    if dev.type == "cuda" and quantization in ("int8", "int4"):  # (before loading anything)
        quantize_cuda.check(quantization, dt, torch.cuda.get_device_capability(dev))
    cache_dir = cache_dir or default_cache_dir()  # (never the working directory: GiBs)
    path, gguf = resolve_model(spec, cache_dir, str(dt).removeprefix("torch."))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dt).to(dev).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = model.config.get_text_config()
    vocab_size = model.get_output_embeddings().weight.shape[0]
    fingerprint = tokenizer_fingerprint(tokenizer)
    eos = eos_token_ids(model, tokenizer)
    ids = token_map.resolve(head_vocab, tokenizer, fingerprint, vocab_size, eos, cache_dir)
    head_ids = None if ids is None else token_map.restrict_head(model, ids)
    slow_bf16 = dt == torch.bfloat16 and dev.type == "cpu" and not cpu_bf16_fast()
    if slow_bf16 and quantization == "none" and fp16_weights.available():
        quantization = fp16_weights.SCHEME
        log.warning("this CPU has no bf16 matrix kernels (oneDNN needs AVX-512 or AMX): the "
                    "bf16 weights are held as fp16 (exact for bf16 values) and multiplied in "
                    "float32 by fbgemm, so a verify row costs ~a tenth of a step instead of "
                    "a whole one; activations are float32 (docs/benchmarks.md)", model=spec)
    if quantization == fp16_weights.SCHEME:
        if dev.type != "cpu":
            raise InvalidArgument(f"--quantization fp16 is for CPUs (fbgemm); on {dev} use "
                                  "--dtype float16 or bfloat16")
        if not fp16_weights.available():
            raise InvalidArgument("--quantization fp16 needs fbgemm, which this torch build "
                                  "lacks (x86 builds have it); use --dtype float32 or bfloat16")
        counts = quantize(model, quantization)
        dt, slow_bf16 = torch.float32, False
        (log.warning if counts["inexact_weights"] else log.info)(
            "fp16 weights, float32 activations", model=spec, **counts)
    elif quantization != "none" and dev.type == "cuda":  # int4 (checked above)
        counts = quantize(model, quantization, blocks=gguf_blocks(gguf, model, head_ids))
        torch.cuda.empty_cache()  # (hand the freed dense weights back to the device)
        log.info("quantized on CUDA: torch's int4 kernel for every pass, no dense copy",
                 model=spec, scheme=quantization, **counts)
    elif quantization != "none":
        if dev.type != "cpu":
            raise InvalidArgument(f"--quantization {quantization} runs on CPU and CUDA only "
                                  f"(device {dev})")
        blocks = gguf_blocks(gguf, model, head_ids) if quantization == "int4" else None
        cache = quantized_cache_file(path, cache_dir, quantization + (GGUF_REPACK if blocks
                                                                      else ""), dt, head_ids)
        counts = quantize(model, quantization, cache, blocks)
        if slow_bf16 and fp16_weights.available():
            dense = use_fp16_dense_paths(model)
            slow_bf16 = False
            log.info("no bf16 matrix kernels on this CPU: passes of many rows (prefills) "
                     "multiply fp16 copies of the weights in float32 (fbgemm)", model=spec,
                     layers=dense)
        max_rows = calibrate(model, cache_file=None if cache is None
                             else cache.with_suffix(".calibration.json"))
        log.info("quantized", model=spec, scheme=quantization, cache=str(cache),
                 low_bit_max_rows=max_rows, **counts)
        if max_rows == 0:
            log.warning(f"the {quantization} kernels lose to the dense product even for one "
                        f"row on this CPU with {str(dt).removeprefix('torch.')} activations, "
                        "so every pass uses the dequantized weights: this scheme only costs "
                        "memory here. int4 with --dtype bfloat16 is fast on AVX2 CPUs; "
                        "otherwise use --quantization none", model=spec)
    if slow_bf16:
        layers = upcast_wide_passes(model)
        log.warning("this CPU has no bf16 matrix kernels (oneDNN needs AVX-512 or AMX): each "
                    "row of a bf16 pass costs almost a 1-token step, so verify passes are "
                    "slow and speculation may not pay (adaptive K finds out); passes of "
                    f"{WIDE_ROWS} rows or more (prefills) compute in float32 "
                    "(docs/benchmarks.md)", model=spec, layers=layers)
    return LoadedModel(
        name=spec,
        model=model,
        tokenizer=tokenizer,
        dtype=dt,
        device=dev,
        vocab_size=vocab_size,
        quantization=quantization,
        max_context_length=int(getattr(config, "max_position_embeddings", 2048)),
        eos_token_ids=eos,
        tokenizer_fingerprint=fingerprint,
        head_ids=head_ids,
    )
