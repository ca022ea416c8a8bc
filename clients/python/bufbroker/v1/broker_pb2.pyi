from bufbroker.v1 import mapping_types_pb2 as _mapping_types_pb2
from bufbroker.v1 import stream_pb2 as _stream_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExporterExitPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORTER_EXIT_POLICY_UNSPECIFIED: _ClassVar[ExporterExitPolicy]
    EXPORTER_EXIT_POLICY_REVOKE: _ClassVar[ExporterExitPolicy]
    EXPORTER_EXIT_POLICY_KEEP: _ClassVar[ExporterExitPolicy]

class BufferState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUFFER_STATE_UNSPECIFIED: _ClassVar[BufferState]
    BUFFER_STATE_ACTIVE: _ClassVar[BufferState]
    BUFFER_STATE_REVOKED: _ClassVar[BufferState]

class StallPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STALL_POLICY_UNSPECIFIED: _ClassVar[StallPolicy]
    STALL_POLICY_RECLAIM: _ClassVar[StallPolicy]
    STALL_POLICY_REPORT: _ClassVar[StallPolicy]
EXPORTER_EXIT_POLICY_UNSPECIFIED: ExporterExitPolicy
EXPORTER_EXIT_POLICY_REVOKE: ExporterExitPolicy
EXPORTER_EXIT_POLICY_KEEP: ExporterExitPolicy
BUFFER_STATE_UNSPECIFIED: BufferState
BUFFER_STATE_ACTIVE: BufferState
BUFFER_STATE_REVOKED: BufferState
STALL_POLICY_UNSPECIFIED: StallPolicy
STALL_POLICY_RECLAIM: StallPolicy
STALL_POLICY_REPORT: StallPolicy

class Plane(_message.Message):
    __slots__ = ("offset", "stride")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    stride: int
    def __init__(self, offset: _Optional[int] = ..., stride: _Optional[int] = ...) -> None: ...

class Layout(_message.Message):
    __slots__ = ("fourcc", "width", "height", "modifier", "planes")
    FOURCC_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODIFIER_FIELD_NUMBER: _ClassVar[int]
    PLANES_FIELD_NUMBER: _ClassVar[int]
    fourcc: str
    width: int
    height: int
    modifier: int
    planes: _containers.RepeatedCompositeFieldContainer[Plane]
    def __init__(self, fourcc: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., modifier: _Optional[int] = ..., planes: _Optional[_Iterable[_Union[Plane, _Mapping]]] = ...) -> None: ...

class RegisterBufferRequest(_message.Message):
    __slots__ = ("nonce", "size", "name", "labels", "layout", "offers", "on_exporter_exit", "allow")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    ON_EXPORTER_EXIT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    nonce: str
    size: int
    name: str
    labels: _containers.ScalarMap[str, str]
    layout: Layout
    offers: _containers.RepeatedCompositeFieldContainer[_mapping_types_pb2.Offer]
    on_exporter_exit: ExporterExitPolicy
    allow: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, nonce: _Optional[str] = ..., size: _Optional[int] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., layout: _Optional[_Union[Layout, _Mapping]] = ..., offers: _Optional[_Iterable[_Union[_mapping_types_pb2.Offer, _Mapping]]] = ..., on_exporter_exit: _Optional[_Union[ExporterExitPolicy, str]] = ..., allow: _Optional[_Iterable[str]] = ...) -> None: ...

