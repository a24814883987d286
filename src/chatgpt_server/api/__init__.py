"""The HTTP edge: routes, request validation, the envelope, OpenAPI and messages."""
