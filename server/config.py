"""Settings: one frozen object, read once from config.toml, then the environment, then command-line flags.

Nothing else in mixauth reads ``os.environ`` or the config file. Every option is declared once in
``OPTIONS`` (file key, environment variable, parser, default, meaning); ``config.toml`` documents the same
list, and a test keeps the two in step.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import unicodedata
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MIN_SECRET_BYTES = 32
BASE64_PREFIX = "base64:"
MAX_CONFIG_BYTES = 1024 * 1024
MIN_METRICS_TOKEN_CHARACTERS = 16
MIN_WEBHOOK_SECRET_BYTES = 16
# Where FORGOT_PASSWORD_LINK takes the reset code.
RESET_CODE_PLACEHOLDER = "{{code}}"
# Addresses that listen on every interface, so that a port on them clashes with that port on any address.
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})  # noqa: S104 - recognised, not bound
LOG_LEVELS = ("debug", "info", "warning", "error")
SCOPE_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_DURATION = re.compile(r"^\s*([0-9]+)\s*(s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


class ConfigError(Exception):
    """A setting is missing, unknown or malformed; the message is one line naming the setting."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the server, from config.toml and the environment (``load_settings``)."""

    host: str = "127.0.0.1"
    port: int = 2200
    data_dir: Path = Path("data")
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_secret_file: Path | None = None
    jwt_token_exp: int = 30 * 86400
    bcrypt_rounds: int = 12
    api_user_create_scope: tuple[str, ...] = ()
    user_signup_rate_limit_email: int = 10
    user_signup_rate_limit_email_window_ms: int = 3_600_000
    user_signup_rate_limit_ip: int = 50
    user_signup_rate_limit_ip_window_ms: int = 3_600_000
    user_signin_rate_limit_account: int = 100
    user_signin_rate_limit_account_window_ms: int = 3_600_000
    user_signin_rate_limit_ip: int = 300
    user_signin_rate_limit_ip_window_ms: int = 3_600_000
    webhook_user_forgot_password: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    forgot_password_link: str = "http://localhost:8080/reset-password?code={{code}}"  # noqa: S105 - a link
    forgot_password_code_ttl: int = 3600
    user_forgot_password_rate_limit_email: int = 5
    user_forgot_password_rate_limit_email_window_ms: int = 3_600_000
    user_forgot_password_rate_limit_ip: int = 50
    user_forgot_password_rate_limit_ip_window_ms: int = 3_600_000
    user_forgot_password_reset_rate_limit_ip: int = 20
    user_forgot_password_reset_rate_limit_ip_window_ms: int = 3_600_000
    rate_limit_max_buckets: int = 200_000
    trusted_proxies: tuple[IPNetwork, ...] = ()
    hash_workers: int | None = None
    hash_queue_limit: int = 32
    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 2201
    metrics_token: str | None = field(default=None, repr=False)
    max_connections: int | None = None
    keepalive_timeout: int = 15
    password_min_length: int = 6
    default_plan: str = "free"
    default_user_vendor: tuple[str, ...] = ()
    log_level: str = "info"
    database_url: str | None = field(default=None, repr=False)
    database_pool_min: int = 1
    database_pool_max: int = 10
    database_timeout_ms: int = 5000
    redis_url: str | None = field(default=None, repr=False)
    redis_timeout_ms: int = 100
    redis_key_prefix: str = "mixauth:"
    rate_limit_redis_failure: str = "local"
    jwt_secret_previous: tuple[str, ...] = field(default=(), repr=False)
    # Where each value came from ("default", "file", "env", "flag"), for operators' diagnostics.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


Parser = Callable[[Any], Any]


@dataclass(eq=False, frozen=True, slots=True)
class Option:
    """One setting: its key (the environment variable's name in lower case), its parser and its help."""

    key: str
    parse: Parser
    help: str

    @property
    def env(self) -> str:
        return self.key.upper()

    @property
    def flag(self) -> str | None:
        """The command-line flag that sets it, for the few that have one."""
        return "--" + self.key.replace("_", "-") if self.key in FLAG_KEYS else None


