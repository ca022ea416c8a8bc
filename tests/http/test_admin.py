"""Mutating endpoints: off without --admin-token-file, then only with its token."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

from tests.http.conftest import HttpBroker, free_port


def _line(process) -> dict:
    line = process.stdout.readline()
    assert line, f"the client exited with status {process.wait()}"
    return json.loads(line)


def test_admin_endpoints_are_off_without_a_token_file(http_broker: HttpBroker):
    exporter, info = http_broker.broker.exporter("--name", "safe")
    revoke = http_broker.post(f"/v1/buffers/{info['id']}/revoke", headers={"Authorization": "Bearer anything"})
    assert revoke.status_code == 404
    assert "admin endpoints are off: start the broker with --admin-token-file FILE" in revoke.json()["detail"]
    assert http_broker.delete("/v1/sessions/1").status_code == 404
    paths = http_broker.json("/openapi.json")["paths"]
    assert "/v1/buffers/{buffer_id}/revoke" not in paths and "/v1/sessions/{session_id}" not in paths
    assert http_broker.json(f"/v1/buffers/{info['id']}")["state"] == "active"
    exporter.stdin.close()
    assert exporter.wait(10) == 0


def test_revoke_needs_the_bearer_token_and_then_importers_hear_the_reason(http_broker_factory, tmp_path):
    token = secrets.token_hex(32)
    token_file = tmp_path / "admin-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    http = http_broker_factory("--admin-token-file", str(token_file))
    broker = http.broker
    exporter, info = broker.exporter("--name", "withdrawn", "--offers", "memfd")
    holder = broker.spawn("holder", "withdrawn", "--accept", "memfd")
    assert _line(holder) == {"ready": True}
    url = f"/v1/buffers/{info['id']}/revoke"

    missing = http.post(url)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer <token>" in missing.json()["detail"]
    wrong = http.post(url, headers={"Authorization": "Bearer " + "0" * 64})
    assert wrong.status_code == 403 and "wrong admin token" in wrong.json()["detail"]
    assert http.json(f"/v1/buffers/{info['id']}")["state"] == "active"

    done = http.post(url, headers={"Authorization": f"Bearer {token}"}, json={"reason": "maintenance window"})
    assert done.status_code == 200
    assert done.json() == {"buffer_id": info["id"], "state": "revoked", "reason": "maintenance window"}
    assert _line(holder) == {"revoked": "maintenance window", "head": "bufbroker"}
    assert holder.wait(10) == 0
    assert http.json(f"/v1/buffers/{info['id']}")["state"] == "revoked"
    assert http.post("/v1/buffers/999999/revoke", headers={"Authorization": f"Bearer {token}"}).status_code == 404
    paths = http.json("/openapi.json")["paths"]
    assert "/v1/buffers/{buffer_id}/revoke" in paths and "/v1/sessions/{session_id}" in paths
    exporter.stdin.close()
    assert exporter.wait(10) == 0


def test_ending_a_session_releases_what_it_held(http_broker_factory, tmp_path):
    token = secrets.token_hex(32)
    token_file = tmp_path / "admin-token"
    token_file.write_text(token)
    http = http_broker_factory("--admin-token-file", str(token_file))
    exporter, info = http.broker.exporter("--name", "doomed")
    (session,) = [s for s in http.json("/v1/sessions")["sessions"] if s["pid"] == exporter.pid]
    assert http.delete(f"/v1/sessions/{session['id']}").status_code == 401
    ended = http.delete(f"/v1/sessions/{session['id']}", headers={"Authorization": f"Bearer {token}"})
    assert ended.status_code == 200
    assert ended.json() == {"session_id": session["id"], "pid": exporter.pid, "reason": "ended by an operator"}
    # Its buffer went with it (the SDK may reconnect and register it again, under a new id).
    assert session["id"] not in [s["id"] for s in http.json("/v1/sessions")["sessions"]]
    assert http.get(f"/v1/buffers/{info['id']}").status_code == 404
    again = http.delete(f"/v1/sessions/{session['id']}", headers={"Authorization": f"Bearer {token}"})
    assert again.status_code == 404 and "no open session" in again.json()["detail"]
    exporter.stdin.close()
    assert exporter.wait(10) == 0


def test_an_unusable_admin_token_file_stops_the_broker_at_start(tmp_path):
    short = tmp_path / "short"
    short.write_text("abc")
    for path, expected in (
        (tmp_path / "missing", "cannot read the admin token file"),
        (short, "must hold one token of at least 16 characters"),
    ):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bufbroker_broker",
                "serve",
                "--socket-dir",
                str(tmp_path / "run"),
                "--http",
                f"127.0.0.1:{free_port()}",
                "--admin-token-file",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 1 and expected in out.stderr, out.stderr
        assert not (tmp_path / "run" / "grpc.sock").exists()
