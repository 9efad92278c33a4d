"""The deployment files under deploy/ (Compose, Kubernetes, Prometheus, Alertmanager) and docs/deploy.md, checked
with what runs here: no Docker daemon and no cluster, so nothing is started, but every file parses, every path a
container mounts exists, every `guardstream ...` they run is a real command with real options, every GUARDSTREAM_*
variable is a real setting with a valid value, the generated manifests equal their sources, and promtool, amtool,
kubectl kustomize and kubernetes-validate accept what they can check."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from deploy import build
from streams.cli import app
from streams.settings import Settings

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


def worker_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = only(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


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
    container = worker_container(k8s_objects())
    assert "command" not in container, "keep the image's ENTRYPOINT (guardstream)"
    found.append(("statefulset", list(container["args"])))
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
    assert {"run", "simulate", "sql"} <= subcommands, f"the collector missed commands: {subcommands}"
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


def container_settings() -> dict[str, dict[str, str]]:
    """The environment each guardstream container gets, by where it is defined."""
    objects = k8s_objects()
    k8s_env: dict[str, str] = {}
    for cm in objects:
        if cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "guardstream-config":
            k8s_env.update(cm["data"])
    container = worker_container(objects)
    assert [ref["configMapRef"]["name"] for ref in container["envFrom"]] == ["guardstream-config"]
    secret = only(objects, "Secret")
    for item in container["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
            k8s_env[item["name"]] = secret["stringData"][ref["key"]]
        else:
            k8s_env[item["name"]] = item["value"]
    envs = {f"compose {name}": env_map(s.get("environment")) for name, s in guardstream_services().items()}
    envs["kubernetes"] = k8s_env
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


def test_the_worker_listens_beyond_loopback_and_scrapes_match_its_port() -> None:
    envs = container_settings()
    compose_worker = settings_from(envs["compose guardstream"])
    k8s_worker = settings_from(envs["kubernetes"])
    for worker in (compose_worker, k8s_worker):
        assert worker.web_host == "0.0.0.0", "Prometheus cannot scrape a worker bound to loopback"
        assert str(worker.db).startswith("/data/")

    services = compose()["services"]
    port = compose_worker.web_port
    assert f":{port}/status" in " ".join(services["guardstream"]["healthcheck"]["test"])
    scrape = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())["scrape_configs"]
    jobs = {job["job_name"]: job for job in scrape}
    assert jobs["guardstream"]["static_configs"][0]["targets"] == [f"guardstream:{port}"]

    objects = k8s_objects()
    container = worker_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"web": k8s_worker.web_port}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/status", "port": "web"}, probe
    app_source = (ROOT / "streams" / "app.py").read_text()
    assert '@app.page("/status")' in app_source and '@app.page("/metrics")' in app_source
    service = only(objects, "Service")
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("web", "web")]
    monitor = only(objects, "ServiceMonitor")
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("web", "/metrics")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # The rules' TargetDown / NoEvents alerts select job="guardstream": the ServiceMonitor must produce it.
    assert set(re.findall(r'job="([^"]+)"', RULES.read_text())) == {"guardstream"}
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "guardstream"
    policy = only(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= container_labels(objects).items()
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [k8s_worker.web_port]


def container_labels(objects: list[dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = only(objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    return labels


def test_one_worker_owns_the_store() -> None:
    services = compose()["services"]
    worker = services["guardstream"]
    assert worker.get("deploy", {}).get("replicas", 1) == 1 and "scale" not in worker
    data_mounts = [src for src, target in compose_mounts(worker) if target == "/data"]
    assert data_mounts and not is_bind(data_mounts[0]), "the store lives on a named volume"

    objects = k8s_objects()
    statefulset = only(objects, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 1
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in worker_container(objects)["volumeMounts"]}
    db = settings_from(container_settings()["kubernetes"]).db
    assert any(str(db.parent) == mounts.get(claim) for claim in claims), "the DuckDB file must be on the claim"
    assert statefulset["spec"]["serviceName"] == only(objects, "Service")["metadata"]["name"]


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
            shutil.copy(COMPOSE_DIR / source, etc / PurePosixPath(target).name)
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
    assert {"StatefulSet", "Service", "ConfigMap", "NetworkPolicy", "ServiceMonitor", "PrometheusRule"} <= set(kinds)
    assert "Secret" not in kinds, "a real Secret must not be applied from git (secret.example.yaml)"
    assert all("namespace" not in o["metadata"] for o in rendered), "the kustomization must stay namespace-agnostic"
    assert only(rendered, "StatefulSet")["spec"]["replicas"] == 1
    assert only(rendered, "PrometheusRule")["spec"] == yaml.safe_load(RULES.read_text())
    assert dashboard_data(rendered) == generated_dashboards()
    image = worker_container(rendered)["image"]
    assert re.fullmatch(r"\S+:\S+", image), f"the worker image needs a tag, got {image}"


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
    assert {"StatefulSet", "Service", "ConfigMap", "NetworkPolicy", "Secret"} <= validated
