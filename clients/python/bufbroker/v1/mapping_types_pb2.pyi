from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Access(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCESS_UNSPECIFIED: _ClassVar[Access]
    ACCESS_READ: _ClassVar[Access]
    ACCESS_READ_WRITE: _ClassVar[Access]
ACCESS_UNSPECIFIED: Access
ACCESS_READ: Access
ACCESS_READ_WRITE: Access

class Extent(_message.Message):
    __slots__ = ("fd_index", "offset", "length")
    FD_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    fd_index: int
    offset: int
    length: int
    def __init__(self, fd_index: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class MemfdOffer(_message.Message):
    __slots__ = ("max_access",)
    MAX_ACCESS_FIELD_NUMBER: _ClassVar[int]
    max_access: Access
    def __init__(self, max_access: _Optional[_Union[Access, str]] = ...) -> None: ...

class MemfdMatch(_message.Message):
    __slots__ = ("access", "allow_copy")
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_COPY_FIELD_NUMBER: _ClassVar[int]
    access: Access
    allow_copy: bool
    def __init__(self, access: _Optional[_Union[Access, str]] = ..., allow_copy: _Optional[bool] = ...) -> None: ...

class MemfdHandle(_message.Message):
    __slots__ = ("size", "access")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    size: int
    access: Access
    def __init__(self, size: _Optional[int] = ..., access: _Optional[_Union[Access, str]] = ...) -> None: ...

class SegmentsOffer(_message.Message):
    __slots__ = ("extents", "max_access")
    EXTENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCESS_FIELD_NUMBER: _ClassVar[int]
    extents: _containers.RepeatedCompositeFieldContainer[Extent]
    max_access: Access
    def __init__(self, extents: _Optional[_Iterable[_Union[Extent, _Mapping]]] = ..., max_access: _Optional[_Union[Access, str]] = ...) -> None: ...

class SegmentsMatch(_message.Message):
    __slots__ = ("access", "max_extents")
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    MAX_EXTENTS_FIELD_NUMBER: _ClassVar[int]
    access: Access
    max_extents: int
    def __init__(self, access: _Optional[_Union[Access, str]] = ..., max_extents: _Optional[int] = ...) -> None: ...

class SegmentsHandle(_message.Message):
    __slots__ = ("extents", "access")
    EXTENTS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    extents: _containers.RepeatedCompositeFieldContainer[Extent]
    access: Access
    def __init__(self, extents: _Optional[_Iterable[_Union[Extent, _Mapping]]] = ..., access: _Optional[_Union[Access, str]] = ...) -> None: ...

class UdmabufOffer(_message.Message):
    __slots__ = ("extents", "max_access")
    EXTENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCESS_FIELD_NUMBER: _ClassVar[int]
    extents: _containers.RepeatedCompositeFieldContainer[Extent]
    max_access: Access
    def __init__(self, extents: _Optional[_Iterable[_Union[Extent, _Mapping]]] = ..., max_access: _Optional[_Union[Access, str]] = ...) -> None: ...

class UdmabufMatch(_message.Message):
    __slots__ = ("access",)
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    access: Access
    def __init__(self, access: _Optional[_Union[Access, str]] = ...) -> None: ...

class UdmabufHandle(_message.Message):
    __slots__ = ("size", "access")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    size: int
    access: Access
    def __init__(self, size: _Optional[int] = ..., access: _Optional[_Union[Access, str]] = ...) -> None: ...

class DmabufOffer(_message.Message):
    __slots__ = ("max_access", "device", "requires_p2p")
    MAX_ACCESS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_P2P_FIELD_NUMBER: _ClassVar[int]
    max_access: Access
    device: str
    requires_p2p: bool
    def __init__(self, max_access: _Optional[_Union[Access, str]] = ..., device: _Optional[str] = ..., requires_p2p: _Optional[bool] = ...) -> None: ...

class DmabufMatch(_message.Message):
    __slots__ = ("access", "device", "accepts_p2p")
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_P2P_FIELD_NUMBER: _ClassVar[int]
    access: Access
    device: str
    accepts_p2p: bool
    def __init__(self, access: _Optional[_Union[Access, str]] = ..., device: _Optional[str] = ..., accepts_p2p: _Optional[bool] = ...) -> None: ...

class DmabufHandle(_message.Message):
    __slots__ = ("size", "access", "exp_name", "exporter_device", "p2p")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    EXP_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    P2P_FIELD_NUMBER: _ClassVar[int]
    size: int
    access: Access
    exp_name: str
    exporter_device: str
    p2p: bool
    def __init__(self, size: _Optional[int] = ..., access: _Optional[_Union[Access, str]] = ..., exp_name: _Optional[str] = ..., exporter_device: _Optional[str] = ..., p2p: _Optional[bool] = ...) -> None: ...

class PluginSpec(_message.Message):
    __slots__ = ("type_name", "body")
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    type_name: str
    body: _any_pb2.Any
    def __init__(self, type_name: _Optional[str] = ..., body: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class FormatPair(_message.Message):
    __slots__ = ("format", "modifier")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODIFIER_FIELD_NUMBER: _ClassVar[int]
    format: str
    modifier: int
    def __init__(self, format: _Optional[str] = ..., modifier: _Optional[int] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("memfd", "segments", "udmabuf", "dmabuf", "plugin", "restricted_to", "formats")
    MEMFD_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    UDMABUF_FIELD_NUMBER: _ClassVar[int]
    DMABUF_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    RESTRICTED_TO_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    memfd: MemfdOffer
    segments: SegmentsOffer
    udmabuf: UdmabufOffer
    dmabuf: DmabufOffer
    plugin: PluginSpec
    restricted_to: _containers.RepeatedScalarFieldContainer[str]
    formats: _containers.RepeatedCompositeFieldContainer[FormatPair]
    def __init__(self, memfd: _Optional[_Union[MemfdOffer, _Mapping]] = ..., segments: _Optional[_Union[SegmentsOffer, _Mapping]] = ..., udmabuf: _Optional[_Union[UdmabufOffer, _Mapping]] = ..., dmabuf: _Optional[_Union[DmabufOffer, _Mapping]] = ..., plugin: _Optional[_Union[PluginSpec, _Mapping]] = ..., restricted_to: _Optional[_Iterable[str]] = ..., formats: _Optional[_Iterable[_Union[FormatPair, _Mapping]]] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("memfd", "segments", "udmabuf", "dmabuf", "plugin", "formats")
    MEMFD_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    UDMABUF_FIELD_NUMBER: _ClassVar[int]
    DMABUF_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    memfd: MemfdMatch
    segments: SegmentsMatch
    udmabuf: UdmabufMatch
    dmabuf: DmabufMatch
    plugin: PluginSpec
    formats: _containers.RepeatedCompositeFieldContainer[FormatPair]
    def __init__(self, memfd: _Optional[_Union[MemfdMatch, _Mapping]] = ..., segments: _Optional[_Union[SegmentsMatch, _Mapping]] = ..., udmabuf: _Optional[_Union[UdmabufMatch, _Mapping]] = ..., dmabuf: _Optional[_Union[DmabufMatch, _Mapping]] = ..., plugin: _Optional[_Union[PluginSpec, _Mapping]] = ..., formats: _Optional[_Iterable[_Union[FormatPair, _Mapping]]] = ...) -> None: ...

class Handle(_message.Message):
    __slots__ = ("memfd", "segments", "udmabuf", "dmabuf", "plugin")
    MEMFD_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    UDMABUF_FIELD_NUMBER: _ClassVar[int]
    DMABUF_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    memfd: MemfdHandle
    segments: SegmentsHandle
    udmabuf: UdmabufHandle
    dmabuf: DmabufHandle
    plugin: PluginSpec
    def __init__(self, memfd: _Optional[_Union[MemfdHandle, _Mapping]] = ..., segments: _Optional[_Union[SegmentsHandle, _Mapping]] = ..., udmabuf: _Optional[_Union[UdmabufHandle, _Mapping]] = ..., dmabuf: _Optional[_Union[DmabufHandle, _Mapping]] = ..., plugin: _Optional[_Union[PluginSpec, _Mapping]] = ...) -> None: ...
