"""Where a tier's replicas are: static HOST:PORT entries, or DNS names re-resolved over time.

An address list (a flag value) is comma-separated entries, each one of
- `host:port` — one replica (the name, if any, is left to gRPC to resolve);
- `dns:///name:port` — one replica per address the system resolver returns for `name` (a
  Kubernetes headless Service publishes one record per ready pod);
- `dns://server[:port]/name:port` — the same, asking the DNS server at `server` (an IP).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from specdec.errors import InvalidArgument


@dataclass(frozen=True)
class Entry:
    text: str
    host: str
    port: int
    dns: bool = False  # expand to every address of `host`
    server: str = ""  # DNS server "ip" or "ip:port"; "" = the system resolver


def _host_port(text: str, whole: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"address {whole!r}: expected HOST:PORT (e.g. target:50052 or "
                              f"dns:///target.specdec.svc.cluster.local:50052)")
    return host.strip("[]"), int(port)


def parse_entries(spec: str | list[str]) -> list[Entry]:
    """Parse a comma-separated address list (or several such flag values)."""
    texts = [t.strip() for part in ([spec] if isinstance(spec, str) else spec)
             for t in part.split(",") if t.strip()]
    if not texts:
        raise InvalidArgument("no address given; expected HOST:PORT[,HOST:PORT…] or "
                              "dns:///NAME:PORT")
    entries = []
    for text in texts:
        if text.startswith("dns:"):
            rest = text[4:]
            server = ""
            if rest.startswith("//"):
                server, sep, rest = rest[2:].partition("/")
                if not sep:
                    raise InvalidArgument(f"address {text!r}: expected dns:///NAME:PORT or "
                                          f"dns://SERVER/NAME:PORT")
            host, port = _host_port(rest, text)
            entries.append(Entry(text, host, port, dns=True, server=server))
        else:
            host, port = _host_port(text, text)
            entries.append(Entry(text, host, port))
    return entries


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve(entry: Entry, timeout_s: float = 2.0) -> list[str]:
    """The replica addresses ("ip:port") an entry names now. Raises OSError or
    dns.exception.DNSException when the name cannot be resolved."""
    if not entry.dns:
        return [entry.text]
    if entry.server:
        resolver = dns.asyncresolver.Resolver(configure=False)
        host, _, port = entry.server.partition(":")
        resolver.nameservers = [host]
        resolver.port = int(port or 53)
        resolver.lifetime = timeout_s
        addrs: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(entry.host, rdtype, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            addrs += [r.address for r in answer]
    else:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
            entry.host, entry.port, type=socket.SOCK_STREAM), timeout_s)
        addrs = [info[4][0] for info in infos]
    return sorted({_join(a, entry.port) for a in addrs})


async def resolve_all(entries: list[Entry]) -> tuple[list[str], list[str]]:
    """Every replica address of the entries; returns (addresses, errors). A name that fails
    to resolve contributes an error, not an exception: the other entries still count."""
    results = await asyncio.gather(*(resolve(e) for e in entries), return_exceptions=True)
    addrs: list[str] = []
    errors: list[str] = []
    for entry, result in zip(entries, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, OSError | TimeoutError | dns.exception.DNSException):
                raise result
            errors.append(f"{entry.text}: {result or type(result).__name__}")
        else:
            addrs += [a for a in result if a not in addrs]
    return addrs, errors
