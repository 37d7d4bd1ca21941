"""How K (the proposals per round) is chosen: the per-session cost model (adaptive) and one
K per lockstep round at load (round_k). Pure arithmetic on measured costs and acceptance."""
