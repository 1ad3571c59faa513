import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecisionCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_CODE_UNSPECIFIED: _ClassVar[DecisionCode]
    OK: _ClassVar[DecisionCode]
    KEY_MISSING: _ClassVar[DecisionCode]
    KEY_MALFORMED: _ClassVar[DecisionCode]
    KEY_NOT_FOUND: _ClassVar[DecisionCode]
    KEY_EXPIRED: _ClassVar[DecisionCode]
    KEY_DISABLED: _ClassVar[DecisionCode]
    RESOURCE_BOUND_TO_OTHER_KEY: _ClassVar[DecisionCode]
    PERMISSION_DENIED: _ClassVar[DecisionCode]
    RESOURCE_OUT_OF_SCOPE: _ClassVar[DecisionCode]
    WORKSPACE_MISMATCH: _ClassVar[DecisionCode]
    RATE_LIMITED: _ClassVar[DecisionCode]
    USAGE_EXCEEDED: _ClassVar[DecisionCode]
    IP_NOT_ALLOWED: _ClassVar[DecisionCode]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    KEY_CHANGED: _ClassVar[ChangeKind]
    BINDING_CHANGED: _ClassVar[ChangeKind]
    RESYNC: _ClassVar[ChangeKind]
DECISION_CODE_UNSPECIFIED: DecisionCode
OK: DecisionCode
KEY_MISSING: DecisionCode
KEY_MALFORMED: DecisionCode
KEY_NOT_FOUND: DecisionCode
KEY_EXPIRED: DecisionCode
KEY_DISABLED: DecisionCode
RESOURCE_BOUND_TO_OTHER_KEY: DecisionCode
PERMISSION_DENIED: DecisionCode
RESOURCE_OUT_OF_SCOPE: DecisionCode
WORKSPACE_MISMATCH: DecisionCode
RATE_LIMITED: DecisionCode
USAGE_EXCEEDED: DecisionCode
IP_NOT_ALLOWED: DecisionCode
CHANGE_KIND_UNSPECIFIED: ChangeKind
KEY_CHANGED: ChangeKind
BINDING_CHANGED: ChangeKind
RESYNC: ChangeKind

class CheckRequest(_message.Message):
    __slots__ = ("api_key", "resource", "action", "workspace_id", "client_address", "cost")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    resource: str
    action: str
    workspace_id: str
    client_address: str
    cost: int
    def __init__(self, api_key: _Optional[str] = ..., resource: _Optional[str] = ..., action: _Optional[str] = ..., workspace_id: _Optional[str] = ..., client_address: _Optional[str] = ..., cost: _Optional[int] = ...) -> None: ...

class LimitState(_message.Message):
    __slots__ = ("name", "limit", "remaining", "reset_time", "window")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESET_TIME_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    limit: int
    remaining: int
    reset_time: _timestamp_pb2.Timestamp
    window: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., limit: _Optional[int] = ..., remaining: _Optional[int] = ..., reset_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("allowed", "code", "reason", "key_id", "key_name", "workspace_id", "http_status", "rate_limit", "credits_remaining", "key_expire_time", "limited")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CREDITS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    KEY_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    LIMITED_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    code: DecisionCode
    reason: str
    key_id: str
    key_name: str
    workspace_id: str
    http_status: int
    rate_limit: LimitState
    credits_remaining: int
    key_expire_time: _timestamp_pb2.Timestamp
    limited: bool
    def __init__(self, allowed: _Optional[bool] = ..., code: _Optional[_Union[DecisionCode, str]] = ..., reason: _Optional[str] = ..., key_id: _Optional[str] = ..., key_name: _Optional[str] = ..., workspace_id: _Optional[str] = ..., http_status: _Optional[int] = ..., rate_limit: _Optional[_Union[LimitState, _Mapping]] = ..., credits_remaining: _Optional[int] = ..., key_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limited: _Optional[bool] = ...) -> None: ...

class BatchCheckItem(_message.Message):
    __slots__ = ("resource", "action", "workspace_id", "cost")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    resource: str
    action: str
    workspace_id: str
    cost: int
    def __init__(self, resource: _Optional[str] = ..., action: _Optional[str] = ..., workspace_id: _Optional[str] = ..., cost: _Optional[int] = ...) -> None: ...

class BatchCheckRequest(_message.Message):
    __slots__ = ("api_key", "items", "client_address")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    items: _containers.RepeatedCompositeFieldContainer[BatchCheckItem]
    client_address: str
    def __init__(self, api_key: _Optional[str] = ..., items: _Optional[_Iterable[_Union[BatchCheckItem, _Mapping]]] = ..., client_address: _Optional[str] = ...) -> None: ...

class BatchCheckResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CheckResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[CheckResponse, _Mapping]]] = ...) -> None: ...

class ListPermissionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Permission(_message.Message):
    __slots__ = ("name", "description", "implies", "collections")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IMPLIES_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    implies: _containers.RepeatedScalarFieldContainer[str]
    collections: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., implies: _Optional[_Iterable[str]] = ..., collections: _Optional[_Iterable[str]] = ...) -> None: ...

class ListPermissionsResponse(_message.Message):
    __slots__ = ("permissions",)
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    permissions: _containers.RepeatedCompositeFieldContainer[Permission]
    def __init__(self, permissions: _Optional[_Iterable[_Union[Permission, _Mapping]]] = ...) -> None: ...

class WatchChangesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChangeEvent(_message.Message):
    __slots__ = ("kind", "key_id", "workspace_id", "resource", "listening")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    LISTENING_FIELD_NUMBER: _ClassVar[int]
    kind: ChangeKind
    key_id: str
    workspace_id: str
    resource: str
    listening: bool
    def __init__(self, kind: _Optional[_Union[ChangeKind, str]] = ..., key_id: _Optional[str] = ..., workspace_id: _Optional[str] = ..., resource: _Optional[str] = ..., listening: _Optional[bool] = ...) -> None: ...