class MoveBufferRequest(_message.Message):
    __slots__ = ("buffer_id", "nonce", "size", "offers", "layout", "reason")
    BUFFER_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    buffer_id: int
    nonce: str
    size: int
    offers: _containers.RepeatedCompositeFieldContainer[_mapping_types_pb2.Offer]
    layout: Layout
    reason: str
    def __init__(self, buffer_id: _Optional[int] = ..., nonce: _Optional[str] = ..., size: _Optional[int] = ..., offers: _Optional[_Iterable[_Union[_mapping_types_pb2.Offer, _Mapping]]] = ..., layout: _Optional[_Union[Layout, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class MoveBufferResponse(_message.Message):
    __slots__ = ("buffer", "non_compliant_attachment_ids")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    NON_COMPLIANT_ATTACHMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    buffer: BufferInfo
    non_compliant_attachment_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, buffer: _Optional[_Union[BufferInfo, _Mapping]] = ..., non_compliant_attachment_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class BufferInfo(_message.Message):
    __slots__ = ("id", "name", "size", "labels", "layout", "offer_types", "exporter_pid", "exporter_uid", "state", "attachment_count", "fd_count", "offers", "generation", "on_exporter_exit", "allow", "exporter_gone", "exporter_session_id", "pinned_by")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    OFFER_TYPES_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_PID_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_UID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    FD_COUNT_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ON_EXPORTER_EXIT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_GONE_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PINNED_BY_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    size: int
    labels: _containers.ScalarMap[str, str]
    layout: Layout
    offer_types: _containers.RepeatedScalarFieldContainer[str]
    exporter_pid: int
    exporter_uid: int
    state: BufferState
    attachment_count: int
    fd_count: int
    offers: _containers.RepeatedCompositeFieldContainer[_mapping_types_pb2.Offer]
    generation: int
    on_exporter_exit: ExporterExitPolicy
    allow: _containers.RepeatedScalarFieldContainer[str]
    exporter_gone: bool
    exporter_session_id: int
    pinned_by: str
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., size: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., layout: _Optional[_Union[Layout, _Mapping]] = ..., offer_types: _Optional[_Iterable[str]] = ..., exporter_pid: _Optional[int] = ..., exporter_uid: _Optional[int] = ..., state: _Optional[_Union[BufferState, str]] = ..., attachment_count: _Optional[int] = ..., fd_count: _Optional[int] = ..., offers: _Optional[_Iterable[_Union[_mapping_types_pb2.Offer, _Mapping]]] = ..., generation: _Optional[int] = ..., on_exporter_exit: _Optional[_Union[ExporterExitPolicy, str]] = ..., allow: _Optional[_Iterable[str]] = ..., exporter_gone: _Optional[bool] = ..., exporter_session_id: _Optional[int] = ..., pinned_by: _Optional[str] = ...) -> None: ...

class RegisterBufferResponse(_message.Message):
    __slots__ = ("buffer",)
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    buffer: BufferInfo
    def __init__(self, buffer: _Optional[_Union[BufferInfo, _Mapping]] = ...) -> None: ...

class RevokeBufferRequest(_message.Message):
    __slots__ = ("buffer_id", "reason")
    BUFFER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    buffer_id: int
    reason: str
    def __init__(self, buffer_id: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeBufferResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnregisterBufferRequest(_message.Message):
    __slots__ = ("buffer_id",)
    BUFFER_ID_FIELD_NUMBER: _ClassVar[int]
    buffer_id: int
    def __init__(self, buffer_id: _Optional[int] = ...) -> None: ...

class UnregisterBufferResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TraceStep(_message.Message):
    __slots__ = ("offer_index", "offer_type", "match_index", "match_type", "verdict", "reason", "converter", "format")
    OFFER_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFER_TYPE_FIELD_NUMBER: _ClassVar[int]
    MATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    MATCH_TYPE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONVERTER_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    offer_index: int
    offer_type: str
    match_index: int
    match_type: str
    verdict: str
    reason: str
    converter: str
    format: str
    def __init__(self, offer_index: _Optional[int] = ..., offer_type: _Optional[str] = ..., match_index: _Optional[int] = ..., match_type: _Optional[str] = ..., verdict: _Optional[str] = ..., reason: _Optional[str] = ..., converter: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("buffer_id", "buffer_name", "accept", "access", "map", "wait_seconds", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUFFER_ID_FIELD_NUMBER: _ClassVar[int]
    BUFFER_NAME_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    buffer_id: int
    buffer_name: str
    accept: _containers.RepeatedCompositeFieldContainer[_mapping_types_pb2.Match]
    access: _mapping_types_pb2.Access
    map: bool
    wait_seconds: float
    labels: _containers.ScalarMap[str, str]
    def __init__(self, buffer_id: _Optional[int] = ..., buffer_name: _Optional[str] = ..., accept: _Optional[_Iterable[_Union[_mapping_types_pb2.Match, _Mapping]]] = ..., access: _Optional[_Union[_mapping_types_pb2.Access, str]] = ..., map: _Optional[bool] = ..., wait_seconds: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AttachResponse(_message.Message):
    __slots__ = ("attachment_id", "buffer_id", "map_type", "trace", "pinned", "mapping", "format")
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BUFFER_ID_FIELD_NUMBER: _ClassVar[int]
    MAP_TYPE_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    attachment_id: int
    buffer_id: int
    map_type: str
    trace: _containers.RepeatedCompositeFieldContainer[TraceStep]
    pinned: bool
    mapping: MapResponse
    format: _mapping_types_pb2.FormatPair
    def __init__(self, attachment_id: _Optional[int] = ..., buffer_id: _Optional[int] = ..., map_type: _Optional[str] = ..., trace: _Optional[_Iterable[_Union[TraceStep, _Mapping]]] = ..., pinned: _Optional[bool] = ..., mapping: _Optional[_Union[MapResponse, _Mapping]] = ..., format: _Optional[_Union[_mapping_types_pb2.FormatPair, _Mapping]] = ...) -> None: ...

class DetachRequest(_message.Message):
    __slots__ = ("attachment_id",)
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    attachment_id: int
    def __init__(self, attachment_id: _Optional[int] = ...) -> None: ...

class DetachResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MapRequest(_message.Message):
    __slots__ = ("attachment_id",)
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    attachment_id: int
    def __init__(self, attachment_id: _Optional[int] = ...) -> None: ...

class MapResponse(_message.Message):
    __slots__ = ("mapping_id", "handle", "fd_ticket", "fd_count", "size", "generation", "layout", "format")
    MAPPING_ID_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    FD_TICKET_FIELD_NUMBER: _ClassVar[int]
    FD_COUNT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    mapping_id: int
    handle: _mapping_types_pb2.Handle
    fd_ticket: int
    fd_count: int
    size: int
    generation: int
    layout: Layout
    format: _mapping_types_pb2.FormatPair
    def __init__(self, mapping_id: _Optional[int] = ..., handle: _Optional[_Union[_mapping_types_pb2.Handle, _Mapping]] = ..., fd_ticket: _Optional[int] = ..., fd_count: _Optional[int] = ..., size: _Optional[int] = ..., generation: _Optional[int] = ..., layout: _Optional[_Union[Layout, _Mapping]] = ..., format: _Optional[_Union[_mapping_types_pb2.FormatPair, _Mapping]] = ...) -> None: ...

class UnmapRequest(_message.Message):
    __slots__ = ("mapping_id",)
    MAPPING_ID_FIELD_NUMBER: _ClassVar[int]
    mapping_id: int
    def __init__(self, mapping_id: _Optional[int] = ...) -> None: ...

class UnmapResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OpenCallChannelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OpenCallChannelResponse(_message.Message):
    __slots__ = ("fd_ticket",)
    FD_TICKET_FIELD_NUMBER: _ClassVar[int]
    fd_ticket: int
    def __init__(self, fd_ticket: _Optional[int] = ...) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Event(_message.Message):
    __slots__ = ("ready", "revoked", "move_notify", "exporter_gone", "attachment_invalidated", "stream_link_opened", "stream_renegotiate")
    READY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    MOVE_NOTIFY_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_GONE_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_INVALIDATED_FIELD_NUMBER: _ClassVar[int]
    STREAM_LINK_OPENED_FIELD_NUMBER: _ClassVar[int]
    STREAM_RENEGOTIATE_FIELD_NUMBER: _ClassVar[int]
    ready: Ready
    revoked: Revoked
    move_notify: MoveNotify
    exporter_gone: ExporterGone
    attachment_invalidated: AttachmentInvalidated
    stream_link_opened: StreamLinkOpened
    stream_renegotiate: StreamRenegotiate
    def __init__(self, ready: _Optional[_Union[Ready, _Mapping]] = ..., revoked: _Optional[_Union[Revoked, _Mapping]] = ..., move_notify: _Optional[_Union[MoveNotify, _Mapping]] = ..., exporter_gone: _Optional[_Union[ExporterGone, _Mapping]] = ..., attachment_invalidated: _Optional[_Union[AttachmentInvalidated, _Mapping]] = ..., stream_link_opened: _Optional[_Union[StreamLinkOpened, _Mapping]] = ..., stream_renegotiate: _Optional[_Union[StreamRenegotiate, _Mapping]] = ...) -> None: ...

class StreamRenegotiate(_message.Message):
    __slots__ = ("stream_id", "format", "consumer_pid", "reason")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_PID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    format: _mapping_types_pb2.FormatPair
    consumer_pid: int
    reason: str
    def __init__(self, stream_id: _Optional[int] = ..., format: _Optional[_Union[_mapping_types_pb2.FormatPair, _Mapping]] = ..., consumer_pid: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class MoveNotify(_message.Message):
    __slots__ = ("attachment_id", "buffer_id", "reason", "generation")
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BUFFER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    attachment_id: int
    buffer_id: int
    reason: str
    generation: int
    def __init__(self, attachment_id: _Optional[int] = ..., buffer_id: _Optional[int] = ..., reason: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class ExporterGone(_message.Message):
    __slots__ = ("buffer_id", "policy")
    BUFFER_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    buffer_id: int
    policy: ExporterExitPolicy
    def __init__(self, buffer_id: _Optional[int] = ..., policy: _Optional[_Union[ExporterExitPolicy, str]] = ...) -> None: ...

class AttachmentInvalidated(_message.Message):
    __slots__ = ("attachment_id", "reason")
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    attachment_id: int
    reason: str
    def __init__(self, attachment_id: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Revoked(_message.Message):
    __slots__ = ("buffer_id", "attachment_ids", "reason")
    BUFFER_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    buffer_id: int
    attachment_ids: _containers.RepeatedScalarFieldContainer[int]
    reason: str
    def __init__(self, buffer_id: _Optional[int] = ..., attachment_ids: _Optional[_Iterable[int]] = ..., reason: _Optional[str] = ...) -> None: ...

class ListBuffersRequest(_message.Message):
    __slots__ = ("name", "page_size", "after_id", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    after_id: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., after_id: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListBuffersResponse(_message.Message):
    __slots__ = ("buffers", "next_after_id")
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    buffers: _containers.RepeatedCompositeFieldContainer[BufferInfo]
    next_after_id: int
    def __init__(self, buffers: _Optional[_Iterable[_Union[BufferInfo, _Mapping]]] = ..., next_after_id: _Optional[int] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("buffer_id", "buffer_name", "accept", "access", "offers")
    BUFFER_ID_FIELD_NUMBER: _ClassVar[int]
    BUFFER_NAME_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    buffer_id: int
    buffer_name: str
    accept: _containers.RepeatedCompositeFieldContainer[_mapping_types_pb2.Match]
    access: _mapping_types_pb2.Access
    offers: _containers.RepeatedCompositeFieldContainer[_mapping_types_pb2.Offer]
    def __init__(self, buffer_id: _Optional[int] = ..., buffer_name: _Optional[str] = ..., accept: _Optional[_Iterable[_Union[_mapping_types_pb2.Match, _Mapping]]] = ..., access: _Optional[_Union[_mapping_types_pb2.Access, str]] = ..., offers: _Optional[_Iterable[_Union[_mapping_types_pb2.Offer, _Mapping]]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("map_type", "trace", "error")
    MAP_TYPE_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    map_type: str
    trace: _containers.RepeatedCompositeFieldContainer[TraceStep]
    error: str
    def __init__(self, map_type: _Optional[str] = ..., trace: _Optional[_Iterable[_Union[TraceStep, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("sessions", "buffers", "attachments", "mappings", "fds_held", "fds_received", "fds_sent", "fds_closed", "fds_expired", "pid", "version")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    FDS_HELD_FIELD_NUMBER: _ClassVar[int]
    FDS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    FDS_SENT_FIELD_NUMBER: _ClassVar[int]
    FDS_CLOSED_FIELD_NUMBER: _ClassVar[int]
    FDS_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    sessions: int
    buffers: int
    attachments: int
    mappings: int
    fds_held: int
    fds_received: int
    fds_sent: int
    fds_closed: int
    fds_expired: int
    pid: int
    version: str
    def __init__(self, sessions: _Optional[int] = ..., buffers: _Optional[int] = ..., attachments: _Optional[int] = ..., mappings: _Optional[int] = ..., fds_held: _Optional[int] = ..., fds_received: _Optional[int] = ..., fds_sent: _Optional[int] = ..., fds_closed: _Optional[int] = ..., fds_expired: _Optional[int] = ..., pid: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("id", "pid", "uid", "gid", "role", "buffers", "attachments", "mappings", "fds_held", "non_compliant", "events_open", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    FDS_HELD_FIELD_NUMBER: _ClassVar[int]
    NON_COMPLIANT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_OPEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: int
    pid: int
    uid: int
    gid: int
    role: str
    buffers: int
    attachments: int
    mappings: int
    fds_held: int
    non_compliant: bool
    events_open: bool
    name: str
    def __init__(self, id: _Optional[int] = ..., pid: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., role: _Optional[str] = ..., buffers: _Optional[int] = ..., attachments: _Optional[int] = ..., mappings: _Optional[int] = ..., fds_held: _Optional[int] = ..., non_compliant: _Optional[bool] = ..., events_open: _Optional[bool] = ..., name: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ...) -> None: ...

class AttachmentInfo(_message.Message):
    __slots__ = ("id", "buffer_id", "session_id", "importer_pid", "map_type", "trace", "pinned", "mappings", "non_compliant")
    ID_FIELD_NUMBER: _ClassVar[int]
    BUFFER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    IMPORTER_PID_FIELD_NUMBER: _ClassVar[int]
    MAP_TYPE_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    NON_COMPLIANT_FIELD_NUMBER: _ClassVar[int]
    id: int
    buffer_id: int
    session_id: int
    importer_pid: int
    map_type: str
    trace: _containers.RepeatedCompositeFieldContainer[TraceStep]
    pinned: bool
    mappings: int
    non_compliant: bool
    def __init__(self, id: _Optional[int] = ..., buffer_id: _Optional[int] = ..., session_id: _Optional[int] = ..., importer_pid: _Optional[int] = ..., map_type: _Optional[str] = ..., trace: _Optional[_Iterable[_Union[TraceStep, _Mapping]]] = ..., pinned: _Optional[bool] = ..., mappings: _Optional[int] = ..., non_compliant: _Optional[bool] = ...) -> None: ...

class ListAttachmentsRequest(_message.Message):
    __slots__ = ("buffer_id",)
    BUFFER_ID_FIELD_NUMBER: _ClassVar[int]
    buffer_id: int
    def __init__(self, buffer_id: _Optional[int] = ...) -> None: ...

class ListAttachmentsResponse(_message.Message):
    __slots__ = ("attachments",)
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    attachments: _containers.RepeatedCompositeFieldContainer[AttachmentInfo]
    def __init__(self, attachments: _Optional[_Iterable[_Union[AttachmentInfo, _Mapping]]] = ...) -> None: ...

class MappingTypeInfo(_message.Message):
    __slots__ = ("name", "description", "supported", "support_reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    supported: bool
    support_reason: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., supported: _Optional[bool] = ..., support_reason: _Optional[str] = ...) -> None: ...

class ListMappingTypesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMappingTypesResponse(_message.Message):
    __slots__ = ("mapping_types",)
    MAPPING_TYPES_FIELD_NUMBER: _ClassVar[int]
    mapping_types: _containers.RepeatedCompositeFieldContainer[MappingTypeInfo]
    def __init__(self, mapping_types: _Optional[_Iterable[_Union[MappingTypeInfo, _Mapping]]] = ...) -> None: ...

class GetSettingsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Setting(_message.Message):
    __slots__ = ("name", "value", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    source: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class GetSettingsResponse(_message.Message):
    __slots__ = ("settings", "pid", "version")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    settings: _containers.RepeatedCompositeFieldContainer[Setting]
    pid: int
    version: str
    def __init__(self, settings: _Optional[_Iterable[_Union[Setting, _Mapping]]] = ..., pid: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class CreateStreamRequest(_message.Message):
    __slots__ = ("name", "slot_buffer_ids", "stall_timeout", "on_stall", "max_held", "labels", "formats", "renegotiate")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SLOT_BUFFER_IDS_FIELD_NUMBER: _ClassVar[int]
    STALL_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ON_STALL_FIELD_NUMBER: _ClassVar[int]
    MAX_HELD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    RENEGOTIATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    slot_buffer_ids: _containers.RepeatedScalarFieldContainer[int]
    stall_timeout: float
    on_stall: StallPolicy
    max_held: int
    labels: _containers.ScalarMap[str, str]
    formats: _containers.RepeatedCompositeFieldContainer[_mapping_types_pb2.FormatPair]
    renegotiate: bool
    def __init__(self, name: _Optional[str] = ..., slot_buffer_ids: _Optional[_Iterable[int]] = ..., stall_timeout: _Optional[float] = ..., on_stall: _Optional[_Union[StallPolicy, str]] = ..., max_held: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., formats: _Optional[_Iterable[_Union[_mapping_types_pb2.FormatPair, _Mapping]]] = ..., renegotiate: _Optional[bool] = ...) -> None: ...

class CreateStreamResponse(_message.Message):
    __slots__ = ("stream",)
    STREAM_FIELD_NUMBER: _ClassVar[int]
    stream: StreamInfo
    def __init__(self, stream: _Optional[_Union[StreamInfo, _Mapping]] = ...) -> None: ...

class DeleteStreamRequest(_message.Message):
    __slots__ = ("stream_id",)
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    def __init__(self, stream_id: _Optional[int] = ...) -> None: ...

class DeleteStreamResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("name", "accept", "mode", "max_held", "wait_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_HELD_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    accept: _containers.RepeatedCompositeFieldContainer[_mapping_types_pb2.Match]
    mode: _stream_pb2.ConsumerMode
    max_held: int
    wait_seconds: float
    def __init__(self, name: _Optional[str] = ..., accept: _Optional[_Iterable[_Union[_mapping_types_pb2.Match, _Mapping]]] = ..., mode: _Optional[_Union[_stream_pb2.ConsumerMode, str]] = ..., max_held: _Optional[int] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("stream", "link_id", "link_fd_ticket", "max_held", "slots")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    LINK_FD_TICKET_FIELD_NUMBER: _ClassVar[int]
    MAX_HELD_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    stream: StreamInfo
    link_id: int
    link_fd_ticket: int
    max_held: int
    slots: _containers.RepeatedCompositeFieldContainer[AttachResponse]
    def __init__(self, stream: _Optional[_Union[StreamInfo, _Mapping]] = ..., link_id: _Optional[int] = ..., link_fd_ticket: _Optional[int] = ..., max_held: _Optional[int] = ..., slots: _Optional[_Iterable[_Union[AttachResponse, _Mapping]]] = ...) -> None: ...

class StreamLinkOpened(_message.Message):
    __slots__ = ("stream_id", "link_id", "consumer_session_id", "consumer_pid", "consumer_name", "mode", "max_held", "fd_ticket")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_PID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_HELD_FIELD_NUMBER: _ClassVar[int]
    FD_TICKET_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    link_id: int
    consumer_session_id: int
    consumer_pid: int
    consumer_name: str
    mode: _stream_pb2.ConsumerMode
    max_held: int
    fd_ticket: int
    def __init__(self, stream_id: _Optional[int] = ..., link_id: _Optional[int] = ..., consumer_session_id: _Optional[int] = ..., consumer_pid: _Optional[int] = ..., consumer_name: _Optional[str] = ..., mode: _Optional[_Union[_stream_pb2.ConsumerMode, str]] = ..., max_held: _Optional[int] = ..., fd_ticket: _Optional[int] = ...) -> None: ...

class StreamInfo(_message.Message):
    __slots__ = ("id", "name", "producer_session_id", "producer_pid", "producer_name", "slot_buffer_ids", "stall_timeout", "on_stall", "max_held", "labels", "consumers", "producer", "report_age", "max_meta_bytes", "formats", "renegotiate")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_PID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_NAME_FIELD_NUMBER: _ClassVar[int]
    SLOT_BUFFER_IDS_FIELD_NUMBER: _ClassVar[int]
    STALL_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ON_STALL_FIELD_NUMBER: _ClassVar[int]
    MAX_HELD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    REPORT_AGE_FIELD_NUMBER: _ClassVar[int]
    MAX_META_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    RENEGOTIATE_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    producer_session_id: int
    producer_pid: int
    producer_name: str
    slot_buffer_ids: _containers.RepeatedScalarFieldContainer[int]
    stall_timeout: float
    on_stall: StallPolicy
    max_held: int
    labels: _containers.ScalarMap[str, str]
    consumers: _containers.RepeatedCompositeFieldContainer[StreamConsumerInfo]
    producer: StreamCounters
    report_age: float
    max_meta_bytes: int
    formats: _containers.RepeatedCompositeFieldContainer[_mapping_types_pb2.FormatPair]
    renegotiate: bool
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., producer_session_id: _Optional[int] = ..., producer_pid: _Optional[int] = ..., producer_name: _Optional[str] = ..., slot_buffer_ids: _Optional[_Iterable[int]] = ..., stall_timeout: _Optional[float] = ..., on_stall: _Optional[_Union[StallPolicy, str]] = ..., max_held: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., consumers: _Optional[_Iterable[_Union[StreamConsumerInfo, _Mapping]]] = ..., producer: _Optional[_Union[StreamCounters, _Mapping]] = ..., report_age: _Optional[float] = ..., max_meta_bytes: _Optional[int] = ..., formats: _Optional[_Iterable[_Union[_mapping_types_pb2.FormatPair, _Mapping]]] = ..., renegotiate: _Optional[bool] = ...) -> None: ...

class StreamCounters(_message.Message):
    __slots__ = ("published", "delivered", "dropped_busy", "dropped_overwritten", "released", "reclaimed", "held_now", "longest_hold", "lag", "last_seq", "fps", "latency_p50_us", "latency_p99_us", "generation", "held_slots", "latency_buckets", "latency_sum_us")
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BUSY_FIELD_NUMBER: _ClassVar[int]
    DROPPED_OVERWRITTEN_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    RECLAIMED_FIELD_NUMBER: _ClassVar[int]
    HELD_NOW_FIELD_NUMBER: _ClassVar[int]
    LONGEST_HOLD_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_US_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_US_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    HELD_SLOTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SUM_US_FIELD_NUMBER: _ClassVar[int]
    published: int
    delivered: int
    dropped_busy: int
    dropped_overwritten: int
    released: int
    reclaimed: int
    held_now: int
    longest_hold: float
    lag: int
    last_seq: int
    fps: float
    latency_p50_us: float
    latency_p99_us: float
    generation: int
    held_slots: _containers.RepeatedScalarFieldContainer[int]
    latency_buckets: _containers.RepeatedScalarFieldContainer[int]
    latency_sum_us: float
    def __init__(self, published: _Optional[int] = ..., delivered: _Optional[int] = ..., dropped_busy: _Optional[int] = ..., dropped_overwritten: _Optional[int] = ..., released: _Optional[int] = ..., reclaimed: _Optional[int] = ..., held_now: _Optional[int] = ..., longest_hold: _Optional[float] = ..., lag: _Optional[int] = ..., last_seq: _Optional[int] = ..., fps: _Optional[float] = ..., latency_p50_us: _Optional[float] = ..., latency_p99_us: _Optional[float] = ..., generation: _Optional[int] = ..., held_slots: _Optional[_Iterable[int]] = ..., latency_buckets: _Optional[_Iterable[int]] = ..., latency_sum_us: _Optional[float] = ...) -> None: ...

class StreamConsumerInfo(_message.Message):
    __slots__ = ("link_id", "session_id", "pid", "name", "mode", "max_held", "stalled", "counters")
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_HELD_FIELD_NUMBER: _ClassVar[int]
    STALLED_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    link_id: int
    session_id: int
    pid: int
    name: str
    mode: _stream_pb2.ConsumerMode
    max_held: int
    stalled: bool
    counters: StreamCounters
    def __init__(self, link_id: _Optional[int] = ..., session_id: _Optional[int] = ..., pid: _Optional[int] = ..., name: _Optional[str] = ..., mode: _Optional[_Union[_stream_pb2.ConsumerMode, str]] = ..., max_held: _Optional[int] = ..., stalled: _Optional[bool] = ..., counters: _Optional[_Union[StreamCounters, _Mapping]] = ...) -> None: ...

class ListStreamsRequest(_message.Message):
    __slots__ = ("name", "after_id", "page_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    after_id: int
    page_size: int
    def __init__(self, name: _Optional[str] = ..., after_id: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListStreamsResponse(_message.Message):
    __slots__ = ("streams", "next_after_id")
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    streams: _containers.RepeatedCompositeFieldContainer[StreamInfo]
    next_after_id: int
    def __init__(self, streams: _Optional[_Iterable[_Union[StreamInfo, _Mapping]]] = ..., next_after_id: _Optional[int] = ...) -> None: ...

class LinkReport(_message.Message):
    __slots__ = ("link_id", "counters", "stalled")
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    STALLED_FIELD_NUMBER: _ClassVar[int]
    link_id: int
    counters: StreamCounters
    stalled: bool
    def __init__(self, link_id: _Optional[int] = ..., counters: _Optional[_Union[StreamCounters, _Mapping]] = ..., stalled: _Optional[bool] = ...) -> None: ...

class ReportStreamStatsRequest(_message.Message):
    __slots__ = ("stream_id", "producer", "links")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    producer: StreamCounters
    links: _containers.RepeatedCompositeFieldContainer[LinkReport]
    def __init__(self, stream_id: _Optional[int] = ..., producer: _Optional[_Union[StreamCounters, _Mapping]] = ..., links: _Optional[_Iterable[_Union[LinkReport, _Mapping]]] = ...) -> None: ...

class ReportStreamStatsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetSessionNameRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SetSessionNameResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
