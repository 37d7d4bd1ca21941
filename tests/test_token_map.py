"""The draft's restricted output head (specdec.token_map): the token list and the head."""

import collections
import json

import pytest
import torch

from specdec.errors import InvalidArgument
from specdec.models import load_model
from specdec.token_map import frequent_tokens, resolve
from tiny_models import PROMPTS


def test_frequent_tokens_ranks_by_count_keeps_the_always_ids_and_pads(lms):
    tok = lms["target"].tokenizer
    text = "x x x x y y y z z w"
    ranked = [t for t, _ in collections.Counter(
        tok(text, add_special_tokens=False).input_ids).most_common()]
    ids = frequent_tokens(tok, [text], 2, always=[0])
    assert set(ranked[:2]) | {0} <= set(ids) and ids == sorted(ids)
    assert len(ids) == 64  # padded with the next most frequent, then the smallest ids
    assert set(ranked) <= set(ids)
    small = frequent_tokens(tok, [text], 2, always=[0], vocab_size=40)
    assert len(small) == 3  # a vocabulary too small to pad: left as it is


def test_resolve_reads_a_json_list_and_refuses_bad_ones(tmp_path):
    good = tmp_path / "ids.json"
    good.write_text(json.dumps([5, 3, 3]))
    assert resolve(str(good), None, "f", 10, [9], str(tmp_path)) == [3, 5, 9]
    assert resolve("", None, "f", 10, [], str(tmp_path)) is None
    for content, message in (("[1, 2, 10]", r"\[0, 10\)"), ('{"a": 1}', "JSON list"),
                             ("not json", "readable JSON")):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(InvalidArgument, match=message):
            resolve(str(bad), None, "f", 10, [], str(tmp_path))
    with pytest.raises(InvalidArgument, match="readable JSON"):
        resolve(str(tmp_path / "missing.json"), None, "f", 10, [], str(tmp_path))


def test_a_number_builds_the_list_from_the_corpus_once(lms, tmp_path):
    tok = lms["target"].tokenizer
    ids = resolve("40", tok, "abc", lms["target"].vocab_size, [0], str(tmp_path))
    assert len(ids) == 64 and 0 in ids
    (cached,) = (tmp_path / "token-maps").iterdir()
    assert json.loads(cached.read_text())["ids"] == ids


def test_restricted_head_computes_the_same_logits_for_its_tokens(lms, model_dirs, tmp_path):
    ids = frequent_tokens(lms["target"].tokenizer, PROMPTS, 50)
    path = tmp_path / "ids.json"
    path.write_text(json.dumps(ids))
    full = lms["draft_perturbed"]
    small = load_model(str(model_dirs["draft_perturbed"]), "float32", "cpu", str(tmp_path),
                       head_vocab=str(path))
    assert small.vocab_size == full.vocab_size  # what GetInfo reports: the full vocabulary
    kept = small.head_ids.tolist()  # the list, EOS (always proposable), padding to 64 rows
    assert set(ids) | set(full.eos_token_ids) <= set(kept) and len(kept) % 64 == 0
    x = torch.tensor([full.tokenizer("def add(a, b):").input_ids])
    with torch.inference_mode():
        expected = full.model(x).logits[0, :, kept]
        got = small.model(x).logits[0]
    assert got.shape == (x.shape[1], len(kept))
    torch.testing.assert_close(got, expected)
