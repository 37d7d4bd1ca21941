"""The draft and target services as the coordinator sees them: gRPC clients (clients), what
each call cost (costs, for the K policy), batched calls and lockstep dispatch (batcher),
replica sets and placement (replicas), addresses and DNS (addresses), adaptive timeouts
(budgets), work left running (background). Imports nothing else of the coordinator."""
