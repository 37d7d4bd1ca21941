from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenGrouping(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_GROUPING_UNSPECIFIED: _ClassVar[TokenGrouping]
    TOKEN_GROUPING_TOKEN: _ClassVar[TokenGrouping]
    TOKEN_GROUPING_ROUND: _ClassVar[TokenGrouping]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
TOKEN_GROUPING_UNSPECIFIED: TokenGrouping
TOKEN_GROUPING_TOKEN: TokenGrouping
TOKEN_GROUPING_ROUND: TokenGrouping
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_EOS: FinishReason

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "max_new_tokens", "num_speculative_tokens", "temperature", "top_k", "top_p", "seed", "stop", "adaptive_k", "token_grouping")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_SPECULATIVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_K_FIELD_NUMBER: _ClassVar[int]
    TOKEN_GROUPING_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    max_new_tokens: int
    num_speculative_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    adaptive_k: bool
    token_grouping: TokenGrouping
    def __init__(self, prompt: _Optional[str] = ..., max_new_tokens: _Optional[int] = ..., num_speculative_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., adaptive_k: _Optional[bool] = ..., token_grouping: _Optional[_Union[TokenGrouping, str]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("token", "stats", "tokens")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    token: GeneratedToken
    stats: GenerationStats
    tokens: GeneratedTokens
    def __init__(self, token: _Optional[_Union[GeneratedToken, _Mapping]] = ..., stats: _Optional[_Union[GenerationStats, _Mapping]] = ..., tokens: _Optional[_Union[GeneratedTokens, _Mapping]] = ...) -> None: ...

class GeneratedTokens(_message.Message):
    __slots__ = ("ids", "text")
    IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class GeneratedToken(_message.Message):
    __slots__ = ("id", "text")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: int
    text: str
    def __init__(self, id: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class GenerationStats(_message.Message):
    __slots__ = ("finish_reason", "prompt_tokens", "generated_tokens", "rounds", "proposed_draft_tokens", "accepted_draft_tokens", "acceptance_rate", "mean_accepted_length", "time_to_first_token_s", "total_time_s", "draft_time_s", "verify_time_s", "coordinator_time_s", "session_id", "seed", "wire_bytes", "mean_verify_batch", "proposed_at_position", "accepted_at_position", "draft_fallback_rounds", "draft_fallback_reason", "draft_reopens", "target_reopens", "ahead_used_blocks", "ahead_discarded_blocks", "forward_time_s")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_RATE_FIELD_NUMBER: _ClassVar[int]
    MEAN_ACCEPTED_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_S_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TIME_S_FIELD_NUMBER: _ClassVar[int]
    VERIFY_TIME_S_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_TIME_S_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WIRE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEAN_VERIFY_BATCH_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_AT_POSITION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_POSITION_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FALLBACK_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    DRAFT_REOPENS_FIELD_NUMBER: _ClassVar[int]
    TARGET_REOPENS_FIELD_NUMBER: _ClassVar[int]
    AHEAD_USED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    AHEAD_DISCARDED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_TIME_S_FIELD_NUMBER: _ClassVar[int]
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    rounds: int
    proposed_draft_tokens: int
    accepted_draft_tokens: int
    acceptance_rate: float
    mean_accepted_length: float
    time_to_first_token_s: float
    total_time_s: float
    draft_time_s: float
    verify_time_s: float
    coordinator_time_s: float
    session_id: str
    seed: int
    wire_bytes: int
    mean_verify_batch: float
    proposed_at_position: _containers.RepeatedScalarFieldContainer[int]
    accepted_at_position: _containers.RepeatedScalarFieldContainer[int]
    draft_fallback_rounds: int
    draft_fallback_reason: str
    draft_reopens: int
    target_reopens: int
    ahead_used_blocks: int
    ahead_discarded_blocks: int
    forward_time_s: float
    def __init__(self, finish_reason: _Optional[_Union[FinishReason, str]] = ..., prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., rounds: _Optional[int] = ..., proposed_draft_tokens: _Optional[int] = ..., accepted_draft_tokens: _Optional[int] = ..., acceptance_rate: _Optional[float] = ..., mean_accepted_length: _Optional[float] = ..., time_to_first_token_s: _Optional[float] = ..., total_time_s: _Optional[float] = ..., draft_time_s: _Optional[float] = ..., verify_time_s: _Optional[float] = ..., coordinator_time_s: _Optional[float] = ..., session_id: _Optional[str] = ..., seed: _Optional[int] = ..., wire_bytes: _Optional[int] = ..., mean_verify_batch: _Optional[float] = ..., proposed_at_position: _Optional[_Iterable[int]] = ..., accepted_at_position: _Optional[_Iterable[int]] = ..., draft_fallback_rounds: _Optional[int] = ..., draft_fallback_reason: _Optional[str] = ..., draft_reopens: _Optional[int] = ..., target_reopens: _Optional[int] = ..., ahead_used_blocks: _Optional[int] = ..., ahead_discarded_blocks: _Optional[int] = ..., forward_time_s: _Optional[float] = ...) -> None: ...
