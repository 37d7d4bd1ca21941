"""A tier's replicas (every draft service, or every target service), and where sessions go.

Sessions are stateful (their KV cache lives on one replica), so the coordinator does its own
placement instead of a load balancer: a new session goes to the replica in rotation with the
most room, from each replica's GetInfo (live sessions, KV-cache budget) plus the sessions this
coordinator placed there since, and stays there. `refresh()` (every second) re-resolves DNS
entries, health-checks and GetInfo's every replica:

- in rotation: listed, SERVING, and serving the same model as the tier's first replica;
- draining (NOT_SERVING while its GetInfo says draining): no new sessions; sessions on it are
  moved at their next round (legs re-open them elsewhere from the token history);
- unavailable (no answer, NOT_SERVING) or recently failing a call: no new sessions until a
  health check passes again;
- mismatched (another model, tokenizer, dtype, quantization or limits): never used, logged once.

Replicas that leave DNS stay until no session of this coordinator uses them, then close.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from specdec.errors import Unavailable

from .addresses import Entry, resolve_all
from .clients import ServiceClient, UpstreamError

log = structlog.get_logger(__name__)

RESOLVE_INTERVAL_S = 5.0


def signature(info) -> tuple:
    """What every replica of a tier must agree on (a GetInfo reply)."""
    m = info.model
    return (m.model_name, m.vocab_size, m.tokenizer_fingerprint, m.dtype, m.quantization,
            m.max_context_length, tuple(sorted(m.eos_token_ids)), info.max_proposal_tokens)


def describe_mismatch(ref, info) -> str:
    names = ("model", "vocab_size", "tokenizer", "dtype", "quantization", "max_context_length",
             "eos_token_ids", "max_proposal_tokens")
    return ", ".join(f"{n} {b!r} (the tier's is {a!r})" for n, a, b in
                     zip(names, signature(ref), signature(info), strict=True) if a != b)


@dataclass
class Replica:
    client: ServiceClient
    listed: bool = True  # named by the last resolution of the address list
    serving: bool = False  # the last health check said SERVING
    draining: bool = False  # NOT_SERVING, and GetInfo says it drains
    mismatch: str = ""  # why it does not match the tier's model; "" = it does
    info: object | None = None  # last GetInfo reply
    placed: int = 0  # sessions placed here since that reply
    failed_at: float = 0.0  # a call failed (unreachable) at this time
    checked_at: float = 0.0  # the last health check that passed
    unlisted_at: float = 0.0

    @property
    def addr(self) -> str:
        return self.client.addr

    @property
    def in_rotation(self) -> bool:
        return (self.listed and self.serving and not self.mismatch
                and self.checked_at > self.failed_at)

    @property
    def state(self) -> str:
        if self.mismatch:
            return "mismatched"
        if self.draining:
            return "draining"
        return "serving" if self.in_rotation else "unavailable"

    def room(self) -> tuple[float, int]:
        """(free fraction of the tighter of sessions and KV budget, -load): larger = more."""
        if self.info is None:
            return (1.0, -self.placed)
        m = self.info.model
        load = m.live_sessions + self.placed
        free = 1.0 - load / m.max_sessions if m.max_sessions else 1.0
        if m.kv_cache_budget_bytes:
            per = m.kv_cache_reserved_bytes / max(1, m.live_sessions)
            reserved = m.kv_cache_reserved_bytes + per * self.placed
            free = min(free, 1.0 - reserved / m.kv_cache_budget_bytes)
        return (free, -load)


@dataclass
class ReplicaSet:
    """Every replica of one tier (see the module docstring)."""

    role: str
    entries: list[Entry]
    make_client: Callable[[str], ServiceClient]
    resolve_interval_s: float = RESOLVE_INTERVAL_S
    check_timeout_s: float = 2.0
    on_added: Callable[[ServiceClient], None] = lambda client: None
    on_removed: Callable[[ServiceClient], None] = lambda client: None
    replicas: dict[str, Replica] = field(default_factory=dict)
    reference: object | None = None  # the GetInfo reply every replica must agree with
    _resolved_at: float = -1e9
    _turn: itertools.count = field(default_factory=itertools.count)

    # ----- placement (called by the legs)

    def pick(self, avoid: frozenset = frozenset()) -> ServiceClient:
        """The replica a new session should open on: in rotation, most room, not in `avoid`
        (clients that just failed this session) unless nothing else is in rotation. With
        nothing in rotation, the least recently failed listed replica that is not draining
        (its channel may reconnect: a lone replica that restarts is found again).
        Raises UpstreamError UNAVAILABLE when the tier has no usable replica."""
        usable = [r for r in self.replicas.values()
                  if r.listed and not r.mismatch and not r.draining]
        rotation = [r for r in usable if r.in_rotation]
        pool = ([r for r in rotation if r.client not in avoid] or rotation or
                sorted(usable, key=lambda r: (r.client in avoid, r.failed_at))[:1])
        if not pool:
            raise UpstreamError("UNAVAILABLE", f"no {self.role} replica is available "
                                               f"({self.describe()})")
        # ties (equal room and load) go round-robin: rotate the candidates each pick
        turn = next(self._turn) % len(pool)
        best = max(pool[turn:] + pool[:turn], key=Replica.room)
        best.placed += 1
        return best.client

    def should_move(self, client: ServiceClient | None) -> bool:
        """True when sessions on `client` should move: its replica drains or has left, and
        another replica is in rotation."""
        r = self.replicas.get(client.addr) if client is not None else None
        if r is None or r.in_rotation or not (r.draining or not r.listed):
            return False
        return any(o.in_rotation for o in self.replicas.values() if o is not r)

    def report_failure(self, client: ServiceClient) -> None:
        """A call to `client` failed as if it were unreachable: no new sessions there until
        its next passing health check."""
        r = self.replicas.get(client.addr)
        if r is not None:
            r.failed_at = time.monotonic()

    # ----- state

    @property
    def available(self) -> bool:
        return any(r.in_rotation for r in self.replicas.values())

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("serving", "draining", "unavailable", "mismatched"), 0)
        for r in self.replicas.values():
            out[r.state] += 1
        return out

    def describe(self) -> str:
        return ", ".join(f"{r.addr} {r.state}" for r in self.replicas.values()) or \
            "no address resolved from " + ",".join(e.text for e in self.entries)

    @property
    def addrs(self) -> list[str]:
        return list(self.replicas)

    # ----- upkeep

    async def start(self, timeout_s: float) -> object:
        """Resolve, then wait until some replica serves; it sets the tier's reference model.
        Returns its GetInfo reply; raises Unavailable after timeout_s."""
        give_up = time.monotonic() + timeout_s
        while True:
            await self.refresh()
            if self.reference is not None:
                return self.reference
            if time.monotonic() >= give_up:
                raise Unavailable(f"{self.role} service at {','.join(e.text for e in self.entries)}"
                                  f" not SERVING after {timeout_s:g}s ({self.describe()})")
            await asyncio.sleep(0.5)

    async def refresh(self) -> None:
        """Re-resolve (every resolve_interval_s), health-check and GetInfo every replica."""
        now = time.monotonic()
        if now - self._resolved_at >= self.resolve_interval_s:
            self._resolved_at = now
            await self._resolve()
        await asyncio.gather(*(self._check(r) for r in list(self.replicas.values())))
        if self.reference is None:
            first = next((r for r in self.replicas.values() if r.serving and r.info), None)
            if first is not None:
                self.reference = first.info
                for r in self.replicas.values():
                    self._judge(r)
        await self._retire()

    async def _resolve(self) -> None:
        addrs, errors = await resolve_all(self.entries)
        for error in errors:
            log.warning("cannot resolve replicas", service=self.role, error=error)
        if errors and not addrs:
            return  # keep what we have: a DNS hiccup must not empty the tier
        for addr in addrs:
            r = self.replicas.get(addr)
            if r is None:
                r = self.replicas[addr] = Replica(self.make_client(addr))
                self.on_added(r.client)
                log.info("replica added", service=self.role, addr=addr)
            elif not r.listed:
                log.info("replica listed again", service=self.role, addr=addr)
            r.listed = True
        for addr, r in self.replicas.items():
            if addr not in addrs and r.listed:
                r.listed, r.unlisted_at = False, time.monotonic()
                log.info("replica no longer listed; no new sessions there", service=self.role,
                         addr=addr)

    async def _check(self, r: Replica) -> None:
        before = r.state
        serving = await r.client.healthy(self.check_timeout_s)
        info = await r.client.try_info(self.check_timeout_s)
        r.serving = serving and info is not None
        r.draining = bool(info is not None and info.model.draining)
        if info is not None:
            r.info, r.placed = info, 0
            self._judge(r)
        if serving:
            r.checked_at = time.monotonic()
        if r.state != before:
            (log.info if r.state == "serving" else log.warning)(
                "replica state changed", service=self.role, addr=r.addr, state=r.state,
                was=before)

    def _judge(self, r: Replica) -> None:
        """Refuse r for good if its last GetInfo disagrees with the tier's reference."""
        if self.reference is None or r.info is None or r.mismatch:
            return
        if signature(r.info) != signature(self.reference):
            r.mismatch = describe_mismatch(self.reference, r.info)
            log.error("replica refused: it does not serve the tier's model; the others "
                      "keep serving", service=self.role, addr=r.addr, differs=r.mismatch)

    async def _retire(self) -> None:
        """Close replicas that left the list once this coordinator has no session there
        (or after 10 minutes unlisted: the service's TTL cleans up anyway)."""
        for addr, r in list(self.replicas.items()):
            idle = r.client.sessions <= 0 and not r.client.busy
            if not r.listed and (idle or time.monotonic() - r.unlisted_at > 600):
                del self.replicas[addr]
                self.on_removed(r.client)
                await r.client.close()
                log.info("replica removed", service=self.role, addr=addr)

    async def close(self, grace_s: float = 2.0) -> None:
        """Give background work (sessions of ended requests being closed) up to grace_s to
        finish, cancel what is left (the services' session TTL is the backstop), close."""
        tasks = [t for r in self.replicas.values() for t in r.client.background_tasks]
        if tasks:
            _, left = await asyncio.wait(tasks, timeout=grace_s)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        await asyncio.gather(*(r.client.close() for r in self.replicas.values()))
