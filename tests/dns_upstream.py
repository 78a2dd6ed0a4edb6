"""A DNS server a test runs itself, standing for "the host's normal resolvers" (there is no internet):
it answers A questions for the names it is given and NXDOMAIN for the rest, over UDP and TCP.

In a process: python -m tests.dns_upstream ADDRESS PORT NAME=IPV4 ... (prints "ready" once bound)."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset


class Upstream:
    def __init__(self, records: dict[str, str], address: str = "127.0.0.1", port: int = 0) -> None:
        self.records = {name.rstrip(".").lower(): ip for name, ip in records.items()}
        self.questions: list[str] = []  # names asked, in order
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((address, port))
        self.address, self.port = self.udp.getsockname()
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((self.address, self.port))
        self.tcp.listen(8)
        for target in (self._serve_udp, self._serve_tcp):
            threading.Thread(target=target, daemon=True).start()

    def respond(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        self.questions.append(name)
        if name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", self.records[name]))
        return response

    def _serve_udp(self) -> None:
        while True:
            try:
                query, _, client = dns.query.receive_udp(self.udp)
            except OSError:
                return
            except Exception:  # noqa: BLE001 - a malformed question: ignore it
                continue
            dns.query.send_udp(self.udp, self.respond(query), client)

    def _serve_tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                try:
                    query, _ = dns.query.receive_tcp(conn)
                    dns.query.send_tcp(conn, self.respond(query))
                except Exception:  # noqa: BLE001, S112 - the client went away
                    continue

    def close(self) -> None:
        for sock in (self.udp, self.tcp):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


if __name__ == "__main__":
    address, port, *pairs = sys.argv[1:]
    server = Upstream(dict(p.split("=", 1) for p in pairs), address, int(port))
    print("ready", flush=True)
    threading.Event().wait()
