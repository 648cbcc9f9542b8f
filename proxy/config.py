"""Settings: one frozen, validated object; the only reader of config files and the environment.

Precedence: CLI flag > EDGECACHE_* environment variable > TOML file > default.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from dataclasses import dataclass, fields
from typing import Any, Mapping, get_type_hints

ENV_PREFIX = "EDGECACHE_"
# The CLI hands the resolved settings to worker processes through this variable.
RESOLVED_ENV = "EDGECACHE__RESOLVED"


class ConfigError(ValueError):
    """An invalid setting; the message names the setting and says what is wrong."""


@dataclass(frozen=True)
class Settings:
    origin: str = "./assets"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    cache_dir: str = "./.edgecache"
    chunk_size: int = 512 * 1024
    cache_control: str = "public, max-age=3600"
    max_ranges: int = 16
    serve_dotfiles: bool = False
    compat_routes: bool = True
    keepalive_timeout: int = 5
    max_header_count: int = 100
    max_header_bytes: int = 16 * 1024
    server_name: str = "edgecache"
    log_level: str = "info"
    access_log: bool = True

    def __post_init__(self) -> None:
        for check in _CHECKS:
            check(self)


_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_SIZE_FIELDS = {"chunk_size", "max_header_bytes"}
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """'512KiB', '4M', '1048576' -> bytes (binary multiples)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(text)
    return int(m.group(1)) * 1024 ** _POWERS[m.group(2).lower()]


def _between(name: str, low: int, high: int):
    def check(s: Settings) -> None:
        value = getattr(s, name)
        if not low <= value <= high:
            raise ConfigError(f"invalid setting '{name}': must be between {low} and {high} (got {value})")

    return check


def _nonempty(name: str):
    def check(s: Settings) -> None:
        if not getattr(s, name).strip():
            raise ConfigError(f"invalid setting '{name}': must not be empty")

    return check


def _one_of(name: str, choices: tuple[str, ...]):
    def check(s: Settings) -> None:
        if getattr(s, name) not in choices:
            raise ConfigError(
                f"invalid setting '{name}': must be one of {', '.join(choices)} (got {getattr(s, name)!r})"
            )

    return check


def _header_value(name: str):
    def check(s: Settings) -> None:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in getattr(s, name)):
            raise ConfigError(f"invalid setting '{name}': control characters are not allowed")

    return check


_CHECKS = [
    _nonempty("origin"),
    _nonempty("host"),
    _between("port", 0, 65535),
    _between("workers", 1, 64),
    _nonempty("cache_dir"),
    _between("chunk_size", 4096, 16 * 1024 * 1024),
    _header_value("cache_control"),
    _between("max_ranges", 1, 1000),
    _between("keepalive_timeout", 1, 3600),
    _between("max_header_count", 10, 1000),
    _between("max_header_bytes", 1024, 1024 * 1024),
    _header_value("server_name"),
    _one_of("log_level", ("critical", "error", "warning", "info", "debug")),
]

FIELD_TYPES: dict[str, type] = {f.name: get_type_hints(Settings)[f.name] for f in fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    """Convert a raw value (TOML value, env string or flag string) to the field's type."""
    kind = FIELD_TYPES[name]
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, int):
                return value
            if name in _SIZE_FIELDS:
                return parse_size(str(value))
            return int(str(value).strip())
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(value)
        return str(value)
    except ValueError:
        expected = {bool: "true or false", int: "a whole number", str: "a string"}[kind]
        if name in _SIZE_FIELDS:
            expected = "a size in bytes (e.g. 524288 or 512KiB)"
        raise ConfigError(f"invalid setting '{name}': expected {expected} (got {value!r})") from None


def _from_mapping(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELD_TYPES:
            raise ConfigError(f"unknown setting '{key}' in {source}")
        values[name] = _coerce(name, value)
    return values


def read_file(path: str) -> dict[str, Any]:
    """Settings from a TOML file: top-level keys or an [edgecache] table."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"invalid setting 'config': cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid setting 'config': {path} is not valid TOML: {e}") from None
    return _from_mapping(data.get("edgecache", data), path)


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for name in FIELD_TYPES:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            values[name] = _coerce(name, environ[key])
    return values


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Resolve flag > env > file > default into one validated Settings."""
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    merged: dict[str, Any] = {}
    if config_file:
        merged.update(read_file(config_file))
    merged.update(read_env(environ))
    merged.update(_from_mapping({k: v for k, v in (flags or {}).items() if v is not None}, "flags"))
    return Settings(**merged)


def dump_resolved(settings: Settings) -> str:
    return json.dumps(dataclasses.asdict(settings))


def settings_for_worker(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings in a worker process: what the CLI resolved, else env and file."""
    environ = os.environ if environ is None else environ
    if RESOLVED_ENV in environ:
        return Settings(**json.loads(environ[RESOLVED_ENV]))
    return load_settings(environ=environ)
