"""Running the app: the listening socket (bound before the model loads, so a busy port is a one-line
error), uvicorn with a deadline on request heads, and a graceful stop on SIGINT/SIGTERM.

What bounds a connection (each a test in tests/test_serve.py):
- a request's head (request line and headers) must arrive within --read-timeout seconds of the
  connection opening or of the previous answer, however slowly it trickles in; its size is bounded
  by h11 (16 KiB, `h11_max_incomplete_event_size`), an idle kept-alive connection closes after
  --read-timeout too;
- a request's body must arrive within --read-timeout seconds and fit in --max-body-bytes (the gate);
- at most --max-concurrent requests run the model; a client that leaves stops its generation.
What does not: the number of open connections (only by the process's file limit; each idle one
lives at most --read-timeout), and a client that stops reading a streamed answer (TCP flow control
pauses the stream; it holds its slot until the client reads or the connection drops).
"""

from __future__ import annotations

import errno
import socket

from budgetlm.config import BudgetError
from budgetlm.serve.config import ServeConfig

BACKLOG = 2048  # uvicorn's default listen queue

BIND_ERRORS = {  # errno -> one line; format fields: host, port
    errno.EADDRINUSE: "port {port} on {host} is in use (another server listens there: stop it or pick another --port)",
    errno.EACCES: "no permission to bind port {port} on {host} (ports below 1024 need privileges: pick another --port)",
    errno.EADDRNOTAVAIL: "cannot bind {host}: it is not an address of this machine (try 127.0.0.1 or 0.0.0.0)",
}


def bind_error(e: OSError, host: str, port: int) -> BudgetError:
    line = BIND_ERRORS.get(e.errno, "cannot bind {host} port {port}: {reason}")
    return BudgetError(line.format(host=host, port=port, reason=e.strerror or e))


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port); uvicorn later serves on this very socket, so nothing can
    take the port in between."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise BudgetError(f"cannot bind {host}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    # as uvicorn does: a restarted server may bind while old connections sit in TIME_WAIT
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise bind_error(e, host, port) from None
    return sock


def head_deadline_protocol():
    """uvicorn's h11 protocol with a deadline on each request head. uvicorn's own keep-alive timer
    runs only after an answer and is cancelled by any byte received, so without this a client that
    connects and sends nothing, or one header byte at a time, holds its connection forever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):
        head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.arm()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's head has arrived
                self.disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self.arm()  # waiting for the next request's head

        def connection_lost(self, exc) -> None:
            self.disarm()
            super().connection_lost(exc)

        def arm(self) -> None:
            self.disarm()
            self.head_timer = self.loop.call_later(self.timeout_keep_alive, self.head_late)

        def disarm(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def head_late(self) -> None:
            self.head_timer = None
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self.transport.close()

    return HeadDeadline


def make_server(app, cfg: ServeConfig):
    """A uvicorn server for `app` with the limits of `cfg`; `.run(sockets=[bind_socket(...)])` starts it."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        http=head_deadline_protocol(),
        timeout_keep_alive=cfg.read_timeout,  # the head deadline (and uvicorn's idle keep-alive timer)
        timeout_graceful_shutdown=cfg.graceful_timeout,
        log_level="warning",
    )
    return uvicorn.Server(config)


def serve_forever(app, cfg: ServeConfig, sock: socket.socket) -> None:
    """Serve until SIGINT/SIGTERM, then let in-flight requests finish (at most --graceful-timeout s)."""
    import signal

    try:
        sock.listen(BACKLOG)  # bind alone can succeed where listening cannot (SO_REUSEADDR)
    except OSError as e:
        sock.close()
        raise bind_error(e, cfg.host, cfg.port) from None
    # uvicorn catches SIGINT/SIGTERM, drains in-flight requests, then re-raises the signal against the
    # handlers that were installed before it. No-op handlers here turn that into a normal return, so a
    # graceful shutdown exits 0 instead of dying of the re-raised signal.
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        make_server(app, cfg).run(sockets=[sock])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sock.close()
