"""Endpoints that ask who you are: with credentials set, no path of the worker's or the writer's web server
answers without them (Faust's own pages and unknown paths included), bodies are bounded, mutual TLS refuses a
client without a certificate in the handshake, Prometheus scrapes with the deploy files' settings, the CLI and the
workers bring their credentials along, and `run` / `writer` refuse to start unprotected beyond loopback.

Certificates come from deploy/make-certs.sh, the script the deploy docs tell operators to run."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streams import app as app_module
from streams.app import Service, create_app
from streams.bench import stop_process
from streams.broker import free_port
from streams.metrics import Metrics
from streams.settings import Settings
from streams.store import open_store
from streams.worker import build_pipeline
from streams.writer import Writer, build_web_app
from tests.integration.conftest import prom_query
from tests.integration.test_run_against_broker import GUARDSTREAM, env_for, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MAKE_CERTS = ROOT / "deploy" / "make-certs.sh"
COMPOSE_PROMETHEUS = ROOT / "deploy" / "compose" / "prometheus.yml"
USER, PASSWORD = "prometheus", "s3cret"
GOOD = Settings(_env_file=None, web_username=USER, web_password=PASSWORD).web_authorization()  # type: ignore[arg-type]
WRONG = "Basic cHJvbWV0aGV1czp3cm9uZw=="  # prometheus:wrong
# Faust's own pages (faust/web/base.py: DEFAULT, DEBUG, PRODUCTION and OPTIONAL blueprints), whether served or not.
FAUST_PAGES = ["/", "/router/", "/table/", "/table/x/", "/graph/", "/stats/", "/assignment/", "/performance/"]
REFUSED = (urllib.error.URLError, http.client.HTTPException, ConnectionError, ssl.SSLError, TimeoutError)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, the server certificate (names guardstream, guardstream-writer, localhost, 127.0.0.1) and a client
    certificate, made once per module by deploy/make-certs.sh."""
    out = tmp_path_factory.mktemp("web") / "certs"
    subprocess.run(["sh", str(MAKE_CERTS), str(out)], check=True, capture_output=True)
    return {name: out / name for name in ("ca.crt", "tls.crt", "tls.key", "client.crt", "client.key")}


def server_env(certs: dict[str, Path], *, basic: bool = True, mutual: bool = False) -> dict[str, str]:
    env = {
        "GUARDSTREAM_WEB_TLS_CERT": str(certs["tls.crt"]),
        "GUARDSTREAM_WEB_TLS_KEY": str(certs["tls.key"]),
        "GUARDSTREAM_WEB_TLS_CAFILE": str(certs["ca.crt"]),
    }
    if basic:
        env |= {"GUARDSTREAM_WEB_USERNAME": USER, "GUARDSTREAM_WEB_PASSWORD": PASSWORD}
    if mutual:
        env["GUARDSTREAM_WEB_TLS_CLIENT_CAFILE"] = str(certs["ca.crt"])
    return env


def client_context(certs: dict[str, Path], *, with_certificate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs["ca.crt"]))
    if with_certificate:
        context.load_cert_chain(str(certs["client.crt"]), str(certs["client.key"]))
    return context


