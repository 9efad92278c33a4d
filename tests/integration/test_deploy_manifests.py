"""The deployment files under deploy/ (Compose, Kubernetes, Prometheus, Alertmanager) and docs/deploy.md, checked
with what runs here: no Docker daemon and no cluster, so nothing is started, but every file parses, every path a
container mounts exists, every `guardstream ...` they run is a real command with real options, every GUARDSTREAM_*
variable is a real setting with a valid value, the topology is one writer owning the store and stateless workers
pointed at it (all scraped as job guardstream), no container serves beyond loopback without TLS and credentials
and every scrape of guardstream is HTTPS with them, the generated manifests equal their sources, and promtool,
amtool, kubectl kustomize and kubernetes-validate accept what they can check."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.parse
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from deploy import build
from streams.cli import app
from streams.settings import Settings
from streams.web_security import ServingRefused, check_serving, is_loopback

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
K8S = DEPLOY / "kubernetes"
RULES = DEPLOY / "prometheus" / "rules.yml"
ALERTMANAGER = DEPLOY / "prometheus" / "alertmanager.yml"
DASHBOARDS = ROOT / "dashboards" / "generated"
DOCS = ROOT / "docs" / "deploy.md"
DOCKERFILE = DEPLOY / "Dockerfile"

ENV_PREFIX = str(Settings.model_config.get("env_prefix", ""))
SETTING_VARS = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
# Variables the guardstream containers set that are not guardstream settings (scratch for a read-only root).
OTHER_CONTAINER_VARS = {"TMPDIR", "HOME"}
# Custom resources kubernetes-validate has no schema for (checked against the rules/dashboards instead).
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
K8S_VERSION = "1.30"
# The container health check: GET /status with the container's own credentials (streams/probe.py).
PROBE = ["python", "-m", "streams.probe", "/status"]


def docs_of(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def k8s_objects() -> list[dict[str, Any]]:
    """Every object in deploy/kubernetes, the kustomization itself excluded, secret.example.yaml included."""
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml" for doc in docs_of(path)]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def guardstream_services() -> dict[str, dict[str, Any]]:
    """Compose services that run the image built from deploy/Dockerfile."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if isinstance(service.get("build"), dict) and service["build"].get("dockerfile") == "deploy/Dockerfile"
    }


def compose_role(command: str) -> tuple[str, dict[str, Any]]:
    """(name, service) of the one guardstream Compose service that runs `guardstream <command>`."""
    found = [
        (name, service)
        for name, service in guardstream_services().items()
        if (service.get("command") or [None])[0] == command
    ]
    assert len(found) == 1, f"expected one Compose service running `guardstream {command}`, found {len(found)}"
    return found[0]


# The writer owns the store (a one-replica StatefulSet); the workers are a Deployment.
WORKLOAD_KINDS = {"writer": "StatefulSet", "worker": "Deployment"}


def workload(objects: list[dict[str, Any]], role: str) -> dict[str, Any]:
    return only(objects, WORKLOAD_KINDS[role])


def container_of(objects: list[dict[str, Any]], role: str) -> dict[str, Any]:
    containers = workload(objects, role)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def pod_labels(objects: list[dict[str, Any]], role: str) -> dict[str, str]:
    labels: dict[str, str] = workload(objects, role)["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def service_for(objects: list[dict[str, Any]], role: str) -> dict[str, Any]:
    """The one Service whose selector picks the role's pods and not the other role's."""
    other = "worker" if role == "writer" else "writer"
    found = [
        o
        for o in objects
        if o["kind"] == "Service"
        and selects(o["spec"]["selector"], pod_labels(objects, role))
        and not selects(o["spec"]["selector"], pod_labels(objects, other))
    ]
    assert len(found) == 1, f"expected one Service selecting only the {role} pods, found {len(found)}"
    return found[0]


def policy_for(objects: list[dict[str, Any]], role: str) -> dict[str, Any]:
    found = [
        o
        for o in objects
        if o["kind"] == "NetworkPolicy" and selects(o["spec"]["podSelector"]["matchLabels"], pod_labels(objects, role))
    ]
    assert len(found) == 1, f"expected one NetworkPolicy for the {role} pods, found {len(found)}"
    return found[0]


def env_map(environment: Any) -> dict[str, str]:
    """A Compose `environment:` as a dict, whether written as a mapping or as KEY=VALUE items."""
    if isinstance(environment, dict):
        return {str(k): "" if v is None else str(v) for k, v in environment.items()}
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment or [])


