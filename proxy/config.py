"""Settings: one frozen, validated object; the only reader of config files and the environment.

Precedence: CLI flag > EDGECACHE_* environment variable > TOML file > default.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Any, get_type_hints

from .request.paths import BadPath, clean_path

ENV_PREFIX = "EDGECACHE_"
# Settings that were renamed: the old name is refused with the new one.
RENAMED = {"upload_idle_timeout": "client_body_timeout"}
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
    cache_enabled: bool = True
    cache_size_limit: int = 20 * 1024**3
    block_size: int = 4 * 1024**2
    max_object_size: int = 10 * 1024**3
    policy_memory: int = 64 * 1024**2  # the cache policy's state: queues, ghosts (see proxy/policy/)
    scrub_rate: int = 4 * 1024**2  # bytes a second the scrub reads stored blocks again to check them (0: off)
    origin_connect_timeout: float = 5.0
    origin_read_timeout: float = 30.0
    origin_response_timeout: float = 15.0
    default_ttls: str = ""
    heuristic_fraction: float = 0.1
    heuristic_max_ttl: int = 86400
    stale_while_revalidate: int = 0
    stale_if_error: int = 0
    stale_if_unreachable: bool = True
    cdn_cache_control: str = "CDN-Cache-Control"
    write_tokens: str = ""
    trusted_proxies: str = ""
    public_base_url: str = ""
    max_upload_size: int = 10 * 1024**3
    upload_extensions: str = ""
    chunk_size: int = 512 * 1024
    cache_control: str = "public, max-age=3600"
    max_ranges: int = 16
    serve_dotfiles: bool = False
    compat_routes: bool = True
    keepalive_timeout: int = 5
    max_header_count: int = 100
    max_header_bytes: int = 16 * 1024
    client_header_timeout: float = 10.0
    client_body_timeout: float = 20.0
    client_body_min_rate: int = 256
    send_timeout: float = 60.0
    max_connections: int = 4096
    max_connections_per_client: int = 0
    max_pipelined_requests: int = 16
    shutdown_grace: float = 10.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_port: int = 0
    forwarded_header: str = "x-forwarded-for"
    server_name: str = "edgecache"
    cache_name: str = "edgecache"
    signing_key: str = ""
    signed_prefixes: str = ""
    purge_peers: str = ""
    max_cache_tags: int = 64  # cache tags (Surrogate-Key, Cache-Tag) indexed per stored response, for purges by tag
    forward_cache_tags: bool = False  # send the origin's Surrogate-Key and Cache-Tag fields on to clients
    log_level: str = "info"
    access_log: bool = True
    access_log_format: str = "combined"
    read_ahead_blocks: int = 0
    max_variants: int = 32
    prefetch_segments: int = 0  # HLS/DASH: the next N segments of a rendition filled ahead (0: off)
    prefetch_max_fills: int = 64  # ... at most this many at a time per worker, all renditions
    manifest_ttl: int = 60  # seconds a master or VOD playlist, or a static MPD, is fresh when the origin says nothing
    segment_ttl: int = 86400  # ... and a media segment (0: the RFC 9111 heuristic, as for other files)
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_part_size: int = 8 * 1024**2
    # Credentials of an S3 origin, from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
    # AWS_SESSION_TOKEN (see read_env); empty: anonymous requests. Never shown in a repr.
    s3_access_key_id: str = field(default="", repr=False)
    s3_secret_access_key: str = field(default="", repr=False)
    s3_session_token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        for check in _CHECKS:
            check(self)

    @property
    def origin_is_http(self) -> bool:
        return self.origin.startswith(("http://", "https://"))

    @property
    def origin_is_s3(self) -> bool:
        return self.origin.startswith("s3://")

    @property
    def s3_location(self) -> tuple[str, str]:
        """The bucket and key prefix of an `s3://BUCKET/PREFIX` origin ('videos', 'edge/' or '')."""
        bucket, _, prefix = self.origin.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        return bucket, prefix + "/" if prefix else ""

    @functools.cached_property
    def ttl_rules(self) -> tuple[tuple[str, int], ...]:
        """default_ttls 'GLOB=SECONDS, ...' as pairs, in order."""
        return _parse_ttls(self.default_ttls)

    @functools.cached_property
    def cdn_fields(self) -> tuple[str, ...]:
        """Targeted cache-control fields (RFC 9213), lower-case, in order of precedence."""
        return tuple(f.lower() for f in _items(self.cdn_cache_control))

    @functools.cached_property
    def tokens(self) -> tuple[str, ...]:
        return _items(self.write_tokens)

    @functools.cached_property
    def proxies(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p, strict=False) for p in _items(self.trusted_proxies))

    @functools.cached_property
    def peers(self) -> tuple[str, ...]:
        """Base URLs of the next tier's edges a purge is forwarded to."""
        return _items(self.purge_peers)

    @functools.cached_property
    def signed_paths(self) -> tuple[str, ...]:
        """Path prefixes whose reads need a signature; empty: every read (when signing_key is set)."""
        return _items(self.signed_prefixes)

    @functools.cached_property
    def extensions(self) -> tuple[str, ...]:
        """Allowed upload extensions, lower-case with the dot; empty: any."""
        return tuple(("." + e.lstrip(".")).lower() for e in _items(self.upload_extensions))


