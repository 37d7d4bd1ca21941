"""The draft and target services as the coordinator sees them: gRPC clients (clients),
batched calls and lockstep dispatch (batcher), replica sets and placement (replicas),
addresses and DNS (addresses), adaptive timeouts (budgets)."""