# Settings that `python -m server` also takes as flags (--host, --port, --data-dir).
FLAG_KEYS = ("host", "port", "data_dir")
# How a default is written where its value alone would mislead.
_DEFAULT_TEXT = {
    "jwt_secret": "generated, kept in data_dir",
    "jwt_secret_file": "empty (none)",
    "jwt_token_exp": "30d",
    "api_user_create_scope": "empty (open)",
    "trusted_proxies": "empty (none)",
    "hash_workers": "auto",
    "metrics_token": "empty (none)",
    "max_connections": "auto",
    "keepalive_timeout": "15s",
    "default_user_vendor": "empty (none)",
    "webhook_user_forgot_password": "empty (none)",
    "webhook_secret": "empty (none)",
    "forgot_password_code_ttl": "1h",
    "database_url": "empty (SQLite in data_dir)",
    "redis_url": "empty (in memory)",
    "jwt_secret_previous": "empty (none)",
}


def default_text(option: Option) -> str:
    """The default of ``option`` as the README and ``check-config`` show it."""
    if option.key in _DEFAULT_TEXT:
        return _DEFAULT_TEXT[option.key]
    value = getattr(Settings(), option.key)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def reference_markdown() -> str:
    """The README's table of every setting, generated from ``OPTIONS`` (a test keeps the two equal)."""
    rows = [
        "| file key | environment variable | flag | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for option in OPTIONS:
        flag = f"`{option.flag}`" if option.flag else ""
        rows.append(f"| `{option.key}` | `{option.env}` | {flag} | `{default_text(option)}` | {option.help} |")
    return "\n".join(rows) + "\n"


def _int_between(low: int, high: int) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, str):
            value = value.strip()
            if not re.fullmatch(r"[+-]?[0-9]+", value):
                raise ValueError(f"expected a whole number, got {value!r}")
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _path(value: Any) -> Path:
    return Path(_text(value))


def _secret(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    if len(secret_key(value)) < MIN_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes long")
    return value


def secret_key(value: str) -> bytes:
    """The signing key a secret setting names: its UTF-8 bytes, or with the prefix ``base64:`` the bytes its
    URL-safe base64 encodes (how a generated secret, DATA_DIR/jwt-secret, is kept: moving to many instances,
    ``JWT_SECRET=base64:$(cat DATA_DIR/jwt-secret)`` keeps every token valid)."""
    if not value.startswith(BASE64_PREFIX):
        return value.encode()
    text = value[len(BASE64_PREFIX) :].strip()
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"is not valid base64 after {BASE64_PREFIX!r}") from None


def _metrics_token(value: Any) -> str | None:
    """The bearer token /metrics asks for; empty means none."""
    if not isinstance(value, str):
        raise ValueError("expected a string")
    if not value.strip():
        return None
    if len(value) < MIN_METRICS_TOKEN_CHARACTERS or value != value.strip():
        raise ValueError(f"must be at least {MIN_METRICS_TOKEN_CHARACTERS} characters, without surrounding spaces")
    return value


def parse_duration(value: Any) -> int:
    """Seconds from ``3600``, ``"3600"``, ``"90m"``, ``"12h"``, ``"30d"`` or ``"2w"`` (a bare number is seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30d, got {value!r}")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"expected a duration such as 30d, 12h or 3600, got {value!r}")
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def _comma_list(value: Any, what: str) -> list[str]:
    """The non-empty items of a comma-separated string or, in the file, a list of strings, trimmed."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = value
    else:
        raise ValueError(f"expected a comma-separated list of {what}, got {value!r}")
    return [item.strip() for item in items if item.strip()]


def parse_scopes(value: Any) -> tuple[str, ...]:
    """A comma-separated string (or, in the file, a list) of scope names; empty means none."""
    scopes = tuple(dict.fromkeys(_comma_list(value, "scopes")))
    for scope in scopes:
        if not SCOPE_PATTERN.fullmatch(scope):
            raise ValueError(f"{scope!r} is not a valid scope name (letters, digits and _ . : - only)")
    return scopes


