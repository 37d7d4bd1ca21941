"""The coordinator loads its tokenizer alone: it reads no weight file, and from a GGUF file
only the metadata."""

import shutil

import pytest
from test_exactness import greedy_outputs, run
from tiny_gguf import write_tiny_gguf

from specdec.models import load_model, load_tokenizer, tokenizer_fingerprint
from stack import start_stack
from tiny_models import PROMPTS


def test_the_coordinator_starts_from_a_model_directory_whose_weights_are_unreadable(
        loop, lms, model_dirs, tmp_path):
    folder = tmp_path / "target-tokenizer-only"
    shutil.copytree(model_dirs["target"], folder)
    for weights in folder.glob("*.safetensors"):
        weights.write_bytes(b"not weights")  # loading these would fail
    assert load_tokenizer(str(folder), str(tmp_path / "cache")).get_vocab() == \
        lms["target"].tokenizer.get_vocab()
    stack = start_stack(loop, lms["draft_identical"], lms["target"],
                        coord_cfg={"tokenizer": str(folder), "cache_dir": str(tmp_path)})
    try:
        prompt = PROMPTS[2]
        ids, _, _ = run(stack, prompt, 4)
        assert ids == greedy_outputs(lms["target"])[prompt]
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def gguf_pair(tmp_path_factory):
    """A tiny GGUF model served from its converted copy, and the same file with its tensor
    data overwritten by 0xff bytes (NaN scales: any weight read from it would be NaN)."""
    from gguf import GGUFReader

    root = tmp_path_factory.mktemp("gguf-pair")
    full = write_tiny_gguf(root / "tiny.gguf")
    garbled = root / "garbled" / "tiny.gguf"
    garbled.parent.mkdir()
    data = bytearray(full.read_bytes())
    start = GGUFReader(full).data_offset
    data[start:] = b"\xff" * (len(data) - start)
    garbled.write_bytes(bytes(data))
    return full, garbled


def test_a_gguf_targets_tokenizer_comes_from_the_metadata_alone(loop, lms, gguf_pair, tmp_path):
    full, garbled = gguf_pair
    target = load_model(str(full), "float32", "cpu", str(tmp_path / "services"))
    draft = load_model(str(full), "float32", "cpu", str(tmp_path / "services"))
    cache = tmp_path / "coordinator"
    tokenizer = load_tokenizer(str(garbled), str(cache))
    assert tokenizer_fingerprint(tokenizer) == target.tokenizer_fingerprint
    (converted,) = (cache / "converted").iterdir()
    assert [p.name for p in converted.iterdir()] == ["tokenizer"]
    assert not list(cache.rglob("*.safetensors"))
    stack = start_stack(loop, draft, target,
                        coord_cfg={"tokenizer": str(garbled), "cache_dir": str(cache)})
    try:
        prompt = PROMPTS[0]
        ids, _, _ = run(stack, prompt, 4)
        assert ids == greedy_outputs(target)[prompt]
    finally:
        stack.stop()


def test_a_converted_models_tokenizer_is_reused(gguf_pair, tmp_path):
    full, _ = gguf_pair
    model_dir = load_model(str(full), "float32", "cpu", str(tmp_path)).name
    assert model_dir == str(full)
    load_tokenizer(str(full), str(tmp_path))
    (converted,) = (tmp_path / "converted").iterdir()
    assert [p.name for p in converted.iterdir()] == ["float32"]  # no separate tokenizer copy
