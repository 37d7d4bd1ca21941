"""The target side: verify proposals of many sessions; greedy or exact rejection sampling.

What travels for sampling (K proposals, vocabulary V): the draft sends q(d_i) for its K
proposals (K floats). The target accepts with the ratio rule. Only at a rejection does it
need more of q, and only q at a few ids: the ids p gives mass to when those are few (exact
residual over p's support), otherwise M candidates drawn from p (rejection sampling of the
residual, acceptance.first_accepted_candidate); in the rare case every candidate is refused
it asks for the whole row. So a round moves O(K + M) numbers, not K rows of V floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .acceptance import accepted_prefix, first_accepted_candidate, greedy_accept, residual
from .engine import Engine
from .errors import FailedPrecondition, InvalidArgument, SpecdecError
from .sampling import sample, warp
from .sessions import Session

# Recovered-token queries ask the draft for q at most at this many ids before the full row.
RECOVERY_CANDIDATES = 64


@dataclass(frozen=True)
class VerifyItem:
    session_id: str
    position: int
    draft_token_ids: list[int]
    draft_probs: list[float] = field(default_factory=list)  # q(d_i); sampling sessions
    draft_probs_answer: bytes | None = None  # answers a pending ProbsQuery
    resume_rejected: bool = False  # the one draft token was already rejected (see proto)


@dataclass(frozen=True)
class ProbsQuery:
    """The draft probabilities a pending recovered-token draw needs."""
    index: int  # the rejected proposal's index
    token_ids: tuple[int, ...]  # empty when all_tokens
    all_tokens: bool = False


@dataclass(frozen=True)
class VerifyOutcome:
    session_id: str
    num_accepted: int = 0
    next_token_id: int = 0
    position: int = 0
    query: ProbsQuery | None = None  # set: next_token_id awaits the draft's probabilities
    error: SpecdecError | None = None


@dataclass
class Recovery:
    """A rejection whose recovered token is not drawn yet.

    target_row: p at the rejected position [V]. ids: the ids queried. uniforms: one per
    candidate when they are candidates drawn from p, None when ids cover p's support or
    the whole row was asked for (then the residual is sampled directly)."""
    query: ProbsQuery
    target_row: torch.Tensor
    ids: torch.Tensor | None
    uniforms: torch.Tensor | None


class TargetEngine(Engine):
    role = "target"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.accept_rule = accepted_prefix  # replaceable only to prove the tests have power
        self.recovery_candidates = RECOVERY_CANDIDATES

    def verify(self, items: list[VerifyItem]) -> tuple[list[VerifyOutcome], int, int]:
        """Verify the items' proposals in one forward pass over all their sessions (or answer
        pending draft_probs_queries, which needs no pass). A failing item does not affect
        the others.

        Returns (outcomes in item order, forward passes run (0 or 1), sessions in the pass)."""
        self._check_batch(items)
        outcomes: list[VerifyOutcome | None] = [None] * len(items)
        runs: list[tuple[int, VerifyItem, Session, tuple]] = []
        for i, item in enumerate(items):
            try:
                call = ("verify", item.position, tuple(item.draft_token_ids),
                        tuple(item.draft_probs), item.draft_probs_answer, item.resume_rejected)
                s, retry = self._session_at(item.session_id, item.position, call)
                if retry:
                    outcomes[i] = s.last_result
                elif item.draft_probs_answer is not None:
                    s.last_result = self._guarded([s], lambda s=s, it=item: self._recover(s, it))
                    s.last_call = call
                    outcomes[i] = s.last_result
                else:
                    if s.recovery is not None:
                        raise FailedPrecondition(
                            f"session {s.id} awaits the draft's probabilities for its "
                            f"recovered token; send them as draft_probs_answer first")
                    self._check_proposals(s, item)
                    runs.append((i, item, s, call))
            except SpecdecError as e:
                outcomes[i] = VerifyOutcome(item.session_id, error=e)
        if runs:
            results = self._guarded([r[2] for r in runs], lambda: self._run(runs))
            for (i, _, s, call), outcome in zip(runs, results, strict=True):
                s.last_result, s.last_call = outcome, call
                outcomes[i] = outcome
        return outcomes, int(bool(runs)), len(runs)

    def _run(self, runs: list[tuple[int, VerifyItem, Session, tuple]]) -> list[VerifyOutcome]:
        bases = []
        for _, item, s, _ in runs:
            bases.append(len(s.tokens))
            s.tokens.extend(item.draft_token_ids)
        all_logits = self._forward([r[2] for r in runs],
                                   [len(r[1].draft_token_ids) + 1 for r in runs])
        outcomes = []
        for (_, item, s, _), base, logits in zip(runs, bases, all_logits, strict=True):
            draft_ids = torch.tensor(item.draft_token_ids, dtype=torch.int64,
                                     device=logits.device)                  # [K]
            if item.resume_rejected:  # rejected before: straight to the recovered token
                n, next_token = 0, None
                s.recovery = self._start_recovery(s, 0, warp(logits, s.sampling)[0])
            elif s.generator is None:                                       # logits [K+1, V]
                n, next_token = greedy_accept(draft_ids, logits)
            else:
                n, next_token = self._sample_step(s, draft_ids, item.draft_probs, logits)
            self._truncate(s, base + n)
            if next_token is None:  # rejected: the recovered token needs the draft's q
                outcomes.append(VerifyOutcome(s.id, n, 0, len(s.tokens), query=s.recovery.query))
            else:
                s.tokens.append(next_token)
                outcomes.append(VerifyOutcome(s.id, n, next_token, len(s.tokens)))
        return outcomes

    def _check_proposals(self, s: Session, item: VerifyItem) -> None:
        drafts = item.draft_token_ids
        if len(drafts) > self.max_proposal_tokens:
            raise InvalidArgument(f"{len(drafts)} draft tokens exceed max_proposal_tokens "
                                  f"{self.max_proposal_tokens}")
        self._check_ids(drafts, "draft_token_ids")
        self._check_length(item.position + len(drafts) + 1, s)
        if item.resume_rejected and (s.generator is None or len(drafts) != 1):
            raise InvalidArgument("resume_rejected needs a sampling session and exactly one "
                                  "draft token (the one rejected)")
        if s.generator is None:
            if item.draft_probs:
                raise InvalidArgument("draft_probs given for a greedy session")
            return
        if len(item.draft_probs) != len(drafts):
            raise InvalidArgument(f"a sampling session needs one draft_probs entry per draft "
                                  f"token: got {len(item.draft_probs)} for {len(drafts)}")
        if not all(0 < q <= 1 for q in item.draft_probs):
            raise InvalidArgument("draft_probs must be in (0, 1]: a proposal was drawn from q, "
                                  "so q of it cannot be 0")

    def _sample_step(self, s: Session, draft_ids: torch.Tensor, draft_q: list[float],
                     logits: torch.Tensor) -> tuple[int, int | None]:
        """The ratio rule (acceptance.rejection_sample, split where q lives remotely).
        Returns (num_accepted, bonus token), or (num_accepted, None) with s.recovery set."""
        k = draft_ids.shape[0]
        p = warp(logits, s.sampling)                                      # [K+1, V]
        uniforms = torch.rand(k, generator=s.generator, dtype=torch.float64,
                              device=s.generator.device)                   # [K]
        q = torch.tensor(draft_q, dtype=torch.float32, device=p.device).double()  # [K], as sent
        n = self.accept_rule(p[torch.arange(k, device=p.device), draft_ids], q, uniforms)
        if n == k:
            return n, sample(p[k], s.generator)                           # bonus token
        s.recovery = self._start_recovery(s, n, p[n])
        return n, None

    def _start_recovery(self, s: Session, index: int, p_row: torch.Tensor) -> Recovery:
        support = p_row.nonzero().squeeze(-1)                             # [S]
        m = self.recovery_candidates
        if support.numel() <= m:
            ids, uniforms = support, None
        else:
            ids = torch.multinomial(p_row, m, replacement=True, generator=s.generator)  # [M]
            uniforms = torch.rand(m, generator=s.generator, dtype=torch.float64,
                                  device=s.generator.device)                  # [M]
        return Recovery(ProbsQuery(index, tuple(ids.tolist())), p_row, ids, uniforms)

    def _recover(self, s: Session, item: VerifyItem) -> VerifyOutcome:
        r = s.recovery
        if r is None:
            raise FailedPrecondition(f"session {s.id} has no pending recovered token; "
                                     f"draft_probs_answer is only valid after a query")
        if item.draft_token_ids or item.draft_probs:
            raise InvalidArgument("an item with draft_probs_answer carries no draft tokens")
        want = self.lm.vocab_size if r.query.all_tokens else len(r.query.token_ids)
        answer = item.draft_probs_answer
        if len(answer) != 4 * want:
            raise InvalidArgument(f"draft_probs_answer has {len(answer)} bytes; the query "
                                  f"needs {want} float32 values ({4 * want} bytes)")
        q = torch.from_numpy(np.frombuffer(answer, dtype="<f4").astype(np.float32))
        if not bool(((q >= 0) & (q <= 1)).all()):
            raise InvalidArgument("draft_probs_answer holds values outside [0, 1]")
        p = r.target_row
        q = q.to(p.device)  # (the answer arrives on the CPU; p may be on a GPU)
        if r.query.all_tokens:
            token = sample(residual(p, q), s.generator)
        elif r.uniforms is None:  # ids = p's whole support: the residual lives on them
            token = int(r.ids[sample(residual(p[r.ids], q), s.generator)])
        else:
            m = first_accepted_candidate(p[r.ids], q, r.uniforms)
            if m is None:  # every candidate refused: ask for the whole row (rare)
                r.query, r.ids, r.uniforms = ProbsQuery(r.query.index, (), True), None, None
                return VerifyOutcome(s.id, 0, 0, len(s.tokens), query=r.query)
            token = int(r.ids[m])
        s.recovery = None
        s.tokens.append(token)
        return VerifyOutcome(s.id, 0, token, len(s.tokens))
