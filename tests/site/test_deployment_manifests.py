"""The deployment layout in deploy/ is consistent with the code (no container engine runs here).

Every manifest parses; every environment variable given to our processes is one the site (or the
Daphne launcher) reads; every command exists; the image, ports, probes and service names agree.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands
from django.urls import resolve

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
APP_SERVICES = {"web", "worker", "beat", "migrate"}
THIRD_PARTY_IMAGES = ("postgres:", "redis:", "nginx:")
PORT = 8000

_READ_ENV = re.compile(
    r"""(?:os\.environ\.get|_env_bool|_env_list|env=)\(?\s*["']([A-Z][A-Z0-9_]+)["']"""
)


def _variables_read(path: Path) -> set[str]:
    return set(_READ_ENV.findall(path.read_text()))


READ_BY_SETTINGS = _variables_read(ROOT / "ccgsc_site" / "settings.py")
READ_BY_LAUNCHER = _variables_read(ROOT / "scripts" / "daphne_launcher.py")
KNOWN = READ_BY_SETTINGS | READ_BY_LAUNCHER


def _load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _check_command(command: list[str]) -> None:
    """A command our image runs: the launcher, manage.py commands, or the Celery app."""
    if command[:2] == ["sh", "-c"]:
        for part in command[2].split("&&"):
            _check_command(shlex.split(part))
        return
    if command[0] == "python" and command[1] == "manage.py":
        assert command[2] in get_commands(), command
    elif command[0] == "python":
        script = ROOT / command[1]
        assert script.is_file(), command
        if script.name == "daphne_launcher.py":
            assert command[command.index("--port") + 1] == str(PORT)
    elif command[0] == "celery":
        assert command[1:3] == ["-A", "ccgsc_site"]
        assert command[3] in {"worker", "beat"}
        assert (ROOT / "ccgsc_site" / "celery.py").is_file()
    else:
        pytest.fail(f"unknown command {command}")


def test_the_variables_read_are_found():
    # The parser must see the variables we know are read, or every later check is vacuous.
    assert {"DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "CCGSC_TRUSTED_PROXIES"} <= KNOWN
    assert "CCGSC_DAPHNE_PROCESSES" in READ_BY_LAUNCHER


def test_the_dockerfile_runs_the_launcher_on_the_published_port():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"EXPOSE {PORT}" in dockerfile
    assert '"scripts/daphne_launcher.py"' in dockerfile
    for name in re.findall(r"^ENV ((?:.|\n)*?)(?:\n\n|\nWORKDIR)", dockerfile, re.M)[0].split():
        if "=" in name:
            assert name.split("=")[0] in KNOWN | {
                "PYTHONUNBUFFERED",
                "PYTHONDONTWRITEBYTECODE",
                "PIP_NO_CACHE_DIR",
            }


def test_compose_layout():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == APP_SERVICES | {"proxy", "postgres", "redis"}
    for name in APP_SERVICES:
        service = services[name]
        assert service["image"] == "${CCGSC_IMAGE:-ccgsc:latest}"
        unknown = set(service["environment"]) - KNOWN
        assert not unknown, (name, unknown)
        _check_command(service["command"])
    assert services["beat"]["deploy"]["replicas"] == 1
    assert services["web"]["deploy"]["replicas"] >= 2
    assert services["worker"]["deploy"]["replicas"] >= 1
    assert services["web"]["expose"] == [str(PORT)]
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    # the proxy is the one trusted proxy, at the address the app is told to trust
    proxy_address = services["proxy"]["networks"]["backend"]["ipv4_address"]
    assert services["web"]["environment"]["CCGSC_TRUSTED_PROXIES"] == proxy_address
    assert services["web"]["environment"]["CCGSC_PROXY_SSL_HEADER"] == "X-Forwarded-Proto"
    nginx = (DEPLOY / "compose" / "nginx" / "nginx.conf").read_text()
    assert f"set $daphne web:{PORT};" in nginx
    assert "proxy_set_header Upgrade $http_upgrade;" in nginx
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in nginx
    assert "client_max_body_size" in nginx
    example = (DEPLOY / "compose" / "env.example").read_text()
    interpolated = set(re.findall(r"\$\{([A-Z_]+)[:?}-]", COMPOSE.read_text())) - {"CCGSC_IMAGE"}
    listed = set(re.findall(r"^([A-Z_]+)=", example, re.M))
    assert interpolated <= listed, interpolated - listed


@pytest.fixture(scope="module")
def kubernetes() -> dict[tuple[str, str], dict]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    documents = {}
    for resource in kustomization["resources"]:
        for doc in _load_all(KUBERNETES / resource):
            documents[(doc["kind"], doc["metadata"]["name"])] = doc
    for doc in _load_all(KUBERNETES / "secret.example.yaml"):
        documents[(doc["kind"], doc["metadata"]["name"])] = doc
    assert kustomization["images"][0]["name"] == "ccgsc"
    return documents


def _containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def test_kubernetes_has_every_part(kubernetes):
    kinds = set(kubernetes)
    assert {
        ("Deployment", "ccgsc-web"),
        ("Deployment", "ccgsc-worker"),
        ("Deployment", "ccgsc-beat"),
        ("Job", "ccgsc-migrate"),
        ("Service", "ccgsc-web"),
        ("Ingress", "ccgsc"),
        ("ConfigMap", "ccgsc-config"),
        ("Secret", "ccgsc-secrets"),
    } <= kinds
    beat = kubernetes[("Deployment", "ccgsc-beat")]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"


def test_kubernetes_environment_is_read_by_the_site(kubernetes):
    config = set(kubernetes[("ConfigMap", "ccgsc-config")]["data"])
    secrets = set(kubernetes[("Secret", "ccgsc-secrets")]["stringData"])
    assert not (config | secrets) - KNOWN, (config | secrets) - KNOWN
    for (kind, name), doc in kubernetes.items():
        if kind not in {"Deployment", "Job", "StatefulSet"}:
            continue
        if kind == "Deployment":
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert labels == doc["spec"]["selector"]["matchLabels"], name
        for container in _containers(doc):
            if container["image"].startswith(THIRD_PARTY_IMAGES):
                continue
            assert container["image"] == "ccgsc", name
            names = {variable["name"] for variable in container.get("env", [])}
            assert not names - KNOWN, (name, names - KNOWN)
            sources = {
                next(iter(source.values()))["name"] for source in container.get("envFrom", [])
            }
            assert sources == {"ccgsc-config", "ccgsc-secrets"}, name
            _check_command(container["command"])


def test_kubernetes_ports_probes_and_routing_agree(kubernetes):
    web = kubernetes[("Deployment", "ccgsc-web")]
    (container,) = _containers(web)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": PORT}
    allowed_hosts = kubernetes[("ConfigMap", "ccgsc-config")]["data"]["DJANGO_ALLOWED_HOSTS"]
    for probe in ("readinessProbe", "livenessProbe"):
        http_get = container[probe]["httpGet"]
        assert http_get["port"] in ports
        assert resolve(http_get["path"]).url_name in {"readyz", "healthz"}
        # the pod is reached directly: the host must be allowed, the path exempt from HTTPS
        assert http_get["httpHeaders"] == [{"name": "Host", "value": allowed_hosts}]
    service = kubernetes[("Service", "ccgsc-web")]
    assert service["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in ports
    backend = kubernetes[("Ingress", "ccgsc")]["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"]["name"] == "ccgsc-web"
    assert backend["service"]["port"]["name"] == service_port["name"]
    for name in ("redis", "postgres"):
        service = kubernetes[("Service", name)]
        assert service["spec"]["ports"][0]["targetPort"] == name
    config = kubernetes[("ConfigMap", "ccgsc-config")]["data"]
    assert config["REDIS_URL"].startswith("redis://redis:6379/")
    secrets = kubernetes[("Secret", "ccgsc-secrets")]["stringData"]
    assert "@postgres:5432/" in secrets["DATABASE_URL"]
