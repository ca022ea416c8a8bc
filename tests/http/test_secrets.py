"""Nothing secret leaks over HTTP: no session token, no memory contents, no fd numbers."""

from __future__ import annotations

import json
import secrets

from tests.http.conftest import HttpBroker

# JSON keys that mention fds: each is a count or an index into a message's fds, never an fd number.
FD_KEYS = {"fd_count", "fds_held", "fds_received", "fds_sent", "fds_expired", "fds", "fd_index"}


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_no_endpoint_shows_a_session_token_or_memory_contents(http_broker_factory, event_reader, tmp_path):
    admin_token = secrets.token_hex(32)
    (tmp_path / "admin-token").write_text(admin_token)
    http: HttpBroker = http_broker_factory("--admin-token-file", str(tmp_path / "admin-token"))
    reader = event_reader(http)
    marker = "PIXELS-" + secrets.token_hex(8)
    with http.broker.connect() as exporter, http.broker.connect() as importer:
        buffer = exporter.export(4096, name="private", offers=["segments", "memfd"], labels={"owner": "test"})
        view = buffer.memoryview()
        view[: len(marker)] = marker.encode()
        view.release()
        attachment = importer.attach("private", accept=["memfd"])
        with attachment.map() as mapping:
            assert bytes(mapping.memoryview()[: len(marker)]).decode() == marker  # it is in the memory
        attachment.map()  # keep one mapping alive while we look
        doomed = exporter.export(4096, name="doomed")
        tokens = [exporter.token, importer.token]

        bodies: dict[str, str] = {}
        schema = http.json("/openapi.json")
        for path, operations in schema["paths"].items():
            if "get" in operations and path != "/v1/events":
                concrete = path.replace("{buffer_id}", str(buffer.id))
                bodies[f"GET {concrete}"] = http.get(concrete).text
        for path in (
            "/",
            "/dashboard/app.js",
            "/dashboard/style.css",
            "/dashboard/favicon.svg",
            "/openapi.json",
            "/v1/buffers/999999",
            "/v1/overview",
        ):
            bodies[f"GET {path}"] = http.get(path).text
        bodies["POST /v1/explain"] = http.post(
            "/v1/explain", json={"buffer_name": "private", "accept": ["segments"]}
        ).text
        bodies["POST /v1/explain offers"] = http.post(
            "/v1/explain", json={"offers": ["memfd"], "accept": ["memfd"]}
        ).text
        bodies["POST revoke, no token"] = http.post(f"/v1/buffers/{doomed.id}/revoke").text
        bodies["POST revoke, wrong token"] = http.post(
            f"/v1/buffers/{doomed.id}/revoke", headers={"Authorization": "Bearer " + tokens[0]}
        ).text
        bodies["POST revoke"] = http.post(
            f"/v1/buffers/{doomed.id}/revoke", headers={"Authorization": f"Bearer {admin_token}"}
        ).text
        events = reader.until(lambda kind, data: kind == "revoked" and data["buffer_id"] == doomed.id)
        bodies["GET /v1/events"] = json.dumps([data for _, data in events])

    assert len(bodies) >= 18
    for where, body in bodies.items():
        for token in tokens:
            assert token not in body, f"{where} shows a session token"
        assert admin_token not in body, f"{where} shows the admin token"
        assert marker not in body, f"{where} shows memory contents"
        if body.startswith(("{", "[")):
            fd_keys = {k for k in _keys(json.loads(body)) if "fd" in k}
            assert fd_keys <= FD_KEYS, f"{where} has fd-like fields {fd_keys - FD_KEYS}"
    assert "private" in bodies["GET /v1/buffers"] and "private" in bodies["GET /v1/events"]  # we looked at real data