def status_of(
    url: str, context: ssl.SSLContext, authorization: str | None, method: str = "GET", body: bytes | None = None
) -> int:
    headers = {"Authorization": authorization} if authorization else {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def routes_of(app: web.Application) -> list[tuple[str, str]]:
    """(method, path) of every route the aiohttp app registered, with a value in each path variable."""
    return sorted({(r.method, concrete(r.resource.canonical)) for r in app.router.routes() if r.resource is not None})


@contextlib.contextmanager
def worker_web_app(settings: Settings, datadir: Path) -> Iterator[web.Application]:
    """The aiohttp app a worker serves, built by the worker's own create_app (nothing started, no Kafka)."""
    store = open_store(settings)
    try:
        service = Service(settings, store, build_pipeline(settings, store), Metrics())
        faust_app = create_app(settings, service, str(datadir))
        faust_app.web.init_server()  # Faust's blueprints and guardstream's pages, as the worker registers them
        yield faust_app.web.web_app
    finally:
        store.close()


@contextlib.contextmanager
def writer_web_app(settings: Settings) -> Iterator[web.Application]:
    store = open_store(settings)
    try:
        yield build_web_app(Writer(settings, store, Metrics()), settings)
    finally:
        store.close()


def random_path() -> str:
    return f"/{uuid.uuid4().hex}/{uuid.uuid4().hex[:6]}"


# --- in process: every route of both apps, read from their routers ------------------------------------------------


async def answers(app: web.Application, requests: list[tuple[str, str, dict[str, str], bytes | None]]) -> list[Any]:
    async with TestClient(TestServer(app)) as client:
        out = []
        for method, path, headers, body in requests:
            response = await client.request(method, path, headers=headers, data=body)
            text = (await response.read()).decode("utf-8", "replace")
            out.append((method, path, response.status, response.headers.get("WWW-Authenticate"), text))
        return out


@pytest.mark.parametrize("faust_pages", [False, True], ids=["as-shipped", "faust-pages-on"])
def test_every_route_of_the_worker_asks_for_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, faust_pages: bool
) -> None:
    """Every (method, path) the worker's Faust app registers, every Faust page and an unknown path: 401 with a
    challenge without credentials or with wrong ones; with them, guardstream's pages answer. ``faust-pages-on``
    turns Faust's own pages back on (as a Faust default could): the middleware still stands in front of them."""
    if faust_pages:
        original = app_module.web_options
        flags = ("web_router_enabled", "web_tables_enabled", "web_stats_enabled", "web_graph_enabled")

        def with_pages(settings: Settings) -> dict[str, Any]:
            return original(settings) | dict.fromkeys(flags, True) | {"web_metrics_enabled": True}

        monkeypatch.setattr(app_module, "web_options", with_pages)
    settings = Settings(_env_file=None, db=tmp_path / "store.duckdb", web_username=USER, web_password=PASSWORD)  # type: ignore[arg-type]
    with worker_web_app(settings, tmp_path) as app:
        routes = routes_of(app)
        paths = {path for _, path in routes}
        assert {"/metrics", "/status", "/query", "/verdict"} <= paths
        if faust_pages:
            assert {"/router/", "/table/", "/graph/"} <= paths, "Faust's pages are registered in this variant"
        else:
            assert not paths & {"/router/", "/table/", "/graph/", "/stats/"}, "Faust's pages are turned off"
        probes = [*routes, *(("GET", p) for p in FAUST_PAGES), ("GET", random_path()), ("POST", random_path())]
        requests = [(m, p, h, None) for m, p in probes for h in ({}, {"Authorization": WRONG})]
        requests += [(m, p, {"Authorization": GOOD or ""}, None) for m, p in routes if m == "GET"]
        results = asyncio.run(answers(app, requests))
    for (method, path, status, challenge, _), (_, _, headers, _) in zip(results, requests, strict=True):
        if headers.get("Authorization") == GOOD:
            assert status != 401, f"{method} {path} refused the right credentials"
        else:
            assert status == 401 and challenge == 'Basic realm="guardstream"', f"{method} {path}: {status}"
    assert {(m, p) for m, p, s, _, _ in results if s == 200} >= {("GET", "/metrics"), ("GET", "/status")}


def test_every_route_of_the_writer_asks_for_credentials(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, db=tmp_path / "store.duckdb", web_username=USER, web_password=PASSWORD)  # type: ignore[arg-type]
    with writer_web_app(settings) as app:
        routes = routes_of(app)
        assert {p for _, p in routes} >= {"/v1/apply", "/v1/checkpoint", "/metrics", "/status", "/query", "/verdict"}
        probes = [*routes, ("GET", random_path()), ("POST", random_path()), ("DELETE", "/v1/apply")]
        requests = [(m, p, h, b"x") for m, p in probes for h in ({}, {"Authorization": WRONG})]
        requests += [(m, p, {"Authorization": GOOD or ""}, None) for m, p in routes if m == "GET"]
        results = asyncio.run(answers(app, requests))
    for (method, path, status, challenge, _), (_, _, headers, _) in zip(results, requests, strict=True):
        if headers.get("Authorization") == GOOD:
            assert status == 200, f"{method} {path}: {status}"
        else:
            assert status == 401 and challenge == 'Basic realm="guardstream"', f"{method} {path}: {status}"