def _items(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _parse_ttls(text: str) -> tuple[tuple[str, int], ...]:
    rules = []
    for item in text.split(","):
        if not item.strip():
            continue
        pattern, eq, seconds = item.rpartition("=")
        if not eq or not pattern.strip() or not seconds.strip().isdigit():
            raise ConfigError(
                f"invalid setting 'default_ttls': expected 'GLOB=SECONDS, ...' (got {item.strip()!r})"
            )
        rules.append((pattern.strip(), int(seconds)))
    return tuple(rules)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_SIZE_FIELDS = {"chunk_size", "max_header_bytes", "client_body_min_rate", "cache_size_limit", "block_size",
                "max_object_size", "max_upload_size", "s3_part_size", "policy_memory", "scrub_rate"}
_MULTIPLIERS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """'512KiB', '4M', '4.2GiB', '1048576' -> bytes (binary multiples; a fraction of a byte is dropped)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(text)
    return int(Fraction(m.group(1)) * _MULTIPLIERS[m.group(2).lower()])


def format_size(n: int) -> str:
    """Bytes for people, in binary multiples: 21474836480 -> '20 GiB', 1536 -> '1.5 KiB'."""
    for unit, multiple in (("EiB", 1024**6), ("PiB", 1024**5), ("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2),
                           ("KiB", 1024)):
        if n >= multiple:
            return f"{n / multiple:.1f}".removesuffix(".0") + " " + unit
    return f"{n} B"


# A validation rule run on every new Settings; raises ConfigError.
Check = Callable[[Settings], None]


def _between(name: str, low: int, high: int) -> Check:
    def check(s: Settings) -> None:
        value = getattr(s, name)
        if not low <= value <= high:
            shown = format_size if name in _SIZE_FIELDS else str  # a size as people write one
            raise ConfigError(f"invalid setting '{name}': must be between {shown(low)} and {shown(high)} "
                              f"(got {shown(value)})")

    return check


def _nonempty(name: str) -> Check:
    def check(s: Settings) -> None:
        if not getattr(s, name).strip():
            raise ConfigError(f"invalid setting '{name}': must not be empty")

    return check


_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 section 5.1: a token


def _field_names(name: str) -> Check:
    def check(s: Settings) -> None:
        bad = [f for f in _items(getattr(s, name)) if not _FIELD_NAME.fullmatch(f)]
        if bad:
            raise ConfigError(f"invalid setting '{name}': {bad[0]!r} is not a header field name")

    return check


def _one_of(name: str, choices: tuple[str, ...]) -> Check:
    def check(s: Settings) -> None:
        if getattr(s, name) not in choices:
            raise ConfigError(
                f"invalid setting '{name}': must be one of {', '.join(choices)} (got {getattr(s, name)!r})"
            )

    return check


def _header_value(name: str) -> Check:
    def check(s: Settings) -> None:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in getattr(s, name)):
            raise ConfigError(f"invalid setting '{name}': control characters are not allowed")

    return check


def _origin(s: Settings) -> None:
    if s.origin_is_s3:
        _s3_origin(s)
        return
    if "://" in s.origin and not s.origin_is_http:
        raise ConfigError(
            f"invalid setting 'origin': only http://, https:// and s3:// URLs or a directory (got {s.origin!r})"
        )
    if s.origin_is_http:
        rest = s.origin.split("://", 1)[1]
        host = rest.split("/", 1)[0]
        if not host or "@" in host or "?" in rest or "#" in rest:
            raise ConfigError(
                f"invalid setting 'origin': expected http(s)://host[:port][/base] (got {s.origin!r})"
            )


# S3 bucket names: 3-63 lower-case letters, digits, dots and hyphens, a letter or digit at each end.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _s3_origin(s: Settings) -> None:
    bucket, prefix = s.s3_location
    if not _BUCKET.fullmatch(bucket):
        raise ConfigError(f"invalid setting 'origin': expected s3://BUCKET[/PREFIX] with a valid bucket name "
                          f"(got {s.origin!r})")
    try:
        if clean_path(prefix, allow_dotfiles=True) != prefix.rstrip("/") or "?" in prefix or "#" in prefix:
            raise BadPath("'?', '#' and empty segments are not allowed")
    except BadPath as e:
        raise ConfigError(f"invalid setting 'origin': the S3 key prefix is not a clean path: {e}") from None
    if s.max_upload_size > 10_000 * s.s3_part_size:  # S3 takes at most 10,000 parts
        raise ConfigError("invalid setting 's3_part_size': 10,000 parts must hold max_upload_size")


def _endpoint(s: Settings) -> None:
    url = s.s3_endpoint_url
    host = url.split("://", 1)[-1].split("/", 1)[0]
    if url and (not url.startswith(("http://", "https://")) or not host or "@" in host
                or any(c in url for c in " ?#\t\r\n")):
        raise ConfigError(f"invalid setting 's3_endpoint_url': expected http(s)://host[:port] (got {url!r})")


def _cache_sizes(s: Settings) -> None:
    if s.block_size * 64 > s.cache_size_limit:
        raise ConfigError("invalid setting 'block_size': must be at most 1/64 of cache_size_limit")
    if s.max_object_size > s.cache_size_limit // 2:
        raise ConfigError("invalid setting 'max_object_size': must be at most half of cache_size_limit")
    _parse_ttls(s.default_ttls)


def _networks(s: Settings) -> None:
    try:
        _ = s.proxies  # parsing the networks is the check
    except ValueError as e:
        raise ConfigError(f"invalid setting 'trusted_proxies': {e}") from None


def _base_url(s: Settings) -> None:
    url = s.public_base_url
    if url and (not url.startswith(("http://", "https://")) or any(c in url for c in " ?#\t\r\n")):
        raise ConfigError(f"invalid setting 'public_base_url': expected http(s)://host[/path] (got {url!r})")


# RFC 8941 section 3.3.4: a Cache-Status cache identifier is an sf-token (RFC 9211 section 2).
_SF_TOKEN = re.compile(r"[A-Za-z*][0-9A-Za-z:/!#$%&'*+.^_`|~-]*")


def _cache_name(s: Settings) -> None:
    if not _SF_TOKEN.fullmatch(s.cache_name):
        raise ConfigError(f"invalid setting 'cache_name': expected a token such as edge-1 (got {s.cache_name!r})")


def _signing(s: Settings) -> None:
    if s.signing_key and len(s.signing_key) < 16:
        raise ConfigError("invalid setting 'signing_key': must be at least 16 characters")
    if s.signed_paths and not s.signing_key:
        raise ConfigError("invalid setting 'signed_prefixes': needs a signing_key")
    bad = [p for p in s.signed_paths if not p.startswith("/")]
    if bad:
        raise ConfigError(f"invalid setting 'signed_prefixes': {bad[0]!r} does not start with '/'")


def _peers(s: Settings) -> None:
    bad = [p for p in s.peers if not p.startswith(("http://", "https://")) or any(c in p for c in " ?#@\t\r\n")]
    if bad:
        raise ConfigError(f"invalid setting 'purge_peers': expected http(s)://host[:port], ... (got {bad[0]!r})")


def _tls(s: Settings) -> None:
    if bool(s.tls_cert) != bool(s.tls_key):
        raise ConfigError("invalid setting 'tls_cert': tls_cert and tls_key go together (PEM files)")
    if s.tls_port and not s.tls_cert:
        raise ConfigError("invalid setting 'tls_port': needs tls_cert and tls_key")
    if not 0 <= s.tls_port <= 65535 or (s.tls_port and s.tls_port == s.port):
        raise ConfigError(f"invalid setting 'tls_port': a port other than 'port', 1 to 65535 (got {s.tls_port})")


def _positive(name: str, high: float) -> Check:
    def check(s: Settings) -> None:
        value = getattr(s, name)
        if not 0 < value <= high:
            raise ConfigError(f"invalid setting '{name}': must be more than 0 and at most {high:g} (got {value})")

    return check


_CHECKS: list[Check] = [
    _nonempty("origin"),
    _origin,
    _nonempty("host"),
    _between("port", 0, 65535),
    _between("workers", 1, 64),
    _nonempty("cache_dir"),
    _between("cache_size_limit", 64 * 1024**2, 2**60),
    _between("policy_memory", 1024**2, 2**40),
    _between("block_size", 64 * 1024, 256 * 1024**2),
    _between("scrub_rate", 0, 2**40),
    _between("max_object_size", 1, 2**60),
    _cache_sizes,
    _positive("origin_connect_timeout", 3600),
    _positive("origin_read_timeout", 3600),
    _positive("origin_response_timeout", 3600),
    _positive("heuristic_fraction", 1),
    _between("heuristic_max_ttl", 0, 2**31),
    _between("stale_while_revalidate", 0, 2**31),
    _between("stale_if_error", 0, 2**31),
    _field_names("cdn_cache_control"),
    _networks,
    _base_url,
    _between("max_upload_size", 1, 2**60),
    _between("chunk_size", 4096, 16 * 1024 * 1024),
    _header_value("cache_control"),
    _between("max_ranges", 1, 1000),
    _between("keepalive_timeout", 1, 3600),
    _between("max_header_count", 10, 1000),
    _between("max_header_bytes", 1024, 1024 * 1024),
    _positive("client_header_timeout", 3600),
    _positive("client_body_timeout", 3600),
    _between("client_body_min_rate", 0, 2**40),
    _positive("send_timeout", 3600),
    _between("max_connections", 16, 1_000_000),
    _between("max_connections_per_client", 0, 1_000_000),
    _between("max_pipelined_requests", 1, 1024),
    _between("shutdown_grace", 0, 3600),
    _tls,
    _one_of("forwarded_header", ("x-forwarded-for", "forwarded")),
    _header_value("server_name"),
    _cache_name,
    _signing,
    _peers,
    _one_of("log_level", ("critical", "error", "warning", "info", "debug")),
    _one_of("access_log_format", ("combined", "json")),
    _endpoint,
    _nonempty("s3_region"),
    _header_value("s3_region"),
    # S3 multipart upload: parts of 5 MiB to 5 GiB (but the last), at most 10,000 of them.
    _between("s3_part_size", 5 * 1024**2, 5 * 1024**3),
    _between("read_ahead_blocks", 0, 64),
    _between("max_variants", 1, 4096),
    _between("prefetch_segments", 0, 64),
    _between("prefetch_max_fills", 1, 1024),
    _between("max_cache_tags", 0, 1024),
    _between("manifest_ttl", 0, 2**31),
    _between("segment_ttl", 0, 2**31),
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
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value) if isinstance(value, (int, float)) else float(str(value).strip())
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(value)
        return str(value)
    except ValueError:
        expected = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}[kind]
        if name in _SIZE_FIELDS:
            expected = "a size in bytes (e.g. 524288 or 512KiB)"
        raise ConfigError(f"invalid setting '{name}': expected {expected} (got {value!r})") from None


def _from_mapping(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in RENAMED:
            raise ConfigError(f"setting '{key}' in {source} is now called '{RENAMED[name]}'")
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


# The standard AWS variables an S3 origin's credentials come from (EDGECACHE_S3_* go first).
_AWS_ENV = {"s3_access_key_id": "AWS_ACCESS_KEY_ID", "s3_secret_access_key": "AWS_SECRET_ACCESS_KEY",
            "s3_session_token": "AWS_SESSION_TOKEN"}


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for name in FIELD_TYPES:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            values[name] = _coerce(name, environ[key])
        elif name in _AWS_ENV and _AWS_ENV[name] in environ:
            values[name] = environ[_AWS_ENV[name]]
    return values


def unknown_env(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """EDGECACHE_* variables that name no setting, each with the closest known name (or None)."""
    names = [*FIELD_TYPES, "config"]
    known = {ENV_PREFIX + name.upper() for name in names} | {RESOLVED_ENV}
    found = []
    for key in sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known):
        name = key[len(ENV_PREFIX):].lower()
        close = [RENAMED[name]] if name in RENAMED else difflib.get_close_matches(name, names, n=1)
        found.append((key, ENV_PREFIX + close[0].upper() if close else None))
    return found


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
