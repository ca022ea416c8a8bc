"""The HTTP face (FastAPI on uvicorn, in the broker's own event loop).

Read-only: health, readiness and Prometheus metrics. Memory contents, fds
and session tokens never appear here.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from broker.readiness import Readiness


def create_app(readiness: Readiness, metrics: CollectorRegistry, version: str) -> FastAPI:
    app = FastAPI(title="bufbroker", version=version, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict:
        """The process is alive and its event loop answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready when grpc.sock and fd.sock both accept and the broker is not draining."""
        if readiness.ready:
            return JSONResponse({"status": "ready"})
        reason = "draining" if readiness.draining else "starting"
        return JSONResponse({"status": reason}, status_code=503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    return app


class EmbeddedServer(uvicorn.Server):
    """uvicorn in our loop; the broker, not uvicorn, owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