def compose_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, container target) for each volume of a service, short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts.append((source, target))
    return mounts


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The repository file a container path of a Compose service comes from, through its bind mounts."""
    wanted = PurePosixPath(container_path)
    for source, target in compose_mounts(service):
        if is_bind(source) and (wanted == PurePosixPath(target) or PurePosixPath(target) in wanted.parents):
            return (COMPOSE_DIR / source / wanted.relative_to(target)).resolve()
    raise AssertionError(f"{container_path} is not bind-mounted from the repository")


def flag(command: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"{name}=")]
    assert len(values) == 1, f"{name}= not found once in {command}"
    return values[0]


def rendered_kustomization() -> list[dict[str, Any]]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def dashboard_data(objects: list[dict[str, Any]]) -> dict[str, str]:
    held: dict[str, str] = {}
    for cm in objects:
        if cm["kind"] == "ConfigMap" and cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            overlap = set(held) & set(cm["data"])
            assert not overlap, f"dashboards in two ConfigMaps: {overlap}"
            held.update(cm["data"])
    return held


def generated_dashboards() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(DASHBOARDS.glob("*.json"))}


# --- everything parses -----------------------------------------------------------------------------------------


YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])


def test_deploy_has_the_expected_yaml_files() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in YAML_FILES}
    for expected in (
        "compose/compose.yaml",
        "compose/prometheus.yml",
        "kubernetes/kustomization.yaml",
        "kubernetes/statefulset.yaml",
        "kubernetes/deployment.yaml",
        "kubernetes/prometheusrule.yaml",
        "kubernetes/grafana-dashboards.yaml",
        "prometheus/rules.yml",
    ):
        assert expected in names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_under_deploy_parses(path: Path) -> None:
    docs = docs_of(path)
    assert docs, f"{path} has no YAML document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document must be a mapping"
    if path.parent == K8S and path.name != "kustomization.yaml":
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: not a Kubernetes object"
            assert "namespace" not in doc["metadata"], f"{path}: manifests must not name a namespace"


# --- the image ----------------------------------------------------------------------------------------------


def test_the_build_context_holds_what_the_wheel_is_built_from() -> None:
    """Every COPY of deploy/Dockerfile exists and is allow-listed in .dockerignore, and together they cover what
    pyproject.toml packages into the wheel (packages, force-included data, the readme)."""
    copied = [
        src.rstrip("/")
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for src in line.split()[1:-1]
    ]
    allowed = [
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    ]
    for src in copied:
        assert (ROOT / src).exists(), f"deploy/Dockerfile copies {src}, which does not exist"
        assert any(src == a or src.startswith(a + "/") for a in allowed), f"{src} is excluded by .dockerignore"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", project["project"]["readme"], *wheel["packages"], *wheel.get("force-include", {})}
    assert not needed - set(copied), f"the wheel needs files the image does not copy: {needed - set(copied)}"


# --- Compose: files, commands, settings ------------------------------------------------------------------------


def test_compose_mounts_and_build_context_exist_in_the_repository() -> None:
    spec = compose()
    named = set(spec.get("volumes") or {})
    binds = 0
    for name, service in spec["services"].items():
        for source, target in compose_mounts(service):
            if is_bind(source):
                path = (COMPOSE_DIR / source).resolve()
                assert path.exists(), f"{name} mounts {source} -> {target}, which does not exist"
                assert path.is_relative_to(ROOT), f"{name} mounts {source} from outside the repository"
                binds += 1
            else:
                assert source in named, f"{name} uses volume {source}, not declared under volumes:"
        build_spec = service.get("build")
        if isinstance(build_spec, dict):
            context = (COMPOSE_DIR / build_spec["context"]).resolve()
            assert context == ROOT, f"{name} builds from {context}, not the repository root (.dockerignore)"
            assert (context / build_spec["dockerfile"]).is_file()
    assert binds >= 5, "the rules, prometheus.yml, alertmanager.yml and Grafana files are all mounted"


def test_compose_containers_find_their_config_files() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    config = flag(prometheus["command"], "--config.file")
    assert host_path(prometheus, config) == COMPOSE_DIR / "prometheus.yml"
    rule_files = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())["rule_files"]
    assert [host_path(prometheus, str(PurePosixPath(config).parent / f)) for f in rule_files] == [RULES]

    alertmanager = services["alertmanager"]
    assert host_path(alertmanager, flag(alertmanager["command"], "--config.file")) == ALERTMANAGER

    grafana = services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    assert sorted((provisioning / "datasources").glob("*.yaml")), "no data source is provisioned"
    providers = [p for f in sorted((provisioning / "dashboards").glob("*.yaml")) for p in docs_of(f)[0]["providers"]]
    assert [host_path(grafana, p["options"]["path"]) for p in providers] == [DASHBOARDS]
    home = env_map(grafana["environment"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home).is_file()


def test_grafana_data_source_is_the_one_the_dashboards_ask_for() -> None:
    files = sorted((COMPOSE_DIR / "grafana" / "provisioning" / "datasources").glob("*.yaml"))
    sources = [s for f in files for s in docs_of(f)[0]["datasources"]]
    defaults = [s for s in sources if s.get("isDefault")]
    assert len(defaults) == 1
    for name, text in generated_dashboards().items():
        dashboard = json.loads(text)
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        # The dashboards' `datasource` variable starts on the default data source of its type.
        assert variables["datasource"]["type"] == "datasource", name
        assert variables["datasource"]["query"] == defaults[0]["type"], name
    host = re.match(r"https?://([^:/]+):(\d+)", defaults[0]["url"])
    assert host and host.group(1) in compose()["services"], "the data source URL must name a Compose service"


def guardstream_invocations() -> list[tuple[str, list[str]]]:
    """(where, argv after `guardstream`) for every guardstream command the deployment files run."""
    found: list[tuple[str, list[str]]] = []
    for name, service in guardstream_services().items():
        found.append((f"compose {name}", list(service.get("command") or [])))
    objects = k8s_objects()
    for role, kind in WORKLOAD_KINDS.items():
        container = container_of(objects, role)
        assert "command" not in container, "keep the image's ENTRYPOINT (guardstream)"
        found.append((kind, list(container["args"])))
    assert re.search(r'^ENTRYPOINT \["guardstream"\]$', DOCKERFILE.read_text(), re.MULTILINE)
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.MULTILINE)
    assert cmd, "deploy/Dockerfile has no exec-form CMD"
    found.append(("Dockerfile CMD", json.loads(cmd.group(1))))
    found.extend(("docs/deploy.md", argv) for argv in documented_invocations())
    return found


def documented_invocations() -> list[list[str]]:
    """`guardstream ...` in command position in the code blocks of docs/deploy.md, with the text after
    `kubectl exec ... --` and `docker compose exec <service>` counted as commands too."""
    text = DOCS.read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.DOTALL)
    inline = re.findall(r"`((?:kubectl|docker|guardstream) [^`]+)`", text)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()] + inline
    invocations = []
    for line in lines:
        tokens = shlex.split(line, comments=True)
        if tokens[:2] == ["docker", "run"]:  # `docker run [options] guardstream:TAG ARGS...`
            image = next((i for i, t in enumerate(tokens) if re.fullmatch(r"(\S+/)?guardstream:\S+", t)), None)
            if image is not None:
                invocations.append(tokens[image + 1 :])
            continue
        for i, token in enumerate(tokens):
            if token != "guardstream" or i + 1 >= len(tokens):
                continue
            before = tokens[:i]
            command_position = (
                not before
                or before[-1] in ("--", "&&", ";")
                or (len(before) >= 2 and before[-2] == "exec" and before[:2] == ["docker", "compose"])
            )
            if command_position:
                argv = []
                for arg in tokens[i + 1 :]:
                    if arg in ("|", "&&", ";", ">", "2>&1"):
                        break
                    argv.append(arg)
                invocations.append(argv)
    return invocations


def test_every_guardstream_command_in_the_deployment_is_real() -> None:
    invocations = guardstream_invocations()
    subcommands = {argv[0] for _, argv in invocations if argv}
    assert {"run", "writer", "simulate", "sql"} <= subcommands, f"the collector missed commands: {subcommands}"
    runner = CliRunner()
    for where, argv in invocations:
        # Click parses every option before the eager --help: an unknown command or option fails here.
        result = runner.invoke(app, [*argv, "--help"])
        assert result.exit_code == 0, (
            f"{where}: `guardstream {shlex.join(argv)}` is not a valid command:\n{result.output}"
        )


def test_every_guardstream_variable_is_a_real_setting() -> None:
    texts = {
        path: path.read_text()
        for path in [DOCKERFILE, DOCS, *COMPOSE_DIR.rglob("*.y*ml"), *K8S.glob("*.yaml")]
        if path.name not in (build.PROMETHEUS_RULE, build.DASHBOARD_CONFIGMAPS)
    }
    used = {(path, var) for path, text in texts.items() for var in re.findall(r"\bGUARDSTREAM_[A-Z0-9_]+\b", text)}
    assert len({var for _, var in used}) >= 8
    unknown = sorted(f"{path.relative_to(ROOT)}: {var}" for path, var in used if var not in SETTING_VARS)
    assert not unknown, f"not a guardstream setting (see `guardstream settings`): {unknown}"


def k8s_container_env(objects: list[dict[str, Any]], role: str) -> dict[str, str]:
    """A Kubernetes container's environment: the ConfigMap (envFrom), then its own env, Secret values filled in."""
    container = container_of(objects, role)
    assert [ref["configMapRef"]["name"] for ref in container["envFrom"]] == ["guardstream-config"]
    env: dict[str, str] = dict(named(objects, "ConfigMap", "guardstream-config")["data"])
    for item in container["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            secret = named(objects, "Secret", ref["name"])
            assert ref["key"] in secret["stringData"], f"{ref} is not in secret.example.yaml"
            env[item["name"]] = secret["stringData"][ref["key"]]
        else:
            env[item["name"]] = item["value"]
    return env


def container_settings() -> dict[str, dict[str, str]]:
    """The environment each guardstream container gets, by where it is defined."""
    objects = k8s_objects()
    envs = {f"compose {name}": env_map(s.get("environment")) for name, s in guardstream_services().items()}
    for role, kind in WORKLOAD_KINDS.items():
        envs[f"kubernetes {kind}"] = k8s_container_env(objects, role)
    return envs


def settings_from(env: dict[str, str]) -> Settings:
    values: dict[str, Any] = {
        k.removeprefix(ENV_PREFIX).lower(): re.sub(r"\$\{[^}]*\}", "interpolated", v)
        for k, v in env.items()
        if k.startswith(ENV_PREFIX)
    }
    return Settings(_env_file=None, **values)


def test_container_environments_are_valid_settings() -> None:
    for where, env in container_settings().items():
        extra = sorted(set(env) - SETTING_VARS - OTHER_CONTAINER_VARS)
        assert not extra, f"{where}: variables that configure nothing: {extra}"
        settings_from(env)  # raises on an invalid value (a protocol, a port, a partition count)


def test_every_web_port_listens_beyond_loopback_and_the_scrapes_match() -> None:
    envs = container_settings()
    for where, env in envs.items():
        if where == "compose simulate":
            continue
        settings = settings_from(env)
        assert settings.web_host == "0.0.0.0", f"{where}: Prometheus cannot scrape a process bound to loopback"
    writer_name, writer = compose_role("writer")
    worker_name, worker = compose_role("run")
    writer_port = settings_from(envs[f"compose {writer_name}"]).web_port
    worker_port = settings_from(envs[f"compose {worker_name}"]).web_port
    # Every path asks for credentials: the health checks run the in-container probe, which brings them and
    # calls the container's own GUARDSTREAM_WEB_PORT.
    assert writer["healthcheck"]["test"] == ["CMD", *PROBE], writer_name
    assert worker["healthcheck"]["test"] == ["CMD", *PROBE], worker_name
    assert writer_port == worker_port == 6066, "streams/probe.py defaults to the port the containers set"

    # Compose Prometheus: the writer by name, every worker replica by DNS, all in job guardstream.
    scrape = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())["scrape_configs"]
    jobs = {job["job_name"]: job for job in scrape}
    assert len(jobs) == len(scrape), "job names must be unique"
    job = jobs["guardstream"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert [t for s in job["static_configs"] for t in s["targets"]] == [f"{writer_name}:{writer_port}"]
    assert [(d["names"], d["type"], d["port"]) for d in job["dns_sd_configs"]] == [([worker_name], "A", worker_port)]
    # The rules' TargetDown / NoEvents alerts select job="guardstream".
    assert set(re.findall(r'job="([^"]+)"', RULES.read_text())) == {"guardstream"}

    # Kubernetes: each workload's port, probes and Service; one ServiceMonitor over both, as job guardstream.
    objects = k8s_objects()
    app_source = (ROOT / "streams" / "app.py").read_text()
    assert '@app.page("/status")' in app_source and '@app.page("/metrics")' in app_source
    writer_source = (ROOT / "streams" / "writer.py").read_text()
    assert 'web.get("/status"' in writer_source and 'web.get("/metrics"' in writer_source
    monitor = only(objects, "ServiceMonitor")
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("web", "/metrics")]
    scraped = [
        o
        for o in objects
        if o["kind"] == "Service" and selects(monitor["spec"]["selector"]["matchLabels"], o["metadata"]["labels"])
    ]
    for role, kind in WORKLOAD_KINDS.items():
        port = settings_from(envs[f"kubernetes {kind}"]).web_port
        container = container_of(objects, role)
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"web": port}, kind
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["exec"] == {"command": PROBE}, f"{kind} {probe}"
            assert container[probe]["timeoutSeconds"] >= 2, f"{kind} {probe}: an interpreter start needs time"
        service = service_for(objects, role)
        assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("web", "web")]
        assert service in scraped, f"the ServiceMonitor does not scrape the {role} Service"
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "guardstream", role
    assert len(scraped) == 2, "the ServiceMonitor scrapes exactly the writer's and the workers' Services"


