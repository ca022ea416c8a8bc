"""bufbroker: share memory buffers between processes through a broker.

An exporter, in one process:

    import bufbroker
    with bufbroker.connect() as session:
        buf = session.export(1 << 20, name="frames", offers=["segments", "memfd"])
        buf.memoryview()[:5] = b"hello"

and an importer, in another:

    with bufbroker.connect() as session:
        attachment = session.attach("frames", accept=["segments", "memfd"])
        with attachment.map() as mapping:
            print(attachment.map_type, bytes(mapping.memoryview()[:5]))
"""

__version__ = "0.1.0"

from bufbroker.attachment import Attachment, MappedExtent, Mapping
from bufbroker.buffers import ExportedBuffer
from bufbroker.errors import (
    BrokerError,
    EndOfStream,
    FailedPrecondition,
    InvalidArgument,
    NoCommonMappingType,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SlotReclaimed,
    Unauthenticated,
    Unavailable,
)
from bufbroker.session import Session, connect, default_socket_dir
from bufbroker.specs import Dmabuf, Extent, Memfd, Plugin, Segments, Udmabuf
from bufbroker.streams import ConsumerFrame, ProducerFrame, Stream, Subscription
from bufbroker.trace import TraceStep, format_trace

__all__ = [
    "Attachment",
    "BrokerError",
    "ConsumerFrame",
    "Dmabuf",
    "EndOfStream",
    "ExportedBuffer",
    "Extent",
    "FailedPrecondition",
    "InvalidArgument",
    "MappedExtent",
    "Mapping",
    "Memfd",
    "NoCommonMappingType",
    "NotFound",
    "PermissionDenied",
    "Plugin",
    "ProducerFrame",
    "ResourceExhausted",
    "Segments",
    "Session",
    "SlotReclaimed",
    "Stream",
    "Subscription",
    "TraceStep",
    "Udmabuf",
    "Unauthenticated",
    "Unavailable",
    "connect",
    "default_socket_dir",
    "format_trace",
]
