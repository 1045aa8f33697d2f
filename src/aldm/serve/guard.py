"""What every request to ``aldm serve`` passes before a route sees it, and what every response carries.

:class:`RequestGuard` is an ASGI middleware in front of the FastAPI app:

* **Host allow-list** — a request whose ``Host`` is not the bound address, ``localhost``, ``127.0.0.1``,
  ``[::1]`` or one given with ``--allow-host`` (a reverse proxy's name) gets 400: a page on another site
  cannot reach a server on 127.0.0.1 by pointing a DNS name at it (DNS rebinding);
* **body limit on the stream** — at most ``max_body`` bytes, whatever ``Content-Length`` says or whether
  the body comes chunked: the body is read up to the limit before the app sees it, and one byte more
  ends the request with 413 (nothing is parsed);
* **security headers on every response** — ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
  no-referrer``, ``X-Frame-Options: DENY`` and a ``Content-Security-Policy`` with ``frame-ancestors
  'none'``: for the page, only its own inline script (by hash) and same-origin requests; for everything
  else, nothing at all.

Error bodies never echo what the request sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
DOCS_POLICY = "frame-ancestors 'none'"  # FastAPI's /docs and /redoc load their own scripts


def page_policy(html: str) -> str:
    """The page's Content-Security-Policy: its inline scripts by SHA-256, inline styles, same-origin fetches
    and images (data: and blob: for the viewer), no frames, no other origin."""
    hashes = [base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode()
              for body in re.findall(r"<script>(.*?)</script>", html, flags=re.S)]
    scripts = " ".join(f"'sha256-{h}'" for h in hashes) or "'none'"
    return (f"default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; img-src 'self' data: blob:; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def host_name(header: str) -> str:
    """The host part of a ``Host`` header, lower case: ``[::1]:8000`` -> ``[::1]``, ``a.b:80`` -> ``a.b``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.split(":", 1)[0]


class RequestGuard:
    """The ASGI middleware of the module docstring. ``allowed_hosts``: host names (as :func:`host_name`
    gives them) that may be served; ``page_csp``: the policy of ``GET /``."""

    def __init__(self, app, allowed_hosts, max_body: int, page_csp: str):
        self.app = app
        self.allowed = {host_name(h if not (":" in h and not h.startswith("[")) else f"[{h}]") for h in allowed_hosts}
        self.max_body = max_body
        self.page_csp = page_csp

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        policy = self.page_csp if path == "/" else DOCS_POLICY if path in ("/docs", "/redoc") else API_POLICY
        secure_send = _with_headers(send, policy)
        if host_name(headers.get("host", "")) not in self.allowed:
            return await _reply(secure_send, 400, "invalid Host header; start the server with --allow-host NAME "
                                                  "to serve under another name")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _reply(secure_send, 413, f"request body over {self.max_body} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await _reply(secure_send, 413, f"request body over {self.max_body} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, secure_send)


def _with_headers(send, policy: str):
    """``send`` with the security headers added to the response's start (where the app has not set them)."""
    extra = {b"x-content-type-options": b"nosniff", b"referrer-policy": b"no-referrer",
             b"x-frame-options": b"DENY", b"content-security-policy": policy.encode("latin-1")}

    async def wrapped(message):
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            message = {**message, "headers": [*message.get("headers", []),
                                              *((k, v) for k, v in extra.items() if k not in present)]}
        await send(message)

    return wrapped


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
