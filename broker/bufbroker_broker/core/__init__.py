"""The broker's core: registry, negotiation, errors. No sockets here."""
