"""API keys: who may call the Generator (gRPC) and the OpenAI-compatible /v1 endpoints.

Keys come from --api-key (comma-separated or repeated; env SPECDEC_API_KEY) and
--api-key-file (one key a line; blank lines and lines starting with # are skipped). No key
configured: the APIs are open, as before. A request presents its key as
`authorization: Bearer KEY` (gRPC metadata or HTTP header); it is compared with every
configured key in constant time, so the answer's timing does not tell how much of a key
matched. Health checks and reflection stay open for probes.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

UNAUTHENTICATED_MESSAGE = ("missing or wrong API key: send it as 'Authorization: Bearer KEY' "
                           "(gRPC: metadata 'authorization: Bearer KEY')")


@dataclass(frozen=True)
class ApiKeys:
    keys: tuple[bytes, ...] = ()

    @classmethod
    def load(cls, keys: str = "", key_file: str = "") -> ApiKeys:
        """Keys from a comma-separated string and a file; ValueError names what is wrong."""
        found = [k.strip() for k in keys.split(",") if k.strip()]
        if key_file:
            try:
                text = Path(key_file).read_text()
            except OSError as e:
                raise ValueError(f"--api-key-file {key_file}: {e.strerror or e}") from None
            lines = [line.strip() for line in text.splitlines()]
            found += [line for line in lines if line and not line.startswith("#")]
            if not found:
                raise ValueError(f"--api-key-file {key_file} holds no key")
        return cls(tuple(k.encode() for k in found))

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def allows(self, presented: str | None) -> bool:
        """True when no key is configured, or `presented` equals one of the keys."""
        if not self.keys:
            return True
        if presented is None:
            return False
        given = presented.encode()
        match = False
        for key in self.keys:  # (every key compared: no early exit)
            match |= hmac.compare_digest(given, key)
        return match


def bearer(value: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` value; None when absent or another
    scheme."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
