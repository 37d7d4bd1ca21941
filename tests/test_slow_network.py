"""Placement costs nothing in correctness: with added delay on the links to both services
the output is still exactly the target's, and a target that stays away past
--target-retry-s ends the request with UNAVAILABLE naming it."""

import time

import grpc
import pytest

from coordinator.client import generate
from specdec.v1 import generator_pb2
from stack import coordinator_behind_proxies, generate_all
from tiny_models import PROMPTS


@pytest.fixture
def behind_proxies(loop, stacks):
    """A second coordinator reaching the services of a running stack through delay proxies."""
    stack = stacks("draft_perturbed")
    with coordinator_behind_proxies(loop, stack, target_retry_s=1.0) as (proxies, coordinator):
        yield stack, proxies, f"127.0.0.1:{coordinator.port}"


def test_output_is_exact_with_delayed_links(loop, behind_proxies):
    stack, proxies, addr = behind_proxies
    reqs = [generator_pb2.GenerateRequest(prompt=p, max_new_tokens=24, num_speculative_tokens=k)
            for p in PROMPTS[:3] for k in (0, 3)]
    direct = loop.run(generate_all(stack.addr, reqs))
    for delay in (0.001, 0.005):
        for proxy in proxies.values():
            proxy.delay_s = delay
        delayed = loop.run(generate_all(addr, reqs))
        assert [ids for ids, _ in delayed] == [ids for ids, _ in direct]
        assert all(s.draft_fallback_rounds == 0 for _, s in delayed)


def test_target_gone_past_retry_budget_gives_unavailable(behind_proxies):
    _, proxies, addr = behind_proxies
    proxies["target"].upstream_port = 1  # nothing listens there
    proxies["target"].cut()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        generate(addr, generator_pb2.GenerateRequest(prompt="def", max_new_tokens=8),
                 timeout_s=30)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "did not come back within --target-retry-s 1s" in e.value.details()
    assert time.monotonic() - started < 5  # --target-retry-s 1 with a 5x margin
