from specdec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetTargetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTargetInfoResponse(_message.Message):
    __slots__ = ("model", "max_batch_items", "max_proposal_tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROPOSAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelInfo
    max_batch_items: int
    max_proposal_tokens: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., max_batch_items: _Optional[int] = ..., max_proposal_tokens: _Optional[int] = ...) -> None: ...

class OpenTargetSessionRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.OpenSessionItem]
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.OpenSessionItem, _Mapping]]] = ...) -> None: ...

class OpenTargetSessionResponse(_message.Message):
    __slots__ = ("results", "compute_time_us")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.OpenSessionResult]
    compute_time_us: int
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.OpenSessionResult, _Mapping]]] = ..., compute_time_us: _Optional[int] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[VerifyItem]
    def __init__(self, items: _Optional[_Iterable[_Union[VerifyItem, _Mapping]]] = ...) -> None: ...

class VerifyItem(_message.Message):
    __slots__ = ("session_id", "position", "draft_token_ids", "draft_probs", "draft_probs_answer", "resume_rejected")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PROBS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PROBS_ANSWER_FIELD_NUMBER: _ClassVar[int]
    RESUME_REJECTED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    position: int
    draft_token_ids: _containers.RepeatedScalarFieldContainer[int]
    draft_probs: _containers.RepeatedScalarFieldContainer[float]
    draft_probs_answer: bytes
    resume_rejected: bool
    def __init__(self, session_id: _Optional[str] = ..., position: _Optional[int] = ..., draft_token_ids: _Optional[_Iterable[int]] = ..., draft_probs: _Optional[_Iterable[float]] = ..., draft_probs_answer: _Optional[bytes] = ..., resume_rejected: _Optional[bool] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("results", "forward_passes", "compute_time_us", "batched_sessions", "forward_time_us")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    BATCHED_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_TIME_US_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[VerifyResult]
    forward_passes: int
    compute_time_us: int
    batched_sessions: int
    forward_time_us: int
    def __init__(self, results: _Optional[_Iterable[_Union[VerifyResult, _Mapping]]] = ..., forward_passes: _Optional[int] = ..., compute_time_us: _Optional[int] = ..., batched_sessions: _Optional[int] = ..., forward_time_us: _Optional[int] = ...) -> None: ...

class VerifyResult(_message.Message):
    __slots__ = ("session_id", "code", "message", "num_accepted", "next_token_id", "position", "draft_probs_query")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NUM_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PROBS_QUERY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    code: int
    message: str
    num_accepted: int
    next_token_id: int
    position: int
    draft_probs_query: DraftProbsQuery
    def __init__(self, session_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., num_accepted: _Optional[int] = ..., next_token_id: _Optional[int] = ..., position: _Optional[int] = ..., draft_probs_query: _Optional[_Union[DraftProbsQuery, _Mapping]] = ...) -> None: ...

class DraftProbsQuery(_message.Message):
    __slots__ = ("index", "token_ids", "all_tokens")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    index: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    all_tokens: bool
    def __init__(self, index: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., all_tokens: _Optional[bool] = ...) -> None: ...

class TruncateTargetSessionRequest(_message.Message):
    __slots__ = ("session_id", "position", "length")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    position: int
    length: int
    def __init__(self, session_id: _Optional[str] = ..., position: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class TruncateTargetSessionResponse(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class CloseTargetSessionRequest(_message.Message):
    __slots__ = ("session_ids",)
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CloseTargetSessionResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.CloseSessionResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.CloseSessionResult, _Mapping]]] = ...) -> None: ...