def test_request_bodies_are_bounded_per_path(tmp_path: Path) -> None:
    """The writer takes a worker's batch up to GUARDSTREAM_WEB_MAX_BATCH_BYTES on /v1/apply and everything else up
    to GUARDSTREAM_WEB_MAX_REQUEST_BYTES, with or without a Content-Length; the worker's pages the latter. An
    unauthenticated body gets 401 before it is read."""
    mib = 1024 * 1024
    settings = Settings(  # type: ignore[arg-type]
        _env_file=None,
        db=tmp_path / "store.duckdb",
        web_username=USER,
        web_password=PASSWORD,
        web_max_batch_bytes=2 * mib,
        web_max_request_bytes=64 * 1024,
    )
    auth = {"Authorization": GOOD or ""}

    async def chunked(size: int) -> Any:
        yield b"x" * size  # an async generator body is sent chunked: no Content-Length to refuse up front

    async def writer_answers() -> list[tuple[int, str]]:
        with writer_web_app(settings) as app:
            async with TestClient(TestServer(app)) as client:
                out = []
                for path, body, headers in [
                    ("/v1/apply", b"x" * (mib + 1), auth),  # over the request limit, under the batch limit
                    ("/v1/apply", b"x" * (2 * mib + 1), auth),
                    ("/v1/apply", chunked(2 * mib + 1), auth),
                    ("/query", b"x" * (64 * 1024 + 1), auth),
                    ("/query", chunked(64 * 1024 + 1), auth),
                    ("/v1/checkpoint", b"x" * (64 * 1024 + 1), auth),
                    ("/v1/apply", b"x" * (2 * mib + 1), {}),
                ]:
                    response = await client.post(path, data=body, headers=headers)
                    out.append((response.status, (await response.read()).decode("utf-8", "replace")))
                return out

    results = asyncio.run(writer_answers())
    assert results[0][0] == 400, "a body the batch limit allows reaches /v1/apply (and is no batch)"
    for status, text in results[1:3]:
        assert status == 413 and "GUARDSTREAM_WEB_MAX_BATCH_BYTES" in text
    for status, text in results[3:6]:
        assert status == 413 and "GUARDSTREAM_WEB_MAX_REQUEST_BYTES" in text
    assert results[6][0] == 401

    with worker_web_app(settings, tmp_path) as app:
        big = b"SELECT 1 --" + b"x" * (64 * 1024)
        worker = asyncio.run(answers(app, [("POST", "/query", auth, big), ("POST", "/query", auth, b"SELECT 42")]))
    assert worker[0][2] == 413 and "GUARDSTREAM_WEB_MAX_REQUEST_BYTES" in worker[0][4]
    assert worker[1][2] == 200


# --- real processes -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def started(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([*GUARDSTREAM, *args], env=env, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        stop_process(proc, 60)


