"""A tiny authoritative DNS server on loopback (UDP), for testing `dns://SERVER/NAME:PORT`
replica addresses: `records[name]` lists the IPv4 addresses a name resolves to, as a
Kubernetes headless Service lists one per ready pod. Change it and re-resolution follows."""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class TinyDNS:
    def __init__(self):
        self.records: dict[str, list[str]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        for q in query.question:
            name = q.name.to_text(omit_final_dot=True)
            if name not in self.records:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            elif q.rdtype == dns.rdatatype.A and self.records[name]:
                reply.answer.append(dns.rrset.from_text_list(
                    q.name, 1, dns.rdataclass.IN, dns.rdatatype.A, list(self.records[name])))
        return reply

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:  # closed
                return
            try:
                self.sock.sendto(self._answer(dns.message.from_wire(data)).to_wire(), peer)
            except Exception:  # a malformed query: no answer, as a real server might
                continue

    def close(self) -> None:
        self.sock.close()
