"""The OpenAI-compatible HTTP API, called with the official `openai` client (and a plain
HTTP client for the SSE framing) against a real coordinator on loopback."""

import http.client
import json

import grpc
import openai
import pytest

from coordinator.client import generate as grpc_generate
from specdec.v1 import generator_pb2
from stack import coordinator_behind_proxies, start_stack, wait_until


@pytest.fixture(scope="module")
def api(loop, lms):
    stack = start_stack(loop, lms["draft_perturbed"], lms["target"],
                        target_cfg={"max_sessions": 8}, coord_cfg={"http_port": 0})
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.coordinator.http_port}/v1",
                           api_key="unused", max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    yield stack, client, model
    client.close()
    stack.stop()




def grpc_text(stack, prompt: str, max_new: int, k: int | None = None, **fields):
    req = generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=max_new, **fields)
    if k is not None:
        req.num_speculative_tokens = k
    ids, text, stats = grpc_generate(stack.addr, req, timeout_s=60)
    return ids, text, stats


def test_models_lists_the_target_with_the_draft_as_metadata(api, lms):
    stack, client, model = api
    (entry,) = client.models.list().data
    assert entry.id == lms["target"].name and entry.object == "model"
    assert entry.model_extra["specdec"]["draft_model"] == lms["draft_perturbed"].name
    assert entry.model_extra["max_model_len"] == 192


def test_completion_equals_the_grpc_api_token_for_token(api):
    stack, client, model = api
    for k in (0, 3):  # (a fixed K: the same proposals both ways, to compare the counts)
        resp = client.completions.create(
            model=model, prompt="def add(a, b):", max_tokens=24, temperature=0,
            extra_body={"num_speculative_tokens": k, "adaptive_k": False})
        _, text, stats = grpc_text(stack, "def add(a, b):", 24, k, adaptive_k=False)
        (choice,) = resp.choices
        assert choice.text == text and resp.object == "text_completion"
        assert resp.id.startswith("cmpl-") and resp.model == model
        assert choice.finish_reason == ("length" if stats["generated_tokens"] == 24 else "stop")
        assert resp.usage.completion_tokens == stats["generated_tokens"]
        assert resp.usage.prompt_tokens == stats["prompt_tokens"]
        assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
        spec = resp.model_extra["speculative_decoding"]
        assert spec["num_draft_tokens"] == stats["proposed_draft_tokens"]
        assert spec["num_accepted_tokens"] == stats["accepted_draft_tokens"]
        assert (spec["num_draft_tokens"] > 0) == (k > 0)


def test_chat_completion_renders_the_chat_template_and_matches_grpc(api, lms):
    stack, client, model = api
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "The quick brown"}]}]
    resp = client.chat.completions.create(model=model, messages=messages, max_tokens=20,
                                          temperature=0)
    rendered = lms["target"].tokenizer.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "The quick brown"}],
        tokenize=False, add_generation_prompt=True)
    _, text, stats = grpc_text(stack, rendered, 20)
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == text
    assert resp.usage.prompt_tokens == stats["prompt_tokens"]


