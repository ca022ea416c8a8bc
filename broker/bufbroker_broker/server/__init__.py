"""The daemon: transports (gRPC, fd channel, HTTP), observation, start-up."""
