"""Converting a GGUF file to a safetensors directory in the serving dtype, tensor by tensor.

Rules:
  * the weights are the ones transformers' own GGUF loader makes (the `gguf` package's reader
    and dequantize, transformers' name map and tensor processors), cast to the asked dtype
    right after dequantizing: never a whole float32 copy of the model;
  * a tensor is dequantized a slice of rows at a time into a tensor of the asked dtype, and
    tensors are written in shards of at most SHARD_BYTES, so peak memory is about a shard plus
    the largest tensor, not the model;
  * config, generation config and tokenizer come from the file's metadata only;
  * architectures transformers loads through its newer GGUF path (or whose tensor processor
    merges tensors) go through `from_pretrained` in the asked dtype instead.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np
import structlog
import torch

log = structlog.get_logger(__name__)

SHARD_BYTES = 512 << 20
CHUNK_ELEMENTS = 1 << 22  # dequantized a slice of rows of about this many values at a time


def save_tokenizer(gguf: Path, out: Path) -> None:
    """The tokenizer in the file's metadata, saved to `out` (reads no tensor data)."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def convert(gguf: Path, out: Path, dtype: torch.dtype) -> None:
    """Write config, generation config, tokenizer and weights of `gguf` to the directory `out`."""
    from transformers import AutoConfig, GenerationConfig
    from transformers.integrations.gguf import is_gguf_arch_supported, read_gguf_metadata

    out.mkdir(parents=True, exist_ok=True)
    metadata, _ = read_gguf_metadata(str(gguf))
    if is_gguf_arch_supported(metadata["general.architecture"]):
        return _convert_with_transformers(gguf, out, dtype)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    try:
        names = _write_weights(gguf, out, config, dtype)
    except _NeedsWholeModel as e:
        log.info("converting through transformers' loader", reason=str(e))
        for f in out.glob("*.safetensors"):
            f.unlink()
        return _convert_with_transformers(gguf, out, dtype)
    config.dtype = dtype
    config.architectures = [names]
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    save_tokenizer(gguf, out)


class _NeedsWholeModel(Exception):
    pass


def _write_weights(gguf: Path, out: Path, config, dtype: torch.dtype) -> str:
    """Dequantize, map and write every tensor; returns the model class's name."""
    from gguf import GGUFReader
    from safetensors.torch import save_file
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor

    reader = GGUFReader(gguf)
    architecture, processor, parsed, names, model = _tensor_names(gguf, reader, config)
    expected = dict(model.state_dict())
    shard: dict[str, torch.Tensor] = {}
    shards: list[list[str]] = []  # the tensor names of each shard written
    total_bytes = 0

    def flush() -> None:
        nonlocal total_bytes
        save_file(shard, out / f"part-{len(shards)}.safetensors", metadata={"format": "pt"})
        shards.append(list(shard))
        total_bytes += sum(t.nbytes for t in shard.values())
        shard.clear()
        _drop_mapped_pages(reader)

    for tensor in reader.tensors:
        weights = _dequantized(tensor, dtype)
        if type(processor) is not TensorProcessor:
            result = processor.process(weights=weights.float().numpy(), name=tensor.name,
                                       tensor_key_mapping=names, parsed_parameters=parsed)
            if result.name is None:
                raise _NeedsWholeModel(f"{architecture}: tensor {tensor.name} is merged")
            weights = torch.from_numpy(np.ascontiguousarray(result.weights)).to(dtype)
        if tensor.name not in names:
            continue
        hf_name = names[tensor.name]
        if hf_name not in expected or tuple(expected[hf_name].shape) != tuple(weights.shape):
            raise _NeedsWholeModel(f"{tensor.name} -> {hf_name} {tuple(weights.shape)}")
        shard[hf_name] = weights
        if sum(t.nbytes for t in shard.values()) >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    weight_map = {}
    for i, tensors in enumerate(shards):  # (named as transformers names shards)
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (out / f"part-{i}.safetensors").rename(out / name)
        weight_map.update(dict.fromkeys(tensors, name))
    index = {"metadata": {"total_size": total_bytes},
             "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return type(model).__name__


def _tensor_names(gguf: Path, reader, config):
    """(architecture, tensor processor, parsed metadata, {GGUF name: transformers name},
    the model on the meta device) for the file's tensors."""
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
        read_field,
    )

    architecture = read_field(reader, "general.architecture")[0]
    parsed = load_gguf_checkpoint(str(gguf), return_tensors=False)
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed["config"])
    with torch.device("meta"):  # (names and shapes only: no memory)
        model = AutoModelForCausalLM.from_config(config)
    return architecture, processor, parsed, get_gguf_hf_weights_map(model, processor), model


