"""Doors: one module per wire format a client speaks; each translates to the core and back."""
