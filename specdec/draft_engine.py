"""The draft side: propose K tokens per round and keep their distributions for the target."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import ngram
from .engine import Engine
from .errors import FailedPrecondition, InvalidArgument, SpecdecError
from .sampling import sample, warp
from .sessions import Session


@dataclass(frozen=True)
class ProposeItem:
    session_id: str
    position: int
    truncate_to: int | None
    append_token_ids: list[int]
    num_tokens: int


@dataclass(frozen=True)
class ProposeOutcome:
    session_id: str
    token_ids: tuple[int, ...] = ()
    position: int = 0
    draft_probs: tuple[float, ...] = ()  # q(token_ids[i]); empty when greedy
    error: SpecdecError | None = None


@dataclass
class _Run:
    """One item's proposal in progress."""
    item: ProposeItem
    session: Session
    call: tuple  # (DraftEngine._call: what a retry repeats)
    tokens: list[int] = field(default_factory=list)
    rows: list[torch.Tensor] = field(default_factory=list)
    stopped: bool = False  # ended early by min_confidence


PROPOSERS = ("model", "ngram", "ngram+model")


@dataclass(frozen=True)
class ProposerConfig:
    """How proposals are made. kind: "model" (the draft model), "ngram" (prompt lookup
    only: a round without a match proposes nothing) or "ngram+model" (prompt lookup when the
    session's last tokens occurred before, the model otherwise). ngram_max / ngram_min: the
    suffix lengths looked up (specdec.ngram.lookup). min_confidence: end a model proposal
    early, before step j >= 2, when the draft's most likely next token has probability
    below this (0 = always propose num_tokens)."""
    kind: str = "model"
    ngram_max: int = 4
    ngram_min: int = 2
    min_confidence: float = 0.0

    def validate(self) -> ProposerConfig:
        if self.kind not in PROPOSERS:
            raise InvalidArgument(f"--proposer must be one of {', '.join(PROPOSERS)}, got "
                                  f"{self.kind!r}")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise InvalidArgument(f"need 1 <= --ngram-min ({self.ngram_min}) <= --ngram-max "
                                  f"({self.ngram_max})")
        if not 0 <= self.min_confidence < 1:
            raise InvalidArgument(f"--min-confidence must be in [0, 1), got "
                                  f"{self.min_confidence}")
        return self

    @property
    def uses_model(self) -> bool:
        return self.kind != "ngram"


