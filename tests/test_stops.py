"""Stopping: EOS, stop strings and max_new_tokens, inside a block of accepted tokens."""

import pytest
import torch

from coordinator.client import generate as client_generate
from coordinator.generation.textstream import TextStream
from specdec.v1 import generator_pb2
from stack import start_stack, with_eos
from tiny_models import PROMPTS

K = 4  # with the identical draft every round accepts all K: blocks are tokens [5r, 5r + 5)


def reference(lm, prompt, n=40):
    ids = lm.tokenizer(prompt).input_ids
    with torch.inference_mode():
        out = lm.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def request(prompt, max_new, k=K, stop=()):
    return generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=max_new,
                                         num_speculative_tokens=k, stop=list(stop))


@pytest.mark.parametrize("max_new", [1, 3, 7, 13])
def test_max_new_tokens_inside_a_block(stacks, lms, max_new):
    stack = stacks("draft_identical")
    prompt = PROMPTS[2]
    ids, _, stats = client_generate(stack.addr, request(prompt, max_new, k=8))
    assert ids == reference(lms["target"], prompt)[:max_new]
    assert stats["finish_reason"] == "FINISH_REASON_LENGTH"
    assert stats["generated_tokens"] == max_new


def test_eos_inside_a_block(loop, lms):
    prompt = PROMPTS[4]
    ref = reference(lms["target"], prompt)
    # make a token first generated mid-block (index 7 of block [5, 10)) the EOS token
    index = next(i for i in range(6, 9) if ref[i] not in ref[:i])
    target = with_eos(lms["target"], [ref[index]])
    stack = start_stack(loop, lms["draft_identical"], target)
    try:
        ids, _, stats = client_generate(stack.addr, request(prompt, 30))
        assert ids == ref[:index + 1]
        assert stats["finish_reason"] == "FINISH_REASON_EOS"
        assert stack.sessions_left() == (0, 0)
    finally:
        stack.stop()


def find_stop_case(tokenizer, ref, prompt_ids):
    """A stop string first completed by token j (mid-block): that token's own clean text."""
    for j in (6, 7, 8, 11, 12, 13):
        before = tokenizer.decode(prompt_ids + ref[:j])
        after = tokenizer.decode(prompt_ids + ref[:j + 1])
        stop = after[len(before):]
        if (after.startswith(before) and len(stop) >= 2 and stop.isprintable()
                and "\ufffd" not in stop and stop not in before):
            return j, stop
    return None


def test_stop_string_completed_inside_a_block(stacks, lms):
    stack = stacks("draft_identical")
    tok = lms["target"].tokenizer
    for prompt in PROMPTS:
        ref = reference(lms["target"], prompt)
        prompt_ids = tok(prompt).input_ids
        case = find_stop_case(tok, ref, prompt_ids)
        if case:
            break
    assert case, "no prompt gives a clean stop string; adjust the test corpus"
    j, stop = case
    ids, text, stats = client_generate(stack.addr, request(prompt, 30, stop=[stop, "never"]))
    full = tok.decode(prompt_ids + ref[:j + 1])[len(tok.decode(prompt_ids)):]
    assert ids == ref[:j + 1]  # nothing past the token that completed the stop
    assert stop not in text and text == full[:full.index(stop)]
    assert stats["finish_reason"] == "FINISH_REASON_STOP"


class CharTokenizer:
    """Each id is one character (for TextStream tests)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_text_stream_holds_back_possible_stop_starts():
    ts = TextStream(CharTokenizer(), [], ["END"])
    out = [ts.push(ord(c)) for c in "abEN"]
    assert [o[0] for o in out] == ["a", "b", "", ""]  # "EN" might start "END"
    assert ts.push(ord("x")) == ("ENx", False)  # it did not: released
    assert ts.push(ord("E")) == ("", False)
    assert ts.push(ord("N")) == ("", False)
    assert ts.push(ord("D")) == ("", True)  # stop completed: its text is never released
    assert ts.text == "abENx"


def test_text_stream_flush_releases_held_text():
    ts = TextStream(CharTokenizer(), [], ["xyz"])
    assert ts.push(ord("x")) == ("", False)
    assert ts.flush() == "x"
