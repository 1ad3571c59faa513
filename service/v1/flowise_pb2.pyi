import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import httpbody_pb2 as _httpbody_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FlowiseApiKey(_message.Message):
    __slots__ = ("id", "key_name", "api_key", "permissions", "workspace_id", "created_at", "updated_date", "chat_flows")
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_DATE_FIELD_NUMBER: _ClassVar[int]
    CHAT_FLOWS_FIELD_NUMBER: _ClassVar[int]
    id: str
    key_name: str
    api_key: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    workspace_id: str
    created_at: _timestamp_pb2.Timestamp
    updated_date: _timestamp_pb2.Timestamp
    chat_flows: _containers.RepeatedCompositeFieldContainer[FlowiseChatflow]
    def __init__(self, id: _Optional[str] = ..., key_name: _Optional[str] = ..., api_key: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., workspace_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., chat_flows: _Optional[_Iterable[_Union[FlowiseChatflow, _Mapping]]] = ...) -> None: ...

class FlowiseChatflow(_message.Message):
    __slots__ = ("id", "flow_name", "category", "updated_date")
    ID_FIELD_NUMBER: _ClassVar[int]
    FLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    UPDATED_DATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    flow_name: str
    category: str
    updated_date: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., flow_name: _Optional[str] = ..., category: _Optional[str] = ..., updated_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FlowiseApiKeyPage(_message.Message):
    __slots__ = ("total", "data")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    total: int
    data: _containers.RepeatedCompositeFieldContainer[FlowiseApiKey]
    def __init__(self, total: _Optional[int] = ..., data: _Optional[_Iterable[_Union[FlowiseApiKey, _Mapping]]] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("key_name", "permissions", "workspace_id")
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    key_name: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    workspace_id: str
    def __init__(self, key_name: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., workspace_id: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("page", "limit")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    page: int
    limit: int
    def __init__(self, page: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class UpdateApiKeyRequest(_message.Message):
    __slots__ = ("id", "key_name", "permissions")
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    key_name: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., key_name: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteApiKeyRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteApiKeyResponse(_message.Message):
    __slots__ = ("affected",)
    AFFECTED_FIELD_NUMBER: _ClassVar[int]
    affected: int
    def __init__(self, affected: _Optional[int] = ...) -> None: ...