def int4_blocks(gguf: Path, model, head_ids: torch.Tensor | None = None
                ) -> dict[str, tuple[str, np.ndarray]]:
    """The model's linear weights that the file stores as 4-bit blocks specdec.gguf_int4
    repacks: {module name: (GGUF type name, [rows, bytes] blocks)}. head_ids: the rows the
    output head was restricted to (specdec.token_map), taken from the file's rows. Empty for
    an architecture whose transformers tensor processor changes tensors (their rows would no
    longer match the blocks). Reading the file's header takes seconds (its vocabulary), so
    call this only to quantize (a quantization cache keeps the result)."""
    import gguf as gguf_lib
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS

    from .gguf_int4 import repackable

    reader = gguf_lib.GGUFReader(gguf)
    field = reader.get_field(gguf_lib.KEY_GENERAL_ARCHITECTURE)
    architecture = field.contents() if field is not None else None
    arch = {v: k for k, v in gguf_lib.MODEL_ARCH_NAMES.items()}.get(architecture)
    if arch is None or architecture in TENSOR_PROCESSORS:
        return {}
    config = model.config.get_text_config()
    names = gguf_lib.get_tensor_name_map(arch, config.num_hidden_layers)
    tensors = {t.name: t for t in reader.tensors}
    head = model.get_output_embeddings()
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        base = names.get_name(name)
        if module is head and getattr(config, "tie_word_embeddings", False):
            base = "token_embd"  # (transformers ties the head to the embeddings)
        tensor = tensors.get(f"{base}.weight") if base else None
        if tensor is None or tensor.data.ndim != 2 or not repackable(tensor.tensor_type.name):
            continue
        rows = tensor.data
        if module is head and head_ids is not None:
            rows = np.asarray(rows)[head_ids.cpu().numpy()]
        if rows.shape[0] == module.out_features:
            out[name] = (tensor.tensor_type.name, rows)
    return out


def _dequantized(tensor, dtype: torch.dtype) -> torch.Tensor:
    """One GGUF tensor as a torch tensor of `dtype`, dequantized a slice of rows at a time."""
    from gguf import dequantize
    from gguf.quants import quant_shape_from_byte_shape

    data = tensor.data
    if data.dtype == np.uint8:  # blocks: [..., bytes per row]
        shape = quant_shape_from_byte_shape(data.shape, tensor.tensor_type)
    else:
        shape = data.shape
    rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
    width = int(np.prod(shape)) // rows.shape[0]
    result = torch.empty(rows.shape[0], width, dtype=dtype)
    step = max(1, CHUNK_ELEMENTS // width)
    for start in range(0, rows.shape[0], step):
        part = dequantize(rows[start:start + step], tensor.tensor_type)
        result[start:start + step] = torch.from_numpy(
            np.array(part, dtype=np.float32)).reshape(-1, width)  # (a copy: writable)
    return result.reshape(shape)


def _drop_mapped_pages(reader) -> None:
    """Let go of the file pages read so far (they stay in the page cache, not in our RSS)."""
    m = getattr(reader.data, "_mmap", None)
    if m is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            m.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def _convert_with_transformers(gguf: Path, out: Path, dtype: torch.dtype) -> None:
    """transformers' own loader in the asked dtype (its newer GGUF path casts per tensor)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    model.hf_quantizer = None  # (dequantized in memory: save as plain tensors)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, max_shard_size="512MB")
    save_tokenizer(gguf, out)