def test_the_network_policies_admit_the_workers_to_the_writer_and_monitoring_to_both() -> None:
    objects = k8s_objects()
    assert len([o for o in objects if o["kind"] == "NetworkPolicy"]) == 2
    port = settings_from(container_settings()["kubernetes StatefulSet"]).web_port
    monitoring = {
        "namespaceSelector": {
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring"]}]
        }
    }
    for role in WORKLOAD_KINDS:
        policy = policy_for(objects, role)
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [port]
        peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
        assert monitoring in peers, f"Prometheus cannot scrape the {role}"
        from_workers = [
            peer
            for peer in peers
            if "namespaceSelector" not in peer
            and selects(peer.get("podSelector", {}).get("matchLabels", {}), pod_labels(objects, "worker"))
            and not selects(peer.get("podSelector", {}).get("matchLabels", {}), pod_labels(objects, "writer"))
        ]
        # The workers commit to the writer; nothing but monitoring needs to reach a worker.
        assert len(from_workers) == (1 if role == "writer" else 0), role
        assert len(peers) == 1 + len(from_workers), f"{role}: admits more than the workers and monitoring"


def writer_url_target(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme == "https" and parts.hostname and parts.port and parts.path in ("", "/"), url
    return parts.hostname, parts.port


def test_compose_runs_one_writer_owning_the_store_and_stateless_workers_pointed_at_it() -> None:
    envs = container_settings()
    writer_name, writer = compose_role("writer")
    worker_name, worker = compose_role("run")
    writer_settings = settings_from(envs[f"compose {writer_name}"])
    worker_settings = settings_from(envs[f"compose {worker_name}"])

    # The writer: one replica, the store on a named volume, its port on the host's loopback for `sql --url`.
    assert writer.get("deploy", {}).get("replicas", 1) == 1 and "scale" not in writer
    data_mounts = [src for src, target in compose_mounts(writer) if target == str(writer_settings.db.parent)]
    assert data_mounts and not is_bind(data_mounts[0]), "the store lives on a named volume"
    assert str(writer_settings.db).startswith("/data/")
    assert writer["ports"] == [f"127.0.0.1:{writer_settings.web_port}:{writer_settings.web_port}"]
    assert writer["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "stop_grace_period" in writer
    assert writer_settings.writer_url is None

    # The workers: no volume (read-only certificates aside) and no host port (so they scale), committing to the
    # writer service's port.
    assert all(
        is_bind(src) and str(v).endswith(":ro")
        for v, (src, _) in zip(worker.get("volumes", []), compose_mounts(worker), strict=True)
    )
    assert not worker.get("ports") and "container_name" not in worker
    assert worker_settings.writer_url is not None
    assert writer_url_target(worker_settings.writer_url) == (writer_name, writer_settings.web_port)
    assert worker["depends_on"][writer_name]["condition"] == "service_healthy"
    replicas = worker.get("deploy", {}).get("replicas", 1)
    assert 1 <= replicas <= worker_settings.topic_partitions, "useful workers are at most the partition count"

    # Every container that may create the topics creates them alike, and the demo waits for them.
    partitions = {where: settings_from(env).topic_partitions for where, env in envs.items()}
    assert len(set(partitions.values())) == 1, f"the containers disagree on the partition count: {partitions}"
    simulate = guardstream_services()["simulate"]
    assert simulate["depends_on"][writer_name]["condition"] == "service_healthy"
    assert (
        env_map(simulate["environment"])["GUARDSTREAM_BOOTSTRAP"]
        == env_map(worker["environment"])["GUARDSTREAM_BOOTSTRAP"]
    )


def test_kubernetes_runs_one_writer_owning_the_store_and_a_worker_deployment_pointed_at_it() -> None:
    objects = k8s_objects()
    envs = container_settings()
    writer_settings = settings_from(envs["kubernetes StatefulSet"])
    worker_settings = settings_from(envs["kubernetes Deployment"])

    statefulset = workload(objects, "writer")
    assert container_of(objects, "writer")["args"][0] == "writer"
    assert statefulset["spec"]["replicas"] == 1
    assert writer_settings.writer_url is None, "the writer must not be pointed at a writer"
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container_of(objects, "writer")["volumeMounts"]}
    assert any(str(writer_settings.db.parent) == mounts.get(claim) for claim in claims), "the file must be on the claim"
    writer_service = service_for(objects, "writer")
    assert statefulset["spec"]["serviceName"] == writer_service["metadata"]["name"]
    assert writer_service["spec"].get("clusterIP") != "None", "workers hold the writer's address: keep it stable"

    deployment = workload(objects, "worker")
    assert container_of(objects, "worker")["args"][0] == "run"
    assert 1 <= deployment["spec"]["replicas"] <= worker_settings.topic_partitions
    pod = deployment["spec"]["template"]["spec"]
    assert all(set(v) == {"name", "emptyDir"} or set(v) == {"name", "secret"} for v in pod.get("volumes", [])), (
        "workers keep nothing on disk"
    )
    assert worker_settings.writer_url is not None
    host, port = writer_url_target(worker_settings.writer_url)
    assert host == writer_service["metadata"]["name"]
    assert [p["port"] for p in writer_service["spec"]["ports"]] == [port]
    assert port == writer_settings.web_port  # the Service's targetPort is the writer's `web` container port

    # Selectors: each workload owns only its own pods; both keep the name label the ServiceMonitor's job uses.
    for role in WORKLOAD_KINDS:
        assert selects(workload(objects, role)["spec"]["selector"]["matchLabels"], pod_labels(objects, role))
        assert pod_labels(objects, role)["app.kubernetes.io/name"] == "guardstream"
    assert not selects(workload(objects, "writer")["spec"]["selector"]["matchLabels"], pod_labels(objects, "worker"))
    assert not selects(workload(objects, "worker")["spec"]["selector"]["matchLabels"], pod_labels(objects, "writer"))
    for budget in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels(objects, "worker"))
        assert not selects(budget["spec"]["selector"]["matchLabels"], pod_labels(objects, "writer"))