def up(url: str, context: ssl.SSLContext, authorization: str | None, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
    return status_of(url + "/status", context, authorization) == 200


def test_a_worker_answers_no_path_without_credentials(
    settings: Settings, tmp_path: Path, certs: dict[str, Path]
) -> None:
    """A running worker behind basic auth and HTTPS: every route its app registers, Faust's pages and an unknown
    path answer 401 without credentials or with wrong ones; plain HTTP gets nothing; the CLI brings the credentials
    along (found through <db>.service.json) and the container probe passes with them and fails without."""
    env = {**env_for(settings), **server_env(certs)}
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    context = client_context(certs)  # make-certs.sh names 127.0.0.1: the hostname is checked too
    in_process = settings.with_overrides(db=tmp_path / "routes.duckdb", web_username=USER, web_password=PASSWORD)
    with worker_web_app(in_process, tmp_path) as app:
        routes = routes_of(app)
    log = tmp_path / "worker.log"
    with started(["run", "--web-port", str(port)], env, log) as proc:
        wait_until(lambda: up(url, context, GOOD, proc, log), 90, "the worker over https")
        probes = [*routes, *(("GET", p) for p in FAUST_PAGES), ("GET", random_path()), ("POST", random_path())]
        for method, path in probes:
            body = b"SELECT 42" if method == "POST" else None
            assert status_of(url + path, context, None, method, body) == 401, f"{method} {path}"
            assert status_of(url + path, context, WRONG, method, body) == 401, f"{method} {path}"
        for path in ("/metrics", "/status"):
            assert status_of(url + path, context, GOOD) == 200
        with pytest.raises(REFUSED):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)  # no plain HTTP

        cli = subprocess.run([*GUARDSTREAM, "sql", "SELECT 42 AS answer", "-f", "csv"], env=env, capture_output=True)
        assert cli.returncode == 0, cli.stderr.decode()
        assert b"42" in cli.stdout
        anonymous = {k: v for k, v in env.items() if k not in ("GUARDSTREAM_WEB_USERNAME", "GUARDSTREAM_WEB_PASSWORD")}
        refused = subprocess.run([*GUARDSTREAM, "sql", "SELECT 1", "-f", "csv"], env=anonymous, capture_output=True)
        assert refused.returncode != 0 and b"authentication required" in refused.stderr
        half = {k: v for k, v in env.items() if k != "GUARDSTREAM_WEB_PASSWORD"}
        refused = subprocess.run([*GUARDSTREAM, "sql", "SELECT 1", "-f", "csv"], env=half, capture_output=True)
        assert refused.returncode == 2
        assert refused.stderr.decode().strip().splitlines() == [
            "error: settings: GUARDSTREAM_WEB_USERNAME is set without GUARDSTREAM_WEB_PASSWORD: basic auth needs "
            "both (or neither)"
        ]

        probe_env = {**env, "GUARDSTREAM_WEB_PORT": str(port)}
        probe = [sys.executable, "-m", "streams.probe", "/status"]
        assert subprocess.run(probe, env=probe_env, capture_output=True).returncode == 0
        wrong = subprocess.run(probe, env={**probe_env, "GUARDSTREAM_WEB_PASSWORD": "wrong"}, capture_output=True)
        assert wrong.returncode == 1 and b"401" in wrong.stderr


def prometheus_config(tmp_path: Path, certs: dict[str, Path], target: str) -> Path:
    """Compose's guardstream scrape job as written (scheme, basic_auth, tls_config), pointed at ``target`` with its
    files laid out here; and the same job without basic_auth, which must fail."""
    job = next(
        j for j in yaml.safe_load(COMPOSE_PROMETHEUS.read_text())["scrape_configs"] if j["job_name"] == "guardstream"
    )
    etc = tmp_path / "etc-prometheus"
    (etc / "secrets").mkdir(parents=True)
    shutil.copytree(certs["ca.crt"].parent, etc / "certs")
    (etc / job["basic_auth"]["password_file"]).write_text(PASSWORD + "\n")
    job = {k: v for k, v in job.items() if k not in ("static_configs", "dns_sd_configs", "relabel_configs")}
    job["basic_auth"]["username"] = USER
    job["static_configs"] = [{"targets": [target]}]
    anonymous = {k: v for k, v in job.items() if k != "basic_auth"} | {"job_name": "anonymous"}
    config = etc / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [job, anonymous]}))
    return config


