"""The draft side: propose K tokens per round and keep their distributions for the target."""

from __future__ import annotations

import torch

from .engine import Engine
from .errors import FailedPrecondition, InvalidArgument
from .sampling import sample, warp


class DraftEngine(Engine):
    role = "draft"

    def propose(self, session_id: str, position: int, truncate_to: int | None,
                append: list[int], k: int) -> tuple[list[int], int, list[float]]:
        """Roll back to truncate_to, append tokens, propose k tokens.

        Returns (proposals, new position, q(proposal) per proposal; empty when greedy)."""
        call = ("propose", position, truncate_to, tuple(append), k)
        s, retry = self._session_at(session_id, position, call)
        if retry:
            return s.last_result
        if not 1 <= k <= self.max_proposal_tokens:
            raise InvalidArgument(f"num_tokens {k} must be in [1, {self.max_proposal_tokens}]")
        keep = position if truncate_to is None else truncate_to
        if not 1 <= keep <= position:
            raise InvalidArgument(f"truncate_to {truncate_to} must be in [1, position={position}]")
        self._check_ids(append, "append_token_ids")
        self._check_length(keep + len(append) + k)

        def run() -> tuple[list[int], int, list[float]]:
            s.draft_rows = None
            self._truncate(s, keep)
            s.tokens.extend(append)
            proposals: list[int] = []
            rows: list[torch.Tensor] = []
            for _ in range(k):
                logits = self._next_logits(s, 1)                          # [1, V]
                if s.generator is None:
                    token = int(logits[-1].argmax())
                else:
                    q = warp(logits, s.sampling)[0]                       # [V]
                    token = sample(q, s.generator)
                    rows.append(q)
                proposals.append(token)
                s.tokens.append(token)
            if rows:
                s.draft_rows = torch.stack(rows)                          # [k, V]
                probs = s.draft_rows[torch.arange(k), torch.tensor(proposals)].tolist()
            else:
                probs = []
            return proposals, len(s.tokens), probs

        s.last_result = self._guarded(s, run)
        s.last_call = call
        return s.last_result

    def get_probs(self, session_id: str, position: int, index: int, token_ids: list[int],
                  all_tokens: bool) -> bytes:
        """q at `token_ids` (or the whole row) of proposal `index` of the last Propose, as
        little-endian float32 bytes."""
        s = self.sessions.get(session_id)
        if position != len(s.tokens):
            raise FailedPrecondition(f"session {session_id} holds {len(s.tokens)} tokens but the "
                                     f"call expects position {position}")
        if s.draft_rows is None:
            raise FailedPrecondition(f"session {session_id} has no sampled proposal to read "
                                     f"(greedy session, or rolled back since)")
        if index >= s.draft_rows.shape[0]:
            raise InvalidArgument(f"index {index} is beyond the last Propose's "
                                  f"{s.draft_rows.shape[0]} proposals")
        row = s.draft_rows[index]
        if not all_tokens:
            self._check_ids(token_ids, "token_ids")
            row = row[torch.tensor(token_ids, dtype=torch.int64, device=row.device)]
        return row.cpu().numpy().astype("<f4", copy=False).tobytes()

