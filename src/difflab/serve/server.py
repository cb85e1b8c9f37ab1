"""Serving the page's application (serve/app.py) with uvicorn: one listening socket, IPv4 or IPv6, with timeouts.

uvicorn (with h11) parses HTTP: chunked bodies, keep-alive, a listen backlog of 1024.
On top of it each request must arrive whole (headers and body) within ``request_timeout`` seconds of the
connection opening or of the previous answer, so a slow or stalled client costs one socket for that long.
"""
from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Collection

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import MAX_BODY, build_app
from .jobs import Service

REQUEST_TIMEOUT = 10.0  # seconds for a request's headers and body to arrive
KEEP_ALIVE = 5  # seconds an idle keep-alive connection is kept
BACKLOG = 1024  # connections waiting to be accepted


class DeadlineH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request to arrive whole; a late one has its connection closed."""

    request_timeout = REQUEST_TIMEOUT

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def, override]
        self._deadline: object | None = None
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()  # type: ignore[attr-defined]
        self._deadline = self.loop.call_later(self.request_timeout, self._expire)

    def _expire(self) -> None:
        """Close the connection if its request is still incomplete (no or partial headers, or a partial body)."""
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own deadline

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (no Host, bad framing, 16 KiB of unfinished headers): JSON 400, then close."""
        body = json.dumps({"error": f"invalid HTTP request ({msg.rstrip('.').lower()})"}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()  # type: ignore[attr-defined]
        super().connection_lost(exc)


def allowed_hosts(host: str, extra: Collection[str] = ()) -> set[str] | None:
    """The Host names answered when listening on ``host``: the address itself, and localhost names for a loopback one.

    None (any name) for a wildcard address (0.0.0.0, ::) unless ``extra`` names some.
    """
    names = {h.lower() for h in extra}
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.is_unspecified:
        return names or None
    names.add(host.lower())
    if host.lower() == "localhost" or (ip is not None and ip.is_loopback):
        names |= {"localhost", "127.0.0.1", "::1"}
    return names


def listen(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket on (host, port), IPv6 when ``host`` is an IPv6 address or name; OSError if it cannot."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


class Server:
    """``difflab serve``'s server: a Service behind the page's application, served by uvicorn on one socket."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False, *,
                 debug: bool = False, allow_hosts: Collection[str] = (), request_timeout: float = REQUEST_TIMEOUT,
                 max_body: int = MAX_BODY):
        self.service = service
        self.socket = listen(host, port)
        self.server_address = self.socket.getsockname()
        self.allowed_hosts = allowed_hosts(host, allow_hosts)
        protocol = type("DeadlineH11", (DeadlineH11,), {"request_timeout": request_timeout})
        config = uvicorn.Config(build_app(service, self.allowed_hosts, debug, verbose, max_body), http=protocol,
                                lifespan="off", log_config=None, log_level="info" if verbose else "error",
                                access_log=False, proxy_headers=False, server_header=False, backlog=BACKLOG,
                                timeout_keep_alive=KEEP_ALIVE, timeout_graceful_shutdown=2)
        self.uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def serve_forever(self) -> None:
        """Serve in this thread until Ctrl-C (uvicorn handles SIGINT/SIGTERM here, then re-raises them)."""
        self.uvicorn.run(sockets=[self.socket])

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests, notebooks) and return once it accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, name="difflab-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.uvicorn.started:
            raise RuntimeError("the server did not start")
        return self._thread

    def stop(self) -> None:
        """Stop serving, cancel the jobs and close the socket."""
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.service.close()
        self.server_close()

    def server_close(self) -> None:
        self.socket.close()


__all__ = ["Server", "DeadlineH11", "allowed_hosts", "listen", "REQUEST_TIMEOUT"]