VENDOR_MAX_CHARS = 128
# Control, format (invisible), surrogate, private-use and unassigned code points and line separators, as for
# usernames: a vendor name is shown to people and compared exactly.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def vendor_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a vendor name (1 to 128 characters, no surrounding white space, nothing
    invisible), or None when it can; the one rule for DEFAULT_USER_VENDOR and the admin calls."""
    if not name or name != name.strip():
        return f"{name!r} is not a vendor name: it must not be empty or start or end with white space"
    if len(name) > VENDOR_MAX_CHARS:
        return f"a vendor name is at most {VENDOR_MAX_CHARS} characters long"
    if any(unicodedata.category(char) in _INVISIBLE_CATEGORIES for char in name):
        return f"{name!r} is not a vendor name: it holds a control or invisible character"
    return None


def parse_vendors(value: Any) -> tuple[str, ...]:
    """A comma-separated string (or, in the file, a list) of vendor names; empty means none."""
    vendors = tuple(dict.fromkeys(_comma_list(value, "vendor names")))
    for vendor in vendors:
        if problem := vendor_name_problem(vendor):
            raise ValueError(problem)
    return vendors


def parse_networks(value: Any) -> tuple[IPNetwork, ...]:
    """Comma-separated IP addresses and CIDR ranges (or, in the file, a list); empty means none."""
    networks: list[IPNetwork] = []
    for item in _comma_list(value, "addresses and CIDR ranges"):
        try:
            if "%" in item:  # an IPv6 zone id names an interface here, and no peer address carries one
                raise ValueError(item)
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR range") from None
    return tuple(dict.fromkeys(networks))


def _webhook_url(value: Any) -> str | None:
    """An http or https URL with a host, or empty for none."""
    if not isinstance(value, str):
        raise ValueError(f"expected a URL, got {value!r}")
    url = value.strip()
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(char.isspace() for char in url):
        raise ValueError("expected an http:// or https:// URL with a host")
    return url


def _webhook_secret(value: Any) -> str | None:
    """The key of the webhook's HMAC signature; empty means none (deliveries go unsigned)."""
    if not isinstance(value, str):
        raise ValueError("expected a string")
    if not value:
        return None
    if len(value.encode()) < MIN_WEBHOOK_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_WEBHOOK_SECRET_BYTES} bytes long")
    return value


def _reset_link(value: Any) -> str:
    link = _text(value)
    if RESET_CODE_PLACEHOLDER not in link:
        raise ValueError(f"must contain {RESET_CODE_PLACEHOLDER}, where the reset code goes")
    return link


def _service_url(value: Any, schemes: tuple[str, ...], example: str) -> str | None:
    """A URL with one of ``schemes`` and a host (or a socket path), or empty for none. The message never
    repeats the value: it may hold a password."""
    if not isinstance(value, str):
        raise ValueError(f"expected a URL such as {example}")
    url = value.strip()
    if not url:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"is not a valid URL; expected one such as {example}") from None
    if parts.scheme not in schemes or any(char.isspace() for char in url):
        names = [scheme + "://" for scheme in schemes]
        raise ValueError(f"expected a {', '.join(names[:-1])} or {names[-1]} URL such as {example}")
    if not (parts.hostname or parts.path or parts.query):
        raise ValueError(f"names no host; expected a URL such as {example}")
    return url


def _database_url(value: Any) -> str | None:
    return _service_url(value, ("postgresql", "postgres"), "postgresql://mixauth:password@db:5432/mixauth")


def _redis_url(value: Any) -> str | None:
    return _service_url(value, ("redis", "rediss", "unix"), "redis://redis:6379/0")


def redacted_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and ``check-config``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:***"
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def _redis_prefix(value: Any) -> str:
    prefix = _text(value)
    if len(prefix) > 64 or not prefix.isprintable() or " " in prefix:
        raise ValueError("must be 1 to 64 printable characters without spaces")
    return prefix


def _redis_failure(value: Any) -> str:
    mode = _text(value).lower()
    if mode not in ("local", "deny"):
        raise ValueError(f"must be local or deny, got {value!r}")
    return mode


