"""The OpenAI request bodies specdec accepts (pydantic), and what it refuses in them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from specdec.errors import InvalidArgument


class StreamOptions(BaseModel):
    include_usage: bool = False


# Fields clients send that have no effect on the output here: accepted and ignored. Any
# other field this schema does not know is refused (it might change the output: vLLM's
# `ignore_eos`, `stop_token_ids`, `chat_template_kwargs`, ...), naming it (docs/api.md).
NO_EFFECT = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls",
                       "stream_options", "request_id"})


class OpenAIRequest(BaseModel):
    """Fields both endpoints take. Known fields specdec cannot honour are refused in
    `unsupported()`, and so are unknown ones, except the NO_EFFECT fields."""
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # (vLLM's extension)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    num_speculative_tokens: int | None = None  # (specdec's extension: K; unset = default)
    adaptive_k: bool | None = None  # (specdec's extension: see GenerateRequest.adaptive_k)
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # vLLM's sampling extensions that change results
    repetition_penalty: float | None = None
    min_p: float | None = None
    min_tokens: int | None = None


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(OpenAIRequest):
    messages: list[ChatMessage]
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None


# field -> the values that leave the result unchanged (anything else gets a 400)
NEUTRAL = {"logprobs": (None, False, 0), "top_logprobs": (None, 0),
           "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
           "logit_bias": (None, {}), "repetition_penalty": (None, 1), "min_p": (None, 0),
           "min_tokens": (None, 0), "echo": (None, False), "suffix": (None, ""),
           "best_of": (None, 1), "tools": (None, []), "tool_choice": (None, "none"),
           "functions": (None, []), "function_call": (None, "none")}


def unsupported(req: OpenAIRequest) -> None:
    """InvalidArgument naming the first field that would change the result but that specdec
    cannot honour (a known one at a value other than its neutral ones, or an unknown one)."""
    unknown = sorted(set(req.model_extra or ()) - NO_EFFECT)
    if unknown:
        raise InvalidArgument(f"'{unknown[0]}' is not supported by specdec; leave it out "
                              f"(fields accepted without effect: {', '.join(sorted(NO_EFFECT))})")
    for name, neutral in NEUTRAL.items():
        value = getattr(req, name, None)
        if not any(value == v and type(value) is type(v) or value is v for v in neutral):
            raise InvalidArgument(f"'{name}' is not supported by specdec (got {value!r}); "
                                  f"leave it out")
    if req.n not in (None, 1):
        raise InvalidArgument(f"'n' must be 1 (one choice per request), got {req.n}")
    fmt = getattr(req, "response_format", None)
    if fmt and fmt.get("type") not in (None, "text"):
        raise InvalidArgument(f"'response_format' {fmt.get('type')!r} is not supported; only "
                              f"'text'")


def message_text(m: ChatMessage) -> str:
    if m.content is None or isinstance(m.content, str):
        return m.content or ""
    parts = []
    for part in m.content:
        if part.get("type") != "text":
            raise InvalidArgument(f"message content of type {part.get('type')!r} is not "
                                  f"supported; only 'text'")
        parts.append(part.get("text", ""))
    return "".join(parts)
