"""The HTTP transport: FastAPI app, its models, SSE and the dashboard."""
