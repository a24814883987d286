"""The typed request the HTTP edge hands to the conversation logic, and the reply it gets back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ChatRequest:
    mode: str  # "1": OpenAI API key; "2": ChatGPT web access token
    key: str
    content: str
    is_follow: bool = False
    parent_message_id: str | None = None
    stream: bool = False
    # mode 1
    system_message: str | None = None
    completion_params: dict[str, Any] = field(default_factory=dict)
    max_model_tokens: int = 4000
    max_response_tokens: int = 1000
    base_url: str = ""
    organization: str | None = None
    # mode 2
    model: str | None = None
    conversation_url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # both
    timeout_s: float = 600.0
    idle_timeout_s: float = 120.0


@dataclass(slots=True)
class Reply:
    id: str
    parent_message_id: str
    conversation_id: str
    text: str
    detail: dict[str, Any] | None = None
    incomplete: bool = False

    def data(self) -> dict[str, Any]:
        """The ``data`` of the envelope, shaped as the original library's chat message."""
        data: dict[str, Any] = {
            "role": "assistant",
            "id": self.id,
            "parentMessageId": self.parent_message_id,
            "conversationId": self.conversation_id,
            "text": self.text,
        }
        if self.detail is not None:
            data["detail"] = self.detail
        if self.incomplete:
            data["incomplete"] = True
        return data