def test_the_docs_name_real_compose_services_and_kubernetes_objects() -> None:
    """`kubectl ... statefulset/NAME`, `deployment/NAME`, `svc/NAME`, `pod/NAME-0`, `docker compose exec NAME` and
    `--scale NAME=N` in docs/deploy.md name what the files define."""
    text = DOCS.read_text()
    objects = k8s_objects()
    kinds = {"statefulset": "StatefulSet", "deployment": "Deployment", "svc": "Service", "service": "Service"}
    # Ours all start with guardstream (the monitoring stack's, such as svc/prometheus-operated, do not).
    refs = re.findall(r"\b(statefulset|deployment|svc|service)/(guardstream[a-z0-9-]*)", text)
    assert refs, "the collector found no kubectl reference"
    for kind, name in refs:
        named(objects, kinds[kind], name)
    statefulsets = {o["metadata"]["name"] for o in objects if o["kind"] == "StatefulSet"}
    for pod in re.findall(r"(?<![\w-])(guardstream(?:-[a-z]+)*)-\d+\b", text):  # not claims (data-...-0)
        assert pod in statefulsets, f"docs name a pod of {pod}, which is no StatefulSet"
    services = set(compose()["services"])
    compose_refs = re.findall(r"docker compose (?:exec|logs|restart|stop) ([a-z0-9-]+)", text)
    compose_refs += re.findall(r"--scale ([a-z0-9-]+)=", text)
    assert compose_refs, "the collector found no Compose service reference"
    for name in compose_refs:
        assert name in services, f"docs name Compose service {name}, which compose.yaml does not define"
    assert f"--scale {compose_role('run')[0]}=" in text, "the docs show how to scale the workers"
    assert f"deployment/{workload(objects, 'worker')['metadata']['name']} --replicas=" in text


