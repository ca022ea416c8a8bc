from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LinkProtocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINK_PROTOCOL_UNSPECIFIED: _ClassVar[LinkProtocol]
    LINK_PROTOCOL_V1: _ClassVar[LinkProtocol]

class LinkRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINK_ROLE_UNSPECIFIED: _ClassVar[LinkRole]
    LINK_ROLE_PRODUCER: _ClassVar[LinkRole]
    LINK_ROLE_CONSUMER: _ClassVar[LinkRole]

class ConsumerMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSUMER_MODE_UNSPECIFIED: _ClassVar[ConsumerMode]
    CONSUMER_MODE_QUEUE: _ClassVar[ConsumerMode]
    CONSUMER_MODE_LATEST: _ClassVar[ConsumerMode]

class LinkByeReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINK_BYE_REASON_UNSPECIFIED: _ClassVar[LinkByeReason]
    LINK_BYE_REASON_END_OF_STREAM: _ClassVar[LinkByeReason]
    LINK_BYE_REASON_UNSUBSCRIBED: _ClassVar[LinkByeReason]
    LINK_BYE_REASON_PROTOCOL_ERROR: _ClassVar[LinkByeReason]
    LINK_BYE_REASON_EVICTED: _ClassVar[LinkByeReason]
LINK_PROTOCOL_UNSPECIFIED: LinkProtocol
LINK_PROTOCOL_V1: LinkProtocol
LINK_ROLE_UNSPECIFIED: LinkRole
LINK_ROLE_PRODUCER: LinkRole
LINK_ROLE_CONSUMER: LinkRole
CONSUMER_MODE_UNSPECIFIED: ConsumerMode
CONSUMER_MODE_QUEUE: ConsumerMode
CONSUMER_MODE_LATEST: ConsumerMode
LINK_BYE_REASON_UNSPECIFIED: LinkByeReason
LINK_BYE_REASON_END_OF_STREAM: LinkByeReason
LINK_BYE_REASON_UNSUBSCRIBED: LinkByeReason
LINK_BYE_REASON_PROTOCOL_ERROR: LinkByeReason
LINK_BYE_REASON_EVICTED: LinkByeReason

class LinkMessage(_message.Message):
    __slots__ = ("hello", "frame", "release", "reclaimed", "bye")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    RECLAIMED_FIELD_NUMBER: _ClassVar[int]
    BYE_FIELD_NUMBER: _ClassVar[int]
    hello: LinkHello
    frame: Frame
    release: Release
    reclaimed: Reclaimed
    bye: Bye
    def __init__(self, hello: _Optional[_Union[LinkHello, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ..., reclaimed: _Optional[_Union[Reclaimed, _Mapping]] = ..., bye: _Optional[_Union[Bye, _Mapping]] = ...) -> None: ...

class LinkHello(_message.Message):
    __slots__ = ("protocol", "role", "stream", "mode", "max_held", "max_meta_bytes", "slot_count", "next_seq", "pid")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_HELD_FIELD_NUMBER: _ClassVar[int]
    MAX_META_BYTES_FIELD_NUMBER: _ClassVar[int]
    SLOT_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    protocol: LinkProtocol
    role: LinkRole
    stream: str
    mode: ConsumerMode
    max_held: int
    max_meta_bytes: int
    slot_count: int
    next_seq: int
    pid: int
    def __init__(self, protocol: _Optional[_Union[LinkProtocol, str]] = ..., role: _Optional[_Union[LinkRole, str]] = ..., stream: _Optional[str] = ..., mode: _Optional[_Union[ConsumerMode, str]] = ..., max_held: _Optional[int] = ..., max_meta_bytes: _Optional[int] = ..., slot_count: _Optional[int] = ..., next_seq: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("seq", "slot", "generation", "timestamp_ns", "meta", "fence_count")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    FENCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    slot: int
    generation: int
    timestamp_ns: int
    meta: bytes
    fence_count: int
    def __init__(self, seq: _Optional[int] = ..., slot: _Optional[int] = ..., generation: _Optional[int] = ..., timestamp_ns: _Optional[int] = ..., meta: _Optional[bytes] = ..., fence_count: _Optional[int] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("slot", "seq", "generation", "fence_count")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    FENCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    slot: int
    seq: int
    generation: int
    fence_count: int
    def __init__(self, slot: _Optional[int] = ..., seq: _Optional[int] = ..., generation: _Optional[int] = ..., fence_count: _Optional[int] = ...) -> None: ...

class Reclaimed(_message.Message):
    __slots__ = ("slot", "seq", "generation", "held_for_ns")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    HELD_FOR_NS_FIELD_NUMBER: _ClassVar[int]
    slot: int
    seq: int
    generation: int
    held_for_ns: int
    def __init__(self, slot: _Optional[int] = ..., seq: _Optional[int] = ..., generation: _Optional[int] = ..., held_for_ns: _Optional[int] = ...) -> None: ...

class Bye(_message.Message):
    __slots__ = ("reason", "detail", "last_seq")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    reason: LinkByeReason
    detail: str
    last_seq: int
    def __init__(self, reason: _Optional[_Union[LinkByeReason, str]] = ..., detail: _Optional[str] = ..., last_seq: _Optional[int] = ...) -> None: ...