def _previous_secrets(value: Any) -> tuple[str, ...]:
    """Secrets (a comma-separated string or, in the file, a list), each as long as JWT_SECRET must be."""
    listed = isinstance(value, list) and all(isinstance(item, str) for item in value)
    if not (isinstance(value, str) or listed):
        raise ValueError("expected a comma-separated list of secrets")  # never the value: it is secret
    secrets = tuple(dict.fromkeys(_comma_list(value, "secrets")))
    for secret in secrets:
        if len(secret_key(secret)) < MIN_SECRET_BYTES:
            raise ValueError(f"each secret must be at least {MIN_SECRET_BYTES} bytes long")
    return secrets


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "0", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _optional_port(value: Any) -> int | None:
    """A TCP port, or empty (and 0) for none."""
    if isinstance(value, str) and not value.strip():
        return None
    return _int_between(0, 65535)(value) or None


def _workers(value: Any) -> int | None:
    """A thread count, or ``auto`` (and 0) for the default: one per CPU but one."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    return _int_between(0, 256)(value) or None


def _connections(value: Any) -> int | None:
    """A connection count, or ``auto`` (and 0) for the default derived from the open-file limit."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    return _int_between(0, 10_000_000)(value) or None


def _keepalive(value: Any) -> int:
    """A duration from 1 second to 1 hour (0 would leave a connection that never sends a request open)."""
    seconds = parse_duration(value)
    if seconds > 3600:
        raise ValueError(f"must be at most 1h, got {value!r}")
    return seconds


def _log_level(value: Any) -> str:
    level = _text(value).lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


_LIMIT = _int_between(1, 1_000_000_000)
_WINDOW_MS = _int_between(1, 366 * 86_400_000)

