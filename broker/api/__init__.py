"""The broker's faces: the gRPC service and the fd channel server."""