class DraftEngine(Engine):
    role = "draft"

    def __init__(self, *args, proposer: ProposerConfig = ProposerConfig(), **kwargs):
        super().__init__(*args, **kwargs)
        self.proposer = proposer.validate()
        self.runs_model = proposer.uses_model  # ngram alone: no prefill, no warm-up
        self.min_confidence = proposer.min_confidence
        self.early_stops = 0  # proposals ended early by min_confidence
        self.proposed = {"model": 0, "ngram": 0}  # tokens proposed, by source

    def propose(self, items: list[ProposeItem]) -> tuple[list[ProposeOutcome], int]:
        """For each item: roll back to truncate_to, append tokens, propose num_tokens tokens
        (greedy or sampled). Step j of every item runs in one batched forward pass; items
        may ask for different numbers of tokens. A failing item does not affect the others.

        Returns (outcomes in item order, forward passes run)."""
        self._check_batch(items)
        outcomes: list[ProposeOutcome | None] = [None] * len(items)
        runs: list[tuple[int, _Run]] = []
        for i, item in enumerate(items):
            call = self._call(item)
            try:
                s, retry = self._prepare(item, call)
            except SpecdecError as e:
                outcomes[i] = ProposeOutcome(item.session_id, error=e)
                continue
            if retry:
                outcomes[i] = s.last_result
            else:
                runs.append((i, _Run(item, s, call)))
        passes = self._guarded([r.session for _, r in runs], lambda: self._run(runs))
        for i, r in runs:
            s = r.session
            s.draft_rows = torch.stack(r.rows) if r.rows else None          # [k, V]
            probs = (tuple(s.draft_rows[torch.arange(len(r.tokens)),
                                        torch.tensor(r.tokens)].tolist()) if r.rows else ())
            s.last_result = ProposeOutcome(s.id, tuple(r.tokens), len(s.tokens), probs)
            s.last_call = r.call
            outcomes[i] = s.last_result
        return outcomes, passes

    @staticmethod
    def _call(item: ProposeItem) -> tuple:
        return ("propose", item.position, item.truncate_to, tuple(item.append_token_ids),
                item.num_tokens)

    def _prepare(self, item: ProposeItem, call: tuple) -> tuple[Session, bool]:
        s, retry = self._session_at(item.session_id, item.position, call)
        if retry:
            return s, True
        k, position = item.num_tokens, item.position
        if not 1 <= k <= self.max_proposal_tokens:
            raise InvalidArgument(f"num_tokens {k} must be in [1, {self.max_proposal_tokens}]")
        keep = position if item.truncate_to is None else item.truncate_to
        if not 1 <= keep <= position:
            raise InvalidArgument(f"truncate_to {item.truncate_to} must be in "
                                  f"[1, position={position}]")
        self._check_ids(item.append_token_ids, "append_token_ids")
        self._check_length(keep + len(item.append_token_ids) + k, s)
        return s, False

    def _run(self, runs: list[tuple[int, _Run]]) -> int:
        passes = 0
        active = []
        for _, r in runs:
            s = r.session
            s.draft_rows = None
            keep = r.item.position if r.item.truncate_to is None else r.item.truncate_to
            self._truncate(s, keep)
            s.tokens.extend(r.item.append_token_ids)
            looked_up = self.proposer.kind != "model" and self._look_up(r)
            if not looked_up and self.proposer.uses_model:
                active.append(r)
        while active:
            logits = self._forward_rows([r.session for r in active], [1] * len(active))
            passes += 1                                                      # logits [B, V]
            greedy = logits.argmax(-1).tolist()  # one reduction for every greedy row
            unsure = ((torch.softmax(logits, dim=-1).amax(-1) < self.min_confidence).tolist()
                      if self.min_confidence > 0 else None)
            for i, r in enumerate(active):
                s = r.session
                q = None if s.generator is None else warp(logits[i:i + 1], s.sampling)[0]
                if r.tokens and (self._unsure(q, False) if q is not None
                                 else unsure is not None and unsure[i]):
                    # Decided from q alone, before drawing: the proposals kept are still
                    # draws from q, so the target's ratio rule stays exact.
                    r.stopped = True
                    self.early_stops += 1
                    continue
                if q is None:
                    token = self._token(greedy[i])
                else:
                    token = self._token(sample(q, s.generator))
                    r.rows.append(self._widen(q))
                r.tokens.append(token)
                s.tokens.append(token)
                self.proposed["model"] += 1
            active = [r for r in active if len(r.tokens) < r.item.num_tokens and not r.stopped]
        return passes

    def _token(self, column: int) -> int:
        """The token id of a logit column (the head may be restricted: specdec.token_map)."""
        return column if self.lm.head_ids is None else int(self.lm.head_ids[column])

    def _widen(self, q: torch.Tensor) -> torch.Tensor:
        """q over the whole vocabulary [V] (0 outside a restricted head's tokens)."""
        if self.lm.head_ids is None:
            return q
        full = q.new_zeros(self.lm.vocab_size)
        full[self.lm.head_ids] = q
        return full

    def _look_up(self, r: _Run) -> bool:
        """Propose by prompt lookup; False when the session's last tokens never occurred
        before. Sampling: q is a point mass on each proposed token (rows one-hot)."""
        s = r.session
        found = ngram.lookup(s.tokens, r.item.num_tokens, self.proposer.ngram_max,
                             self.proposer.ngram_min)
        if not found:
            return False
        r.tokens = found
        s.tokens.extend(found)
        if s.generator is not None:
            rows = torch.zeros(len(found), self.lm.vocab_size, device=self.lm.device)
            rows[torch.arange(len(found)), torch.tensor(found)] = 1.0
            r.rows = list(rows)
        self.proposed["ngram"] += len(found)
        return True

    def _unsure(self, row: torch.Tensor, logits: bool) -> bool:
        """True when the draft's top probability at this step is below min_confidence.
        row: [V] logits (greedy) or the warped distribution q (sampling)."""
        if self.min_confidence <= 0:
            return False
        top = torch.softmax(row.float(), dim=-1).max() if logits else row.max()
        return bool(top < self.min_confidence)

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


    def get_probs_many(self, items: list[tuple]) -> list[tuple[bytes, SpecdecError | None]]:
        """get_probs for each (session_id, position, index, token_ids, all_tokens)."""
        self._check_count(len(items))
        out = []
        for item in items:
            try:
                out.append((self.get_probs(*item), None))
            except SpecdecError as e:
                out.append((b"", e))
        return out
