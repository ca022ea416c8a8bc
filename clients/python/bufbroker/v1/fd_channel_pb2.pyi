from bufbroker.v1 import broker_pb2 as _broker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FdMessage(_message.Message):
    __slots__ = ("hello", "send_fds", "deliver_fds", "notice", "call", "reply", "vouch")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    SEND_FDS_FIELD_NUMBER: _ClassVar[int]
    DELIVER_FDS_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    VOUCH_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    send_fds: SendFds
    deliver_fds: DeliverFds
    notice: Notice
    call: Call
    reply: CallReply
    vouch: Vouch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., send_fds: _Optional[_Union[SendFds, _Mapping]] = ..., deliver_fds: _Optional[_Union[DeliverFds, _Mapping]] = ..., notice: _Optional[_Union[Notice, _Mapping]] = ..., call: _Optional[_Union[Call, _Mapping]] = ..., reply: _Optional[_Union[CallReply, _Mapping]] = ..., vouch: _Optional[_Union[Vouch, _Mapping]] = ...) -> None: ...

class Vouch(_message.Message):
    __slots__ = ("proof",)
    PROOF_FIELD_NUMBER: _ClassVar[int]
    proof: str
    def __init__(self, proof: _Optional[str] = ...) -> None: ...

class Call(_message.Message):
    __slots__ = ("call_id", "attach", "map", "unmap", "detach")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    UNMAP_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    attach: _broker_pb2.AttachRequest
    map: _broker_pb2.MapRequest
    unmap: _broker_pb2.UnmapRequest
    detach: _broker_pb2.DetachRequest
    def __init__(self, call_id: _Optional[int] = ..., attach: _Optional[_Union[_broker_pb2.AttachRequest, _Mapping]] = ..., map: _Optional[_Union[_broker_pb2.MapRequest, _Mapping]] = ..., unmap: _Optional[_Union[_broker_pb2.UnmapRequest, _Mapping]] = ..., detach: _Optional[_Union[_broker_pb2.DetachRequest, _Mapping]] = ...) -> None: ...

class CallReply(_message.Message):
    __slots__ = ("call_id", "attach", "map", "unmap", "detach", "error")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    UNMAP_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    attach: _broker_pb2.AttachResponse
    map: _broker_pb2.MapResponse
    unmap: _broker_pb2.UnmapResponse
    detach: _broker_pb2.DetachResponse
    error: CallError
    def __init__(self, call_id: _Optional[int] = ..., attach: _Optional[_Union[_broker_pb2.AttachResponse, _Mapping]] = ..., map: _Optional[_Union[_broker_pb2.MapResponse, _Mapping]] = ..., unmap: _Optional[_Union[_broker_pb2.UnmapResponse, _Mapping]] = ..., detach: _Optional[_Union[_broker_pb2.DetachResponse, _Mapping]] = ..., error: _Optional[_Union[CallError, _Mapping]] = ...) -> None: ...

class CallError(_message.Message):
    __slots__ = ("code", "kind", "message", "trace")
    CODE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    code: str
    kind: str
    message: str
    trace: _containers.RepeatedCompositeFieldContainer[_broker_pb2.TraceStep]
    def __init__(self, code: _Optional[str] = ..., kind: _Optional[str] = ..., message: _Optional[str] = ..., trace: _Optional[_Iterable[_Union[_broker_pb2.TraceStep, _Mapping]]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("session_token", "session_id", "pid", "uid", "gid", "broker_version")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    BROKER_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    session_id: int
    pid: int
    uid: int
    gid: int
    broker_version: str
    def __init__(self, session_token: _Optional[str] = ..., session_id: _Optional[int] = ..., pid: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., broker_version: _Optional[str] = ...) -> None: ...

class SendFds(_message.Message):
    __slots__ = ("nonce", "fd_count")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    FD_COUNT_FIELD_NUMBER: _ClassVar[int]
    nonce: str
    fd_count: int
    def __init__(self, nonce: _Optional[str] = ..., fd_count: _Optional[int] = ...) -> None: ...

class DeliverFds(_message.Message):
    __slots__ = ("ticket", "fd_count")
    TICKET_FIELD_NUMBER: _ClassVar[int]
    FD_COUNT_FIELD_NUMBER: _ClassVar[int]
    ticket: int
    fd_count: int
    def __init__(self, ticket: _Optional[int] = ..., fd_count: _Optional[int] = ...) -> None: ...

class Notice(_message.Message):
    __slots__ = ("nonce", "code", "message")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    nonce: str
    code: str
    message: str
    def __init__(self, nonce: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