def test_a_writer_answers_no_path_without_credentials_and_a_worker_and_prometheus_bring_them(
    settings: Settings, tmp_path: Path, certs: dict[str, Path]
) -> None:
    """A running writer behind basic auth and HTTPS: every route and an unknown path answer 401 without credentials;
    a worker commits to it over https with the credentials (its partitions' checkpoints load); Prometheus with the
    Compose scrape job's scheme, basic_auth and tls_config scrapes it, and the same job without basic_auth cannot."""
    env = {**env_for(settings), **server_env(certs)}
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    context = client_context(certs)
    with writer_web_app(settings.with_overrides(db=tmp_path / "routes.duckdb")) as app:
        routes = routes_of(app)
    binary = shutil.which("prometheus")
    log = tmp_path / "writer.log"
    with started(["writer", "--port", str(port)], env, log) as writer:
        wait_until(lambda: up(url, context, GOOD, writer, log), 90, "the writer over https")
        for method, path in [*routes, ("GET", random_path()), ("POST", random_path())]:
            body = b"x" if method == "POST" else None
            assert status_of(url + path, context, None, method, body) == 401, f"{method} {path}"
            assert status_of(url + path, context, WRONG, method, body) == 401, f"{method} {path}"

        worker_log = tmp_path / "worker.log"
        # it serves on loopback without TLS, and trusts the writer's CA
        worker_env = {k: v for k, v in env.items() if k not in ("GUARDSTREAM_WEB_TLS_CERT", "GUARDSTREAM_WEB_TLS_KEY")}
        worker_args = ["run", "--writer", url, "--web-port", str(free_port())]
        with started(worker_args, worker_env, worker_log) as worker:

            def loaded() -> bool:
                assert worker.poll() is None, worker_log.read_text(errors="replace")[-3000:]
                request = urllib.request.Request(url + "/status", headers={"Authorization": GOOD or ""})
                with urllib.request.urlopen(request, timeout=5, context=context) as response:
                    return bool(json.loads(response.read())["counts"]["checkpoints"])

            wait_until(loaded, 120, "the worker to load its checkpoints from the writer over https")

        if binary is None:
            pytest.skip("prometheus is not installed (CI installs Debian's prometheus package)")
        config = prometheus_config(tmp_path, certs, f"127.0.0.1:{port}")
        prom_port = free_port()
        prometheus = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{prom_port}"
            wait_until(lambda: len(prom_query(base, "up == 1")) == 1, 60, "prometheus to scrape the writer")
            wait_until(lambda: len(prom_query(base, 'up{job="anonymous"} == 0')) == 1, 30, "the anonymous scrape")
            assert prom_query(base, 'up{job="guardstream"} == 1'), "the Compose job scrapes with its credentials"
        finally:
            prometheus.send_signal(signal.SIGTERM)
            prometheus.wait(30)


def test_mutual_tls_refuses_a_client_without_a_certificate_in_the_handshake(
    settings: Settings, tmp_path: Path, certs: dict[str, Path]
) -> None:
    """A writer requiring client certificates (no password at all): a client without one gets no HTTP answer, one
    with a certificate signed by the CA gets in; `guardstream sql` and a worker present theirs from the settings."""
    env = {**env_for(settings), **server_env(certs, basic=False, mutual=True)}
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    log = tmp_path / "writer.log"
    client = {
        "GUARDSTREAM_WEB_TLS_CLIENT_CERT": str(certs["client.crt"]),
        "GUARDSTREAM_WEB_TLS_CLIENT_KEY": str(certs["client.key"]),
    }
    with started(["writer", "--port", str(port)], env, log) as writer:
        with_cert = client_context(certs, with_certificate=True)
        wait_until(lambda: up(url, with_cert, None, writer, log), 90, "the writer with mutual TLS")
        for path in ("/status", "/metrics", random_path()):
            with pytest.raises(REFUSED):
                status_of(url + path, client_context(certs), None)  # no certificate: no answer at all
        assert status_of(url + "/metrics", with_cert, None) == 200

        # the CLI finds the writer through <db>.service.json and presents its client certificate
        sql = [*GUARDSTREAM, "sql", "SELECT 42 AS answer", "-f", "csv"]
        ok = subprocess.run(sql, env={**env, **client}, capture_output=True)
        assert ok.returncode == 0 and b"42" in ok.stdout, ok.stderr.decode()
        refused = subprocess.run(sql, env=env, capture_output=True)
        lines = refused.stderr.decode().strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1 and "cannot reach the pipeline" in lines[0], lines

        worker_log = tmp_path / "worker.log"
        worker_env = {
            **env_for(settings),
            "GUARDSTREAM_WEB_TLS_CAFILE": str(certs["ca.crt"]),
            **client,
        }
        with started(["run", "--writer", url, "--web-port", str(free_port())], worker_env, worker_log) as worker:
            wait_until(
                lambda: worker.poll() is None and get_status(url, with_cert)["counts"]["checkpoints"] > 0,
                120,
                "the worker to load its checkpoints over mutual TLS",
            )


