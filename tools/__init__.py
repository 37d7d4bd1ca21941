"""Developer tools: `make run` and `make demo`."""