def test_streaming_gives_the_same_text_then_usage(api):
    stack, client, model = api
    whole = client.chat.completions.create(model=model, temperature=0, max_tokens=30,
                                           messages=[{"role": "user", "content": "def"}])
    chunks = list(client.chat.completions.create(
        model=model, temperature=0, max_tokens=30, stream=True,
        stream_options={"include_usage": True}, messages=[{"role": "user", "content": "def"}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == \
        whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert "speculative_decoding" in chunks[-1].model_extra
    # completions stream too, without usage unless asked
    parts = list(client.completions.create(model=model, prompt="class", max_tokens=12,
                                           temperature=0, stream=True))
    resp = client.completions.create(model=model, prompt="class", max_tokens=12, temperature=0)
    assert "".join(p.choices[0].text for p in parts) == resp.choices[0].text
    assert all(p.usage is None for p in parts)


def test_seed_reproduces_a_sample_and_stop_strings_end_it(api):
    stack, client, model = api

    def sample(seed):
        return client.completions.create(model=model, prompt="Once upon a time",
                                         max_tokens=24, temperature=0.9, top_p=0.95, seed=seed,
                                         extra_body={"top_k": 50}).choices[0].text
    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(5)}) > 1
    full = client.completions.create(model=model, prompt="def", max_tokens=40, temperature=0)
    text = full.choices[0].text
    stop = text[5:7]
    cut = client.completions.create(model=model, prompt="def", max_tokens=40, temperature=0,
                                    stop=[stop, "never-appears"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[:text.index(stop)]


@pytest.mark.parametrize("fields, words", [
    ({"n": 2}, "'n' must be 1"),
    ({"logprobs": 2}, "'logprobs' is not supported"),
    ({"presence_penalty": 0.5}, "'presence_penalty' is not supported"),
    ({"frequency_penalty": -1}, "'frequency_penalty' is not supported"),
    ({"logit_bias": {"5": 10}}, "'logit_bias' is not supported"),
    ({"temperature": -1}, "temperature must be a number >= 0"),
    ({"max_tokens": 0}, "max_new_tokens must be in [1"),
    ({"max_tokens": 5000}, "max_new_tokens must be in [1"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"extra_body": {"num_speculative_tokens": 99}}, "num_speculative_tokens (K) must be in"),
    ({"stop": [str(i) for i in range(17)]}, "at most 16 stop strings"),
    ({"prompt": ""}, "'prompt' is empty"),
    ({"extra_body": {"max_tokens": "many"}}, "max_tokens"),
    ({"extra_body": {"ignore_eos": True}}, "'ignore_eos' is not supported"),
    ({"extra_body": {"stop_token_ids": [5]}}, "'stop_token_ids' is not supported"),
])
def test_bad_requests_get_400_with_openai_error_body(api, fields, words):
    stack, client, model = api
    request = {"model": model, "prompt": "def", "max_tokens": 4, **fields}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**request)
    assert e.value.status_code == 400
    assert words in e.value.body["message"], e.value.body
    assert e.value.body["type"] == "invalid_request_error"


def test_unsupported_chat_fields_and_unknown_model(api):
    stack, client, model = api
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError, match="'tools' is not supported"):
        client.chat.completions.create(model=model, messages=msgs, tools=[{
            "type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(openai.BadRequestError, match="'logprobs' is not supported"):
        client.chat.completions.create(model=model, messages=msgs, logprobs=True)
    with pytest.raises(openai.NotFoundError, match="GET /v1/models lists"):
        client.chat.completions.create(model="gpt-4o", messages=msgs)


def test_full_target_gives_429_and_running_requests_finish(api):
    stack, client, model = api
    streams = [client.completions.create(model=model, prompt="def", max_tokens=150,
                                         temperature=0, stream=True) for _ in range(8)]
    firsts = [next(iter(s)) for s in streams]  # all eight hold a target session
    assert stack.live_sessions()[1] == 8
    with pytest.raises(openai.RateLimitError) as e:
        client.completions.create(model=model, prompt="class", max_tokens=4)
    assert e.value.status_code == 429 and "--max-sessions" in e.value.body["message"]
    for s, first in zip(streams, firsts, strict=True):
        assert first.choices and len(list(s)) > 0
    assert wait_until(lambda: stack.live_sessions() == (0, 0))


def test_client_disconnect_mid_stream_frees_both_sessions(api):
    stack, client, model = api
    conn = http.client.HTTPConnection("127.0.0.1", stack.coordinator.http_port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps(
        {"model": model, "prompt": "def", "max_tokens": 150, "temperature": 0, "stream": True,
         "user": "ignored"}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.fp.readline()  # the first event arrived: generation is under way
    conn.sock.close()
    conn.close()
    assert wait_until(lambda: stack.live_sessions() == (0, 0), timeout=30), \
        stack.live_sessions()


def test_raw_sse_framing_and_done_terminator(api):
    stack, client, model = api
    conn = http.client.HTTPConnection("127.0.0.1", stack.coordinator.http_port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "def"}], "max_tokens": 6,
         "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}),
        {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    raw = resp.read().decode()
    conn.close()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [e for e in events[:-2]]
    assert all(e.startswith("data: ") and "\n" not in e for e in payloads), payloads
    objs = [json.loads(e[len("data: "):]) for e in payloads]
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert objs[-2]["choices"][0]["finish_reason"] in ("length", "stop")
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] > 0
    assert all(o["usage"] is None for o in objs[:-1])


def test_health_and_metrics_over_http(api):
    stack, client, model = api
    port = stack.coordinator.http_port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read()) == {"status": "ok"}
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status == 200 and 'specdec_requests_total{status="OK"}' in body
    conn.close()


def completion_error(port: int) -> openai.InternalServerError:
    """The error a 150-token completion through the HTTP API on `port` ends with."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                           max_retries=0, timeout=30)
    try:
        model = client.models.list().data[0].id
        with pytest.raises(openai.InternalServerError) as e:
            client.completions.create(model=model, prompt="def", max_tokens=150,
                                      temperature=0)
        return e.value
    finally:
        client.close()


def test_a_request_past_its_http_timeout_gives_504(loop, stacks):
    """--http-timeout-s 0.05 against a target link slowed to 20 ms a round trip: 150 tokens
    take at least 3 s, 60x the timeout, however fast the machine."""
    stack = stacks("draft_perturbed")
    with coordinator_behind_proxies(loop, stack, http_port=0, http_timeout_s=0.05) \
            as (proxies, coordinator):
        proxies["target"].delay_s = 0.01
        error = completion_error(coordinator.http_port)
    assert error.status_code == 504, error.body
    assert "target service" in error.body["message"]


def test_a_lost_target_gives_503(loop, lms):
    stack = start_stack(loop, lms["draft_perturbed"], lms["target"],
                        coord_cfg={"http_port": 0, "target_retry_s": 0.5})
    try:
        loop.run(stack.target[1].drain(stack.target[0], 0))
        error = completion_error(stack.coordinator.http_port)
    finally:
        stack.stop()
    assert error.status_code == 503, error.body
    assert "target service" in error.body["message"]


def test_http_output_equals_grpc_under_concurrency(api, loop):
    """Greedy HTTP output equals the gRPC API's for the same prompts, sent together."""
    stack, client, model = api
    prompts = ["def", "class", "for i in", "The quick"]
    grpc_out = [grpc_text(stack, p, 16, 2)[1] for p in prompts]
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        http_out = list(pool.map(lambda p: client.completions.create(
            model=model, prompt=p, max_tokens=16, temperature=0,
            extra_body={"num_speculative_tokens": 2}).choices[0].text, prompts))
    assert http_out == grpc_out
    with pytest.raises(grpc.RpcError):  # (and the gRPC API still validates as before)
        grpc_text(stack, "", 4)
