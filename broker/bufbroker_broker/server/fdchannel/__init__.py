"""The fd channel (DIR/fd.sock): sessions, fd passing, call channels."""
