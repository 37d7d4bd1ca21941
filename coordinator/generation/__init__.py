"""One generation from request to last token: validation and metrics (core), the round loop
(decode.Generation), each service's side of a request with its fault handling (legs,
draft_leg + draft_state, target_leg, faults), stop strings (textstream), counters (stats,
metrics). Imports speculation/ (the choice of K) and upstream/ (the services), never api/."""
