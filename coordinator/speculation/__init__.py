"""How K (the proposals per round) is chosen: the per-session cost model (adaptive) and one
K per lockstep round at load (round_k). Pure arithmetic on the costs the upstream clients
measure (upstream.costs, its only import) and on the acceptance the rounds record."""
