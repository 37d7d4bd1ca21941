"""The draft service: a small model proposing tokens, one KV cache per session."""
