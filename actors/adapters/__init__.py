"""Built-in feed adapters (the adapter API: actors/feed_api.py)."""
