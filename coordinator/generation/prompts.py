"""Turning a request's text into token ids without stalling other streams: a prompt that
cannot fit the target's context is refused before any work, and tokenizing (and rendering a
chat template) runs on a small thread pool, off the event loop that serves every stream."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from specdec.errors import InvalidArgument

TOKENIZER_THREADS = 2


def longest_token_chars(tokenizer) -> int:
    """The most characters one token's text has in the tokenizer's vocabulary (byte-level
    vocabularies spell each byte as one character), at least 1."""
    return max((len(t) for t in tokenizer.get_vocab()), default=1) or 1


class PromptTokenizer:
    def __init__(self, tokenizer, context: int):
        """context: the most tokens a prompt may have (the target's context)."""
        self.tokenizer = tokenizer
        self.max_chars = context * longest_token_chars(tokenizer)
        self.context = context
        self._pool = ThreadPoolExecutor(TOKENIZER_THREADS, thread_name_prefix="tokenizer")

    def check_length(self, text: str, what: str = "the prompt") -> None:
        """InvalidArgument when `text` has more characters than `context` tokens could hold:
        a cheap bound checked before tokenizing (no token spells more than the longest)."""
        if len(text) > self.max_chars:
            raise InvalidArgument(
                f"{what} has {len(text):,} characters: more than the target's context of "
                f"{self.context:,} tokens can hold (at most {self.max_chars:,} characters); "
                f"shorten it")

    async def encode(self, text: str, special_tokens: bool = True) -> list[int]:
        self.check_length(text)
        return await self._run(self._encode, text, special_tokens)

    async def chat(self, messages: list[dict]) -> list[int]:
        """The ids of `messages` rendered with the tokenizer's chat template."""
        self.check_length("".join(m["content"] for m in messages), "the messages")
        return await self._run(self._chat, messages)

    def _encode(self, text: str, special_tokens: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special_tokens).input_ids

    def _chat(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        return self._encode(text, special_tokens=False)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
