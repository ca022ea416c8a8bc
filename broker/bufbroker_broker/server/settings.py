"""The broker's settings: one model, read from flags, env and a TOML file.

Precedence, highest first: command-line flags, ``BUFBROKER_*`` environment
variables, the TOML file given with ``--config``, the defaults. Each
effective value remembers where it came from (``bufbroker config show``).
Invalid settings fail at start with the field, the value and why.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bufbroker_broker.mapping_types._extents import MAX_EXTENTS
from bufbroker_broker.server import limits

ENV_PREFIX = "BUFBROKER_"


def default_socket_dir() -> Path:
    """$XDG_RUNTIME_DIR/bufbroker, or /run/bufbroker as root."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if os.geteuid() == 0 or not runtime:
        return Path("/run/bufbroker")
    return Path(runtime) / "bufbroker"


class SettingsError(Exception):
    """Settings that cannot be used; the message names field, value and why."""


class BrokerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    socket_dir: Path = Field(default_factory=default_socket_dir, description="directory of grpc.sock and fd.sock")
    http: str = Field(
        "127.0.0.1:8377", description="HOST:PORT for introspection, /metrics and health; 'none' turns it off"
    )
    log_level: str = Field("info", description="debug, info, warning or error")
    pending_fd_timeout: float = Field(10.0, gt=0, description="seconds before fds no RegisterBuffer claimed are closed")
    drain_timeout: float = Field(5.0, ge=0, description="seconds SIGTERM waits for importers to acknowledge revocation")
    move_timeout: float = Field(
        2.0, ge=0, description="seconds a move waits for importers to unmap before marking them non-compliant"
    )
    fd_send_timeout: float = Field(
        5.0, gt=0, description="seconds a session's fd channel may accept nothing before the session is ended"
    )
    max_pending_fds: int = Field(1024, gt=0, description="per session: fds sent but not yet claimed")
    max_send_queue: int = Field(256, gt=0, description="per session: fd-channel messages queued for a slow reader")
    max_buffers_per_session: int = Field(4096, gt=0, description="buffers one session may register")
    max_attachments_per_session: int = Field(4096, gt=0, description="attachments one session may hold")
    max_mappings_per_session: int = Field(16384, gt=0, description="mappings one session may hold")
    max_request_bytes: int = Field(1 << 20, ge=4096, description="largest gRPC request the broker reads")
    admin_token_file: Path | None = Field(
        None, description="file holding the bearer token that turns on the HTTP admin endpoints (revoke, end session)"
    )
    http_event_queue: int = Field(
        1024, gt=0, description="per /v1/events client: events queued before a slow client is dropped"
    )
    sysfs_root: Path = Field(
        Path("/sys"), description="where sysfs is: the PCI topology for dmabuf p2p reachability, udmabuf's limits"
    )
    # Bounded work per request (server/limits.py): checked before any other work, on every transport.
    max_offers: int = Field(limits.DEFAULT_MAX_OFFERS, gt=0, description="offers one buffer may register")
    max_accept_entries: int = Field(
        limits.DEFAULT_MAX_ACCEPT_ENTRIES, gt=0, description="entries in one attach's or explain's accept list"
    )
    max_extents: int = Field(
        limits.DEFAULT_MAX_EXTENTS,
        gt=0,
        le=MAX_EXTENTS,
        description=f"extents in one buffer's segments and udmabuf offers together (at most {MAX_EXTENTS})",
    )
    max_format_pairs: int = Field(
        limits.DEFAULT_MAX_FORMAT_PAIRS,
        gt=0,
        le=4096,
        description="(format, modifier) pairs on one offer, accept entry or stream",
    )
    max_labels: int = Field(limits.DEFAULT_MAX_LABELS, gt=0, description="labels on one buffer or in one selector")
    max_label_bytes: int = Field(
        limits.DEFAULT_MAX_LABEL_BYTES, gt=0, description="bytes of one buffer's label keys and values together"
    )
    max_name_length: int = Field(limits.DEFAULT_MAX_NAME_LENGTH, gt=0, description="characters in a buffer name")
    max_copy_bytes: int = Field(
        limits.DEFAULT_MAX_COPY_BYTES,
        gt=0,
        description="largest buffer the segments->memfd-copy converter copies at one map (bytes)",
    )
    copy_workers: int = Field(
        limits.DEFAULT_COPY_WORKERS,
        gt=0,
        description="segments->memfd-copy maps copied at once, each in a worker thread",
    )
    max_copies_per_session: int = Field(
        limits.DEFAULT_MAX_COPIES_PER_SESSION,
        gt=0,
        description="segments->memfd-copy maps one session may have waiting or running; one more is refused",
    )
    # HTTP that a local user cannot exhaust (server/http/guards.py).
    http_max_connections: int = Field(
        64, gt=0, description="open HTTP connections; over it the one waiting longest for its request is closed"
    )
    http_header_timeout: float = Field(
        10.0, gt=0, description="seconds an HTTP connection may take to send a request's headers before it is closed"
    )
    http_keepalive_timeout: float = Field(
        5.0, gt=0, description="seconds an idle keep-alive HTTP connection stays open after a response"
    )
    http_max_page_bytes: int = Field(
        1 << 20, ge=4096, description="bytes of buffers in one /v1/buffers or /v1/overview page (next_cursor continues)"
    )
    http_allowed_hosts: str = Field(
        "", description="comma-separated extra Host names HTTP answers to (besides the bind address; DNS rebinding)"
    )
    # gRPC that a local user cannot exhaust (server/daemon.py, grpc.aio.server's options).
    grpc_max_connections: int = Field(
        0,
        ge=0,
        description="open gRPC connections; more are closed as they are accepted (0: 1/8 of RLIMIT_NOFILE, at most 1024)",
    )
    grpc_streams_per_connection: int = Field(
        2048,
        gt=0,
        description="RPCs in progress on one gRPC connection (HTTP/2 MAX_CONCURRENT_STREAMS); more wait on the "
        "client's side (a process's SDK sessions share one connection, an event stream each)",
    )
    grpc_max_concurrent_rpcs: int = Field(
        8192,
        gt=0,
        description="RPCs in progress, all gRPC connections together; more are refused with RESOURCE_EXHAUSTED "
        "(every SDK session holds one, its event stream: keep it well above max_sessions)",
    )
    grpc_idle_timeout: float = Field(
        30.0, gt=0, description="seconds a gRPC connection with no RPC in progress stays open before it is closed"
    )
    grpc_handshake_timeout: float = Field(
        5.0, gt=0, description="seconds a new gRPC connection may take to send its HTTP/2 preface before it is closed"
    )
    # The fd budget (server/fdchannel/server.py, core/registry.py): checked before the broker takes fds.
    max_fds_per_session: int = Field(
        4096, gt=0, description="per session: fds the broker holds for it (its buffers' backings, fds sent unclaimed)"
    )
    max_sessions: int = Field(4096, gt=0, description="open sessions, all uids together; more are refused at HELLO")
    max_sessions_per_uid: int = Field(1024, gt=0, description="open sessions of one uid; more are refused at HELLO")
    fd_reserve: int = Field(
        0,
        ge=0,
        description="fds of RLIMIT_NOFILE kept free for accepting, refusing and maps; "
        "sessions and fds that would use them are refused (0: 5/8 of it, so the broker stays under half)",
    )
    # fds in flight (server/fdchannel/server.py): replies a client never reads keep their fds counted against the broker.
    max_unread_replies: int = Field(
        64, gt=0, description="per session, all its call channels: replies with fds unread before calls are refused"
    )
    # Streams (server/streams.py): a producer's slots, its consumers' links, the stall rule.
    stream_stall_timeout: float = Field(
        2.0, gt=0, le=3600, description="default seconds a consumer may hold a slot before it counts as stalled"
    )
    max_stream_slots: int = Field(64, gt=0, description="slots (buffers) in one stream")
    max_stream_consumers: int = Field(64, gt=0, description="consumers (links) of one stream")
    stream_max_meta_bytes: int = Field(
        4096, gt=0, le=1 << 20, description="bytes of per-frame metadata on a stream's links (told to both ends)"
    )
    stream_renegotiate_interval: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="seconds between two format renegotiations of one stream (one consumer cannot flip it back and "
        "forth)",
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()

    @field_validator("http")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value == "none":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT (e.g. 127.0.0.1:8377) or 'none'")
        return value

    @property
    def http_address(self) -> tuple[str, int] | None:
        if self.http == "none":
            return None
        host, _, port = self.http.rpartition(":")
        return host.strip("[]"), int(port)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges flags, environment and TOML itself, so it can
        # tell where each value came from; the model only validates the result.
        return (init_settings,)


