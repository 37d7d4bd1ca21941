"""The coordinator: drives propose -> verify -> roll back, and serves the Generator API.

api/ (front ends) -> generation/ (one request, its rounds and fault handling) ->
speculation/ (how K is chosen) and upstream/ (the services: clients, batching, replicas);
server.py wires them together. See the README's file map."""