# --- who may ask: nothing served beyond loopback without TLS and credentials ------------------------------------
#
# guardstream refuses at start-up to serve beyond loopback without TLS and credentials (streams/web_security.py);
# these checks make a deploy file that would hit that refusal, or that scrapes guardstream in clear text or without
# credentials, fail here first. Each returns the problems it finds; the tests below also feed them broken copies,
# so they are known to catch what they look for.

SERVING_COMMANDS = {"run", "writer"}  # the subcommands that serve /metrics, /status, /query, ...


def secret_literal(value: str) -> bool:
    """A password written into a Compose file instead of interpolated from the environment (or a .env file)."""
    return not re.fullmatch(r"\$\{[A-Z0-9_]+(:?[?-][^}]*)?\}", value)


def serving_problems(where: str, argv: list[str], env: dict[str, str], mounted: Any) -> list[str]:
    """What is wrong with a container running `guardstream ARGV` in ENV; ``mounted(path)`` says whether a file
    the settings name is provided to the container (a bind mount, a Secret volume)."""
    if not argv or argv[0] not in SERVING_COMMANDS:
        return []
    try:
        settings = settings_from(env)
    except ValidationError as exc:
        return [f"{where}: {exc}"]
    problems = []
    try:
        check_serving(settings, load_files=False)
    except ServingRefused as exc:
        problems.append(f"{where}: `guardstream {argv[0]}` would refuse to start: {exc}")
    if is_loopback(settings.web_host):
        return problems
    files = {
        "GUARDSTREAM_WEB_TLS_CERT": settings.web_tls_cert,
        "GUARDSTREAM_WEB_TLS_KEY": settings.web_tls_key,
        "GUARDSTREAM_WEB_TLS_CLIENT_CAFILE": settings.web_tls_client_cafile,
        "GUARDSTREAM_WEB_TLS_CAFILE": settings.web_tls_cafile if settings.writer_url else None,
    }
    if settings.web_tls_cert and not settings.web_tls_key:  # only a PEM holding both would do; none here does
        problems.append(f"{where}: GUARDSTREAM_WEB_TLS_CERT without GUARDSTREAM_WEB_TLS_KEY")
    if settings.writer_url and not settings.writer_url.startswith("https:"):
        problems.append(f"{where}: GUARDSTREAM_WRITER_URL {settings.writer_url} is not https")
    for name, path in files.items():
        if path is not None and not mounted(PurePosixPath(str(path))):
            problems.append(f"{where}: {name}={path} is not mounted into the container")
    return problems


