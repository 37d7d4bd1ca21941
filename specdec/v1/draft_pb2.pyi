from specdec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetDraftInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetDraftInfoResponse(_message.Message):
    __slots__ = ("model", "max_proposal_tokens", "max_batch_items")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_PROPOSAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ITEMS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelInfo
    max_proposal_tokens: int
    max_batch_items: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., max_proposal_tokens: _Optional[int] = ..., max_batch_items: _Optional[int] = ...) -> None: ...

class OpenDraftSessionRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.OpenSessionItem]
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.OpenSessionItem, _Mapping]]] = ...) -> None: ...

class OpenDraftSessionResponse(_message.Message):
    __slots__ = ("results", "compute_time_us")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.OpenSessionResult]
    compute_time_us: int
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.OpenSessionResult, _Mapping]]] = ..., compute_time_us: _Optional[int] = ...) -> None: ...

class ProposeRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ProposeItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ProposeItem, _Mapping]]] = ...) -> None: ...

class ProposeItem(_message.Message):
    __slots__ = ("session_id", "position", "truncate_to", "append_token_ids", "num_tokens")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_TO_FIELD_NUMBER: _ClassVar[int]
    APPEND_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    position: int
    truncate_to: int
    append_token_ids: _containers.RepeatedScalarFieldContainer[int]
    num_tokens: int
    def __init__(self, session_id: _Optional[str] = ..., position: _Optional[int] = ..., truncate_to: _Optional[int] = ..., append_token_ids: _Optional[_Iterable[int]] = ..., num_tokens: _Optional[int] = ...) -> None: ...

class ProposeResponse(_message.Message):
    __slots__ = ("results", "forward_passes", "compute_time_us", "batched_sessions", "forward_time_us")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    BATCHED_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_TIME_US_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ProposeResult]
    forward_passes: int
    compute_time_us: int
    batched_sessions: int
    forward_time_us: int
    def __init__(self, results: _Optional[_Iterable[_Union[ProposeResult, _Mapping]]] = ..., forward_passes: _Optional[int] = ..., compute_time_us: _Optional[int] = ..., batched_sessions: _Optional[int] = ..., forward_time_us: _Optional[int] = ...) -> None: ...

class ProposeResult(_message.Message):
    __slots__ = ("session_id", "code", "message", "token_ids", "position", "draft_probs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PROBS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    code: int
    message: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    position: int
    draft_probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, session_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., position: _Optional[int] = ..., draft_probs: _Optional[_Iterable[float]] = ...) -> None: ...

class GetDraftProbsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[DraftProbsItem]
    def __init__(self, items: _Optional[_Iterable[_Union[DraftProbsItem, _Mapping]]] = ...) -> None: ...

class DraftProbsItem(_message.Message):
    __slots__ = ("session_id", "position", "index", "token_ids", "all_tokens")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    position: int
    index: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    all_tokens: bool
    def __init__(self, session_id: _Optional[str] = ..., position: _Optional[int] = ..., index: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., all_tokens: _Optional[bool] = ...) -> None: ...

class GetDraftProbsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DraftProbsResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DraftProbsResult, _Mapping]]] = ...) -> None: ...

class DraftProbsResult(_message.Message):
    __slots__ = ("session_id", "code", "message", "probs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    code: int
    message: str
    probs: bytes
    def __init__(self, session_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., probs: _Optional[bytes] = ...) -> None: ...

class TruncateDraftSessionRequest(_message.Message):
    __slots__ = ("session_id", "position", "length")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    position: int
    length: int
    def __init__(self, session_id: _Optional[str] = ..., position: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class TruncateDraftSessionResponse(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class CloseDraftSessionRequest(_message.Message):
    __slots__ = ("session_ids",)
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CloseDraftSessionResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.CloseSessionResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.CloseSessionResult, _Mapping]]] = ...) -> None: ...
