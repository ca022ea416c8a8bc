"""Clients under another uid (privileges dropped in child processes).

No cross-uid attach without an allow list; a read importer of another uid
cannot write by any route (mmap, write, reopen through /proc); HTTP
introspection never shows session tokens or buffer memory.
(tests/integration/test_lifecycle.py covers deny/allow and restricted offers.)
"""

from __future__ import annotations

import json
import os
import socket
import urllib.request

import pytest

from tests.raw_client import RawClient

CATEGORY = "privilege separation"
NOBODY = 65534
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")

ATTEMPTS = """
import errno, json, mmap, os, sys
import bufbroker, bufbroker.attachment, bufbroker.buffers, encodings.idna   # before the uid drop: see tests/clients/importer.py
os.setgroups([]); os.setgid(0); os.setuid(%(uid)d)
out = {}
with bufbroker.connect(sys.argv[1], reconnect=False) as s:
    try:
        s.attach('private', accept=['memfd'])
        out['private'] = 'attached'
    except bufbroker.BrokerError as error:
        out['private'] = type(error).__name__
    a = s.attach('shared', accept=[bufbroker.Memfd(access='read')], map=True)
    fd = a.mapping.fds[0]
    out['head'] = bytes(a.mapping.memoryview()[:6]).decode()
    def attempt(name, action):
        try:
            action()
            out[name] = 'allowed'
        except (OSError, ValueError, TypeError) as error:
            out[name] = type(error).__name__
    attempt('mmap_write', lambda: mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))
    attempt('pwrite', lambda: os.pwrite(fd, b'EVIL', 0))
    attempt('reopen_rdwr', lambda: os.pwrite(os.open('/proc/self/fd/%%d' %% fd, os.O_RDWR), b'EVIL', 0))
    attempt('memoryview_write', lambda: a.mapping.memoryview().__setitem__(slice(0, 4), b'EVIL'))
print(json.dumps(out), flush=True)
"""


@ROOT_ONLY
def test_a_read_importer_of_another_uid_cannot_write_by_any_route(open_base, broker_factory, reliability):
    broker = broker_factory(base=open_base)
    with broker.connect() as exporter:
        exporter.export(4096, name="private", offers=["memfd"])
        shared = exporter.export(4096, name="shared", offers=["memfd"], allow=[f"uid:{NOBODY}"])
        shared.memoryview()[:6] = b"intact"
        child = broker.spawn_code(ATTEMPTS % {"uid": NOBODY})
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0, out
        result = json.loads(out.strip().splitlines()[-1])
        assert result["private"] == "NotFound"  # a buffer it may not see is as missing as one never registered
        assert result["head"] == "intact"
        routes = ["mmap_write", "pwrite", "reopen_rdwr", "memoryview_write"]
        assert {route: result[route] for route in routes if result[route] == "allowed"} == {}
        lost = sum(1 for a, b in zip(bytes(shared.memoryview()[:6]), b"intact") if a != b)
    assert lost == 0
    reliability.record(
        CATEGORY,
        cases=1 + len(routes),
        faults=1 + len(routes),
        bytes_lost=lost,
        note=f"uid {NOBODY}: attach without allow → {result['private']}; write routes refused: "
        + ", ".join(f"{route} ({result[route]})" for route in routes),
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_http_introspection_never_shows_tokens_or_buffer_memory(broker_factory, reliability):
    port = _free_port()
    broker = broker_factory("--http", f"127.0.0.1:{port}")
    secret = b"SECRET-PIXELS-0123456789"
    with broker.connect() as exporter, RawClient(broker.socket_dir) as raw, broker.connect() as importer:
        buffer = exporter.export(4096, name="secret", offers=["segments", "memfd"], labels={"k": "v"})
        buffer.memoryview()[: len(secret)] = secret
        attachment = importer.attach("secret", accept=["memfd"], map=True)
        tokens = [raw.token]
        paths = [
            "/v1/buffers",
            f"/v1/buffers/{buffer.id}",
            "/v1/sessions",
            "/v1/attachments",
            "/v1/stats",
            "/v1/overview",
            "/v1/mapping-types",
            "/metrics",
            "/healthz",
            "/readyz",
            "/openapi.json",
        ]
        bodies = {}
        for path in paths:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                    bodies[path] = response.read()
            except urllib.error.HTTPError as error:
                bodies[path] = error.read()
                error.close()
        attachment.mapping.close()
        attachment.detach()
    leaks = [
        path
        for path, body in bodies.items()
        if secret in body or secret.hex().encode() in body or any(token.encode() in body for token in tokens if token)
    ]
    assert leaks == [], f"HTTP showed a token or buffer memory at {leaks}"
    assert all(bodies[path] for path in paths)
    reliability.record(
        CATEGORY,
        cases=len(paths),
        note=f"HTTP: {len(paths)} endpoints scanned for session tokens and buffer bytes: none shown",
    )
