"""Which upstream serves a model, and how large its context window is.

By default ``CHATGPT_SERVER_OPENAI_BASE_URL`` serves every model. A routes file
(``CHATGPT_SERVER_MODELS_FILE``, TOML or YAML) maps model names or glob patterns to other upstreams,
first match wins::

    [[models]]
    name = "llama3*"                          # an exact name or a glob pattern
    base_url = "http://127.0.0.1:11434/v1"   # a chat-completions upstream
    context_window = 8192

    [[models]]
    name = "gpt-5-codex"
    upstream = "codex"                        # served by a stored ChatGPT account

The file is the operator's: its base URLs need no allow-list entry (the allow-list bounds what
clients name, not what the operator configured). Known OpenAI context windows are built
in; ``CHATGPT_SERVER_DEFAULT_CONTEXT_WINDOW`` covers the rest.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..settings import Settings, normalise_base_url

# Context windows of OpenAI's models, by name prefix (longest prefix wins).
KNOWN_WINDOWS: dict[str, int] = {
    "gpt-3.5-turbo": 16_385,
    "gpt-4": 8_192,
    "gpt-4-32k": 32_768,
    "gpt-4-turbo": 128_000,
    "gpt-4o": 128_000,
    "chatgpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.5": 128_000,
    "gpt-5": 400_000,
    "gpt-5-chat": 128_000,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o4-mini": 200_000,
    "gpt-oss": 131_072,
    "codex": 400_000,
}


class RoutesFileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ModelRoute:
    pattern: str
    upstream: str  # "chat" or "codex"
    base_url: str
    context_window: int | None = None


def _load(path: Path) -> Any:
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text)
    return tomllib.loads(text)


def load_routes(path: Path, settings: Settings) -> list[ModelRoute]:
    try:
        document = _load(path)
    except (OSError, ValueError, ImportError) as exc:
        raise RoutesFileError(f"{path}: {exc}") from exc
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise RoutesFileError(f"{path}: expected a list named 'models'")
    routes: list[ModelRoute] = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise RoutesFileError(f"{path}: models[{number}] needs a name")
        upstream = entry.get("upstream", "chat")
        if upstream not in ("chat", "codex"):
            raise RoutesFileError(f"{path}: models[{number}].upstream must be chat or codex")
        base = entry.get("base_url") or (settings.codex_url if upstream == "codex" else settings.openai_base_url)
        try:
            base = normalise_base_url(str(base))
        except ValueError as exc:
            raise RoutesFileError(f"{path}: models[{number}].base_url: {exc}") from exc
        window = entry.get("context_window")
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 256):
            raise RoutesFileError(f"{path}: models[{number}].context_window must be an integer of at least 256")
        routes.append(ModelRoute(entry["name"], upstream, base, window))
    return routes


class Models:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.routes = load_routes(settings.models_file, settings) if settings.models_file else []
        self.default = ModelRoute("*", "chat", settings.openai_base_url)

    def route(self, model: str) -> ModelRoute:
        for route in self.routes:
            if route.pattern == model or fnmatch.fnmatchcase(model, route.pattern):
                return route
        return self.default

    def chat_bases(self) -> list[str]:
        """Every chat-completions upstream a key may be for, the default first."""
        bases = [self.default.base_url]
        for route in self.routes:
            if route.upstream == "chat" and route.base_url not in bases:
                bases.append(route.base_url)
        return bases

    def window(self, model: str) -> int:
        route = self.route(model)
        if route.context_window:
            return route.context_window
        name = model.lower().split("/")[-1]
        best = max((p for p in KNOWN_WINDOWS if name.startswith(p)), key=len, default=None)
        return KNOWN_WINDOWS[best] if best else self.settings.default_context_window

    def listed(self) -> list[dict[str, Any]]:
        """What GET /v1/models shows: the models the routes file names (patterns included, as they
        are), then the default upstream."""
        out = [self._model(r.pattern, r.upstream) for r in self.routes]
        default = self.settings.default_model
        if all(item["id"] != default for item in out):
            out.append(self._model(default, "chat"))
        return out

    def described(self, model: str) -> dict[str, Any]:
        """What GET /v1/models/{model} shows: the model, owned by the upstream that serves it."""
        return self._model(model, self.route(model).upstream)

    def _model(self, name: str, upstream: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": upstream, "context_window": self.window(name)}
