"""The image, built and run for real with podman: ``python3 -m tests.container`` (CI runs it after the suite).

It builds the Dockerfile, then checks against running containers what a single-container deployment relies
on: the API documentation's three curl calls, the health check turning healthy, a non-root process, metrics
on their own port and not the API's, data and tokens surviving a new container on the same volume, SIGTERM
draining a request in flight, ``JWT_SECRET``, ``API_USER_CREATE_SCOPE`` and ``TRUSTED_PROXIES`` taken from
the environment, and an admin created with ``podman exec``. Then the scale-out example (docs/scale-out): two
containers on the host's network, one PostgreSQL database and one Redis key prefix made for the run, behind
Debian's nginx running the guide's own nginx.conf. It prints one line a check, and the image size and each
container's start-up time to healthy. It exits 1 on the first failed check, and 2 when podman cannot be
installed. ``--scale-out-only`` skips the single-container checks, ``--no-build`` reuses the image.

On a machine without them it installs Debian's podman, runc, debootstrap, curl and nginx-light (as root), and
builds a base image with debootstrap (Debian bookworm's python3, so no registry is needed), kept in podman's
image store for the next run. pip inside the build reaches packages through a wheel directory served on
loopback, the Dockerfile's ``PIP_FIND_LINKS`` and ``PIP_NO_INDEX`` build arguments. ``--base-image
python:3.12-slim`` uses a registry's image instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import jwt
import redis

from server.storage.postgres import unusable
from tests.conftest import (
    DEFAULT_TEST_DATABASE_URL,
    REDIS_DEFAULT_TEST_URL,
    database_url,
    delete_redis_keys,
    free_port,
    redis_keys,
)

Completed = subprocess.CompletedProcess[str]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "localhost/mixauth-base:bookworm"
DEFAULT_TAG = "localhost/mixauth:test"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# What works on machines without systemd and with cgroups in hybrid mode: runc, cgroupfs, no default ulimits.
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n'
# The imported base image has no environment of its own: give it Debian's PATH.
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HEALTHY_WITHIN = 60.0
# How a careful operator runs it: nothing writable but the volume (no tmpfs either, as with Docker's
# --read-only), no capabilities, no privilege gain.
HARDENED = ("--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL", "--security-opt=no-new-privileges")
ADMIN = {"email": "admin@example.com", "password": "admin-password"}
SEED = {"username": "abc@example.com", "email": "abc@example.com", "password": "abc321"}


class CheckFailed(Exception):
    pass


def check(condition: object, what: str) -> None:
    """A check worth a line of the report."""
    check_silent(condition, what)
    print(f"ok    {what}", flush=True)


def check_silent(condition: object, what: str) -> None:
    """A precondition of a check: reported only when it fails."""
    if not condition:
        raise CheckFailed(what)


def run_tool(command: Sequence[str], *, check: bool = True, timeout: float = 600, **kwargs: Any) -> Completed:
    """Run a command, its output captured; unless told otherwise a failure ends the run with its stderr's tail."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and result.returncode != 0:
        raise CheckFailed(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result


class Podman:
    def __init__(self, conf: Path) -> None:
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def __call__(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> Completed:
        stdin = subprocess.DEVNULL if input is None else None
        return run_tool(["podman", *args], input=input, stdin=stdin, check=check, env=self.env, timeout=timeout)

    def out(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        return self(*args, input=input, timeout=timeout).stdout.strip()


# The tools the test runs, and the Debian package of each (nginx: the balancer of the scale-out check).
PACKAGES = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap", "curl": "curl", "nginx": "nginx-light"}


def ensure_packages() -> None:
    missing = [package for tool, package in PACKAGES.items() if shutil.which(tool) is None]
    if not missing:
        return
    print(f"..    installing {' '.join(missing)} from Debian", flush=True)
    install = ["apt-get", "install", "-y", "-qq", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if run_tool(install, env=env, check=False).returncode != 0:
        run_tool(["apt-get", "update", "-qq"], env=env)
        run_tool(install, env=env)


def apt_mirror(suite: str = "bookworm", sources: Sequence[Path] = APT_SOURCES) -> str | None:
    """The Debian archive this machine's apt uses for ``suite`` (main), read from apt's own sources: the
    one-line ``deb URI SUITE COMPONENTS`` form and the deb822 ``.sources`` form. None when apt names none."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(path for path in source.iterdir() if path.suffix in {".list", ".sources"})
        elif source.is_file():
            files.append(source)
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields: dict[str, list[str]] = {}
                for line in stanza.splitlines():
                    name, colon, value = line.partition(":")
                    if colon and not line.startswith((" ", "#")):
                        fields[name.strip().lower()] = value.split()
                if (
                    "deb" in fields.get("types", [])
                    and suite in fields.get("suites", [])
                    and "main" in fields.get("components", [])
                    and fields.get("enabled", ["yes"]) != ["no"]
                    and fields.get("uris")
                ):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()  # without [options]
                if len(words) >= 4 and words[0] == "deb" and words[2] == suite and "main" in words[3:]:
                    return words[1]
    return None


def ensure_base_image(podman: Podman, tag: str, mirror: str, work: Path) -> None:
    """Debian bookworm with python3 and its venv module, made with debootstrap once per machine."""
    if podman("image", "exists", tag, check=False).returncode == 0:
        print(f"..    base image {tag}: cached", flush=True)
        return
    print(f"..    base image {tag}: debootstrap from {mirror} (a few minutes, once per machine)", flush=True)
    rootfs = work / "rootfs"
    run_tool(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(rootfs), mirror],
        timeout=1800,
    )
    for clutter in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        shutil.rmtree(rootfs / clutter, ignore_errors=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    try:
        run_tool(
            ["podman", "import", "--change", f"ENV PATH={DEBIAN_PATH}", "--change", 'CMD ["python3"]', "-", tag],
            stdin=tar.stdout,
            env=podman.env,
        )
    finally:
        tar.wait()
    shutil.rmtree(rootfs)


# pip evaluates dependency markers against the Python running it, not --python-version: what a dependency asks
# for only on an older Python than this one (redis-py's async-timeout before 3.11.3; Debian bookworm has 3.11.2)
# is fetched as well, in case the image's Python is that old.
BACKPORTS = ("async-timeout>=4.0.3",)


def wheelhouse(podman: Podman, base: str, directory: Path) -> None:
    """mixauth's wheel and its dependencies' wheels for the base image's Python, for a build without an index."""
    version = podman.out("run", "--rm", base, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    for command in (
        ["wheel", "--no-deps", "-w", str(directory), str(ROOT)],
        # setuptools: the build backend, which pip needs to build mixauth inside the image.
        ["download", "-d", str(directory), "--only-binary=:all:", "--python-version", version,
         "--find-links", str(directory), "mixauth[uvloop]", "setuptools>=77", *BACKPORTS],
    ):  # fmt: skip
        run_tool([*pip, *command])


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()


@dataclass
class Answer:
    status: int
    body: Any


def call(
    url: str, method: str = "GET", body: object = None, token: str | None = None, forwarded_for: str | None = None
) -> Answer:
    request = urllib.request.Request(url, method=method)  # noqa: S310 - a loopback http URL
    if forwarded_for is not None:
        request.add_header("X-Forwarded-For", forwarded_for)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, data, timeout=30) as response:  # noqa: S310
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    return Answer(status, json.loads(raw) if raw.startswith((b"{", b"[")) else raw.decode())


def curl(*args: str) -> Answer:
    """One curl call as the documentation writes it; the status comes from ``-w``."""
    result = run_tool(["curl", "-sS", "-w", "\n%{http_code}", *args], timeout=30)
    raw, _, status = result.stdout.rpartition("\n")
    return Answer(int(status), json.loads(raw))


class Container:
    """One detached container of the image, its API port and its metrics port (2201, which an operator
    publishes only towards the scraper) published on free loopback ports."""

    def __init__(self, podman: Podman, image: str, name: str, volume: str, *options: str, **env: str) -> None:
        self.podman, self.image, self.name, self.volume, self.env = podman, image, name, volume, env
        self.options = options
        self.port = 0
        self.metrics_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self) -> float:
        """Run it, then the seconds until its HEALTHCHECK first passes (podman runs it on request here)."""
        variables = [arg for key, value in self.env.items() for arg in ("-e", f"{key}={value}")]
        began = time.monotonic()
        self.podman("run", "-d", "--name", self.name, *self.placement(), *self.options, *variables, self.image)
        while self.podman("healthcheck", "run", self.name, check=False).returncode != 0:
            if time.monotonic() - began > HEALTHY_WITHIN:
                raise CheckFailed(f"{self.name} not healthy after {HEALTHY_WITHIN:.0f} s:\n{self.logs()}")
            time.sleep(0.05)
        return time.monotonic() - began

    def placement(self) -> list[str]:
        """The options that say where it listens and keeps its data: new free ports, the volume."""
        self.port, self.metrics_port = free_port(), free_port()
        return [
            "-p", f"127.0.0.1:{self.port}:2200", "-p", f"127.0.0.1:{self.metrics_port}:2201",
            "-v", f"{self.volume}:/data",
        ]  # fmt: skip

    def health(self) -> str:
        return self.podman.out("inspect", "--format", "{{.State.Health.Status}}", self.name)

    def exec(self, *command: str, input: str | None = None) -> str:
        interactive = ["--interactive"] if input is not None else []
        return self.podman.out("exec", *interactive, self.name, *command, input=input)

    def logs(self) -> str:
        """Everything the server wrote, stdout (its JSON log) and stderr (where nothing should be) alike."""
        written = self.podman("logs", self.name)
        return (written.stdout + written.stderr).strip()

    def stop(self) -> tuple[int, float]:
        """SIGTERM (the image's STOPSIGNAL), then its exit code and how long the stop took."""
        began = time.monotonic()
        self.podman("stop", "--time", "30", self.name, timeout=60)
        took = time.monotonic() - began
        return int(self.podman.out("inspect", "--format", "{{.State.ExitCode}}", self.name)), took

    def remove(self) -> None:
        self.podman("rm", "--force", self.name, check=False)


class HostContainer(Container):
    """A container on the host's network (``--network host``), as an instance of a scale-out deployment runs
    beside its peers: it listens on loopback, on a free port of the host for the API (PORT) and another for
    the metrics (METRICS_PORT)."""

    def placement(self) -> list[str]:
        self.port, self.metrics_port = free_port(), free_port()
        return [
            "--network", "host", "-v", f"{self.volume}:/data", "-e", "HOST=127.0.0.1", "-e", f"PORT={self.port}",
            "-e", "METRICS_HOST=127.0.0.1", "-e", f"METRICS_PORT={self.metrics_port}",
        ]  # fmt: skip


def log_events(logs: str) -> list[str]:
    """The events of a container's log, checking every line is one JSON object."""
    events = []
    for line in logs.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        check_silent(isinstance(record, dict) and "event" in record, f"a log line that is not a JSON event: {line}")
        events.append(str(record["event"]))
    return events


def check_image(podman: Podman, image: str) -> None:
    inspected = json.loads(podman.out("image", "inspect", image))[0]
    config = inspected["Config"]
    user = config.get("User", "")
    check(user and user.split(":")[0] not in ("0", "root"), f"the image runs as a non-root user ({user})")
    check(config.get("StopSignal") == "SIGTERM", "its STOPSIGNAL is SIGTERM")
    test = (inspected.get("Healthcheck") or config.get("Healthcheck") or {}).get("Test")  # podman's place, Docker's
    check(test == ["CMD", "python3", "-m", "server.healthcheck"], "its HEALTHCHECK asks the readiness endpoint")
    ports = config.get("ExposedPorts", {})
    declared = "/data" in config.get("Volumes", {}) and "2200/tcp" in ports and "2201/tcp" in ports
    check(declared, "it declares the /data volume, the API's port 2200 and the metrics port 2201")
    baked = [entry for entry in config.get("Env", []) if entry.startswith(("JWT_SECRET", "PIP_"))]
    check(not baked, "no JWT_SECRET nor PIP_* build argument in its environment")
    probe = (
        "import importlib.util, os; "
        "print(sorted(os.listdir('/data')), os.path.exists('/src'), importlib.util.find_spec('pip') is None)"
    )
    listing = podman.out("run", "--rm", image, "python3", "-c", probe)
    check(listing == "[] False True", "its /data is empty, and neither the sources nor pip are in it")


def check_seed_calls(url: str, via: str = "") -> str:
    """The API documentation's three curl calls, pointed at ``url`` (a container, or the balancer: ``via``
    says which in the report); the token, for later."""
    created = curl(
        "-XPOST", f"{url}/user", "-H", "Content-type: application/json",
        "-d", '{ "username": "abc@example.com", "email": "abc@example.com", "password": "abc321" }',
    )  # fmt: skip
    check(created.status == 200 and set(created.body) == {"token"}, f"curl -XPOST /user{via}: 200 {{token}}")
    signed_in = curl(
        "-XPOST", f"{url}/user/auth", "-H", "Content-type: application/json",
        "-d", '{ "username": "abc@example.com", "password": "abc321" }',
    )  # fmt: skip
    user = signed_in.body.get("user", {})
    check(
        signed_in.status == 200 and user.get("username") == SEED["username"] and signed_in.body.get("token"),
        f"curl -XPOST /user/auth{via}: 200 {{user, token}}",
    )
    token: str = signed_in.body["token"]
    current = curl(f"{url}/user", "-H", f"Authorization: Bearer {token}")
    check(
        current.status == 200 and current.body["id"] == user["id"] and current.body["scope"] == ["user"],
        f"curl /user with the Bearer token{via}: 200, the same user",
    )
    return token


def check_process(container: Container) -> None:
    status = container.exec("cat", "/proc/1/status")
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    check(set(uids) == {"10001"}, f"the server (pid 1) runs as uid {uids[0]}, not root")
    modes = container.exec("stat", "-c", "%a %U %n", "/data", "/data/mixauth.sqlite3", "/data/jwt-secret")
    check(
        all(line.split()[:2] in (["700", "mixauth"], ["600", "mixauth"]) for line in modes.splitlines()),
        "the data directory is 0700 and its files 0600, owned by that user",
    )


def check_untrusted_forwarded_for(container: Container) -> None:
    wrong = {"username": SEED["username"], "password": "not-the-password"}
    check_silent(call(f"{container.url}/user/auth", "POST", wrong, forwarded_for="203.0.113.9").status == 403, "403")
    failed = [json.loads(line) for line in container.logs().splitlines() if '"user.signin.failed"' in line]
    check_silent(len(failed) == 1, f"one user.signin.failed line, not {len(failed)}")
    seen = failed[0]["client_ip"]
    check(seen != "203.0.113.9", f"without TRUSTED_PROXIES a client's X-Forwarded-For is ignored (client_ip {seen})")


def check_metrics(container: Container) -> None:
    """Metrics on their own port (2201, METRICS_HOST=0.0.0.0 in the image), not on the API's."""
    check(call(f"{container.url}/metrics").status == 404, "the API port does not serve /metrics")
    scraped = call(f"{container.metrics_url}/metrics")
    check(scraped.status == 200 and "mixauth_build_info" in scraped.body, "port 2201 serves /metrics")


def check_drain(container: Container) -> None:
    """A signup still hashing when the container is stopped is answered, and the server exits 0."""
    body = {"username": "late", "email": "late@example.com", "password": "late-password"}
    answers: list[Answer] = []
    request = threading.Thread(target=lambda: answers.append(call(f"{container.url}/user", "POST", body)))
    request.start()
    deadline = time.monotonic() + 30
    while "mixauth_password_hash_busy_workers 1.0" not in call(f"{container.metrics_url}/metrics").body:
        check_silent(time.monotonic() < deadline, "the signup never reached the hashing pool")
        time.sleep(0.01)
    code, took = container.stop()
    request.join(timeout=30)
    check(answers and answers[0].status == 200, "a signup in flight at SIGTERM is answered 200")
    check(code == 0, f"the server drained and exited 0 within {took:.1f} s of SIGTERM")
    check(log_events(container.logs())[-1] == "server.stopped", "its last log line is server.stopped")


def check_environment(podman: Podman, image: str, volume: str) -> float:
    """JWT_SECRET, API_USER_CREATE_SCOPE and TRUSTED_PROXIES from the environment; an admin made with podman exec."""
    secret = secrets.token_urlsafe(48)
    # Published ports reach the container from the bridge's gateway: that is the proxy to trust here.
    gateway = podman.out("network", "inspect", "podman", "--format", "{{range .Subnets}}{{.Gateway}}{{end}}")
    env = {"JWT_SECRET": secret, "API_USER_CREATE_SCOPE": "admin", "TRUSTED_PROXIES": gateway}
    container = Container(podman, image, "mixauth-test-env", volume, *HARDENED, **env)
    try:
        healthy = container.start()
        written = podman("exec", container.name, "touch", "/opt/mixauth/probe", check=False)
        capabilities = container.exec("grep", "^CapEff:", "/proc/1/status").split()[1]
        check(
            "Read-only file system" in written.stderr and int(capabilities, 16) == 0,
            f"it serves with {' '.join(HARDENED)}: a read-only root, no capabilities",
        )
        url = container.url
        refused = call(f"{url}/user", "POST", {"username": "x", "email": "x@example.com", "password": "abc321"})
        check(refused.status == 401, "API_USER_CREATE_SCOPE=admin: a signup without a token is 401")
        admin_id = container.exec(
            "python3", "-m", "server", "create-user", "--username", "admin", "--email", ADMIN["email"],
            "--scope", "admin,user", "--password-stdin", input=ADMIN["password"] + "\n",
        )  # fmt: skip
        check(len(admin_id) == 24, f"podman exec ... create-user made the admin ({admin_id})")
        admin = call(f"{url}/user/auth", "POST", ADMIN)
        check(admin.status == 200 and admin.body["user"]["id"] == admin_id, "the admin signs in with the email")
        claims = jwt.decode(admin.body["token"], secret, algorithms=["HS256"])
        check(claims["id"] == admin_id, "the admin's token is signed with the JWT_SECRET given")
        now = int(time.time())
        forged = jwt.encode({"id": admin_id, "scope": ["admin"], "iat": now, "exp": now + 60}, secret, "HS256")
        check(call(f"{url}/user", token=forged).status == 200, "a token made with that secret is accepted")
        files = container.exec("ls", "-A", "/data").split()
        check("jwt-secret" not in files, "no secret is generated or written when JWT_SECRET is set")
        alice = {"username": "alice", "email": "alice@example.com", "password": "alice-password"}
        made = call(f"{url}/user", "POST", alice, token=admin.body["token"], forwarded_for="203.0.113.7")
        check(made.status == 200, "the admin's token creates a user")
        again = {"username": "bob", "email": "bob@example.com", "password": "bob-password"}
        check(call(f"{url}/user", "POST", again, token=made.body["token"]).status == 403, "a user's token is 403")
        logs = container.logs()
        created = [json.loads(line) for line in logs.splitlines() if '"user.created"' in line]
        check(
            [line.get("client_ip") for line in created] == ["203.0.113.7"],
            f"TRUSTED_PROXIES={gateway}: the client IP comes from X-Forwarded-For",
        )
        log_events(logs)
        leaked = [s for s in (secret, ADMIN["password"], "alice-password", made.body["token"], "$2b$") if s in logs]
        check(not leaked, "the logs hold no secret, password, token or hash")
        return healthy
    finally:
        container.remove()


def check_secret_file(podman: Podman, image: str, volume: str, work: Path) -> None:
    """JWT_SECRET_FILE: the secret read from a mounted file, as compose and Kubernetes mount secrets."""
    secret = secrets.token_urlsafe(48)
    path = work / "jwt_secret"
    path.write_text(secret + "\n")
    path.chmod(0o444)
    mount = ("-v", f"{path}:/run/secrets/jwt_secret:ro")
    container = Container(
        podman, image, "mixauth-test-secret-file", volume, *mount, JWT_SECRET_FILE="/run/secrets/jwt_secret"
    )
    try:
        container.start()
        admin = call(f"{container.url}/user/auth", "POST", ADMIN)
        check_silent(admin.status == 200, f"the admin signs in: {admin}")
        claims = jwt.decode(admin.body["token"], secret, algorithms=["HS256"])
        check(claims["id"] == admin.body["user"]["id"], "JWT_SECRET_FILE: tokens are signed with the mounted secret")
    finally:
        container.remove()


# The scale-out deployment of docs/scale-out/compose.yaml, with this host's PostgreSQL and Redis in place of
# the registry images that cannot be pulled here.
SCALE_OUT = ROOT / "docs" / "scale-out"
# How soon a change made through one instance is seen through another (its change listener's promise).
PROPAGATED_WITHIN = 1.0
READY = {"status": "ok", "database": "ok", "rate_limiter": "redis"}
SECRET_MOUNT = "/run/secrets/jwt_secret"


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A new, empty database on the test PostgreSQL server (MIXAUTH_TEST_DATABASE_URL, as the suite's), its
    URL; dropped on exit, whoever is still connected."""
    server_url = os.environ.get("MIXAUTH_TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)
    name = f"mixauth_container_{secrets.token_hex(4)}"

    async def execute(statement: str) -> None:
        connection = await asyncpg.connect(server_url, timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    try:
        asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CheckFailed(f"the test PostgreSQL is not usable: {unusable('use', server_url, exc)}") from None
    try:
        yield database_url(server_url, name)
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def scratch_redis_prefix() -> Iterator[tuple[str, str]]:
    """The test Redis (MIXAUTH_TEST_REDIS_URL) and a fresh key prefix in it, whose keys are deleted on exit."""
    url = os.environ.get("MIXAUTH_TEST_REDIS_URL", REDIS_DEFAULT_TEST_URL)
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0) as client:
            client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        where = urlsplit(url)  # the address only: the URL may hold a password
        raise CheckFailed(f"the test Redis at {where.hostname}:{where.port} is not usable: {exc}") from None
    prefix = f"mixauth-container-test:{secrets.token_hex(4)}:"
    try:
        yield url, prefix
    finally:
        delete_redis_keys(url, prefix)


def balancer_config(template: str, upstreams: Sequence[int], port: int, directory: Path) -> str:
    """The guide's nginx.conf for this host: its upstream servers ``mixauth-N:2200`` become the instances'
    loopback ports, ``listen 8080`` a free loopback port, and its pid file and temporary files go to
    ``directory``. Everything else is the guide's own; a line not found fails the check, so that a change to
    the guide cannot leave this test checking something else."""

    def replace(pattern: str, replacement: str, text: str) -> str:
        text, found = re.subn(pattern, lambda match: replacement.format(*match.groups()), text, flags=re.MULTILINE)
        check_silent(found == 1, f"docs/scale-out/nginx.conf: one line like {pattern!r} expected, {found} found")
        return text

    config = template
    for number, upstream in enumerate(upstreams, 1):
        config = replace(rf"^(\s*)server mixauth-{number}:2200\b", f"{{}}server 127.0.0.1:{upstream}", config)
    named = re.findall(r"^\s*server mixauth-\d+:", config, flags=re.MULTILINE)
    check_silent(not named, f"docs/scale-out/nginx.conf names more upstream servers than {len(upstreams)}")
    config = replace(r"^(\s*)listen 8080;", f"{{}}listen 127.0.0.1:{port};", config)
    config = replace(r"^pid [^;]*;", f"pid {directory / 'nginx.pid'};", config)
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # Debian's build puts them in /var/lib/nginx
    temporary = "".join(f"\n    {kind}_temp_path {directory / kind};" for kind in kinds)
    return replace(r"^http \{", "http {{" + temporary, config)


class Balancer:
    """nginx from Debian, run by the test in the foreground with ``balancer_config`` (its error log in
    ``directory`` too)."""

    def __init__(self, directory: Path, upstreams: Sequence[int]) -> None:
        self.directory = directory
        self.port = free_port()
        self.config = directory / "nginx.conf"
        template = (SCALE_OUT / "nginx.conf").read_text()
        self.config.write_text(balancer_config(template, upstreams, self.port, directory))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, *extra: str) -> list[str]:
        error_log = self.directory / "nginx-error.log"
        return ["nginx", "-p", f"{self.directory}/", "-c", str(self.config), "-e", str(error_log), *extra]

    def start(self) -> None:
        run_tool(self.command("-t"), timeout=30)  # a configuration nginx refuses fails here, with its reason
        self.process = subprocess.Popen(
            self.command("-g", "daemon off;"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if self.process.poll() is not None:
                raise CheckFailed(f"nginx exited {self.process.returncode}: {self.error_log()}")
            check_silent(time.monotonic() < deadline, f"nginx not listening after 10 s: {self.error_log()}")
            time.sleep(0.02)

    def error_log(self) -> str:
        path = self.directory / "nginx-error.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown), SIGKILL when that takes longer than ten seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def answered(container: Container, *requests: tuple[str, str]) -> int:
    """How many of the API requests ``(method, route)`` the container's log says it answered."""
    count = 0
    for line in container.logs().splitlines():
        if '"http.request"' in line:
            record = json.loads(line)
            count += (record.get("method"), record.get("route")) in requests
    return count


def since(before: Sequence[int], after: Sequence[int]) -> list[int]:
    """Each instance's count of answered requests, less what it was before."""
    return [later - earlier for earlier, later in zip(before, after, strict=True)]


def seen_within(condition: Callable[[], bool], seconds: float) -> float | None:
    """How long until ``condition`` held (asked every 10 ms), or None when it did not within ``seconds``."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > seconds:
            return None
        time.sleep(0.01)
    return time.monotonic() - began


def check_scale_out(podman: Podman, image: str, directory: Path) -> None:
    """Two instances of the image on one PostgreSQL database and one Redis, behind nginx with the guide's
    docs/scale-out/nginx.conf: what docs/scale-out/compose.yaml deploys. Both instances run on the host's
    network, as compose's services share theirs; the test plays compose's part (one secret mounted in both)."""
    directory.mkdir()
    print("..    scale-out: two instances on PostgreSQL and Redis behind nginx (docs/scale-out)", flush=True)
    secret = secrets.token_urlsafe(48)
    secret_file = directory / "jwt_secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o444)
    volume = f"mixauth-test-{secrets.token_hex(4)}"
    with scratch_database() as url, scratch_redis_prefix() as (redis_url, prefix):
        # An environment file, not -e: the URLs (which may hold passwords) stay out of command lines and errors.
        env_file = directory / "mixauth.env"
        env_file.touch(mode=0o600)
        settings = {
            "DATABASE_URL": url,
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": prefix,
            "JWT_SECRET_FILE": SECRET_MOUNT,
            "TRUSTED_PROXIES": "127.0.0.1",
        }
        env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        shared = ("--env-file", str(env_file), "-v", f"{secret_file}:{SECRET_MOUNT}:ro")
        instances = [
            HostContainer(podman, image, f"mixauth-test-scale-{number}", f"{volume}-{number}", *shared)
            for number in (1, 2)
        ]
        balancer: Balancer | None = None
        try:
            started = [instance.start() for instance in instances]
            for number, (instance, took) in enumerate(zip(instances, started, strict=True), 1):
                ready = call(f"{instance.url}/health/ready")
                check(
                    ready.status == 200 and ready.body == READY,
                    f"instance {number} healthy in {took:.2f} s; /health/ready: {json.dumps(ready.body)}",
                )
            balancer = Balancer(directory, [instance.port for instance in instances])
            balancer.start()
            check_scale_out_calls(podman, image, instances, balancer, shared, (redis_url, prefix), secret)
        finally:
            if balancer is not None:
                balancer.stop()
            for instance in instances:
                instance.remove()
            podman("volume", "rm", "--force", *(instance.volume for instance in instances), check=False)


def check_scale_out_calls(
    podman: Podman,
    image: str,
    instances: Sequence[Container],
    balancer: Balancer,
    shared: Sequence[str],
    limits: tuple[str, str],
    secret: str,
) -> None:
    """Through the balancer and each instance directly: the seed calls, an admin, a scope change, the signup
    limit and an instance stopped."""
    one, two = instances
    seed_routes = (("POST", "/user"), ("POST", "/user/auth"), ("GET", "/user"))
    token = check_seed_calls(balancer.url, " through nginx")
    served = [answered(instance, *seed_routes) for instance in instances]
    check(
        served[0] > 0 and served[1] > 0 and sum(served) == 3,
        f"nginx sent them to both instances ({served[0]} to instance 1, {served[1]} to instance 2)",
    )
    seed_id = call(f"{balancer.url}/user", token=token).body["id"]

    admin_id = podman.out(
        "run", "--rm", "--interactive", "--network", "host", *shared, image, "mixauth", "create-user",
        "--username", "admin", "--email", ADMIN["email"], "--scope", "admin", "--password-stdin",
        input=ADMIN["password"] + "\n",
    )  # fmt: skip
    check(len(admin_id) == 24, f"podman run --rm ... mixauth create-user made the admin in PostgreSQL ({admin_id})")
    signed_in = call(f"{balancer.url}/user/auth", "POST", ADMIN)
    check(signed_in.status == 200 and signed_in.body["user"]["id"] == admin_id, "the admin signs in through nginx")
    admin: str = signed_in.body["token"]

    scope = ["user", "editor"]
    changed = call(f"{one.url}/users/{seed_id}", "PUT", {"scope": scope}, token=admin)
    check_silent(changed.status == 200 and changed.body["scope"] == scope, f"PUT /users/{{id}}: {changed}")
    took = seen_within(
        lambda: call(f"{two.url}/users/{seed_id}", token=admin).body["scope"] == scope, PROPAGATED_WITHIN
    )
    check(
        took is not None,
        f"a scope change through instance 1 (PUT /users/{{id}}) is seen on instance 2 after {took or 0:.3f} s",
    )
    before = [answered(instance, ("GET", "/users/{id}")) for instance in instances]
    through = [call(f"{balancer.url}/users/{seed_id}", token=admin).body["scope"] for _ in range(4)]
    spread = since(before, [answered(instance, ("GET", "/users/{id}")) for instance in instances])
    check(
        through == [scope] * 4 and spread[0] > 0 and spread[1] > 0,
        f"and through nginx (four GET /users/{{id}}, {spread[0]} answered by instance 1, {spread[1]} by instance 2)",
    )

    # From one client address the balancer names: TRUSTED_PROXIES=127.0.0.1 lets the instances believe it.
    client = "203.0.113.50"
    before = [answered(instance, ("POST", "/user")) for instance in instances]
    statuses = [
        call(
            f"{balancer.url}/user",
            "POST",
            {"username": f"limited{attempt}", "email": "limited@example.com", "password": "limited-password"},
            forwarded_for=client,
        ).status
        for attempt in range(11)
    ]
    check(
        statuses[:10] == [200] + [409] * 9,
        "ten signups for one email through nginx: the first 200, nine 409 (the email is taken; each counts)",
    )
    spread = since(before, [answered(instance, ("POST", "/user")) for instance in instances])
    check(
        statuses[10] == 429 and spread[0] > 0 and spread[1] > 0,
        f"the eleventh is 429: one signup limit for both instances, which answered {spread[0]} and {spread[1]}",
    )
    redis_url, prefix = limits
    keys = redis_keys(redis_url, prefix)
    check(keys, f"the limits' counters are in Redis under the instances' REDIS_KEY_PREFIX ({len(keys)} keys)")
    client_ips = {
        json.loads(line).get("client_ip")
        for instance in instances
        for line in instance.logs().splitlines()
        if '"user.created"' in line
    }
    check(client in client_ips, "TRUSTED_PROXIES=127.0.0.1: behind nginx the client IP is X-Forwarded-For's")

    code, stopped = two.stop()
    check_silent(code == 0, f"instance 2 exited {code}")
    answers = [call(f"{balancer.url}/user", token=admin).status for _ in range(4)]
    check(
        answers == [200] * 4,
        f"instance 2 stopped (exit 0 in {stopped:.1f} s): nginx sends every request to instance 1 ({answers})",
    )

    logs = "\n".join(instance.logs() for instance in instances)
    log_events(logs)
    leaked = [s for s in (secret, ADMIN["password"], "limited-password", admin, token, "$2b$") if s in logs]
    check(not leaked, "both instances' logs are JSON events with no secret, password, token or hash")


def build_image(podman: Podman, args: argparse.Namespace, work: Path) -> str:
    """The image built from the working tree (and the base image made when missing); the base image's tag."""
    base: str = args.base_image or DEFAULT_BASE
    if args.base_image is None:
        mirror = args.mirror or apt_mirror()
        if mirror is None:
            raise CheckFailed("no Debian bookworm archive in apt's sources: pass --mirror or --base-image")
        ensure_base_image(podman, DEFAULT_BASE, mirror, work)
    if args.no_build and podman("image", "exists", args.tag, check=False).returncode == 0:
        print(f"..    {args.tag}: not rebuilt (--no-build)", flush=True)
        return base
    wheels = work / "wheels"
    wheels.mkdir()
    wheelhouse(podman, base, wheels)
    with serve_directory(wheels) as index:
        began = time.monotonic()
        podman(
            "build", "--format", "docker", "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
            "--build-arg", f"PIP_FIND_LINKS={index}", "--build-arg", "PIP_NO_INDEX=1", "-t", args.tag, str(ROOT),
            timeout=1200,
        )  # fmt: skip
        built = time.monotonic() - began
    print(f"..    built {args.tag} on {base} in {built:.1f} s", flush=True)
    return base


def check_single_container(podman: Podman, image: str, base: str, work: Path) -> None:
    """One container at a time on a volume, as the README's deployment runs it."""
    size = int(podman.out("image", "inspect", "--format", "{{.Size}}", image))
    base_size = int(podman.out("image", "inspect", "--format", "{{.Size}}", base))
    check_image(podman, image)

    volume = f"mixauth-test-{secrets.token_hex(4)}"
    env_volume = f"{volume}-env"
    first = Container(podman, image, "mixauth-test-first", volume)
    # Cost 14 (about a second a hash): a signup is still hashing when the drain check stops this one.
    second = Container(podman, image, "mixauth-test-second", volume, BCRYPT_ROUNDS="14")
    try:
        fresh = first.start()
        check(first.health() == "healthy", f"healthy {fresh:.2f} s after podman run, on a new volume")
        token = check_seed_calls(first.url)
        check_process(first)
        check_untrusted_forwarded_for(first)
        check_metrics(first)
        code, took = first.stop()
        check(code == 0, f"podman stop: exit code 0 in {took:.1f} s")

        restarted = second.start()
        check(second.health() == "healthy", f"a new container on the same volume is healthy in {restarted:.2f} s")
        again = call(f"{second.url}/user/auth", "POST", {"username": SEED["email"], "password": SEED["password"]})
        check(again.status == 200, "the user signs in on the new container")
        check(call(f"{second.url}/user", token=token).status == 200, "the first container's token is still valid")
        check_drain(second)
        one_off = podman.out("run", "--rm", "-v", f"{volume}:/data", image, "mixauth", "list-users", "--json")
        listing = json.loads(one_off)
        check(
            sorted(user["username"] for user in listing) == [SEED["username"], "late"],
            "the drained signup is on the volume (mixauth list-users in a one-off container)",
        )
        with_env = check_environment(podman, image, env_volume)
        check_secret_file(podman, image, env_volume, work)
    finally:
        for container in (first, second):
            container.remove()
        podman("volume", "rm", "--force", volume, env_volume, check=False)

    print(
        f"image {image}: {size / 1e6:.0f} MB ({(size - base_size) / 1e6:.0f} MB over the base image {base})\n"
        f"start-up to healthy: {fresh:.2f} s on a new volume, {restarted:.2f} s on an existing one, "
        f"{with_env:.2f} s with JWT_SECRET set",
        flush=True,
    )


def run(args: argparse.Namespace, work: Path) -> None:
    podman = Podman(work / "containers.conf")
    base = build_image(podman, args, work)
    if not args.scale_out_only:
        check_single_container(podman, args.tag, base, work)
    check_scale_out(podman, args.tag, work / "scale-out")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.container", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-image", help=f"build on this image instead of {DEFAULT_BASE} (made when missing)")
    parser.add_argument("--mirror", help="Debian mirror for debootstrap (default: the one apt's sources name)")
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"the image's tag (default {DEFAULT_TAG})")
    parser.add_argument("--no-build", action="store_true", help="use the image already under --tag, when there is one")
    parser.add_argument("--scale-out-only", action="store_true", help="skip the single-container checks")
    args = parser.parse_args(argv)
    try:
        ensure_packages()
    except (OSError, CheckFailed) as exc:
        print(f"container test: cannot install podman ({exc}); it needs root and Debian's packages", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mixauth-container-") as work:
        try:
            run(args, Path(work))
        except (CheckFailed, subprocess.TimeoutExpired) as exc:
            print(f"FAIL  {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
