"""The coordinator: drives propose -> verify -> roll back, and serves the Generator API."""
