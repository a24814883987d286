"""Conversation logic: history from the parent chain, the token budget, turn bookkeeping."""
