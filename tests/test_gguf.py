"""GGUF files converted tensor by tensor to the serving dtype: the same weights, config and
tokenizer as transformers' own GGUF loader gives (cast to that dtype), written once."""

import json

import pytest
import torch
from tiny_gguf import write_tiny_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

from specdec import gguf as gguf_convert
from specdec.fetch import convert_gguf
from specdec.models import load_model, tokenizer_fingerprint


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
