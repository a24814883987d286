"""The one settings object.

Values come from (highest first) command-line flags, ``CHATGPT_SERVER_*`` environment variables, a
``.env`` file in the working directory, and the defaults below. Every field's description is what
``--help``, ``.env.example`` and README say about it.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .redact import masked

ENV_PREFIX = "CHATGPT_SERVER_"
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
STORE_SCHEMES = ("sqlite", "redis", "rediss", "postgresql", "postgres")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
# Query parameters of a URL that carry credentials: masked wherever a URL is shown.
_SECRET_PARAMS = re.compile(r"pass|token|secret|key|auth|credential|sig", re.IGNORECASE)


# What JavaScript's String.prototype.trim (the original's, and ECMAScript's \s in the OpenAPI patterns)
# takes for white space: not Python's str.strip set, which has \x1c-\x1f and lacks U+FEFF.
JS_SPACE = "\t\n\v\f\r \u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000\ufeff"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "chatgpt-server"


def netloc_of(scheme: str, host: str, port: int | None) -> str:
    """host[:port], with an IPv6 literal in brackets as URLs need it."""
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return host + (f":{port}" if port else "")


def normalise_base_url(url: str) -> str:
    """Lower-case scheme and host, no trailing slash: the form allow-list comparisons use."""
    url = url.strip(JS_SPACE)  # as JavaScript's trim (the original's; the OpenAPI pattern's \s)
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"not an http(s) URL: {_shown_url(url)!r}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {_shown_url(url)!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"a base URL takes no query, fragment or credentials: {_shown_url(url)!r}")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in url):
        raise ValueError(f"a base URL is printable ASCII without spaces: {_shown_url(url)!r}")
    return f"{parts.scheme.lower()}://{netloc_of(parts.scheme, parts.hostname.lower(), port)}{parts.path.rstrip('/')}"


def _shown_url(url: str) -> str:
    """A refused URL as its error quotes it: credentials masked, the fragment left out."""
    return masked(mask_url(url.split("#", 1)[0]))


def mask_url(url: str) -> str:
    """A URL safe to log: userinfo (user and password) and credential-like query values masked."""
    try:
        parts = urlsplit(url)
        host = netloc_of(parts.scheme, parts.hostname or "", parts.port) if parts.hostname else ""
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + host
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_PARAMS.search(k) else v) for k, v in pairs], safe="*/:")
    # Written out here: urlunsplit drops the empty authority of sqlite:////abs/path (a relative path then).
    masked = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else parts.path
    return masked + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


class Settings(BaseSettings):
    # An empty value is no value (.env.example's lines, uncommented as shown, give the defaults).
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True
    )

    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=7002, ge=1, le=65535, description="port to listen on")
    workers: int = Field(default=1, ge=1, le=64, description="worker processes (each with its own event loop)")
    data_dir: Path = Field(default_factory=_default_data_dir, description="where the default SQLite file lives")
    store_url: str = Field(default="", description="sqlite:///path, redis://host:port/db or postgresql://user@host/db")
    store_timeout_ms: int = Field(default=2000, ge=50, le=60_000, description="longest wait for one store operation")
    lock_lease_ms: int = Field(default=30_000, ge=100, le=3_600_000,
                               description="a conversation or account lock is renewed every third of this while "
                               "held; one a dead instance left frees itself within it")  # fmt: skip
    require_store: bool = Field(default=False, description="exit at start-up if the store cannot be opened")
    retention_days: int = Field(default=30, ge=0, description="delete messages older than this (0 keeps them)")
    secret_key: SecretStr | None = Field(
        default=None,
        description="key for credential hashes and account encryption; generated and kept in the store if unset",
    )

    openai_base_url: str = Field(default="https://api.openai.com/v1", description="mode 1 and /v1 upstream")
    models_file: Path | None = Field(default=None, description="TOML or YAML file mapping models to upstreams")
    default_context_window: int = Field(
        default=128_000, ge=256, le=10_000_000, description="context window of models the routes and tables do not know"
    )
    chatgpt_backend: Literal["codex", "web"] = Field(
        default="codex", description="mode 2 upstream: codex or web (legacy)"
    )
    codex_url: str = Field(default="https://chatgpt.com/backend-api/codex", description="the Codex backend (mode 2)")
    chatgpt_url: str = Field(
        default="https://chatgpt.com/backend-api/conversation", description="the ChatGPT web conversation URL (legacy)"
    )
    chatgpt_web_url: str = Field(default="https://chatgpt.com", description="the web app, for the legacy sign-in")
    auth_url: str = Field(default="https://auth.openai.com", description="identity service of the legacy sign-in")
    chatgpt_auth_issuer: str = Field(
        default="https://auth.openai.com", description="issuer of account tokens (device sign-in)"
    )
    chatgpt_client_id: str = Field(
        default="app_EMoamEEZ73f0CkXaXp7hrann", description="OAuth client id for device sign-in"
    )
    allowed_upstreams: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="comma-separated base URLs a request may pick with apiBaseUrl / apiReverseProxyUrl"
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description='browser origins allowed to call the API (comma-separated; "*" for any)'
    )
    proxy: str | None = Field(default=None, description="outbound proxy: http://, https://, socks5://, socks5h://")

    language: Literal["en", "zh"] = Field(
        default="zh",
        description="language of the original routes' messages, Chinese as the original's (Accept-Language overrides)",
    )
    default_model: str = Field(default="gpt-4o-mini", description="mode 1 model when the request names none")
    default_chatgpt_model: str = Field(default="gpt-5", description="mode 2 model when the request names none")
    max_model_tokens: int = Field(default=4000, ge=1, le=10_000_000, description="default maxModelTokens, mode 1")
    max_response_tokens: int = Field(default=1000, ge=1, le=1_000_000, description="default maxResponseTokens")
    timeout_ms: int = Field(default=600_000, ge=1, le=3_600_000, description="longest a whole reply may take")
    idle_timeout_ms: int = Field(default=120_000, ge=1, le=3_600_000, description="longest silence in a streamed reply")
    heartbeat_seconds: float = Field(default=15.0, gt=0, le=3600, description="': ping' interval on quiet streams")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="larger request bodies get 413")
    max_reply_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="an upstream reply past this is cut")
    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024, le=1024 * 1024, description="request line + headers limit"
    )
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, description="time allowed for a request's headers; and a body may not stall longer"
    )
    history_cache_mb: int = Field(default=32, ge=0, le=65536, description="memory for recent conversation histories")
    token_margin_seconds: int = Field(
        default=300, ge=0, description="refresh access tokens this long before they expire"
    )
    device_sign_ins_per_hour: int = Field(
        default=20, ge=1, le=100_000, description="device sign-ins one client address may start per hour (per process)"
    )
    password_sign_ins_per_hour: int = Field(
        default=20,
        ge=1,
        le=100_000,
        description="password sign-ins (the token route) one client address may make per hour (per process)",
    )
    account_grace_days: int = Field(
        default=30, ge=0, le=3650, description="how long an expired token of a stored account works"
    )
    shutdown_grace_seconds: float = Field(
        default=30.0, ge=0, le=3600, description="time in-flight replies get on SIGTERM"
    )
    log_level: str = Field(default="INFO", description="CRITICAL, ERROR, WARNING, INFO or DEBUG")
    log_format: Literal["text", "json"] = Field(default="text", description="access and event log format")
    access_log: bool = Field(default=True, description="one line per request")

    @field_validator("allowed_upstreams", mode="before")
    @classmethod
    def _split_upstreams(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        return tuple(normalise_base_url(v) for v in value)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip().rstrip("/").lower() for part in value.split(",") if part.strip()]
        return tuple(v.lower() for v in value)

    @field_validator(
        "openai_base_url", "codex_url", "chatgpt_url", "chatgpt_web_url", "auth_url", "chatgpt_auth_issuer"
    )
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        return normalise_base_url(value)

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @field_validator("proxy")
    @classmethod
    def _check_proxy(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            port = None
            parts = urlsplit("")
        if parts.scheme not in PROXY_SCHEMES or not parts.hostname or not port:
            raise ValueError(f"must be one of {', '.join(PROXY_SCHEMES)}://host:port")
        return value

    @field_validator("store_url")
    @classmethod
    def _check_store(cls, value: str) -> str:
        if not value:
            return value
        scheme = value.split(":", 1)[0] if ":" in value else ""
        if scheme not in STORE_SCHEMES:
            raise ValueError("must start with sqlite:///, redis://, rediss:// or postgresql://")
        if scheme == "sqlite" and (not value.startswith("sqlite:///") or len(value) <= len("sqlite:///")
                                   or value.endswith("/") or value.split("?", 1)[0].endswith(":memory:")):  # fmt: skip
            raise ValueError("an SQLite store is a file: sqlite:///relative/path.db or sqlite:////absolute/path.db")
        if scheme == "postgresql":
            parts = urlsplit(value)
            if (not parts.hostname and not parse_qsl(parts.query)) or not parts.path.strip("/"):
                raise ValueError("a PostgreSQL URL names its host and database: postgresql://[user@]host[:port]/db")
        if scheme in ("redis", "rediss"):
            parts = urlsplit(value)
            try:
                host, _ = parts.hostname, parts.port
            except ValueError:  # the message would quote part of the URL (a password, maybe)
                # A password holding # or ? cuts the URL short of its host: "@" anywhere says there is one.
                hint = "percent-encode special characters in the password" if "@" in value else "a port is a number"
                raise ValueError(f"a Redis URL that cannot be read: {hint}") from None
            if not host:
                raise ValueError("a Redis URL names its host: redis://[user:password@]host:port/<database number>")
            unknown = sorted({name for name, _ in parse_qsl(parts.query)} - {"prefix"})
            if unknown:
                raise ValueError(f"a Redis URL takes one option, prefix (not {', '.join(unknown)})")
            if parts.path.strip("/") and not parts.path.strip("/").isdigit():
                raise ValueError("a Redis URL looks like redis://[user:password@]host:port/<database number>")
        return value

    @model_validator(mode="after")
    def _default_store(self) -> Settings:
        if not self.store_url:
            object.__setattr__(self, "store_url", f"sqlite:///{self.data_dir / 'conversations.db'}")
        if self.max_response_tokens >= self.max_model_tokens:
            raise ValueError("CHATGPT_SERVER_MAX_RESPONSE_TOKENS must be below CHATGPT_SERVER_MAX_MODEL_TOKENS")
        if self.lock_lease_ms < 3 * self.store_timeout_ms:  # renewed every third: one may time out in time
            raise ValueError("CHATGPT_SERVER_LOCK_LEASE_MS must be at least 3 x CHATGPT_SERVER_STORE_TIMEOUT_MS")
        return self

    def is_allowed(self, base_url: str, configured_default: str) -> bool:
        """A per-request upstream is allowed if it is the configured default or on the allow-list."""
        url = normalise_base_url(base_url)
        return url == configured_default or url in self.allowed_upstreams

    def secret_bytes(self) -> bytes | None:
        return self.secret_key.get_secret_value().encode() if self.secret_key else None

    def masked(self) -> dict[str, Any]:
        """The effective settings for the start-up log, with secrets and credentials masked."""
        shown = self.model_dump(mode="json")
        shown["secret_key"] = "***" if self.secret_key else None
        for name in ("store_url", "proxy", "openai_base_url", "codex_url", "chatgpt_url", "auth_url"):
            if shown.get(name):
                shown[name] = mask_url(shown[name])
        shown["allowed_upstreams"] = [mask_url(u) for u in self.allowed_upstreams]
        return shown


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def unknown_variables(environ: Mapping[str, str], env_file: Path = Path(".env")) -> list[str]:
    """A warning for each ``CHATGPT_SERVER_*`` variable (in the environment or the ``.env`` file) that
    names no setting: a misspelled one would otherwise leave its setting at the default, unsaid."""
    from dotenv import dotenv_values

    names = set(environ)
    if env_file.is_file():
        names.update(dotenv_values(env_file))
    known = [field.upper() for field in Settings.model_fields]
    warnings = []
    for name in sorted(names):
        field = name.upper().removeprefix(ENV_PREFIX)
        if not name.upper().startswith(ENV_PREFIX) or field in known:
            continue
        near = difflib.get_close_matches(field, known, n=1, cutoff=0.75)
        hint = f" (did you mean {ENV_PREFIX}{near[0]}?)" if near else ""
        warnings.append(f"{name} is not a setting{hint}: it is ignored")
    return warnings