def compose_serving_problems(spec: dict[str, Any]) -> list[str]:
    problems = []
    for name, service in spec["services"].items():
        if not (isinstance(service.get("build"), dict) and service["build"].get("dockerfile") == "deploy/Dockerfile"):
            continue
        env = env_map(service.get("environment"))
        password = env.get("GUARDSTREAM_WEB_PASSWORD")
        if password and secret_literal(password):
            problems.append(f"compose {name}: GUARDSTREAM_WEB_PASSWORD is written into the file, not interpolated")

        def mounted(path: PurePosixPath, service: dict[str, Any] = service) -> bool:
            try:
                return host_path(service, str(path)).parent.is_dir()
            except AssertionError:
                return False

        problems += serving_problems(f"compose {name}", list(service.get("command") or ["run"]), env, mounted)
    return problems


def k8s_serving_problems(objects: list[dict[str, Any]]) -> list[str]:
    problems = []
    for role, kind in WORKLOAD_KINDS.items():
        container = container_of(objects, role)
        for item in container.get("env", []):
            if item["name"] == "GUARDSTREAM_WEB_PASSWORD" and "secretKeyRef" not in item.get("valueFrom", {}):
                problems.append(f"{kind}: GUARDSTREAM_WEB_PASSWORD does not come from a Secret")
        volumes = {v["name"]: v for v in workload(objects, role)["spec"]["template"]["spec"].get("volumes", [])}

        def mounted(path: PurePosixPath, container: dict[str, Any] = container, volumes: Any = volumes) -> bool:
            for mount in container.get("volumeMounts", []):
                base = PurePosixPath(mount["mountPath"])
                secret = volumes.get(mount["name"], {}).get("secret")
                if secret and base in path.parents:
                    held = named(objects, "Secret", secret["secretName"])["stringData"]
                    return str(path.relative_to(base)) in held
            return False

        problems += serving_problems(kind, list(container["args"]), k8s_container_env(objects, role), mounted)
    return problems


def scrape_jobs() -> dict[Path, list[dict[str, Any]]]:
    """Every Prometheus scrape config under deploy/ (today Compose's prometheus.yml)."""
    found = {}
    for path in YAML_FILES:
        for doc in docs_of(path):
            if "scrape_configs" in doc:
                found[path] = doc["scrape_configs"]
    return found


def scrapes_guardstream(job: dict[str, Any], services: set[str]) -> bool:
    hosts = {t.rsplit(":", 1)[0] for s in job.get("static_configs", []) for t in s.get("targets", [])}
    hosts |= {n for d in job.get("dns_sd_configs", []) for n in d.get("names", [])}
    return job["job_name"] == "guardstream" or bool(hosts & services)


def compose_scrape_problems(spec: dict[str, Any], jobs: list[dict[str, Any]], config: Path) -> list[str]:
    """Scrapes of guardstream: HTTPS, the CA checked, basic auth with the password the containers get."""
    problems = []
    services = {n for n, s in spec["services"].items() if isinstance(s.get("build"), dict)}
    prometheus = spec["services"]["prometheus"]
    config_dir = PurePosixPath(flag(prometheus["command"], "--config.file")).parent
    mounted_secrets = {
        str(config_dir / s["target"]) if not s["target"].startswith("/") else s["target"]: s["source"]
        for s in prometheus.get("secrets", [])
        if isinstance(s, dict)
    }
    passwords = {env_map(s.get("environment")).get("GUARDSTREAM_WEB_PASSWORD") for n, s in spec["services"].items()}
    for job in jobs:
        if not scrapes_guardstream(job, services):
            continue
        where = f"{config.name} job {job['job_name']}"
        if job.get("scheme") != "https":
            problems.append(f"{where}: scheme is {job.get('scheme', 'http')}, not https")
        tls = job.get("tls_config") or {}
        if not tls.get("ca_file") or tls.get("insecure_skip_verify"):
            problems.append(f"{where}: the server certificate is not checked against a CA (tls_config.ca_file)")
        else:
            try:
                host_path(prometheus, str(config_dir / tls["ca_file"]))
            except AssertionError:
                problems.append(f"{where}: tls_config.ca_file {tls['ca_file']} is not mounted")
        auth = job.get("basic_auth") or {}
        if not auth.get("username") or "password" in auth or not auth.get("password_file"):
            problems.append(f"{where}: no basic_auth with a username and a password_file")
            continue
        password_file = str(config_dir / auth["password_file"])
        source = mounted_secrets.get(password_file)
        secret = (spec.get("secrets") or {}).get(source or "", {})
        if secret.get("environment") is None or f"${{{secret['environment']}" not in " ".join(map(str, passwords)):
            problems.append(f"{where}: password_file is not the guardstream containers' GUARDSTREAM_WEB_PASSWORD")
    return problems


