"""ChatGPT accounts: device sign-in, refresh, verified tokens, and the legacy email/password flow."""
