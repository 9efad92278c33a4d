"""Who may ask the served endpoints, for both web servers (Faust's aiohttp app in a worker, the writer's own).

* :func:`check_serving`: what ``run`` and ``writer`` check before they open the store or reach Kafka. Beyond
  loopback they serve only over TLS and only to callers who prove who they are: basic auth (over that TLS) or a
  client certificate signed by ``web_tls_client_cafile`` (mutual TLS, enforced in the handshake).
* :func:`guard`: one aiohttp middleware in front of every route, the framework's own and unknown paths included:
  401 without the credentials (before a byte of the body is read), then a per-path body limit (413).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from streams.endpoints import AUTH_CHALLENGE, authorized
from streams.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ServingRefused(ValueError):
    """The settings would serve (or call the writer) without the protection they need; the message says what to set."""


def is_loopback(host: str, *, resolve: bool = True) -> bool:
    """Whether every address ``host`` stands for is a loopback one (``""`` and ``0.0.0.0`` are every interface)."""
    host = host.strip().strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host.lower() == "localhost":
        return True
    if not resolve:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """HTTPS with web_tls_cert/web_tls_key; with web_tls_client_cafile, a client without a certificate signed by
    that CA fails the handshake."""
    if not settings.web_tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.web_tls_cert), str(settings.web_tls_key) if settings.web_tls_key else None)
    if settings.web_tls_client_cafile:
        context.load_verify_locations(cafile=str(settings.web_tls_client_cafile))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def check_serving(settings: Settings, *, load_files: bool = True) -> None:
    """Refuse settings that would serve the store beyond loopback unprotected, or call the writer in clear text.
    ``load_files`` also loads the certificates and keys (one clear error instead of a traceback later)."""
    basic = settings.web_authorization() is not None
    mutual = settings.web_tls_client_cafile is not None
    tls = settings.web_tls_cert is not None
    where = f"GUARDSTREAM_WEB_HOST={settings.web_host or '(every interface)'}"
    if not is_loopback(settings.web_host) and not (tls and (basic or mutual)):
        raise ServingRefused(
            f"{where} is reachable beyond this machine: serve it over TLS (GUARDSTREAM_WEB_TLS_CERT, "
            "GUARDSTREAM_WEB_TLS_KEY) to callers with basic auth (GUARDSTREAM_WEB_USERNAME, GUARDSTREAM_WEB_PASSWORD) "
            "or client certificates (GUARDSTREAM_WEB_TLS_CLIENT_CAFILE), or on 127.0.0.1 (docs/deploy.md)"
            + ("; basic auth without TLS would send the password in clear" if basic and not tls else "")
        )
    if settings.writer_url:
        parts = urllib.parse.urlsplit(settings.writer_url)
        if parts.scheme == "http" and not is_loopback(parts.hostname or "", resolve=False):
            raise ServingRefused(
                f"GUARDSTREAM_WRITER_URL={settings.writer_url} would send every batch (and the credentials) in "
                "clear text: use https:// (the writer serves beyond loopback only over TLS)"
            )
    if load_files:
        try:
            server_ssl_context(settings)
        except (OSError, ssl.SSLError) as exc:
            raise ServingRefused(
                "cannot load GUARDSTREAM_WEB_TLS_CERT/GUARDSTREAM_WEB_TLS_KEY"
                + ("/GUARDSTREAM_WEB_TLS_CLIENT_CAFILE" if mutual else "")
                + f": {exc}"
            ) from exc
        if settings.writer_url and settings.writer_url.startswith("https:"):
            try:
                settings.web_client_context()
            except (OSError, ssl.SSLError) as exc:
                raise ServingRefused(
                    f"cannot load the TLS files to call the writer (GUARDSTREAM_WEB_TLS_CAFILE, "
                    f"GUARDSTREAM_WEB_TLS_CLIENT_CERT/KEY): {exc}"
                ) from exc


def guard(settings: Settings, limits: Mapping[str, tuple[int, str]] | None = None) -> Any:
    """The middleware: basic auth on every path when configured (401 with a challenge, known path or not), then
    the body limit: ``limits`` maps a path to (bytes, setting name); every other path gets web_max_request_bytes.
    The app's own ``client_max_size`` must be web_max_request_bytes for the limit of a body without a length."""
    expected = settings.web_authorization()
    default = (settings.web_max_request_bytes, "GUARDSTREAM_WEB_MAX_REQUEST_BYTES")
    per_path = dict(limits or {})

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not authorized(request.headers.get("Authorization"), expected):
            return web.Response(status=401, text="authentication required", headers=AUTH_CHALLENGE)
        limit, setting = per_path.get(request.path, default)
        if request.content_length is not None and request.content_length > limit:
            return too_large(limit, setting)
        if limit != request.client_max_size:
            request = request.clone(client_max_size=limit)
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return too_large(limit, setting)

    return middleware


def too_large(limit: int, setting: str) -> web.Response:
    return web.Response(status=413, text=f"request body over {limit:,} bytes ({setting})")