OPTIONS: tuple[Option, ...] = (
    Option("host", _text, "Address to listen on."),
    Option("port", _int_between(0, 65535), "TCP port to listen on."),
    Option("data_dir", _path, "Directory for the SQLite database and the generated JWT secret."),
    Option(
        "jwt_secret",
        _secret,
        "HS256 signing secret, 32+ bytes (base64:... for encoded bytes); generated and kept in data_dir if unset.",
    ),
    Option(
        "jwt_secret_file",
        _path,
        "A file holding the signing secret (a Docker or Kubernetes secret), instead of jwt_secret.",
    ),
    Option("jwt_token_exp", parse_duration, "Token lifetime: seconds, or a number with s, m, h, d or w."),
    Option("bcrypt_rounds", _int_between(4, 31), "bcrypt cost factor for new password hashes."),
    Option("api_user_create_scope", parse_scopes, "Scopes allowed to call POST /user; empty leaves it open."),
    Option("user_signup_rate_limit_email", _LIMIT, "Signup attempts allowed per email address per window."),
    Option("user_signup_rate_limit_email_window_ms", _WINDOW_MS, "Email signup window in milliseconds."),
    Option("user_signup_rate_limit_ip", _LIMIT, "Signup attempts allowed per client IP per window."),
    Option("user_signup_rate_limit_ip_window_ms", _WINDOW_MS, "IP signup window in milliseconds."),
    Option("user_signin_rate_limit_account", _LIMIT, "Failed sign-ins allowed per account per window."),
    Option("user_signin_rate_limit_account_window_ms", _WINDOW_MS, "Account sign-in window in milliseconds."),
    Option("user_signin_rate_limit_ip", _LIMIT, "Failed sign-ins allowed per client IP per window."),
    Option("user_signin_rate_limit_ip_window_ms", _WINDOW_MS, "IP sign-in window in milliseconds."),
    Option(
        "webhook_user_forgot_password",
        _webhook_url,
        "URL that POST /user/forgot-password's reset codes are posted to; empty sends none.",
    ),
    Option("webhook_secret", _webhook_secret, "Key (16+ bytes) of the webhooks' X-Mixauth-Signature; empty: unsigned."),
    Option(
        "forgot_password_link",
        _reset_link,
        "The reset link a webhook carries, with {{code}} where the code goes.",
    ),
    Option("forgot_password_code_ttl", parse_duration, "How long a reset code lives: seconds, or with s, m, h, d, w."),
    Option("user_forgot_password_rate_limit_email", _LIMIT, "Forgot-password requests per email address per window."),
    Option(
        "user_forgot_password_rate_limit_email_window_ms", _WINDOW_MS, "Email forgot-password window in milliseconds."
    ),
    Option("user_forgot_password_rate_limit_ip", _LIMIT, "Forgot-password requests per client IP per window."),
    Option("user_forgot_password_rate_limit_ip_window_ms", _WINDOW_MS, "IP forgot-password window in milliseconds."),
    Option("user_forgot_password_reset_rate_limit_ip", _LIMIT, "Reset-code attempts per client IP per window."),
    Option("user_forgot_password_reset_rate_limit_ip_window_ms", _WINDOW_MS, "IP reset-code window in milliseconds."),
    Option(
        "rate_limit_max_buckets",
        _int_between(1000, 100_000_000),
        "Most rate-limit buckets kept in memory; past it the least recently used is forgotten.",
    ),
    Option(
        "trusted_proxies",
        parse_networks,
        "Proxies (addresses, CIDR ranges) whose X-Forwarded-For is believed; empty trusts none.",
    ),
    Option("hash_workers", _workers, "Threads hashing passwords; auto (or 0) means one per CPU but one, at least one."),
    Option(
        "hash_queue_limit",
        _int_between(0, 100_000),
        "Password checks allowed to wait for a thread; past it, sign-in and signup answer 503.",
    ),
    Option("metrics_enabled", _boolean, "Serve Prometheus metrics at GET /metrics."),
    Option("metrics_host", _text, "Address the metrics listener binds (with metrics_port)."),
    Option(
        "metrics_port",
        _optional_port,
        "The metrics listener's port; empty (or 0) serves /metrics on the API port, which needs metrics_token.",
    ),
    Option(
        "metrics_token",
        _metrics_token,
        "Bearer token /metrics asks for, at least 16 characters; required when metrics_port is empty.",
    ),
    Option(
        "max_connections",
        _connections,
        "Most client connections at once; past it a new one is closed at once. auto (or 0): the open-file"
        " limit less 64, at most 4096.",
    ),
    Option(
        "keepalive_timeout",
        _keepalive,
        "How long an idle connection stays open, before its first request and between requests (1s to 1h).",
    ),
    Option("password_min_length", _int_between(6, 72), "Minimum password length in characters (6 to 72)."),
    Option("default_plan", _text, "Plan given to new users."),
    Option(
        "default_user_vendor",
        parse_vendors,
        "Vendor names given to new users (signup and create-user), comma-separated; empty gives none.",
    ),
    Option("log_level", _log_level, "Lowest level logged: debug, info, warning or error."),
    Option(
        "database_url",
        _database_url,
        "PostgreSQL for users, shared by every instance: postgresql://user:password@host:port/db; "
        "requires jwt_secret or jwt_secret_file.",
    ),
    Option("database_pool_min", _int_between(0, 1000), "PostgreSQL connections each instance keeps open."),
    Option("database_pool_max", _int_between(1, 1000), "Most PostgreSQL connections each instance opens."),
    Option(
        "database_timeout_ms",
        _int_between(100, 600_000),
        "PostgreSQL connect and statement timeout in milliseconds.",
    ),
    Option(
        "redis_url",
        _redis_url,
        "Redis for rate-limit buckets, shared by every instance: redis://host:port/db (rediss:// for TLS).",
    ),
    Option(
        "redis_timeout_ms",
        _int_between(1, 60_000),
        "Redis connect and command timeout in milliseconds; past it the limiter treats Redis as down.",
    ),
    Option(
        "redis_key_prefix",
        _redis_prefix,
        "Start of every Redis key mixauth writes, so that tenants or services sharing one Redis stay apart.",
    ),
    Option(
        "rate_limit_redis_failure",
        _redis_failure,
        "While Redis is down: local (each instance counts in memory) or deny (503 on rate-limited calls).",
    ),
    Option(
        "jwt_secret_previous",
        _previous_secrets,
        "Earlier signing secrets (comma-separated, 32+ bytes each), accepted for verification only: rotation.",
    ),
)
OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}


