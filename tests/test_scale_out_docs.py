"""The operator's scale-out example (docs/scale-out/compose.yaml and its nginx.conf) agrees with the code.

The compose file cannot run on a machine without an image registry; what it says can be checked here: every
variable it gives mixauth is a setting, and the values load; the URLs name its own services with its own
credentials; the secret it mounts is the file JWT_SECRET_FILE names; nginx balances over exactly the mixauth
services, on the image's API port, and listens where compose publishes it. ``python3 -m tests.container``
runs the same nginx.conf in front of two containers of the image.
"""

from __future__ import annotations

import re
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from server.config import OPTIONS, load_settings

ROOT = Path(__file__).resolve().parent.parent
SCALE_OUT = ROOT / "docs" / "scale-out"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((SCALE_OUT / "compose.yaml").read_text())
    return loaded


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, written as a mapping or as a list of NAME=VALUE."""
    given = service.get("environment") or {}
    if isinstance(given, list):
        return dict(entry.partition("=")[::2] for entry in given)
    return {str(name): str(value) for name, value in given.items()}


def mixauth_services() -> dict[str, dict[str, Any]]:
    """The services built from this repository (compose's merge key gives every instance the same fields)."""
    services: dict[str, dict[str, Any]] = compose()["services"]
    built = {
        name: service
        for name, service in services.items()
        if (SCALE_OUT / str(service.get("build", "-"))).resolve() == ROOT
    }
    assert len(built) >= 2, "the example runs more than one instance"
    return built


def nginx_conf() -> str:
    return (SCALE_OUT / "nginx.conf").read_text()


def upstream_servers() -> list[tuple[str, int]]:
    """The ``server NAME:PORT`` lines of the upstream that the location proxies to."""
    text = nginx_conf()
    proxied = re.findall(r"proxy_pass http://([\w.-]+);", text)
    assert len(proxied) == 1
    block = re.search(rf"upstream {re.escape(proxied[0])} \{{(.*?)\}}", text, flags=re.DOTALL)
    assert block is not None, f"no upstream {proxied[0]}"
    return [(name, int(port)) for name, port in re.findall(r"^\s*server ([\w.-]+):(\d+)", block[1], re.MULTILINE)]


def test_every_variable_given_to_mixauth_is_a_setting() -> None:
    settings = {option.env for option in OPTIONS}
    for name, service in mixauth_services().items():
        unknown = set(environment(service)) - settings
        assert not unknown, f"{name}: not settings of server/config.py: {sorted(unknown)}"


def test_the_instances_settings_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What each instance starts with, its secret file in place: nothing the settings refuse."""
    monkeypatch.chdir(tmp_path)  # no config.toml of this checkout's
    secret = tmp_path / "jwt_secret"
    secret.write_text("s" * 64)
    for service in mixauth_services().values():
        environ = {**environment(service), "JWT_SECRET_FILE": str(secret)}
        settings = load_settings(None, environ)
        assert settings.database_url is not None
        assert settings.redis_url is not None
        assert settings.trusted_proxies


def test_the_urls_name_the_example_s_own_services_and_credentials() -> None:
    services = compose()["services"]
    postgres = environment(services["postgres"])
    for name, service in mixauth_services().items():
        env = environment(service)
        database = urlsplit(env["DATABASE_URL"])
        assert database.hostname in services, f"{name}: DATABASE_URL's host is no service"
        assert (database.username, database.password, database.path) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
            "/" + postgres["POSTGRES_DB"],
        ), f"{name}: DATABASE_URL is not the postgres service's user, password and database"
        assert urlsplit(env["REDIS_URL"]).hostname == "redis" in services, f"{name}: REDIS_URL's host"
        assert set(service.get("depends_on", {})) >= {"postgres", "redis"}, f"{name}: started before its backends"


def test_the_secret_file_is_the_one_compose_mounts() -> None:
    declared = compose().get("secrets", {})
    for name, service in mixauth_services().items():
        path = environment(service)["JWT_SECRET_FILE"]
        mounted = {f"/run/secrets/{secret}" for secret in service.get("secrets", [])}
        assert path in mounted, f"{name}: JWT_SECRET_FILE {path} is not a secret compose mounts"
        assert path.rsplit("/", 1)[1] in declared


def test_nginx_balances_over_every_instance_on_the_image_s_api_port() -> None:
    image_port = re.search(r"\bPORT=(\d+)", (ROOT / "Dockerfile").read_text())
    assert image_port is not None
    servers = upstream_servers()
    assert sorted(name for name, _ in servers) == sorted(mixauth_services())
    for name, port in servers:
        assert "PORT" not in environment(mixauth_services()[name])
        assert port == int(image_port[1]), f"{name}:{port} is not the image's API port"


def test_nginx_listens_on_the_port_compose_publishes_and_reads_this_file() -> None:
    balancer = compose()["services"]["nginx"]
    listens = [int(port) for port in re.findall(r"^\s*listen (\d+);", nginx_conf(), re.MULTILINE)]
    published = [int(str(mapping).rsplit(":", 1)[1]) for mapping in balancer["ports"]]
    assert listens == published
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in balancer["volumes"]
    assert set(balancer.get("depends_on", [])) == set(mixauth_services())


def test_nginx_does_not_forward_the_metrics_port() -> None:
    assert not [port for _, port in upstream_servers() if port == 2201]


def test_the_trusted_proxies_are_the_example_s_own_network() -> None:
    """nginx is on the network compose declares: trusting that subnet names the client behind it, on
    Docker and podman alike (a project network from the engine's pool would differ between the two)."""
    subnets = [ip_network(entry["subnet"]) for entry in compose()["networks"]["default"]["ipam"]["config"]]
    for name, service in mixauth_services().items():
        trusted = [ip_network(entry.strip()) for entry in environment(service)["TRUSTED_PROXIES"].split(",")]
        for subnet in subnets:
            assert any(
                subnet.version == network.version and subnet.subnet_of(network)  # type: ignore[arg-type]
                for network in trusted
            ), f"{name}: TRUSTED_PROXIES does not cover the example's network {subnet}"
