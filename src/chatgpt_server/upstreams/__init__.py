"""Clients of the three upstreams (OpenAI API, ChatGPT web backend, web sign-in) and pure parsers."""