def load_settings(
    config_path: Path | None,
    environ: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: defaults, then ``config_path`` (or ``./config.toml`` when present), then env, then flags.

    ``config_path`` names a file that must exist; when it is None, ``config.toml`` in the working directory is
    read if it is there. Raise ConfigError with one line on anything unknown or malformed.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def apply(key: str, raw: Any, origin: str, label: str) -> None:
        try:
            values[key] = OPTIONS_BY_KEY[key].parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        sources[key] = origin

    path = config_path if config_path is not None else Path("config.toml")
    if config_path is not None or path.exists():  # a directory in its place is an error, not "no file"
        for key, raw in _read_file(path).items():
            if key not in OPTIONS_BY_KEY:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            apply(key, raw, "file", f"{path}: {key}")
    for option in OPTIONS:
        if option.env in environ:
            apply(option.key, environ[option.env], "env", option.env)
    for key, raw in (flags or {}).items():
        if raw is not None:
            apply(key, raw, "flag", "--" + key.replace("_", "-"))
    if "jwt_secret_file" in values:
        if "jwt_secret" in values:
            raise ConfigError("JWT_SECRET and JWT_SECRET_FILE are both set; set one of them")
        values["jwt_secret"] = _secret_from_file(values["jwt_secret_file"])
        sources["jwt_secret"] = "jwt_secret_file"  # noqa: S105 - where the secret came from, not the secret
    for option in OPTIONS:
        sources.setdefault(option.key, "default")
    settings = Settings(**values, sources=sources)
    _check_metrics(settings)
    _check_scale_out(settings)
    return settings


def _check_scale_out(settings: Settings) -> None:
    """Instances that share a database must share the signing secret: a generated one is per data directory."""
    if settings.database_url is not None and settings.jwt_secret is None:
        raise ConfigError(
            "DATABASE_URL is set, so every instance must sign with one shared secret: set JWT_SECRET or "
            "JWT_SECRET_FILE too"
        )
    if settings.database_pool_min > settings.database_pool_max:
        raise ConfigError(
            f"DATABASE_POOL_MIN {settings.database_pool_min} is larger than DATABASE_POOL_MAX "
            f"{settings.database_pool_max}"
        )


def _check_metrics(settings: Settings) -> None:
    """Where /metrics is served: never beside the API without a token, never on the API's own port."""
    if not settings.metrics_enabled:
        return
    if settings.metrics_port is None:
        if settings.metrics_token is None:
            raise ConfigError(
                "METRICS_PORT is empty, which serves /metrics on the API port: set METRICS_TOKEN too "
                f"(at least {MIN_METRICS_TOKEN_CHARACTERS} characters), or give METRICS_PORT a port of its own"
            )
        return
    same_host = settings.metrics_host == settings.host or {settings.metrics_host, settings.host} & _WILDCARD_HOSTS
    if settings.metrics_port == settings.port and same_host:
        raise ConfigError(
            f"METRICS_PORT {settings.metrics_port} is the API's PORT too: give metrics another port, or leave "
            "METRICS_PORT empty (with METRICS_TOKEN) to serve /metrics on the API port"
        )


def _secret_from_file(path: Path) -> str:
    """The secret in ``path``, without the white space around it (the newline ``echo`` or ``openssl`` adds)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(f"JWT_SECRET_FILE: cannot read {path}: {reason}") from None
    try:
        return _secret(text.strip())
    except ValueError as exc:
        raise ConfigError(f"JWT_SECRET_FILE: {path}: the secret {exc}") from None


def _read_file(path: Path) -> dict[str, Any]:
    """The TOML table in ``path``; any way it cannot be read (missing, a directory, unreadable, not UTF-8,
    far too large, not TOML) is one ConfigError line naming the file, never a traceback."""
    try:
        with path.open("rb") as handle:
            # Bounded, so that a path to a device or a huge file by mistake (/dev/zero) cannot fill memory.
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB, not a configuration file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    import tomllib  # only where a configuration file is read

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


if __name__ == "__main__":
    # python -m server.config prints the README's settings table.
    print(reference_markdown(), end="")
