"""Incremental detokenization with stop strings: which text each new token releases.

Text that might be the start of a stop string is held back until it is known not to be one,
so nothing of a stop string, nor anything after it, is ever released.
"""

from __future__ import annotations

_CONTEXT_TOKENS = 4  # prompt tokens decoded along, so the first token's spacing is right


class TextStream:
    def __init__(self, tokenizer, prompt_ids: list[int], stop: list[str]):
        self._tok = tokenizer
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._stop = [s for s in stop if s]
        self._longest_stop = max(map(len, self._stop), default=0)
        self.text = ""  # all text decoded so far
        self._released = 0  # characters of self.text already released

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def _new_text(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full = self._decode(self._ids[self._prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):  # not mid-character
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return full[len(prefix):]
        return ""

    def _held_suffix(self) -> int:
        """Length of the longest tail of the unreleased text that starts a stop string."""
        tail = self.text[max(self._released, len(self.text) - self._longest_stop + 1):]
        for start in range(len(tail)):
            if any(s.startswith(tail[start:]) for s in self._stop):
                return len(tail) - start
        return 0

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; returns (text released now, whether a stop string completed)."""
        self.text += self._new_text(token_id)
        search_from = max(0, self._released - self._longest_stop + 1)
        hits = [i for s in self._stop if (i := self.text.find(s, search_from)) != -1]
        if hits:
            cut = max(min(hits), self._released)
            out = self.text[self._released:cut]
            self.text = self.text[:cut]
            self._released = cut
            return out, True
        safe = len(self.text) - self._held_suffix()
        out = self.text[self._released:safe]
        self._released = max(self._released, safe)
        return out, False

    def flush(self) -> str:
        """Release everything held back (generation ended without a stop string)."""
        rest = self._decode(self._ids[self._prefix_offset:])
        self.text += rest[len(self._decode(self._ids[self._prefix_offset:self._read_offset])):]
        self._prefix_offset = self._read_offset = len(self._ids)
        out = self.text[self._released:]
        self._released = len(self.text)
        return out
