"""load_settings: defaults, config.toml, environment and flags, in that order, validated once."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from server.config import (
    OPTIONS,
    OPTIONS_BY_KEY,
    ConfigError,
    Settings,
    default_text,
    load_settings,
    parse_duration,
    parse_scopes,
    redacted_url,
    reference_markdown,
    secret_key,
)

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"
GOOD_SECRET = "s" * 32

# The environment variables the contract names; later issues may add more, never fewer.
CONTRACT_ENV = {
    "HOST",
    "PORT",
    "DATA_DIR",
    "JWT_SECRET",
    "JWT_TOKEN_EXP",
    "BCRYPT_ROUNDS",
    "API_USER_CREATE_SCOPE",
    "USER_SIGNUP_RATE_LIMIT_EMAIL",
    "USER_SIGNUP_RATE_LIMIT_EMAIL_WINDOW_MS",
    "USER_SIGNUP_RATE_LIMIT_IP",
    "USER_SIGNUP_RATE_LIMIT_IP_WINDOW_MS",
    "PASSWORD_MIN_LENGTH",
    "DEFAULT_PLAN",
    "LOG_LEVEL",
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, so no ./config.toml is picked up by accident."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(directory: Path, text: str, name: str = "config.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(config_path: Path | None, environ: dict[str, str], flags: dict[str, Any] | None = None) -> str:
    """The message of the ConfigError that loading raises; fail the test when it loads."""
    with pytest.raises(ConfigError) as caught:
        load_settings(config_path, environ, flags)
    message = str(caught.value)
    assert "\n" not in message, "a configuration error is one line"
    return message


# Defaults and the list of options


def test_defaults_without_file_env_or_flags(workdir: Path) -> None:
    settings = load_settings(None, {}, None)
    assert settings == Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 2200
    assert settings.data_dir == Path("data")
    assert settings.jwt_secret is None
    assert settings.jwt_token_exp == 30 * 86400
    assert settings.api_user_create_scope == ()
    assert settings.password_min_length == 6
    assert settings.default_plan == "free"
    assert dict(settings.sources) == {option.key: "default" for option in OPTIONS}


def test_every_option_is_a_settings_field_and_back() -> None:
    fields = {field.name for field in dataclasses.fields(Settings)} - {"sources"}
    keys = [option.key for option in OPTIONS]
    assert len(keys) == len(set(keys))
    assert set(keys) == fields


def test_env_names_are_the_upper_case_keys_and_cover_the_contract() -> None:
    envs = {option.env for option in OPTIONS}
    assert all(option.env == option.key.upper() for option in OPTIONS)
    assert envs >= CONTRACT_ENV


def test_every_option_has_help() -> None:
    for option in OPTIONS:
        assert option.help.strip(), option.key


# The repository's config.toml


def test_repo_config_file_loads_to_the_defaults(workdir: Path) -> None:
    settings = load_settings(REPO_CONFIG, {}, None)
    assert settings == Settings()
    assert settings.sources["port"] == "file"
    assert settings.sources["jwt_secret"] == "default"  # documented, but commented out


def test_repo_config_file_sets_every_option_but_the_secret() -> None:
    with REPO_CONFIG.open("rb") as handle:
        data = tomllib.load(handle)
    assert set(data) == {option.key for option in OPTIONS} - {"jwt_secret", "jwt_secret_file", "metrics_token"}


def test_repo_config_file_documents_every_key_and_env_name() -> None:
    text = REPO_CONFIG.read_text(encoding="utf-8")
    for option in OPTIONS:
        assert option.key in text, option.key
        assert option.env in text, option.env


def test_implicit_config_toml_in_the_working_directory_is_read(workdir: Path) -> None:
    write_config(workdir, "port = 3000\n")
    settings = load_settings(None, {}, None)
    assert settings.port == 3000
    assert settings.sources["port"] == "file"


def test_named_file_is_read_instead_of_the_implicit_one(workdir: Path) -> None:
    write_config(workdir, "port = 3000\n")
    named = write_config(workdir, "port = 3001\n", name="other.toml")
    assert load_settings(named, {}, None).port == 3001


def test_empty_file_gives_the_defaults(workdir: Path) -> None:
    assert load_settings(write_config(workdir, ""), {}, None) == Settings()


# Precedence


def test_precedence_default_file_env_flag(workdir: Path) -> None:
    path = write_config(
        workdir,
        'host = "10.0.0.1"\nport = 3000\nlog_level = "debug"\ndefault_plan = "pro"\n',
    )
    environ = {"PORT": "4000", "LOG_LEVEL": "warning", "BCRYPT_ROUNDS": "5"}
    flags = {"port": 5000, "data_dir": "/srv/mixauth", "host": None}

    settings = load_settings(path, environ, flags)

    assert settings.port == 5000
    assert settings.data_dir == Path("/srv/mixauth")
    assert settings.log_level == "warning"
    assert settings.bcrypt_rounds == 5
    assert settings.host == "10.0.0.1"  # a None flag is "not given"
    assert settings.default_plan == "pro"
    assert settings.password_min_length == 6
    assert settings.sources["port"] == "flag"
    assert settings.sources["data_dir"] == "flag"
    assert settings.sources["log_level"] == "env"
    assert settings.sources["bcrypt_rounds"] == "env"
    assert settings.sources["host"] == "file"
    assert settings.sources["default_plan"] == "file"
    assert settings.sources["password_min_length"] == "default"
    assert set(settings.sources) == {option.key for option in OPTIONS}


def test_env_overrides_file(workdir: Path) -> None:
    path = write_config(workdir, "user_signup_rate_limit_email = 3\n")
    settings = load_settings(path, {"USER_SIGNUP_RATE_LIMIT_EMAIL": "7"}, None)
    assert settings.user_signup_rate_limit_email == 7
    assert settings.sources["user_signup_rate_limit_email"] == "env"


def test_unrelated_environment_variables_are_ignored(workdir: Path) -> None:
    assert load_settings(None, {"PATH": "/bin", "port": "1", "HOME": "/root"}, None) == Settings()


def test_sources_do_not_affect_equality(workdir: Path) -> None:
    from_env = load_settings(None, {"PORT": "2200"}, None)
    assert from_env.sources["port"] == "env"
    assert from_env == Settings()


def test_env_values_are_parsed_from_strings(workdir: Path) -> None:
    settings = load_settings(
        None,
        {
            "PORT": " 8080 ",
            "DATA_DIR": "/var/lib/mixauth",
            "JWT_SECRET": GOOD_SECRET,
            "JWT_TOKEN_EXP": "12h",
            "USER_SIGNUP_RATE_LIMIT_IP_WINDOW_MS": "60000",
            "PASSWORD_MIN_LENGTH": "10",
            "LOG_LEVEL": "DEBUG",
        },
        None,
    )
    assert settings.port == 8080
    assert settings.data_dir == Path("/var/lib/mixauth")
    assert settings.jwt_secret == GOOD_SECRET
    assert settings.jwt_token_exp == 12 * 3600
    assert settings.user_signup_rate_limit_ip_window_ms == 60000
    assert settings.password_min_length == 10
    assert settings.log_level == "debug"


def test_secret_is_kept_out_of_repr(workdir: Path) -> None:
    settings = load_settings(None, {"JWT_SECRET": GOOD_SECRET}, None)
    assert GOOD_SECRET not in repr(settings)


# Errors: each one line, naming the setting


def test_unknown_file_key_is_refused(workdir: Path) -> None:
    path = write_config(workdir, "prot = 2200\n")
    message = config_error(path, {})
    assert "prot" in message
    assert str(path) in message


def test_unknown_key_in_the_implicit_file_is_refused(workdir: Path) -> None:
    write_config(workdir, "colour = 'blue'\n")
    assert "colour" in config_error(None, {})


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ('port = "abc"\n', "port"),
        ("port = 70000\n", "port"),
        ("port = -1\n", "port"),
        ("port = 2200.5\n", "port"),
        ("bcrypt_rounds = true\n", "bcrypt_rounds"),
        ("bcrypt_rounds = 3\n", "bcrypt_rounds"),
        ("bcrypt_rounds = 32\n", "bcrypt_rounds"),
        ('host = ""\n', "host"),
        ("host = 127\n", "host"),
        ("data_dir = 1\n", "data_dir"),
        ("jwt_secret = 12345\n", "jwt_secret"),
        ('jwt_secret = "short"\n', "jwt_secret"),
        ('jwt_token_exp = "forever"\n', "jwt_token_exp"),
        ("jwt_token_exp = 0\n", "jwt_token_exp"),
        ("api_user_create_scope = 5\n", "api_user_create_scope"),
        ('api_user_create_scope = ["admin", 5]\n', "api_user_create_scope"),
        ('api_user_create_scope = "ad min"\n', "api_user_create_scope"),
        ("user_signup_rate_limit_email = 0\n", "user_signup_rate_limit_email"),
        ('user_signup_rate_limit_ip = "many"\n', "user_signup_rate_limit_ip"),
        ("user_signup_rate_limit_ip_window_ms = 0\n", "user_signup_rate_limit_ip_window_ms"),
        ("password_min_length = 5\n", "password_min_length"),
        ("password_min_length = 73\n", "password_min_length"),
        ('default_plan = "  "\n', "default_plan"),
        ('log_level = "verbose"\n', "log_level"),
    ],
)
def test_bad_file_value_names_the_setting(workdir: Path, text: str, setting: str) -> None:
    path = write_config(workdir, text)
    message = config_error(path, {})
    assert setting in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "65536"),
        ("PORT", "22.5"),
        ("PORT", "\uff13\uff10\uff10\uff10"),  # fullwidth digits
        ("BCRYPT_ROUNDS", "\u0661\u0662"),  # Arabic-Indic digits
        ("PORT", ""),
        ("BCRYPT_ROUNDS", "true"),
        ("BCRYPT_ROUNDS", "100"),
        ("JWT_TOKEN_EXP", "0"),
        ("JWT_TOKEN_EXP", "1.5h"),
        ("API_USER_CREATE_SCOPE", "admin, bad scope"),
        ("API_USER_CREATE_SCOPE", "admin;ops"),
        ("USER_SIGNUP_RATE_LIMIT_EMAIL", "-3"),
        ("USER_SIGNUP_RATE_LIMIT_EMAIL_WINDOW_MS", "1h"),
        ("PASSWORD_MIN_LENGTH", "4"),
        ("DEFAULT_PLAN", ""),
        ("LOG_LEVEL", "trace"),
        ("HOST", "   "),
    ],
)
def test_bad_env_value_names_the_variable(workdir: Path, env: str, value: str) -> None:
    assert env in config_error(None, {env: value})


def test_bad_env_value_beats_a_good_file_value(workdir: Path) -> None:
    path = write_config(workdir, "port = 3000\n")
    assert "PORT" in config_error(path, {"PORT": "abc"})


def test_bad_flag_names_the_flag(workdir: Path) -> None:
    assert "--port" in config_error(None, {}, {"port": 99999})
    assert "--data-dir" in config_error(None, {}, {"data_dir": ""})


def test_short_jwt_secret_is_refused_without_echoing_it(workdir: Path) -> None:
    secret = "x" * 31
    message = config_error(None, {"JWT_SECRET": secret})
    assert "JWT_SECRET" in message
    assert "32" in message
    assert secret not in message


def test_jwt_secret_length_is_counted_in_bytes(workdir: Path) -> None:
    # 16 two-byte characters: 32 bytes in UTF-8, though only 16 characters.
    assert load_settings(None, {"JWT_SECRET": "é" * 16}, None).jwt_secret == "é" * 16
    assert "JWT_SECRET" in config_error(None, {"JWT_SECRET": "é" * 15 + "a"})


def test_exactly_32_byte_secret_is_accepted(workdir: Path) -> None:
    assert load_settings(None, {"JWT_SECRET": GOOD_SECRET}, None).jwt_secret == GOOD_SECRET


def test_jwt_secret_file_gives_the_secret_without_its_newline(workdir: Path) -> None:
    (workdir / "jwt").write_text(GOOD_SECRET + "\n")
    settings = load_settings(None, {"JWT_SECRET_FILE": str(workdir / "jwt")}, None)
    assert settings.jwt_secret == GOOD_SECRET
    assert settings.jwt_secret_file == workdir / "jwt"
    assert settings.sources["jwt_secret"] == "jwt_secret_file"


def test_jwt_secret_file_in_the_config_file(workdir: Path) -> None:
    (workdir / "jwt").write_text(GOOD_SECRET)
    (workdir / "config.toml").write_text(f'jwt_secret_file = "{workdir / "jwt"}"\n')
    assert load_settings(None, {}, None).jwt_secret == GOOD_SECRET


def test_jwt_secret_and_jwt_secret_file_together_are_refused(workdir: Path) -> None:
    (workdir / "jwt").write_text(GOOD_SECRET)
    message = config_error(None, {"JWT_SECRET": GOOD_SECRET, "JWT_SECRET_FILE": str(workdir / "jwt")})
    assert "JWT_SECRET and JWT_SECRET_FILE" in message
    assert GOOD_SECRET not in message


def test_missing_jwt_secret_file_names_it(workdir: Path) -> None:
    message = config_error(None, {"JWT_SECRET_FILE": str(workdir / "absent")})
    assert message == f"JWT_SECRET_FILE: cannot read {workdir / 'absent'}: No such file or directory"


@pytest.mark.parametrize("content", [b"x" * 31 + b"\n", b"   \n", b"\xff" * 40])
def test_bad_jwt_secret_file_is_refused_without_echoing_it(workdir: Path, content: bytes) -> None:
    (workdir / "jwt").write_bytes(content)
    message = config_error(None, {"JWT_SECRET_FILE": str(workdir / "jwt")})
    assert message.startswith("JWT_SECRET_FILE: ")
    assert "\n" not in message
    assert "x" * 31 not in message


def test_invalid_toml_is_refused(workdir: Path) -> None:
    path = write_config(workdir, "port = \n[[[\n")
    message = config_error(path, {})
    assert str(path) in message
    assert "TOML" in message


def test_invalid_implicit_toml_is_refused(workdir: Path) -> None:
    write_config(workdir, "this is not toml")
    assert "config.toml" in config_error(None, {})


def test_named_missing_file_is_refused(workdir: Path) -> None:
    missing = workdir / "nowhere" / "mixauth.toml"
    message = config_error(missing, {})
    assert str(missing) in message


@pytest.mark.parametrize("implicit", [True, False])
def test_a_file_that_is_not_utf8_is_one_line_naming_it(workdir: Path, implicit: bool) -> None:
    path = workdir / "config.toml"
    path.write_bytes(b"port = 2200\n# caf\xe9 (latin-1)\n")
    message = config_error(None if implicit else path, {})
    assert message == f"{'config.toml' if implicit else path}: not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"


@pytest.mark.parametrize("implicit", [True, False])
def test_a_directory_in_place_of_the_file_is_refused(workdir: Path, implicit: bool) -> None:
    # As a container bind mount of a file that does not exist on the host leaves it: silently ignoring it
    # would serve with the defaults.
    (workdir / "config.toml").mkdir()
    message = config_error(None if implicit else workdir / "config.toml", {})
    assert message.endswith("config.toml: is a directory, not a configuration file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_refused(workdir: Path) -> None:
    path = write_config(workdir, "port = 3000\n")
    path.chmod(0)
    assert config_error(path, {}) == f"{path}: cannot read: Permission denied"


def test_a_device_or_huge_file_is_refused_without_reading_it_all(workdir: Path) -> None:
    assert config_error(Path("/dev/zero"), {}) == "/dev/zero: larger than 1024 KiB, not a configuration file"


def test_missing_implicit_file_is_fine(workdir: Path) -> None:
    assert not (workdir / "config.toml").exists()
    assert load_settings(None, {}, None) == Settings()


def test_port_bounds(workdir: Path) -> None:
    assert load_settings(None, {"PORT": "0"}, None).port == 0
    assert load_settings(None, {"PORT": "65535"}, None).port == 65535


def test_bcrypt_rounds_bounds(workdir: Path) -> None:
    assert load_settings(None, {"BCRYPT_ROUNDS": "4"}, None).bcrypt_rounds == 4
    assert load_settings(None, {"BCRYPT_ROUNDS": "31"}, None).bcrypt_rounds == 31


# Durations


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("30d", 30 * 86400),
        ("12h", 12 * 3600),
        ("90m", 90 * 60),
        ("45s", 45),
        ("3600", 3600),
        (3600, 3600),
        ("2w", 2 * 7 * 86400),
        (" 7d ", 7 * 86400),
        ("1", 1),
    ],
)
def test_parse_duration(raw: str | int, seconds: int) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize(
    "raw", ["0", "0d", "-1", "-1d", 0, -5, "abc", "", "1.5h", "30 days", "d", "3y", "\uff13\uff10d", True, False, 1.5]
)
def test_parse_duration_refuses(raw: object) -> None:
    with pytest.raises(ValueError, match=r"duration|zero"):
        parse_duration(raw)


def test_duration_from_the_file_as_a_number_or_a_string(workdir: Path) -> None:
    assert load_settings(write_config(workdir, "jwt_token_exp = 3600\n"), {}, None).jwt_token_exp == 3600
    assert load_settings(write_config(workdir, 'jwt_token_exp = "2w"\n'), {}, None).jwt_token_exp == 14 * 86400


def test_boolean_duration_in_the_file_is_refused(workdir: Path) -> None:
    assert "jwt_token_exp" in config_error(write_config(workdir, "jwt_token_exp = true\n"), {})


# API_USER_CREATE_SCOPE


@pytest.mark.parametrize(
    ("raw", "scopes"),
    [
        ("admin, ops", ("admin", "ops")),
        ("admin", ("admin",)),
        ("", ()),
        ("  ", ()),
        (" , ,", ()),
        ("admin,,ops,", ("admin", "ops")),
        ("admin,admin", ("admin",)),
        ("user:create, ops.team-1_a", ("user:create", "ops.team-1_a")),
    ],
)
def test_parse_scopes_from_a_string(raw: str, scopes: tuple[str, ...]) -> None:
    assert parse_scopes(raw) == scopes


def test_scopes_from_env(workdir: Path) -> None:
    settings = load_settings(None, {"API_USER_CREATE_SCOPE": "admin, ops"}, None)
    assert settings.api_user_create_scope == ("admin", "ops")
    assert load_settings(None, {"API_USER_CREATE_SCOPE": ""}, None).api_user_create_scope == ()


def test_empty_env_scope_overrides_the_file(workdir: Path) -> None:
    path = write_config(workdir, 'api_user_create_scope = "admin"\n')
    assert load_settings(path, {}, None).api_user_create_scope == ("admin",)
    assert load_settings(path, {"API_USER_CREATE_SCOPE": ""}, None).api_user_create_scope == ()


def test_scopes_as_a_toml_list(workdir: Path) -> None:
    path = write_config(workdir, 'api_user_create_scope = ["admin", " ops "]\n')
    assert load_settings(path, {}, None).api_user_create_scope == ("admin", "ops")
    assert load_settings(write_config(workdir, "api_user_create_scope = []\n"), {}, None).api_user_create_scope == ()


@pytest.mark.parametrize("raw", ["bad scope", "admin;ops", "ädmin", "a" * 65, 5, ["admin", 1], {"admin": True}])
def test_parse_scopes_refuses(raw: object) -> None:
    with pytest.raises(ValueError, match="scope"):
        parse_scopes(raw)


@pytest.mark.parametrize(("raw", "workers"), [("auto", None), ("AUTO", None), ("0", None), ("3", 3), (2, 2)])
def test_hash_workers_are_a_count_or_auto(raw: object, workers: int | None) -> None:
    assert OPTIONS_BY_KEY["hash_workers"].parse(raw) == workers


def test_trusted_proxies_come_from_the_environment_as_a_list() -> None:
    settings = load_settings(None, {"TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"})
    assert [str(network) for network in settings.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32"]
    assert settings.sources["trusted_proxies"] == "env"


def test_the_readme_documents_every_setting_as_the_code_defines_it() -> None:
    readme = (REPO_CONFIG.parent / "README.md").read_text()
    match = re.search(r"<!-- settings:start -->\n(.*?)<!-- settings:end -->", readme, re.DOTALL)
    assert match, "README.md has no settings table between its markers"
    assert match.group(1) == reference_markdown(), "regenerate it with: python3 -m server.config"
    for option in OPTIONS:
        assert f"| `{option.key}` | `{option.env}` |" in match.group(1)


def test_defaults_written_as_text_mean_the_real_defaults() -> None:
    assert parse_duration(default_text(OPTIONS_BY_KEY["jwt_token_exp"])) == Settings().jwt_token_exp
    assert OPTIONS_BY_KEY["hash_workers"].parse("auto") == Settings().hash_workers
    assert OPTIONS_BY_KEY["metrics_token"].parse("") == Settings().metrics_token
    assert OPTIONS_BY_KEY["trusted_proxies"].parse("") == Settings().trusted_proxies
    assert OPTIONS_BY_KEY["api_user_create_scope"].parse("") == Settings().api_user_create_scope


# Scale-out: PostgreSQL, Redis and secret rotation


def test_database_url_requires_a_shared_secret(workdir: Path) -> None:
    message = config_error(None, {"DATABASE_URL": "postgresql://u:hunter2hunter2@db/auth"})
    assert "DATABASE_URL is set" in message
    assert "JWT_SECRET" in message
    assert "hunter2" not in message
    settings = load_settings(None, {"DATABASE_URL": "postgres://db/auth", "JWT_SECRET": GOOD_SECRET}, None)
    assert settings.database_url == "postgres://db/auth"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("DATABASE_URL", "mysql://u:hunter2hunter2@db/auth", "expected a postgresql:// or postgres:// URL"),
        ("DATABASE_URL", "postgresql://u:hunter2hunter2@db:port/auth", "is not a valid URL"),
        ("DATABASE_URL", "postgresql://", "names no host"),
        ("REDIS_URL", "http://u:hunter2hunter2@cache", "expected a redis://, rediss:// or unix:// URL"),
        ("RATE_LIMIT_REDIS_FAILURE", "open", "must be local or deny"),
        ("JWT_SECRET_PREVIOUS", "hunter2hunter2", "each secret must be at least 32 bytes long"),
        ("DATABASE_POOL_MAX", "0", "must be between 1 and 1000"),
        ("REDIS_TIMEOUT_MS", "0", "must be between 1 and 60000"),
    ],
)
def test_scale_out_settings_are_checked_without_repeating_secrets(
    workdir: Path, name: str, value: str, fragment: str
) -> None:
    message = config_error(None, {name: value, "JWT_SECRET": GOOD_SECRET})
    assert message.startswith(name + ": ")
    assert fragment in message
    assert "hunter2" not in message


def test_pool_min_above_max_is_refused(workdir: Path) -> None:
    message = config_error(None, {"DATABASE_POOL_MIN": "5", "DATABASE_POOL_MAX": "2"})
    assert message == "DATABASE_POOL_MIN 5 is larger than DATABASE_POOL_MAX 2"


def test_scale_out_settings_from_the_environment(workdir: Path) -> None:
    environ = {
        "REDIS_URL": " redis://cache:6379/1 ",
        "RATE_LIMIT_REDIS_FAILURE": "DENY",
        "JWT_SECRET_PREVIOUS": f"{'a' * 32}, {'b' * 40},{'a' * 32}",
    }
    settings = load_settings(None, environ, None)
    assert settings.redis_url == "redis://cache:6379/1"
    assert settings.database_url is None  # Redis alone: users stay in SQLite
    assert settings.rate_limit_redis_failure == "deny"
    assert settings.jwt_secret_previous == ("a" * 32, "b" * 40)


def test_redacted_url_hides_only_the_password() -> None:
    assert redacted_url("postgresql://mixauth:s3cret@db:5432/auth?sslmode=require") == (
        "postgresql://mixauth:***@db:5432/auth?sslmode=require"
    )
    assert redacted_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_a_base64_secret_names_the_bytes_it_encodes(workdir: Path) -> None:
    """A generated secret (DATA_DIR/jwt-secret, URL-safe base64 of 64 random bytes) used as JWT_SECRET."""
    raw = bytes(range(200, 256)) + bytes(range(8))
    text = "base64:" + base64.urlsafe_b64encode(raw).decode()
    assert secret_key(text) == raw
    assert secret_key(text.rstrip("=")) == raw  # padding is optional
    assert secret_key(GOOD_SECRET) == GOOD_SECRET.encode()
    assert load_settings(None, {"JWT_SECRET": text}, None).jwt_secret == text
    assert "at least 32 bytes" in config_error(None, {"JWT_SECRET": "base64:" + base64.b64encode(b"x" * 31).decode()})
    assert "not valid base64" in config_error(None, {"JWT_SECRET": "base64:" + "*" * 60})
