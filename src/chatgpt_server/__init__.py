"""chatgpt-server: ChatGPT behind one small HTTP API, with conversations that remember."""

__version__ = "0.1.0"
