"""All three servers expose the standard health service and server reflection."""

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from stack import health_pb2


def test_reflection_and_health_on_every_server(stacks):
    stack = stacks("draft_unrelated")
    expected = {"draft": "specdec.v1.DraftService", "target": "specdec.v1.TargetService",
                "coordinator": "specdec.v1.Generator"}
    ports = {"draft": stack.draft[0].port, "target": stack.target[0].port,
             "coordinator": stack.coordinator.port}
    for which, service in expected.items():
        with grpc.insecure_channel(f"127.0.0.1:{ports[which]}") as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {service, "grpc.health.v1.Health"} <= services, (which, services)
        assert stack.health(which) == health_pb2.HealthCheckResponse.SERVING


def test_a_busy_port_is_a_clear_error(loop, stacks):
    import pytest

    import draft_service.servicer as draft_server
    from specdec.errors import Unavailable
    from stack import service_config

    busy = stacks("draft_unrelated").draft[0].port
    with pytest.raises(Unavailable, match=f"cannot bind 127.0.0.1:{busy}"):
        loop.run(draft_server.start(service_config(model="x", port=busy)))
