"""Who may do what: the Host names the service answers to, no cross-site writes, the tokens,
and the security headers of every response (see docs/serve.md, "Threat model").

- :class:`SameSite`: a request whose ``Host`` is not one of the service's names is refused
  (400): a DNS-rebinding page (a name of the attacker's that resolves to 127.0.0.1) reaches the
  port with its own name as Host, so it never reads an answer. A request that changes or
  computes (anything but GET, HEAD, OPTIONS) from a page of another origin is refused (403):
  browsers say where a request comes from in ``Sec-Fetch-Site`` and ``Origin`` (on every POST,
  no-cors included); clients that send neither (curl, scripts) are not browsers and are let
  through, to meet the token.
- :class:`SecurityHeaders`: a Content-Security-Policy (scripts, styles, images and requests
  from the service itself only; no framing), ``X-Content-Type-Options: nosniff``, no referrer,
  and ``Cross-Origin-Resource-Policy: same-origin`` (another site cannot even embed a
  thumbnail).
- :func:`bearer_check`: the dependency that asks for ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .middleware import json_error

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_SITE_VALUES = frozenset({"same-origin", "none"})  # none: typed in the address bar

PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
# Swagger UI sets style attributes and draws its icons from data: URLs
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def host_name(host: str) -> str:
    """The name of a Host header: no port, no brackets, lower case, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class SameSite:
    """Refuses foreign Host names (400) and cross-site writes (403); see the module docstring.

    Args:
        app: the ASGI app.
        hosts: the names the service answers to ("*": any, which turns the Host check off).
        origins: origins (scheme://host[:port]) allowed to write besides the service's own,
            for a proxy that forwards another Host than the browser's.
    """

    def __init__(self, app: ASGIApp, hosts: Iterable[str], origins: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts = {host_name(h) for h in hosts}
        self.origins = {o.rstrip("/").lower() for o in origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        refusal = self._foreign_host(host) or self._cross_site(scope["method"], headers, host)
        if refusal is not None:
            await json_error(*refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _foreign_host(self, host: str) -> tuple[int, str] | None:
        if not host or "*" in self.hosts or host_name(host) in self.hosts:
            return None
        names = ", ".join(sorted(self.hosts))
        return (
            400,
            f"Host {host!r} is not a name of this service ({names}); a page that reaches it "
            "under another name is refused (DNS rebinding). Serving under that name? Start "
            "the service with --allowed-host NAME",
        )

    def _cross_site(self, method: str, headers: Headers, host: str) -> tuple[int, str] | None:
        if method in SAFE_METHODS:
            return None
        site, origin = headers.get("sec-fetch-site"), headers.get("origin")
        if site is not None:
            allowed = site in SAME_SITE_VALUES or self._listed(origin)
        elif origin is not None:
            allowed = self._listed(origin) or _netloc(origin) == host.strip().lower()
        else:
            return None  # not a browser: the token decides
        if allowed:
            return None
        return (
            403,
            f"a {method} from another site ({origin or site}) is refused: only the service's "
            "own page may send it (a page on another origin must not enroll, rename or delete)",
        )

    def _listed(self, origin: str | None) -> bool:
        return origin is not None and origin.rstrip("/").lower() in self.origins


def _netloc(origin: str) -> str:
    """``host[:port]`` of an Origin header ("" for "null" or garbage)."""
    try:
        return urlsplit(origin).netloc.lower()
    except ValueError:
        return ""


class SecurityHeaders:
    """Adds the security headers of the module docstring to every response; the page's
    policy everywhere, the API docs' under ``/docs``."""

    def __init__(self, app: ASGIApp, docs_path: str = "/docs") -> None:
        self.app = app
        self.docs_path = docs_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = DOCS_POLICY if scope["path"].startswith(self.docs_path) else PAGE_POLICY

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in (*HEADERS.items(), ("Content-Security-Policy", policy)):
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


def bearer_check(tokens: list[str], what: str) -> Callable[..., None]:
    """A FastAPI dependency: ``Authorization: Bearer <one of tokens>``, else 401 naming
    ``what`` needs it. With no token the dependency should not be added at all (the OpenAPI
    schema then declares no security)."""
    bearer = HTTPBearer(auto_error=False, description=f"{what} need the service's token")
    secrets = [t.encode() for t in tokens]

    def check(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        given = (credentials.credentials if credentials is not None else "").encode()
        # compare with every token, so the time taken does not tell which one nearly matched
        matches = [hmac.compare_digest(given, secret) for secret in secrets]
        if not any(matches):
            raise HTTPException(
                401,
                f"{what} need the header Authorization: Bearer <token>"
                if not given
                else "wrong token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def auth(tokens: list[str | None], what: str) -> list[Any]:
    """``[Depends(bearer_check(...))]`` when a token is set, else ``[]``."""
    given = [t for t in tokens if t]
    return [Depends(bearer_check(given, what))] if given else []
