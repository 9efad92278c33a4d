"""``python -m streams.probe [PATH]``: the container health check. Exit 0 when this container's own web server
answers ``GET PATH`` (default ``/status``) with 200, 1 otherwise (the reason on stderr).

The probes of deploy/kubernetes and deploy/compose run it inside the container, because every path asks for
credentials and kubelet HTTP probes cannot send a secret. It brings what the CLI brings, read from the same
GUARDSTREAM_* variables (the environment only, no .env file): basic auth, the TLS trust, the client certificate.
Standard library only, so a probe every few seconds costs a bare interpreter start, not the CLI's imports.
"""

from __future__ import annotations

import base64
import os
import ssl
import sys
import urllib.error
import urllib.request

# The settings this reads (streams/settings.py defines them; tests/unit/test_web_credentials.py checks the names).
PREFIX = "GUARDSTREAM_"
READS = (
    "WEB_PORT",
    "WEB_USERNAME",
    "WEB_PASSWORD",
    "WEB_TLS_CERT",
    "WEB_TLS_CAFILE",
    "WEB_TLS_CLIENT_CERT",
    "WEB_TLS_CLIENT_KEY",
)


def setting(name: str, env: dict[str, str]) -> str | None:
    return env.get(PREFIX + name) or None


def authorization(env: dict[str, str]) -> str | None:
    username, password = setting("WEB_USERNAME", env), setting("WEB_PASSWORD", env)
    if not username or not password:
        return None
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def request_for(path: str, env: dict[str, str]) -> tuple[urllib.request.Request, ssl.SSLContext | None]:
    port = setting("WEB_PORT", env) or "6066"
    cert = setting("WEB_TLS_CERT", env)
    context = None
    if cert:
        # This container's own server, by loopback address: its certificate is checked, not its name.
        context = ssl.create_default_context(cafile=setting("WEB_TLS_CAFILE", env) or cert)
        context.check_hostname = False
        client = setting("WEB_TLS_CLIENT_CERT", env)
        if client:
            context.load_cert_chain(client, setting("WEB_TLS_CLIENT_KEY", env))
    auth = authorization(env)
    url = f"{'https' if cert else 'http'}://127.0.0.1:{port}{path}"
    return urllib.request.Request(url, headers={"Authorization": auth} if auth else {}), context


def probe(path: str = "/status", env: dict[str, str] | None = None, timeout: float = 4.0) -> str | None:
    """None when healthy, else why not."""
    try:
        request, context = request_for(path, dict(os.environ) if env is None else env)
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return None if response.status == 200 else f"{path} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{path} answered {exc.code}"
    except Exception as exc:  # unreachable, TLS, timeout: all mean unhealthy
        return f"{path}: {type(exc).__name__}: {exc}"


def main(argv: list[str]) -> int:
    problem = probe(argv[1] if len(argv) > 1 else "/status")
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
