"""keygate's errors as gRPC statuses with google.rpc details (ErrorInfo, BadRequest)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..domain.errors import (
    Aborted,
    InvalidArgument,
    KeygateError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

DOMAIN = "keygate.dev"

_CODES: dict[type[KeygateError], int] = {
    InvalidArgument: code_pb2.INVALID_ARGUMENT,
    NotFound: code_pb2.NOT_FOUND,
    Unauthenticated: code_pb2.UNAUTHENTICATED,
    PermissionDenied: code_pb2.PERMISSION_DENIED,
    Aborted: code_pb2.ABORTED,
    Unavailable: code_pb2.UNAVAILABLE,
}


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(exc: KeygateError) -> grpc.Status:
    """The status for `exc`: its code, its message, ErrorInfo, and for a bad field a BadRequest."""
    code = _CODES.get(type(exc), code_pb2.INTERNAL)
    details = [_pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN))]
    if isinstance(exc, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.description)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if isinstance(exc, NotFound):
        details.append(_pack(error_details_pb2.ResourceInfo(resource_type=exc.what, resource_name=exc.name)))
    return rpc_status.to_status(status_pb2.Status(code=code, message=exc.message, details=details))


def internal_status() -> grpc.Status:
    """What a caller sees of a bug: nothing but the request id they can quote (in the metadata)."""
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; quote the x-request-id when reporting it")
    )
