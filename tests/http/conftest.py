"""Fixtures for the HTTP face: a real broker serving HTTP on a free loopback
port, an HTTP client for it, an SSE reader, and the Debian tools some tests
drive (Chromium, Prometheus), installed with apt when missing.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.apt import apt_install
from tests.conftest import REPO_ROOT, BrokerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
# apt may download a browser: the tests that need it get this long.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class HttpBroker:
    """A real broker with HTTP on ``url``, and a client for it."""

    broker: BrokerProcess
    url: str
    client: httpx.Client

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def json(self, path: str, **kwargs) -> dict:
        response = self.client.get(path, **kwargs)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    def post(self, path: str, **kwargs) -> httpx.Response:
        return self.client.post(path, **kwargs)

    def delete(self, path: str, **kwargs) -> httpx.Response:
        return self.client.delete(path, **kwargs)


@pytest.fixture
def http_broker_factory(broker_factory: Callable[..., BrokerProcess]) -> Iterator[Callable[..., HttpBroker]]:
    """Start brokers serving HTTP on a free loopback port, with extra `serve` arguments."""
    clients: list[httpx.Client] = []

    def start(*extra_args: str, name: str = "run") -> HttpBroker:
        port = free_port()
        broker = broker_factory("--http", f"127.0.0.1:{port}", *extra_args, name=name)
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=url, timeout=10)
        clients.append(client)
        return HttpBroker(broker, url, client)

    yield start
    # Before the broker's teardown counts its fds: no keep-alive connection may remain.
    for client in clients:
        client.close()


@pytest.fixture
def http_broker(http_broker_factory: Callable[..., HttpBroker]) -> HttpBroker:
    return http_broker_factory()


@dataclass
class EventReader:
    """Reads GET /v1/events on a thread, over a plain socket the test can cut.

    ``next()`` returns parsed (kind, data) pairs; ("<end>", {}) once the
    stream ends.
    """

    url: str
    headers: dict = field(default_factory=dict)
    events: queue.Queue[tuple[str, dict]] = field(default_factory=queue.Queue)
    connected: threading.Event = field(default_factory=threading.Event)
    status: int = 0
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None

    def start(self) -> EventReader:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self._sock = socket.create_connection((host, int(port)), timeout=10)
        self._sock.settimeout(None)
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        self._sock.sendall(f"GET /v1/events HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        self._thread = threading.Thread(target=self._read, name="sse-reader", daemon=True)
        self._thread.start()
        assert self.connected.wait(10), "GET /v1/events did not answer"
        return self

    def _chunks(self):
        """The response body, de-chunked, as it arrives."""
        buffered = b""
        while b"\r\n\r\n" not in buffered:
            data = self._sock.recv(65536)
            if not data:
                return
            buffered += data
        head, buffered = buffered.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ", 2)[1])
        self.connected.set()
        while True:
            while b"\r\n" not in buffered:
                data = self._sock.recv(65536)
                if not data:
                    return
                buffered += data
            size_line, rest = buffered.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return
            while len(rest) < size + 2:
                data = self._sock.recv(65536)
                if not data:
                    return
                rest += data
            yield rest[:size]
            buffered = rest[size + 2 :]

    def _read(self) -> None:
        kind, data, pending = "", "", ""
        try:
            for chunk in self._chunks():
                pending += chunk.decode()
                *lines, pending = pending.split("\n")
                for line in lines:
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        data = line[6:]
                    elif line == "" and kind:
                        self.events.put((kind, json.loads(data)))
                        kind, data = "", ""
        except OSError:
            pass  # cut by close()
        finally:
            self.connected.set()
            self.events.put(("<end>", {}))

    def next(self, timeout: float = 10) -> tuple[str, dict]:
        return self.events.get(timeout=timeout)

    def until(self, predicate: Callable[[str, dict], bool], timeout: float = 10) -> list[tuple[str, dict]]:
        """Every event up to and including the first that satisfies ``predicate``."""
        seen = []
        while True:
            kind, data = self.next(timeout)
            seen.append((kind, data))
            assert kind != "<end>", f"the stream ended before the expected event; got {seen}"
            if predicate(kind, data):
                return seen

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)


@pytest.fixture
def event_reader() -> Iterator[Callable[..., EventReader]]:
    readers: list[EventReader] = []

    def open_reader(http: HttpBroker, **headers: str) -> EventReader:
        reader = EventReader(http.url, headers=headers).start()
        readers.append(reader)
        return reader

    yield open_reader
    for reader in readers:
        reader.close()


# --- Debian tools ---------------------------------------------------------------


@pytest.fixture(scope="session")
def debian_tools() -> dict[str, Path]:
    """/usr/bin/chromium, prometheus and promtool, installed with apt if any is missing."""
    wanted = {"chromium": CHROMIUM, "prometheus": Path("/usr/bin/prometheus"), "promtool": Path("/usr/bin/promtool")}
    missing = [name for name, path in wanted.items() if not path.exists()]
    if missing:
        apt_install(["chromium", "prometheus"])
    still = [name for name, path in wanted.items() if not path.exists()]
    assert not still, f"apt installed chromium and prometheus, but {still} are still missing"
    return wanted