FIELDS = tuple(BrokerSettings.model_fields)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"config file {path} is not valid TOML: {error}") from None
    table = data.get("broker", data)  # a [broker] table, or top-level keys
    values = {key.replace("-", "_"): value for key, value in table.items()}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise SettingsError(f"config file {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    return values


def load_settings(flags: dict[str, Any], config_file: Path | None = None) -> tuple[BrokerSettings, dict[str, str]]:
    """Merge flags > environment > TOML > defaults; return settings and origins.

    ``flags`` holds only the flags the user gave (None values are ignored).
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((f"config file {config_file}", _read_toml(config_file)))
    env = {
        field: os.environ[ENV_PREFIX + field.upper()] for field in FIELDS if ENV_PREFIX + field.upper() in os.environ
    }
    layers.append(("environment", {f: v for f, v in env.items()}))
    layers.append(("flag", {k: v for k, v in flags.items() if v is not None}))
    merged: dict[str, Any] = {}
    origins = {field: "default" for field in FIELDS}
    for origin, values in layers:  # lowest precedence first
        for field, value in values.items():
            merged[field] = value
            if origin == "environment":
                origins[field] = f"environment {ENV_PREFIX}{field.upper()}"
            elif origin == "flag":
                origins[field] = f"flag --{field.replace('_', '-')}"
            else:
                origins[field] = origin
    try:
        settings = BrokerSettings(**merged)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            field = ".".join(str(p) for p in item["loc"]) or "?"
            value = merged.get(field, item.get("input"))
            where = origins.get(field, "?")
            problems.append(f"{field} = {value!r} (from {where}): {item['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    return settings, origins