def get_status(url: str, context: ssl.SSLContext) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/status", timeout=5, context=context) as response:
        status: dict[str, Any] = json.loads(response.read())
        return status


# --- refusing to start ----------------------------------------------------------------------------------------------

BEYOND = {"GUARDSTREAM_WEB_HOST": "0.0.0.0"}
START_REFUSALS: list[tuple[str, Callable[[dict[str, Path]], dict[str, str]], str]] = [
    ("no-credentials", lambda c: BEYOND, "GUARDSTREAM_WEB_HOST=0.0.0.0 is reachable beyond this machine"),
    (
        "basic-auth-without-tls",
        lambda c: BEYOND | {"GUARDSTREAM_WEB_USERNAME": USER, "GUARDSTREAM_WEB_PASSWORD": PASSWORD},
        "would send the password in clear",
    ),
    (
        "tls-without-credentials",
        lambda c: BEYOND | server_env(c, basic=False),
        "to callers with basic auth (GUARDSTREAM_WEB_USERNAME",
    ),
    (
        "username-only",
        lambda c: {"GUARDSTREAM_WEB_USERNAME": USER},
        "settings: GUARDSTREAM_WEB_USERNAME is set without",
    ),
    (
        "password-only",
        lambda c: {"GUARDSTREAM_WEB_PASSWORD": PASSWORD},
        "settings: GUARDSTREAM_WEB_PASSWORD is set without",
    ),
    (
        "key-without-cert",
        lambda c: {"GUARDSTREAM_WEB_TLS_KEY": str(c["tls.key"])},
        "settings: GUARDSTREAM_WEB_TLS_KEY is set without GUARDSTREAM_WEB_TLS_CERT",
    ),
    (
        "client-ca-without-cert",
        lambda c: {"GUARDSTREAM_WEB_TLS_CLIENT_CAFILE": str(c["ca.crt"])},
        "needs the server's own GUARDSTREAM_WEB_TLS_CERT",
    ),
    (
        "unreadable-key",
        lambda c: BEYOND | server_env(c) | {"GUARDSTREAM_WEB_TLS_KEY": str(c["ca.crt"])},
        "cannot load GUARDSTREAM_WEB_TLS_CERT/GUARDSTREAM_WEB_TLS_KEY",
    ),
]


@pytest.mark.parametrize("command", ["run", "writer"])
@pytest.mark.parametrize(("case", "make_env", "message"), START_REFUSALS, ids=[c[0] for c in START_REFUSALS])
def test_run_and_writer_refuse_to_start_unprotected(
    tmp_path: Path,
    certs: dict[str, Path],
    command: str,
    case: str,
    make_env: Callable[[dict[str, Path]], dict[str, str]],
    message: str,
) -> None:
    """One line, exit code 2, before the store is opened or Kafka is reached (nothing listens on the bootstrap
    given, and no DuckDB file appears)."""
    db = tmp_path / "store.duckdb"
    dead_kafka = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in env_for(Settings(_env_file=None, db=db)).items() if not k.startswith("GUARDSTREAM_WEB_")}
    env |= {"GUARDSTREAM_BOOTSTRAP": dead_kafka, **make_env(certs)}
    result = subprocess.run([*GUARDSTREAM, command], env=env, capture_output=True, timeout=120)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2, result.stderr.decode()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not db.exists(), "the store was opened"
