"""What a request passes before the app sees it (one ASGI middleware, so the order is plain):

1. the API key (401), from the headers alone: an unauthenticated body is never read nor parsed;
2. the body: at most --max-body-bytes (413; Content-Length is checked first, then the bytes that
   arrive) within --read-timeout seconds (408), buffered once and replayed to the app;
3. a slot: at most --max-concurrent requests to the model endpoints at once, beyond that 503 with
   `Retry-After`, so a burst waits in the clients instead of piling up threads and KV caches here.
"""

from __future__ import annotations

import hmac
import json

OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})  # no key asked
WORK_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/classify"})  # the endpoints that run the model
RETRY_AFTER_S = 1  # what a 503 asks clients to wait: about one short completion
CLOSE = (b"connection", b"close")  # refused before the body was read: do not read the rest of it


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None, detail=None) -> dict:
    """A refusal: `detail` (FastAPI's form; `message` unless given) and OpenAI's `error` object,
    which OpenAI's client libraries read."""
    return {"detail": message if detail is None else detail,
            "error": {"message": message, "type": kind, "param": param, "code": code}}


async def send_json(send, status: int, obj, headers: tuple = ()) -> None:
    """A complete JSON answer. json.dumps escapes to ASCII, so nothing a client sent (a lone
    surrogate, say) can make the encoding fail."""
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """ASGI middleware: key, body, slot (see the module doc)."""

    def __init__(self, app, api_key: str = "", max_body_bytes: int = 1_000_000, read_timeout: float = 10.0,
                 max_concurrent: int = 4) -> None:
        self.app, self.key = app, api_key.encode()
        self.max_body_bytes, self.read_timeout, self.max_concurrent = max_body_bytes, read_timeout, max_concurrent
        self.active = 0  # requests holding a slot; only the event loop touches it, so no lock

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.key and scope["path"] not in OPEN_PATHS and not self.key_ok(headers):
            return await send_json(send, 401, error_body("missing or wrong API key", code="invalid_api_key"),
                                   ((b"www-authenticate", b"Bearer"), CLOSE))
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            receive = await self.read_body(headers, receive, send)
            if receive is None:
                return
        if scope["path"] not in WORK_PATHS:
            return await self.app(scope, receive, send)
        if self.active >= self.max_concurrent:
            return await send_json(send, 503, error_body(f"busy: {self.active} requests are being answered; "
                                                          f"retry in {RETRY_AFTER_S} s", "server_error"),
                                   ((b"retry-after", str(RETRY_AFTER_S).encode()),))
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1

    def key_ok(self, headers: dict[bytes, bytes]) -> bool:
        """`Authorization: Bearer KEY` or `X-API-Key: KEY`, compared in constant time."""
        auth = headers.get(b"authorization", b"")
        given = auth[7:] if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        return hmac.compare_digest(given, self.key)

    async def read_body(self, headers: dict[bytes, bytes], receive, send):
        """A `receive` that replays the whole body as one message; None once a refusal is sent
        (or the client left)."""
        import anyio

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self.too_large(send)
        chunks, size, more = [], 0, True
        try:
            with anyio.fail_after(self.read_timeout):  # a deadline for the whole body, not per chunk
                while more:
                    message = await receive()
                    if message["type"] != "http.request":  # client went away
                        return None
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > self.max_body_bytes:
                        return await self.too_large(send)
                    more = message.get("more_body", False)
        except TimeoutError:
            return await send_json(send, 408, error_body(f"request body not received within {self.read_timeout:g} s"),
                                   (CLOSE,))
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # afterwards: http.disconnect when the client leaves
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    async def too_large(self, send) -> None:
        await send_json(send, 413, error_body(f"request body exceeds {self.max_body_bytes} bytes"), (CLOSE,))
