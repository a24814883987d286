"""The one settings object.

Values come from (highest first) command-line flags, ``CHATGPT_SERVER_*`` environment variables, a
``.env`` file in the working directory, and the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "chatgpt-server"


def normalise_base_url(url: str) -> str:
    """Lower-case scheme and host, no trailing slash: the form allow-list comparisons use."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"a base URL takes no query, fragment or credentials: {url!r}")
    netloc = parts.hostname.lower() + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATGPT_SERVER_", env_file=".env", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(7002, ge=1, le=65535)
    data_dir: Path = Field(default_factory=_default_data_dir)
    store_url: str = ""
    """Where conversations live: sqlite:///path, redis://..., postgresql://..."""

    openai_base_url: str = "https://api.openai.com/v1"
    chatgpt_url: str = "https://chatgpt.com/backend-api/conversation"
    chatgpt_web_url: str = "https://chatgpt.com"
    auth_url: str = "https://auth.openai.com"
    allowed_upstreams: Annotated[tuple[str, ...], NoDecode] = ()
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    """Browser origins allowed to call the API (comma-separated; "*" for any). Off by default."""
    proxy: str | None = None

    language: Literal["en", "zh"] = "en"
    secret_key: SecretStr | None = None
    """Key of the HMAC that binds conversations to credentials; generated and kept in the store if unset."""

    default_model: str = "gpt-4o-mini"
    default_chatgpt_model: str = "auto"
    max_model_tokens: int = Field(4000, gt=0)
    max_response_tokens: int = Field(1000, gt=0)
    timeout_ms: int = Field(600_000, gt=0)
    idle_timeout_ms: int = Field(120_000, gt=0)
    heartbeat_seconds: float = Field(15.0, gt=0)
    max_body_bytes: int = Field(1_048_576, gt=0)
    retention_days: int = Field(30, ge=0)
    token_margin_seconds: int = Field(300, ge=0)
    log_level: str = "INFO"

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
            value = [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return tuple(value)

    @field_validator("openai_base_url", "chatgpt_url", "chatgpt_web_url", "auth_url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        return normalise_base_url(value)

    @field_validator("proxy")
    @classmethod
    def _check_proxy(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in PROXY_SCHEMES or not parts.hostname or not parts.port:
            raise ValueError(f"proxy must be one of {', '.join(PROXY_SCHEMES)}://host:port")
        return value

    @model_validator(mode="after")
    def _default_store(self) -> Settings:
        if not self.store_url:
            object.__setattr__(self, "store_url", f"sqlite:///{self.data_dir / 'conversations.db'}")
        scheme = self.store_url.split(":", 1)[0]
        if scheme not in ("sqlite", "redis", "rediss", "postgresql", "postgres"):
            raise ValueError(f"unsupported store URL scheme {scheme!r}")
        return self

    def is_allowed(self, base_url: str, configured_default: str) -> bool:
        """A per-request upstream is allowed if it is the configured default or on the allow-list."""
        url = normalise_base_url(base_url)
        return url == configured_default or url in self.allowed_upstreams

    def masked(self) -> dict[str, Any]:
        """The effective settings for the start-up log, with secrets and credentials masked."""
        shown = self.model_dump(mode="json")
        shown["secret_key"] = "***" if self.secret_key else None
        shown["store_url"] = mask_url(self.store_url)
        shown["proxy"] = mask_url(self.proxy) if self.proxy else None
        return shown


def mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
