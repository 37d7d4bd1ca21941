"""TLS for the gRPC links: server credentials (with mutual TLS when a client CA is given)
and client credentials, from PEM files named by flags. Files are read once, at start."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from ..errors import InvalidArgument

log = structlog.get_logger(__name__)


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgument(f"{flag} {path}: {e.strerror or e}") from None


def server_credentials(cert_file: str, key_file: str, client_ca_file: str = ""
                       ) -> grpc.ServerCredentials | None:
    """None without a certificate (plaintext); with client_ca_file, every client must show a
    certificate signed by that CA (mutual TLS)."""
    if not cert_file and not key_file:
        if client_ca_file:
            raise InvalidArgument("--tls-client-ca-file needs --tls-cert-file and "
                                  "--tls-key-file (mutual TLS is TLS first)")
        return None
    if not (cert_file and key_file):
        raise InvalidArgument("--tls-cert-file and --tls-key-file go together")
    pair = (_read(key_file, "--tls-key-file"), _read(cert_file, "--tls-cert-file"))
    ca = _read(client_ca_file, "--tls-client-ca-file") if client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca,
                                       require_client_auth=ca is not None)


@dataclass(frozen=True)
class ClientTls:
    """How a client channel speaks TLS."""
    credentials: grpc.ChannelCredentials
    # the name the server's certificate must carry, instead of the host dialled (replicas
    # are dialled by the addresses their DNS name resolves to)
    server_name: str = ""

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def client_tls(ca_file: str, cert_file: str = "", key_file: str = "", server_name: str = ""
               ) -> ClientTls | None:
    """None without a CA (plaintext); cert_file + key_file: this client's own certificate,
    for servers that ask for one (mutual TLS); server_name: see ClientTls."""
    credentials = channel_credentials(ca_file, cert_file, key_file)
    if credentials is None:
        if server_name:
            raise InvalidArgument("--upstream-tls-server-name needs --upstream-ca-file")
        return None
    return ClientTls(credentials, server_name)


def channel_credentials(ca_file: str, cert_file: str = "", key_file: str = ""
                        ) -> grpc.ChannelCredentials | None:
    """None without a CA (plaintext); cert_file + key_file: this client's own certificate,
    for servers that ask for one (mutual TLS)."""
    if bool(cert_file) != bool(key_file):
        raise InvalidArgument("--upstream-cert-file and --upstream-key-file go together")
    if not ca_file:
        if cert_file:
            raise InvalidArgument("--upstream-cert-file needs --upstream-ca-file (the CA "
                                  "that signed the services' certificates)")
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "--upstream-ca-file"),
        private_key=_read(key_file, "--upstream-key-file") if key_file else None,
        certificate_chain=_read(cert_file, "--upstream-cert-file") if cert_file else None)


def is_loopback(host: str) -> bool:
    """Whether `host` binds only this machine ("" and 0.0.0.0 bind every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, what: str, tls: bool) -> None:
    """One warning at start for a plaintext listener beyond this machine."""
    if not tls and not is_loopback(host):
        log.warning(f"{what} listens on {host} without TLS: anyone who reaches it can use it "
                    "and read its traffic; see docs/security.md", host=host)
