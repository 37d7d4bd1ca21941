"""One generation from request to last token: validation and metrics (core), the round loop
(decode), each service's side of a request with its fault handling (legs, draft_leg,
target_leg, faults), stop strings (textstream), counters (stats, metrics)."""
