"""The coordinator's pair check compares tokenizers (vocabulary and special tokens), not the
sizes of the models' output heads."""

import pytest
import torch
from test_exactness import greedy_outputs, run

from specdec.errors import FailedPrecondition
from specdec.models import load_model
from stack import start_stack
from tiny_models import EOS, PROMPTS, build_model, save, tiny_config, train_tokenizer


def padded(model, vocab_size: int):
    """A copy of model whose embeddings and head have zero rows up to vocab_size (as a model
    padded for its kernels: the extra ids are never produced)."""
    config = model.config
    wide = build_model(tiny_config(vocab_size, config.eos_token_id), seed=0)
    state = {}
    for name, value in model.state_dict().items():
        if value.shape[0] == config.vocab_size and name.endswith(("embed_tokens.weight",
                                                                  "lm_head.weight")):
            value = torch.cat([value, value.new_zeros(vocab_size - value.shape[0],
                                                      *value.shape[1:])])
        state[name] = value
    wide.load_state_dict(state)
    return wide


@pytest.fixture(scope="module")
def pair_dirs(model_dirs, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("pairs")
    target = AutoModelForCausalLM.from_pretrained(model_dirs["target"])
    tok = AutoTokenizer.from_pretrained(model_dirs["target"])
    other_tok = train_tokenizer(vocab_size=300)
    other_eos = other_tok.convert_tokens_to_ids(EOS)
    return {
        # the target itself, its head padded from 320 to 384 rows
        "same_tokenizer_wider_head": save(padded(target, 384), tok, root / "wide"),
        # another tokenizer, its head padded to the target's 320 rows
        "other_tokenizer_same_head": save(
            padded(build_model(tiny_config(len(other_tok), other_eos), seed=4), 320),
            other_tok, root / "other"),
    }


def test_a_draft_sharing_the_tokenizer_with_a_wider_head_is_accepted(loop, lms, pair_dirs,
                                                                    tmp_path):
    draft = load_model(str(pair_dirs["same_tokenizer_wider_head"]), "float32", "cpu",
                       str(tmp_path))
    assert draft.vocab_size == 384 != lms["target"].vocab_size
    assert draft.tokenizer_fingerprint == lms["target"].tokenizer_fingerprint
    reference = greedy_outputs(lms["target"])
    stack = start_stack(loop, draft, lms["target"])
    try:
        for prompt in PROMPTS[:4]:
            ids, _, stats = run(stack, prompt, 4)
            assert ids == reference[prompt], prompt
            assert stats["accepted_draft_tokens"] == stats["proposed_draft_tokens"] > 0
    finally:
        stack.stop()


def test_a_draft_with_another_tokenizer_and_an_equal_head_is_refused(loop, lms, pair_dirs,
                                                                    tmp_path):
    draft = load_model(str(pair_dirs["other_tokenizer_same_head"]), "float32", "cpu",
                       str(tmp_path))
    assert draft.vocab_size == lms["target"].vocab_size == 320
    with pytest.raises(FailedPrecondition, match="tokenizers differ .vocabulary or special"):
        start_stack(loop, draft, lms["target"])
