"""A container health check over the standard gRPC health service.

python -m specdec.healthprobe [HOST:PORT] [--service NAME] [--timeout-s 3]

Exits 0 when the server reports SERVING, 1 otherwise (NOT_SERVING while the model loads,
unreachable, or timed out). The prebuilt grpc_health_probe binary cannot be fetched in
every build environment; this needs only the image's own grpcio.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def probe(addr: str, service: str = "", timeout_s: float = 3.0) -> tuple[bool, str]:
    try:
        with grpc.insecure_channel(addr) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.RpcError as e:
        return False, f"{e.code().name}: {e.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m specdec.healthprobe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("addr", nargs="?", default=None,
                   help="HOST:PORT; default 127.0.0.1:$SPECDEC_PORT (50050 if unset)")
    p.add_argument("--service", default="", help="service name; empty = the whole server")
    p.add_argument("--timeout-s", type=float, default=3.0)
    args = p.parse_args(argv)
    addr = args.addr or f"127.0.0.1:{os.environ.get('SPECDEC_PORT', '50050')}"
    ok, status = probe(addr, args.service, args.timeout_s)
    print(f"{addr}: {status}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
