"""specdec: distributed speculative decoding. Code shared by the draft, target and coordinator.

Model, cache and sampling code here never imports grpc; transport helpers live in specdec.rpc.
"""

__version__ = "0.1.0"
