"""Domain errors. Engines raise these; the transport layer maps each to a gRPC status code.

Kept free of grpc so that model and session code can raise them without importing transport.
"""


class SpecdecError(Exception):
    """Base class. `code` names the gRPC status the transport layer sends."""

    code = "INTERNAL"


class InvalidArgument(SpecdecError):
    code = "INVALID_ARGUMENT"


class NotFound(SpecdecError):
    code = "NOT_FOUND"


class AlreadyExists(SpecdecError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(SpecdecError):
    """The caller's view of a session (its position) does not match the service's."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(SpecdecError):
    code = "RESOURCE_EXHAUSTED"


class OutOfRange(SpecdecError):
    code = "OUT_OF_RANGE"


class Unavailable(SpecdecError):
    code = "UNAVAILABLE"


class Unimplemented(SpecdecError):
    code = "UNIMPLEMENTED"


class DeadlineExceeded(SpecdecError):
    code = "DEADLINE_EXCEEDED"
