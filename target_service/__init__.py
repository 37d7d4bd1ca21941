"""The target service: the big model verifying draft proposals, one KV cache per session."""
