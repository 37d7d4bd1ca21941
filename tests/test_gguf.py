"""GGUF files converted tensor by tensor to the serving dtype: the same weights, config and
tokenizer as transformers' own GGUF loader gives (cast to that dtype), written once."""

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, dequantize
from tiny_gguf import write_tiny_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

from specdec import gguf as gguf_convert
from specdec.fetch import convert_gguf
from specdec.gguf_int4 import _BLOCK_BYTES, int4_codes
from specdec.models import load_model, tokenizer_fingerprint
from specdec.quantize import Int4Linear, given_codes
from specdec.quantize_cuda import CudaInt4Linear


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf")


@pytest.fixture(scope="module")
def reference(tiny_gguf):
    """transformers' own loader, in float32 (the old conversion path)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name,
                                                 dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    return model, tokenizer


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_conversion_equals_transformers_loader_cast_to_the_dtype(tiny_gguf, reference, dtype,
                                                                 tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_convert, "SHARD_BYTES", 20_000)  # several shards
    monkeypatch.setattr(gguf_convert, "CHUNK_ELEMENTS", 1000)  # several slices per tensor
    out = convert_gguf(tiny_gguf, tmp_path, dtype)
    assert out.name == dtype
    old, old_tokenizer = reference
    new = AutoModelForCausalLM.from_pretrained(out)
    assert new.dtype == getattr(torch, dtype)
    want = {k: v.to(new.dtype) for k, v in old.state_dict().items()}
    got = new.state_dict()
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert torch.equal(got[name], value), name
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in want.values())
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_key_value_heads",
                "tie_word_embeddings", "max_position_embeddings", "rms_norm_eps"):
        assert getattr(new.config, key) == getattr(old.config, key), key
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(old_tokenizer)


def test_tensors_are_dequantized_a_slice_of_rows_at_a_time(tiny_gguf, tmp_path, monkeypatch):
    """Never a whole tensor (nor the model) in float32: slices of at most CHUNK_ELEMENTS."""
    import gguf

    seen = []
    real = gguf.dequantize

    def recording(data, qtype):
        out = real(data, qtype)
        seen.append(out.size)
        return out

    monkeypatch.setattr(gguf, "dequantize", recording)
    monkeypatch.setattr(gguf_convert, "CHUNK_ELEMENTS", 640)
    convert_gguf(tiny_gguf, tmp_path, "bfloat16")
    assert seen and max(seen) <= 640 and len(seen) > 27  # (27 tensors in the file)


def test_a_served_gguf_is_converted_once_to_the_served_dtype(tiny_gguf, tmp_path, monkeypatch):
    lm = load_model(str(tiny_gguf), "float32", "cpu", str(tmp_path))
    assert lm.dtype == torch.float32 and lm.vocab_size == 320
    (converted,) = (tmp_path / "converted").iterdir()
    assert sorted(p.name for p in converted.iterdir()) == ["float32"]

    def refuse(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_convert, "convert", refuse)
    again = load_model(str(tiny_gguf), "float32", "cpu", str(tmp_path))
    assert again.tokenizer_fingerprint == lm.tokenizer_fingerprint


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q4_K"])
def test_4bit_blocks_repack_to_codes_scales_and_zeros_exactly(kind):
    """int4_codes reads the blocks (random bytes, sane fp16 scales) into codes, scales and
    zeros whose (q - 8) * scale + zero are the gguf package's dequantized values, exactly."""
    rng = np.random.default_rng(0)
    values = 256 if kind == "Q4_K" else 32
    n, k = 6, 512
    blocks = rng.integers(0, 256, size=(n * k // values, _BLOCK_BYTES[kind]), dtype=np.uint8)
    halves = 1 if kind == "Q4_0" else 2  # d (Q4_0); d and m / dmin (Q4_1, Q4_K)
    blocks[:, :2 * halves] = rng.uniform(1e-3, 0.1, size=(len(blocks), halves)).astype(
        np.float16).view(np.uint8)
    rows = blocks.reshape(n, -1)
    q, scales, zeros = int4_codes(kind, rows)
    assert q.shape == (n, k) and int(q.max()) <= 15 and scales.shape == zeros.shape == (n, k // 32)
    w = (q.float().reshape(n, -1, 32) - 8) * scales[..., None] + zeros[..., None]
    want = dequantize(rows, getattr(GGMLQuantizationType, kind)).reshape(n, k)
    assert torch.equal(w.reshape(n, k), torch.from_numpy(want))


def test_int4_from_a_4bit_gguf_keeps_the_files_own_weights(tmp_path, monkeypatch):
    """--quantization int4 of a Q4_0 GGUF takes its blocks as they are (group size 32): the
    dense weights equal the file's dequantized ones exactly (quantizing them again would
    not), the low-bit passes agree with them, and a cached start does not read the blocks."""
    gguf = write_tiny_gguf(tmp_path / "tiny-q4_0.gguf", matrices=GGMLQuantizationType.Q4_0)
    plain = load_model(str(gguf), "float32", "cpu", str(tmp_path / "cache"))
    lm = load_model(str(gguf), "float32", "cpu", str(tmp_path / "cache"), quantization="int4")
    weights = dict(plain.model.named_modules())
    layers = {name: m for name, m in lm.model.named_modules() if isinstance(m, Int4Linear)}
    assert len(layers) >= 14 and all(m.group_size == 32 for m in layers.values())
    for name, layer in layers.items():
        assert torch.equal(layer.dense.weight, weights[name].weight), name
    ids = torch.tensor([plain.tokenizer("def add(a, b):").input_ids])
    with torch.inference_mode():
        want = plain.model(ids).logits
        assert torch.allclose(lm.model(ids).logits, want, atol=1e-4)  # dense (many rows)
        for layer in layers.values():
            layer.max_rows = 1 << 20  # every pass through the int4 kernel
        assert torch.allclose(lm.model(ids).logits, want, atol=1e-4)

    def refuse(*args):
        raise AssertionError("read the blocks again")

    monkeypatch.setattr(gguf_convert, "int4_blocks", refuse)
    again = load_model(str(gguf), "float32", "cpu", str(tmp_path / "cache"), quantization="int4")
    for name, layer in again.model.named_modules():
        if isinstance(layer, Int4Linear):
            assert torch.equal(layer.dense.weight, weights[name].weight), name


def test_int4_on_cuda_from_a_4bit_gguf_keeps_the_files_own_weights(tmp_path,
                                                                   fake_cuda_kernels):
    """The CUDA layer (stand-in kernels on a CPU, see fake_int4_kernels) built from the file's
    blocks: group size 32, and the weights read back are the file's (up to bf16 scales)."""
    gguf = write_tiny_gguf(tmp_path / "tiny-q4_0.gguf", matrices=GGMLQuantizationType.Q4_0)
    plain = load_model(str(gguf), "float32", "cpu", str(tmp_path / "cache"))
    modules = dict(plain.model.named_modules())
    blocks = gguf_convert.int4_blocks(gguf, plain.model)
    assert len(blocks) >= 14
    for name, kind_rows in blocks.items():
        layer = CudaInt4Linear(modules[name], 32, given_codes(kind_rows))
        assert torch.allclose(layer.dequantized().float(), modules[name].weight.float(),
                              rtol=1e-2, atol=1e-3), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_int4_on_a_gpu_from_a_4bit_gguf_keeps_the_files_own_weights(tmp_path):
    gguf = write_tiny_gguf(tmp_path / "tiny-q4_0.gguf", matrices=GGMLQuantizationType.Q4_0)
    plain = load_model(str(gguf), "bfloat16", "cuda", str(tmp_path / "cache"))
    lm = load_model(str(gguf), "bfloat16", "cuda", str(tmp_path / "cache"), quantization="int4")
    weights = dict(plain.model.named_modules())
    layers = {n: m for n, m in lm.model.named_modules() if isinstance(m, CudaInt4Linear)}
    assert len(layers) >= 14
    for name, layer in layers.items():
        assert layer.group_size == 32 and layer.scales_and_zeros.is_cuda, name
        assert torch.allclose(layer.dequantized().float(), weights[name].weight.float(),
                              rtol=1e-2, atol=1e-3), name
