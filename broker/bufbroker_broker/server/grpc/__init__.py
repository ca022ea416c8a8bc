"""The gRPC transport: the Broker service, its error mapping and timing."""
