"""make bench: end-to-end speedup, latency and acceptance of specdec vs target-only and vs
Hugging Face assisted generation (see bench/run.py)."""