def k8s_scrape_problems(objects: list[dict[str, Any]]) -> list[str]:
    problems = []
    writer = container_of(objects, "writer")
    refs = {
        item["name"]: (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
        for item in writer["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    volumes = workload(objects, "writer")["spec"]["template"]["spec"]["volumes"]
    tls_secrets = {v["secret"]["secretName"] for v in volumes if "secret" in v}
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            where = f"ServiceMonitor {monitor['metadata']['name']} port {endpoint.get('port')}"
            if endpoint.get("scheme") != "https":
                problems.append(f"{where}: scheme is {endpoint.get('scheme', 'http')}, not https")
            tls = endpoint.get("tlsConfig") or {}
            ca = (tls.get("ca") or {}).get("secret") or {}
            if tls.get("insecureSkipVerify") or ca.get("name") not in tls_secrets:
                problems.append(f"{where}: the certificate is not checked against the CA of the pods' TLS Secret")
            auth = endpoint.get("basicAuth") or {}
            for field, setting in (("username", "GUARDSTREAM_WEB_USERNAME"), ("password", "GUARDSTREAM_WEB_PASSWORD")):
                ref = auth.get(field) or {}
                if (ref.get("name"), ref.get("key")) != refs.get(setting):
                    problems.append(f"{where}: basicAuth.{field} is not the Secret key the pods read {setting} from")
    return problems


def test_no_deploy_file_serves_beyond_loopback_without_tls_and_credentials() -> None:
    """Every container that serves (`run`, `writer`) either stays on loopback or has TLS with its files mounted and
    basic auth or client certificates, the password from a Secret / the environment; workers call an https writer."""
    assert not compose_serving_problems(compose())
    assert not k8s_serving_problems(k8s_objects())
    # The image alone serves on loopback (its ENV sets no GUARDSTREAM_WEB_HOST), as the start-up check allows.
    joined = DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
    env_lines = [line for line in joined if re.match(r"(ENV|ARG)\s", line)]
    assert env_lines and not any("GUARDSTREAM_WEB_" in line for line in env_lines)


def test_every_scrape_of_guardstream_is_https_with_credentials() -> None:
    jobs = scrape_jobs()
    assert set(jobs) == {COMPOSE_DIR / "prometheus.yml"}, "a new scrape config: make the check below read it"
    for path, scrape in jobs.items():
        assert not compose_scrape_problems(compose(), scrape, path)
    assert not k8s_scrape_problems(k8s_objects())


def test_the_serving_and_scrape_checks_catch_what_they_look_for() -> None:
    """The two checks above fail on copies of the files with a credential, TLS or scrape setting taken out."""
    writer_name, _ = compose_role("writer")
    worker_name, _ = compose_role("run")
    breaks: list[tuple[str, Any]] = [
        ("no password", lambda env: env.pop("GUARDSTREAM_WEB_PASSWORD")),
        ("no credentials", lambda env: [env.pop(k) for k in ("GUARDSTREAM_WEB_USERNAME", "GUARDSTREAM_WEB_PASSWORD")]),
        ("no TLS", lambda env: [env.pop(k) for k in ("GUARDSTREAM_WEB_TLS_CERT", "GUARDSTREAM_WEB_TLS_KEY")]),
        ("a literal password", lambda env: env.update(GUARDSTREAM_WEB_PASSWORD="hunter2")),
        ("a certificate not mounted", lambda env: env.update(GUARDSTREAM_WEB_TLS_CERT="/nowhere/tls.crt")),
    ]
    for what, change in breaks:
        for name in (writer_name, worker_name):
            spec = compose()
            env = env_map(spec["services"][name]["environment"])
            change(env)
            spec["services"][name]["environment"] = env
            assert compose_serving_problems(spec), f"compose {name} with {what} passed"
    spec = compose()
    env = env_map(spec["services"][worker_name]["environment"])
    env["GUARDSTREAM_WRITER_URL"] = env["GUARDSTREAM_WRITER_URL"].replace("https:", "http:")
    spec["services"][worker_name]["environment"] = env
    assert compose_serving_problems(spec), "a worker calling the writer over http passed"

    for role in WORKLOAD_KINDS:
        for drop in ("GUARDSTREAM_WEB_PASSWORD", "GUARDSTREAM_WEB_TLS_KEY"):
            objects = k8s_objects()
            container = container_of(objects, role)
            container["env"] = [e for e in container["env"] if e["name"] != drop]
            named(objects, "ConfigMap", "guardstream-config")["data"].pop(drop, None)
            assert k8s_serving_problems(objects), f"{role} without {drop} passed"
        objects = k8s_objects()
        container_of(objects, role)["volumeMounts"] = [
            m for m in container_of(objects, role)["volumeMounts"] if m["name"] == "tmp"
        ]
        assert k8s_serving_problems(objects), f"{role} without the TLS Secret mounted passed"

    path, scrape = next(iter(scrape_jobs().items()))
    for key, value in (("scheme", "http"), ("basic_auth", None), ("tls_config", {"insecure_skip_verify": True})):
        broken = [dict(job) for job in scrape]
        for job in broken:
            if job["job_name"] == "guardstream":
                job.pop(key) if value is None else job.update({key: value})
        assert compose_scrape_problems(compose(), broken, path), f"a guardstream scrape with {key}={value} passed"
    for key in ("scheme", "basicAuth", "tlsConfig"):
        objects = k8s_objects()
        only(objects, "ServiceMonitor")["spec"]["endpoints"][0].pop(key)
        assert k8s_scrape_problems(objects), f"a ServiceMonitor without {key} passed"


# --- generated manifests ---------------------------------------------------------------------------------------


def test_prometheusrule_spec_is_rules_yml() -> None:
    rule = only(docs_of(K8S / build.PROMETHEUS_RULE), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_dashboard_configmaps_hold_the_generated_json_exactly() -> None:
    held = dashboard_data(docs_of(K8S / build.DASHBOARD_CONFIGMAPS))
    assert held == generated_dashboards()
    assert len(held) >= 4


def test_deploy_build_check_passes_on_the_committed_files() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deploy.build", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_build_check_fails_when_a_source_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "kubernetes"
    out.mkdir()
    for name in (build.PROMETHEUS_RULE, build.DASHBOARD_CONFIGMAPS):
        shutil.copy(K8S / name, out / name)
    monkeypatch.setattr(build, "KUBERNETES", out)
    assert build.main(["--check"]) == 0
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES.read_text().replace("expr: vector(0.02)", "expr: vector(0.03)"))
    monkeypatch.setattr(build, "RULES", rules)
    assert build.main(["--check"]) == 1, "a changed rules.yml must make the committed PrometheusRule stale"
    assert build.main([]) == 0
    assert build.main(["--check"]) == 0
    assert yaml.safe_load((out / build.PROMETHEUS_RULE).read_text())["spec"] == yaml.safe_load(rules.read_text())


# --- the tools that exist here ---------------------------------------------------------------------------------

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH (Debian prometheus)")


@needs_promtool
def test_promtool_accepts_the_rules_inside_the_prometheusrule(tmp_path: Path) -> None:
    spec = only(docs_of(K8S / build.PROMETHEUS_RULE), "PrometheusRule")["spec"]
    extracted = tmp_path / "prometheusrule-spec.yml"
    extracted.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run(["promtool", "check", "rules", str(extracted)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout)
    assert found and int(found.group(1)) == sum(len(g["rules"]) for g in spec["groups"]), result.stdout


@needs_promtool
def test_promtool_accepts_the_compose_prometheus_config_with_its_mounted_rules(tmp_path: Path) -> None:
    prometheus = compose()["services"]["prometheus"]
    etc = tmp_path / "etc-prometheus"
    etc.mkdir()
    for source, target in compose_mounts(prometheus):  # lay the bind mounts out as the container sees them
        if is_bind(source) and target.startswith("/etc/prometheus/"):
            copy = shutil.copytree if (COMPOSE_DIR / source).is_dir() else shutil.copy
            copy(COMPOSE_DIR / source, etc / PurePosixPath(target).name)
    config = etc / PurePosixPath(flag(prometheus["command"], "--config.file")).name
    result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@pytest.mark.skipif(
    shutil.which("amtool") is None, reason="amtool not on PATH (Debian prometheus-alertmanager; .ci/run installs it)"
)
def test_amtool_accepts_the_alertmanager_config() -> None:
    result = subprocess.run(
        ["amtool", "check-config", str(ALERTMANAGER)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH (its built-in kustomize renders)")
def test_kustomize_renders_every_manifest_with_the_generated_content_intact() -> None:
    rendered = rendered_kustomization()
    kinds = sorted(o["kind"] for o in rendered)
    assert {
        "StatefulSet",
        "Deployment",
        "Service",
        "ConfigMap",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    } <= set(kinds)
    assert "Secret" not in kinds, "a real Secret must not be applied from git (secret.example.yaml)"
    assert all("namespace" not in o["metadata"] for o in rendered), "the kustomization must stay namespace-agnostic"
    assert workload(rendered, "writer")["spec"]["replicas"] == 1
    assert only(rendered, "PrometheusRule")["spec"] == yaml.safe_load(RULES.read_text())
    assert dashboard_data(rendered) == generated_dashboards()
    for role in WORKLOAD_KINDS:
        image = container_of(rendered, role)["image"]
        assert re.fullmatch(r"\S+:\S+", image), f"the {role} image needs a tag, got {image}"
    assert container_of(rendered, "writer")["image"] == container_of(rendered, "worker")["image"]


def test_kubernetes_objects_validate_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (pip install kubernetes-validate; its schemas ship in the wheel)",
    )
    validated = set()
    for obj in k8s_objects():
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        validated.add(obj["kind"])
    assert {"StatefulSet", "Deployment", "Service", "ConfigMap", "NetworkPolicy", "Secret"} <= validated
