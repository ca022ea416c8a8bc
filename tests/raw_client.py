"""A client that speaks the wire protocol directly, for tests of bad input.

It does what the SDK hides (fd channel, HELLO, token metadata) so tests can
send what the SDK never would.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import grpc

from bufbroker import fdwire, protocol
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import broker_pb2_grpc as pb_grpc
from bufbroker.v1 import fd_channel_pb2 as fdpb


class RawClient:
    def __init__(self, socket_dir: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.settimeout(5)
        self.sock.connect(str(socket_dir / "fd.sock"))
        hello = fdwire.receive(self.sock)
        assert hello.message is not None and hello.message.HasField("hello"), hello
        self.hello = hello.message.hello
        self.token = self.hello.session_token
        self.channel = grpc.insecure_channel(f"unix:{socket_dir / 'grpc.sock'}")
        self.stub = pb_grpc.BrokerStub(self.channel)

    @property
    def metadata(self) -> tuple:
        """For one gRPC call: the token and a fresh proof, vouched for on this client's fd channel."""
        return ((fdwire.SESSION_METADATA_KEY, self.token), (protocol.PROOF_METADATA_KEY, self.vouch()))

    def vouch(self, proof: str | None = None) -> str:
        """Send a Vouch on the fd channel; returns its proof."""
        proof = proof if proof is not None else secrets.token_hex(16)
        fdwire.send(self.sock, fdpb.FdMessage(vouch=fdpb.Vouch(proof=proof)), [])
        return proof

    def call(self, method: str, request, token: str | None = None, proof: str | None = None):
        """An RPC as this session (vouched for), or with another ``token`` (and ``proof``, if given)."""
        if token is None:
            metadata = self.metadata
        else:
            metadata = ((fdwire.SESSION_METADATA_KEY, token),)
            if proof is not None:
                metadata += ((protocol.PROOF_METADATA_KEY, proof),)
        return getattr(self.stub, method)(request, metadata=metadata, timeout=10)

    def send_fds(self, nonce: str, fds: list[int], fd_count: int | None = None) -> None:
        message = fdpb.FdMessage(
            send_fds=fdpb.SendFds(nonce=nonce, fd_count=len(fds) if fd_count is None else fd_count)
        )
        fdwire.send(self.sock, message, fds)

    def send_raw(self, data: bytes, fds: list[int] = ()) -> None:
        self.sock.sendmsg([data], fdwire.ancillary(list(fds)))

    def receive(self) -> fdwire.Received:
        return fdwire.receive(self.sock)

    def register(self, nonce: str, size: int, **fields) -> pb.RegisterBufferResponse:
        return self.call("RegisterBuffer", pb.RegisterBufferRequest(nonce=nonce, size=size, **fields))

    def open_call_channel(self) -> socket.socket:
        """A call channel of this session: OpenCallChannel, then its socket from the fd channel."""
        ticket = self.call("OpenCallChannel", pb.OpenCallChannelRequest()).fd_ticket
        while True:
            received = self.receive()
            message = received.message
            if message is not None and message.HasField("deliver_fds") and message.deliver_fds.ticket == ticket:
                [fd] = received.fds
                sock = socket.socket(fileno=fd)
                sock.settimeout(5)
                return sock
            fdwire.close_fds(received.fds)

    def close(self) -> None:
        self.channel.close()
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def call_on(sock: socket.socket, kind: str, request, call_id: int = 1) -> tuple[fdpb.CallReply, list[int]]:
    """Send one call on a call channel; its reply and the fds that came with it."""
    message = fdpb.FdMessage()
    message.call.call_id = call_id
    getattr(message.call, kind).CopyFrom(request)
    sock.sendmsg([message.SerializeToString()])
    received = fdwire.receive(sock, fdwire.MAX_CALL_BYTES)
    assert received.message is not None and received.message.HasField("reply"), received
    return received.message.reply, received.fds
