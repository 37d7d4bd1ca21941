"""Replica addresses and placement, on constructed GetInfo replies (no servers needed: the
placement rule reads only what the replicas last reported). The behaviour with real replicas
is in test_scale_out.py."""

import pytest

from coordinator.upstream.addresses import parse_entries
from coordinator.upstream.clients import TargetClient, UpstreamError
from coordinator.upstream.replicas import Replica, ReplicaSet
from specdec.errors import InvalidArgument
from specdec.v1 import common_pb2, target_pb2


def test_address_lists_parse_static_and_dns_entries():
    entries = parse_entries(["a:1,b:2", "dns:///t.ns.svc:50052", "dns://10.0.0.10:53/t:7",
                             "[::1]:9"])
    assert [(e.host, e.port, e.dns, e.server) for e in entries] == [
        ("a", 1, False, ""), ("b", 2, False, ""), ("t.ns.svc", 50052, True, ""),
        ("t", 7, True, "10.0.0.10:53"), ("::1", 9, False, "")]


@pytest.mark.parametrize("bad", ["", "host", "host:", "host:0", "host:99999", "dns:///t",
                                 "dns://10.0.0.1", ":50051"])
def test_malformed_addresses_are_rejected_with_the_expected_form(bad):
    with pytest.raises(InvalidArgument, match="expected"):
        parse_entries(bad)


def info(live=0, max_sessions=8, reserved=0, budget=0, model="m", draining=False):
    return target_pb2.GetTargetInfoResponse(
        model=common_pb2.ModelInfo(model_name=model, vocab_size=10, max_sessions=max_sessions,
                                   live_sessions=live, kv_cache_reserved_bytes=reserved,
                                   kv_cache_budget_bytes=budget, draining=draining),
        max_batch_items=8, max_proposal_tokens=8)


async def replica_set(*infos):
    """A ReplicaSet whose replicas last reported `infos` (SERVING, just checked)."""
    pool = ReplicaSet("target", parse_entries(",".join(f"r{i}:1" for i in range(len(infos)))),
                      lambda addr: TargetClient(addr, 1.0))
    pool.reference = infos[0]
    for i, reply in enumerate(infos):
        pool.replicas[f"r{i}:1"] = r = Replica(TargetClient(f"r{i}:1", 1.0))
        r.serving, r.info, r.checked_at = not reply.model.draining, reply, 1.0
        r.draining = reply.model.draining
    return pool


def test_new_sessions_go_where_there_is_most_room_and_spread(loop):
    async def run():
        pool = await replica_set(info(live=6), info(live=1), info(live=1, reserved=90,
                                                                  budget=100))
        picks = [pool.pick().addr for _ in range(8)]
        await pool.close()
        return picks
    picks = loop.run(run())
    # r1 has the most free sessions; r2 is nearly out of KV budget; r0 is fullest
    assert picks[:4] == ["r1:1"] * 4
    assert "r2:1" not in picks[:5]
    assert picks.count("r1:1") >= 4 and picks.count("r0:1") >= 1


def test_unusable_replicas_get_no_sessions_but_a_lone_failing_one_is_retried(loop):
    async def run():
        pool = await replica_set(info(), info(model="other"), info(draining=True))
        pool.replicas["r1:1"].mismatch = "model 'other'"
        picks = {pool.pick().addr for _ in range(6)}
        moves = pool.should_move(pool.replicas["r2:1"].client)
        pool.report_failure(pool.replicas["r0:1"].client)  # the only good one fails a call
        fallback = pool.pick().addr  # nothing in rotation: retry it rather than give up
        pool.replicas.pop("r0:1")
        with pytest.raises(UpstreamError, match="no target replica is available"):
            pool.pick()
        await pool.close()
        return picks, moves, fallback
    picks, moves, fallback = loop.run(run())
    assert picks == {"r0:1"}
    assert moves  # sessions on the draining replica move to r0
    assert fallback == "r0:1"
