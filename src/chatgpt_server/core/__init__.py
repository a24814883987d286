"""The neutral conversation core: items, history and budget, turns."""
