"""Wire forms shared by the transports: errors, negotiation traces, replies."""
